//! Kafka → Redis ONLINE_WRITER throughput (not a test), against the rig, all
//! in one run:
//!
//! 1. the ceilings of the parts: rdkafka consume-only of the same topic;
//!    `redis-benchmark -P 16` for SET, for HSET of the fields one message
//!    sets (no guard: the store's floor cost), and for one call per message
//!    of the former one-entity script; and a raw client loop of the writer's
//!    own many-entity script calls for the same messages (planned as the
//!    writer plans a batch), 64 calls in flight;
//! 2. the release writer binary on the same topic: messages/s, MB/s,
//!    records/s, peak RSS (VmHWM), and the ratio to the lower ceiling;
//! 3. p50/p99 bus-to-store latency at half the measured rate, from the
//!    writer's `bus_to_store_seconds` histogram; and the floor under it, the
//!    bus alone: the same messages at the same rate into a fresh topic,
//!    timed by a bare consumer with the writer's librdkafka settings;
//! 4. a peer, Benthos 4.27, on every message of the same topic into the same
//!    Redis: protobuf decode and the same newest-wins script, one call per
//!    message; msg/s, msg/s per core and peak RSS beside the writer's
//!    (`BGP_BENCH_PEERS=0` skips it; `hack/peers/build benthos` builds it
//!    once from the Go module proxy).
//!
//!   hack/rig up kafka redis && cargo bench --bench kafka_to_redis
//!   BGP_BENCH_MESSAGES=50000 cargo bench --bench kafka_to_redis
//!
//! Writer settings come from the environment like in a pod (defaults
//! otherwise), e.g. `BGP_MAX_BATCH_SIZE=5000 cargo bench --bench kafka_to_redis`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::ResultMessage;
use bgpersist::writer::stores::online::redis::{NEWER_WINS, script_calls};
use bgpersist::writer::types::online_writer;
use common::data::{mean_size, user_values};
use common::env_or;
use common::kafka::{self, PARTITIONS};
use common::peer::{self, Benthos};
use common::process::{CONSUMED, Cpu, WRITTEN, WriterProcess, metric};
use common::report::{self, machine};
use futures::{StreamExt, TryStreamExt};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{rig, unique};

/// Feature values per message (records per message).
const VALUES: u64 = 5;

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

/// Message `i`: one entity of 100k, five values of mixed kinds, random
/// observation times (out of order, like a real result bus).
fn payload(i: u64) -> Vec<u8> {
    ResultMessage {
        operation_id: format!("op-{i}"),
        values: user_values(i).collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The one-entity-per-call script the writer used before many-entity calls,
/// kept for its ceiling: what one call per message can reach.
const ONE_ENTITY: &str = r#"
redis.call('HSET', KEYS[1], '__id__', ARGV[1])
local changed = 0
for i = 3, #ARGV, 3 do
  local field, ts, value = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local cur_ts = redis.call('HGET', KEYS[1], field .. '_ts')
  local newer = (not cur_ts) or tonumber(cur_ts) < ts
  if (not newer) and tonumber(cur_ts) == ts then
    local cur = redis.call('HGET', KEYS[1], field)
    newer = (not cur) or cur < value
  end
  if newer then
    redis.call('HSET', KEYS[1], field, value, field .. '_ts', ARGV[i + 1])
    changed = changed + 1
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  local cur = redis.call('TTL', KEYS[1])
  if cur < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
end
return changed
"#;

/// The writer's script calls for messages `0..n`, planned per 1000 messages
/// like the writer's batches, sent by a raw client 64 at a time on one
/// multiplexed connection: messages/s, and entities per call.
async fn script_ceiling(
    conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
    n: u64,
) -> anyhow::Result<(f64, f64)> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(NEWER_WINS)
        .query_async(&mut conn.clone())
        .await?;
    let mut cmds = Vec::new();
    let mut keys_sent = 0usize;
    for from in (0..n).step_by(1000) {
        let mut records = Vec::new();
        for i in from..(from + 1000).min(n) {
            records.extend(online_writer::decode(&payload(i)).map_err(anyhow::Error::msg)?);
        }
        let key = |r: &bgpersist::writer::stores::online::OnlineRecord| {
            format!("{prefix}c:{}/{}", r.namespace, r.pkey)
        };
        for (keys, arg) in script_calls(&records, key, false)? {
            keys_sent += keys.len();
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&sha).arg(keys.len()).arg(keys).arg(arg);
            cmds.push(cmd);
        }
    }
    let start = Instant::now();
    futures::stream::iter(cmds.iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { cmd.query_async::<redis::Value>(&mut conn).await }
    }))
    .buffer_unordered(64)
    .try_for_each(|_| async { Ok(()) })
    .await?;
    Ok((
        n as f64 / start.elapsed().as_secs_f64(),
        keys_sent as f64 / cmds.len().max(1) as f64,
    ))
}

/// Produces messages `from..to` at about `per_second` (0: as fast as
/// possible); messages/s of sending.
async fn produce(topic: &str, from: u64, to: u64, per_second: u64) -> anyhow::Result<f64> {
    let producer = kafka::producer(&[("queue.buffering.max.messages", "500000")])?;
    let messages = (from..to).map(|i| (i.to_string(), payload(i)));
    let produced = kafka::produce(&producer, topic, messages, per_second, kafka::BACKOFF).await?;
    Ok(produced.queue_rate())
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

/// The latency floor the bus sets: the same messages at the same rate into
/// a fresh topic, timed by a bare consumer (no writer running), printed
/// beside the writer's p50/p99, exactly and in the writer's buckets
/// (`before`/`after` give their bounds).
async fn bus_alone(
    admin: &AdminClient<DefaultClientContext>,
    from: u64,
    n: u64,
    per_second: u64,
    before: &[(f64, f64)],
    after: &[(f64, f64)],
) -> anyhow::Result<()> {
    let topic = unique("bench-latency");
    kafka::create_topic(admin, &topic).await?;
    let outcome = async {
        const WARM_UP: u64 = 100;
        let (warmed, is_warm) = std::sync::mpsc::channel();
        let arrivals = kafka::time_arrivals(&topic, WARM_UP, n, warmed)?;
        produce(&topic, from, from + WARM_UP, 0).await?;
        tokio::task::spawn_blocking(move || is_warm.recv()).await??;
        let from = from + WARM_UP;
        let achieved = produce(&topic, from, from + n, per_second).await?;
        let mut millis = arrivals
            .join()
            .map_err(|_| anyhow::anyhow!("the timing consumer panicked"))??;
        millis.sort_by(f64::total_cmp);
        let exact = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
        // The same samples counted in the writer's histogram buckets.
        let bounded: Vec<(f64, f64)> = after
            .iter()
            .map(|(le, _)| {
                let within = millis.partition_point(|m| *m / 1000.0 <= *le);
                (*le, within as f64)
            })
            .collect();
        let none: Vec<(f64, f64)> = before.iter().map(|(le, _)| (*le, 0.0)).collect();
        let within = millis.partition_point(|m| *m <= 50.0) as f64 / millis.len() as f64;
        println!(
            "  [latency] the bus alone at {achieved:.0} msg/s (a bare consumer, the writer's librdkafka settings): p50 {:.0} ms, p99 {:.0} ms, within 50 ms {:.2} %; in the writer's buckets p50 {:.1} ms, p99 {:.1} ms",
            exact(0.5),
            exact(0.99),
            100.0 * within,
            1000.0 * quantile(&none, &bounded, 0.5),
            1000.0 * quantile(&none, &bounded, 0.99)
        );
        anyhow::Ok(())
    }
    .await;
    kafka::delete_topics(admin, &[&topic]).await?;
    outcome
}

/// The share of the observations between two cumulative histograms that
/// were at most `le` (a bucket bound).
fn share_within(before: &[(f64, f64)], after: &[(f64, f64)], le: f64) -> f64 {
    let count =
        |h: &[(f64, f64)], bound: f64| h.iter().find(|(l, _)| *l == bound).map_or(0.0, |(_, c)| *c);
    let total = count(after, f64::INFINITY) - count(before, f64::INFINITY);
    (count(after, le) - count(before, le)) / total.max(1.0)
}

/// Cumulative (upper bound, count) buckets of a histogram.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|l| {
            let (labels, count) = l.strip_prefix(&prefix)?.split_once("} ")?;
            let le = labels.split(',').find_map(|p| p.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
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

async fn run() -> anyhow::Result<()> {
    let n: u64 = env_or("BGP_BENCH_MESSAGES", 200_000);
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

    let admin = kafka::admin()?;
    kafka::create_topic(&admin, &topic).await?;
    let produced = produce(&topic, 0, n, 0).await?;
    let avg_bytes = mean_size(payload);
    println!("  produced at {produced:.0} msg/s; payload {avg_bytes:.0} bytes on average");

    // 1. Ceilings of the parts.
    let (consume_rate, consume_bytes) = kafka::consume_only(&topic, n).await?;
    println!(
        "  [ceiling] rdkafka consume-only:  {consume_rate:>9.0} msg/s  {:>6.1} MB/s",
        consume_bytes / 1e6
    );
    let mut redis = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let one_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(ONE_ENTITY)
        .query_async(&mut redis)
        .await?;
    let rb_n = (n * 2).max(100_000);
    let set = redis_benchmark(
        &redis_port,
        rb_n,
        &["SET", &format!("{prefix}s:__rand_int__"), "42"],
    )?;
    let fields = [
        ("user.age", "42"),
        ("user.score", "1234.5"),
        ("user.country", "\"c17\""),
        ("user.vip", "true"),
        ("user.visits", "99871"),
    ];
    // What one message sets, unguarded: one HSET of __id__ and five
    // (field, value, field_ts, ts).
    let hkey = format!("{prefix}h:__rand_int__");
    let mut hset_args: Vec<&str> = vec!["HSET", &hkey, "__id__", "pkey"];
    let ts_names: Vec<String> = fields.iter().map(|(f, _)| format!("{f}_ts")).collect();
    for ((field, value), ts_name) in fields.iter().zip(&ts_names) {
        hset_args.extend([*field, *value, ts_name.as_str(), "__rand_int__"]);
    }
    let hset = redis_benchmark(&redis_port, rb_n, &hset_args)?;
    // The former call for one message: one entity, five (field, ts, value).
    let key = format!("{prefix}e:__rand_int__");
    let mut eval: Vec<&str> = vec!["EVALSHA", &one_sha, "1", &key, "pkey", "0"];
    for (field, value) in fields {
        eval.extend([field, "__rand_int__", value]);
    }
    let evalsha = redis_benchmark(&redis_port, rb_n, &eval)?;
    println!(
        "  [ceiling] redis-benchmark -P 16: SET {set:.0}/s, HSET of one message's fields {hset:.0} msg/s, one-entity EVALSHA {evalsha:.0} msg/s"
    );
    let (many, per_call) = script_ceiling(&redis, &prefix, n).await?;
    println!(
        "  [ceiling] raw client, the writer's many-entity calls ({per_call:.1} entities a call): {many:.0} msg/s"
    );
    let ceiling = consume_rate.min(many);

    // 2. The writer.
    let env = kafka::writer_env(
        "ONLINE_WRITER",
        "online",
        &topic,
        [
            ("BGP_ONLINE_STORE_URI", redis_url.clone()),
            ("BGP_STORAGE_CACHE_PREFIX", format!("{prefix}w:")),
        ],
    );
    let mut writer = WriterProcess::start(&run, &env)?;
    // One deadline for the measurement and the latency run after it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let written = |m: &str| metric(m, WRITTEN);
    let cpu = async |pid| Ok((Cpu::now(pid), redis_cpu(&mut redis).await?));
    let measured = writer
        .measure(Duration::from_secs(600), written, (n * VALUES) as f64, cpu)
        .await?;
    let m = writer.try_metrics()?;
    let ((cpu0, redis0), (cpu1, redis1)) = (measured.before, measured.after);
    let secs = measured.secs;
    let rate = (n as f64 - metric(&measured.start, CONSUMED)) / secs;
    let hwm = writer.peak_rss()?;
    println!(
        "  [writer]  {rate:>9.0} msg/s  {:>6.1} MB/s  {:>9.0} records/s  peak RSS {hwm}",
        rate * avg_bytes / 1e6,
        rate * VALUES as f64
    );
    report::batches(&m, n as f64, secs);
    let writer_cores = (cpu1.process - cpu0.process) / secs;
    println!(
        "  [cpu]     writer {:.2} cores, redis-server {:.2} cores, {}",
        writer_cores,
        (redis1 - redis0) / secs,
        report::whole_machine(&cpu0, &cpu1, secs)
    );
    println!(
        "  writer / lower ceiling ({}): {:.0}%; / HSET unguarded: {:.0}%; / one-entity EVALSHA: {:.0}%",
        if consume_rate < many {
            "consume-only"
        } else {
            "many-entity calls"
        },
        100.0 * rate / ceiling,
        100.0 * rate / hset,
        100.0 * rate / evalsha
    );

    // 3. Latency at half load, from the writer's histogram.
    let half = (rate / 2.0) as u64;
    let latency_n = half * 15;
    let name = "bgpersist_writer_bus_to_store_seconds";
    let before = buckets(&writer.try_metrics()?, name);
    let achieved = produce(&topic, n, n + latency_n, half).await?;
    let want = ((n + latency_n) * VALUES) as f64;
    let after = loop {
        let m = writer.try_metrics()?;
        if written(&m) >= want {
            break buckets(&m, name);
        }
        anyhow::ensure!(Instant::now() < deadline, "writer too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  [latency] at {achieved:.0} msg/s for 15 s (half load): bus-to-store p50 {:.1} ms, p99 {:.1} ms; within 50 ms {:.2} %",
        1000.0 * quantile(&before, &after, 0.5),
        1000.0 * quantile(&before, &after, 0.99),
        100.0 * share_within(&before, &after, 0.05)
    );

    writer.stop();
    bus_alone(&admin, n, latency_n, half, &before, &after).await?;

    // 4. A peer on the same topic (every message, from the start).
    if env_or("BGP_BENCH_PEERS", 1) == 1
        && let Some(benthos) = peer::benthos()
    {
        let total = n + latency_n;
        let pipeline = benthos_pipeline(&topic, &redis_url, &format!("{prefix}p:"));
        let outcome = async {
            let mut p = Benthos::start(&benthos, &run, &pipeline)?;
            let r = p.measure(total as f64, Duration::from_secs(900)).await?;
            drop(p);
            // Benthos passes a message on even when its script call failed:
            // the peer's entities must be the writer's.
            let mine = common::redis::count_prefix(&mut redis, &format!("{prefix}w:")).await?;
            let theirs = common::redis::count_prefix(&mut redis, &format!("{prefix}p:")).await?;
            anyhow::ensure!(
                theirs == mine,
                "benthos wrote {theirs} entities, the writer {mine}"
            );
            Ok(r)
        }
        .await;
        // The run's keys and topic go whatever the peer's outcome.
        if outcome.is_err() {
            common::redis::unlink_prefix(&mut redis, &prefix).await?;
            kafka::delete_topics(&admin, &[&topic]).await?;
        }
        let r = outcome?;
        println!(
            "  [peer]    benthos 4.27 (protobuf to_json, one-entity script per message): {:.0} msg/s at {:.2} cores = {:.0} msg/s per core, peak RSS {}",
            r.rate,
            r.cores,
            r.rate / r.cores.max(0.01),
            r.peak_rss
        );
        println!(
            "  [writer]  {rate:.0} msg/s at {writer_cores:.2} cores = {:.0} msg/s per core; writer / benthos: {:.1}x msg/s, {:.1}x per core",
            rate / writer_cores.max(0.01),
            rate / r.rate,
            (rate / writer_cores.max(0.01)) / (r.rate / r.cores.max(0.01))
        );
    }

    common::redis::unlink_prefix(&mut redis, &prefix).await?;
    kafka::delete_topics(&admin, &[&topic]).await
}

/// The peer's pipeline: the same messages decoded from protobuf and written
/// with the one-entity newest-wins script, one call per message (what a
/// Benthos user would build; its `redis_script` processor calls per message).
fn benthos_pipeline(topic: &str, redis_url: &str, prefix: &str) -> String {
    let script: String = ONE_ENTITY
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    format!(
        r#"{input}    - redis_script:
        url: "{redis_url}"
        keys_mapping: 'root = ["{prefix}" + this.values.index(0).namespace + "/" + this.values.index(0).pkey]'
        args_mapping: 'root = [this.operationId, "0"].concat(this.values.map_each(v -> [v.feature, v.observedAtMicros.string(), v.value.values().index(0).string()]).flatten())'
        script: "{script}"
output:
  drop: {{}}
"#,
        input = peer::kafka_results_input(topic),
    )
}
