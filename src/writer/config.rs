//! The writer's configuration, read exactly as the operator renders it:
//! environment variables (src/contract.rs) plus mounted secret files.

use crate::contract as c;
use crate::crd::{BusBackend, WriterType};
use crate::writer::types::query_mirror_consumer::{MirrorError, MirrorSettings};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("query mirror: {0}")]
    Mirror(#[from] MirrorError),
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub writer_type: WriterType,
    pub writer_name: String,
    pub resource: String,
    pub backend: BusBackend,
    pub subscription: String,
    pub publish_topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub kafka: KafkaSettings,
    pub pubsub: PubsubSettings,
    pub max_batch_size: usize,
    /// How many times `max_batch_size` a batch may grow to under backlog;
    /// unset, the writer type's own choice (`Sink::BACKLOG_GROWTH`).
    pub batch_growth: Option<usize>,
    /// Payload bytes a batch holds at most (`Batching::max_bytes`).
    pub max_batch_bytes: usize,
    pub max_batch_wait: Duration,
    pub concurrency: usize,
    pub http_addr: std::net::SocketAddr,
    pub storage_cache_prefix: String,
    pub redis_is_clustered: bool,
    /// Where store connection URIs are mounted, one file per store.
    pub stores_dir: PathBuf,
    /// The mounted file holding this writer's store URI, as rendered.
    pub store_uri_file: Option<PathBuf>,
    /// QUERY_MIRROR_CONSUMER: where logged queries are replayed.
    pub api_server_host: Option<String>,
    /// OFFLINE_STORE_BULK_INSERT_WRITER: the bucket parquet uploads land in.
    pub upload_bucket: Option<String>,
    /// Share (0.0..=1.0) of query-log rows dropped instead of written.
    pub query_table_write_drop_ratio: f64,
    /// METRICS_WRITER: compute per-query metrics only.
    pub skip_feature_metrics: bool,
    /// Offline store flavour from the spec (e.g. "postgres", "bigquery").
    pub offline_store_db_type: Option<String>,
    pub metadata_provider: Option<String>,
    pub snowflake_storage_integration: Option<String>,
    /// METRICS_WRITER: `BGP_PUBLISH_ACKS` as set (all, 1 or 0; parsed where used).
    pub publish_acks: Option<String>,
    /// METRICS_WRITER: `BGP_PUBLISH_EXACTLY_ONCE` as set (true or false).
    pub publish_exactly_once: Option<String>,
    /// The exactly-once transactional id, else derived from the group and
    /// the pod's `HOSTNAME`.
    pub transactional_id: Option<String>,
    pub hostname: Option<String>,
    /// Endpoint overrides of the warehouses' APIs (anonymous at BigQuery's).
    pub bigquery_endpoint: Option<String>,
    pub snowflake_endpoint: Option<String>,
    /// QUERY_MIRROR_CONSUMER's replay settings (that type only).
    pub mirror: Option<MirrorSettings>,
}

/// librdkafka settings. Secrets (SASL password, SSL keys) come from files.
#[derive(Clone, Debug, Default)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// (librdkafka key, value), applied in order; later entries win.
    pub properties: Vec<(String, String)>,
    /// Where a new consumer group starts (`auto.offset.reset`; `earliest`
    /// unless `additional_kafka_args` say otherwise).
    pub auto_offset_reset: String,
    /// Where OAUTHBEARER tokens come from, when that is the mechanism.
    pub oauth: Option<KafkaOAuth>,
    /// `s3://` or `gs://` URIs of a PKCS#12 keystore and a PEM CA bundle,
    /// fetched at start (`bus::keystore`) into librdkafka file settings.
    pub keystore_location: Option<String>,
    pub truststore_location: Option<String>,
}

/// The OAUTHBEARER token source (`kafka_oauthbearer`).
#[derive(Clone, Debug, PartialEq)]
pub enum KafkaOAuth {
    /// OIDC client-credentials grant. The secret is read from its file at
    /// each fetch, so the value in force is always the mounted one.
    Oidc {
        token_url: String,
        client_id: String,
        client_secret_file: PathBuf,
        scope: Option<String>,
    },
    /// AWS MSK IAM: a SigV4-presigned token from the pod's AWS identity
    /// (IRSA, instance role, environment); the region, else the SDK's.
    MskIam { region: Option<String> },
}

#[derive(Clone, Debug, Default)]
pub struct PubsubSettings {
    /// Google Cloud project; subscription IDs may also be full paths.
    pub project: Option<String>,
    /// Endpoint override (the emulator); anonymous credentials when set.
    pub endpoint: Option<String>,
    /// Streaming-pull ack deadline (lease extension), 10..=600 s; `None`: the
    /// bus default. How soon a crashed writer's messages are redelivered.
    pub ack_deadline: Option<Duration>,
    /// How often the subscription's backlog is read from Cloud Monitoring
    /// (`writer/bus/pubsub_backlog.rs`); `None`: not read.
    pub backlog_interval: Option<Duration>,
    /// Cloud Monitoring endpoint override (a fake in tests); anonymous
    /// credentials when set.
    pub monitoring_endpoint: Option<String>,
}

/// Environment prefix for pass-through librdkafka settings:
/// `BGP_KAFKA_CONF_FETCH_MIN_BYTES=1` sets `fetch.min.bytes=1`.
pub const KAFKA_CONF_PREFIX: &str = "BGP_KAFKA_CONF_";
pub const ENV_PUBSUB_PROJECT: &str = "BGP_PUBSUB_PROJECT";
pub const ENV_PUBSUB_ENDPOINT: &str = "BGP_PUBSUB_ENDPOINT";
pub const ENV_PUBSUB_ACK_DEADLINE_SECONDS: &str = "BGP_PUBSUB_ACK_DEADLINE_SECONDS";
/// Seconds between two reads of the subscription's backlog from Cloud
/// Monitoring; 0 turns them off. Default 60, or off with the emulator
/// (`BGP_PUBSUB_ENDPOINT`), which has no Monitoring.
pub const ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS: &str = "BGP_PUBSUB_BACKLOG_INTERVAL_SECONDS";
/// Cloud Monitoring endpoint override, e.g. `http://127.0.0.1:8085`.
pub const ENV_MONITORING_ENDPOINT: &str = "BGP_MONITORING_ENDPOINT";
/// The backlog read interval when none is set.
pub const DEFAULT_BACKLOG_INTERVAL: Duration = Duration::from_secs(60);
/// The project Google's own libraries and GKE conventionally set; used when
/// `BGP_PUBSUB_PROJECT` is not.
pub const ENV_GOOGLE_CLOUD_PROJECT: &str = "GOOGLE_CLOUD_PROJECT";
pub const ENV_MAX_BATCH_WAIT_MS: &str = "BGP_MAX_BATCH_WAIT_MS";
/// A batch's payload bytes unless `max_batch_bytes` says otherwise. It cuts
/// no batch of small messages (8000 of 300 bytes are 2.4 MB), and with 50 KB
/// messages it loads as fast as 8 MiB does at 66–71 MiB of peak RSS instead
/// of 91–94 (docs/benchmarks.md).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;
pub const ENV_STORES_DIR: &str = "BGP_STORES_DIR";
pub use c::ENV_KAFKA_CLIENT_ID_PREFIX;
pub const ENV_KAFKA_GROUP_PREFIX: &str = "BGP_KAFKA_GROUP_PREFIX";
pub const DEFAULT_STORES_DIR: &str = "/etc/bgpersist/stores";
pub const ENV_PUBLISH_ACKS: &str = "BGP_PUBLISH_ACKS";
/// `true` turns METRICS_WRITER's Kafka transactions on.
pub const ENV_PUBLISH_EXACTLY_ONCE: &str = c::ENV_PUBLISH_EXACTLY_ONCE;
/// Transactional id; default `<consumer group>.<HOSTNAME>` (the pod name, so
/// a restarted container fences its previous incarnation).
pub const ENV_TRANSACTIONAL_ID: &str = "BGP_TRANSACTIONAL_ID";
pub const ENV_HOSTNAME: &str = "HOSTNAME";
pub const ENV_BIGQUERY_ENDPOINT: &str = "BGP_BIGQUERY_ENDPOINT";
pub const ENV_SNOWFLAKE_ENDPOINT: &str = "BGP_SNOWFLAKE_ENDPOINT";

impl WriterConfig {
    /// The largest batch the writer may gather under a backlog:
    /// `max_batch_size` times the resource's growth factor, else the writer
    /// type's own (`Sink::BACKLOG_GROWTH`).
    pub fn batch_ceiling(&self, type_growth: usize) -> usize {
        self.max_batch_size
            .saturating_mul(self.batch_growth.unwrap_or(type_growth))
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let need = |k: &'static str| get(k).ok_or(ConfigError::Missing(k));
        let number = |k: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(ConfigError::Invalid {
                        name: k,
                        value: v,
                        reason: "must be a positive integer".into(),
                    }),
            }
        };

        let writer_type: WriterType = enum_of(c::ENV_WRITER_TYPE, need(c::ENV_WRITER_TYPE)?)?;
        let backend: BusBackend = enum_of(c::ENV_BUS_BACKEND, need(c::ENV_BUS_BACKEND)?)?;
        let writer_name = need(c::ENV_WRITER_NAME)?;
        let resource = get(c::ENV_RESOURCE).unwrap_or_else(|| "local".into());
        let http =
            get(c::ENV_HTTP_ADDR).unwrap_or_else(|| format!("0.0.0.0:{}", c::WRITER_HTTP_PORT));
        let http_addr =
            http.parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                    name: c::ENV_HTTP_ADDR,
                    value: http.clone(),
                    reason: e.to_string(),
                })?;

        let kafka = match backend {
            BusBackend::Kafka => kafka_settings(vars, &get, &resource, &writer_name)?,
            BusBackend::Pubsub => KafkaSettings::default(),
        };
        let mut cfg = WriterConfig {
            writer_type,
            writer_name,
            resource,
            backend,
            subscription: need(c::ENV_SUBSCRIPTION)?,
            publish_topic: get(c::ENV_PUBLISH_TOPIC),
            dlq_topic: get(c::ENV_DLQ_TOPIC),
            kafka,
            pubsub: PubsubSettings {
                project: get(ENV_PUBSUB_PROJECT).or_else(|| get(ENV_GOOGLE_CLOUD_PROJECT)),
                endpoint: get(ENV_PUBSUB_ENDPOINT),
                ack_deadline: match get(ENV_PUBSUB_ACK_DEADLINE_SECONDS) {
                    None => None,
                    Some(v) => Some(
                        v.parse::<u64>()
                            .ok()
                            .filter(|s| (10..=600).contains(s))
                            .map(Duration::from_secs)
                            .ok_or(ConfigError::Invalid {
                                name: ENV_PUBSUB_ACK_DEADLINE_SECONDS,
                                value: v,
                                reason: "must be whole seconds from 10 to 600".into(),
                            })?,
                    ),
                },
                backlog_interval: backlog_interval(
                    get(ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS),
                    get(ENV_PUBSUB_ENDPOINT).is_some(),
                )?,
                monitoring_endpoint: get(ENV_MONITORING_ENDPOINT),
            },
            max_batch_size: number(c::ENV_MAX_BATCH_SIZE, 1000)?,
            batch_growth: match get(c::ENV_BATCH_GROWTH) {
                None => None,
                Some(_) => Some(number(c::ENV_BATCH_GROWTH, 1)?),
            },
            max_batch_bytes: number(c::ENV_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_BYTES)?,
            max_batch_wait: Duration::from_millis(number(ENV_MAX_BATCH_WAIT_MS, 50)? as u64),
            concurrency: number(c::ENV_CONCURRENCY, 64)?,
            http_addr,
            storage_cache_prefix: get(c::ENV_STORAGE_CACHE_PREFIX).unwrap_or_default(),
            redis_is_clustered: matches!(
                get(c::ENV_REDIS_IS_CLUSTERED).as_deref(),
                Some("1" | "true")
            ),
            stores_dir: get(ENV_STORES_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORES_DIR)),
            store_uri_file: get(c::ENV_STORE_URI_FILE).map(PathBuf::from),
            api_server_host: get(c::ENV_API_SERVER_HOST),
            upload_bucket: get(c::ENV_UPLOAD_BUCKET),
            query_table_write_drop_ratio: match get(c::ENV_QUERY_TABLE_WRITE_DROP_RATIO) {
                None => 0.0,
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or(ConfigError::Invalid {
                        name: c::ENV_QUERY_TABLE_WRITE_DROP_RATIO,
                        value: v,
                        reason: "must be a number from 0 to 1".into(),
                    })?,
            },
            skip_feature_metrics: matches!(
                get(c::ENV_SKIP_FEATURE_METRICS).as_deref(),
                Some("1" | "true")
            ),
            offline_store_db_type: get(c::ENV_OFFLINE_STORE_DB_TYPE),
            metadata_provider: get(c::ENV_METADATA_PROVIDER),
            snowflake_storage_integration: get(c::ENV_SNOWFLAKE_STORAGE_INTEGRATION),
            publish_acks: get(ENV_PUBLISH_ACKS),
            publish_exactly_once: get(ENV_PUBLISH_EXACTLY_ONCE),
            transactional_id: get(ENV_TRANSACTIONAL_ID),
            hostname: get(ENV_HOSTNAME),
            bigquery_endpoint: get(ENV_BIGQUERY_ENDPOINT),
            snowflake_endpoint: get(ENV_SNOWFLAKE_ENDPOINT),
            mirror: None,
        };
        if cfg.writer_type == WriterType::QueryMirrorConsumer {
            let host = cfg.api_server_host.as_deref();
            cfg.mirror = Some(MirrorSettings::from_vars(host, cfg.concurrency, vars)?);
        }
        Ok(cfg)
    }

    /// A store's connection URI: the file the operator mounted
    /// (`BGP_STORE_URI_FILE`), else `<stores_dir>/<store>_uri`, else for
    /// local runs the variable `BGP_<STORE>_URI`.
    pub fn store_uri(&self, store: &str) -> Result<String, ConfigError> {
        if let Some(file) = &self.store_uri_file {
            return read_secret_file(file).map(|s| s.trim().to_string());
        }
        let path = self.stores_dir.join(format!("{store}_uri"));
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let var = format!("BGP_{}_URI", store.to_uppercase());
                std::env::var(&var).map_err(|_| ConfigError::File { path, source: e })
            }
            Err(source) => Err(ConfigError::File { path, source }),
        }
    }
}

/// `BGP_PUBSUB_BACKLOG_INTERVAL_SECONDS`: 0 is off; unset is the default,
/// or off on the emulator.
fn backlog_interval(
    value: Option<String>,
    emulator: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else {
        return Ok((!emulator).then_some(DEFAULT_BACKLOG_INTERVAL));
    };
    match v.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(s) if s <= 3600 => Ok(Some(Duration::from_secs(s))),
        _ => Err(ConfigError::Invalid {
            name: ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS,
            value: v,
            reason: "must be whole seconds from 0 (off) to 3600".into(),
        }),
    }
}

/// A spec enum from its wire name.
fn enum_of<T: serde::de::DeserializeOwned>(
    name: &'static str,
    value: String,
) -> Result<T, ConfigError> {
    serde_json::from_value(serde_json::Value::String(value.clone())).map_err(|e| {
        ConfigError::Invalid {
            name,
            value,
            reason: e.to_string(),
        }
    })
}

fn kafka_settings(
    vars: &[(String, String)],
    get: &dyn Fn(&str) -> Option<String>,
    resource: &str,
    writer: &str,
) -> Result<KafkaSettings, ConfigError> {
    let bootstrap = get(c::ENV_KAFKA_BOOTSTRAP_SERVERS)
        .ok_or(ConfigError::Missing(c::ENV_KAFKA_BOOTSTRAP_SERVERS))?;
    // Users paste "host:9092, host2:9092"; librdkafka wants no blanks.
    let bootstrap_servers = bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    let group = get(c::ENV_KAFKA_CONSUMER_GROUP)
        .unwrap_or_else(|| format!("bgpersist.{resource}.{writer}"));
    let group_id = format!("{}{group}", get(ENV_KAFKA_GROUP_PREFIX).unwrap_or_default());
    let client_id = format!(
        "{}bgpersist-{writer}",
        get(ENV_KAFKA_CLIENT_ID_PREFIX).unwrap_or_default()
    );

    let mut properties = vec![("client.id".to_string(), client_id)];
    if let Some(p) = get(c::ENV_KAFKA_SECURITY_PROTOCOL) {
        properties.push(("security.protocol".into(), p.to_lowercase()));
    }
    if let Some(m) = get(c::ENV_KAFKA_SASL_MECHANISM) {
        properties.push(("sasl.mechanism".into(), m));
    }
    let oauth = kafka_oauth(get)?;
    // OAUTHBEARER authenticates with tokens, not a username and password.
    let sasl = oauth.is_none()
        && get(c::ENV_KAFKA_SECURITY_PROTOCOL)
            .is_some_and(|p| p.to_ascii_uppercase().starts_with("SASL_"));
    if let Some(dir) = get(c::ENV_KAFKA_SASL_DIR) {
        let dir = PathBuf::from(dir);
        let read = |name: &str| read_secret_file(&dir.join(name));
        // Credentials for a SASL protocol; an SSL-only secret carries TLS material alone.
        if sasl || (oauth.is_none() && dir.join(c::KAFKA_SASL_USERNAME_FILE).exists()) {
            properties.push(("sasl.username".into(), read(c::KAFKA_SASL_USERNAME_FILE)?));
            properties.push(("sasl.password".into(), read(c::KAFKA_SASL_PASSWORD_FILE)?));
        }
        // Optional TLS material mounted beside the credentials, as PEM content.
        for (file, key) in [
            (c::KAFKA_CA_FILE, "ssl.ca.pem"),
            (c::KAFKA_CERT_FILE, "ssl.certificate.pem"),
            (c::KAFKA_KEY_FILE, "ssl.key.pem"),
            (c::KAFKA_KEY_PASSWORD_FILE, "ssl.key.password"),
            (c::KAFKA_KEYSTORE_PASSWORD_FILE, "ssl.keystore.password"),
        ] {
            if dir.join(file).exists() {
                properties.push((key.into(), read(file)?));
            }
        }
    }
    let mut auto_offset_reset = "earliest".to_string();
    if let Some(json) = get(c::ENV_KAFKA_ARGS) {
        let args: std::collections::BTreeMap<String, String> = serde_json::from_str(&json)
            .map_err(|e| ConfigError::Invalid {
                name: c::ENV_KAFKA_ARGS,
                value: json.clone(),
                reason: format!("not a JSON object of strings: {e}"),
            })?;
        for (k, v) in args {
            // The consumer sets its start itself, after the shared properties.
            if k == "auto.offset.reset" {
                auto_offset_reset = v;
            } else {
                properties.push((k, v));
            }
        }
    }
    properties.extend(pass_through(vars));
    Ok(KafkaSettings {
        bootstrap_servers,
        group_id,
        properties,
        auto_offset_reset,
        oauth,
        keystore_location: get(c::ENV_KAFKA_SSL_KEYSTORE_LOCATION),
        truststore_location: get(c::ENV_KAFKA_SSL_TRUSTSTORE_LOCATION),
    })
}

/// The OAUTHBEARER token source the environment names (`kafka-token`).
pub fn kafka_oauth_from_env() -> Result<Option<KafkaOAuth>, ConfigError> {
    kafka_oauth(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// The OAUTHBEARER token source, when the mechanism is OAUTHBEARER. OIDC
/// needs its endpoint, client id and the client secret file; the file is
/// checked here so a missing one stops the writer at start.
fn kafka_oauth(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<KafkaOAuth>, ConfigError> {
    let mechanism = get(c::ENV_KAFKA_SASL_MECHANISM).unwrap_or_default();
    if !mechanism.eq_ignore_ascii_case("OAUTHBEARER") {
        return Ok(None);
    }
    let method =
        get(c::ENV_KAFKA_OAUTH_METHOD).ok_or(ConfigError::Missing(c::ENV_KAFKA_OAUTH_METHOD))?;
    match method.to_ascii_uppercase().as_str() {
        "OIDC" => {
            let token_url = get(c::ENV_KAFKA_OAUTH_TOKEN_URL)
                .ok_or(ConfigError::Missing(c::ENV_KAFKA_OAUTH_TOKEN_URL))?;
            if !(token_url.starts_with("https://") || token_url.starts_with("http://")) {
                return Err(ConfigError::Invalid {
                    name: c::ENV_KAFKA_OAUTH_TOKEN_URL,
                    value: token_url,
                    reason: "not an http(s) URL".into(),
                });
            }
            let client_id = get(c::ENV_KAFKA_OAUTH_CLIENT_ID)
                .ok_or(ConfigError::Missing(c::ENV_KAFKA_OAUTH_CLIENT_ID))?;
            let dir =
                get(c::ENV_KAFKA_SASL_DIR).ok_or(ConfigError::Missing(c::ENV_KAFKA_SASL_DIR))?;
            let client_secret_file = PathBuf::from(dir).join(c::KAFKA_CLIENT_SECRET_FILE);
            read_secret_file(&client_secret_file)?;
            Ok(Some(KafkaOAuth::Oidc {
                token_url,
                client_id,
                client_secret_file,
                scope: get(c::ENV_KAFKA_OAUTH_SCOPE),
            }))
        }
        "AWS_MSK_IAM" => Ok(Some(KafkaOAuth::MskIam {
            region: get(c::ENV_KAFKA_OAUTH_AWS_REGION),
        })),
        _ => Err(ConfigError::Invalid {
            name: c::ENV_KAFKA_OAUTH_METHOD,
            value: method,
            reason: "expected OIDC or AWS_MSK_IAM".into(),
        }),
    }
}

/// `BGP_KAFKA_CONF_*` pass-through, e.g. `BGP_KAFKA_CONF_SSL_CA_LOCATION`.
fn pass_through(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(KAFKA_CONF_PREFIX)
                .map(|rest| (rest.to_lowercase().replace('_', "."), v.clone()))
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        })
}

/// Test fixtures: environments as the operator renders them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// `pairs` as an environment.
    pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The least a writer of `writer_type` on Kafka needs.
    pub fn kafka_writer(writer_type: &str, name: &str) -> Result<WriterConfig, ConfigError> {
        WriterConfig::from_vars(&vars(&[
            (c::ENV_WRITER_TYPE, writer_type),
            (c::ENV_WRITER_NAME, name),
            (c::ENV_BUS_BACKEND, "KAFKA"),
            (c::ENV_SUBSCRIPTION, "result-bus"),
            (c::ENV_KAFKA_BOOTSTRAP_SERVERS, "k:9092"),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::vars;
    use super::*;

    fn base() -> Vec<(String, String)> {
        vars(&[
            (c::ENV_WRITER_TYPE, "ONLINE_WRITER"),
            (c::ENV_WRITER_NAME, "online"),
            (c::ENV_RESOURCE, "bp"),
            (c::ENV_BUS_BACKEND, "KAFKA"),
            (c::ENV_SUBSCRIPTION, "result-bus-1"),
            (c::ENV_KAFKA_BOOTSTRAP_SERVERS, "a:9092, b:9092"),
            (c::ENV_KAFKA_SECURITY_PROTOCOL, "SASL_SSL"),
            (c::ENV_KAFKA_SASL_MECHANISM, "SCRAM-SHA-512"),
        ])
    }

    #[test]
    fn reads_what_the_operator_renders() -> Result<(), ConfigError> {
        let c = WriterConfig::from_vars(&base())?;
        assert_eq!(c.writer_type, WriterType::OnlineWriter);
        assert_eq!(c.kafka.bootstrap_servers, "a:9092,b:9092");
        assert_eq!(c.kafka.group_id, "bgpersist.bp.online");
        assert!(
            c.kafka
                .properties
                .contains(&("security.protocol".into(), "sasl_ssl".into()))
        );
        assert!(
            c.kafka
                .properties
                .contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into()))
        );
        assert_eq!(c.max_batch_size, 1000);
        assert_eq!(c.max_batch_bytes, 4 << 20);
        let mut v = base();
        v.push(("BGP_KAFKA_CONF_FETCH_MIN_BYTES".into(), "4096".into()));
        let c = WriterConfig::from_vars(&v)?;
        assert!(
            c.kafka
                .properties
                .contains(&("fetch.min.bytes".into(), "4096".into()))
        );
        Ok(())
    }

    #[test]
    fn additional_kafka_args_are_applied_and_set_the_start() -> Result<(), ConfigError> {
        let c = WriterConfig::from_vars(&base())?;
        assert_eq!(c.kafka.auto_offset_reset, "earliest");
        let mut v = base();
        v.push((
            c::ENV_KAFKA_ARGS.into(),
            r#"{"compression.type":"zstd","auto.offset.reset":"latest"}"#.into(),
        ));
        let c = WriterConfig::from_vars(&v)?;
        assert_eq!(c.kafka.auto_offset_reset, "latest");
        assert!(
            c.kafka
                .properties
                .contains(&("compression.type".into(), "zstd".into()))
        );
        let mut v = base();
        v.push((c::ENV_KAFKA_ARGS.into(), "[1]".into()));
        let err = WriterConfig::from_vars(&v).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("BGP_KAFKA_ARGS=\"[1]\": not a JSON object")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn sasl_credentials_come_from_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("bgp-sasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("username"), "svc\n")?;
        std::fs::write(dir.join("password"), "s3cret")?;
        let mut v = base();
        v.push((c::ENV_KAFKA_SASL_DIR.into(), dir.display().to_string()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert!(
            cfg.kafka
                .properties
                .contains(&("sasl.username".into(), "svc".into()))
        );
        assert!(
            cfg.kafka
                .properties
                .contains(&("sasl.password".into(), "s3cret".into()))
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn oauthbearer_takes_its_token_source_and_no_username() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = std::env::temp_dir().join(format!("bgp-oauth-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(c::KAFKA_CLIENT_SECRET_FILE), "cs\n")?;
        let mut v = base();
        for (k, val) in [
            (c::ENV_KAFKA_SECURITY_PROTOCOL, "SASL_SSL"),
            (c::ENV_KAFKA_SASL_MECHANISM, "OAUTHBEARER"),
            (c::ENV_KAFKA_OAUTH_METHOD, "OIDC"),
            (c::ENV_KAFKA_OAUTH_TOKEN_URL, "https://idp.example/token"),
            (c::ENV_KAFKA_OAUTH_CLIENT_ID, "writers"),
            (c::ENV_KAFKA_OAUTH_SCOPE, "kafka"),
        ] {
            v.push((k.into(), val.into()));
        }
        v.push((c::ENV_KAFKA_SASL_DIR.into(), dir.display().to_string()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(
            cfg.kafka.oauth,
            Some(KafkaOAuth::Oidc {
                token_url: "https://idp.example/token".into(),
                client_id: "writers".into(),
                client_secret_file: dir.join(c::KAFKA_CLIENT_SECRET_FILE),
                scope: Some("kafka".into()),
            })
        );
        assert!(
            !cfg.kafka
                .properties
                .iter()
                .any(|(k, _)| k.starts_with("sasl.username")),
            "no username is read for OAUTHBEARER"
        );
        // The client secret file must be there at start.
        std::fs::remove_file(dir.join(c::KAFKA_CLIENT_SECRET_FILE))?;
        let err = WriterConfig::from_vars(&v)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            err.as_ref().is_err_and(|e| e.contains("client_secret")),
            "{err:?}"
        );
        let mut v = base();
        v.push((c::ENV_KAFKA_SASL_MECHANISM.into(), "OAUTHBEARER".into()));
        v.push((c::ENV_KAFKA_OAUTH_METHOD.into(), "AWS_MSK_IAM".into()));
        v.push((c::ENV_KAFKA_OAUTH_AWS_REGION.into(), "eu-west-1".into()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(
            cfg.kafka.oauth,
            Some(KafkaOAuth::MskIam {
                region: Some("eu-west-1".into())
            })
        );
        let mut v = base();
        v.push((c::ENV_KAFKA_SASL_MECHANISM.into(), "OAUTHBEARER".into()));
        let err = WriterConfig::from_vars(&v)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(err, Err("BGP_KAFKA_OAUTH_METHOD is not set".into()));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn errors_name_the_variable() {
        let mut v = base();
        v.retain(|(k, _)| k != c::ENV_SUBSCRIPTION);
        assert_eq!(
            WriterConfig::from_vars(&v)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err("BGP_SUBSCRIPTION is not set".into())
        );
        let mut v = base();
        v.push((c::ENV_WRITER_TYPE.into(), "FAX".into()));
        let err = WriterConfig::from_vars(&v)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.starts_with("BGP_WRITER_TYPE=\"FAX\"")),
            "{err:?}"
        );
        let mut v = base();
        v.push((c::ENV_MAX_BATCH_SIZE.into(), "0".into()));
        assert!(WriterConfig::from_vars(&v).is_err());
        let mut v = base();
        v.push((c::ENV_BATCH_GROWTH.into(), "0".into()));
        assert!(WriterConfig::from_vars(&v).is_err());
        let mut v = base();
        v.push((c::ENV_MAX_BATCH_BYTES.into(), "0".into()));
        assert!(WriterConfig::from_vars(&v).is_err());
        let mut v = base();
        v.push((c::ENV_MAX_BATCH_BYTES.into(), "262144".into()));
        assert_eq!(
            WriterConfig::from_vars(&v).map(|c| c.max_batch_bytes).ok(),
            Some(262_144)
        );
        let mut v = base();
        v.push((c::ENV_BATCH_GROWTH.into(), "4".into()));
        assert_eq!(
            WriterConfig::from_vars(&v).map(|c| c.batch_growth).ok(),
            Some(Some(4))
        );
        // The resource's growth wins over the writer type's.
        assert_eq!(
            WriterConfig::from_vars(&v).map(|c| c.batch_ceiling(8)).ok(),
            Some(4000)
        );
        assert_eq!(
            WriterConfig::from_vars(&base())
                .map(|c| c.batch_ceiling(8))
                .ok(),
            Some(8000)
        );
    }

    #[test]
    fn pubsub_settings() -> Result<(), ConfigError> {
        let mut v = base();
        v.push((c::ENV_BUS_BACKEND.into(), "PUBSUB".into()));
        v.push((ENV_GOOGLE_CLOUD_PROJECT.into(), "from-gke".into()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(cfg.pubsub.project.as_deref(), Some("from-gke"));
        assert_eq!(cfg.pubsub.ack_deadline, None);
        v.push((ENV_PUBSUB_PROJECT.into(), "p".into()));
        v.push((ENV_PUBSUB_ACK_DEADLINE_SECONDS.into(), "10".into()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(cfg.pubsub.project.as_deref(), Some("p"));
        assert_eq!(cfg.pubsub.ack_deadline, Some(Duration::from_secs(10)));
        for bad in ["9", "601", "ten"] {
            let mut v = v.clone();
            v.push((ENV_PUBSUB_ACK_DEADLINE_SECONDS.into(), bad.into()));
            assert!(WriterConfig::from_vars(&v).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn backlog_reads_default_to_a_minute_off_on_the_emulator_unless_set() -> Result<(), ConfigError>
    {
        let mut v = base();
        v.push((c::ENV_BUS_BACKEND.into(), "PUBSUB".into()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(cfg.pubsub.backlog_interval, Some(DEFAULT_BACKLOG_INTERVAL));
        v.push((ENV_PUBSUB_ENDPOINT.into(), "127.0.0.1:8085".into()));
        assert_eq!(WriterConfig::from_vars(&v)?.pubsub.backlog_interval, None);
        v.push((ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS.into(), "5".into()));
        v.push((ENV_MONITORING_ENDPOINT.into(), "http://127.0.0.1:1".into()));
        let cfg = WriterConfig::from_vars(&v)?;
        assert_eq!(cfg.pubsub.backlog_interval, Some(Duration::from_secs(5)));
        assert_eq!(
            cfg.pubsub.monitoring_endpoint.as_deref(),
            Some("http://127.0.0.1:1")
        );
        for (value, want) in [("0", None), ("3600", Some(Duration::from_secs(3600)))] {
            let mut v = v.clone();
            v.push((ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS.into(), value.into()));
            assert_eq!(WriterConfig::from_vars(&v)?.pubsub.backlog_interval, want);
        }
        for bad in ["3601", "-1", "soon"] {
            let mut v = v.clone();
            v.push((ENV_PUBSUB_BACKLOG_INTERVAL_SECONDS.into(), bad.into()));
            assert!(WriterConfig::from_vars(&v).is_err(), "{bad} accepted");
        }
        Ok(())
    }
}
