//! Metrics and usage writers' throughput beside their ceilings, in one run
//! against the rig (not a test):
//!
//! - `metrics_bus`: METRICS_BUS_WRITER, Kafka → Postgres `metrics`: writer
//!   rows/s beside a raw binary COPY of the same rows into the same table
//!   layout, and the writer's own insert path run directly;
//! - `usage_bus`: USAGE_BUS_WRITER, Kafka → Postgres `usage_events`: the same;
//! - `metrics_writer`: METRICS_WRITER, Kafka → Kafka: writer messages/s beside
//!   an rdkafka produce-only run of the same metrics messages with the same
//!   producer settings, and a consume-only run of the result topic.
//!
//!   hack/rig up kafka postgres && cargo bench --bench metrics_and_usage
//!   BGP_BENCH_CASES=usage_bus BGP_BENCH_MESSAGES=50000 cargo bench --bench metrics_and_usage
//!
//! Writer settings come from the environment as in a pod
//! (`BGP_MAX_BATCH_SIZE=5000 cargo bench ...`).

#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, UsageEvent, Value, value::Kind};
use bgpersist::writer::config::KafkaSettings;
use bgpersist::writer::stores::postgres::rows::{InsertRows, JsonbText};
use bgpersist::writer::types::metrics_bus_writer::{self, MetricRow};
use bgpersist::writer::types::metrics_writer::publish::{Acks, producer_config};
use bgpersist::writer::types::metrics_writer::{self, compute::compute};
use bgpersist::writer::types::usage_bus_writer::{self, UsageRow};
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{rig, unique};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

const PARTITIONS: i32 = 4;
const TS: i64 = 1_763_000_000_000_000;

fn main() -> anyhow::Result<()> {
    bgpersist::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cases = std::env::var("BGP_BENCH_CASES")
        .unwrap_or_else(|_| "metrics_bus,usage_bus,metrics_writer".into());
    let n = |default: u64| {
        std::env::var("BGP_BENCH_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    println!("metrics_and_usage: {}", machine());
    for case in cases.split(',').map(str::trim) {
        match case {
            "metrics_bus" => metrics_bus(n(20_000)).await?,
            "usage_bus" => usage_bus(n(200_000)).await?,
            "metrics_writer" => metrics_writer(n(100_000)).await?,
            other => anyhow::bail!("unknown case {other:?}"),
        }
    }
    Ok(())
}

// ---- data ----

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Result `i`: one entity, five values of mixed kinds (one in ten null).
fn result(i: u64) -> ResultMessage {
    let r = mix(i);
    let at = TS + i as i64 * 100;
    let kinds = [
        ("age", Kind::IntValue((r % 90) as i64)),
        ("score", Kind::DoubleValue((r % 10_000) as f64 / 7.0)),
        ("country", Kind::StringValue(format!("c{}", r % 200))),
        ("vip", Kind::BoolValue(r.is_multiple_of(2))),
        ("visits", Kind::IntValue((r % 100_000) as i64)),
    ];
    ResultMessage {
        operation_id: format!("op-{i}"),
        environment_id: "bench".into(),
        deployment_id: "dep-1".into(),
        produced_at_micros: at,
        values: kinds
            .into_iter()
            .enumerate()
            .map(|(f, (name, kind))| FeatureValue {
                namespace: "user".into(),
                feature: name.into(),
                pkey: (r % 100_000).to_string(),
                value: (!mix(r ^ f as u64).is_multiple_of(10))
                    .then_some(Value { kind: Some(kind) }),
                observed_at_micros: at - (mix(r ^ f as u64) % 1_000_000) as i64,
                ..Default::default()
            })
            .collect(),
    }
}

/// The metrics message METRICS_WRITER makes of result `i` (feature metrics included).
fn metrics_payload(i: u64) -> Vec<u8> {
    let r = result(i);
    compute(&r, r.produced_at_micros + 1_000, false).encode_to_vec()
}

fn usage_payload(i: u64) -> Vec<u8> {
    let r = mix(i);
    UsageEvent {
        event_id: format!("ev-{i}"),
        environment_id: "bench".into(),
        deployment_id: "dep-1".into(),
        kind: "query".into(),
        subject: format!("user.f{}", r % 50),
        quantity: (r % 10_000) as f64 / 100.0,
        unit: "cpu_seconds".into(),
        occurred_at_micros: TS + i as i64,
        attributes: [("region".to_string(), format!("r{}", r % 5))]
            .into_iter()
            .collect(),
    }
    .encode_to_vec()
}

// ---- Kafka ----

fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig("kafka", "BGP_KAFKA_PLAINTEXT"));
    c
}

async fn create_topic(topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka().create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Sends `payloads` with `producer` and waits for every delivery; messages/s.
async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    payloads: &[Vec<u8>],
    keys: bool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("op-{i}");
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(p);
        if keys {
            record = record.key(&key);
        }
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(payloads.len() as f64 / started.elapsed().as_secs_f64())
}

async fn fill(topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    create_topic(topic).await?;
    let producer: FutureProducer = kafka()
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    produce_all(&producer, topic, payloads, true).await?;
    Ok(())
}

/// A fresh group reads `n` messages of `topic`, copying each payload; messages/s.
async fn consume_only(topic: &str, n: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = kafka()
        .set("group.id", unique("bench-consume"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    drop(consumer.recv().await?);
    let started = Instant::now();
    for _ in 1..n {
        let m = consumer.recv().await?;
        std::hint::black_box(m.payload().unwrap_or_default().to_vec());
    }
    Ok((n - 1) as f64 / started.elapsed().as_secs_f64())
}

// ---- Postgres ----

/// A schema of its own, with `table` created by the writer's own DDL.
async fn schema(ddl: &str) -> anyhow::Result<(String, String)> {
    let name = unique("bench").replace('-', "_");
    let (client, conn) =
        tokio_postgres::connect(&rig("postgres", "BGP_POSTGRES_URL"), tokio_postgres::NoTls)
            .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {name}; SET search_path TO {name}; {ddl}"
        ))
        .await?;
    let mut url = url::Url::parse(&rig("postgres", "BGP_POSTGRES_URL"))?;
    url.query_pairs_mut()
        .append_pair("options", &format!("-csearch_path={name}"));
    Ok((name, url.to_string()))
}

async fn drop_schema(name: &str) -> anyhow::Result<()> {
    let (client, conn) =
        tokio_postgres::connect(&rig("postgres", "BGP_POSTGRES_URL"), tokio_postgres::NoTls)
            .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
        .await?;
    Ok(())
}

/// Raw binary COPY of `rows` into `table` of a fresh schema; rows/s.
async fn copy_ceiling<R>(
    ddl: &str,
    copy: &str,
    types: &[Type],
    rows: &[R],
    row: impl Fn(&R) -> Vec<Box<dyn ToSql + Sync + '_>>,
) -> anyhow::Result<f64> {
    let (name, uri) = schema(ddl).await?;
    let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let started = Instant::now();
    let sink = client.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(sink, types);
    futures::pin_mut!(writer);
    for r in rows {
        let values = row(r);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await?;
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    drop_schema(&name).await?;
    Ok(rate)
}

/// The writer's own insert path (`InsertRows`), batch by batch, from one
/// connection; rows/s.
async fn statement_ceiling<R>(ddl: &str, rows: &[R], batch: usize) -> anyhow::Result<f64>
where
    [R]: InsertRows,
{
    let (name, uri) = schema(ddl).await?;
    let pool = bgpersist::writer::stores::postgres::pool(&uri, 1)?;
    let conn = pool.get().await?;
    let started = Instant::now();
    for start in (0..rows.len()).step_by(batch) {
        let end = (start + batch).min(rows.len());
        rows.insert(&conn, start..end).await?;
    }
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    drop_schema(&name).await?;
    Ok(rate)
}

// ---- the writer process ----

struct Running {
    child: Child,
    http_port: u16,
    log: std::path::PathBuf,
}

impl Running {
    fn start(env: &[(&str, String)]) -> anyhow::Result<Running> {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log =
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("bench-writer"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"));
        cmd.env("RUST_LOG", "warn")
            .env("BGP_LOG_FORMAT", "text")
            .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BGP_RESOURCE", "bench")
            .env("BGP_BUS_BACKEND", "KAFKA")
            .env(
                "BGP_KAFKA_BOOTSTRAP_SERVERS",
                rig("kafka", "BGP_KAFKA_PLAINTEXT"),
            )
            .env("BGP_KAFKA_CONSUMER_GROUP", unique("bench-writer"))
            .env("BGP_STORES_DIR", "/nonexistent");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(
                log.with_extension("err"),
            )?))
            .spawn()?;
        Ok(Running {
            child,
            http_port,
            log,
        })
    }

    fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").unwrap_or_default()
    }

    /// Records/s between the first consumed message and `records` written,
    /// the CPU used meanwhile, and the writer's peak RSS.
    async fn measure(&mut self, records: u64) -> anyhow::Result<(f64, Cpu, String)> {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut t0 = None;
        let mut w0 = 0.0;
        let mut cpu0 = Cpu::default();
        let t1 = loop {
            anyhow::ensure!(
                self.child.try_wait()?.is_none(),
                "writer exited; log: {}",
                self.log.display()
            );
            anyhow::ensure!(Instant::now() < deadline, "writer too slow");
            let m = self.metrics();
            let consumed = metric(&m, "bgpersist_writer_messages_consumed_total");
            let written = metric(&m, "bgpersist_writer_records_written_total");
            if t0.is_none() && consumed > 0.0 {
                (t0, w0, cpu0) = (Some(Instant::now()), written, Cpu::now(pid));
            }
            if written >= records as f64 {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let secs = (t1 - t0.unwrap_or(t1)).as_secs_f64();
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        Ok((
            (records as f64 - w0) / secs,
            Cpu::now(pid).since(&cpu0, secs),
            hwm,
        ))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- cases ----

async fn metrics_bus(n: u64) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = (0..n).map(metrics_payload).collect();
    let rows: Vec<MetricRow> = payloads
        .iter()
        .map(|p| metrics_bus_writer::decode(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .flatten()
        .collect();
    println!(
        "metrics_bus: METRICS_BUS_WRITER, {n} metrics messages ({} rows, {:.1} per message), {PARTITIONS} partitions",
        rows.len(),
        rows.len() as f64 / n as f64
    );
    let ddl = metrics_bus_writer::METRICS_TABLE.ddl;
    let copy = copy_ceiling(
        ddl,
        "COPY metrics (idempotency_key, environment_id, name, labels, kind, value, observed_at) FROM STDIN BINARY",
        &[
            Type::BYTEA,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::TEXT,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
        ],
        &rows,
        |r| {
            vec![
                Box::new(&r.idempotency_key[..]),
                Box::new(r.environment_id.as_str()),
                Box::new(r.name.as_str()),
                Box::new(JsonbText(&r.labels_json)),
                Box::new(r.kind.as_str()),
                Box::new(r.value),
                Box::new(r.observed_at),
            ]
        },
    )
    .await?;
    let batch = writer_batch_rows(rows.len(), n);
    let statement = statement_ceiling(ddl, &rows, batch).await?;
    let topic = unique("bench-metrics");
    fill(&topic, &payloads).await?;
    let (name, uri) = schema(ddl).await?;
    let mut w = Running::start(&[
        ("BGP_WRITER_TYPE", "METRICS_BUS_WRITER".into()),
        ("BGP_WRITER_NAME", "metrics-bus".into()),
        ("BGP_SUBSCRIPTION", topic.clone()),
        ("BGP_METRICS_STORE_URI", uri),
    ])?;
    let (rate, cpu, hwm) = w.measure(rows.len() as u64).await?;
    report("rows", copy, statement, batch, rate, cpu, &hwm);
    drop(w);
    drop_schema(&name).await
}

async fn usage_bus(n: u64) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = (0..n).map(usage_payload).collect();
    let rows: Vec<UsageRow> = payloads
        .iter()
        .map(|p| usage_bus_writer::decode(p))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    println!("usage_bus: USAGE_BUS_WRITER, {n} usage events, {PARTITIONS} partitions");
    let ddl = usage_bus_writer::USAGE_TABLE.ddl;
    let copy = copy_ceiling(
        ddl,
        "COPY usage_events (event_id, environment_id, deployment_id, kind, subject, quantity, unit, occurred_at, attributes) FROM STDIN BINARY",
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::FLOAT8,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::JSONB,
        ],
        &rows,
        |r| {
            vec![
                Box::new(r.event_id.as_str()),
                Box::new(r.environment_id.as_str()),
                Box::new(r.deployment_id.as_str()),
                Box::new(r.kind.as_str()),
                Box::new(r.subject.as_str()),
                Box::new(r.quantity),
                Box::new(r.unit.as_str()),
                Box::new(r.occurred_at),
                Box::new(JsonbText(&r.attributes_json)),
            ]
        },
    )
    .await?;
    let batch = writer_batch_rows(rows.len(), n);
    let statement = statement_ceiling(ddl, &rows, batch).await?;
    let topic = unique("bench-usage");
    fill(&topic, &payloads).await?;
    let (name, uri) = schema(ddl).await?;
    let mut w = Running::start(&[
        ("BGP_WRITER_TYPE", "USAGE_BUS_WRITER".into()),
        ("BGP_WRITER_NAME", "usage".into()),
        ("BGP_SUBSCRIPTION", topic.clone()),
        ("BGP_USAGE_STORE_URI", uri),
    ])?;
    let (rate, cpu, hwm) = w.measure(n).await?;
    report("rows", copy, statement, batch, rate, cpu, &hwm);
    drop(w);
    drop_schema(&name).await
}

async fn metrics_writer(n: u64) -> anyhow::Result<()> {
    let results: Vec<Vec<u8>> = (0..n).map(|i| result(i).encode_to_vec()).collect();
    let metrics: Vec<Vec<u8>> = (0..n).map(metrics_payload).collect();
    println!(
        "metrics_writer: METRICS_WRITER, {n} results ({:.0} bytes) → {n} metrics messages ({:.0} bytes), {PARTITIONS} partitions",
        results.iter().map(Vec::len).sum::<usize>() as f64 / n as f64,
        metrics.iter().map(Vec::len).sum::<usize>() as f64 / n as f64,
    );
    // Produce-only with the writer's own producer settings (acks=all, idempotent).
    let ceiling_topic = unique("bench-produce");
    create_topic(&ceiling_topic).await?;
    let settings = KafkaSettings {
        bootstrap_servers: rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ..Default::default()
    };
    let producer: FutureProducer = producer_config(&settings, Acks::All).create()?;
    let produce = produce_all(&producer, &ceiling_topic, &metrics, true).await?;

    let (results_topic, metrics_topic) = (unique("bench-results"), unique("bench-metrics"));
    fill(&results_topic, &results).await?;
    create_topic(&metrics_topic).await?;
    let consume = consume_only(&results_topic, results.len()).await?;
    let mut w = Running::start(&[
        ("BGP_WRITER_TYPE", "METRICS_WRITER".into()),
        ("BGP_WRITER_NAME", "metrics".into()),
        ("BGP_SUBSCRIPTION", results_topic.clone()),
        ("BGP_PUBLISH_TOPIC", metrics_topic.clone()),
    ])?;
    let (rate, cpu, hwm) = w.measure(n).await?;
    // The transformation alone: what one core does per second.
    let started = Instant::now();
    for r in &results {
        let parsed = metrics_writer::parse(r).map_err(anyhow::Error::msg)?;
        std::hint::black_box(metrics_writer::outgoing(&parsed, TS, false));
    }
    let transform = results.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "  [transform] decode + compute + encode, in process, one core:  {transform:>9.0} msg/s"
    );
    println!("  [ceiling] rdkafka produce-only (acks=all, idempotent, lz4): {produce:>9.0} msg/s");
    println!("  [ceiling] rdkafka consume-only of the results:            {consume:>9.0} msg/s");
    println!(
        "  [writer]  {rate:>9.0} msg/s = {:.0}% of produce-only; peak RSS {hwm}\n  [cpu]     {cpu}",
        100.0 * rate / produce
    );
    Ok(())
}

/// Rows per writer batch at the default batch size (1000 messages).
fn writer_batch_rows(rows: usize, messages: u64) -> usize {
    let per_message = rows as f64 / messages as f64;
    let batch = std::env::var("BGP_MAX_BATCH_SIZE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1000.0);
    (batch * per_message).round().max(1.0) as usize
}

fn report(unit: &str, copy: f64, statement: f64, batch: usize, rate: f64, cpu: Cpu, hwm: &str) {
    println!("  [ceiling] raw binary COPY, one stream:           {copy:>9.0} {unit}/s");
    println!(
        "  [ceiling] the writer's insert path, one connection, {batch} {unit} a batch: {statement:>9.0} {unit}/s"
    );
    println!(
        "  [writer]  {rate:>9.0} {unit}/s = {:.0}% of COPY, {:.0}% of its insert path; peak RSS {hwm}\n  [cpu]     {cpu}",
        100.0 * rate / copy,
        100.0 * rate / statement
    );
}

// ---- small helpers ----

/// CPU seconds used so far by the writer, the rig's Postgres (postmaster
/// and its backends), the rig's Kafka broker, and the whole machine (busy,
/// total); or, from [`Cpu::since`], cores used on average.
#[derive(Default, Debug)]
struct Cpu {
    writer: f64,
    postgres: f64,
    kafka: f64,
    busy: f64,
    total: f64,
}

impl Cpu {
    fn now(writer: u32) -> Cpu {
        let rig = std::env::var_os("BGP_RIG_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".rig"));
        let pid_in = |file: &str| -> u32 {
            std::fs::read_to_string(rig.join(file))
                .unwrap_or_default()
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0)
        };
        let postmaster = pid_in("postgres/postmaster.pid");
        let mut postgres = process_cpu(postmaster);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if postmaster != 0 && parent(pid) == Some(postmaster) {
                postgres += process_cpu(pid);
            }
        }
        let (busy, total) = machine_cpu();
        Cpu {
            writer: process_cpu(writer),
            postgres,
            kafka: process_cpu(pid_in("pids/kafka.pid")),
            busy,
            total,
        }
    }

    fn since(&self, before: &Cpu, secs: f64) -> Cpu {
        Cpu {
            writer: (self.writer - before.writer) / secs,
            postgres: (self.postgres - before.postgres) / secs,
            kafka: (self.kafka - before.kafka) / secs,
            busy: self.busy - before.busy,
            total: self.total - before.total,
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writer {:.2} cores, postgres {:.2}, kafka {:.2}; machine {:.0}% busy",
            self.writer,
            self.postgres,
            self.kafka,
            100.0 * self.busy / self.total.max(f64::EPSILON)
        )
    }
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
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

/// CPU seconds (user + system) a process has used so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({model}), {date}")
}
