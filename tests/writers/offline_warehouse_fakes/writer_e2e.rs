//! The real `bgpersist-writer` (OFFLINE_WRITER) on the rig's Kafka, with
//! its offline store URI naming BigQuery or Snowflake and the endpoint
//! override pointing at the fakes. Shows: the writer picks the store from
//! the URI scheme, the shared runtime retries the store's Retriable errors
//! (fake 503s) without losing or duplicating rows, offsets are committed,
//! and a replayed batch adds nothing. Not shown: anything about the real
//! services beyond what the fakes model.

use super::fake_bigquery::FakeBigQuery;
use super::fake_snowflake::FakeSnowflake;
use crate::harness::*;
use crate::offline_harness::offline_env;
use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use std::collections::BTreeSet;
use std::time::Duration;

const MESSAGES: u64 = 30;
const RETRIES: &str = "bgpersist_writer_write_retries_total";

/// Message `i`: features age (int), score (double) and tags (JSON) of entity `i`.
fn result(run: &str, i: u64) -> Vec<u8> {
    let values = ["age", "score", "tags"]
        .into_iter()
        .map(|f| FeatureValue {
            namespace: "user".into(),
            feature: f.into(),
            pkey: i.to_string(),
            value: Some(Value {
                kind: Some(match f {
                    "age" => Kind::IntValue(i as i64),
                    "score" => Kind::DoubleValue(i as f64 / 2.0),
                    _ => Kind::JsonValue(format!("{{\"n\": {i}}}")),
                }),
            }),
            observed_at_micros: 1_700_000_000_000_000 + i as i64,
            resolver_fqn: format!("user.{f}"),
            observation_id: format!("{run}-{i}-{f}"),
            ..Default::default()
        })
        .collect();
    ResultMessage {
        operation_id: format!("{run}-op-{i}"),
        values,
        ..Default::default()
    }
    .encode_to_vec()
}

async fn committed(topic: &str, group: &str, total: i64, writer: &Writer) -> anyhow::Result<()> {
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

/// Runs the writer with `store_env` over MESSAGES messages, produced twice,
/// the store failing at first; returns the writer for its metrics.
async fn run_twice(store_uri: &str, store_env: (&'static str, String)) -> anyhow::Result<Writer> {
    let (topic, dlq, group) = (unique("offwh"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let run = unique("r");
    let batch: Vec<Vec<u8>> = (0..MESSAGES).map(|i| result(&run, i)).collect();
    produce(&topic, &batch).await?;
    let mut env = offline_env("OFFLINE_WRITER", &topic, &dlq, &group, store_uri);
    env.push(store_env);
    let writer = Writer::start(&env)?;
    committed(&topic, &group, MESSAGES as i64, &writer).await?;
    produce(&topic, &batch).await?;
    committed(&topic, &group, 2 * MESSAGES as i64, &writer).await?;
    Ok(writer)
}

/// FakeBigQuery behind the real writer: every observation lands once in
/// its per-feature table despite two 503s and a replay of the whole batch.
#[tokio::test]
async fn fake_bigquery_offline_writer_end_to_end() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    fake.fail_inserts(&[503, 503]);
    let writer = run_twice(
        "bigquery://proj/features",
        ("BGP_BIGQUERY_ENDPOINT", fake.url.clone()),
    )
    .await?;
    for table in ["user__age", "user__score", "user__tags"] {
        let rows = fake.rows("features", table);
        let ids: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r["observation_id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            (rows.len(), ids.len()),
            (MESSAGES as usize, MESSAGES as usize),
            "{table}"
        );
    }
    let types: Vec<String> = fake
        .fields("features", "user__tags")
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f["name"].as_str().unwrap_or(""),
                f["type"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(types.contains(&"value:JSON".to_string()), "{types:?}");
    assert!(
        writer.metric(RETRIES).unwrap_or(0.0) >= 2.0,
        "{}",
        writer.metrics()
    );
    Ok(())
}

/// FakeSnowflake behind the real writer: the same, with 503s that outlast
/// the store's own resubmissions so the runtime retries.
#[tokio::test]
async fn fake_snowflake_offline_writer_end_to_end() -> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    fake.fail_next(&[503, 503, 503]);
    let writer = run_twice(
        "snowflake://loader@acct/DB/SCH?warehouse=WH",
        ("BGP_SNOWFLAKE_ENDPOINT", fake.url.clone()),
    )
    .await?;
    for table in ["user__age", "user__score", "user__tags"] {
        let rows = fake.rows(table);
        let ids: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| {
                r.get("OBSERVATION_ID")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            (rows.len(), ids.len()),
            (MESSAGES as usize, MESSAGES as usize),
            "{table}"
        );
    }
    assert!(
        writer.metric(RETRIES).unwrap_or(0.0) >= 1.0,
        "{}",
        writer.metrics()
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
    Ok(())
}
