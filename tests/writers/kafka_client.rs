//! The writers' Kafka client as users configure it: every compression codec
//! consumed and produced, `additional_kafka_args` applied (the start of a new
//! consumer group), and a property librdkafka does not know reported at once.

use crate::harness::*;
use crate::support::{rig, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::time::Duration;

/// Online-writer env with `additional_kafka_args` as the operator renders them.
fn env_with_args(topic: &str, dlq: &str, group: &str, args: &str) -> Vec<(&'static str, String)> {
    let mut env = online_writer_env(topic, dlq, group, &rig("redis", "BGP_REDIS_URL"));
    env.push(("BGP_KAFKA_ARGS", args.to_string()));
    env
}

/// Every codec librdkafka offers: a topic written with it is consumed, and the
/// writer's own producer (dead letters) compresses with it.
#[tokio::test]
async fn every_compression_codec_is_consumed_and_produced() -> anyhow::Result<()> {
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let (topic, dlq, group) = (unique("codec"), unique("dlq"), unique("grp"));
        create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
        let prefix = unique(&format!("z{codec}"));
        let keys = pkeys(&prefix, 5);
        let (mut payloads, expected) = dataset(&keys);
        let poison = format!("not a ResultMessage ({codec})").into_bytes();
        payloads.push(poison.clone());
        produce_compressed(&topic, &payloads, codec).await?;

        let args = format!(r#"{{"compression.type":"{codec}"}}"#);
        let mut writer = Writer::start(&env_with_args(&topic, &dlq, &group, &args))?;
        let conn = standalone().await?;
        until_entities(
            &format!("{codec}: Redis to hold the values"),
            &conn,
            &keys,
            &expected,
            &writer,
        )
        .await?;

        let consumer: StreamConsumer = kafka_plain()
            .set("group.id", unique("dlq-reader"))
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[&dlq])?;
        let letter = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        assert_eq!(letter.payload(), Some(poison.as_slice()), "{codec}");
        writer.signal("TERM")?;
        assert_eq!(
            writer.wait_exit(Duration::from_secs(15))?,
            Some(0),
            "{codec}"
        );
    }
    Ok(())
}

/// `auto.offset.reset: latest`: a new group skips what was on the topic
/// before it joined.
#[tokio::test]
async fn a_new_group_can_start_at_the_end() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("latest"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let before = pkeys(&unique("before"), 3);
    let after = pkeys(&unique("after"), 3);
    produce(&topic, &dataset(&before).0).await?;

    let args = r#"{"auto.offset.reset":"latest"}"#;
    let mut writer = Writer::start(&env_with_args(&topic, &dlq, &group, args))?;
    let (later, expected) = dataset(&after);
    let mut conn = standalone().await?;
    // Produced until seen: the group may join after the first sends.
    eventually("the later values", Duration::from_secs(60), || {
        let (later, after, expected, mut conn) =
            (later.clone(), after.clone(), expected.clone(), conn.clone());
        let topic = topic.clone();
        async move {
            produce(&topic, &later).await?;
            let state = redis_entities(&mut conn, "", &after).await?;
            Ok((state == expected).then_some(()))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let earlier = redis_entities(&mut conn, "", &before).await?;
    assert!(
        earlier.values().all(|h| h.is_empty()),
        "messages from before the group joined were written: {earlier:?}"
    );
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

/// A property librdkafka does not know can never work: the writer says so
/// in one line and exits 2 within seconds (no silent retries).
#[tokio::test]
async fn an_unknown_kafka_property_exits_2_with_one_line() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("unknown"), unique("dlq"), unique("grp"));
    let args = r#"{"fetch.max.byts":"1048576"}"#;
    let mut writer = Writer::start(&env_with_args(&topic, &dlq, &group, args))?;
    let code = writer.wait_exit(Duration::from_secs(10))?;
    let log = writer.log_text();
    assert_eq!(code, Some(2), "log:\n{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bgpersist-writer:"))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    assert!(lines[0].contains("fetch.max.byts"), "{}", lines[0]);
    Ok(())
}
