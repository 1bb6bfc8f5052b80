//! METRICS_WRITER with Kafka transactions (`BGP_PUBLISH_EXACTLY_ONCE=true`)
//! on the rig's broker: SIGKILLed five times mid-stream and restarted, it
//! leaves exactly one committed metrics message per result and exactly one
//! committed dead letter per poison message, nothing twice, nothing missing.

use crate::harness::*;
use crate::metrics_kafka::{metrics_writer_env, result};
use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::MetricsMessage;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WRITTEN: &str = "bgpersist_writer_records_written_total";
const POISON_EVERY: u64 = 97;
const GARBAGE: &[u8] = b"\x08\x96\x01 not a ResultMessage";

/// Every message committed on `topic` read `read_committed` (or not): key
/// (or payload, for unkeyed dead letters) -> how many times.
async fn committed_counts(
    topic: &str,
    isolation: &str,
    expect_at_least: usize,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<Vec<u8>>)> {
    let consumer: StreamConsumer = kafka_plain()
        .set("group.id", unique("eos-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut counts = BTreeMap::new();
    let mut payloads = Vec::new();
    let mut seen = 0usize;
    // Read until the expected count, then until quiet: duplicates come late.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let quiet = if seen >= expect_at_least { 3 } else { 30 };
        match tokio::time::timeout(Duration::from_secs(quiet), consumer.recv()).await {
            Ok(m) => {
                let m = m?;
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                *counts.entry(key).or_insert(0) += 1;
                payloads.push(m.payload().unwrap_or_default().to_vec());
                seen += 1;
            }
            Err(_) => break,
        }
        anyhow::ensure!(Instant::now() < deadline, "{topic} never went quiet");
    }
    Ok((counts, payloads))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_five_times_every_result_yields_exactly_one_committed_metrics_message()
-> anyhow::Result<()> {
    const KILL_AFTER_MS: [u64; 5] = [200, 900, 400, 1500, 600];
    const TOTAL: u64 = 7000;
    let run = unique("eos");
    let (results, metrics, dlq) = (
        unique("eos-results"),
        unique("eos-metrics"),
        unique("eos-dlq"),
    );
    create_topics(&[(&results, 3), (&metrics, 2), (&dlq, 1)]).await?;
    let group = unique("eos-grp");
    let mut env = metrics_writer_env("KAFKA", &results, &metrics, &dlq, &group);
    env.extend([
        ("BGP_PUBLISH_EXACTLY_ONCE", "true".to_string()),
        // Stable across restarts, as the pod name is across container
        // restarts: each new instance fences the killed one.
        ("BGP_TRANSACTIONAL_ID", format!("{group}.writer-0")),
        ("BGP_MAX_BATCH_SIZE", "50".into()),
        ("BGP_KAFKA_CONF_SESSION_TIMEOUT_MS", "6000".into()),
        ("BGP_KAFKA_CONF_HEARTBEAT_INTERVAL_MS", "1000".into()),
    ]);
    let run_for_payloads = run.clone();
    let producer = Paced::start(&results, 250, TOTAL, move |i| {
        if i % POISON_EVERY == POISON_EVERY - 1 {
            GARBAGE.to_vec()
        } else {
            result(&run_for_payloads, i as usize).encode_to_vec()
        }
    });

    for (round, after) in KILL_AFTER_MS.iter().enumerate() {
        let mut w = Writer::start(&env)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.metric(WRITTEN).unwrap_or(0.0) < 1.0 {
            anyhow::ensure!(
                !w.exited(),
                "round {round}: writer exited:\n{}",
                w.log_text()
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round}: nothing written:\n{}",
                w.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(*after)).await;
        anyhow::ensure!(
            !w.exited(),
            "round {round}: writer exited:\n{}",
            w.log_text()
        );
        w.signal("KILL")?;
        anyhow::ensure!(
            w.wait_exit(Duration::from_secs(10))?.is_none(),
            "killed by a signal"
        );
        // A snapshot; retried in case a query times out on a broker busy
        // with the rest of the suite.
        let (committed, end) = eventually(
            "offsets of the results topic",
            Duration::from_secs(60),
            || async { committed_and_end(&results, &group, 3).map(Some) },
        )
        .await?;
        eprintln!(
            "round {round}: killed {after} ms after the first commit; committed {committed} of {end}"
        );
        anyhow::ensure!(
            committed < end,
            "round {round}: the kill must land mid-stream"
        );
    }

    let mut w = Writer::start(&env)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer.sent() < TOTAL {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} produced",
            producer.sent()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let positions = producer.finish().await?;
    let n = positions.len();
    assert_eq!(n as u64, TOTAL);
    let drained = eventually(
        "every result committed",
        Duration::from_secs(120),
        || async {
            let offsets = offsets_by_partition(&results, &group, 3)?;
            Ok(offsets.iter().all(|(c, e)| c == e).then_some(()))
        },
    )
    .await;
    if let Err(e) = drained {
        anyhow::bail!("{e}\nlog:\n{}", w.log_text());
    }
    w.signal("TERM")?;
    let code = w.wait_exit(Duration::from_secs(60))?;
    anyhow::ensure!(code == Some(0), "exit {code:?}:\n{}", w.log_text());

    let poison = (0..TOTAL)
        .filter(|i| i % POISON_EVERY == POISON_EVERY - 1)
        .count();
    let want: BTreeMap<String, usize> = (0..TOTAL)
        .filter(|i| i % POISON_EVERY != POISON_EVERY - 1)
        .map(|i| (format!("{run}-op-{i}"), 1))
        .collect();
    let (got, payloads) = committed_counts(&metrics, "read_committed", want.len()).await?;
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "committed twice: {twice:?}");
    assert_eq!(got, want, "one committed metrics message per result");
    for p in &payloads {
        MetricsMessage::decode(p.as_slice())?;
    }
    let (letters, letter_payloads) = committed_counts(&dlq, "read_committed", poison).await?;
    assert_eq!(
        letters.values().sum::<usize>(),
        poison,
        "one dead letter per poison message"
    );
    assert!(letter_payloads.iter().all(|p| p == GARBAGE));

    // What the killed instances left uncommitted is in the log, aborted:
    // a reader that ignores transactions sees at least as much.
    let (raw, _) = committed_counts(&metrics, "read_uncommitted", want.len()).await?;
    let raw_total: usize = raw.values().sum();
    eprintln!(
        "{n} results, {poison} poison, 5 kills: {} committed metrics messages, {raw_total} in the log",
        want.len()
    );
    assert!(raw_total >= want.len());
    delete_topics(&[&results, &metrics, &dlq]).await?;
    Ok(())
}
