//! Robustness of the Kafka → Redis ONLINE_WRITER against real parts: crashes
//! (SIGKILL mid-stream, with poison in the stream) and graceful SIGTERM
//! (`crashes`), a store outage and a store refusal (`outages`), a Kafka broker
//! restart (`broker`), and consumers scaled up and down while producing
//! (`scaling`). Parts a test breaks are its own (a Redis, a broker); the
//! others are the rig's. docs/reliability.md says what each test proves.
//!
//! Every test checks the end state exactly: the newest value of every feature
//! (out-of-order and tied observation times), a receipt for every message, and
//! committed offsets against end offsets, partition by partition.

mod broker;
mod crashes;
mod outages;
mod scaling;

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
/// `poison_percent` of the messages (chosen by `i`) are malformed instead: no
/// result message at all, to be dead-lettered.
#[derive(Clone, Copy)]
struct Load {
    entities: u64,
    poison_percent: u64,
}

impl Load {
    fn new(entities: u64) -> Load {
        Load {
            entities,
            poison_percent: 0,
        }
    }

    fn is_poison(&self, i: u64) -> bool {
        mix(i ^ 0x0BAD_F00D) % 100 < self.poison_percent
    }

    /// How many of messages `0..n` are poison.
    fn poisoned(&self, n: u64) -> u64 {
        (0..n).filter(|i| self.is_poison(*i)).count() as u64
    }

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
        if self.is_poison(i) {
            // Field number 0 is no valid protobuf tag: undecodable.
            return [b"\0\0poison ".as_slice(), i.to_string().as_bytes()].concat();
        }
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
        for i in (0..n).filter(|i| !self.is_poison(*i)) {
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
    /// The Kafka cluster: the rig's, or a broker the test owns (whose
    /// topics go with it, so drop leaves them).
    bootstrap: String,
    owned_kafka: bool,
}

impl Setup {
    async fn new(partitions: i32, redis_url: &str) -> anyhow::Result<Setup> {
        Setup::create(
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
            false,
            partitions,
            redis_url,
        )
        .await
    }

    /// On the broker `kafka` owned by the test.
    async fn on(kafka: &OwnedKafka, partitions: i32, redis_url: &str) -> anyhow::Result<Setup> {
        Setup::create(kafka.bootstrap(), true, partitions, redis_url).await
    }

    async fn create(
        bootstrap: String,
        owned_kafka: bool,
        partitions: i32,
        redis_url: &str,
    ) -> anyhow::Result<Setup> {
        let s = Setup {
            topic: unique("robust"),
            dlq: unique("robust-dlq"),
            group: unique("robust-grp"),
            prefix: format!("{}:", unique("rb")),
            partitions,
            redis_url: redis_url.to_string(),
            bootstrap,
            owned_kafka,
        };
        create_topics_at(&s.bootstrap, &[(&s.topic, partitions), (&s.dlq, 1)]).await?;
        Ok(s)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = online_writer_env(&self.topic, &self.dlq, &self.group, &self.redis_url);
        for (k, v) in env.iter_mut() {
            if *k == "BGP_KAFKA_BOOTSTRAP_SERVERS" {
                *v = self.bootstrap.clone();
            }
        }
        // A SIGKILLed member holds its partitions until its session expires:
        // the writer's default session timeout is what users get.
        env.push(("BGP_STORAGE_CACHE_PREFIX", self.prefix.clone()));
        env
    }

    fn offsets(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        offsets_by_partition_at(&self.bootstrap, &self.topic, &self.group, self.partitions)
    }

    /// Produces `make(0)`, `make(1)`, ... to the topic at `per_second`.
    fn paced(&self, per_second: u64, make: impl Fn(u64) -> Vec<u8> + Send + 'static) -> Paced {
        Paced::start_at(&self.bootstrap, &self.topic, per_second, 200_000, make)
    }

    /// Every dead letter so far, with the (partition, offset) it came from.
    async fn dead_letters(&self) -> anyhow::Result<Vec<((i32, i64), Letter)>> {
        let end = offsets_by_partition_at(&self.bootstrap, &self.dlq, &unique("dlq-end"), 1)?[0].1;
        let letters = dead_letters_at(&self.bootstrap, &self.dlq, end as usize).await?;
        letters
            .into_iter()
            .map(|l| {
                let header = |name: &str| {
                    l.1.get(name)
                        .and_then(|v| v.parse::<i64>().ok())
                        .ok_or_else(|| anyhow::anyhow!("dead letter without {name}: {:?}", l.1))
                };
                let origin = (
                    header("bgp-dlq-original-partition")? as i32,
                    header("bgp-dlq-original-offset")?,
                );
                Ok((origin, l))
            })
            .collect()
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
        if !self.owned_kafka {
            let _ = futures::executor::block_on(delete_topics(&[&self.topic, &self.dlq]));
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    // The checks pipeline 10 000 commands at a time, on a machine the
    // tests beside them keep busy: the client's default 500 ms response
    // timeout is too short for that.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
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

/// Whether each of messages `0..n` is accounted for in the store: its
/// receipt is there, or it is poison (which the store never sees; the
/// dead-letter topic accounts for those).
async fn receipts(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    load: Load,
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
        out.extend(
            got.into_iter()
                .zip(start..end)
                .map(|(w, i)| w || load.is_poison(i)),
        );
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
        let written = receipts(conn, &setup.prefix, load, n).await?;
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
                let receipts = n - load.poisoned(n);
                anyhow::ensure!(
                    keys == expected.len() + receipts as usize,
                    "{keys} keys under {}, expected {} entities + {receipts} receipts",
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

/// Reads the whole dead-letter topic and checks that each poison message of
/// `positions` is there and nothing else is; returns how many copies of
/// each it holds.
async fn poison_dead_lettered(
    setup: &Setup,
    load: Load,
    positions: &Positions,
) -> anyhow::Result<BTreeMap<(i32, i64), u64>> {
    let mut copies: BTreeMap<(i32, i64), u64> = BTreeMap::new();
    for (origin, _) in setup.dead_letters().await? {
        *copies.entry(origin).or_default() += 1;
    }
    let poison: Vec<(i32, i64)> = (0..positions.len() as u64)
        .filter(|i| load.is_poison(*i))
        .map(|i| positions[i as usize])
        .collect();
    let missing: Vec<&(i32, i64)> = poison.iter().filter(|p| !copies.contains_key(p)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} of {} poison messages not dead-lettered (first {:?})",
        missing.len(),
        poison.len(),
        &missing[..missing.len().min(10)]
    );
    anyhow::ensure!(
        copies.len() == poison.len(),
        "{} messages dead-lettered, {} of them poison",
        copies.len(),
        poison.len()
    );
    Ok(copies)
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
