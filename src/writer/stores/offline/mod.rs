//! The offline stores (Postgres, BigQuery, Snowflake) behind one
//! [`OfflineStore`] trait, and what the three offline writer types share:
//! each decodes its bus messages into [`TableRows`] (Arrow record batches
//! bound for one table) through a [`sink::Decoder`], and [`OfflineSink`]
//! hands them to the store.

pub mod bigquery;
pub mod bigquery_rows;
pub mod json_rows;
pub mod snowflake;
pub mod snowflake_auth;
pub mod snowflake_sql;
pub mod warehouse;

pub mod drop_ratio;
pub mod ident;
pub mod object;
pub mod parquet;
pub mod parquet_object;
pub mod postgres;
pub mod sink;
pub mod store;

pub use sink::OfflineSink;
pub use store::{OfflineError, Store, open_store};

use crate::writer::runtime::sink::{Rejected, WriterError};
use arrow_array::RecordBatch;
use object::{ObjectLoad, SourceError};
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
    ) -> impl Future<Output = Result<Vec<Rejected>, WriterError>> + Send;

    /// Loads one object in one transaction; `Ok(Some(reason))` when it is
    /// refused for good. Stores that cannot stream collect it in memory.
    fn load_object(
        &self,
        object: &ObjectLoad,
    ) -> impl Future<Output = Result<Option<String>, WriterError>> + Send {
        load_collected(self, object)
    }
}

/// Loads `object` through `store.load`, collected into one batch first.
pub async fn load_collected<S: OfflineStore + ?Sized>(
    store: &S,
    object: &ObjectLoad,
) -> Result<Option<String>, WriterError> {
    let rows = match object.collect().await {
        Ok(rows) => rows,
        Err(SourceError::Refused(reason)) => return Ok(Some(reason)),
        Err(SourceError::Unavailable(reason)) => return Err(WriterError::Retriable(reason)),
    };
    if rows.batch.num_rows() == 0 {
        return Ok(None);
    }
    let refused = store.load(std::slice::from_ref(&rows)).await?;
    Ok(refused.into_iter().next().map(|r| r.reason))
}
