//! Kafka → Postgres OFFLINE_WRITER throughput (not a test), against the rig,
//! all in one run:
//!
//! 1. the ceiling: a raw binary COPY of the same rows straight into tables of
//!    the same layout (primary key on `observation_id`), from memory, one
//!    COPY per table in one transaction; and the same COPY cut into the
//!    writer's batch size, one transaction per batch;
//! 2. the release writer binary on the same rows from Kafka: rows/s from its
//!    `/metrics` between the first consumed message and the last one written,
//!    peak RSS, CPU; and the ratio writer / raw COPY.
//!
//!   hack/rig up kafka postgres && cargo bench --bench kafka_to_postgres
//!   BGP_BENCH_MESSAGES=50000 cargo bench --bench kafka_to_postgres
//!
//! Writer settings come from the environment like in a pod (defaults
//! otherwise), e.g. `BGP_MAX_BATCH_SIZE=5000 cargo bench --bench kafka_to_postgres`.

#[path = "../tests/support/mod.rs"]
mod support;

use arrow_schema::Schema;
use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use bgpersist::writer::stores::offline::postgres::{sql, types};
use bgpersist::writer::types::offline_writer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{rig, unique};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

const PARTITIONS: i32 = 4;
const ENTITIES: u64 = 100_000;
const FEATURES: [&str; 5] = ["age", "score", "country", "vip", "visits"];
const TS_BASE: i64 = 1_700_000_000_000_000;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Feature `f` of message `i`: (pkey, value, observed at).
fn value(i: u64, f: usize) -> (String, Kind, i64) {
    let r = mix(i);
    let kind = match f {
        0 => Kind::IntValue((r % 90) as i64),
        1 => Kind::DoubleValue((r % 10_000) as f64 / 7.0),
        2 => Kind::StringValue(format!("c{}", r % 200)),
        3 => Kind::BoolValue(r.is_multiple_of(2)),
        _ => Kind::IntValue((r % 100_000) as i64),
    };
    (
        (r % ENTITIES).to_string(),
        kind,
        TS_BASE + (mix(r ^ f as u64) % 1_000_000) as i64,
    )
}

/// Message `i`: one entity, five values of mixed kinds, each with its own
/// observation id.
fn payload(i: u64) -> Vec<u8> {
    let values = FEATURES
        .iter()
        .enumerate()
        .map(|(f, name)| {
            let (pkey, kind, ts) = value(i, f);
            FeatureValue {
                namespace: "user".into(),
                feature: (*name).into(),
                pkey,
                value: Some(Value { kind: Some(kind) }),
                observed_at_micros: ts,
                resolver_fqn: format!("user.{name}"),
                observation_id: format!("{i}-{f}"),
                ..Default::default()
            }
        })
        .collect();
    ResultMessage {
        operation_id: format!("op-{i}"),
        deployment_id: "bench".into(),
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

async fn produce(topic: &str, n: u64) -> anyhow::Result<f64> {
    let producer: FutureProducer = kafka()
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
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
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One feature table's rows, prepared in memory for the raw COPY.
struct TableData {
    table: String,
    copy: String,
    types: Vec<Type>,
    rows: Vec<Row>,
}

struct Row {
    observation_id: String,
    pkey: String,
    value: Box<dyn ToSql + Sync + Send>,
    observed_at: SystemTime,
    resolver_fqn: String,
}

/// The tables' DDL exactly as the writer creates them, and the rows.
fn prepare(n: u64) -> anyhow::Result<(Vec<String>, Vec<TableData>)> {
    let sample = offline_writer::decode(&payload(0)).map_err(anyhow::Error::msg)?;
    let loads = offline_writer::loads(&sample).map_err(anyhow::Error::msg)?;
    let mut ddl = Vec::new();
    let mut tables = Vec::new();
    for load in &loads {
        let schema: &Schema = load.rows.batch.schema_ref();
        let plans: Vec<types::ColumnPlan> = schema
            .fields()
            .iter()
            .filter_map(|f| types::plan(f).ok().flatten())
            .collect();
        ddl.push(sql::create_table(&load.rows.table, &plans));
        let columns = [
            "observation_id",
            "pkey",
            "value",
            "observed_at",
            "resolver_fqn",
            "deployment_id",
        ];
        tables.push(TableData {
            table: load.rows.table.clone(),
            copy: format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                sql::quote(&load.rows.table),
                columns.map(sql::quote).join(", ")
            ),
            types: columns
                .iter()
                .filter_map(|c| plans.iter().find(|p| p.name == *c).map(|p| p.wire.clone()))
                .collect(),
            rows: Vec::with_capacity(n as usize),
        });
    }
    for i in 0..n {
        for (f, name) in FEATURES.iter().enumerate() {
            let (pkey, kind, ts) = value(i, f);
            let value: Box<dyn ToSql + Sync + Send> = match kind {
                Kind::IntValue(v) => Box::new(v),
                Kind::DoubleValue(v) => Box::new(v),
                Kind::StringValue(v) => Box::new(v),
                Kind::BoolValue(v) => Box::new(v),
                Kind::JsonValue(v) => Box::new(v),
            };
            let table = offline_writer::feature_table("user", name);
            if let Some(t) = tables.iter_mut().find(|t| t.table == table) {
                t.rows.push(Row {
                    observation_id: format!("{i}-{f}"),
                    pkey,
                    value,
                    observed_at: UNIX_EPOCH + Duration::from_micros(ts as u64),
                    resolver_fqn: format!("user.{name}"),
                });
            }
        }
    }
    Ok((ddl, tables))
}

async fn connect(search_path: &str) -> anyhow::Result<tokio_postgres::Client> {
    let uri = format!(
        "{}?options=-csearch_path%3D{search_path}",
        rig("postgres", "BGP_POSTGRES_URL")
    );
    let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Raw binary COPY of every table's rows, `chunk` messages per transaction;
/// returns rows/s.
async fn raw_copy(
    schema: &str,
    ddl: &[String],
    tables: &[TableData],
    chunk: usize,
) -> anyhow::Result<f64> {
    let mut client = connect(schema).await?;
    for d in ddl {
        client.batch_execute(d).await?;
    }
    let total: usize = tables.iter().map(|t| t.rows.len()).sum();
    let per_table = tables.first().map_or(0, |t| t.rows.len());
    let started = Instant::now();
    let mut from = 0;
    while from < per_table {
        let to = (from + chunk).min(per_table);
        let tx = client.transaction().await?;
        for t in tables {
            let sink = tx.copy_in(&t.copy).await?;
            let writer = BinaryCopyInWriter::new(sink, &t.types);
            let mut writer = std::pin::pin!(writer);
            for r in &t.rows[from..to] {
                writer
                    .as_mut()
                    .write(&[
                        &r.observation_id,
                        &r.pkey,
                        &*r.value,
                        &r.observed_at,
                        &r.resolver_fqn,
                        &"bench",
                    ])
                    .await?;
            }
            writer.as_mut().finish().await?;
        }
        tx.commit().await?;
        from = to;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
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

fn main() -> anyhow::Result<()> {
    bgpersist::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n: u64 = std::env::var("BGP_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let batch: usize = std::env::var("BGP_MAX_BATCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rows = n * FEATURES.len() as u64;
    println!(
        "kafka_to_postgres: {n} messages x {} values = {rows} rows into {} feature tables, {PARTITIONS} partitions",
        FEATURES.len(),
        FEATURES.len()
    );
    println!("  machine: {}", machine());
    let run = unique("bench").replace('-', "_");
    let admin = rig("postgres", "BGP_POSTGRES_URL");
    let (admin, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let schemas = [
        format!("{run}_raw"),
        format!("{run}_raw_batched"),
        format!("{run}_writer"),
    ];
    for s in &schemas {
        admin.batch_execute(&format!("CREATE SCHEMA {s}")).await?;
    }

    let topic = unique("bench-offline");
    let kafka_admin: AdminClient<DefaultClientContext> = kafka().create()?;
    for r in kafka_admin
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
    let produced = produce(&topic, n).await?;
    let avg = (0..1000).map(|i| payload(i).len()).sum::<usize>() as f64 / 1000.0;
    println!("  produced at {produced:.0} msg/s; payload {avg:.0} bytes on average");

    // 1. The ceiling: raw COPY of the same rows.
    let (ddl, tables) = prepare(n)?;
    let raw = raw_copy(&schemas[0], &ddl, &tables, n as usize).await?;
    println!("  [ceiling] raw binary COPY, one transaction:            {raw:>9.0} rows/s");
    let raw_batched = raw_copy(&schemas[1], &ddl, &tables, batch).await?;
    println!(
        "  [ceiling] raw binary COPY, one transaction per {batch} msgs: {raw_batched:>9.0} rows/s"
    );
    drop(tables);

    // 2. The writer.
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{run}.log"));
    let store = format!(
        "{}?sslmode=disable&options=-csearch_path%3D{}",
        rig("postgres", "BGP_POSTGRES_URL"),
        schemas[2]
    );
    let mut writer = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"))
        .env("RUST_LOG", "warn")
        .env("BGP_LOG_FORMAT", "text")
        .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("BGP_WRITER_TYPE", "OFFLINE_WRITER")
        .env("BGP_WRITER_NAME", "offline")
        .env("BGP_RESOURCE", "bench")
        .env("BGP_BUS_BACKEND", "KAFKA")
        .env("BGP_SUBSCRIPTION", &topic)
        .env(
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        )
        .env("BGP_KAFKA_CONSUMER_GROUP", unique("bench-writer"))
        .env("BGP_OFFLINE_STORE_URI", &store)
        .env("BGP_STORES_DIR", "/nonexistent")
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = writer.id();
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut t0, mut c0, mut cpu0, mut machine0) = (None, 0.0, 0.0, (0.0, 0.0));
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
        }
        if written >= n as f64 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let m = http_get(http_port, "/metrics")?;
    let batches = metric(&m, "bgpersist_writer_batch_duration_seconds_count");
    let in_batches = metric(&m, "bgpersist_writer_batch_duration_seconds_sum");
    let writer_cpu = process_cpu(pid) - cpu0;
    let machine1 = machine_cpu();
    let secs = (t1 - t0.unwrap_or(t1)).as_secs_f64();
    // Rows of the messages consumed after the clock started.
    let rate = (n as f64 - c0) * FEATURES.len() as f64 / secs;
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        .unwrap_or_default();
    let stored: i64 = admin
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {0}.user__age) + (SELECT count(*) FROM {0}.user__score) \
                 + (SELECT count(*) FROM {0}.user__country) + (SELECT count(*) FROM {0}.user__vip) \
                 + (SELECT count(*) FROM {0}.user__visits)",
                schemas[2]
            ),
            &[],
        )
        .await?
        .try_get(0)?;
    anyhow::ensure!(
        stored == rows as i64,
        "writer stored {stored} rows, expected {rows}"
    );
    println!(
        "  [writer]  {rate:>9.0} rows/s ({:.0} msg/s, {:.1} MB/s)  peak RSS {hwm}",
        rate / FEATURES.len() as f64,
        rate / FEATURES.len() as f64 * avg / 1e6
    );
    println!(
        "  [batches] {batches} of {:.0} messages on average, {:.1} ms each in decode + write + commit; {:.0}% of the time",
        n as f64 / batches.max(1.0),
        1000.0 * in_batches / batches.max(1.0),
        100.0 * in_batches / secs
    );
    println!(
        "  [cpu]     writer {:.2} cores, whole machine {:.0}% busy ({:.1} of {} cores)",
        writer_cpu / secs,
        100.0 * (machine1.0 - machine0.0) / (machine1.1 - machine0.1),
        (machine1.0 - machine0.0) / secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  writer / raw COPY (one transaction): {:.0}%",
        100.0 * rate / raw
    );
    println!(
        "  writer / raw COPY (one transaction per {batch} msgs): {:.0}%",
        100.0 * rate / raw_batched
    );

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = writer.wait();
    for s in &schemas {
        admin
            .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
            .await?;
    }
    kafka_admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await?;
    Ok(())
}
