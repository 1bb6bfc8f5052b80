//! Robustness of the Kafka → Redis ONLINE_WRITER against the rig: crashes
//! (SIGKILL mid-stream), a store outage (Redis killed and restarted), consumers
//! scaled up and down while producing, and graceful SIGTERM.
//!
//! Every test checks the end state exactly: the newest value of every feature
//! (out-of-order and tied observation times), a receipt for every message, and
//! committed offsets against end offsets, partition by partition.

use crate::harness::*;
use crate::support::{rig, unique};
use bgpersist::formats::v1::{FeatureValue, Value, value::Kind};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FEATURES: [&str; 3] = ["age", "score", "visits"];
/// Records each message carries: one per feature plus its receipt.
const RECORDS_PER_MESSAGE: u64 = FEATURES.len() as u64 + 1;
const TS_BASE: i64 = 1_700_000_000_000_000;
const WRITTEN: &str = "bgpersist_writer_records_written_total";
const RETRIES: &str = "bgpersist_writer_write_retries_total";
/// terminationGracePeriodSeconds of the rendered writer Deployment.
const GRACE: Duration = Duration::from_secs(60);

/// hash -> field -> value
type State = BTreeMap<String, BTreeMap<String, String>>;

fn mix(x: u64) -> u64 {
    // splitmix64
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic load: message `i` sets the three features of one of
/// `entities` entities, each with a random observation time out of 200 (so
/// out of order and sometimes tied, the tie broken by the larger value), and
/// a receipt `msg/<i>` that proves the message itself was applied.
#[derive(Clone, Copy)]
struct Load {
    entities: u64,
}

impl Load {
    fn entity(&self, i: u64) -> String {
        format!("e{}", mix(i) % self.entities)
    }

    fn observations(&self, i: u64) -> Vec<(&'static str, i64, i64)> {
        FEATURES
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let r = mix(i.wrapping_mul(16).wrapping_add(f as u64 + 1));
                let ts = TS_BASE + ((r % 200) as i64) * 1000;
                // Six digits: the encoded order is the numeric order.
                let value = 100_000 + ((r >> 32) % 900_000) as i64;
                (*name, ts, value)
            })
            .collect()
    }

    fn payload(&self, i: u64) -> Vec<u8> {
        let pkey = self.entity(i);
        let mut values: Vec<FeatureValue> = self
            .observations(i)
            .into_iter()
            .map(|(f, ts, v)| observation(&pkey, f, ts, v))
            .collect();
        values.push(FeatureValue {
            namespace: "msg".into(),
            feature: "seen".into(),
            pkey: i.to_string(),
            value: Some(Value {
                kind: Some(Kind::IntValue(1)),
            }),
            observed_at_micros: 1,
            ..Default::default()
        });
        result_message(values)
    }

    /// The entity hashes after messages `0..n`, whatever the order and replays.
    fn expected(&self, n: u64) -> State {
        let mut newest: BTreeMap<String, BTreeMap<&str, (i64, String)>> = BTreeMap::new();
        for i in 0..n {
            let features = newest.entry(self.entity(i)).or_default();
            for (f, ts, v) in self.observations(i) {
                let candidate = (ts, v.to_string());
                let cur = features.entry(f).or_insert_with(|| candidate.clone());
                if candidate > *cur {
                    *cur = candidate;
                }
            }
        }
        newest
            .into_iter()
            .map(|(pkey, features)| {
                let mut h = BTreeMap::from([("__id__".to_string(), pkey.clone())]);
                for (f, (ts, v)) in features {
                    h.insert(format!("user.{f}"), v);
                    h.insert(format!("user.{f}_ts"), ts.to_string());
                }
                (pkey, h)
            })
            .collect()
    }
}

/// One test's topic, dead-letter topic, consumer group and key prefix in
/// the store at `redis_url`; all removed on drop, also when the test failed.
struct Setup {
    topic: String,
    dlq: String,
    group: String,
    prefix: String,
    partitions: i32,
    redis_url: String,
}

impl Setup {
    async fn new(partitions: i32, redis_url: &str) -> anyhow::Result<Setup> {
        let s = Setup {
            topic: unique("robust"),
            dlq: unique("robust-dlq"),
            group: unique("robust-grp"),
            prefix: format!("{}:", unique("rb")),
            partitions,
            redis_url: redis_url.to_string(),
        };
        create_topics(&[(&s.topic, partitions), (&s.dlq, 1)]).await?;
        Ok(s)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = online_writer_env(&self.topic, &self.dlq, &self.group, &self.redis_url);
        // A SIGKILLed member holds its partitions until its session expires:
        // the writer's default session timeout is what users get.
        env.push(("BGP_STORAGE_CACHE_PREFIX", self.prefix.clone()));
        env
    }

    fn offsets(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        offsets_by_partition(&self.topic, &self.group, self.partitions)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let client = redis::Client::open(self.redis_url.as_str());
        if let Ok(mut c) =
            client.and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            let mut cursor = 0u64;
            loop {
                let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .arg("COUNT")
                    .arg(5000)
                    .query(&mut c);
                let Ok((next, keys)) = scanned else { break };
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(&keys).query(&mut c);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _ = futures::executor::block_on(delete_topics(&[&self.topic, &self.dlq]));
    }
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn read_state(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    load: Load,
) -> anyhow::Result<State> {
    let pkeys: Vec<String> = (0..load.entities).map(|e| format!("e{e}")).collect();
    let mut pipe = redis::pipe();
    for p in &pkeys {
        pipe.cmd("HGETALL").arg(format!("{prefix}user/{p}"));
    }
    let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(conn).await?;
    Ok(pkeys
        .into_iter()
        .zip(hashes)
        .filter(|(_, h)| !h.is_empty())
        .collect())
}

/// Whether each of messages `0..n` has its receipt in the store.
async fn receipts(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    n: u64,
) -> anyhow::Result<Vec<bool>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let end = (start + 10_000).min(n);
        let mut pipe = redis::pipe();
        for i in start..end {
            pipe.cmd("EXISTS").arg(format!("{prefix}msg/{i}"));
        }
        let got: Vec<bool> = pipe.query_async(conn).await?;
        out.extend(got);
        start = end;
    }
    Ok(out)
}

/// Compares what the store holds with the committed offsets: messages below
/// a partition's committed offset that were never written (a loss), and
/// messages at or above it that were written (to be replayed).
fn committed_vs_written(
    positions: &Positions,
    written: &[bool],
    offsets: &[(i64, i64)],
) -> (Vec<u64>, Vec<u64>) {
    let (mut lost, mut ahead) = (Vec::new(), Vec::new());
    for (i, ((p, o), w)) in positions.iter().zip(written).enumerate() {
        let committed = offsets[*p as usize].0.max(0);
        match (*o < committed, *w) {
            (true, false) => lost.push(i as u64),
            (false, true) => ahead.push(i as u64),
            _ => {}
        }
    }
    (lost, ahead)
}

fn tail(w: &Writer) -> String {
    let log = w.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until every one of messages `0..n` is applied: all receipts present,
/// every entity hash exactly as expected, committed == end on every partition
/// and the end offsets account for exactly `n` messages. Then checks that the
/// prefix holds no other key.
async fn wait_converged(
    conn: &mut MultiplexedConnection,
    setup: &Setup,
    load: Load,
    n: u64,
    within: Duration,
    writers: &[&Writer],
) -> anyhow::Result<()> {
    let expected = load.expected(n);
    let deadline = Instant::now() + within;
    loop {
        let written = receipts(conn, &setup.prefix, n).await?;
        let missing: Vec<u64> = (0..n).filter(|i| !written[*i as usize]).collect();
        let state = read_state(conn, &setup.prefix, load).await?;
        let wrong: Vec<&String> = expected
            .iter()
            .filter(|(k, v)| state.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        let offsets = setup.offsets()?;
        let end: i64 = offsets.iter().map(|(_, e)| e).sum();
        let committed_everything = offsets.iter().all(|(c, e)| c == e);
        if missing.is_empty() && wrong.is_empty() && state.len() == expected.len() {
            anyhow::ensure!(
                end == n as i64,
                "the topic holds {end} messages, {n} were produced"
            );
            if committed_everything {
                let keys = redis_keys(conn, &setup.prefix).await?.len();
                anyhow::ensure!(
                    keys == expected.len() + n as usize,
                    "{keys} keys under {}, expected {} entities + {n} receipts",
                    setup.prefix,
                    expected.len()
                );
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let example = wrong.first().map(|k| {
                format!(
                    "{k}: store {:?}, expected {:?}",
                    state.get(*k),
                    expected[*k]
                )
            });
            let logs: Vec<String> = writers.iter().map(|w| tail(w)).collect();
            anyhow::bail!(
                "not converged after {within:?}: {} of {n} receipts missing (first {:?}), \
                 {} of {} entities wrong ({example:?}), {} extra, offsets (committed, end) {offsets:?}\n\
                 writer logs:\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                wrong.len(),
                expected.len(),
                state.keys().filter(|k| !expected.contains_key(*k)).count(),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `w` has written at least `records` records (this process).
async fn wait_written(w: &mut Writer, records: u64, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let n = w.metric(WRITTEN).unwrap_or(0.0) as u64;
        if n >= records {
            return Ok(n);
        }
        anyhow::ensure!(
            !w.exited(),
            "writer exited before writing {records} records; log:\n{}",
            tail(w)
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "writer wrote {n} of {records} records in {within:?}; log:\n{}",
            tail(w)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn terminate(w: &mut Writer) -> anyhow::Result<()> {
    w.signal("TERM")?;
    let code = w.wait_exit(GRACE)?;
    anyhow::ensure!(code == Some(0), "exit {code:?}; log:\n{}", tail(w));
    Ok(())
}

/// Five SIGKILLs at spread-out moments of a stream over four partitions, a
/// restart in the same group after each: at every kill, nothing committed is
/// missing from the store, and the last run converges exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_five_times_loses_nothing() -> anyhow::Result<()> {
    // When each run is killed, after its first write. Each restart waits out
    // the dead member's session, so every run but the first starts with a
    // backlog: early kills land in the catch-up, later ones in the steady flow.
    const KILL_AFTER_MS: [u64; 5] = [300, 2500, 1200, 4000, 700];
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(4, &url).await?;
    let load = Load { entities: 3000 };
    let mut conn = connect(&url).await?;
    let env = setup.env();
    let producer = Paced::start(&setup.topic, 800, 200_000, move |i| load.payload(i));

    // Per kill: offsets (committed, end) and which messages the store had.
    let mut at_kill = Vec::new();
    for (round, after) in KILL_AFTER_MS.iter().enumerate() {
        let started = std::time::Instant::now();
        let mut w = Writer::start(&env)?;
        wait_written(&mut w, 1, Duration::from_secs(60)).await?;
        // After a kill: how long the restarted writer waits for the dead
        // member's partitions (its session timeout). Reported, not asserted.
        eprintln!(
            "round {round}: first write {} ms after start",
            started.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(*after)).await;
        anyhow::ensure!(!w.exited(), "round {round}: writer exited:\n{}", tail(&w));
        let written = w.metric(WRITTEN).unwrap_or(0.0);
        w.signal("KILL")?;
        assert_eq!(
            w.wait_exit(Duration::from_secs(10))?,
            None,
            "killed by a signal"
        );

        let offsets = setup.offsets()?;
        let sent = producer.sent();
        let stored = receipts(&mut conn, &setup.prefix, sent).await?;
        let committed: i64 = offsets.iter().map(|(c, _)| (*c).max(0)).sum();
        let end: i64 = offsets.iter().map(|(_, e)| e).sum();
        eprintln!(
            "round {round}: killed {after} ms after the first write, {written} records written; \
             committed {committed} of {end}"
        );
        assert!(
            committed < end,
            "round {round}: the kill must land mid-stream"
        );
        at_kill.push((offsets, stored));
    }

    let mut w = Writer::start(&env)?;
    wait_written(&mut w, 1, Duration::from_secs(60)).await?;
    let positions = producer.finish().await?;
    let n = positions.len() as u64;
    for (round, (offsets, stored)) in at_kill.iter().enumerate() {
        // Messages produced after the snapshot were not written then.
        let mut stored = stored.clone();
        stored.resize(positions.len(), false);
        let (lost, _) = committed_vs_written(&positions, &stored, offsets);
        assert!(
            lost.is_empty(),
            "after kill {round}: {} messages committed but not in the store (first {:?}); \
             offsets {offsets:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    wait_converged(&mut conn, &setup, load, n, Duration::from_secs(120), &[&w]).await?;
    eprintln!("{n} messages, 5 kills: converged");
    terminate(&mut w).await?;
    Ok(())
}

/// Redis (owned by the test, append-only file fsynced always) is SIGKILLed for
/// 20 s while messages keep arriving: the writer retries, commits nothing it
/// could not write, and after the restart everything is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_20s_then_restarted_loses_nothing() -> anyhow::Result<()> {
    const N1: u64 = 3000;
    const N2: u64 = 3000;
    let mut redis = OwnedRedis::start()?;
    let setup = Setup::new(3, &redis.url()).await?;
    let load = Load { entities: 500 };
    let payloads: Vec<Vec<u8>> = (0..N1 + N2).map(|i| load.payload(i)).collect();
    produce_tracked(&setup.topic, &payloads[..N1 as usize]).await?;
    let mut w = Writer::start(&setup.env())?;
    let mut conn = connect(&redis.url()).await?;
    wait_converged(&mut conn, &setup, load, N1, Duration::from_secs(60), &[&w]).await?;
    let before = setup.offsets()?;

    redis.kill()?;
    let down = Instant::now();
    let r0 = w.metric(RETRIES).unwrap_or(0.0);
    produce_tracked(&setup.topic, &payloads[N1 as usize..]).await?;
    let mut samples = vec![r0];
    for at in [6, 19] {
        tokio::time::sleep_until((down + Duration::from_secs(at)).into()).await;
        samples.push(w.metric(RETRIES).unwrap_or(0.0));
        let now = setup.offsets()?;
        let end: i64 = now.iter().map(|(_, e)| e).sum();
        assert_eq!(end, (N1 + N2) as i64);
        // Nothing could be written, so no committed offset may move.
        assert_eq!(
            now.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            before.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "{at} s into the outage: offsets moved while Redis was down"
        );
    }
    eprintln!("write retries at 0, 6 and 19 s of the outage: {samples:?}");
    assert!(
        samples.windows(2).all(|s| s[1] > s[0]),
        "write retries must keep growing during the outage: {samples:?}\n{}",
        tail(&w)
    );
    tokio::time::sleep_until((down + Duration::from_secs(20)).into()).await;

    redis.restart()?;
    // How soon the writer writes again: its backoff cap (jitter inside) and
    // the store's reconnect decide; reported, not asserted.
    let back = std::time::Instant::now();
    while w.metric("bgpersist_writer_store_writable") != Some(1.0) {
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(60),
            "the writer never wrote again after Redis came back\n{}",
            tail(&w)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "writing again {} ms after Redis came back",
        back.elapsed().as_millis()
    );
    let mut conn = connect(&redis.url()).await?;
    wait_converged(
        &mut conn,
        &setup,
        load,
        N1 + N2,
        Duration::from_secs(60),
        &[&w],
    )
    .await?;
    terminate(&mut w).await?;
    redis.kill()?;
    Ok(())
}

/// One writer, then three in the same group, then one again (two SIGTERMed),
/// all while messages keep coming over six partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_1_to_3_to_1_while_producing() -> anyhow::Result<()> {
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(6, &url).await?;
    let load = Load { entities: 2000 };
    let mut conn = connect(&url).await?;
    let env = setup.env();
    let producer = Paced::start(&setup.topic, 2000, 200_000, move |i| load.payload(i));

    let mut a = Writer::start(&env)?;
    wait_written(&mut a, 1, Duration::from_secs(60)).await?;
    let mut b = Writer::start(&env)?;
    let mut c = Writer::start(&env)?;
    // Both newcomers got partitions and keep writing from them.
    wait_written(&mut b, 500 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    wait_written(&mut c, 500 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    let a_at_3 = a.metric(WRITTEN).unwrap_or(0.0) as u64;
    let (b_wrote, c_wrote) = (b.metric(WRITTEN), c.metric(WRITTEN));
    terminate(&mut b).await?;
    terminate(&mut c).await?;
    // The survivor takes every partition back and keeps up with the stream.
    wait_written(
        &mut a,
        a_at_3 + 2000 * RECORDS_PER_MESSAGE,
        Duration::from_secs(60),
    )
    .await?;
    let n = producer.finish().await?.len() as u64;
    eprintln!("{n} messages; records written when three: a {a_at_3}, b {b_wrote:?}, c {c_wrote:?}");

    wait_converged(
        &mut conn,
        &setup,
        load,
        n,
        Duration::from_secs(90),
        &[&a, &b, &c],
    )
    .await?;
    terminate(&mut a).await?;
    Ok(())
}

/// SIGTERM while busy (a backlog, then a steady stream): exit 0 within the
/// grace period, and the committed offsets are exactly what was written: the
/// batch in hand is finished and committed, nothing later was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_commits_exactly_what_was_written() -> anyhow::Result<()> {
    const BACKLOG: u64 = 20_000;
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(3, &url).await?;
    let load = Load { entities: 1000 };
    let mut conn = connect(&url).await?;
    let backlog: Vec<Vec<u8>> = (0..BACKLOG).map(|i| load.payload(i)).collect();
    let mut positions = produce_tracked(&setup.topic, &backlog).await?;
    let producer = Paced::start(&setup.topic, 2000, 200_000, move |i| {
        load.payload(BACKLOG + i)
    });

    let mut w = Writer::start(&setup.env())?;
    wait_written(&mut w, 4000 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    terminate(&mut w).await?;
    let log = w.log_text();
    assert!(log.contains("shutdown requested"), "{}", tail(&w));
    // The stream goes on after the writer has left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    positions.extend(producer.finish().await?);

    let offsets = setup.offsets()?;
    let written = receipts(&mut conn, &setup.prefix, positions.len() as u64).await?;
    let (lost, ahead) = committed_vs_written(&positions, &written, &offsets);
    assert!(
        lost.is_empty(),
        "{} messages committed but not written (first {:?}); offsets {offsets:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        ahead.is_empty(),
        "{} messages written but left uncommitted (first {:?}); offsets {offsets:?}",
        ahead.len(),
        &ahead[..ahead.len().min(10)]
    );
    let committed: i64 = offsets.iter().map(|(c, _)| (*c).max(0)).sum();
    let end: i64 = offsets.iter().map(|(_, e)| e).sum();
    assert!(
        committed > 0 && committed < end,
        "committed {committed} of {end}: the stream must have been cut mid-way"
    );
    // The exit line accounts for exactly the committed messages.
    let consumed = log
        .lines()
        .find(|l| l.contains("writer stopped"))
        .and_then(|l| l.split("consumed: ").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse::<i64>().ok());
    assert_eq!(consumed, Some(committed), "{}", tail(&w));
    Ok(())
}

/// A hash key the store refuses (it holds a string: WRONGTYPE) dead-letters
/// only the message aimed at it; the rest of the same batches is written and
/// everything is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refusal_dead_letters_only_that_message() -> anyhow::Result<()> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    const N: u64 = 2000;
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(2, &url).await?;
    let load = Load { entities: 300 };
    let mut conn = connect(&url).await?;
    redis::cmd("SET")
        .arg(format!("{}user/not-a-hash", setup.prefix))
        .arg("x")
        .query_async::<()>(&mut conn)
        .await?;
    let refused = result_message(vec![observation("not-a-hash", "age", 1, 1)]);
    let mut payloads: Vec<Vec<u8>> = (0..N).map(|i| load.payload(i)).collect();
    payloads.push(refused.clone());
    produce_tracked(&setup.topic, &payloads).await?;

    let mut w = Writer::start(&setup.env())?;
    let dlq: StreamConsumer = kafka_plain()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    dlq.subscribe(&[&setup.dlq])?;
    let letter = tokio::time::timeout(Duration::from_secs(60), dlq.recv()).await??;
    let header = |name: &str| {
        letter.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    assert_eq!(letter.payload(), Some(refused.as_slice()));
    assert_eq!(header("bgp-dlq-error-class").as_deref(), Some("rejected"));
    let reason = header("bgp-dlq-error-message").unwrap_or_default();
    assert!(reason.contains("WRONGTYPE"), "{reason}");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = receipts(&mut conn, &setup.prefix, N).await?;
        let state = read_state(&mut conn, &setup.prefix, load).await?;
        let offsets = setup.offsets()?;
        if written.iter().all(|w| *w)
            && state == load.expected(N)
            && offsets.iter().all(|(c, e)| c == e)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {N} receipts, offsets {offsets:?}\n{}",
            written.iter().filter(|w| **w).count(),
            tail(&w)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        w.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(1.0)
    );
    terminate(&mut w).await?;
    Ok(())
}
