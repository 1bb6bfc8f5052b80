//! Kafka → Postgres OFFLINE_WRITER throughput (not a test), against the rig,
//! all in one run:
//!
//! 1. the ceiling: a raw binary COPY of the same rows straight into tables of
//!    the same layout (primary key on `observation_id`), from memory, one
//!    COPY per table in one transaction; and the same COPY cut into the
//!    writer's batch size, one transaction per batch;
//! 2. the release writer binary on the same rows from Kafka: rows/s from its
//!    `/metrics` between the first consumed message and the last one written,
//!    peak RSS, CPU; and the ratio writer / raw COPY;
//! 3. a peer, Benthos 4.27, on the same topic into tables of the same layout:
//!    protobuf decode, one message per value, a batched `sql_insert` per
//!    table; rows/s, rows/s per core and peak RSS beside the writer's
//!    (`BGP_BENCH_PEERS=0` skips it).
//!
//!   hack/rig up kafka postgres && cargo bench --bench kafka_to_postgres
//!   BGP_BENCH_MESSAGES=50000 cargo bench --bench kafka_to_postgres
//!   BGP_BENCH_MESSAGES=5000 BGP_BENCH_VALUE_BYTES=50000 cargo bench --bench kafka_to_postgres
//!     (large messages: every `country` value padded to 50 KB)
//!
//! Writer settings come from the environment like in a pod (defaults
//! otherwise), e.g. `BGP_MAX_BATCH_SIZE=5000 cargo bench --bench kafka_to_postgres`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use arrow_schema::Schema;
use bgpersist::formats::v1::value::Kind;
use bgpersist::writer::stores::offline::postgres::{sql, types};
use bgpersist::writer::types::offline_writer;
use common::data::{FEATURES, mean_size, offline_payload as payload, user_values};
use common::kafka::{self, PARTITIONS};
use common::peer::{self, Benthos};
use common::process::{CONSUMED, Cpu, WRITTEN, WriterProcess, metric};
use common::report::{self, machine};
use common::{env_or, postgres};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::unique;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

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
        for (f, v) in user_values(i).enumerate() {
            let Some(kind) = v.value.and_then(|v| v.kind) else {
                continue;
            };
            let value: Box<dyn ToSql + Sync + Send> = match kind {
                Kind::IntValue(v) => Box::new(v),
                Kind::DoubleValue(v) => Box::new(v),
                Kind::StringValue(v) => Box::new(v),
                Kind::BoolValue(v) => Box::new(v),
                Kind::JsonValue(v) => Box::new(v),
            };
            let table = offline_writer::feature_table("user", &v.feature);
            if let Some(t) = tables.iter_mut().find(|t| t.table == table) {
                t.rows.push(Row {
                    observation_id: format!("{i}-{f}"),
                    pkey: v.pkey,
                    value,
                    observed_at: UNIX_EPOCH + Duration::from_micros(v.observed_at_micros as u64),
                    resolver_fqn: v.resolver_fqn,
                });
            }
        }
    }
    Ok((ddl, tables))
}

async fn connect(search_path: &str) -> anyhow::Result<tokio_postgres::Client> {
    postgres::connect(&format!(
        "{}?options=-csearch_path%3D{search_path}",
        postgres::url()
    ))
    .await
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

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n: u64 = env_or("BGP_BENCH_MESSAGES", 100_000);
    let batch: usize = env_or("BGP_MAX_BATCH_SIZE", 1000);
    let rows = n * FEATURES.len() as u64;
    println!(
        "kafka_to_postgres: {n} messages x {} values = {rows} rows into {} feature tables, {PARTITIONS} partitions",
        FEATURES.len(),
        FEATURES.len()
    );
    println!("  machine: {}", machine());
    let run = unique("bench").replace('-', "_");
    let admin = postgres::connect(&postgres::url()).await?;
    let schemas = [
        format!("{run}_raw"),
        format!("{run}_raw_batched"),
        format!("{run}_writer"),
    ];
    for s in &schemas {
        admin.batch_execute(&format!("CREATE SCHEMA {s}")).await?;
    }

    let topic = unique("bench-offline");
    let kafka_admin = kafka::admin()?;
    kafka::create_topic(&kafka_admin, &topic).await?;
    let producer = kafka::producer(&[("queue.buffering.max.messages", "500000")])?;
    let messages = (0..n).map(|i| (i.to_string(), payload(i)));
    let produced = kafka::produce(&producer, &topic, messages, 0, kafka::BACKOFF).await?;
    let avg = mean_size(payload);
    println!(
        "  produced at {:.0} msg/s; payload {avg:.0} bytes on average",
        produced.rate()
    );

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
    let store = format!(
        "{}?sslmode=disable&options=-csearch_path%3D{}",
        postgres::url(),
        schemas[2]
    );
    let env = kafka::writer_env(
        "OFFLINE_WRITER",
        "offline",
        &topic,
        [("BGP_OFFLINE_STORE_URI", store)],
    );
    let mut writer = WriterProcess::start(&run, &env)?;
    let written = |m: &str| metric(m, WRITTEN);
    let cpu = async |pid| Ok(Cpu::now(pid));
    let measured = writer
        .measure(Duration::from_secs(900), written, n as f64, cpu)
        .await?;
    let m = writer.try_metrics()?;
    let secs = measured.secs;
    // Rows of the messages consumed after the clock started.
    let rate = (n as f64 - metric(&measured.start, CONSUMED)) * FEATURES.len() as f64 / secs;
    let hwm = writer.peak_rss()?;
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
    report::batches(&m, n as f64, secs);
    println!(
        "  [cpu]     writer {:.2} cores, {}",
        (measured.after.process - measured.before.process) / secs,
        report::whole_machine(&measured.before, &measured.after, secs)
    );
    println!(
        "  writer / raw COPY (one transaction): {:.0}%",
        100.0 * rate / raw
    );
    println!(
        "  writer / raw COPY (one transaction per {batch} msgs): {:.0}%",
        100.0 * rate / raw_batched
    );

    writer.stop();

    // 3. A peer on the same topic into tables of the same layout.
    if env_or("BGP_BENCH_PEERS", 1) == 1
        && let Some(benthos) = peer::benthos()
    {
        let peer_schema = format!("{run}_peer");
        admin
            .batch_execute(&format!("CREATE SCHEMA {peer_schema}"))
            .await?;
        let outcome = run_peer(&benthos, &run, &topic, &peer_schema, &ddl, n).await;
        postgres::drop_schema(&admin, &peer_schema).await?;
        // The run's schemas and topic go whatever the peer's outcome.
        if outcome.is_err() {
            for s in &schemas {
                postgres::drop_schema(&admin, s).await?;
            }
            kafka::delete_topics(&kafka_admin, &[&topic]).await?;
        }
        let r = outcome?;
        let writer_cores = (measured.after.process - measured.before.process) / secs;
        let peer_rows = r.rate * FEATURES.len() as f64;
        println!(
            "  [peer]    benthos 4.27 (protobuf to_json, a row per value, sql_insert batches of {batch}): {peer_rows:.0} rows/s at {:.2} cores = {:.0} rows/s per core, peak RSS {}",
            r.cores,
            peer_rows / r.cores.max(0.01),
            r.peak_rss
        );
        println!(
            "  [writer]  {rate:.0} rows/s at {writer_cores:.2} cores = {:.0} rows/s per core; writer / benthos: {:.1}x rows/s, {:.1}x per core",
            rate / writer_cores.max(0.01),
            rate / peer_rows,
            (rate / writer_cores.max(0.01)) / (peer_rows / r.cores.max(0.01))
        );
    }

    for s in &schemas {
        postgres::drop_schema(&admin, s).await?;
    }
    kafka::delete_topics(&kafka_admin, &[&topic]).await
}

/// Benthos on every message of `topic` into `schema` (tables made with
/// `ddl`, the writer's own), checked by count afterwards.
async fn run_peer(
    benthos: &std::path::PathBuf,
    run: &str,
    topic: &str,
    schema: &str,
    ddl: &[String],
    n: u64,
) -> anyhow::Result<peer::PeerRun> {
    let client = connect(schema).await?;
    for d in ddl {
        client.batch_execute(d).await?;
    }
    let dsn = format!("{}?sslmode=disable&search_path={schema}", postgres::url());
    let batch: usize = env_or("BGP_MAX_BATCH_SIZE", 1000);
    let pipeline = benthos_pipeline(topic, &dsn, batch);
    let mut p = Benthos::start(benthos, &format!("{run}-peer"), &pipeline)?;
    // Benthos counts a message sent once each of its rows is inserted.
    let r = p
        .measure(
            (n * FEATURES.len() as u64) as f64,
            Duration::from_secs(1800),
        )
        .await?;
    drop(p);
    let mut stored = 0i64;
    for f in FEATURES {
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM user__{f}"), &[])
            .await?
            .try_get(0)?;
        stored += count;
    }
    anyhow::ensure!(
        stored == (n * FEATURES.len() as u64) as i64,
        "benthos stored {stored} rows"
    );
    Ok(r)
}

/// The peer's pipeline: decode, one message per value, then per feature
/// table a `sql_insert` of the same columns the writer fills, batched like
/// the writer's default batch.
fn benthos_pipeline(topic: &str, dsn: &str, batch: usize) -> String {
    let cases: String = FEATURES
        .iter()
        .map(|f| {
            format!(
                r#"      - check: this.feature == "{f}"
        output:
          sql_insert:
            driver: postgres
            dsn: "{dsn}"
            table: user__{f}
            columns: [observation_id, pkey, value, observed_at, resolver_fqn, deployment_id]
            args_mapping: 'root = [this.observationId, this.pkey, this.value.values().index(0).string(), (this.observedAtMicros.number() / 1000000).ts_format("2006-01-02T15:04:05.999999Z07:00", "UTC"), this.resolverFqn, this.deploymentId]'
            max_in_flight: 4
            batching:
              count: {batch}
              period: 100ms
"#
            )
        })
        .collect();
    format!(
        r#"{input}    - mapping: 'root = this.values.map_each(v -> v.merge({{"deploymentId": this.deploymentId}}))'
    - unarchive:
        format: json_array
output:
  switch:
    cases:
{cases}"#,
        input = peer::kafka_results_input(topic),
    )
}
