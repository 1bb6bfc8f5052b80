//! Kafka → Redis ONLINE_WRITER throughput (not a test), against the rig, all
//! in one run:
//!
//! 1. the ceilings of the parts: rdkafka consume-only of the same topic, and
//!    `redis-benchmark -P 16` for SET, HSET and EVALSHA of the writer's own
//!    Lua script with the same arguments a message produces;
//! 2. the release writer binary on the same topic: messages/s, MB/s,
//!    records/s, peak RSS (VmHWM), and the ratio to the lower ceiling;
//! 3. p50/p99 bus-to-store latency at half the measured rate, from the
//!    writer's `bus_to_store_seconds` histogram.
//!
//!   hack/rig up kafka redis && cargo bench --bench kafka_to_redis
//!   BGP_BENCH_MESSAGES=50000 cargo bench --bench kafka_to_redis
//!
//! Writer settings come from the environment like in a pod (defaults
//! otherwise), e.g. `BGP_MAX_BATCH_SIZE=5000 cargo bench --bench kafka_to_redis`.

#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{rig, unique};

const PARTITIONS: i32 = 4;
const ENTITIES: u64 = 100_000;
/// Feature values per message (records per message).
const VALUES: u64 = 5;
const TS_BASE: i64 = 1_700_000_000_000_000;

fn main() -> anyhow::Result<()> {
    bgpersist::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Message `i`: one entity of 100k, five values of mixed kinds, random
/// observation times (out of order, like a real result bus).
fn payload(i: u64) -> Vec<u8> {
    let r = mix(i);
    let pkey = format!("{}", r % ENTITIES);
    let ts = |f: u64| TS_BASE + (mix(r ^ f) % 1_000_000) as i64;
    let kinds = [
        ("age", Kind::IntValue((r % 90) as i64)),
        ("score", Kind::DoubleValue((r % 10_000) as f64 / 7.0)),
        ("country", Kind::StringValue(format!("c{}", r % 200))),
        ("vip", Kind::BoolValue(r.is_multiple_of(2))),
        ("visits", Kind::IntValue((r % 100_000) as i64)),
    ];
    let values = kinds
        .into_iter()
        .enumerate()
        .map(|(f, (name, kind))| FeatureValue {
            namespace: "user".into(),
            feature: name.into(),
            pkey: pkey.clone(),
            value: Some(Value { kind: Some(kind) }),
            observed_at_micros: ts(f as u64),
            resolver_fqn: format!("user.{name}"),
            ..Default::default()
        })
        .collect();
    ResultMessage {
        operation_id: format!("op-{i}"),
        values,
        ..Default::default()
    }
    .encode_to_vec()
}

fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig("kafka", "BGP_KAFKA_PLAINTEXT"));
    c
}

/// Produces messages `from..to` at about `per_second` (0: as fast as possible).
async fn produce(topic: &str, from: u64, to: u64, per_second: u64) -> anyhow::Result<f64> {
    let producer: FutureProducer = kafka()
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in from..to {
        if per_second > 0 {
            let due = started + Duration::from_secs_f64((i - from) as f64 / per_second as f64);
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let p = payload(i);
        let key = i.to_string();
        let mut record = FutureRecord::to(topic).key(&key).payload(&p);
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
    let sent = started.elapsed().as_secs_f64();
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok((to - from) as f64 / sent)
}

/// Consume-only ceiling: a fresh group reads `n` messages from the start,
/// copying each payload like the writer does. (messages/s, bytes/s)
async fn consume_only(topic: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let consumer: StreamConsumer = kafka()
        .set("group.id", unique("bench-consume"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let first = consumer.recv().await?;
    let mut bytes = first.payload().map_or(0, <[u8]>::len) as u64;
    drop(first);
    let started = Instant::now();
    for _ in 1..n {
        let m = consumer.recv().await?;
        let p = m.payload().unwrap_or_default().to_vec();
        bytes += p.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(((n - 1) as f64 / secs, bytes as f64 / secs))
}

/// `redis-benchmark -P 16` of one command; requests/s.
fn redis_benchmark(port: &str, requests: u64, args: &[&str]) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", port, "-P", "16", "-r", "100000"])
        .args(["-n", &requests.to_string(), "--csv"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.split("\",\"").nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark output:\n{text}"))
}

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Cumulative (upper bound, count) buckets of a histogram.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Quantile of the difference of two cumulative histograms, interpolated
/// linearly inside the bucket.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    let want = q * total;
    let mut lower = (0.0, 0.0);
    for (le, c) in delta {
        if c >= want {
            if le.is_infinite() {
                return lower.0;
            }
            let span = c - lower.1;
            let frac = if span > 0.0 {
                (want - lower.1) / span
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * frac;
        }
        lower = (le, c);
    }
    f64::NAN
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// (busy, total) CPU seconds of the whole machine so far.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// CPU seconds the Redis server has used so far (INFO cpu).
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user")
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({model}), {mem} memory, {date}")
}

async fn run() -> anyhow::Result<()> {
    let n: u64 = std::env::var("BGP_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let redis_url = rig("redis", "BGP_REDIS_URL");
    let redis_port = url::Url::parse(&redis_url)?
        .port()
        .unwrap_or(6379)
        .to_string();
    let run = unique("bench");
    let topic = unique("bench-results");
    let prefix = format!("{run}:");
    println!("kafka_to_redis: {n} messages, {VALUES} values each, {PARTITIONS} partitions");
    println!("  machine: {}", machine());

    let admin: AdminClient<DefaultClientContext> = kafka().create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    let produced = produce(&topic, 0, n, 0).await?;
    let avg_bytes = (0..1000).map(|i| payload(i).len()).sum::<usize>() as f64 / 1000.0;
    println!("  produced at {produced:.0} msg/s; payload {avg_bytes:.0} bytes on average");

    // 1. Ceilings of the parts.
    let (consume_rate, consume_bytes) = consume_only(&topic, n).await?;
    println!(
        "  [ceiling] rdkafka consume-only:  {consume_rate:>9.0} msg/s  {:>6.1} MB/s",
        consume_bytes / 1e6
    );
    let mut redis = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(bgpersist::writer::stores::online::redis::NEWER_WINS)
        .query_async(&mut redis)
        .await?;
    let rb_n = (n * 2).max(100_000);
    let set = redis_benchmark(
        &redis_port,
        rb_n,
        &["SET", &format!("{prefix}s:__rand_int__"), "42"],
    )?;
    let hset = redis_benchmark(
        &redis_port,
        rb_n,
        &[
            "HSET",
            &format!("{prefix}h:__rand_int__"),
            "user.age",
            "42",
            "user.age_ts",
            "1700000000000000",
        ],
    )?;
    // The writer's call for one message: the same script, five (field, ts, value).
    let key = format!("{prefix}e:__rand_int__");
    let mut eval: Vec<&str> = vec!["EVALSHA", &sha, "1", &key, "pkey", "0"];
    for (field, value) in [
        ("user.age", "42"),
        ("user.score", "1234.5"),
        ("user.country", "\"c17\""),
        ("user.vip", "true"),
        ("user.visits", "99871"),
    ] {
        eval.extend([field, "__rand_int__", value]);
    }
    let evalsha = redis_benchmark(&redis_port, rb_n, &eval)?;
    println!(
        "  [ceiling] redis-benchmark -P 16: SET {set:.0}/s, HSET {hset:.0}/s, EVALSHA (one message) {evalsha:.0}/s"
    );
    let ceiling = consume_rate.min(evalsha);

    // 2. The writer.
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{run}.log"));
    let mut writer = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"))
        .env("RUST_LOG", "warn")
        .env("BGP_LOG_FORMAT", "text")
        .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("BGP_WRITER_TYPE", "ONLINE_WRITER")
        .env("BGP_WRITER_NAME", "online")
        .env("BGP_RESOURCE", "bench")
        .env("BGP_BUS_BACKEND", "KAFKA")
        .env("BGP_SUBSCRIPTION", &topic)
        .env(
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        )
        .env("BGP_KAFKA_CONSUMER_GROUP", unique("bench-writer"))
        .env("BGP_ONLINE_STORE_URI", &redis_url)
        .env("BGP_STORES_DIR", "/nonexistent")
        .env("BGP_STORAGE_CACHE_PREFIX", format!("{prefix}w:"))
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = writer.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut t0, mut c0) = (None, 0.0);
    let (mut cpu0, mut redis0, mut machine0) = (0.0, 0.0, (0.0, 0.0));
    let t1 = loop {
        anyhow::ensure!(
            writer.try_wait()?.is_none(),
            "writer exited; log: {}",
            log.display()
        );
        anyhow::ensure!(Instant::now() < deadline, "writer too slow");
        let m = http_get(http_port, "/metrics").unwrap_or_default();
        let consumed = metric(&m, "bgpersist_writer_messages_consumed_total");
        let written = metric(&m, "bgpersist_writer_records_written_total");
        if t0.is_none() && consumed > 0.0 {
            (t0, c0) = (Some(Instant::now()), consumed);
            (cpu0, machine0) = (process_cpu(pid), machine_cpu());
            redis0 = redis_cpu(&mut redis).await?;
        }
        if written >= (n * VALUES) as f64 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let m = http_get(http_port, "/metrics")?;
    let batches = metric(&m, "bgpersist_writer_batch_duration_seconds_count");
    let in_batches = metric(&m, "bgpersist_writer_batch_duration_seconds_sum");
    let writer_cpu = process_cpu(pid) - cpu0;
    let redis_cpu = redis_cpu(&mut redis).await? - redis0;
    let machine1 = machine_cpu();
    let secs = (t1 - t0.unwrap_or(t1)).as_secs_f64();
    let rate = (n as f64 - c0) / secs;
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        .unwrap_or_default();
    println!(
        "  [writer]  {rate:>9.0} msg/s  {:>6.1} MB/s  {:>9.0} records/s  peak RSS {hwm}",
        rate * avg_bytes / 1e6,
        rate * VALUES as f64
    );
    println!(
        "  [batches] {batches} of {:.0} messages on average, {:.1} ms each in decode + write + commit; {:.0}% of the time",
        n as f64 / batches.max(1.0),
        1000.0 * in_batches / batches.max(1.0),
        100.0 * in_batches / secs
    );
    println!(
        "  [cpu]     writer {:.2} cores, redis-server {:.2} cores, whole machine {:.0}% busy ({:.1} of {} cores)",
        writer_cpu / secs,
        redis_cpu / secs,
        100.0 * (machine1.0 - machine0.0) / (machine1.1 - machine0.1),
        (machine1.0 - machine0.0) / secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  writer / lower ceiling ({}): {:.0}%",
        if consume_rate < evalsha {
            "consume-only"
        } else {
            "EVALSHA"
        },
        100.0 * rate / ceiling
    );

    // 3. Latency at half load, from the writer's histogram.
    let half = (rate / 2.0) as u64;
    let latency_n = half * 15;
    let name = "bgpersist_writer_bus_to_store_seconds";
    let before = buckets(&http_get(http_port, "/metrics")?, name);
    let achieved = produce(&topic, n, n + latency_n, half).await?;
    let want = ((n + latency_n) * VALUES) as f64;
    let after = loop {
        let m = http_get(http_port, "/metrics")?;
        if metric(&m, "bgpersist_writer_records_written_total") >= want {
            break buckets(&m, name);
        }
        anyhow::ensure!(Instant::now() < deadline, "writer too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  [latency] at {achieved:.0} msg/s for 15 s (half load): bus-to-store p50 {:.1} ms, p99 {:.1} ms",
        1000.0 * quantile(&before, &after, 0.5),
        1000.0 * quantile(&before, &after, 0.99)
    );

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = writer.wait();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut redis)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(())
}
