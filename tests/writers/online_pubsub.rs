//! ONLINE_WRITER: Pub/Sub (the rig's emulator) → Redis standalone: newest
//! values win, poison is dead-lettered with attributes, acks are sent, leases
//! are held through a store outage and unfinished messages are redelivered.

use crate::harness::*;
use crate::support::{rig, unique};
use redis::AsyncCommands;
use std::time::Duration;

/// The shortest lease extension Pub/Sub allows, so lost acks and expired
/// leases show within a test's patience.
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// Longer than the ack deadline: a message the server still considers
/// unacked (or whose lease lapsed) comes back within it.
const SILENCE: Duration = Duration::from_secs(13);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_newest_values_win_poison_is_dead_lettered_and_acks_are_sent() -> anyhow::Result<()>
{
    let mut ps = PubsubResources::new().await?;
    let result = newest_values_win(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn newest_values_win(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let topic = ps.topic(&unique("result")).await?;
    let sub_id = unique("online");
    let subscription = ps.subscription(&sub_id, &topic, ACK_DEADLINE).await?;
    let dlq = ps.topic(&unique("dlq")).await?;
    let dlq_reader = ps
        .subscription(&unique("dlq-reader"), &dlq, ACK_DEADLINE)
        .await?;

    let keys = pkeys("ps", 20);
    let (payloads, expected) = dataset(&keys);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let poison = [
        b"\x08\x96\x01 definitely not a ResultMessage".to_vec(),
        result_message(vec![{
            let mut v = observation("x", "age", 1, 1);
            v.value = None;
            v
        }]),
    ];
    let mut messages: Vec<Outgoing> = payloads.into_iter().map(|p| (p, Vec::new())).collect();
    messages.insert(
        7,
        (
            poison[0].clone(),
            vec![("traceparent".into(), traceparent.into())],
        ),
    );
    messages.insert(40, (poison[1].clone(), Vec::new()));
    let ids = pubsub_publish(&topic, &messages).await?;
    let poison_ids = [ids[7].clone(), ids[40].clone()];

    // The subscription as a short ID (with the project), the DLQ as a full path.
    let mut writer = Writer::start(&online_pubsub_writer_env(
        &sub_id,
        Some(&dlq),
        &rig("redis", "BGP_REDIS_URL"),
        ACK_DEADLINE,
    ))?;
    let mut conn = standalone().await?;
    let got = until_entities(
        "Redis to hold the newest values",
        &conn,
        &keys,
        &expected,
        &writer,
    )
    .await?;
    assert_eq!(got.len(), 20);

    // Both poison messages sit on the DLQ topic, bytes unchanged, with the reason.
    let mut reader = PubsubReader::start(&dlq_reader, ACK_DEADLINE, 1).await?;
    let mut letters = reader
        .receive(2, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    letters.sort_by_key(|m| m.data != poison[0]);
    for ((letter, expected_payload), original_id) in letters.iter().zip(&poison).zip(&poison_ids) {
        let attr = |k: &str| letter.attributes.get(k).map(String::as_str);
        assert_eq!(letter.data.as_ref(), expected_payload.as_slice());
        assert_eq!(
            attr("bgp-dlq-original-topic"),
            Some(subscription.as_str()),
            "{:?}",
            letter.attributes
        );
        assert_eq!(
            attr("bgp-dlq-original-message-id"),
            Some(original_id.as_str())
        );
        assert_eq!(attr("bgp-dlq-error-class"), Some("decode"));
        assert_eq!(attr("bgp-dlq-writer"), Some("online"));
        assert_eq!(attr("bgp-dlq-attempts"), Some("1"));
        assert_eq!(attr("bgp-dlq-version"), Some("1"));
        assert!(attr("bgp-dlq-time").is_some_and(|t| t.parse::<u128>().is_ok()));
        assert!(
            attr("bgp-dlq-original-partition").is_none()
                && attr("bgp-dlq-original-offset").is_none()
        );
    }
    let reasons: Vec<&str> = letters
        .iter()
        .filter_map(|m| {
            m.attributes
                .get("bgp-dlq-error-message")
                .map(String::as_str)
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not a bgpersist.bus.v1.ResultMessage")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no value")),
        "{reasons:?}"
    );
    // The dead letter's span carries the traceparent attribute of its message.
    let log = writer.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("dead-lettered") && l.contains(traceparent)),
        "log:\n{log}"
    );
    reader.stop().await?;

    let metrics = writer.metrics();
    assert!(
        has_sample(
            &metrics,
            &format!(
                "bgpersist_writer_messages_consumed_total {}",
                messages.len()
            )
        ),
        "{metrics}"
    );
    assert!(
        has_sample(&metrics, "bgpersist_writer_messages_dead_lettered_total 2"),
        "{metrics}"
    );

    writer.signal("TERM")?;
    assert_eq!(
        writer.wait_exit(Duration::from_secs(20))?,
        Some(0),
        "log:\n{}",
        writer.log_text()
    );

    // Every message was acked: fresh streams see nothing for longer than the
    // ack deadline (an unacked one would be redelivered by then; several
    // streams because the emulator also dispatches to the writer's dead one).
    let mut after = PubsubReader::start(&subscription, ACK_DEADLINE, 3).await?;
    after
        .expect_silence(SILENCE)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    after.stop().await?;

    conn.del::<_, ()>(keys.iter().map(|k| format!("user/{k}")).collect::<Vec<_>>())
        .await
        .ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_store_outage_keeps_leases_and_shutdown_redelivers() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let result = outage(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn outage(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let topic = ps.topic(&unique("result")).await?;
    let subscription = ps
        .subscription(&unique("online"), &topic, ACK_DEADLINE)
        .await?;
    let keys = pkeys("ps", 5);
    let messages: Vec<Outgoing> = keys
        .iter()
        .map(|k| {
            (
                result_message(vec![observation(k, "age", 1, 1)]),
                Vec::new(),
            )
        })
        .collect();

    // Nothing listens on this port: every write fails as retriable.
    let dead_store = format!("redis://127.0.0.1:{}/0", free_port()?);
    let mut writer = Writer::start(&online_pubsub_writer_env(
        &subscription,
        None,
        &dead_store,
        ACK_DEADLINE,
    ))?;
    pubsub_publish(&topic, &messages).await?;
    eventually(
        "the writer to hit the store outage",
        Duration::from_secs(30),
        || {
            let log = writer.log_text();
            async move { Ok(log.contains("store write failed").then_some(())) }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    // Competing consumers get nothing for longer than the ack deadline: the
    // writer keeps extending the leases of the batch it holds.
    let mut others = PubsubReader::start(&subscription, ACK_DEADLINE, 3).await?;
    others
        .expect_silence(SILENCE)
        .await
        .map_err(|e| anyhow::anyhow!("lease lapsed during the outage: {e}"))?;

    // Shut down mid-outage: exit 0, the unfinished batch is nacked.
    writer.signal("TERM")?;
    assert_eq!(
        writer.wait_exit(Duration::from_secs(20))?,
        Some(0),
        "log:\n{}",
        writer.log_text()
    );
    // A lapsed lease also shows as redelivered copies in the writer: it
    // must nack exactly the five messages, no duplicates.
    let log = writer.log_text();
    assert_eq!(
        nacked_at_shutdown(&log),
        Some(messages.len()),
        "leases lapsed during the outage or the batch was not held; log:\n{log}"
    );
    // Redelivered to the competing consumers. With real Pub/Sub a nack is
    // redelivered at once; the emulator may first dispatch to the writer's
    // dead stream (see PubsubReader), costing an ack deadline per such turn.
    let started = std::time::Instant::now();
    let mut redelivered: Vec<Vec<u8>> = others
        .receive(messages.len(), Duration::from_secs(60))
        .await?
        .into_iter()
        .map(|m| m.data.to_vec())
        .collect();
    redelivered.sort();
    let mut sent: Vec<Vec<u8>> = messages.into_iter().map(|(p, _)| p).collect();
    sent.sort();
    assert_eq!(redelivered, sent);
    eprintln!(
        "redelivered {} messages after {:?}",
        sent.len(),
        started.elapsed()
    );
    others.stop().await?;
    Ok(())
}

/// `unfinished + queued` from the writer's "nacking unfinished messages" line.
fn nacked_at_shutdown(log: &str) -> Option<usize> {
    let line = log
        .lines()
        .find(|l| l.contains("nacking unfinished messages for redelivery"))?;
    let field = |name: &str| -> Option<usize> {
        let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(field("unfinished")? + field("queued")?)
}

#[tokio::test]
async fn pubsub_short_subscription_without_project_exits_2_with_one_line() -> anyhow::Result<()> {
    let mut env = online_pubsub_writer_env("sub", None, "redis://127.0.0.1:1", ACK_DEADLINE);
    env.retain(|(k, _)| *k != "BGP_PUBSUB_PROJECT");
    let mut w = Writer::start(&env)?;
    assert_eq!(w.wait_exit(Duration::from_secs(10))?, Some(2));
    let log = w.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bgpersist-writer:"))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    assert!(
        lines[0].contains("\"sub\" is a short ID") && lines[0].contains("BGP_PUBSUB_PROJECT"),
        "log:\n{log}"
    );
    Ok(())
}
