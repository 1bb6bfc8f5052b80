//! The offline writers (OFFLINE_WRITER, OFFLINE_STORE_STREAMING_INSERT_WRITER,
//! OFFLINE_STORE_BULK_INSERT_WRITER): each decodes its bus messages into
//! [`TableRows`] (Arrow record batches bound for one table) and hands them to
//! one [`OfflineStore`] (Postgres, BigQuery, Snowflake).

use crate::writer::sink::{Rejected, SinkError};
use arrow_array::RecordBatch;
use std::future::Future;

/// Rows for one table of the offline store, as Arrow columns.
#[derive(Debug, Clone)]
pub struct TableRows {
    /// Destination table (`query_log` or a per-feature table).
    pub table: String,
    pub batch: RecordBatch,
    /// Producer-chosen key: a load with a key already loaded adds no rows.
    pub idempotency_key: Option<String>,
}

/// A destination warehouse. `load` is idempotent: replaying the same rows
/// (same observation ids / idempotency keys) adds nothing.
pub trait OfflineStore: Send + Sync + 'static {
    /// Loads every entry; a returned [`Rejected`] names the index in `rows`
    /// the store refused for good (e.g. a type it cannot coerce).
    fn load(
        &self,
        rows: &[TableRows],
    ) -> impl Future<Output = Result<Vec<Rejected>, SinkError>> + Send;
}
