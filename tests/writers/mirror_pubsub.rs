//! QUERY_MIRROR_CONSUMER on Pub/Sub (the rig's emulator): each logged query
//! replayed once, poison dead-lettered with attributes, every message acked.

use crate::harness::*;
use crate::mirror_kafka::{logged_query, request_of};
use crate::mirror_target::MirrorTarget;
use crate::support::unique;
use std::time::Duration;

const ACK_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_mirror_replays_once_and_dead_letters_poison() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let result = replay(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn replay(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let target = MirrorTarget::start().await?;
    let topic = ps.topic(&unique("qlog")).await?;
    let subscription = ps
        .subscription(&unique("mirror"), &topic, ACK_DEADLINE)
        .await?;
    let dlq = ps.topic(&unique("dlq")).await?;
    let dlq_reader = ps
        .subscription(&unique("dlq-reader"), &dlq, ACK_DEADLINE)
        .await?;
    let run = unique("op");
    let ops: Vec<String> = (0..10).map(|i| format!("{run}-{i}")).collect();
    let mut messages: Vec<Outgoing> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| (logged_query(op, &request_of(i)), Vec::new()))
        .collect();
    let poison = logged_query(&format!("{run}-empty"), "");
    messages.insert(4, (poison.clone(), Vec::new()));
    let ids = pubsub_publish(&topic, &messages).await?;

    let mut writer = Writer::start(&[
        ("BGP_WRITER_TYPE", "QUERY_MIRROR_CONSUMER".into()),
        ("BGP_WRITER_NAME", "mirror".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "PUBSUB".into()),
        ("BGP_SUBSCRIPTION", subscription.clone()),
        ("BGP_PUBSUB_ENDPOINT", pubsub_endpoint()),
        ("BGP_PUBSUB_PROJECT", pubsub_project()),
        ("BGP_PUBSUB_ACK_DEADLINE_SECONDS", "10".into()),
        ("BGP_DLQ_TOPIC", dlq.clone()),
        ("BGP_API_SERVER_HOST", target.host()),
        ("BGP_MIRROR_RATE_PER_SECOND", "200".into()),
    ])?;
    eventually("ten replays", Duration::from_secs(60), || {
        let done = target.count() >= ops.len();
        async move { Ok(done.then_some(())) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    let mut reader = PubsubReader::start(&dlq_reader, ACK_DEADLINE, 1).await?;
    let letters = reader.receive(1, Duration::from_secs(30)).await?;
    reader.stop().await?;
    let attr = |k: &str| letters[0].attributes.get(k).map(String::as_str);
    assert_eq!(letters[0].data.as_ref(), poison.as_slice());
    assert_eq!(attr("bgp-dlq-error-class"), Some("decode"));
    assert_eq!(attr("bgp-dlq-original-message-id"), Some(ids[4].as_str()));
    assert_eq!(attr("bgp-dlq-original-topic"), Some(subscription.as_str()));
    assert!(attr("bgp-dlq-error-message").is_some_and(|m| m.contains("request_json is empty")));

    writer.signal("TERM")?;
    assert_eq!(
        writer.wait_exit(Duration::from_secs(20))?,
        Some(0),
        "{}",
        writer.log_text()
    );
    // Every message acked: fresh readers get nothing for longer than the ack deadline.
    let mut after = PubsubReader::start(&subscription, ACK_DEADLINE, 3).await?;
    after.expect_silence(Duration::from_secs(13)).await?;
    after.stop().await?;

    let got = target.by_operation();
    for (i, op) in ops.iter().enumerate() {
        let reqs = got.get(op).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(reqs.len(), 1, "{op} replayed {} times", reqs.len());
        assert_eq!(reqs[0].body, request_of(i));
        assert_eq!(reqs[0].header("x-bgpersist-mirror"), Some("replay"));
    }
    assert_eq!(target.count(), ops.len());
    Ok(())
}
