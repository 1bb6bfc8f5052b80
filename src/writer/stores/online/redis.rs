//! The Redis online store, standalone or cluster.
//!
//! Layout (docs/online-store.md): one hash per entity, key
//! `<prefix><namespace>/<pkey>`, with `__id__` = pkey, `<ns>.<feature>` = the
//! value as JSON and `<ns>.<feature>_ts` = its observation time in
//! microseconds. A Lua script sets a feature only when the incoming
//! observation is newer (ties broken by value), atomically, so writes are
//! idempotent and their order does not matter.

use super::{OnlineRecord, OnlineStore};
use crate::writer::runtime::sink::{Rejected, WriterError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Script calls per pipeline on a standalone server.
const PIPELINE: usize = 64;

/// The write script (public so the benchmark can load the same one).
pub const NEWER_WINS: &str = r#"
-- KEYS[1] hash; ARGV[1] pkey; ARGV[2] ttl seconds (0: none); then (field, ts, value) triples
redis.call('HSET', KEYS[1], '__id__', ARGV[1])
local changed = 0
for i = 3, #ARGV, 3 do
  local field, ts, value = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local cur_ts = redis.call('HGET', KEYS[1], field .. '_ts')
  local newer = (not cur_ts) or tonumber(cur_ts) < ts
  if (not newer) and tonumber(cur_ts) == ts then
    local cur = redis.call('HGET', KEYS[1], field)
    newer = (not cur) or cur < value
  end
  if newer then
    redis.call('HSET', KEYS[1], field, value, field .. '_ts', ARGV[i + 1])
    changed = changed + 1
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  local cur = redis.call('TTL', KEYS[1])
  if cur < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
end
return changed
"#;

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
    /// Runs a pipeline of script calls, one result per call. A server that
    /// lost the script (restart, failover) gets it again and the pipeline is
    /// rerun (the calls are idempotent).
    async fn pipeline(
        &self,
        conn: &mut ConnectionManager,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Result<i64, RedisError>>, RedisError> {
        let results: Vec<Result<i64, RedisError>> = match pipe.query_async(conn).await {
            // The manager hands back the error of its last reconnect attempt
            // once, then reconnects: ask again at once, so a server that is
            // back answers this write rather than the next retry.
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() => {
                pipe.query_async(conn).await?
            }
            other => other?,
        };
        if results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.code() == Some("NOSCRIPT")))
        {
            self.script.prepare_invoke().load_async(conn).await?;
            return pipe.query_async(conn).await;
        }
        Ok(results)
    }
}

/// A value Redis refuses for good (the key holds another type) versus an outage.
fn classify(e: &RedisError) -> Option<String> {
    (e.code() == Some("WRONGTYPE")).then(|| e.to_string())
}

impl OnlineStore for RedisStore {
    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, WriterError> {
        let conn = self
            .conn()
            .await
            .map_err(|e| WriterError::Retriable(e.to_string()))?;
        // One script call per entity. On a standalone server the calls go out
        // as pipelines (one socket write and one read per PIPELINE calls); on a
        // cluster one by one, each routed by its key. All concurrently on the
        // multiplexed connection.
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_key.entry(self.key(r)).or_default().push(i);
        }
        let calls: Vec<(String, Vec<usize>)> = by_key.into_iter().collect();
        let ttl = |idx: &[usize]| {
            idx.iter()
                .map(|i| records[*i].ttl_seconds)
                .max()
                .unwrap_or(0)
        };
        type Outcome = Result<Vec<Result<i64, RedisError>>, RedisError>;
        // Built lazily: the first calls are on the wire while later ones are encoded.
        type Units<'a> = Box<
            dyn Iterator<Item = BoxFuture<'a, (&'a [(String, Vec<usize>)], Outcome)>> + Send + 'a,
        >;
        let units: Units<'_> = match &conn {
            Conn::Single(c) => {
                let units = calls.chunks(PIPELINE).map(|part| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for (key, idx) in part {
                        pipe.cmd("EVALSHA")
                            .arg(self.script.get_hash())
                            .arg(1)
                            .arg(key)
                            .arg(&records[idx[0]].pkey)
                            .arg(ttl(idx));
                        for i in idx {
                            let r = &records[*i];
                            pipe.arg(&r.field)
                                .arg(r.observed_at_micros)
                                .arg(&r.value_json);
                        }
                    }
                    let mut c = c.clone();
                    async move { (part, self.pipeline(&mut c, &pipe).await) }.boxed()
                });
                Box::new(units)
            }
            Conn::Cluster(c) => {
                let units = calls.chunks(1).map(|part| {
                    let (key, idx) = &part[0];
                    let mut inv = self.script.key(key);
                    inv.arg(&records[idx[0]].pkey).arg(ttl(idx));
                    for i in idx {
                        let r = &records[*i];
                        inv.arg(&r.field)
                            .arg(r.observed_at_micros)
                            .arg(&r.value_json);
                    }
                    let mut c = c.clone();
                    async move { (part, Ok(vec![inv.invoke_async(&mut c).await])) }.boxed()
                });
                Box::new(units)
            }
        };
        let mut results = futures::stream::iter(units).buffer_unordered(self.target.concurrency);
        let mut rejected = Vec::new();
        while let Some((part, outcome)) = results.next().await {
            // Give up at the first outage error: during an outage every
            // further wave of calls would wait out its own reconnect cycle,
            // holding the batch (and shutdown) for minutes. The script is
            // idempotent: retrying the whole batch is safe.
            let outcome = outcome.map_err(|e| WriterError::Retriable(e.to_string()))?;
            for ((_, idx), result) in part.iter().zip(outcome) {
                if let Err(e) = result {
                    match classify(&e) {
                        Some(reason) => rejected.extend(idx.iter().map(|&record| Rejected {
                            record,
                            reason: reason.clone(),
                        })),
                        None => return Err(WriterError::Retriable(e.to_string())),
                    }
                }
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
