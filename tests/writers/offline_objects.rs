//! The Postgres offline store loading whole objects as streams of batches
//! (the bulk-insert path), on the rig's Postgres: one transaction per
//! object, a replay adds nothing, a failure half-way leaves nothing behind,
//! and rows already in the table are skipped through staging.

use crate::pg_store::Schema;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use bgpersist::writer::runtime::sink::WriterError;
use bgpersist::writer::stores::offline::OfflineStore;
use bgpersist::writer::stores::offline::object::{
    BatchSource, BatchStream, ObjectLoad, SourceError,
};
use bgpersist::writer::stores::offline::postgres::PostgresStore;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Batches of observations, then optionally an error; counts its opens.
struct Batches {
    batches: Vec<Result<RecordBatch, SourceError>>,
    opens: AtomicUsize,
}

impl BatchSource for Batches {
    fn open(&self) -> BoxFuture<'_, Result<BatchStream, SourceError>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let batches = self.batches.clone();
        async move { Ok(futures::stream::iter(batches).boxed()) }.boxed()
    }
}

fn observations(ids: std::ops::Range<i64>) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter([
        (
            "observation_id",
            Arc::new(StringArray::from(
                ids.clone().map(|i| format!("o{i}")).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("value", Arc::new(Int64Array::from_iter_values(ids))),
    ])?)
}

/// `ranges` as batches of observations, then `tail` (an error) if any.
fn object(
    key: &str,
    ranges: &[std::ops::Range<i64>],
    tail: Option<SourceError>,
) -> anyhow::Result<(ObjectLoad, Arc<Batches>)> {
    let mut batches = ranges
        .iter()
        .map(|r| observations(r.clone()).map(Ok))
        .collect::<anyhow::Result<Vec<_>>>()?;
    batches.extend(tail.map(Err));
    let source = Arc::new(Batches {
        batches,
        opens: AtomicUsize::new(0),
    });
    let rows = ranges.iter().map(|r| (r.end - r.start) as u64).sum();
    let load = ObjectLoad {
        uri: format!("s3://test/{key}.parquet"),
        table: "observations".into(),
        idempotency_key: key.into(),
        rows,
        schema: None,
        source: source.clone(),
        transformed: false,
    };
    Ok((load, source))
}

async fn sum_and_count(pg: &Schema) -> anyhow::Result<(i64, i64)> {
    let row = pg
        .client
        .query_one(
            &format!(
                "SELECT coalesce(sum(value), 0)::int8, count(*) FROM {}.observations",
                pg.name
            ),
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn loaded_keys(pg: &Schema) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = pg
        .client
        .query(
            &format!(
                "SELECT idempotency_key, row_count FROM {}.bgpersist_loads ORDER BY 1",
                pg.name
            ),
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

#[tokio::test]
async fn an_object_streams_in_one_transaction_and_a_replay_adds_nothing() -> anyhow::Result<()> {
    let pg = Schema::create("objects").await?;
    let store = PostgresStore::open(&pg.uri())?;
    let ranges: Vec<_> = (0..5).map(|i| i * 1000..(i + 1) * 1000).collect();
    let (load, source) = object("k1", &ranges, None)?;
    assert_eq!(store.load_object(&load).await?, None);
    let want = (0..5000).sum::<i64>();
    assert_eq!(sum_and_count(&pg).await?, (want, 5000));
    assert_eq!(source.opens.load(Ordering::SeqCst), 1);
    // Replayed: the key is claimed, the object is not even read again.
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(sum_and_count(&pg).await?, (want, 5000));
    assert_eq!(source.opens.load(Ordering::SeqCst), 2);
    assert_eq!(loaded_keys(&pg).await?, vec![("k1".to_string(), 5000)]);
    pg.drop_schema().await;
    Ok(())
}

#[tokio::test]
async fn a_failure_half_way_through_an_object_leaves_nothing_behind() -> anyhow::Result<()> {
    let pg = Schema::create("objects").await?;
    let store = PostgresStore::open(&pg.uri())?;
    let ranges = [0..1000, 1000..2000, 2000..3000];

    let corrupt = SourceError::Refused("row group 4 is corrupt".into());
    let (load, _) = object("k", &ranges, Some(corrupt))?;
    let refused = store.load_object(&load).await?;
    assert_eq!(refused.as_deref(), Some("row group 4 is corrupt"));
    assert_eq!(sum_and_count(&pg).await?, (0, 0));
    assert_eq!(loaded_keys(&pg).await?, vec![]);

    let outage = SourceError::Unavailable("object store for s3://test/k: timed out".into());
    let (load, _) = object("k", &ranges, Some(outage))?;
    let result = store.load_object(&load).await;
    assert!(
        matches!(&result, Err(WriterError::Retriable(r)) if r.contains("timed out")),
        "{result:?}"
    );
    assert_eq!(sum_and_count(&pg).await?, (0, 0));
    assert_eq!(loaded_keys(&pg).await?, vec![]);

    // The same key, readable now: every row, once.
    let (load, _) = object("k", &ranges, None)?;
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(sum_and_count(&pg).await?, ((0..3000).sum::<i64>(), 3000));
    pg.drop_schema().await;
    Ok(())
}

#[tokio::test]
async fn rows_already_loaded_under_another_key_are_skipped() -> anyhow::Result<()> {
    let pg = Schema::create("objects").await?;
    let store = PostgresStore::open(&pg.uri())?;
    let (first, _) = object("a", &[0..1500, 1500..3000], None)?;
    assert_eq!(store.load_object(&first).await?, None);
    // Overlaps the first object's last 1000 rows: the direct COPY meets them,
    // rolls back, and the object streams again through staging.
    let (second, source) = object("b", &[2000..4000, 4000..5000], None)?;
    assert_eq!(store.load_object(&second).await?, None);
    assert_eq!(source.opens.load(Ordering::SeqCst), 2);
    assert_eq!(sum_and_count(&pg).await?, ((0..5000).sum::<i64>(), 5000));
    assert_eq!(
        loaded_keys(&pg).await?,
        vec![("a".to_string(), 3000), ("b".to_string(), 3000)]
    );
    pg.drop_schema().await;
    Ok(())
}
