//! Kafka → pgvector ONLINE_VECTOR_STORE_WRITER throughput beside the store's
//! own ceilings, in one run on the rig (not a test):
//!
//! 1. the release writer binary on N vectors (10 per message, unique ids,
//!    default settings): vectors/s from its /metrics, between the first
//!    consumed message and the last vector written;
//! 2. the same vectors straight into Postgres from this process, into
//!    tables of the same layout: `COPY ... FROM STDIN (FORMAT csv)` in one
//!    stream (the bulk ceiling), and the writer's own
//!    `INSERT ... SELECT FROM unnest(...) ON CONFLICT` statement in batches of
//!    1000 on one connection (the statement ceiling).
//!
//!   hack/rig up kafka postgres && cargo bench --bench vector_to_pgvector
//!   BGP_BENCH_VECTORS=50000 BGP_BENCH_DIM=384 cargo bench --bench vector_to_pgvector

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::{VectorBatch, VectorRecord};
use bgpersist::writer::types::online_vector_store_writer::decode;
use common::data::mix;
use common::kafka::{self, PARTITIONS};
use common::process::{WRITTEN, WriterProcess, metric};
use common::report::machine;
use common::{env_or, postgres};
use futures::SinkExt;
use std::time::{Duration, Instant};
use support::unique;

const PER_MESSAGE: usize = 10;

fn vector(i: usize, dim: usize) -> VectorRecord {
    let embedding = (0..dim)
        .map(|d| (mix((i * dim + d) as u64) % 20_000) as f32 / 10_000.0 - 1.0)
        .collect();
    VectorRecord {
        collection: "bench".into(),
        id: format!("doc-{i}"),
        embedding,
        metadata_json: format!(r#"{{"title":"document {i}","shard":{}}}"#, i % 16),
        observed_at_micros: 1_700_000_000_000_000 + i as i64,
    }
}

fn message(m: usize, dim: usize) -> Vec<u8> {
    VectorBatch {
        records: (m * PER_MESSAGE..(m + 1) * PER_MESSAGE)
            .map(|i| vector(i, dim))
            .collect(),
    }
    .encode_to_vec()
}

fn layout(table: &str, dim: usize) -> String {
    format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, embedding vector({dim}) NOT NULL, \
         metadata jsonb NOT NULL, observed_at_micros bigint NOT NULL, \
         content_sha256 bytea NOT NULL, written_at timestamptz NOT NULL DEFAULT now())"
    )
}

/// COPY of every vector as CSV in one stream; vectors/s.
async fn copy_ceiling(
    client: &tokio_postgres::Client,
    schema: &str,
    n: usize,
    dim: usize,
) -> anyhow::Result<f64> {
    let table = format!("{schema}.copy_ceiling");
    client.batch_execute(&layout(&table, dim)).await?;
    // Encoded before timing, like the writer's decode is outside Postgres' work.
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    for m in 0..n / PER_MESSAGE {
        for point in decode(&message(m, dim)).map_err(anyhow::Error::msg)? {
            let embedding: Vec<String> = point.embedding.iter().map(f32::to_string).collect();
            let hash: String = point
                .content_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let meta = serde_json::Value::Object(point.metadata.clone())
                .to_string()
                .replace('"', "\"\"");
            chunk.push_str(&format!(
                "{},\"[{}]\",\"{meta}\",{},\\x{hash}\n",
                point.id,
                embedding.join(","),
                point.observed_at_micros
            ));
            if chunk.len() > 1 << 20 {
                chunks.push(std::mem::take(&mut chunk));
            }
        }
    }
    chunks.push(chunk);
    let started = Instant::now();
    let sink = client
        .copy_in::<_, std::io::Cursor<Vec<u8>>>(&format!(
            "COPY {table} (id, embedding, metadata, observed_at_micros, content_sha256) \
             FROM STDIN (FORMAT csv)"
        ))
        .await?;
    futures::pin_mut!(sink);
    for c in chunks {
        sink.send(std::io::Cursor::new(c.into_bytes())).await?;
    }
    let rows = sink.finish().await?;
    anyhow::ensure!(rows as usize == n, "COPY wrote {rows} rows of {n}");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The writer's statement, batches of 1000 on one connection; vectors/s.
async fn insert_ceiling(
    client: &tokio_postgres::Client,
    schema: &str,
    n: usize,
    dim: usize,
) -> anyhow::Result<f64> {
    let table = format!("{schema}.insert_ceiling");
    client.batch_execute(&layout(&table, dim)).await?;
    let mut points = Vec::with_capacity(n);
    for m in 0..n / PER_MESSAGE {
        points.extend(decode(&message(m, dim)).map_err(anyhow::Error::msg)?);
    }
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {table} AS t (id, embedding, metadata, observed_at_micros, content_sha256) \
             SELECT i, e, m::jsonb, o, h \
               FROM unnest($1::text[], $2::vector[], $3::text[], $4::int8[], $5::bytea[]) AS u(i, e, m, o, h) \
             ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding, metadata = excluded.metadata, \
               observed_at_micros = excluded.observed_at_micros, \
               content_sha256 = excluded.content_sha256, written_at = now() \
             WHERE (excluded.observed_at_micros, excluded.content_sha256) \
                 > (t.observed_at_micros, t.content_sha256)"
        ))
        .await?;
    let started = Instant::now();
    for part in points.chunks(1000) {
        let ids: Vec<&str> = part.iter().map(|p| p.id.as_str()).collect();
        let embeddings: Vec<pgvector::Vector> = part
            .iter()
            .map(|p| pgvector::Vector::from(p.embedding.clone()))
            .collect();
        let metadata: Vec<String> = part
            .iter()
            .map(|p| serde_json::Value::Object(p.metadata.clone()).to_string())
            .collect();
        let observed: Vec<i64> = part.iter().map(|p| p.observed_at_micros).collect();
        let hashes: Vec<&[u8]> = part.iter().map(|p| &p.content_sha256[..]).collect();
        client
            .execute(&stmt, &[&ids, &embeddings, &metadata, &observed, &hashes])
            .await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn run() -> anyhow::Result<()> {
    let n = env_or("BGP_BENCH_VECTORS", 100_000) / PER_MESSAGE * PER_MESSAGE;
    let dim = env_or("BGP_BENCH_DIM", 128);
    let messages = n / PER_MESSAGE;
    let schema = unique("bench_vec").replace('-', "_");
    let topic = unique("bench-vectors");
    println!(
        "vector_to_pgvector: {n} vectors of {dim} dimensions, {PER_MESSAGE} per message, {PARTITIONS} partitions"
    );
    println!("  machine: {}", machine());

    let admin = kafka::admin()?;
    kafka::create_topic(&admin, &topic).await?;
    let producer = kafka::producer(&[
        ("queue.buffering.max.messages", "500000"),
        ("message.max.bytes", "10000000"),
    ])?;
    let payloads = (0..messages).map(|m| (m.to_string(), message(m, dim)));
    kafka::produce(&producer, &topic, payloads, 0, kafka::BACKOFF).await?;
    let bytes = message(0, dim).len();
    println!("  produced {messages} messages of {bytes} bytes");

    // 1. The writer.
    let pg = postgres::url();
    let env = kafka::writer_env(
        "ONLINE_VECTOR_STORE_WRITER",
        "vectors",
        &topic,
        [(
            "BGP_VECTOR_STORE_URI",
            format!("{pg}?sslmode=disable&schema={schema}"),
        )],
    );
    let mut writer = WriterProcess::start(&schema, &env)?;
    let written = |m: &str| metric(m, WRITTEN);
    let (secs, before) = writer
        .time_until(Duration::from_secs(900), written, n as f64)
        .await?;
    let writer_rate = (n as f64 - before) / secs;
    let m = writer.metrics();
    let batches = metric(&m, "bgpersist_writer_batch_duration_seconds_count");
    writer.stop();
    println!(
        "  [writer]  {writer_rate:>9.0} vectors/s  ({:.1} MB/s of messages, {batches} batches)",
        writer_rate / PER_MESSAGE as f64 * bytes as f64 / 1e6
    );

    // 2. The ceilings, on the same server, same layout.
    let client = postgres::connect(&pg).await?;
    let copy = copy_ceiling(&client, &schema, n, dim).await?;
    let insert = insert_ceiling(&client, &schema, n, dim).await?;
    println!("  [ceiling] COPY csv, one stream:          {copy:>9.0} vectors/s");
    println!("  [ceiling] writer's INSERT, 1000/batch:    {insert:>9.0} vectors/s");
    println!(
        "  writer / COPY: {:.0}%   writer / INSERT: {:.0}%",
        100.0 * writer_rate / copy,
        100.0 * writer_rate / insert
    );
    let stored: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.bench"), &[])
        .await?
        .get(0);
    anyhow::ensure!(stored as usize == n, "writer stored {stored} of {n}");

    postgres::drop_schema(&client, &schema).await?;
    kafka::delete_topics(&admin, &[&topic]).await
}

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}
