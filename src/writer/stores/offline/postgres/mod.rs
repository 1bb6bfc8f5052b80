//! The Postgres offline store.
//!
//! One `load` is one transaction. Entries for the same table with the same
//! columns form a group, loaded under a savepoint: its idempotency keys are
//! claimed in `bgpersist_loads` (keys already there are skipped), then its
//! rows are binary-COPYed straight into the table. A replayed row makes that
//! COPY fail on the table's unique key; the group is then rolled back to its
//! savepoint and loaded the careful way: COPY into a temporary staging table
//! and `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, so replayed rows add
//! nothing. (Fresh rows, the common case, thus cost one COPY; a column whose
//! type differs from the rows' always goes through staging, which casts.)
//! When Postgres refuses a group for its data, each entry is loaded under its
//! own savepoint so only the faulty ones are refused. Tables are created on
//! first use and gain columns as new ones appear.

mod catalog;
pub mod copy;
pub mod sql;
mod stream;
pub mod types;

use super::object::ObjectLoad;
use super::{OfflineStore, TableRows, ident};
use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::postgres::{self as pg, PgError};
use arrow_array::RecordBatch;
use catalog::{Catalog, Shape};
use copy::Rows;
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use types::ColumnPlan;

/// Connections per writer: two loads in flight (overlapping batches), one spare.
const POOL_SIZE: usize = 3;
/// A load that takes longer is abandoned and retried.
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '300s'";

pub struct PostgresStore {
    pool: Pool,
    catalog: Catalog,
    loads_table_ready: AtomicBool,
}

/// One entry of a load, ready to stream.
struct Entry<'a> {
    index: usize,
    key: Option<&'a str>,
    rows: Rows<'a>,
}

/// Entries for one table with the same columns.
struct Group<'a> {
    table: &'a str,
    columns: Vec<ColumnPlan>,
    entries: Vec<Entry<'a>>,
    /// Every column of the table has exactly the rows' wire type, so the rows
    /// can be COPYed into it as they are.
    direct: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// COPY into the table itself.
    Direct,
    /// COPY into a staging table, then INSERT ... ON CONFLICT DO NOTHING.
    Staged,
}

/// How a group's load ended.
enum Outcome {
    Loaded,
    /// A direct COPY met a row already in the table (rolled back): stage it.
    Replayed,
    /// Postgres refused the rows (rolled back to the savepoint): the reason.
    Refused(String),
    /// The transaction cannot go on: retry the whole load.
    Retry(WriterError),
}

impl PostgresStore {
    /// A store on `uri` (`postgres://` or `postgresql://`). Connects lazily:
    /// a database that is down at start is retried like any outage.
    pub fn open(uri: &str) -> Result<Self, PgError> {
        Ok(PostgresStore {
            pool: pg::pool(uri, POOL_SIZE)?,
            catalog: Catalog::default(),
            loads_table_ready: AtomicBool::new(false),
        })
    }

    /// A pooled connection, with `bgpersist_loads` made sure of.
    async fn connection(&self) -> Result<deadpool_postgres::Object, WriterError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| WriterError::Retriable(format!("postgres connection: {e}")))?;
        self.ensure_loads_table(&mut conn).await?;
        Ok(conn)
    }

    async fn ensure_loads_table(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<(), WriterError> {
        if self.loads_table_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let tx = client.transaction().await.map_err(|e| retry("begin", &e))?;
        tx.execute(
            sql::DDL_LOCK,
            &[&format!("bgpersist.offline.{}", sql::LOADS_TABLE)],
        )
        .await
        .map_err(|e| retry("lock", &e))?;
        tx.batch_execute(&sql::create_loads_table())
            .await
            .map_err(|e| retry("create bgpersist_loads", &e))?;
        tx.commit().await.map_err(|e| retry("commit", &e))?;
        self.loads_table_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Classifies a failed statement of a group.
    fn outcome(&self, table: &str, e: &tokio_postgres::Error) -> Outcome {
        if retriable(e) {
            return Outcome::Retry(retry(table, e));
        }
        if let Some(code) = e.code()
            && (*code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN)
        {
            // Dropped or altered behind our back: learn the table again.
            self.catalog.forget(table);
            self.loads_table_ready.store(false, Ordering::Release);
            return Outcome::Retry(retry(table, e));
        }
        Outcome::Refused(format!(
            "postgres refused rows for table {table}: {}",
            pg_text(e)
        ))
    }

    /// Loads `entries` of one group: straight into the table when it can,
    /// through staging when that meets replayed rows or types differ.
    async fn load_entries(
        &self,
        tx: &mut Transaction<'_>,
        group: &Group<'_>,
        entries: &[&Entry<'_>],
        claimed: &mut HashSet<(String, String)>,
        stage: &mut usize,
    ) -> Outcome {
        if group.direct {
            match self
                .load_group(tx, group, entries, claimed, stage, Path::Direct)
                .await
            {
                Outcome::Replayed => {}
                done => return done,
            }
        }
        self.load_group(tx, group, entries, claimed, stage, Path::Staged)
            .await
    }

    /// Loads `entries` of one group under a savepoint.
    async fn load_group(
        &self,
        tx: &mut Transaction<'_>,
        group: &Group<'_>,
        entries: &[&Entry<'_>],
        claimed: &mut HashSet<(String, String)>,
        stage: &mut usize,
        path: Path,
    ) -> Outcome {
        *stage += 1;
        let name = format!("bgpersist_stage_{stage}");
        let sp = match tx.savepoint(format!("bgp_{stage}")).await {
            Ok(sp) => sp,
            Err(e) => return Outcome::Retry(retry(group.table, &e)),
        };
        let mut fresh = Vec::new();
        let target = (path == Path::Staged).then_some(name.as_str());
        match copy_rows(&sp, group, entries, claimed, target, &mut fresh).await {
            Ok(()) => match sp.commit().await {
                Ok(()) => {
                    claimed.extend(fresh.into_iter().map(|k| (group.table.to_string(), k)));
                    Outcome::Loaded
                }
                Err(e) => Outcome::Retry(retry(group.table, &e)),
            },
            Err(e) => {
                let outcome =
                    if path == Path::Direct && e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        Outcome::Replayed
                    } else {
                        self.outcome(group.table, &e)
                    };
                // A failed rollback leaves the transaction unusable.
                match (sp.rollback().await, outcome) {
                    (Ok(()), outcome) => outcome,
                    (Err(e), _) => Outcome::Retry(retry(group.table, &e)),
                }
            }
        }
    }
}

/// Claims the entries' keys and copies their rows: into the table, or with
/// `stage`, into that staging table and from there into the table.
async fn copy_rows(
    tx: &Transaction<'_>,
    group: &Group<'_>,
    entries: &[&Entry<'_>],
    claimed: &HashSet<(String, String)>,
    stage: Option<&str>,
    fresh: &mut Vec<String>,
) -> Result<(), tokio_postgres::Error> {
    let mut todo: Vec<&Entry<'_>> = Vec::new();
    let mut keyed: Vec<(&str, i64, &Entry<'_>)> = Vec::new();
    let mut seen = HashSet::new();
    for e in entries {
        match e.key {
            None => todo.push(e),
            // A key loaded earlier in this transaction, or twice in this batch.
            Some(k) if claimed.contains(&(group.table.to_string(), k.to_string())) => {}
            Some(k) if !seen.insert(k) => {}
            Some(k) => keyed.push((k, e.rows.len() as i64, e)),
        }
    }
    if !keyed.is_empty() {
        // Sorted, so concurrent writers claim in the same order (no deadlock).
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        let keys: Vec<&str> = keyed.iter().map(|k| k.0).collect();
        let counts: Vec<i64> = keyed.iter().map(|k| k.1).collect();
        let rows = tx
            .query(&sql::claim_keys(), &[&group.table, &keys, &counts])
            .await?;
        let mut new_keys = HashSet::new();
        for row in rows {
            new_keys.insert(row.try_get::<_, String>(0)?);
        }
        for (k, _, e) in keyed {
            if new_keys.contains(k) {
                todo.push(e);
            }
        }
        fresh.extend(new_keys);
    }
    if todo.iter().all(|e| e.rows.is_empty()) {
        return Ok(());
    }
    if let Some(stage) = stage {
        tx.batch_execute(&sql::create_staging(stage, &group.columns))
            .await?;
    }
    let sink = tx
        .copy_in(&sql::copy_from_stdin(
            stage.unwrap_or(group.table),
            &group.columns,
        ))
        .await?;
    let wire: Vec<_> = group.columns.iter().map(|c| c.wire.clone()).collect();
    let writer = BinaryCopyInWriter::new(sink, &wire);
    let mut writer = std::pin::pin!(writer);
    for e in todo {
        e.rows.copy(writer.as_mut()).await?;
    }
    writer.as_mut().finish().await?;
    if let Some(stage) = stage {
        tx.execute(
            &sql::insert_from_staging(group.table, stage, &group.columns),
            &[],
        )
        .await?;
    }
    Ok(())
}

/// Whether a failed statement may succeed later as is. Besides outages, a
/// missing privilege or a read-only server (a failover in progress) are the
/// operator's to fix: the rows wait, they are not dead-lettered.
fn retriable(e: &tokio_postgres::Error) -> bool {
    pg::is_retriable(e)
        || e.code().is_some_and(|c| {
            *c == SqlState::INSUFFICIENT_PRIVILEGE || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        })
}

fn retry(what: &str, e: &tokio_postgres::Error) -> WriterError {
    WriterError::Retriable(format!("postgres ({what}): {}", pg_text(e)))
}

/// A Postgres error as one line: message, SQLSTATE and detail.
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            s
        }
        None => e.to_string(),
    }
}

/// Why rows with `columns` cannot go into `table` as it is, if they cannot.
fn incompatible(table: &str, shape: &Shape, columns: &[ColumnPlan]) -> Option<String> {
    columns.iter().find_map(|c| match shape.get(&c.name) {
        None => Some(format!("table {table} has no column {:?}", c.name)),
        Some(existing) if !types::accepts(existing.oid, c) => Some(format!(
            "column {} of table {table} is {}; these rows carry {}",
            sql::quote(&c.name),
            existing.sql,
            c.sql
        )),
        Some(_) => None,
    })
}

/// An entry's batch (dictionaries unpacked) and the plan of each column to
/// load, by column index.
type Planned = (RecordBatch, Vec<(usize, ColumnPlan)>);

/// The entry's plan, or `None` when it has nothing to load.
fn plan_entry(rows: &TableRows) -> Result<Option<Planned>, String> {
    ident::check_table(&rows.table)?;
    plan_batch(&rows.batch)
}

/// The batch's plan, or `None` when it has nothing to load.
fn plan_batch(batch: &RecordBatch) -> Result<Option<Planned>, String> {
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let batch = copy::normalize(batch)?;
    let mut plans = Vec::new();
    for (i, field) in batch.schema().fields().iter().enumerate() {
        ident::check_column(field.name())?;
        if let Some(p) = types::plan(field)? {
            plans.push((i, p));
        }
    }
    Ok((!plans.is_empty()).then_some((batch, plans)))
}

impl OfflineStore for PostgresStore {
    async fn load(&self, rows: &[TableRows]) -> Result<Vec<Rejected>, WriterError> {
        let mut rejected = Vec::new();
        let planned: Vec<Option<Planned>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                plan_entry(r).unwrap_or_else(|reason| {
                    rejected.push(Rejected { record: i, reason });
                    None
                })
            })
            .collect();
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (index, slot) in planned.iter().enumerate() {
            let Some((batch, plans)) = slot else { continue };
            let table = rows[index].table.as_str();
            let indices: Vec<usize> = plans.iter().map(|(i, _)| *i).collect();
            let columns: Vec<ColumnPlan> = plans.iter().map(|(_, p)| p.clone()).collect();
            let entry = match Rows::new(batch, &indices) {
                Ok(r) => Entry {
                    index,
                    key: rows[index].idempotency_key.as_deref(),
                    rows: r,
                },
                Err(reason) => {
                    rejected.push(Rejected {
                        record: index,
                        reason: format!("{table}: {reason}"),
                    });
                    continue;
                }
            };
            match groups
                .iter_mut()
                .find(|g| g.table == table && g.columns == columns)
            {
                Some(g) => g.entries.push(entry),
                None => groups.push(Group {
                    table,
                    columns,
                    entries: vec![entry],
                    direct: false,
                }),
            }
        }
        if groups.is_empty() {
            return Ok(rejected);
        }

        let mut conn = self.connection().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let mut ready = Vec::with_capacity(groups.len());
        for mut g in groups {
            let refused = match self.catalog.ensure(client, g.table, &g.columns).await {
                Ok(shape) => {
                    g.direct = g.columns.iter().all(|c| {
                        shape
                            .get(&c.name)
                            .is_some_and(|existing| existing.oid == c.wire.oid())
                    });
                    incompatible(g.table, &shape, &g.columns)
                }
                Err(e) if retriable(&e) => return Err(retry(g.table, &e)),
                Err(e) => Some(format!(
                    "cannot create or evolve table {}: {}",
                    g.table,
                    pg_text(&e)
                )),
            };
            match refused {
                Some(reason) => rejected.extend(g.entries.iter().map(|e| Rejected {
                    record: e.index,
                    reason: reason.clone(),
                })),
                None => ready.push(g),
            }
        }

        let mut tx = client.transaction().await.map_err(|e| retry("begin", &e))?;
        tx.batch_execute(STATEMENT_TIMEOUT)
            .await
            .map_err(|e| retry("begin", &e))?;
        let mut claimed = HashSet::new();
        let mut stage = 0;
        for g in &ready {
            let all: Vec<&Entry<'_>> = g.entries.iter().collect();
            match self
                .load_entries(&mut tx, g, &all, &mut claimed, &mut stage)
                .await
            {
                Outcome::Loaded | Outcome::Replayed => continue,
                Outcome::Retry(e) => return Err(e),
                Outcome::Refused(reason) if all.len() == 1 => {
                    rejected.push(Rejected {
                        record: all[0].index,
                        reason,
                    });
                    continue;
                }
                Outcome::Refused(_) => {}
            }
            // Find the faulty entries: each on its own.
            for e in all {
                match self
                    .load_entries(&mut tx, g, &[e], &mut claimed, &mut stage)
                    .await
                {
                    Outcome::Loaded | Outcome::Replayed => {}
                    Outcome::Retry(err) => return Err(err),
                    Outcome::Refused(reason) => rejected.push(Rejected {
                        record: e.index,
                        reason,
                    }),
                }
            }
        }
        tx.commit().await.map_err(|e| retry("commit", &e))?;
        Ok(rejected)
    }

    async fn load_object(&self, object: &ObjectLoad) -> Result<Option<String>, WriterError> {
        self.load_stream(object).await
    }
}
