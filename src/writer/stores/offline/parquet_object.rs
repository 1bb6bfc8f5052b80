//! A parquet object in a bucket as a [`BatchSource`]: its footer (and page
//! offset index, when the file has one) is read once, then each open streams
//! the rows with ranged GETs, decoded a few thousand rows at a time.
//!
//! With an offset index (arrow-rs and Spark write one), a row group larger
//! than [`SLICE_BYTES`] compressed is read in slices of about that size and
//! only the pages holding a slice are fetched, so memory stays bounded
//! whatever the object or row group size. Without one, a whole row group's
//! compressed column chunks are fetched at once.

use super::ident;
use super::object::{BatchSource, BatchStream, SourceError};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, OBJECT_STORE_COALESCE_DEFAULT, ObjectStore, coalesce_ranges};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Rows decoded per batch: small enough that a batch of wide rows stays a
/// few MiB, large enough that per-batch costs vanish.
const STREAM_ROWS: usize = 8192;
/// Compressed bytes of a row group fetched at once when the file has an
/// offset index: few requests (object stores charge per request; the rig's
/// moto is slow at each, docs/benchmarks.md), bounded memory.
pub const SLICE_BYTES: u64 = 4 * 1024 * 1024;
/// Decoded batches waiting for the store at most.
const READ_AHEAD: usize = 2;
/// Bytes read from the end of the object for its footer in one request.
const FOOTER_HINT: usize = 64 * 1024;

pub struct ParquetObject {
    uri: String,
    reader: Ranges,
    metadata: ArrowReaderMetadata,
    slice_bytes: u64,
}

/// Byte ranges of one object, as the parquet decoder asks for them. With
/// the ETag read beside the footer, every GET carries `If-Match`: an object
/// overwritten during its load fails the load (retried, so the new version
/// is read whole) instead of mixing two versions.
#[derive(Clone)]
struct Ranges {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    etag: Option<String>,
}

impl Ranges {
    async fn fetch(&self, range: Range<u64>) -> object_store::Result<Bytes> {
        let options = GetOptions {
            range: Some(range.into()),
            if_match: self.etag.clone(),
            ..Default::default()
        };
        self.store
            .get_opts(&self.path, options)
            .await?
            .bytes()
            .await
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for Ranges {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetch(range).map_err(external).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            // Nearby ranges in one GET, as ObjectStore::get_ranges does.
            let this = &*self;
            coalesce_ranges(&ranges, |r| this.fetch(r), OBJECT_STORE_COALESCE_DEFAULT)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl ParquetObject {
    /// Reads the footer of the object at `path` (`size` bytes long, version
    /// `etag` when the store gave one) and checks its column names.
    pub async fn open(
        uri: &str,
        store: Arc<dyn ObjectStore>,
        path: Path,
        size: u64,
        etag: Option<String>,
    ) -> Result<ParquetObject, SourceError> {
        let mut reader = Ranges {
            store,
            path,
            size,
            etag,
        };
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| classify(uri, "not a readable parquet file", e))?;
        for field in metadata.schema().fields() {
            ident::check_column(field.name())
                .map_err(|e| SourceError::Refused(format!("{uri}: {e}")))?;
        }
        Ok(ParquetObject {
            uri: uri.to_string(),
            reader,
            metadata,
            slice_bytes: SLICE_BYTES,
        })
    }

    /// The object's columns, from its footer.
    pub fn schema(&self) -> arrow_schema::SchemaRef {
        self.metadata.schema().clone()
    }

    /// Rows the footer says the object holds.
    pub fn rows(&self) -> u64 {
        self.metadata.metadata().file_metadata().num_rows().max(0) as u64
    }
}

impl ParquetObject {
    /// The parts read one after the other: (row group, rows to skip, rows to
    /// read), or `None` for a whole row group.
    fn slices(&self) -> Vec<(usize, Option<(usize, usize)>)> {
        let metadata = self.metadata.metadata();
        let mut slices = Vec::new();
        for (g, group) in metadata.row_groups().iter().enumerate() {
            let pages = metadata.page_index_for_row_group(g);
            let indexed = (0..group.num_columns()).all(|c| pages.offset_index(c).is_some());
            let rows = group.num_rows().max(0) as usize;
            let bytes = group.compressed_size().max(1) as u64;
            if !indexed || bytes <= self.slice_bytes || rows < 2 {
                slices.push((g, None));
                continue;
            }
            let step = ((rows as u64 * self.slice_bytes / bytes) as usize).max(1);
            slices.extend(
                (0..rows)
                    .step_by(step)
                    .map(|from| (g, Some((from, step.min(rows - from))))),
            );
        }
        slices
    }

    /// A decoding stream of one part.
    fn part(
        &self,
        group: usize,
        rows: Option<(usize, usize)>,
    ) -> Result<ParquetRecordBatchStream<Ranges>, SourceError> {
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.reader.clone(),
            self.metadata.clone(),
        )
        .with_batch_size(STREAM_ROWS)
        .with_row_groups(vec![group]);
        if let Some((skip, take)) = rows {
            builder = builder.with_row_selection(RowSelection::from(vec![
                RowSelector::skip(skip),
                RowSelector::select(take),
            ]));
        }
        builder
            .build()
            .map_err(|e| classify(&self.uri, "parquet file cannot be read", e))
    }
}

impl BatchSource for ParquetObject {
    fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>> {
        async move {
            let uri = self.uri.clone();
            let parts = self
                .slices()
                .into_iter()
                .map(|(group, rows)| self.part(group, rows))
                .collect::<Result<Vec<_>, _>>()?;
            let decoded = futures::stream::iter(parts).flatten().map_err({
                let uri = uri.clone();
                move |e| classify(&uri, "parquet data is corrupt", e)
            });
            // The decoder has panicked on corrupt files in the past: that
            // refuses the object instead of crashing the writer.
            let mut batches = AssertUnwindSafe(decoded)
                .catch_unwind()
                .map(move |item| match item {
                    Ok(batch) => batch,
                    Err(_) => Err(SourceError::Refused(format!(
                        "{uri}: parquet reader failed on this file"
                    ))),
                })
                .boxed();
            // Fetching and decoding run ahead of the store by a few batches,
            // so the next slice's GETs overlap the current COPY. The task
            // ends when the stream does or the load drops the receiver.
            let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
            tokio::spawn(async move {
                while let Some(batch) = batches.next().await {
                    let failed = batch.is_err();
                    if tx.send(batch).await.is_err() || failed {
                        break;
                    }
                }
            });
            let received = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|batch| (batch, rx))
            });
            Ok(received.boxed())
        }
        .boxed()
    }
}

/// An object store failure is retried (unless the object is gone); anything
/// the parquet decoder says refuses the object.
fn classify(uri: &str, what: &str, e: ParquetError) -> SourceError {
    if let ParquetError::External(inner) = &e
        && let Some(store) = inner.downcast_ref::<object_store::Error>()
    {
        return SourceError::from_store(uri, store);
    }
    SourceError::Refused(format!("{uri}: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::stores::offline::parquet::tests::to_parquet_with_row_groups;
    use arrow_array::{Int64Array, RecordBatch};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    async fn put(store: &InMemory, key: &str, bytes: Vec<u8>) -> Result<u64, String> {
        let path = Path::from(key);
        store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| e.to_string())?;
        let meta = store.head(&path).await.map_err(|e| e.to_string())?;
        Ok(meta.size)
    }

    /// Every value of column `n` read from `object`, in order, and the
    /// largest batch seen.
    async fn read_all(object: &ParquetObject) -> Result<(Vec<i64>, usize), String> {
        let mut stream = object.open().await.map_err(|e| format!("{e:?}"))?;
        let (mut values, mut largest) = (Vec::new(), 0);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| format!("{e:?}"))?;
            largest = largest.max(batch.num_rows());
            let n = batch.column(0).as_any().downcast_ref::<Int64Array>();
            values.extend(n.ok_or("not int64")?.values().iter());
        }
        Ok((values, largest))
    }

    async fn object_of(rows: i64, row_group: usize) -> Result<ParquetObject, String> {
        let store = Arc::new(InMemory::new());
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..rows)) as _,
        )])
        .map_err(|e| e.to_string())?;
        let size = put(&store, "a", to_parquet_with_row_groups(&batch, row_group)).await?;
        ParquetObject::open("s3://b/a", store, Path::from("a"), size, None)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn streams_every_row_group_in_small_batches() -> Result<(), Box<dyn std::error::Error>> {
        let object = object_of(50_000, 10_000).await?;
        assert_eq!(object.rows(), 50_000);
        assert_eq!(object.slices().len(), 5);
        // Opened twice: a load that starts over reads the same rows again.
        for _ in 0..2 {
            let (values, largest) = read_all(&object).await?;
            assert_eq!(values, (0..50_000).collect::<Vec<_>>());
            assert!(largest <= STREAM_ROWS, "{largest}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_large_row_group_is_read_in_slices_of_pages() -> Result<(), Box<dyn std::error::Error>>
    {
        let rows = 100_000;
        let mut object = object_of(rows, rows as usize).await?;
        assert_eq!(object.slices(), vec![(0, None)]);
        let bytes = object.metadata.metadata().row_group(0).compressed_size() as u64;
        object.slice_bytes = bytes / 3;
        let slices = object.slices();
        assert!(slices.len() >= 3, "{slices:?}");
        // Contiguous, covering every row once.
        let mut next = 0;
        for (group, part) in &slices {
            let (skip, take) = part.ok_or("a whole row group")?;
            assert_eq!((*group, skip), (0, next));
            next += take;
        }
        assert_eq!(next, rows as usize);
        let (values, _) = read_all(&object).await?;
        assert_eq!(values, (0..rows).collect::<Vec<_>>());
        Ok(())
    }

    #[tokio::test]
    async fn an_object_overwritten_while_read_is_read_again()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = Arc::new(InMemory::new());
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..1000)) as _,
        )])?;
        let bytes = to_parquet_with_row_groups(&batch, 100);
        let size = put(&store, "a", bytes.clone()).await?;
        let etag = store.head(&Path::from("a")).await?.e_tag;
        assert!(etag.is_some());
        let object = ParquetObject::open("s3://b/a", store.clone(), Path::from("a"), size, etag)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(read_all(&object).await?.0.len(), 1000);
        // The same bytes again are a new version all the same.
        put(&store, "a", bytes).await?;
        let err = read_all(&object).await.err().unwrap_or_default();
        assert!(err.contains("changed while it was read"), "{err}");
        assert!(err.starts_with("Unavailable"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn garbage_missing_and_hostile_objects_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = Arc::new(InMemory::new());
        let size = put(&store, "bad", b"PAR1 not really".to_vec()).await?;
        let err = ParquetObject::open("s3://b/bad", store.clone(), Path::from("bad"), size, None)
            .await
            .err();
        assert!(
            matches!(&err, Some(SourceError::Refused(r)) if r.contains("not a readable parquet file")),
            "{err:?}"
        );
        let err = ParquetObject::open("s3://b/gone", store.clone(), Path::from("gone"), 4096, None)
            .await
            .err();
        assert!(
            matches!(&err, Some(SourceError::Refused(r)) if r.contains("not found")),
            "{err:?}"
        );
        let hostile = RecordBatch::try_from_iter([(
            "x\"; DROP TABLE t; --",
            Arc::new(Int64Array::from(vec![1])) as _,
        )])?;
        let size = put(&store, "h", to_parquet_with_row_groups(&hostile, 10)).await?;
        let err = ParquetObject::open("s3://b/h", store, Path::from("h"), size, None)
            .await
            .err();
        assert!(
            matches!(&err, Some(SourceError::Refused(r)) if r.contains("column name")),
            "{err:?}"
        );
        Ok(())
    }
}
