//! Helpers of the offline-writer tests: a Postgres schema per test, writer
//! environments, parquet bodies, dead letters read back from Kafka, and a
//! bucket on the rig's S3 (moto).

use crate::support::{rig, unique};
use arrow_array::RecordBatch;
use bgpersist::formats::Message as _;
use bgpersist::formats::v1::{BulkInsertMessage, StreamingInsertMessage};

/// A schema of its own for one test, dropped with everything in it by `drop`.
pub struct PgSchema {
    pub name: String,
    pub client: tokio_postgres::Client,
    /// The server's database URL: the rig's, or a server the test owns.
    server: String,
}

impl PgSchema {
    pub async fn create() -> anyhow::Result<PgSchema> {
        PgSchema::create_on(&rig("postgres", "BGP_POSTGRES_URL")).await
    }

    /// A schema on the database at `server` (a URL without query).
    pub async fn create_on(server: &str) -> anyhow::Result<PgSchema> {
        let name = unique("off").replace('-', "_");
        let client = pg_client_at(server).await?;
        client
            .batch_execute(&format!("CREATE SCHEMA \"{name}\""))
            .await?;
        Ok(PgSchema {
            name,
            client,
            server: server.to_string(),
        })
    }

    /// A new session, after the server was restarted under the old one.
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.client = pg_client_at(&self.server).await?;
        Ok(())
    }

    /// The store URI the writer gets: the database, this schema first on the
    /// search path.
    pub fn uri(&self) -> String {
        format!(
            "{}?sslmode=disable&options=-csearch_path%3D{}",
            self.server, self.name
        )
    }

    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".\"{table}\"", self.name)
    }

    /// (rows, distinct values of `key`) of a table; (0, 0) when it does not exist.
    pub async fn count(&self, table: &str, key: &str) -> anyhow::Result<(i64, i64)> {
        if !self.exists(table).await? {
            return Ok((0, 0));
        }
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT \"{key}\") FROM {}",
                    self.table(table)
                ),
                &[],
            )
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    pub async fn exists(&self, table: &str) -> anyhow::Result<bool> {
        let row = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table(table)])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// column → SQL type of a table, in column order.
    pub async fn columns(&self, table: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&self.name, &table],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Every value of a text column, sorted.
    pub async fn texts(&self, table: &str, column: &str) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT \"{column}\"::text FROM {} ORDER BY 1",
                    self.table(table)
                ),
                &[],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn drop(self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .await;
    }
}

pub async fn pg_client_at(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Environment of an offline writer of `writer_type` on Kafka.
pub fn offline_env(
    writer_type: &str,
    topic: &str,
    dlq: &str,
    group: &str,
    store_uri: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("BGP_WRITER_TYPE", writer_type.into()),
        ("BGP_WRITER_NAME", "offline".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "KAFKA".into()),
        ("BGP_SUBSCRIPTION", topic.into()),
        ("BGP_DLQ_TOPIC", dlq.into()),
        (
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ),
        ("BGP_KAFKA_CONSUMER_GROUP", group.into()),
        ("BGP_OFFLINE_STORE_URI", store_uri.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ]
}

pub fn to_parquet(batch: &RecordBatch) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)?;
    w.write(batch)?;
    w.close()?;
    Ok(out)
}

pub fn streaming_message(table: &str, parquet: Vec<u8>, key: &str) -> Vec<u8> {
    StreamingInsertMessage {
        table: table.into(),
        parquet,
        idempotency_key: key.into(),
    }
    .encode_to_vec()
}

pub fn bulk_message(uri: &str, table: &str, rows: i64, key: &str) -> Vec<u8> {
    BulkInsertMessage {
        uri: uri.into(),
        table: table.into(),
        row_count: rows,
        idempotency_key: key.into(),
    }
    .encode_to_vec()
}

pub use crate::harness::{Letter, dead_letters as dlq_letters};

/// The reason header of the dead letter carrying `payload`.
pub fn reason_of<'a>(letters: &'a [Letter], payload: &[u8]) -> Option<&'a str> {
    letters
        .iter()
        .find(|(p, _)| p == payload)
        .and_then(|(_, h)| h.get("bgp-dlq-error-message"))
        .map(String::as_str)
}

/// A bucket on the rig's S3 (moto), and the environment a writer needs to read it.
pub struct S3Bucket {
    pub name: String,
    pub store: object_store::aws::AmazonS3,
}

impl S3Bucket {
    pub async fn create() -> anyhow::Result<S3Bucket> {
        let (name, store) = crate::support::cloud::moto_bucket("up").await?;
        Ok(S3Bucket { name, store })
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        use object_store::ObjectStore;
        self.store
            .put_opts(
                &object_store::path::Path::parse(key)?,
                bytes.into(),
                Default::default(),
            )
            .await?;
        Ok(format!("s3://{}/{key}", self.name))
    }

    /// What the writer needs to reach this S3, as a pod would have it.
    pub fn writer_env(&self) -> Vec<(&'static str, String)> {
        let mut env = crate::support::cloud::moto_s3_env();
        env.push(("BGP_UPLOAD_BUCKET", format!("s3://{}", self.name)));
        env
    }
}
