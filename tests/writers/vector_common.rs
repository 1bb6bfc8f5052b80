//! Shared pieces of the vector writer tests: messages, the writer's
//! environment, and reading a pgvector schema back.

use crate::support::rig;
use bgpersist::formats::Message;
use bgpersist::formats::v1::{VectorBatch, VectorRecord};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Embedding of entity `i` observed at `ts`: distinct per (i, ts), exact in f32.
pub fn embedding(i: usize, ts: i64, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|d| i as f32 * 10.0 + ts as f32 + d as f32 / 4.0)
        .collect()
}

pub fn metadata(i: usize, ts: i64) -> serde_json::Value {
    serde_json::json!({ "title": format!("doc {i}"), "version": ts, "tags": ["a", "b"] })
}

pub fn record(collection: &str, id: &str, i: usize, ts: i64, dim: usize) -> VectorRecord {
    VectorRecord {
        collection: collection.into(),
        id: id.into(),
        embedding: embedding(i, ts, dim),
        metadata_json: metadata(i, ts).to_string(),
        observed_at_micros: ts,
    }
}

pub fn batch(records: Vec<VectorRecord>) -> Vec<u8> {
    VectorBatch { records }.encode_to_vec()
}

/// Environment of an ONLINE_VECTOR_STORE_WRITER on Kafka.
pub fn vector_env_kafka(
    topic: &str,
    dlq: &str,
    group: &str,
    store_uri: &str,
) -> Vec<(&'static str, String)> {
    crate::harness::kafka_writer_env(
        ("ONLINE_VECTOR_STORE_WRITER", "vectors"),
        topic,
        dlq,
        group,
        ("BGP_VECTOR_STORE_URI", store_uri),
    )
}

/// A row of a collection table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub embedding: Vec<f32>,
    pub metadata: serde_json::Value,
    pub observed_at_micros: i64,
    pub written_at: SystemTime,
}

/// A schema on the rig's Postgres that the writer creates (`?schema=`).
pub struct VectorSchema {
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl VectorSchema {
    pub async fn new(name: &str) -> anyhow::Result<VectorSchema> {
        let (client, conn) =
            tokio_postgres::connect(&rig("postgres", "BGP_POSTGRES_URL"), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        Ok(VectorSchema {
            name: name.replace('-', "_").to_lowercase(),
            client,
        })
    }

    /// The writer's store URI: the rig's Postgres, this schema.
    pub fn uri(&self) -> String {
        format!(
            "{}?sslmode=disable&schema={}",
            rig("postgres", "BGP_POSTGRES_URL"),
            self.name
        )
    }

    /// id → row, or empty when the table does not exist yet.
    pub async fn rows(&self, table: &str) -> anyhow::Result<BTreeMap<String, Row>> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("\"{}\".\"{table}\"", self.name)],
            )
            .await?
            .get(0);
        if !exists {
            return Ok(BTreeMap::new());
        }
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, embedding, metadata::text, observed_at_micros, written_at \
                     FROM \"{}\".\"{table}\"",
                    self.name
                ),
                &[],
            )
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let v: pgvector::Vector = r.get(1);
            let meta: String = r.get(2);
            out.insert(
                r.get::<_, String>(0),
                Row {
                    embedding: v.to_vec(),
                    metadata: serde_json::from_str(&meta)?,
                    observed_at_micros: r.get(3),
                    written_at: r.get(4),
                },
            );
        }
        Ok(out)
    }

    /// `format_type` of each column of a table, in order.
    pub async fn columns(&self, table: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&format!("\"{}\".\"{table}\"", self.name)],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn drop(&self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await;
    }
}
