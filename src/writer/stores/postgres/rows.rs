//! Batched, idempotent row writes into Postgres for the metrics and usage
//! stores: the table is created on first use, a batch is one statement, and
//! when Postgres refuses a batch for its data the refused rows are found by
//! bisection so the rest still lands.

use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::postgres as pg;
use deadpool_postgres::{Object, Pool};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A statement that takes longer than this is abandoned (its connection is
/// closed) and the batch retried: a wedged connection must not stall the writer.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Latest accepted timestamp, 9999-12-31T23:59:59.999999Z, in microseconds.
pub const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// A table the writer owns: its name and the DDL that creates it.
pub struct Table {
    pub name: &'static str,
    /// `CREATE TABLE IF NOT EXISTS ...; CREATE INDEX IF NOT EXISTS ...`.
    pub ddl: &'static str,
}

/// Rows that one statement inserts, idempotently.
pub trait InsertRows: Sync {
    fn row_count(&self) -> usize;
    /// Inserts the rows in `range` (conflicts with existing rows are no-ops).
    fn insert(
        &self,
        conn: &Object,
        range: Range<usize>,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
}

/// A Postgres store: a pool and the table, created when first needed and
/// again when it disappears (dropped under a running writer).
pub struct PgTable {
    pool: Pool,
    table: Table,
    ready: AtomicBool,
}

impl PgTable {
    pub fn new(pool: Pool, table: Table) -> Self {
        PgTable {
            pool,
            table,
            ready: AtomicBool::new(false),
        }
    }

    /// A connection, with the table in place. Every failure is retriable: a
    /// missing privilege or an unreachable server are fixed outside the writer.
    pub async fn connection(&self) -> Result<Object, WriterError> {
        let conn = self.pool.get().await.map_err(|e| {
            WriterError::Retriable(format!("postgres connection: {}", pg_error_text(&e)))
        })?;
        // Concurrent first writes may both create: the DDL is IF NOT EXISTS
        // under an advisory lock.
        if !self.ready.load(Ordering::Acquire) {
            create_table(&conn, &self.table).await?;
            self.ready.store(true, Ordering::Release);
        }
        Ok(conn)
    }

    /// Inserts every row; rows Postgres refuses for their data (a
    /// constraint, a value it cannot store) are isolated by bisection and
    /// returned as [`Rejected`], everything else is written. Any retriable
    /// failure aborts with [`WriterError::Retriable`]: statements are
    /// idempotent, so the runtime's retry of the whole batch is safe.
    pub async fn write_isolating<R: InsertRows + ?Sized>(
        &self,
        rows: &R,
    ) -> Result<Vec<Rejected>, WriterError> {
        let mut conn = self.connection().await?;
        let mut rejected = Vec::new();
        let mut todo = Vec::with_capacity(8);
        todo.push(0..rows.row_count());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            match tokio::time::timeout(STATEMENT_TIMEOUT, rows.insert(&conn, range.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if pg::is_retriable(&e) => {
                    if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                        self.ready.store(false, Ordering::Release);
                    }
                    return Err(WriterError::Retriable(format!(
                        "postgres {}: {}",
                        self.table.name,
                        pg_error_text(&e)
                    )));
                }
                Ok(Err(e)) if range.len() == 1 => rejected.push(Rejected {
                    record: range.start,
                    reason: format!("postgres refused the row: {}", pg_error_text(&e)),
                }),
                Ok(Err(_)) => {
                    let mid = range.start + range.len() / 2;
                    // Pushed in reverse so the lower half is tried first.
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Err(_) => {
                    // The connection may still be running the statement: close it.
                    drop(Object::take(conn));
                    return Err(WriterError::Retriable(format!(
                        "postgres {}: no answer within {STATEMENT_TIMEOUT:?}",
                        self.table.name
                    )));
                }
            }
            // A failed statement leaves the connection usable (autocommit), but
            // a fresh one costs nothing from the pool.
            if !todo.is_empty() && conn.is_closed() {
                conn = self.connection().await?;
            }
        }
        rejected.sort_by_key(|r| r.record);
        Ok(rejected)
    }
}

/// Whether a statement failed because a row's key is taken.
pub fn is_key_conflict(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A JSON text as a `jsonb` parameter or COPY field: jsonb's binary form is
/// a version byte (1) and the text, which the server parses.
#[derive(Debug)]
pub struct JsonbText<'a>(pub &'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// Creates the table unless it exists. The check comes first so that a
/// writer without CREATE privilege works on a table made ahead of time; the
/// advisory lock keeps concurrent replicas from racing on the catalog.
async fn create_table(conn: &Object, table: &Table) -> Result<(), WriterError> {
    let fail = |e: tokio_postgres::Error| {
        WriterError::Retriable(format!(
            "creating table {}: {}",
            table.name,
            pg_error_text(&e)
        ))
    };
    let exists: bool = conn
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.name])
        .await
        .map_err(fail)?
        .get(0);
    if exists {
        return Ok(());
    }
    let created = conn
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('bgpersist:{}')); {} COMMIT;",
            table.name, table.ddl
        ))
        .await;
    if let Err(e) = created {
        // A failed DDL leaves the session in an aborted transaction; the pool
        // would hand it out again and every later statement would fail.
        let _ = conn.batch_execute("ROLLBACK").await;
        return Err(fail(e));
    }
    Ok(())
}

/// The server's message (with its detail) rather than tokio-postgres's
/// generic "db error".
pub fn pg_error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(db) = s.downcast_ref::<tokio_postgres::error::DbError>() {
            return match db.detail() {
                Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
                None => format!("{} ({})", db.message(), db.code().code()),
            };
        }
        source = s.source();
    }
    e.to_string()
}

/// A timestamp from microseconds since the Unix epoch, if Postgres can hold
/// it and it is set (0 means unset in proto3).
pub fn timestamp(micros: i64) -> Option<SystemTime> {
    (micros > 0 && micros <= MAX_MICROS)
        .then(|| UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs()))
}

/// Postgres text cannot hold NUL characters; such a field makes a message poison.
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{field} contains a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_set_and_storable() {
        assert_eq!(timestamp(0), None);
        assert_eq!(timestamp(-1), None);
        assert_eq!(timestamp(MAX_MICROS + 1), None);
        assert_eq!(
            timestamp(1_500_000),
            Some(UNIX_EPOCH + Duration::from_micros(1_500_000))
        );
        assert!(timestamp(MAX_MICROS).is_some());
    }

    #[test]
    fn nul_characters_are_refused_with_the_field() {
        assert_eq!(check_text("name", "ok"), Ok(()));
        assert_eq!(
            check_text("labels.a", "x\0y"),
            Err("labels.a contains a NUL character".into())
        );
    }
}
