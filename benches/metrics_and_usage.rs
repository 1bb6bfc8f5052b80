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

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, UsageEvent, Value};
use bgpersist::writer::config::KafkaSettings;
use bgpersist::writer::stores::postgres::rows::{InsertRows, JsonbText};
use bgpersist::writer::types::metrics_bus_writer::{self, MetricRow};
use bgpersist::writer::types::metrics_writer::publish::{Acks, producer_config};
use bgpersist::writer::types::metrics_writer::{self, compute::compute};
use bgpersist::writer::types::usage_bus_writer::{self, UsageRow};
use common::data::{mix, user_kinds};
use common::kafka::{self, PARTITIONS};
use common::process::{WRITTEN, WriterProcess, machine_cpu, metric, process_cpu};
use common::report::Machine;
use common::{env_or, postgres};
use rdkafka::producer::FutureProducer;
use std::time::{Duration, Instant};
use support::unique;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

const TS: i64 = 1_763_000_000_000_000;
/// The produce-only ceiling's wait when the producer's queue is full.
const BACKOFF: Duration = Duration::from_millis(1);

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cases = std::env::var("BGP_BENCH_CASES")
        .unwrap_or_else(|_| "metrics_bus,usage_bus,metrics_writer".into());
    let n = |default: u64| env_or("BGP_BENCH_MESSAGES", default);
    let m = Machine::now();
    println!(
        "metrics_and_usage: {} cores ({}), {}",
        m.cores, m.model, m.date
    );
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

/// Result `i`: one entity, five values of mixed kinds (one in ten null).
fn result(i: u64) -> ResultMessage {
    let r = mix(i);
    let at = TS + i as i64 * 100;
    ResultMessage {
        operation_id: format!("op-{i}"),
        environment_id: "bench".into(),
        deployment_id: "dep-1".into(),
        produced_at_micros: at,
        values: user_kinds(r)
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

/// Sends `payloads` keyed `op-<index>` with `producer`, waiting for every
/// delivery; messages/s.
async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<f64> {
    let messages = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("op-{i}"), p));
    Ok(kafka::produce(producer, topic, messages, 0, BACKOFF)
        .await?
        .rate())
}

async fn fill(topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    kafka::create_topic(&kafka::admin()?, topic).await?;
    let producer = kafka::producer(&[("queue.buffering.max.messages", "1000000")])?;
    produce_all(&producer, topic, payloads).await?;
    Ok(())
}

// ---- Postgres ----

/// A schema of its own, with `table` created by the writer's own DDL.
async fn schema(ddl: &str) -> anyhow::Result<(String, String)> {
    let name = unique("bench").replace('-', "_");
    postgres::connect(&postgres::url())
        .await?
        .batch_execute(&format!(
            "CREATE SCHEMA {name}; SET search_path TO {name}; {ddl}"
        ))
        .await?;
    let mut url = url::Url::parse(&postgres::url())?;
    url.query_pairs_mut()
        .append_pair("options", &format!("-csearch_path={name}"));
    Ok((name, url.to_string()))
}

async fn drop_schema(name: &str) -> anyhow::Result<()> {
    postgres::drop_schema(&postgres::connect(&postgres::url()).await?, name).await
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
    let client = postgres::connect(&uri).await?;
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

/// Writer `name` of `writer_type` on `topic`, its stderr kept out of the report.
fn start(
    writer_type: &str,
    name: &str,
    topic: &str,
    store: (&str, String),
) -> anyhow::Result<WriterProcess> {
    let env = kafka::writer_env(writer_type, name, topic, [store]);
    WriterProcess::start_quiet(&unique("bench-writer"), &env)
}

/// Records/s between the first consumed message and `records` written,
/// the CPU used meanwhile, and the writer's peak RSS.
async fn measure(w: &mut WriterProcess, records: u64) -> anyhow::Result<(f64, Cpu, String)> {
    let written = |m: &str| metric(m, WRITTEN);
    let cpu = async |pid| Ok(Cpu::now(pid));
    let run = w
        .measure(Duration::from_secs(900), written, records as f64, cpu)
        .await?;
    Ok((
        (records as f64 - written(&run.start)) / run.secs,
        run.after.since(&run.before, run.secs),
        w.peak_rss()?,
    ))
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
    let mut w = start(
        "METRICS_BUS_WRITER",
        "metrics-bus",
        &topic,
        ("BGP_METRICS_STORE_URI", uri),
    )?;
    let (rate, cpu, hwm) = measure(&mut w, rows.len() as u64).await?;
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
    let mut w = start(
        "USAGE_BUS_WRITER",
        "usage",
        &topic,
        ("BGP_USAGE_STORE_URI", uri),
    )?;
    let (rate, cpu, hwm) = measure(&mut w, n).await?;
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
    let admin = kafka::admin()?;
    kafka::create_topic(&admin, &ceiling_topic).await?;
    let settings = KafkaSettings {
        bootstrap_servers: kafka::bootstrap(),
        ..Default::default()
    };
    let producer: FutureProducer = producer_config(&settings, Acks::All).create()?;
    let produce = produce_all(&producer, &ceiling_topic, &metrics).await?;

    let (results_topic, metrics_topic) = (unique("bench-results"), unique("bench-metrics"));
    fill(&results_topic, &results).await?;
    kafka::create_topic(&admin, &metrics_topic).await?;
    let (consume, _) = kafka::consume_only(&results_topic, n).await?;
    let mut w = start(
        "METRICS_WRITER",
        "metrics",
        &results_topic,
        ("BGP_PUBLISH_TOPIC", metrics_topic.clone()),
    )?;
    let (rate, cpu, hwm) = measure(&mut w, n).await?;
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
    let batch: f64 = env_or("BGP_MAX_BATCH_SIZE", 1000.0);
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
