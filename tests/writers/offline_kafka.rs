//! OFFLINE_WRITER: Kafka result bus → Postgres per-feature tables. Replays
//! add no rows, poison and refused values are dead-lettered with the reason
//! while the rest flows, and neither a SIGKILLed writer nor a minute without
//! its Postgres server loses anything.

use crate::harness::*;
use crate::offline_harness::*;
use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use std::time::{Duration, Instant};

const FEATURES: [&str; 3] = ["age", "score", "tags"];

/// Message `i` of run `run`: three features of entity `i`, typed int,
/// double and JSON, with observation ids derived from (run, i, feature).
fn result(run: &str, i: u64) -> Vec<u8> {
    result_padded(run, i, 0)
}

/// [`result`] whose JSON value carries `pad` more bytes.
fn result_padded(run: &str, i: u64, pad: usize) -> Vec<u8> {
    let padding = match pad {
        0 => String::new(),
        n => format!(", \"pad\": \"{}\"", "x".repeat(n)),
    };
    let values = FEATURES
        .iter()
        .map(|f| FeatureValue {
            namespace: "user".into(),
            feature: (*f).into(),
            pkey: i.to_string(),
            value: Some(Value {
                kind: Some(match *f {
                    "age" => Kind::IntValue(i as i64 * 10),
                    "score" => Kind::DoubleValue(i as f64 / 4.0),
                    _ => Kind::JsonValue(format!("{{\"n\": {i}, \"tags\": [\"a\"]{padding}}}")),
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
        deployment_id: "dep-1".into(),
        values,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Waits until the group has committed every message of the topic (each one
/// written or dead-lettered) and the topic holds `total`.
async fn all_committed(
    topic: &str,
    group: &str,
    partitions: i32,
    total: i64,
    writer: &Writer,
) -> anyhow::Result<()> {
    eventually(
        "every message committed",
        Duration::from_secs(90),
        || async {
            let (c, e) = committed_and_end(topic, group, partitions)?;
            Ok((c == e && e == total).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))
}

/// Under a backlog of 100 KB messages, `BGP_MAX_BATCH_BYTES` of 256 KiB
/// cuts every batch at two messages instead of a thousand, and nothing is
/// lost or stored twice.
#[tokio::test]
async fn offline_batches_of_large_messages_stay_within_max_batch_bytes() -> anyhow::Result<()> {
    const MESSAGES: u64 = 60;
    const LIMIT: f64 = 262_144.0;
    let (topic, dlq, group) = (unique("offline"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;
    let run = unique("b");
    let payloads: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| result_padded(&run, i, 100_000))
        .collect();
    produce(&topic, &payloads).await?;

    let mut env = offline_env("OFFLINE_WRITER", &topic, &dlq, &group, &pg.uri());
    env.push(("BGP_MAX_BATCH_BYTES", format!("{LIMIT}")));
    let writer = Writer::start(&env)?;
    all_committed(&topic, &group, 3, MESSAGES as i64, &writer).await?;
    stored_once(&pg, &run, MESSAGES).await?;

    let text = writer.metrics();
    let name = "bgpersist_writer_batch_bytes";
    let batches = crate::support::scrape::metric_value(&text, &format!("{name}_count"));
    let within = crate::support::scrape::bucket_value(&text, name, LIMIT);
    assert!(
        batches.is_some_and(|b| b >= (MESSAGES / 2) as f64),
        "{batches:?} batches for {MESSAGES} messages of 100 KB"
    );
    assert_eq!(within, batches, "batches over {LIMIT} bytes:\n{text}");
    pg.drop().await;
    Ok(())
}

/// Checks that each feature table holds one row per message `0..messages`
/// of run `run`: none lost, none twice.
async fn stored_once(pg: &PgSchema, run: &str, messages: u64) -> anyhow::Result<()> {
    for f in FEATURES {
        let table = format!("user__{f}");
        let ids = pg.texts(&table, "observation_id").await?;
        let mut want: Vec<String> = (0..messages).map(|i| format!("{run}-{i}-{f}")).collect();
        want.sort();
        anyhow::ensure!(
            ids.len() == want.len(),
            "{table}: {} rows, {} messages",
            ids.len(),
            want.len()
        );
        anyhow::ensure!(
            ids == want,
            "{table}: the stored observation ids differ from those produced"
        );
    }
    Ok(())
}

#[tokio::test]
async fn offline_result_batch_replayed_twice_adds_no_rows_and_poison_is_dead_lettered()
-> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("offline"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;
    let run = unique("r");
    let batch: Vec<Vec<u8>> = (0..40).map(|i| result(&run, i)).collect();
    let garbage = b"\x08\x96\x01 definitely not a ResultMessage".to_vec();
    let hostile = ResultMessage {
        values: vec![FeatureValue {
            namespace: "user".into(),
            feature: "age\"; DROP TABLE user__age; --".into(),
            pkey: "1".into(),
            value: Some(Value {
                kind: Some(Kind::IntValue(1)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut first = batch.clone();
    first.insert(5, garbage.clone());
    first.insert(20, hostile.clone());
    produce(&topic, &first).await?;

    let writer = Writer::start(&offline_env(
        "OFFLINE_WRITER",
        &topic,
        &dlq,
        &group,
        &pg.uri(),
    ))?;
    all_committed(&topic, &group, 3, first.len() as i64, &writer).await?;

    // The same batch again, plus a value whose kind no longer fits its table.
    let kind_change = ResultMessage {
        values: vec![FeatureValue {
            namespace: "user".into(),
            feature: "age".into(),
            pkey: "99".into(),
            value: Some(Value {
                kind: Some(Kind::DoubleValue(1.5)),
            }),
            observation_id: format!("{run}-99-age"),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut replay = batch.clone();
    replay.push(kind_change.clone());
    produce(&topic, &replay).await?;
    let total = (first.len() + replay.len()) as i64;
    all_committed(&topic, &group, 3, total, &writer).await?;

    for f in FEATURES {
        let table = format!("user__{f}");
        assert_eq!(
            pg.count(&table, "observation_id").await?,
            (40, 40),
            "{table}"
        );
    }
    let want_layout = |value: &str| {
        [
            ("observation_id", "text"),
            ("pkey", "text"),
            ("value", value),
            ("observed_at", "timestamp with time zone"),
            ("resolver_fqn", "text"),
            ("deployment_id", "text"),
            ("inserted_at", "timestamp with time zone"),
        ]
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .to_vec()
    };
    assert_eq!(pg.columns("user__age").await?, want_layout("bigint"));
    assert_eq!(
        pg.columns("user__score").await?,
        want_layout("double precision")
    );
    assert_eq!(pg.columns("user__tags").await?, want_layout("jsonb"));

    // The values themselves, typed.
    let row = pg
        .client
        .query_one(
            &format!(
                "SELECT sum(a.value)::bigint, sum(s.value), sum((t.value->>'n')::int)::bigint, \
                 min(a.observed_at) = to_timestamp(1700000000), count(*) FILTER (WHERE a.resolver_fqn = 'user.age' \
                 AND a.deployment_id = 'dep-1' AND a.inserted_at IS NOT NULL) \
                 FROM {} a JOIN {} s USING (pkey) JOIN {} t USING (pkey)",
                pg.table("user__age"),
                pg.table("user__score"),
                pg.table("user__tags")
            ),
            &[],
        )
        .await?;
    let n: i64 = (0..40).sum();
    assert_eq!(row.try_get::<_, i64>(0)?, n * 10);
    assert_eq!(row.try_get::<_, f64>(1)?, n as f64 / 4.0);
    assert_eq!(row.try_get::<_, i64>(2)?, n);
    assert!(row.try_get::<_, bool>(3)?);
    assert_eq!(row.try_get::<_, i64>(4)?, 40);

    let letters = dlq_letters(&dlq, 3).await?;
    let reason = |p: &[u8]| reason_of(&letters, p).unwrap_or_default().to_string();
    assert!(
        reason(&garbage).contains("not a bgpersist.bus.v1.ResultMessage"),
        "{letters:?}"
    );
    assert!(reason(&hostile).contains("table name"), "{letters:?}");
    let refused = reason(&kind_change);
    assert!(
        refused.contains("is bigint; these rows carry double precision"),
        "{refused}"
    );
    let class = |p: &[u8]| {
        letters
            .iter()
            .find(|(q, _)| q == p)
            .and_then(|(_, h)| h.get("bgp-dlq-error-class").cloned())
    };
    assert_eq!(class(&kind_change).as_deref(), Some("rejected"));
    assert_eq!(class(&garbage).as_deref(), Some("decode"));
    assert_eq!(
        writer.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(3.0)
    );
    pg.drop().await;
    Ok(())
}

#[tokio::test]
async fn offline_sigkill_mid_stream_loses_nothing() -> anyhow::Result<()> {
    const MESSAGES: u64 = 6000;
    let (topic, dlq, group) = (unique("offline"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;
    let run = unique("k");
    let mut env = offline_env("OFFLINE_WRITER", &topic, &dlq, &group, &pg.uri());
    // A SIGKILLed member holds its partitions until its session expires.
    env.push(("BGP_KAFKA_CONF_SESSION_TIMEOUT_MS", "6000".into()));
    let make_run = run.clone();
    let producer = Paced::start(&topic, 1500, MESSAGES, move |i| result(&make_run, i));

    let mut first = Writer::start(&env)?;
    eventually(
        "the first writer to write rows",
        Duration::from_secs(60),
        || async {
            let (rows, _) = pg.count("user__age", "observation_id").await?;
            Ok((rows > 0 && producer.sent() > MESSAGES / 3).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", first.log_text()))?;
    first.signal("KILL")?;
    first.wait_exit(Duration::from_secs(10))?;
    let (at_kill, _) = pg.count("user__age", "observation_id").await?;

    let second = Writer::start(&env)?;
    eventually(
        "every message produced",
        Duration::from_secs(60),
        || async { Ok((producer.sent() == MESSAGES).then_some(())) },
    )
    .await?;
    let positions = producer.finish().await?;
    assert_eq!(positions.len() as u64, MESSAGES);
    all_committed(&topic, &group, 3, MESSAGES as i64, &second).await?;

    stored_once(&pg, &run, MESSAGES).await?;
    assert!(
        at_kill > 0 && at_kill < MESSAGES as i64,
        "killed after {at_kill} rows"
    );
    pg.drop().await;
    Ok(())
}

/// The writer's Postgres (a server the test owns, started from the rig's
/// binaries) is stopped for 60 s, a fast shutdown that ends every session,
/// while messages keep arriving: the writer retries, commits nothing it could
/// not write, and once the server is back every row is there exactly once
/// and everything is committed. Prints how soon after the server is back
/// the writer writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_postgres_down_60s_then_restarted_loses_nothing() -> anyhow::Result<()> {
    const N1: usize = 2000;
    const N2: usize = 2000;
    const OUTAGE: Duration = Duration::from_secs(60);
    const RETRIES: &str = "bgpersist_writer_write_retries_total";
    let mut server = OwnedPostgres::start()?;
    let mut pg = PgSchema::create_on(&server.url()).await?;
    let (topic, dlq, group) = (unique("offline"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let run = unique("o");
    let payloads: Vec<Vec<u8>> = (0..(N1 + N2) as u64).map(|i| result(&run, i)).collect();
    produce(&topic, &payloads[..N1]).await?;
    let mut writer = Writer::start(&offline_env(
        "OFFLINE_WRITER",
        &topic,
        &dlq,
        &group,
        &pg.uri(),
    ))?;
    all_committed(&topic, &group, 3, N1 as i64, &writer).await?;
    let before: Vec<i64> = offsets_by_partition(&topic, &group, 3)?
        .iter()
        .map(|(c, _)| *c)
        .collect();

    tokio::task::block_in_place(|| server.stop())?;
    let down = Instant::now();
    produce(&topic, &payloads[N1..]).await?;
    let mut samples = Vec::new();
    for at in [6, 30, 59] {
        tokio::time::sleep_until((down + Duration::from_secs(at)).into()).await;
        samples.push(writer.metric(RETRIES).unwrap_or(0.0));
        let now = offsets_by_partition(&topic, &group, 3)?;
        assert_eq!(now.iter().map(|(_, e)| e).sum::<i64>(), (N1 + N2) as i64);
        // Nothing could be written, so no committed offset may move.
        assert_eq!(
            now.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            before,
            "{at} s into the outage: offsets moved while Postgres was down"
        );
    }
    eprintln!("write retries at 6, 30 and 59 s of the outage: {samples:?}");
    assert!(
        samples[0] > 0.0 && samples.windows(2).all(|s| s[1] > s[0]),
        "write retries must keep growing during the outage: {samples:?}\n{}",
        writer.log_text()
    );
    tokio::time::sleep_until((down + OUTAGE).into()).await;

    tokio::task::block_in_place(|| server.restart())?;
    // Reported, not asserted: the backoff cap and the reconnect decide.
    let resumed = writer.next_write(Duration::from_secs(60)).await?;
    eprintln!(
        "after {} s down: writing again {} ms after Postgres came back",
        OUTAGE.as_secs(),
        resumed.as_millis()
    );
    all_committed(&topic, &group, 3, (N1 + N2) as i64, &writer).await?;
    pg.reconnect().await?;
    stored_once(&pg, &run, (N1 + N2) as u64).await?;
    assert_eq!(
        writer.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0)
    );
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(60))?, Some(0));
    Ok(())
}
