//! One Postgres table's rows as a writer's sink: the metrics store
//! (METRICS_BUS_WRITER) and the usage store (USAGE_BUS_WRITER) are each a
//! [`PgRow`] type, and [`RowSink`] does the rest. Fresh rows (the common
//! case) are streamed with one binary COPY; a batch holding rows stored
//! before (a replay) falls back to one INSERT of the rows as arrays that
//! skips existing keys. Both are idempotent, so two batches may be in flight.

use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use crate::writer::stores::postgres::rows::{InsertRows, PgTable, Table, is_key_conflict};
use crate::writer::stores::postgres::{self as pg, PgError};
use deadpool_postgres::Object;
use std::marker::PhantomData;
use std::ops::Range;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// Concurrent statements are not needed beyond the two batches in flight.
const POOL_SIZE: usize = 2;

/// A value `ToSql` can send (`Sync` so a batch's values may cross awaits).
pub type SqlValue<'a> = &'a (dyn ToSql + Sync);

/// The row type of one table.
pub trait PgRow: Send + Sync + Sized + 'static {
    const TABLE: Table;
    /// `COPY <table> (<columns>) FROM STDIN BINARY`.
    const COPY: &'static str;
    /// The COPY columns' types, in order.
    const COPY_TYPES: &'static [Type];
    /// `INSERT INTO <table> (<columns>) SELECT ... FROM unnest($1, ...)
    /// ON CONFLICT (<key>) DO NOTHING`: one array parameter per column.
    const INSERT: &'static str;

    /// One row's values in COPY column order, borrowed from it.
    type Values<'a>: CopyValues + Send + Sync
    where
        Self: 'a;

    /// One bus message's rows; an error makes the message poison.
    fn decode(payload: &[u8]) -> Result<Vec<Self>, String>;

    fn values(&self) -> Self::Values<'_>;

    /// The INSERT's parameters for `rows`: one array per column.
    fn columns(rows: &[Self]) -> Vec<Box<dyn ToSql + Send + Sync + '_>>;
}

/// A row's values, as the references a COPY writes.
pub trait CopyValues {
    fn refs(&self) -> Vec<SqlValue<'_>>;
}

/// The sink of a [`PgRow`] type.
pub struct RowSink<R> {
    table: PgTable,
    rows: PhantomData<fn() -> R>,
}

impl<R: PgRow> RowSink<R> {
    /// Builds the pool; connects (and creates the table) on the first write,
    /// so a store that is down at start-up is waited out like any outage.
    pub fn open(uri: &str) -> Result<Self, PgError> {
        Ok(RowSink {
            table: PgTable::new(pg::pool(uri, POOL_SIZE)?, R::TABLE),
            rows: PhantomData,
        })
    }
}

impl<R: PgRow> Sink for RowSink<R> {
    type Record = R;

    // Inserts that skip existing keys commute: two batches may be in
    // flight (on the pool's two connections) while offsets stay in order.
    const OVERLAPPING_WRITES: bool = true;

    fn decode(&self, payload: &[u8]) -> Result<Vec<R>, WriterError> {
        R::decode(payload).map_err(WriterError::Decode)
    }

    async fn write(&self, rows: &[R]) -> Result<Vec<Rejected>, WriterError> {
        self.table.write_isolating(rows).await
    }
}

impl<R: PgRow> InsertRows for [R] {
    fn row_count(&self) -> usize {
        self.len()
    }

    async fn insert(
        &self,
        conn: &Object,
        range: Range<usize>,
    ) -> Result<(), tokio_postgres::Error> {
        let rows = &self[range];
        match copy(conn, rows).await {
            Err(e) if is_key_conflict(&e) => insert_skipping_existing(conn, rows).await,
            done => done,
        }
    }
}

/// All or nothing: a row refused, or a key already stored, fails the COPY.
async fn copy<R: PgRow>(conn: &Object, rows: &[R]) -> Result<(), tokio_postgres::Error> {
    let writer = BinaryCopyInWriter::new(conn.copy_in(R::COPY).await?, R::COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        let values = r.values();
        writer.as_mut().write(&values.refs()).await?;
    }
    writer.finish().await.map(drop)
}

async fn insert_skipping_existing<R: PgRow>(
    conn: &Object,
    rows: &[R],
) -> Result<(), tokio_postgres::Error> {
    let columns = R::columns(rows);
    let params: Vec<SqlValue<'_>> = columns.iter().map(|c| &**c as SqlValue<'_>).collect();
    let statement = conn.prepare_cached(R::INSERT).await?;
    conn.execute(&statement, &params).await.map(drop)
}
