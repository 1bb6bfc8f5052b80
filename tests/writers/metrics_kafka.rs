//! METRICS_WRITER → metrics bus → METRICS_BUS_WRITER → Postgres, on Kafka:
//! the metrics of every result land once, poison on either bus is
//! dead-lettered, and replays of either bus add no rows.

use crate::harness::*;
use crate::pg_store::*;
use crate::support::{rig, unique};
use bgpersist::formats::Message;
use bgpersist::formats::v1::{
    FeatureValue, Metric, MetricsMessage, ResultMessage, Value, metric, value::Kind,
};
use bgpersist::writer::types::metrics_writer::compute::{QUERY_RESULT_DELAY, compute};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const TS: i64 = 1_763_000_000_000_000;

fn fv(feature: &str, pkey: usize, value: Option<Kind>, at: i64) -> FeatureValue {
    FeatureValue {
        namespace: "user".into(),
        feature: feature.into(),
        pkey: pkey.to_string(),
        value: value.map(|k| Value { kind: Some(k) }),
        observed_at_micros: at,
        ..Default::default()
    }
}

/// Result `i` of a run: two features, some nulls and some invalid values.
pub fn result(run: &str, i: usize) -> ResultMessage {
    let at = TS + i as i64 * 1000;
    ResultMessage {
        operation_id: format!("{run}-op-{i}"),
        environment_id: "env-metrics".into(),
        deployment_id: "dep-1".into(),
        produced_at_micros: at,
        values: vec![
            fv("age", i, Some(Kind::IntValue(i as i64)), at - 500_000),
            fv(
                "age",
                i + 1000,
                (!i.is_multiple_of(3)).then_some(Kind::IntValue(1)),
                at - 700_000,
            ),
            fv(
                "score",
                i,
                Some(Kind::DoubleValue(if i.is_multiple_of(5) {
                    f64::NAN
                } else {
                    0.5
                })),
                at - 2_000_000,
            ),
        ],
    }
}

/// The points the metrics of `results` should leave in the store, delays
/// aside (their values depend on when the writer ran).
pub fn expected_points(results: &[ResultMessage], skip_features: bool) -> BTreeSet<String> {
    results
        .iter()
        .flat_map(|r| {
            let m = compute(r, 0, skip_features);
            let env = m.environment_id.clone();
            m.metrics.into_iter().map(move |p| point_text(&env, p))
        })
        .collect()
}

fn point_text(env: &str, p: Metric) -> String {
    let labels: BTreeMap<String, String> = p.labels.into_iter().collect();
    let kind = bgpersist::writer::types::metrics_bus_writer::kind_name(p.kind);
    let value = if p.name == QUERY_RESULT_DELAY {
        "delay".to_string()
    } else {
        p.value.to_string()
    };
    format!(
        "{env} {} {labels:?} {kind} {} {value}",
        p.name, p.observed_at_micros
    )
}

/// Every row of the metrics table, as [`expected_points`] writes them, and
/// the delay values by operation.
pub async fn stored_points(
    schema: &Schema,
) -> anyhow::Result<(BTreeSet<String>, BTreeMap<String, f64>)> {
    let rows = schema
        .client
        .query(
            "SELECT environment_id, name, labels::text, kind,
                    (extract(epoch from observed_at) * 1000000)::bigint, value
             FROM metrics",
            &[],
        )
        .await?;
    let mut points = BTreeSet::new();
    let mut delays = BTreeMap::new();
    for r in rows {
        let labels: BTreeMap<String, String> = serde_json::from_str(r.get::<_, &str>(2))?;
        let name: String = r.get(1);
        if name == QUERY_RESULT_DELAY {
            let op = labels.get("operation_id").cloned().unwrap_or_default();
            delays.insert(op, r.get::<_, f64>(5));
        }
        let p = Metric {
            name,
            labels: labels.into_iter().collect(),
            value: r.get(5),
            observed_at_micros: r.get(4),
            kind: 0,
        };
        let text = point_text(r.get(0), p);
        // kind_name(0) was used above; put the stored kind back.
        let text = text.replacen(" unspecified ", &format!(" {} ", r.get::<_, &str>(3)), 1);
        anyhow::ensure!(points.insert(text.clone()), "row twice: {text}");
    }
    Ok((points, delays))
}

pub fn metrics_writer_env(
    backend: &str,
    subscription: &str,
    publish: &str,
    dlq: &str,
    group: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BGP_WRITER_TYPE", "METRICS_WRITER".into()),
        ("BGP_WRITER_NAME", "metrics".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", backend.into()),
        ("BGP_SUBSCRIPTION", subscription.into()),
        ("BGP_PUBLISH_TOPIC", publish.into()),
        ("BGP_DLQ_TOPIC", dlq.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ];
    kafka_or_pubsub(&mut env, backend, group);
    env
}

pub fn metrics_bus_writer_env(
    backend: &str,
    subscription: &str,
    dlq: &str,
    group: &str,
    uri: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BGP_WRITER_TYPE", "METRICS_BUS_WRITER".into()),
        ("BGP_WRITER_NAME", "metrics-bus".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", backend.into()),
        ("BGP_SUBSCRIPTION", subscription.into()),
        ("BGP_DLQ_TOPIC", dlq.into()),
        ("BGP_METRICS_STORE_URI", uri.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ];
    kafka_or_pubsub(&mut env, backend, group);
    env
}

fn kafka_or_pubsub(env: &mut Vec<(&'static str, String)>, backend: &str, group: &str) {
    if backend == "KAFKA" {
        env.push((
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ));
        env.push(("BGP_KAFKA_CONSUMER_GROUP", group.into()));
    } else {
        env.push(("BGP_PUBSUB_ENDPOINT", pubsub_endpoint()));
        env.push(("BGP_PUBSUB_PROJECT", pubsub_project()));
        env.push(("BGP_PUBSUB_ACK_DEADLINE_SECONDS", "10".into()));
    }
}

#[tokio::test]
async fn result_metrics_reach_the_metrics_store_once_through_kafka() -> anyhow::Result<()> {
    let schema = Schema::create("metrics").await?;
    let result = metrics_through_kafka(&schema).await;
    schema.drop_schema().await;
    result
}

async fn metrics_through_kafka(schema: &Schema) -> anyhow::Result<()> {
    let run = unique("m");
    let (results_topic, metrics_topic) = (unique("results"), unique("metrics"));
    let (dlq, dlq2) = (unique("dlq"), unique("dlq"));
    create_topics(&[
        (&results_topic, 3),
        (&metrics_topic, 2),
        (&dlq, 1),
        (&dlq2, 1),
    ])
    .await?;

    let results: Vec<ResultMessage> = (0..30).map(|i| result(&run, i)).collect();
    let mut payloads: Vec<Vec<u8>> = results.iter().map(|r| r.encode_to_vec()).collect();
    let garbage = b"\x08\x96\x01 not a ResultMessage".to_vec();
    payloads.insert(5, garbage.clone());
    produce(&results_topic, &payloads).await?;
    // A metrics message another producer got wrong: the metrics bus writer's poison.
    let bad_metrics = MetricsMessage {
        environment_id: "env-metrics".into(),
        metrics: vec![Metric {
            name: "broken".into(),
            value: f64::NAN,
            observed_at_micros: TS,
            kind: metric::Kind::Gauge as i32,
            ..Default::default()
        }],
    }
    .encode_to_vec();
    produce(&metrics_topic, std::slice::from_ref(&bad_metrics)).await?;

    let (g1, g2) = (unique("grp"), unique("grp"));
    let producer_side = Writer::start(&metrics_writer_env(
        "KAFKA",
        &results_topic,
        &metrics_topic,
        &dlq,
        &g1,
    ))?;
    let store_side = Writer::start(&metrics_bus_writer_env(
        "KAFKA",
        &metrics_topic,
        &dlq2,
        &g2,
        &schema.uri(),
    ))?;
    let logs = || {
        format!(
            "metrics writer log:\n{}\nmetrics bus writer log:\n{}",
            producer_side.log_text(),
            store_side.log_text()
        )
    };
    drained(&results_topic, &g1, 3, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    // One metrics message per result, plus the bad one.
    drained(&metrics_topic, &g2, 2, results.len() + 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    let want = expected_points(&results, false);
    // Per result: query values and delay, each feature's values and age (6),
    // plus a null count for age and the query when i % 3 == 0 (10 results)
    // and an invalid count for score and the query when i % 5 == 0 (6).
    assert_eq!(want.len(), 30 * 6 + 2 * 10 + 2 * 6);
    let (got, delays) = stored_points(schema).await?;
    assert_eq!(got, want);
    assert_eq!(delays.len(), 30);
    assert!(delays.values().all(|d| *d >= 0.0), "{delays:?}");

    // The metrics messages are keyed by operation.
    let consumer: StreamConsumer = kafka_plain()
        .set("group.id", unique("peek"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&metrics_topic])?;
    let mut keys = BTreeSet::new();
    for _ in 0..=results.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        keys.insert(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
    }
    let mut want_keys: BTreeSet<String> = results.iter().map(|r| r.operation_id.clone()).collect();
    want_keys.insert("0".into()); // the bad message, keyed by the harness
    assert_eq!(keys, want_keys);

    // Poison on each bus went to that writer's dead-letter topic.
    for (topic, payload, writer, reason) in [
        (
            &dlq,
            &garbage,
            "metrics",
            "not a bgpersist.bus.v1.ResultMessage",
        ),
        (&dlq2, &bad_metrics, "metrics-bus", "not a finite number"),
    ] {
        let letters = kafka_letters(topic, 1).await?;
        let (p, h) = &letters[0];
        assert_eq!(p, payload);
        assert_eq!(h.get("bgp-dlq-writer").map(String::as_str), Some(writer));
        assert_eq!(
            h.get("bgp-dlq-error-class").map(String::as_str),
            Some("decode")
        );
        let message = h.get("bgp-dlq-error-message").cloned().unwrap_or_default();
        assert!(message.contains(reason), "{message}");
    }

    // Replay of the result bus: every result again, through a new group.
    let g1b = unique("grp");
    let replay = Writer::start(&metrics_writer_env(
        "KAFKA",
        &results_topic,
        &metrics_topic,
        &dlq,
        &g1b,
    ))?;
    drained(&results_topic, &g1b, 3, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nreplay log:\n{}", replay.log_text()))?;
    drained(&metrics_topic, &g2, 2, 2 * results.len() + 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(stored_points(schema).await?, (got.clone(), delays.clone()));
    // Absorbed as duplicates, not refused: only the bad message was dead-lettered.
    assert_eq!(
        store_side.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(1.0)
    );

    // Replay of the metrics bus, by the Go-named twin of the writer.
    let g2b = unique("grp");
    let mut env = metrics_bus_writer_env("KAFKA", &metrics_topic, &dlq2, &g2b, &schema.uri());
    env.push(("BGP_WRITER_TYPE", "GO_METRICS_BUS_WRITER".into()));
    let twin = Writer::start(&env)?;
    drained(&metrics_topic, &g2b, 2, 2 * results.len() + 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntwin log:\n{}", twin.log_text()))?;
    assert_eq!(stored_points(schema).await?, (got, delays));
    assert_eq!(
        twin.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn metrics_writer_without_a_publish_topic_exits_2_with_one_line() -> anyhow::Result<()> {
    let mut env = metrics_writer_env("KAFKA", "results", "x", "dlq", "g");
    env.retain(|(k, _)| *k != "BGP_PUBLISH_TOPIC");
    let mut w = Writer::start(&env)?;
    assert_eq!(w.wait_exit(Duration::from_secs(10))?, Some(2));
    let log = w.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bgpersist-writer:"))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    assert!(lines[0].contains("BGP_PUBLISH_TOPIC is not set"), "{log}");
    Ok(())
}
