//! ONLINE_WRITER: Kafka → Redis (standalone and cluster), SCRAM, DLQ, commits.

use crate::harness::*;
use crate::support::{rig, unique};
use std::time::Duration;

#[tokio::test]
async fn newest_values_win_poison_is_dead_lettered_and_offsets_committed() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let keys = pkeys("e", 20);
    let (mut payloads, expected) = dataset(&keys);
    let poison = [
        b"\x08\x96\x01 definitely not a ResultMessage".to_vec(),
        result_message(vec![{
            let mut v = observation("x", "age", 1, 1);
            v.value = None;
            v
        }]),
    ];
    payloads.insert(7, poison[0].clone());
    payloads.insert(40, poison[1].clone());
    produce(&topic, &payloads).await?;

    let mut writer = Writer::start(&online_writer_env(
        &topic,
        &dlq,
        &group,
        &rig("redis", "BGP_REDIS_URL"),
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

    // Both poison messages sit on the DLQ, bytes unchanged, with the reason.
    let mut letters = dead_letters(&dlq, 2).await?;
    // The garbage bytes first, then the message without a value.
    letters.sort_by_key(|(p, _)| poison.iter().position(|q| q == p));
    for ((payload, headers), expected_payload) in letters.iter().zip(&poison) {
        assert_eq!(payload, expected_payload);
        assert_eq!(headers.get("bgp-dlq-original-topic"), Some(&topic));
        assert_eq!(
            headers.get("bgp-dlq-error-class").map(String::as_str),
            Some("decode")
        );
        assert_eq!(
            headers.get("bgp-dlq-writer").map(String::as_str),
            Some("online")
        );
        assert_eq!(
            headers.get("bgp-dlq-attempts").map(String::as_str),
            Some("1")
        );
        assert!(
            headers.contains_key("bgp-dlq-original-partition")
                && headers.contains_key("bgp-dlq-original-offset")
        );
        assert!(
            headers
                .get("bgp-dlq-time")
                .is_some_and(|t| t.parse::<u128>().is_ok())
        );
    }
    let reasons: Vec<&str> = letters
        .iter()
        .filter_map(|(_, h)| h.get("bgp-dlq-error-message").map(String::as_str))
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

    // Everything written or dead-lettered is committed.
    let (committed, end) = eventually(
        "offsets to be committed",
        Duration::from_secs(20),
        || async {
            let (c, e) = committed_and_end(&topic, &group, 3)?;
            Ok((c == e).then_some((c, e)))
        },
    )
    .await?;
    assert_eq!(
        (committed, end),
        (payloads.len() as i64, payloads.len() as i64)
    );

    let metrics = writer.metrics();
    assert!(
        has_sample(
            &metrics,
            &format!(
                "bgpersist_writer_messages_consumed_total {}",
                payloads.len()
            )
        ),
        "{metrics}"
    );
    assert!(
        has_sample(&metrics, "bgpersist_writer_messages_dead_lettered_total 2"),
        "{metrics}"
    );

    assert_eq!(
        stop_and_forget(&mut writer, &mut conn, &keys).await?,
        Some(0),
        "log:\n{}",
        writer.log_text()
    );
    Ok(())
}

/// Stops the writer (SIGTERM; its exit code within 15 s) and deletes the
/// entities `keys` from standalone Redis.
async fn stop_and_forget(
    writer: &mut Writer,
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> anyhow::Result<Option<i32>> {
    writer.signal("TERM")?;
    let exit = writer.wait_exit(Duration::from_secs(15))?;
    conn.del::<_, ()>(keys.iter().map(|k| format!("user/{k}")).collect::<Vec<_>>())
        .await
        .ok();
    Ok(exit)
}

#[tokio::test]
async fn scram_sasl_and_redis_cluster() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let keys = pkeys("e", 30);
    let (payloads, expected) = dataset(&keys);
    produce(&topic, &payloads).await?;

    let sasl = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("sasl"));
    std::fs::create_dir_all(&sasl)?;
    std::fs::write(sasl.join("username"), rig("kafka", "BGP_KAFKA_SCRAM_USER"))?;
    std::fs::write(
        sasl.join("password"),
        rig("kafka", "BGP_KAFKA_SCRAM_PASSWORD"),
    )?;
    let nodes = rig("redis", "BGP_REDIS_CLUSTER_NODES");
    let mut env = online_writer_env(&topic, &dlq, &group, &nodes);
    env.retain(|(k, _)| *k != "BGP_KAFKA_BOOTSTRAP_SERVERS");
    env.extend([
        (
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_SASL"),
        ),
        ("BGP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".into()),
        ("BGP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("BGP_KAFKA_SASL_DIR", sasl.display().to_string()),
        ("BGP_REDIS_IS_CLUSTERED", "1".into()),
        ("BGP_STORAGE_CACHE_PREFIX", "bgp:".into()),
    ]);
    let writer = Writer::start(&env)?;
    let client = redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())?;
    let conn = client.get_async_connection().await?;
    eventually(
        "the cluster to hold the newest values",
        Duration::from_secs(60),
        || {
            let (keys, expected, mut conn) = (keys.clone(), expected.clone(), conn.clone());
            async move {
                Ok((redis_entities(&mut conn, "bgp:", &keys).await? == expected).then_some(()))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    Ok(())
}

#[tokio::test]
async fn configuration_error_exits_2_with_one_line() -> anyhow::Result<()> {
    let mut env = online_writer_env("t", "d", "g", "redis://127.0.0.1:1");
    env.retain(|(k, _)| *k != "BGP_SUBSCRIPTION");
    let mut w = Writer::start(&env)?;
    assert_eq!(w.wait_exit(Duration::from_secs(10))?, Some(2));
    let log = w.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bgpersist-writer:"))
        .collect();
    assert_eq!(
        lines,
        ["bgpersist-writer: BGP_SUBSCRIPTION is not set"],
        "log:\n{log}"
    );
    Ok(())
}

use redis::AsyncCommands;

/// Values of one entity and feature that meet in one batch (and so in one
/// script call): the newest time wins, and on a tie the larger encoded value
/// (Lua string order: `7` beats `42`), as if written one by one.
#[tokio::test]
async fn one_batch_with_ties_and_older_values_ends_as_one_by_one() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let keys = pkeys("tie", 2);
    let (a, b) = (&keys[0], &keys[1]);
    let payloads: Vec<Vec<u8>> = [
        vec![observation(a, "age", 5, 42), observation(b, "age", 1, 1)],
        vec![observation(a, "age", 5, 7), observation(a, "score", 2, 2)],
        vec![observation(a, "age", 3, 99), observation(a, "score", 9, 1)],
        vec![observation(a, "age", 5, 5), observation(b, "age", 1, 3)],
    ]
    .into_iter()
    .map(result_message)
    .collect();
    produce(&topic, &payloads).await?;
    let mut writer = Writer::start(&online_writer_env(
        &topic,
        &dlq,
        &group,
        &rig("redis", "BGP_REDIS_URL"),
    ))?;
    let hash = |id: &str, fields: &[(&str, &str)]| {
        let mut h = std::collections::BTreeMap::from([("__id__".to_string(), id.to_string())]);
        h.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (id.to_string(), h)
    };
    let expected: Entities = [
        hash(
            a,
            &[
                ("user.age", "7"),
                ("user.age_ts", "5"),
                ("user.score", "1"),
                ("user.score_ts", "9"),
            ],
        ),
        hash(b, &[("user.age", "3"), ("user.age_ts", "1")]),
    ]
    .into_iter()
    .collect();
    let mut conn = standalone().await?;
    until_entities("the one-by-one outcome", &conn, &keys, &expected, &writer).await?;
    stop_and_forget(&mut writer, &mut conn, &keys).await?;
    Ok(())
}

/// A lone message is written without waiting out the batch window: the
/// online writer hands a batch over once the bus has nothing more queued.
/// With a ten-minute window, a writer that waited it out would miss the
/// one-minute deadline.
#[tokio::test]
async fn a_lone_message_does_not_wait_for_the_batch_window() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let keys = pkeys("lone", 1);
    let mut env = online_writer_env(&topic, &dlq, &group, &rig("redis", "BGP_REDIS_URL"));
    env.push(("BGP_MAX_BATCH_WAIT_MS", "600000".into()));
    let mut writer = Writer::start(&env)?;
    produce(
        &topic,
        &[result_message(vec![observation(&keys[0], "age", 1, 1)])],
    )
    .await?;
    let mut conn = standalone().await?;
    eventually("the lone value in Redis", Duration::from_secs(60), || {
        let (keys, mut conn) = (keys.clone(), conn.clone());
        async move {
            let state = redis_entities(&mut conn, "", &keys).await?;
            Ok((state.len() == 1).then_some(()))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    stop_and_forget(&mut writer, &mut conn, &keys).await?;
    Ok(())
}
