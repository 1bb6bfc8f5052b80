//! S3 → Postgres OFFLINE_STORE_BULK_INSERT_WRITER on one large parquet object
//! (not a test), against the rig, all in one run:
//!
//! 1. the object: rows generated here, written as parquet straight into the
//!    rig's S3 (moto) by multipart upload, `BGP_BENCH_OBJECT_MIB` MiB
//!    (default 512), row groups of `BGP_BENCH_ROW_GROUP_ROWS` rows (default
//!    1 048 576, arrow-rs' default);
//! 2. the ceiling: a raw binary COPY of the same rows, generated in memory
//!    as they go, into a table of the same layout, one transaction;
//! 3. the release writer binary on one `BulkInsertMessage` naming the object:
//!    rows/s from its first consumed message until the message is written,
//!    peak RSS, CPU; and the ratio writer / raw COPY.
//!
//!   hack/rig up kafka postgres moto && cargo bench --bench bulk_insert
//!   BGP_BENCH_OBJECT_MIB=2048 BGP_BENCH_S3=s3s-fs cargo bench --bench bulk_insert
//!
//! `BGP_BENCH_S3=s3s-fs` reads the object from s3s-fs instead of moto
//! (see `common::s3`: moto's ranged GETs slow down with the object's size).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use bgpersist::formats::v1::BulkInsertMessage;
use bgpersist::writer::stores::offline::postgres::{sql, types};
use common::kafka;
use common::process::{CONSUMED, Cpu, WRITTEN, WriterProcess, metric};
use common::report::{self, machine};
use common::{env_or, postgres};
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::unique;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// Rows generated per step (one Arrow batch, one COPY chunk).
const STEP: u64 = 65_536;
const TABLE: &str = "bulk_events";

/// Row `i`: an observation id, a key, a value, a time and a note that
/// compresses about as well as real text (a hex digest-like string).
struct Row {
    observation_id: String,
    pkey: String,
    value: f64,
    observed_at: SystemTime,
    note: String,
}

fn row(i: u64) -> Row {
    let h = common::data::mix(i);
    Row {
        observation_id: format!("obs-{i}"),
        pkey: format!("user-{}", h % 100_000),
        value: (h % 10_000) as f64 / 7.0,
        observed_at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + i),
        note: format!("{:016x}{:016x}", h, common::data::mix(h)),
    }
}

fn batch(from: u64, to: u64) -> anyhow::Result<RecordBatch> {
    let rows: Vec<Row> = (from..to).map(row).collect();
    let micros = |t: &SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    };
    Ok(RecordBatch::try_from_iter([
        (
            "observation_id",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.observation_id.as_str()),
            )) as ArrayRef,
        ),
        (
            "pkey",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.pkey.as_str()),
            )),
        ),
        (
            "value",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        ),
        (
            "observed_at",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| micros(&r.observed_at)),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "note",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.note.as_str()),
            )),
        ),
    ])?)
}

/// Writes rows until the object reaches `mib` MiB; returns the row count.
async fn write_object(
    store: Arc<AmazonS3>,
    path: &Path,
    mib: u64,
    row_group: usize,
) -> anyhow::Result<u64> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let sink = BufWriter::new(store, path.clone());
    let mut writer = AsyncArrowWriter::try_new(sink, batch(0, 1)?.schema(), Some(props))?;
    let mut n = 0;
    while writer.bytes_written() as u64 + writer.in_progress_size() as u64 <= mib << 20 {
        writer.write(&batch(n, n + STEP)?).await?;
        n += STEP;
    }
    writer.close().await?;
    Ok(n)
}

/// Plans of the object's columns, exactly as the writer plans them.
fn plans() -> anyhow::Result<Vec<types::ColumnPlan>> {
    let b = batch(0, 1)?;
    Ok(b.schema()
        .fields()
        .iter()
        .filter_map(|f| types::plan(f).ok().flatten())
        .collect())
}

/// Raw binary COPY of rows `0..n`, generated as they go; returns rows/s.
async fn raw_copy(schema: &str, n: u64) -> anyhow::Result<f64> {
    let mut client = postgres::connect(&format!(
        "{}?options=-csearch_path%3D{schema}",
        postgres::url()
    ))
    .await?;
    let plans = plans()?;
    client
        .batch_execute(&sql::create_table(TABLE, &plans))
        .await?;
    let columns = ["observation_id", "pkey", "value", "observed_at", "note"];
    let copy = format!(
        "COPY {TABLE} ({}) FROM STDIN (FORMAT binary)",
        columns.map(sql::quote).join(", ")
    );
    let wire = [
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::TIMESTAMPTZ,
        Type::TEXT,
    ];
    let started = Instant::now();
    let tx = client.transaction().await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &wire);
    let mut writer = std::pin::pin!(writer);
    let mut i = 0;
    while i < n {
        let rows: Vec<Row> = (i..(i + STEP).min(n)).map(row).collect();
        for r in &rows {
            writer
                .as_mut()
                .write(&[
                    &r.observation_id,
                    &r.pkey,
                    &r.value,
                    &r.observed_at,
                    &r.note,
                ])
                .await?;
        }
        i += STEP;
    }
    writer.as_mut().finish().await?;
    tx.commit().await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mib: u64 = env_or("BGP_BENCH_OBJECT_MIB", 512);
    let row_group: usize = env_or("BGP_BENCH_ROW_GROUP_ROWS", 1 << 20);
    println!("bulk_insert: one parquet object of {mib} MiB, row groups of {row_group} rows");
    println!("  machine: {}", machine());
    let run = unique("bench").replace('-', "_");
    let s3 = common::s3::bucket("bulk").await?;
    println!("  S3 server: {}", s3.server);
    let store = Arc::new(s3.store.clone());
    let path = Path::from("day=1/events.parquet");
    let started = Instant::now();
    let n = write_object(store.clone(), &path, mib, row_group).await?;
    let size = store.head(&path).await?.size;
    println!(
        "  object: {n} rows, {:.0} MiB, written in {:.1} s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    let admin = postgres::connect(&postgres::url()).await?;
    let schemas = [format!("{run}_raw"), format!("{run}_writer")];
    for s in &schemas {
        admin.batch_execute(&format!("CREATE SCHEMA {s}")).await?;
    }
    let result = measure(&run, &schemas, &s3, &path, n).await;
    for s in &schemas {
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .await?;
    }
    store.delete(&path).await?;
    result
}

/// One plain GET of the whole object, bytes counted and dropped: what the
/// object store serves at most; returns bytes/s.
async fn s3_read(store: &AmazonS3, path: &Path) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut body = store.get(path).await?.into_stream();
    let mut bytes = 0usize;
    while let Some(chunk) = body.next().await {
        bytes += chunk?.len();
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

async fn measure(
    run: &str,
    schemas: &[String; 2],
    s3: &common::s3::Bucket,
    path: &Path,
    n: u64,
) -> anyhow::Result<()> {
    let store = &s3.store;
    let size = store.head(path).await?.size as f64;
    let read = s3_read(store, path).await?;
    println!(
        "  [ceiling] S3 ({}) GET of the whole object: {:.1} MB/s = {:>9.0} rows/s",
        s3.server,
        read / 1e6,
        read / size * n as f64
    );
    let raw = raw_copy(&schemas[0], n).await?;
    println!("  [ceiling] raw binary COPY, one transaction: {raw:>9.0} rows/s");
    postgres::drop_schema(&postgres::connect(&postgres::url()).await?, &schemas[0]).await?;

    let topic = unique("bench-bulk");
    let kafka_admin = kafka::admin()?;
    kafka::create_topic(&kafka_admin, &topic).await?;
    let message = BulkInsertMessage {
        uri: format!("s3://{}/{path}", s3.name),
        table: TABLE.into(),
        row_count: n as i64,
        idempotency_key: run.to_string(),
    }
    .encode_to_vec();
    let producer = kafka::producer(&[])?;
    kafka::produce(
        &producer,
        &topic,
        std::iter::once(("0".to_string(), message)),
        0,
        kafka::BACKOFF,
    )
    .await?;

    let store = format!(
        "{}?sslmode=disable&options=-csearch_path%3D{}",
        postgres::url(),
        schemas[1]
    );
    let env = kafka::writer_env(
        "OFFLINE_STORE_BULK_INSERT_WRITER",
        "bulk",
        &topic,
        std::iter::once(("BGP_OFFLINE_STORE_URI", store)).chain(s3.writer_env.clone()),
    );
    let mut writer = WriterProcess::start(run, &env)?;
    let cpu = async |pid| Ok(Cpu::now(pid));
    let measured = writer
        .measure(Duration::from_secs(3600), |m| metric(m, WRITTEN), 1.0, cpu)
        .await;
    let outcome = async {
        let measured = measured?;
        anyhow::ensure!(
            metric(&measured.start, CONSUMED) <= 1.0,
            "the clock started late"
        );
        let secs = measured.secs;
        let rate = n as f64 / secs;
        let hwm = writer.peak_rss()?;
        let stored: i64 = postgres::connect(&postgres::url())
            .await?
            .query_one(&format!("SELECT count(*) FROM {}.{TABLE}", schemas[1]), &[])
            .await?
            .try_get(0)?;
        anyhow::ensure!(
            stored == n as i64,
            "writer stored {stored} rows, expected {n}"
        );
        println!("  [writer]  {rate:>9.0} rows/s in {secs:.1} s  peak RSS {hwm}");
        println!(
            "  [cpu]     writer {:.2} cores, {}",
            (measured.after.process - measured.before.process) / secs,
            report::whole_machine(&measured.before, &measured.after, secs)
        );
        println!("  writer / raw COPY: {:.0}%", 100.0 * rate / raw);
        Ok(())
    }
    .await;
    writer.stop();
    kafka::delete_topics(&kafka_admin, &[&topic]).await?;
    outcome
}
