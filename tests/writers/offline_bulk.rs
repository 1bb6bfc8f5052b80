//! OFFLINE_STORE_BULK_INSERT_WRITER: messages on Kafka point at parquet
//! objects in S3 (the rig's moto); the writer fetches and COPYs them into
//! Postgres. Replays load nothing twice; missing, corrupt or foreign objects
//! are dead-lettered with the reason; an unreachable object store is retried,
//! never dead-lettered.

use crate::harness::*;
use crate::offline_harness::*;
use crate::support::unique;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use std::sync::Arc;
use std::time::Duration;

/// `n` observations with ids `<prefix>-<i>`.
fn observations(prefix: &str, n: usize) -> anyhow::Result<Vec<u8>> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let batch = RecordBatch::try_from_iter([
        (
            "observation_id",
            Arc::new(StringArray::from(ids.clone())) as ArrayRef,
        ),
        (
            "pkey",
            Arc::new(StringArray::from(
                (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>(),
            )),
        ),
        (
            "value",
            Arc::new(Float64Array::from(
                (0..n).map(|i| i as f64 / 2.0).collect::<Vec<_>>(),
            )),
        ),
        (
            "observed_at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_700_000_000_000_000; n])
                    .with_timezone("UTC"),
            ),
        ),
    ])?;
    to_parquet(&batch)
}

async fn all_committed(
    topic: &str,
    group: &str,
    total: i64,
    writer: &Writer,
) -> anyhow::Result<()> {
    eventually(
        "every message committed",
        Duration::from_secs(90),
        || async {
            let (c, e) = committed_and_end(topic, group, 2)?;
            Ok((c == e && e == total).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))
}

#[tokio::test]
async fn bulk_objects_load_once_and_bad_objects_are_dead_lettered() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("bulk"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;
    let bucket = S3Bucket::create().await?;
    let run = unique("b");

    let mut good = Vec::new();
    for (k, rows) in [(0, 100), (1, 50), (2, 25)] {
        let uri = bucket
            .put(
                &format!("day=1/part-{k}.parquet"),
                observations(&format!("{run}-{k}"), rows)?,
            )
            .await?;
        // The second object comes without a producer key: its ETag identifies it.
        let key = if k == 1 {
            String::new()
        } else {
            format!("{run}-load-{k}")
        };
        good.push(bulk_message(&uri, "observations", rows as i64, &key));
    }
    let corrupt_uri = bucket
        .put("day=1/corrupt.parquet", b"PAR1 not parquet".to_vec())
        .await?;
    let missing = bulk_message(
        &format!("s3://{}/day=1/nope.parquet", bucket.name),
        "observations",
        0,
        "m",
    );
    let corrupt = bulk_message(&corrupt_uri, "observations", 0, "c");
    let foreign = bulk_message(
        "s3://somebody-elses-bucket/x.parquet",
        "observations",
        0,
        "f",
    );
    let miscounted = bulk_message(
        &format!("s3://{}/day=1/part-2.parquet", bucket.name),
        "observations",
        99,
        "w",
    );
    let mut first = good.clone();
    first.extend([
        missing.clone(),
        corrupt.clone(),
        foreign.clone(),
        miscounted.clone(),
    ]);
    produce(&topic, &first).await?;

    let mut env = offline_env(
        "OFFLINE_STORE_BULK_INSERT_WRITER",
        &topic,
        &dlq,
        &group,
        &pg.uri(),
    );
    env.extend(bucket.writer_env());
    let writer = Writer::start(&env)?;
    all_committed(&topic, &group, first.len() as i64, &writer).await?;
    assert_eq!(
        pg.count("observations", "observation_id").await?,
        (175, 175)
    );

    // The same batch again: nothing more.
    produce(&topic, &good).await?;
    all_committed(&topic, &group, (first.len() + good.len()) as i64, &writer).await?;
    assert_eq!(
        pg.count("observations", "observation_id").await?,
        (175, 175)
    );
    let keys = pg.texts("bgpersist_loads", "idempotency_key").await?;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with(&format!(
            "object:s3://{}/day=1/part-1.parquet#",
            bucket.name
        ))),
        "{keys:?}"
    );
    let sum: f64 = pg
        .client
        .query_one(
            &format!("SELECT sum(value) FROM {}", pg.table("observations")),
            &[],
        )
        .await?
        .try_get(0)?;
    let want: f64 = [100, 50, 25]
        .iter()
        .map(|n| (0..*n).map(|i| i as f64 / 2.0).sum::<f64>())
        .sum();
    assert_eq!(sum, want);

    let letters = dlq_letters(&dlq, 4).await?;
    let reason = |p: &[u8]| reason_of(&letters, p).unwrap_or_default().to_string();
    assert!(reason(&missing).contains("not found"), "{letters:?}");
    assert!(
        reason(&corrupt).contains("not a readable parquet file"),
        "{letters:?}"
    );
    assert!(
        reason(&foreign).contains("outside the upload bucket"),
        "{letters:?}"
    );
    assert!(
        reason(&miscounted).contains("the message says 99 rows, the object holds 25"),
        "{letters:?}"
    );
    pg.drop().await;
    Ok(())
}

#[tokio::test]
async fn bulk_unreachable_object_store_is_retried_not_dead_lettered() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("bulk"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;
    let bucket = S3Bucket::create().await?;
    let uri = bucket
        .put("part-0.parquet", observations(&unique("u"), 10)?)
        .await?;
    produce(&topic, &[bulk_message(&uri, "observations", 10, "only")]).await?;

    // First with S3 pointing at a closed local port: retried, nothing committed.
    let mut env = offline_env(
        "OFFLINE_STORE_BULK_INSERT_WRITER",
        &topic,
        &dlq,
        &group,
        &pg.uri(),
    );
    env.extend(bucket.writer_env());
    let mut down = env.clone();
    down.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    down.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", free_port()?),
    ));
    let mut writer = Writer::start(&down)?;
    eventually(
        "retries against the unreachable store",
        Duration::from_secs(60),
        || async {
            Ok((writer
                .metric("bgpersist_writer_write_retries_total")
                .unwrap_or(0.0)
                >= 2.0)
                .then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert_eq!(
        writer.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0)
    );
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(30))?, Some(0));
    assert_eq!(committed_and_end(&topic, &group, 2)?.0, 0);

    // Then with S3 reachable: the same message loads.
    let writer = Writer::start(&env)?;
    all_committed(&topic, &group, 1, &writer).await?;
    assert_eq!(pg.count("observations", "observation_id").await?, (10, 10));
    pg.drop().await;
    Ok(())
}
