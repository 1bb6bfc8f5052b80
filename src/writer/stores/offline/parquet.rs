//! Parquet bodies (streaming inserts) and objects (bulk inserts) into one
//! Arrow batch, with their column names checked.

use super::ident;
use arrow_array::RecordBatch;
use arrow_select::concat::concat_batches;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Rows decoded per step; the steps are concatenated into one batch.
const STEP_ROWS: usize = 65_536;

/// Reads a whole parquet file. Errors are worded for the dead-letter header.
/// The parser has panicked on corrupt files in the past: a panic is caught
/// here and refuses the file, so one bad body cannot crash-loop the writer.
pub fn read(bytes: Bytes) -> Result<RecordBatch, String> {
    match std::panic::catch_unwind(|| read_unguarded(bytes)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("parquet reader failed on this file: {what}"))
        }
    }
}

fn read_unguarded(bytes: Bytes) -> Result<RecordBatch, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("not a readable parquet file: {e}"))?;
    let schema = builder.schema().clone();
    for field in schema.fields() {
        ident::check_column(field.name())?;
    }
    let reader = builder
        .with_batch_size(STEP_ROWS)
        .build()
        .map_err(|e| format!("parquet file cannot be read: {e}"))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("parquet data is corrupt: {e}"))?;
    concat_batches(&schema, &batches)
        .map_err(|e| format!("parquet batches do not concatenate: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    /// Parquet bytes of `batch`, in row groups of at most `rows` rows.
    pub fn to_parquet_with_row_groups(batch: &RecordBatch, rows: usize) -> Vec<u8> {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .build();
        let mut out = Vec::new();
        if let Ok(mut w) = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)) {
            let _ = w.write(batch);
            let _ = w.close();
        }
        out
    }

    /// Parquet bytes of `batch`.
    pub fn to_parquet(batch: &RecordBatch) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok(mut w) = ArrowWriter::try_new(&mut out, batch.schema(), None) {
            let _ = w.write(batch);
            let _ = w.close();
        }
        out
    }

    #[test]
    fn round_trips_a_batch() -> Result<(), Box<dyn std::error::Error>> {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            (
                "name",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as _,
            ),
        ])?;
        let back = read(Bytes::from(to_parquet(&batch)))?;
        assert_eq!(back, batch);
        Ok(())
    }

    #[test]
    fn garbage_and_hostile_columns_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let err = read(Bytes::from_static(b"PAR1 not really"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("not a readable parquet file"), "{err}");
        let batch = RecordBatch::try_from_iter([(
            "x\"; DROP TABLE t; --",
            Arc::new(Int64Array::from(vec![1])) as _,
        )])?;
        let err = read(Bytes::from(to_parquet(&batch)))
            .err()
            .unwrap_or_default();
        assert!(err.contains("column name"), "{err}");
        Ok(())
    }
}
