//! The Redis online store, standalone or cluster.
//!
//! Layout (docs/online-store.md): one hash per entity, key
//! `<prefix><namespace>/<pkey>`, with `__id__` = pkey, `<ns>.<feature>` = the
//! value as JSON and `<ns>.<feature>_ts` = its observation time in
//! microseconds. A Lua script (`newer_wins.lua`) sets a feature only when
//! the incoming observation is newer (ties broken by value), atomically, so
//! writes are idempotent and their order does not matter. One call carries
//! many entities (`calls`): Redis spends most of a one-entity call on the
//! call itself.

mod calls;

use super::{OnlineRecord, OnlineStore};
use crate::writer::runtime::sink::{Rejected, WriterError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The write script (public so the benchmark can load the same one).
pub const NEWER_WINS: &str = include_str!("newer_wins.lua");

/// One script call's keys and its argument.
pub type ScriptCall = (Vec<String>, Vec<u8>);

/// The benchmark's view of a call: the script's argument for `records`
/// as the writer would send them, with their keys, call by call.
pub fn script_calls(
    records: &[OnlineRecord],
    key: impl Fn(&OnlineRecord) -> String,
    clustered: bool,
) -> Result<Vec<ScriptCall>, calls::TooLong> {
    calls::plan(records, key, clustered)
        .into_iter()
        .map(|call| {
            let arg = calls::encode(&call, records)?;
            Ok((call.into_iter().map(|e| e.key).collect(), arg))
        })
        .collect()
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    /// One URL for standalone; one or more seed nodes for a cluster.
    pub urls: Vec<String>,
    pub clustered: bool,
    pub key_prefix: String,
    pub concurrency: usize,
    /// `rediss://`: the CAs to trust instead of the system's, as PEM
    /// (`ssl_ca_certs=<file>` on the URI, as redis-py spells it).
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisTarget {
    /// Parses the online-store URI: `redis[s]://host:port/db?password=...&clustered=true`,
    /// several comma-separated for cluster seeds. `clustered` in the URI, or the
    /// resource's `redis_is_clustered`, selects cluster mode; `ssl_ca_certs`
    /// names a PEM file of CAs for `rediss://` (read here, so a missing file
    /// is a configuration error).
    pub fn parse(
        uri: &str,
        clustered_flag: bool,
        key_prefix: &str,
        concurrency: usize,
    ) -> Result<Self, String> {
        let mut clustered = clustered_flag;
        let mut urls = Vec::new();
        let mut ca_file = None;
        for part in uri.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut u = url::Url::parse(part).map_err(|e| format!("online store URI: {e}"))?;
            if !matches!(u.scheme(), "redis" | "rediss") {
                return Err(format!(
                    "online store URI: scheme {:?} is not redis or rediss",
                    u.scheme()
                ));
            }
            let mut keep = Vec::new();
            let mut password = None;
            for (k, v) in u.query_pairs() {
                match k.as_ref() {
                    "clustered" => clustered |= matches!(v.as_ref(), "1" | "true"),
                    "password" => password = Some(v.into_owned()),
                    "ssl_ca_certs" => ca_file = Some(v.into_owned()),
                    _ => keep.push((k.into_owned(), v.into_owned())),
                }
            }
            u.set_query(None);
            if !keep.is_empty() {
                u.query_pairs_mut().extend_pairs(keep);
            }
            if let Some(p) = password {
                u.set_password(Some(&p))
                    .map_err(|_| "online store URI: cannot carry a password".to_string())?;
            }
            urls.push(u.to_string());
        }
        if urls.is_empty() {
            return Err("online store URI is empty".into());
        }
        let ca_pem = ca_file
            .map(|f| {
                std::fs::read(&f).map_err(|e| format!("online store URI: ssl_ca_certs {f}: {e}"))
            })
            .transpose()?;
        Ok(RedisTarget {
            urls,
            clustered,
            key_prefix: key_prefix.into(),
            concurrency: concurrency.max(1),
            ca_pem,
        })
    }
}

impl RedisTarget {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_pem.as_ref().map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        })
    }
}

pub struct RedisStore {
    target: RedisTarget,
    conn: OnceCell<Conn>,
    script: Script,
}

impl RedisStore {
    /// Connects lazily: a store that is down at start-up is retried like any outage.
    pub fn new(target: RedisTarget) -> Self {
        RedisStore {
            target,
            conn: OnceCell::new(),
            script: Script::new(NEWER_WINS),
        }
    }

    async fn conn(&self) -> Result<Conn, RedisError> {
        let t = &self.target;
        self.conn
            .get_or_try_init(|| async {
                if t.clustered {
                    let mut builder = ClusterClient::builder(t.urls.clone())
                        .connection_timeout(Duration::from_secs(5))
                        .response_timeout(Duration::from_secs(5));
                    if let Some(certs) = t.certificates() {
                        builder = builder.certs(certs);
                    }
                    Ok(Conn::Cluster(
                        builder.build()?.get_async_connection().await?,
                    ))
                } else {
                    let client = match t.certificates() {
                        Some(certs) => redis::Client::build_with_tls(t.urls[0].as_str(), certs)?,
                        None => redis::Client::open(t.urls[0].as_str())?,
                    };
                    // One reconnect retry: the runtime's capped backoff (with
                    // its retry metric and shutdown check) does the waiting.
                    let config = ConnectionManagerConfig::new()
                        .set_number_of_retries(1)
                        .set_connection_timeout(Some(Duration::from_secs(5)))
                        .set_response_timeout(Some(Duration::from_secs(5)));
                    Ok(Conn::Single(
                        ConnectionManager::new_with_config(client, config).await?,
                    ))
                }
            })
            .await
            .cloned()
    }

    fn key(&self, r: &OnlineRecord) -> String {
        format!("{}{}/{}", self.target.key_prefix, r.namespace, r.pkey)
    }
}

impl RedisStore {
    /// The script call for one planned call.
    fn command(
        &self,
        call: &[calls::Entry],
        records: &[OnlineRecord],
    ) -> Result<redis::Cmd, calls::TooLong> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(call.len());
        for e in call {
            cmd.arg(&e.key);
        }
        cmd.arg(calls::encode(call, records)?);
        Ok(cmd)
    }

    /// Runs one script call; the indexes (1-based) of its keys that hold
    /// another type. A server that lost the script (restart, failover, a
    /// new cluster node) gets it again and the call is rerun: it is
    /// idempotent.
    async fn run(&self, conn: &mut Conn, cmd: &redis::Cmd) -> Result<Vec<usize>, RedisError> {
        let first = match conn {
            Conn::Single(c) => match cmd.query_async(c).await {
                // The manager hands back the error of its last reconnect
                // attempt once, then reconnects: ask again at once, so a
                // server that is back answers this write rather than the
                // next retry.
                Err(e)
                    if e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_io_error() =>
                {
                    cmd.query_async(c).await
                }
                other => other,
            },
            Conn::Cluster(c) => cmd.query_async(c).await,
        };
        match first {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                // On a cluster SCRIPT LOAD goes to every primary.
                match conn {
                    Conn::Single(c) => self.script.load_async(c).await?,
                    Conn::Cluster(c) => self.script.load_async(c).await?,
                };
                match conn {
                    Conn::Single(c) => cmd.query_async(c).await,
                    Conn::Cluster(c) => cmd.query_async(c).await,
                }
            }
            other => other,
        }
    }
}

impl OnlineStore for RedisStore {
    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, WriterError> {
        let conn = self
            .conn()
            .await
            .map_err(|e| WriterError::Retriable(e.to_string()))?;
        // Many entities per script call (one slot per call on a cluster);
        // the calls run concurrently on the multiplexed connection, which
        // pipelines them.
        let plan = calls::plan(records, |r| self.key(r), self.target.clustered);
        type Unit<'a> = BoxFuture<'a, (&'a calls::Call, Result<Vec<usize>, RedisError>)>;
        let units: Vec<Unit<'_>> = plan
            .iter()
            .map(|call| {
                let cmd = self
                    .command(call, records)
                    .map_err(|e| WriterError::Runtime(e.to_string()))?;
                let mut conn = conn.clone();
                Ok(async move { (call, self.run(&mut conn, &cmd).await) }.boxed())
            })
            .collect::<Result<_, WriterError>>()?;
        let mut results = futures::stream::iter(units).buffer_unordered(self.target.concurrency);
        let mut rejected = Vec::new();
        while let Some((call, outcome)) = results.next().await {
            // Give up at the first outage error: during an outage every
            // further wave of calls would wait out its own reconnect cycle,
            // holding the batch (and shutdown) for minutes. The script is
            // idempotent: retrying the whole batch is safe.
            let wrong = outcome.map_err(|e| WriterError::Retriable(e.to_string()))?;
            for k in wrong {
                let Some(entry) = k.checked_sub(1).and_then(|k| call.get(k)) else {
                    return Err(WriterError::Retriable(format!(
                        "the write script answered key {k} of {}",
                        call.len()
                    )));
                };
                let reason = format!("WRONGTYPE: {} holds a value that is not a hash", entry.key);
                rejected.extend(entry.covers().map(|record| Rejected {
                    record,
                    reason: reason.clone(),
                }));
            }
        }
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::RedisTarget;

    #[test]
    fn uri_password_and_cluster_flag() -> Result<(), String> {
        let t = RedisTarget::parse(
            "redis://h:6379/2?password=p%40ss&clustered=true",
            false,
            "",
            8,
        )?;
        assert!(t.clustered);
        assert_eq!(t.urls, vec!["redis://:p%40ss@h:6379/2".to_string()]);
        let t = RedisTarget::parse("redis://a:1, redis://b:2", true, "pfx:", 8)?;
        assert_eq!(t.urls.len(), 2);
        assert!(RedisTarget::parse("http://h", false, "", 1).is_err());
        assert!(RedisTarget::parse("", false, "", 1).is_err());
        Ok(())
    }
}
