//! GO_RESULT_BUS_METRICS_WRITER → metrics bus → METRICS_BUS_WRITER →
//! Postgres on Pub/Sub (the rig's emulator), per-query metrics only
//! (`results_writer_skip_producing_feature_metrics`): the points land once,
//! poison is dead-lettered with attributes, and republished results add no rows.

use crate::harness::*;
use crate::metrics_kafka::{
    expected_points, metrics_bus_writer_env, metrics_writer_env, result, stored_points,
};
use crate::pg_store::Schema;
use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::ResultMessage;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_result_metrics_reach_the_metrics_store_once() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let schema = Schema::create("metrics_ps").await?;
    let result = through_pubsub(&mut ps, &schema).await;
    schema.drop_schema().await;
    ps.cleanup().await;
    result
}

async fn through_pubsub(ps: &mut PubsubResources, schema: &Schema) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    let results_topic = ps.topic(&unique("results")).await?;
    let results_sub_id = unique("metrics-writer");
    ps.subscription(&results_sub_id, &results_topic, deadline)
        .await?;
    let metrics_topic_id = unique("metrics");
    let metrics_topic = ps.topic(&metrics_topic_id).await?;
    let metrics_sub = ps
        .subscription(&unique("metrics-bus"), &metrics_topic, deadline)
        .await?;
    let dlq = ps.topic(&unique("dlq")).await?;
    let dlq_reader = ps
        .subscription(&unique("dlq-reader"), &dlq, deadline)
        .await?;

    let run = unique("p");
    let results: Vec<ResultMessage> = (0..20).map(|i| result(&run, i)).collect();
    let garbage = b"\x08\x96\x01 not a ResultMessage".to_vec();
    let mut messages: Vec<Outgoing> = results
        .iter()
        .map(|r| (r.encode_to_vec(), Vec::new()))
        .collect();
    messages.insert(3, (garbage.clone(), Vec::new()));
    let ids = pubsub_publish(&results_topic, &messages).await?;

    // Subscription and publish topic as short IDs (with the project), as the
    // seed example writes them; the DLQ as a full path.
    let mut env = metrics_writer_env("PUBSUB", &results_sub_id, &metrics_topic_id, &dlq, "");
    env.push(("BGP_WRITER_TYPE", "GO_RESULT_BUS_METRICS_WRITER".into()));
    env.push(("BGP_SKIP_FEATURE_METRICS", "true".into()));
    let producer_side = Writer::start(&env)?;
    let store_side = Writer::start(&metrics_bus_writer_env(
        "PUBSUB",
        &metrics_sub,
        &dlq,
        "",
        &schema.uri(),
    ))?;
    let logs = || {
        format!(
            "metrics writer log:\n{}\nmetrics bus writer log:\n{}",
            producer_side.log_text(),
            store_side.log_text()
        )
    };

    let want = expected_points(&results, true);
    // Query values and delay, plus null counts (i % 3 == 0: 7 results) and
    // invalid counts (i % 5 == 0: 4 results).
    assert_eq!(want.len(), 20 * 2 + 7 + 4);
    let (got, delays) = eventually(
        "the metrics store to hold every point",
        Duration::from_secs(60),
        || async {
            let (got, delays) = stored_points(schema).await?;
            Ok((got == want).then_some((got, delays)))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(delays.len(), 20);

    let mut reader = PubsubReader::start(&dlq_reader, deadline, 1).await?;
    let letters = reader.receive(1, Duration::from_secs(30)).await?;
    let attr = |k: &str| letters[0].attributes.get(k).map(String::as_str);
    assert_eq!(letters[0].data.as_ref(), garbage.as_slice());
    assert_eq!(attr("bgp-dlq-error-class"), Some("decode"));
    assert_eq!(attr("bgp-dlq-writer"), Some("metrics"));
    assert_eq!(attr("bgp-dlq-original-message-id"), Some(ids[3].as_str()));
    assert!(
        attr("bgp-dlq-error-message")
            .is_some_and(|m| m.contains("not a bgpersist.bus.v1.ResultMessage")),
        "{:?}",
        letters[0].attributes
    );
    reader.stop().await?;

    // The producer publishes every result again: no new rows, first values kept.
    let again: Vec<Outgoing> = results
        .iter()
        .map(|r| (r.encode_to_vec(), Vec::new()))
        .collect();
    pubsub_publish(&results_topic, &again).await?;
    eventually(
        "the metrics bus writer to write the replayed points",
        Duration::from_secs(60),
        || async {
            Ok(store_side
                .metric("bgpersist_writer_records_written_total")
                .filter(|w| *w >= (2 * want.len()) as f64))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(stored_points(schema).await?, (got, delays));
    assert_eq!(
        store_side.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0)
    );
    Ok(())
}
