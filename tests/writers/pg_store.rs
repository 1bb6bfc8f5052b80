//! Postgres around the metrics and usage writers: a schema per test on the
//! rig's server, a TCP proxy that can take the server away, and reading
//! Kafka dead letters.

use crate::harness::{committed_and_end, eventually};
use crate::support::{rig, unique};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A schema of its own on the rig's Postgres; writers reach it through the
/// URI's `search_path`.
pub struct Schema {
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl Schema {
    pub async fn create(prefix: &str) -> anyhow::Result<Schema> {
        let name = unique(prefix).replace('-', "_").to_lowercase();
        let (client, conn) =
            tokio_postgres::connect(&rig("postgres", "BGP_POSTGRES_URL"), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}; SET search_path TO {name}"))
            .await?;
        Ok(Schema { name, client })
    }

    /// The rig's URI with this schema first on the search path.
    pub fn uri(&self) -> String {
        self.uri_at(None)
    }

    /// Like [`Schema::uri`], through `127.0.0.1:port` instead (a proxy).
    pub fn uri_at(&self, port: Option<u16>) -> String {
        let mut url = url::Url::parse(&rig("postgres", "BGP_POSTGRES_URL")).unwrap_or_else(|e| {
            panic!("BGP_POSTGRES_URL is not a URL: {e}");
        });
        if let Some(p) = port {
            let _ = url.set_port(Some(p));
        }
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={}", self.name));
        url.to_string()
    }

    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self
            .client
            .query_one(&format!("SELECT count(*) FROM {}.{table}", self.name), &[])
            .await?
            .get(0))
    }

    pub async fn drop_schema(&self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await;
    }
}

/// Waits until `group` has committed all `messages` on `topic` (summed over
/// partitions).
pub async fn drained(
    topic: &str,
    group: &str,
    partitions: i32,
    messages: usize,
) -> anyhow::Result<()> {
    let want = messages as i64;
    let (c, e) = eventually(
        &format!("{messages} messages committed on {topic}"),
        Duration::from_secs(60),
        || async {
            let (c, e) = committed_and_end(topic, group, partitions)?;
            Ok((c == want && e == want).then_some((c, e)))
        },
    )
    .await?;
    anyhow::ensure!((c, e) == (want, want));
    Ok(())
}

pub use crate::harness::dead_letters as kafka_letters;

/// Forwards 127.0.0.1:<port> to the rig's Postgres while up; while down it
/// cuts the open connections and refuses new ones, like a server that died.
pub struct PgProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl PgProxy {
    pub async fn start() -> anyhow::Result<PgProxy> {
        let target = url::Url::parse(&rig("postgres", "BGP_POSTGRES_URL"))?;
        let target = format!(
            "{}:{}",
            target.host_str().unwrap_or("127.0.0.1"),
            target.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut l) = links2.lock() {
                    l.push(link);
                }
            }
        });
        Ok(PgProxy {
            port,
            up,
            links,
            accept,
        })
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up && let Ok(mut links) = self.links.lock() {
            for l in links.drain(..) {
                l.abort();
            }
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.accept.abort();
    }
}
