//! A whole object (a parquet file in a bucket) to load as one unit: its rows
//! arrive as a stream of record batches, so a store that can stream (Postgres'
//! COPY) holds one batch at a time, not the object. One object is one
//! transaction, and its idempotency key covers all of its rows.

use super::TableRows;
use super::drop_ratio::{self, QUERY_LOG};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use arrow_select::concat::concat_batches;
use arrow_select::filter::filter_record_batch;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;

/// Largest object a store that cannot stream (BigQuery, Snowflake) collects
/// into memory before loading it, in decoded Arrow bytes.
pub const MAX_COLLECTED_BYTES: usize = 256 * 1024 * 1024;

/// Why an object's rows could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceError {
    /// Missing, unreadable or not parquet: the message is dead-lettered.
    Refused(String),
    /// The object store cannot be reached or refused our credentials: retry.
    Unavailable(String),
}

impl SourceError {
    /// An object store's answer about `uri`: a missing object or a bad path
    /// is refused for good; a changed object is read again; anything else
    /// (unreachable, credentials) is retried.
    pub fn from_store(uri: &str, e: &object_store::Error) -> SourceError {
        match e {
            object_store::Error::NotFound { .. } => {
                SourceError::Refused(format!("object {uri} not found"))
            }
            object_store::Error::InvalidPath { .. } => {
                SourceError::Refused(format!("object {uri}: invalid path: {e}"))
            }
            object_store::Error::Precondition { .. } => SourceError::Unavailable(format!(
                "object {uri} changed while it was read; it is read again"
            )),
            other => SourceError::Unavailable(format!("object store for {uri}: {other}")),
        }
    }
}

pub type BatchStream = BoxStream<'static, Result<RecordBatch, SourceError>>;

/// Opens an object's rows from the start; a load opens it again when it has
/// to start over (a replayed row met on the direct COPY path).
pub trait BatchSource: Send + Sync {
    fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>>;
}

/// One object bound for one table.
#[derive(Clone)]
pub struct ObjectLoad {
    /// Where the rows come from, for messages (`s3://bucket/key`).
    pub uri: String,
    pub table: String,
    /// The producer's key, or the object's URI and version.
    pub idempotency_key: String,
    /// Rows the object holds (its footer says so before any row is read).
    pub rows: u64,
    /// Its columns, from the footer (stores that load the object where it
    /// lies make the table from them).
    pub schema: Option<SchemaRef>,
    pub source: Arc<dyn BatchSource>,
    /// The rows are changed on their way (sampled): the object cannot be
    /// loaded where it lies.
    pub transformed: bool,
}

impl std::fmt::Debug for ObjectLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectLoad")
            .field("uri", &self.uri)
            .field("table", &self.table)
            .field("idempotency_key", &self.idempotency_key)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ObjectLoad {
    /// The same load with `query_log` rows sampled at `ratio` as they stream.
    pub fn sampled(self, ratio: f64) -> ObjectLoad {
        if self.table != QUERY_LOG || ratio <= 0.0 {
            return self;
        }
        ObjectLoad {
            source: Arc::new(Sampled {
                inner: self.source.clone(),
                ratio,
            }),
            transformed: true,
            ..self
        }
    }

    /// Every row in one batch, for stores that load whole batches; an object
    /// over [`MAX_COLLECTED_BYTES`] decoded is refused.
    pub async fn collect(&self) -> Result<TableRows, SourceError> {
        let mut stream = self.source.open().await?;
        let mut batches = Vec::new();
        let mut bytes = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            bytes += batch.get_array_memory_size();
            if bytes > MAX_COLLECTED_BYTES {
                return Err(SourceError::Refused(format!(
                    "{}: more than {MAX_COLLECTED_BYTES} bytes decoded; this store loads objects \
                     in memory (Postgres streams them)",
                    self.uri
                )));
            }
            batches.push(batch);
        }
        let batch = match batches.first() {
            Some(first) => concat_batches(&first.schema(), &batches)
                .map_err(|e| SourceError::Refused(format!("{}: {e}", self.uri)))?,
            None => RecordBatch::new_empty(Arc::new(arrow_schema::Schema::empty())),
        };
        Ok(TableRows {
            table: self.table.clone(),
            batch,
            idempotency_key: Some(self.idempotency_key.clone()),
        })
    }
}

/// `query_table_write_drop_ratio` applied batch by batch. The choice hashes
/// each row's `operation_id`, so reopening drops the same rows.
struct Sampled {
    inner: Arc<dyn BatchSource>,
    ratio: f64,
}

impl BatchSource for Sampled {
    fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>> {
        let ratio = self.ratio;
        async move {
            let stream = self.inner.open().await?;
            let sampled = stream.map(move |batch| {
                let batch = batch?;
                match drop_ratio::mask(&batch, ratio) {
                    None => Ok(batch),
                    Some(mask) => filter_record_batch(&batch, &mask)
                        .map_err(|e| SourceError::Refused(e.to_string())),
                }
            });
            Ok(sampled.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    /// Batches held in memory, opened as often as asked.
    pub struct Batches(pub Vec<Result<RecordBatch, SourceError>>);

    impl BatchSource for Batches {
        fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>> {
            let batches = self.0.clone();
            async move { Ok(futures::stream::iter(batches).boxed()) }.boxed()
        }
    }

    fn ids(range: std::ops::Range<i64>) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let ops: Vec<String> = range.clone().map(|i| format!("op-{i}")).collect();
        RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from_iter_values(range)) as _),
            ("operation_id", Arc::new(StringArray::from(ops)) as _),
        ])
    }

    fn load(table: &str, batches: Vec<RecordBatch>) -> ObjectLoad {
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        ObjectLoad {
            uri: "s3://b/k".into(),
            table: table.into(),
            idempotency_key: "k".into(),
            rows,
            schema: None,
            source: Arc::new(Batches(batches.into_iter().map(Ok).collect())),
            transformed: false,
        }
    }

    #[tokio::test]
    async fn collect_concatenates_every_batch() -> Result<(), Box<dyn std::error::Error>> {
        let rows = load("t", vec![ids(0..3)?, ids(3..5)?]).collect().await;
        let rows = rows.map_err(|e| format!("{e:?}"))?;
        assert_eq!(rows.batch.num_rows(), 5);
        assert_eq!(rows.idempotency_key.as_deref(), Some("k"));
        Ok(())
    }

    #[tokio::test]
    async fn query_log_objects_are_sampled_the_same_way_on_every_open()
    -> Result<(), Box<dyn std::error::Error>> {
        let load = load(QUERY_LOG, vec![ids(0..500)?, ids(500..1000)?]).sampled(0.5);
        let count = |l: &ObjectLoad| {
            let l = l.clone();
            async move {
                let mut total = 0;
                let mut s = l.source.open().await.map_err(|e| format!("{e:?}"))?;
                while let Some(b) = s.next().await {
                    total += b.map_err(|e| format!("{e:?}"))?.num_rows();
                }
                Ok::<usize, String>(total)
            }
        };
        let first = count(&load).await?;
        assert!((350..650).contains(&first), "{first}");
        assert_eq!(count(&load).await?, first);
        assert!(load.transformed);
        // Other tables are never sampled.
        let other = self::load("t", vec![ids(0..10)?]).sampled(0.5);
        assert_eq!(count(&other).await?, 10);
        assert!(!other.transformed);
        Ok(())
    }
}
