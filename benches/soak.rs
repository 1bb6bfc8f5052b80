//! Soak (not a test): the online (Kafka → Redis) and offline (Kafka →
//! Postgres) writers run side by side at a steady rate for a long time, and
//! every few minutes one of them is SIGKILLed and started again. Printed:
//! every minute, produced and written counts, each writer's lag and RSS; at
//! the end, peak and final RSS, each restart's time to its first write, the
//! lag once producing stopped, and the store state checked exactly (every
//! entity's newest observation time per feature in Redis; every row in
//! Postgres, once).
//!
//!   hack/rig up kafka redis postgres && cargo bench --bench soak
//!   BGP_SOAK_MINUTES=30 BGP_SOAK_KILL_EVERY_MINUTES=5 \
//!     BGP_SOAK_ONLINE_RATE=45000 BGP_SOAK_OFFLINE_RATE=40000 cargo bench --bench soak
//!
//! Rates are messages/s (an offline message carries five rows). The topics
//! keep 3 minutes of data (the broker's disk); a writer that falls further
//! behind than that loses messages to retention, which the state check shows.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::ResultMessage;
use common::data::{ENTITIES, FEATURES, mix, offline_payload, user_values};
use common::kafka::{self, PARTITIONS};
use common::process::{WRITTEN, WriterProcess, metric};
use common::report::machine;
use common::{env_or, postgres};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{rig, unique};

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

fn online_payload(i: u64) -> Vec<u8> {
    ResultMessage {
        operation_id: format!("op-{i}"),
        values: user_values(i).collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One writer under soak: its topic, its fixed environment (one consumer
/// group across restarts) and its current process.
struct Leg {
    name: &'static str,
    topic: String,
    group: String,
    env: Vec<(&'static str, String)>,
    process: WriterProcess,
    produced: Arc<AtomicU64>,
    peak_rss_kb: u64,
    /// Seconds from each restart to the first record written.
    recoveries: Vec<f64>,
}

impl Leg {
    fn start(
        name: &'static str,
        topic: String,
        env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Leg> {
        let group = env
            .iter()
            .find(|(k, _)| *k == "BGP_KAFKA_CONSUMER_GROUP")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let process = WriterProcess::start_quiet(&unique(name), &env)?;
        Ok(Leg {
            name,
            topic,
            group,
            env,
            process,
            produced: Arc::default(),
            peak_rss_kb: 0,
            recoveries: Vec::new(),
        })
    }

    /// SIGKILL (dropping the process kills it) and a fresh process on the
    /// same group; returns once it has written again.
    async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.sample_rss();
        let fresh = WriterProcess::start_quiet(&unique(self.name), &self.env)?;
        // The old one is killed as it is replaced.
        drop(std::mem::replace(&mut self.process, fresh));
        let t0 = Instant::now();
        while metric(&self.process.metrics(), WRITTEN) == 0.0 {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "{}: nothing written 120 s after a restart",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        self.recoveries.push(secs);
        println!(
            "  {}: SIGKILLed and restarted; writing again after {secs:.1} s",
            self.name
        );
        Ok(())
    }

    fn rss_kb(&self) -> u64 {
        status_kb(self.process.pid(), "VmRSS:")
    }

    fn sample_rss(&mut self) {
        self.peak_rss_kb = self
            .peak_rss_kb
            .max(status_kb(self.process.pid(), "VmHWM:"));
    }

    fn lag(&self) -> anyhow::Result<i64> {
        lag(&self.topic, &self.group)
    }
}

/// A `/proc/<pid>/status` figure in kB; 0 when the process is gone.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// End offsets minus the group's committed offsets, over the topic's partitions.
fn lag(topic: &str, group: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = kafka::kafka().set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        total += high - done;
    }
    Ok(total)
}

async fn create_topic(topic: &str) -> anyhow::Result<()> {
    let admin = kafka::admin()?;
    // Bounded disk: three minutes of data, in one-minute segments.
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
        .set("retention.ms", "180000")
        .set("segment.ms", "60000");
    for r in admin.create_topics([&t], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces `payload(0..)` at `rate` messages/s until `until`, one second's
/// messages at a time (so deliveries are awaited as it goes); counts them.
fn spawn_producer(
    topic: String,
    rate: u64,
    until: Instant,
    payload: fn(u64) -> Vec<u8>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let producer = kafka::producer(&[("queue.buffering.max.messages", "500000")])?;
        let mut next = 0u64;
        while Instant::now() < until {
            let second = Instant::now();
            let messages = (next..next + rate).map(|i| (i.to_string(), payload(i)));
            kafka::produce(&producer, &topic, messages, rate, kafka::BACKOFF).await?;
            next += rate;
            count.store(next, Ordering::SeqCst);
            tokio::time::sleep_until((second + Duration::from_secs(1)).into()).await;
        }
        Ok(())
    })
}

/// Entities whose newest observation time of some feature in Redis is not
/// the newest one produced (absent counts too), out of those produced.
async fn online_mismatches(prefix: &str, produced: u64) -> anyhow::Result<(usize, usize)> {
    let mut newest: HashMap<u64, [i64; 5]> = HashMap::new();
    for i in 0..produced {
        let r = mix(i);
        let ts = newest.entry(r % ENTITIES).or_insert([i64::MIN; 5]);
        for (f, v) in user_values(i).enumerate() {
            ts[f] = ts[f].max(v.observed_at_micros);
        }
    }
    let mut redis = redis::Client::open(rig("redis", "BGP_REDIS_URL"))?
        .get_multiplexed_async_connection()
        .await?;
    let entities: Vec<(&u64, &[i64; 5])> = newest.iter().collect();
    let mut wrong = 0;
    for chunk in entities.chunks(1000) {
        let mut pipe = redis::pipe();
        for (e, _) in chunk {
            let cmd = pipe.cmd("HMGET").arg(format!("{prefix}user/{e}"));
            for f in FEATURES {
                cmd.arg(format!("user.{f}_ts"));
            }
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut redis).await?;
        for ((_, want), got) in chunk.iter().zip(rows) {
            let ok = want
                .iter()
                .zip(&got)
                .all(|(w, g)| g.as_deref() == Some(w.to_string().as_str()));
            wrong += usize::from(!ok);
        }
    }
    Ok((wrong, newest.len()))
}

async fn offline_rows(schema: &str) -> anyhow::Result<i64> {
    let client = postgres::connect(&postgres::url()).await?;
    let sum = FEATURES
        .iter()
        .map(|f| format!("(SELECT count(*) FROM {schema}.user__{f})"))
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(client
        .query_one(&format!("SELECT {sum}"), &[])
        .await?
        .get(0))
}

async fn run() -> anyhow::Result<()> {
    let minutes: u64 = env_or("BGP_SOAK_MINUTES", 30);
    let kill_every: u64 = env_or("BGP_SOAK_KILL_EVERY_MINUTES", 5);
    let online_rate: u64 = env_or("BGP_SOAK_ONLINE_RATE", 45_000);
    let offline_rate: u64 = env_or("BGP_SOAK_OFFLINE_RATE", 40_000);
    println!(
        "soak: {minutes} min; online {online_rate} msg/s, offline {offline_rate} msg/s ({} rows/s); one writer SIGKILLed every {kill_every} min",
        offline_rate * 5
    );
    println!("  machine: {}", machine());

    let run = unique("soak");
    let prefix = format!("{run}:w:");
    let schema = run.replace('-', "_");
    let pg = postgres::connect(&postgres::url()).await?;
    pg.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    let (online_topic, offline_topic) = (unique("soak-online"), unique("soak-offline"));
    create_topic(&online_topic).await?;
    create_topic(&offline_topic).await?;

    let settings = Settings {
        minutes,
        kill_every,
        online_rate,
        offline_rate,
    };
    let outcome = soak(&settings, &schema, &prefix, &online_topic, &offline_topic).await;
    // Whatever happened, the soak's data goes: it is gigabytes in Postgres.
    postgres::drop_schema(&pg, &schema).await?;
    kafka::delete_topics(&kafka::admin()?, &[&online_topic, &offline_topic]).await?;
    let mut redis = redis::Client::open(rig("redis", "BGP_REDIS_URL"))?
        .get_multiplexed_async_connection()
        .await?;
    common::redis::unlink_prefix(&mut redis, &prefix).await?;
    outcome
}

struct Settings {
    minutes: u64,
    kill_every: u64,
    online_rate: u64,
    offline_rate: u64,
}

async fn soak(
    settings: &Settings,
    schema: &str,
    prefix: &str,
    online_topic: &str,
    offline_topic: &str,
) -> anyhow::Result<()> {
    let Settings {
        minutes,
        kill_every,
        online_rate,
        offline_rate,
    } = *settings;
    let online_env = kafka::writer_env(
        "ONLINE_WRITER",
        "online",
        online_topic,
        [
            ("BGP_ONLINE_STORE_URI", rig("redis", "BGP_REDIS_URL")),
            ("BGP_STORAGE_CACHE_PREFIX", prefix.to_string()),
        ],
    );
    let store = format!(
        "{}?sslmode=disable&options=-csearch_path%3D{schema}",
        postgres::url()
    );
    let offline_env = kafka::writer_env(
        "OFFLINE_WRITER",
        "offline",
        offline_topic,
        [("BGP_OFFLINE_STORE_URI", store)],
    );
    let mut legs = [
        Leg::start("online", online_topic.to_string(), online_env)?,
        Leg::start("offline", offline_topic.to_string(), offline_env)?,
    ];

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(minutes * 60);
    let producers = [
        spawn_producer(
            online_topic.to_string(),
            online_rate,
            until,
            online_payload,
            legs[0].produced.clone(),
        ),
        spawn_producer(
            offline_topic.to_string(),
            offline_rate,
            until,
            offline_payload,
            legs[1].produced.clone(),
        ),
    ];
    let mut next_kill = t0 + Duration::from_secs(kill_every * 60);
    let mut next_report = t0 + Duration::from_secs(60);
    let mut kills = 0usize;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for leg in &mut legs {
            leg.sample_rss();
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            let mut line = format!("  [{:>4.1} min]", t0.elapsed().as_secs_f64() / 60.0);
            for leg in &legs {
                // An overloaded broker may not answer in time: report it and go on.
                let lag = leg
                    .lag()
                    .map_or_else(|e| format!("unknown ({e})"), |l| l.to_string());
                line += &format!(
                    "  {}: produced {}, lag {lag}, RSS {} MiB",
                    leg.name,
                    leg.produced.load(Ordering::SeqCst),
                    leg.rss_kb() / 1024
                );
            }
            println!("{line}");
        }
        if Instant::now() >= next_kill && Instant::now() + Duration::from_secs(30) < until {
            next_kill += Duration::from_secs(kill_every * 60);
            legs[kills % 2].kill_and_restart().await?;
            kills += 1;
        }
    }
    for p in producers {
        p.await??;
    }

    // Drained: lag 0 on both, within five minutes. A read the broker does
    // not answer in time leaves the leg's lag unknown (-1) until the next.
    let drained = Instant::now();
    let mut lags = [0i64; 2];
    loop {
        for (l, leg) in lags.iter_mut().zip(&legs) {
            *l = leg.lag().unwrap_or(-1);
        }
        if lags == [0, 0] || drained.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "  lag after producing stopped: online {}, offline {} ({:.1} s to drain)",
        lags[0],
        lags[1],
        drained.elapsed().as_secs_f64()
    );
    for leg in &mut legs {
        leg.sample_rss();
        let recoveries: Vec<String> = leg.recoveries.iter().map(|s| format!("{s:.1} s")).collect();
        println!(
            "  [{}] produced {}; RSS peak {} MiB, at the end {} MiB; restarts: time to first write {}",
            leg.name,
            leg.produced.load(Ordering::SeqCst),
            leg.peak_rss_kb / 1024,
            leg.rss_kb() / 1024,
            if recoveries.is_empty() {
                "-".into()
            } else {
                recoveries.join(", ")
            }
        );
    }
    let (wrong, entities) =
        online_mismatches(prefix, legs[0].produced.load(Ordering::SeqCst)).await?;
    println!(
        "  [online state] {wrong} of {entities} entities without their newest observation of every feature"
    );
    let rows = offline_rows(schema).await?;
    let want = legs[1].produced.load(Ordering::SeqCst) as i64 * 5;
    println!("  [offline state] {rows} rows of {want} expected (one per observation id)");

    for leg in legs {
        leg.process.stop();
    }
    anyhow::ensure!(
        wrong == 0 && rows == want && lags == [0, 0],
        "the soak ended with a wrong state or lag"
    );
    Ok(())
}
