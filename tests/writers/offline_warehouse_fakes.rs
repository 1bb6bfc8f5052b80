//! Contract tests of the BigQuery and Snowflake offline stores against
//! in-test FAKES of their REST APIs (no real BigQuery or Snowflake can run
//! here). Each fake reproduces the documented request, response and error
//! shapes and records what it receives; see the fakes' own doc comments for
//! what they model and what they do not.
//!
//! What these tests show: the requests the stores send (URLs, bodies, JSON
//! rows, insertIds, MERGE statements and bindings, auth headers), how they
//! react to the documented answers (created tables, schema patches, ALTERs,
//! per-row errors, 202 polling, 401/429/5xx), and that a replay adds no rows
//! *in the fake*. What they cannot show: that the real services accept every
//! request (SQL dialect, type coercions, quotas, IAM) or deduplicate as the
//! fakes do (BigQuery's insertId dedupe is best effort).

mod bigquery_contract;
mod bigquery_load_jobs;
mod fake_bigquery;
mod fake_bigquery_jobs;
mod fake_snowflake;
mod fake_snowflake_copy;
mod snowflake_contract;
mod snowflake_copy_into;
mod writer_e2e;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use bgpersist::writer::stores::offline::TableRows;
use bgpersist::writer::stores::offline::object::{BatchSource, BatchStream, SourceError};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An object's rows that a store loading the object where it lies must not
/// read: opening them counts and fails.
#[derive(Default)]
pub struct Untouched(AtomicUsize);

impl Untouched {
    pub fn opens(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl BatchSource for Untouched {
    fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        async { Err(SourceError::Refused("the store read the rows".into())) }.boxed()
    }
}

/// 2023-11-14T22:13:20Z
pub const TS: i64 = 1_700_000_000_000_000;

/// A per-feature table's rows: (observation_id, value) pairs of entity `u1`.
pub fn feature_rows(table: &str, observations: &[(&str, i64)]) -> anyhow::Result<TableRows> {
    let n = observations.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "observation_id",
            Arc::new(StringArray::from_iter_values(
                observations.iter().map(|(id, _)| *id),
            )),
        ),
        ("pkey", Arc::new(StringArray::from(vec!["u1"; n]))),
        (
            "value",
            Arc::new(Int64Array::from_iter_values(
                observations.iter().map(|(_, v)| *v),
            )),
        ),
        (
            "observed_at",
            Arc::new(TimestampMicrosecondArray::from(vec![TS; n]).with_timezone("UTC")),
        ),
        (
            "resolver_fqn",
            Arc::new(StringArray::from(vec!["user.age"; n])),
        ),
    ];
    Ok(TableRows {
        table: table.to_string(),
        batch: RecordBatch::try_from_iter(columns)?,
        idempotency_key: None,
    })
}

/// The same rows with one more column.
pub fn with_column(
    mut rows: TableRows,
    name: &str,
    values: Vec<&str>,
) -> anyhow::Result<TableRows> {
    let mut columns: Vec<(String, ArrayRef)> = rows
        .batch
        .schema()
        .fields()
        .iter()
        .zip(rows.batch.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect();
    columns.push((name.to_string(), Arc::new(StringArray::from(values))));
    rows.batch = RecordBatch::try_from_iter(columns)?;
    Ok(rows)
}

/// A per-feature entry whose `value` column is text, not a number.
pub fn text_value_rows(table: &str, id: &str, value: &str) -> anyhow::Result<TableRows> {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("observation_id", Arc::new(StringArray::from(vec![id]))),
        ("value", Arc::new(StringArray::from(vec![value]))),
    ];
    Ok(TableRows {
        table: table.to_string(),
        batch: RecordBatch::try_from_iter(columns)?,
        idempotency_key: None,
    })
}

/// A JSON feature's rows: `value` is JSON text tagged `arrow.json`, as the
/// OFFLINE_WRITER's decoder makes them.
pub fn json_feature_rows(table: &str, observations: &[(&str, &str)]) -> anyhow::Result<TableRows> {
    use arrow_schema::{DataType, Field, Schema};
    let value =
        Field::new("value", DataType::Utf8, true).with_metadata(std::collections::HashMap::from([
            ("ARROW:extension:name".to_string(), "arrow.json".to_string()),
        ]));
    let schema = Schema::new(vec![
        Field::new("observation_id", DataType::Utf8, false),
        value,
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            observations.iter().map(|(id, _)| *id),
        )),
        Arc::new(StringArray::from_iter_values(
            observations.iter().map(|(_, v)| *v),
        )),
    ];
    Ok(TableRows {
        table: table.to_string(),
        batch: RecordBatch::try_new(Arc::new(schema), columns)?,
        idempotency_key: None,
    })
}

/// Splits `inserted_at` off rows: (rows without it, its values).
pub fn split_inserted_at(rows: Vec<serde_json::Value>) -> (Vec<serde_json::Value>, Vec<String>) {
    let mut stamps = Vec::new();
    let rows = rows
        .into_iter()
        .map(|mut r| {
            let at = r
                .as_object_mut()
                .and_then(|o| o.remove("inserted_at").or_else(|| o.remove("INSERTED_AT")));
            stamps.push(
                at.and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            );
            r
        })
        .collect();
    (rows, stamps)
}

/// `query_log` rows keyed by operation_id, each naming the tables it wrote.
pub fn query_log_rows(operations: &[&str]) -> anyhow::Result<TableRows> {
    let n = operations.len();
    let mut tables =
        arrow_array::builder::ListBuilder::new(arrow_array::builder::StringBuilder::new());
    for _ in operations {
        tables.values().append_value("user__age");
        tables.values().append_value("user__score");
        tables.append(true);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "operation_id",
            Arc::new(StringArray::from(operations.to_vec())),
        ),
        ("value_tables", Arc::new(tables.finish())),
        (
            "query_status",
            Arc::new(StringArray::from(vec!["SUCCESS"; n])),
        ),
        (
            "query_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![TS; n]).with_timezone("UTC")),
        ),
    ];
    Ok(TableRows {
        table: "query_log".into(),
        batch: RecordBatch::try_from_iter(columns)?,
        idempotency_key: None,
    })
}

/// Rows of a table with no key column, made idempotent by the entry's key.
pub fn keyless_rows(table: &str, key: &str, values: &[i64]) -> anyhow::Result<TableRows> {
    let columns: Vec<(&str, ArrayRef)> = vec![(
        "v",
        Arc::new(Int64Array::from_iter_values(values.iter().copied())),
    )];
    Ok(TableRows {
        table: table.to_string(),
        batch: RecordBatch::try_from_iter(columns)?,
        idempotency_key: Some(key.to_string()),
    })
}
