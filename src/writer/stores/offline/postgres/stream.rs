//! One object into Postgres as a stream of batches: one transaction per
//! object, its idempotency key claimed first (a replayed object adds
//! nothing), then one COPY fed batch by batch, so memory holds one batch and
//! never the object. A replayed row on the direct path rolls back to the
//! savepoint and the object streams again through staging, like a batch.

use super::copy::{self, Rows};
use super::sql;
use super::types::ColumnPlan;
use super::{Path, PostgresStore, incompatible, pg_text, plan_batch, retriable, retry};
use crate::writer::runtime::sink::WriterError;
use crate::writer::stores::offline::ident;
use crate::writer::stores::offline::object::{BatchStream, ObjectLoad, SourceError};
use arrow_array::RecordBatch;
use futures::StreamExt;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;

/// One COPY may stream gigabytes: allow it an hour, not a batch's 300 s.
const STREAM_TIMEOUT: &str = "SET LOCAL statement_timeout = '3600s'";
const STAGE: &str = "bgpersist_stage_object";

/// Why a streamed COPY stopped.
enum Stop {
    Source(SourceError),
    Postgres(tokio_postgres::Error),
    /// A batch the plan of the first one does not fit.
    Refused(String),
}

/// What the first batch of an object decided: its columns, in COPY order.
struct Plan {
    columns: Vec<ColumnPlan>,
    indices: Vec<usize>,
}

impl PostgresStore {
    pub(super) async fn load_stream(
        &self,
        object: &ObjectLoad,
    ) -> Result<Option<String>, WriterError> {
        if let Err(reason) = ident::check_table(&object.table) {
            return Ok(Some(reason));
        }
        let table = object.table.as_str();
        let (plan, first, rest) = match open_planned(object).await? {
            Open::Ready(plan, first, rest) => (plan, first, rest),
            Open::Empty => return Ok(None),
            Open::Refused(reason) => return Ok(Some(reason)),
        };
        let mut conn = self.connection().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let shape = match self.catalog.ensure(client, table, &plan.columns).await {
            Ok(shape) => shape,
            Err(e) if retriable(&e) => return Err(retry(table, &e)),
            Err(e) => {
                return Ok(Some(format!(
                    "cannot create or evolve table {table}: {}",
                    pg_text(&e)
                )));
            }
        };
        if let Some(reason) = incompatible(table, &shape, &plan.columns) {
            return Ok(Some(reason));
        }
        let direct = plan.columns.iter().all(|c| {
            shape
                .get(&c.name)
                .is_some_and(|existing| existing.oid == c.wire.oid())
        });

        let mut tx = client.transaction().await.map_err(|e| retry("begin", &e))?;
        tx.batch_execute(STREAM_TIMEOUT)
            .await
            .map_err(|e| retry("begin", &e))?;
        let keys = [object.idempotency_key.as_str()];
        let counts = [object.rows as i64];
        let claimed = tx
            .query(
                &sql::claim_keys(),
                &[&table, &keys.as_slice(), &counts.as_slice()],
            )
            .await
            .map_err(|e| retry(table, &e))?;
        if claimed.is_empty() {
            // Loaded before: the key's transaction committed every row.
            tx.commit().await.map_err(|e| retry("commit", &e))?;
            return Ok(None);
        }

        let mut path = if direct { Path::Direct } else { Path::Staged };
        let (mut first, mut rest) = (first, rest);
        loop {
            let sp = tx
                .savepoint("bgp_object")
                .await
                .map_err(|e| retry(table, &e))?;
            let stage = (path == Path::Staged).then_some(STAGE);
            let stop = match copy_stream(&sp, table, &plan, first, rest, stage).await {
                Ok(()) => {
                    sp.commit().await.map_err(|e| retry(table, &e))?;
                    tx.commit().await.map_err(|e| retry("commit", &e))?;
                    return Ok(None);
                }
                Err(stop) => stop,
            };
            sp.rollback().await.map_err(|e| retry(table, &e))?;
            match stop {
                Stop::Postgres(e)
                    if path == Path::Direct && e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
                {
                    // Some rows are already in the table: stream it again
                    // through staging, which skips them.
                    path = Path::Staged;
                    (first, rest) = match open_planned(object).await? {
                        Open::Ready(_, first, rest) => (first, rest),
                        Open::Empty => return Ok(None),
                        Open::Refused(reason) => return Ok(Some(reason)),
                    };
                }
                Stop::Postgres(e) => {
                    return match self.outcome(table, &e) {
                        super::Outcome::Retry(err) => Err(err),
                        super::Outcome::Refused(reason) => Ok(Some(reason)),
                        super::Outcome::Loaded | super::Outcome::Replayed => Ok(None),
                    };
                }
                Stop::Source(SourceError::Unavailable(reason)) => {
                    return Err(WriterError::Retriable(reason));
                }
                Stop::Source(SourceError::Refused(reason)) | Stop::Refused(reason) => {
                    return Ok(Some(reason));
                }
            }
        }
    }
}

/// An object opened for a COPY.
enum Open {
    /// No rows at all.
    Empty,
    Refused(String),
    /// Its columns, planned from the first non-empty batch, that batch and
    /// the rest of the stream.
    Ready(Plan, RecordBatch, BatchStream),
}

/// Opens the object and plans its columns from its first non-empty batch.
async fn open_planned(object: &ObjectLoad) -> Result<Open, WriterError> {
    let failed = |e: SourceError| match e {
        SourceError::Unavailable(reason) => Err(WriterError::Retriable(reason)),
        SourceError::Refused(reason) => Ok(Open::Refused(reason)),
    };
    let mut stream = match object.source.open().await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return failed(e),
        };
        match plan_batch(&batch) {
            Ok(None) => continue,
            Ok(Some((_, plans))) => {
                let plan = Plan {
                    indices: plans.iter().map(|(i, _)| *i).collect(),
                    columns: plans.into_iter().map(|(_, p)| p).collect(),
                };
                return Ok(Open::Ready(plan, batch, stream));
            }
            Err(reason) => return Ok(Open::Refused(format!("{}: {reason}", object.uri))),
        }
    }
    Ok(Open::Empty)
}

/// COPYs `first` and every batch after it into `table` (or with `stage`, into
/// that staging table and from there into `table`).
async fn copy_stream(
    tx: &Transaction<'_>,
    table: &str,
    plan: &Plan,
    first: RecordBatch,
    mut rest: BatchStream,
    stage: Option<&str>,
) -> Result<(), Stop> {
    if let Some(stage) = stage {
        tx.batch_execute(&sql::create_staging(stage, &plan.columns))
            .await
            .map_err(Stop::Postgres)?;
    }
    let sink = tx
        .copy_in(&sql::copy_from_stdin(stage.unwrap_or(table), &plan.columns))
        .await
        .map_err(Stop::Postgres)?;
    let wire: Vec<_> = plan.columns.iter().map(|c| c.wire.clone()).collect();
    let writer = BinaryCopyInWriter::new(sink, &wire);
    let mut writer = std::pin::pin!(writer);
    let mut next = Some(first);
    while let Some(batch) = next {
        let batch = copy::normalize(&batch).map_err(Stop::Refused)?;
        if batch.num_rows() > 0 {
            check_fits(&batch, plan)?;
            let rows = Rows::new(&batch, &plan.indices).map_err(Stop::Refused)?;
            rows.copy(writer.as_mut()).await.map_err(Stop::Postgres)?;
        }
        next = rest.next().await.transpose().map_err(Stop::Source)?;
    }
    writer.as_mut().finish().await.map_err(Stop::Postgres)?;
    if let Some(stage) = stage {
        tx.execute(&sql::insert_from_staging(table, stage, &plan.columns), &[])
            .await
            .map_err(Stop::Postgres)?;
    }
    Ok(())
}

/// Every batch of one parquet file has the same schema; a batch whose plan
/// differs (a sampled-out column, a corrupt footer) is refused, not guessed.
fn check_fits(batch: &RecordBatch, plan: &Plan) -> Result<(), Stop> {
    let fits = match plan_batch(batch) {
        Ok(Some((_, plans))) => {
            plans.len() == plan.columns.len()
                && plans
                    .iter()
                    .zip(plan.columns.iter().zip(&plan.indices))
                    .all(|((i, p), (c, j))| i == j && p == c)
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(Stop::Refused(
            "a row group's columns differ from the object's first rows".into(),
        ))
    }
}
