//! pgvector: one table per collection in one schema (`?schema=`, default
//! `vectors`), created on first use:
//!
//! ```sql
//! CREATE TABLE "<schema>"."<collection>" (
//!   id                 text PRIMARY KEY,
//!   embedding          vector(<n>) NOT NULL,
//!   metadata           jsonb NOT NULL,
//!   observed_at_micros bigint NOT NULL,
//!   content_sha256     bytea NOT NULL,
//!   written_at         timestamptz NOT NULL DEFAULT now()
//! )
//! ```
//!
//! One statement per collection and batch: `INSERT ... SELECT FROM unnest(...)
//! ON CONFLICT (id) DO UPDATE ... WHERE` the incoming (observed_at_micros,
//! content_sha256) is greater, so an older observation never overwrites a
//! newer one and a replay changes nothing.

use super::{StoreError, VectorError, VectorPoint, VectorStore};
use crate::writer::stores::postgres as pg;
use deadpool_postgres::{Object, Pool};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::OnceCell;

pub const DEFAULT_SCHEMA: &str = "vectors";

pub struct PgVectorStore {
    pool: Pool,
    schema: String,
    concurrency: usize,
    /// Collection → dimension of its `embedding` column.
    dims: Mutex<HashMap<String, usize>>,
    /// Extension and schema exist (checked once per process).
    prepared: OnceCell<()>,
}

/// Takes the writer's own `schema` parameter out of the URI (the Postgres
/// driver would refuse it) and returns (driver URI, schema).
pub fn split_schema(uri: &str) -> Result<(String, String), VectorError> {
    let Ok(mut url) = url::Url::parse(uri.trim()) else {
        // Forms the URL parser does not take (several hosts) go through as is.
        return Ok((uri.trim().to_string(), DEFAULT_SCHEMA.to_string()));
    };
    let mut schema = DEFAULT_SCHEMA.to_string();
    let mut keep = Vec::new();
    for (k, v) in url.query_pairs() {
        if k == "schema" {
            schema = v.into_owned();
        } else {
            keep.push((k.into_owned(), v.into_owned()));
        }
    }
    if !(1..=63).contains(&schema.len())
        || !schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(VectorError::Uri(format!(
            "schema {schema:?} must be 1-63 characters of A-Z, a-z, 0-9 or '_'"
        )));
    }
    url.set_query(None);
    if !keep.is_empty() {
        url.query_pairs_mut().extend_pairs(keep);
    }
    Ok((url.to_string(), schema))
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn classify(e: &tokio_postgres::Error) -> StoreError {
    if pg::is_retriable(e) {
        StoreError::Retriable(format!("postgres: {}", db_message(e)))
    } else {
        StoreError::Refused(format!("postgres refused: {}", db_message(e)))
    }
}

/// What is there for a collection's table.
enum Layout {
    Missing,
    Vector(usize),
    Foreign(String),
}

impl PgVectorStore {
    pub fn open(uri: &str, concurrency: usize) -> Result<Self, VectorError> {
        let (uri, schema) = split_schema(uri)?;
        let size = concurrency.clamp(1, 8);
        Ok(PgVectorStore {
            pool: pg::pool(&uri, size)?,
            schema,
            concurrency: size,
            dims: Mutex::new(HashMap::new()),
            prepared: OnceCell::new(),
        })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// `"schema"."collection"`; both are validated to need no escaping.
    pub fn table(&self, collection: &str) -> String {
        format!("\"{}\".\"{collection}\"", self.schema)
    }

    fn dims(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.dims.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Retriable(format!("postgres connection: {e}")))
    }

    /// The extension and the schema. Any failure pauses the writer: nothing
    /// can be written until someone with the rights creates them.
    async fn prepare(&self, client: &Object) -> Result<(), StoreError> {
        self.prepared
            .get_or_try_init(|| async {
                let create = format!(
                    "CREATE EXTENSION IF NOT EXISTS vector; CREATE SCHEMA IF NOT EXISTS \"{}\"",
                    self.schema
                );
                if let Err(e) = client.batch_execute(&create).await {
                    // Concurrent creators race on the catalog; fine if both now exist.
                    let there = client
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') \
                             AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                            &[&self.schema],
                        )
                        .await
                        .map(|row| row.get::<_, bool>(0))
                        .unwrap_or(false);
                    if !there {
                        return Err(StoreError::Retriable(format!(
                            "cannot create the vector extension or schema {:?}: {}",
                            self.schema,
                            db_message(&e)
                        )));
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn layout(&self, client: &Object, collection: &str) -> Result<Layout, StoreError> {
        let row = client
            .query_one(
                "SELECT c.oid IS NOT NULL, \
                   (SELECT a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = c.oid AND a.attname = 'embedding' AND NOT a.attisdropped \
                       AND t.typname = 'vector'), \
                   (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped \
                     AND a.attname IN ('id', 'metadata', 'observed_at_micros', 'content_sha256')) \
                 FROM (SELECT to_regclass($1) AS oid) c",
                &[&self.table(collection)],
            )
            .await
            .map_err(|e| classify(&e))?;
        let exists: bool = row.get(0);
        let dim: Option<i32> = row.get(1);
        let columns: i64 = row.get(2);
        Ok(match (exists, dim) {
            (false, _) => Layout::Missing,
            (true, Some(d)) if d > 0 && columns == 4 => Layout::Vector(d as usize),
            (true, _) => Layout::Foreign(format!(
                "table {} exists but is not a bgpersist vector table (id, embedding vector(n), \
                 metadata, observed_at_micros, content_sha256)",
                self.table(collection)
            )),
        })
    }
}

impl VectorStore for PgVectorStore {
    async fn dimension(&self, collection: &str, wanted: usize) -> Result<usize, StoreError> {
        if let Some(d) = self.dims().get(collection) {
            return Ok(*d);
        }
        let client = self.client().await?;
        self.prepare(&client).await?;
        let mut layout = self.layout(&client, collection).await?;
        if matches!(layout, Layout::Missing) {
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                   id text PRIMARY KEY, \
                   embedding vector({wanted}) NOT NULL, \
                   metadata jsonb NOT NULL, \
                   observed_at_micros bigint NOT NULL, \
                   content_sha256 bytea NOT NULL, \
                   written_at timestamptz NOT NULL DEFAULT now())",
                self.table(collection)
            );
            // A concurrent creator may win the race (duplicate type/table): read what it made.
            if let Err(e) = client.batch_execute(&create).await
                && !matches!(e.code().map(|c| c.code()), Some("42P07" | "23505"))
            {
                return Err(StoreError::Retriable(format!(
                    "cannot create table {}: {}",
                    self.table(collection),
                    db_message(&e)
                )));
            }
            layout = self.layout(&client, collection).await?;
        }
        match layout {
            Layout::Vector(d) => {
                self.dims().insert(collection.to_string(), d);
                Ok(d)
            }
            Layout::Foreign(reason) => Err(StoreError::Refused(reason)),
            Layout::Missing => Err(StoreError::Retriable(format!(
                "table {} vanished right after creation",
                self.table(collection)
            ))),
        }
    }

    fn forget(&self, collection: &str) {
        self.dims().remove(collection);
    }

    async fn upsert(&self, collection: &str, points: &[&VectorPoint]) -> Result<(), StoreError> {
        // Sorted by id so concurrent writers lock rows in the same order
        // (no deadlocks), then written as concurrent statements of CHUNK rows
        // on the pool's connections; ids are distinct, so chunks never meet.
        let mut sorted: Vec<&VectorPoint> = points.to_vec();
        sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        // Boxed: otherwise the futures are not provably Send for every lifetime.
        let chunks: Vec<futures::future::BoxFuture<'_, Result<(), StoreError>>> = sorted
            .chunks(CHUNK)
            .map(|chunk| Box::pin(self.upsert_chunk(collection, chunk)) as _)
            .collect();
        let mut results = futures::stream::iter(chunks).buffer_unordered(self.concurrency);
        let mut refused = None;
        while let Some(r) = results.next().await {
            match r {
                Ok(()) => {}
                Err(e @ StoreError::Retriable(_)) => return Err(e),
                Err(e @ StoreError::Refused(_)) => refused = refused.or(Some(e)),
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

/// Rows per statement.
const CHUNK: usize = 1000;

impl PgVectorStore {
    async fn upsert_chunk(
        &self,
        collection: &str,
        points: &[&VectorPoint],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} AS t (id, embedding, metadata, observed_at_micros, content_sha256) \
             SELECT i, e, m::jsonb, o, h \
               FROM unnest($1::text[], $2::vector[], $3::text[], $4::int8[], $5::bytea[]) AS u(i, e, m, o, h) \
             ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding, metadata = excluded.metadata, \
               observed_at_micros = excluded.observed_at_micros, \
               content_sha256 = excluded.content_sha256, written_at = now() \
             WHERE (excluded.observed_at_micros, excluded.content_sha256) \
                 > (t.observed_at_micros, t.content_sha256)",
            self.table(collection)
        );
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(|e| classify(&e))?;
        let ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        let embeddings: Vec<pgvector::Vector> = points
            .iter()
            .map(|p| pgvector::Vector::from(p.embedding.clone()))
            .collect();
        let metadata: Vec<String> = points
            .iter()
            .map(|p| serde_json::Value::Object(p.metadata.clone()).to_string())
            .collect();
        let observed: Vec<i64> = points.iter().map(|p| p.observed_at_micros).collect();
        let hashes: Vec<&[u8]> = points.iter().map(|p| &p.content_sha256[..]).collect();
        client
            .execute(&stmt, &[&ids, &embeddings, &metadata, &observed, &hashes])
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_ours() -> Result<(), VectorError> {
        let (uri, schema) = split_schema("postgres://u:p@h:5432/db?sslmode=disable&schema=emb_1")?;
        assert_eq!(uri, "postgres://u:p@h:5432/db?sslmode=disable");
        assert_eq!(schema, "emb_1");
        let (uri, schema) = split_schema("postgres://h/db")?;
        assert_eq!(
            (uri.as_str(), schema.as_str()),
            ("postgres://h/db", "vectors")
        );
        let err = split_schema("postgres://u:s3cret@h/db?schema=a%22b")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("schema") && !err.contains("s3cret"), "{err}");
        Ok(())
    }
}
