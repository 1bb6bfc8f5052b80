//! Cloud secrets: the read step of a reconcile fetches the secrets the spec
//! names (`kafka_sasl_secret`, `store_uri_secrets`) from AWS Secrets Manager
//! or GCP Secret Manager, parses them, and hands render their values and
//! versions. A secret that cannot be read keeps the value last synced into
//! the cluster. Nothing here logs, and no error or status message carries a
//! value: messages name the spec field and the cloud secret only.

mod aws;
mod gcp;
pub mod kubernetes;
pub mod parse;

pub use aws::AwsSecretsManager;
pub use gcp::GcpSecretManager;

use super::cache::{self, Caches};
use super::reasons;
use super::render::secret::{self, Slot};
use super::render::{SecretBytes, SecretEntry, SecretInputs};
use super::status::{SecretIssue, SecretsOutcome};
use super::{Error, FIELD_MANAGER, apply, metrics::Metrics};
use crate::contract as c;
use crate::crd::{BackgroundPersistence, SecretClient, SecretStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use futures::future::BoxFuture;

/// A secret's current value and version (AWS VersionId, GCP version number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretValue {
    /// `Debug` shows only the length.
    pub bytes: SecretBytes,
    pub version: String,
}

/// Why a cloud secret could not be used. Details come from the provider's
/// error code and message (which describe the request) or are fixed text;
/// never the secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("not found ({0})")]
    NotFound(String),
    #[error("access denied ({0})")]
    AccessDenied(String),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("not a valid secret name: {0}")]
    InvalidName(String),
    #[error("could not be read: {0}")]
    Unavailable(String),
}

impl SecretError {
    /// The Degraded condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SecretError::NotFound(_) => reasons::SECRET_NOT_FOUND,
            SecretError::AccessDenied(_) => reasons::SECRET_ACCESS_DENIED,
            SecretError::Malformed(_) => reasons::SECRET_MALFORMED,
            SecretError::InvalidName(_) => reasons::SECRET_NAME_INVALID,
            SecretError::Unavailable(_) => reasons::SECRET_UNAVAILABLE,
        }
    }
}

/// A secret manager. `fetch` returns a boxed future so sources can sit behind
/// `Arc<dyn SecretSource>` (an `async fn` in a trait is not object safe).
pub trait SecretSource: Send + Sync {
    /// Name for messages ("AWS Secrets Manager").
    fn provider(&self) -> &'static str;
    /// The current value and version of the secret `name`.
    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretValue, SecretError>>;
}

/// Longest a single fetch may take before it counts as unavailable.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable setting the refresh interval, in seconds.
pub const ENV_REFRESH_SECONDS: &str = "BGP_SECRET_REFRESH_SECONDS";

/// Where cloud secrets are read from and how often they are re-read: a value
/// is fetched again once `refresh` has passed or the resource's spec changed
/// (its generation), and the controller requeues a resource that uses cloud
/// secrets every `refresh`.
#[derive(Clone)]
pub struct SecretSettings {
    pub aws: Arc<dyn SecretSource>,
    pub gcp: Arc<dyn SecretSource>,
    pub refresh: Duration,
    cache: Arc<Mutex<HashMap<CacheKey, Cached>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    uid: String,
    client: &'static str,
    name: String,
}

struct Cached {
    at: Instant,
    generation: Option<i64>,
    value: SecretValue,
}

impl std::fmt::Debug for SecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSettings")
            .field("aws", &self.aws.provider())
            .field("gcp", &self.gcp.provider())
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl SecretSettings {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

    pub fn new(aws: Arc<dyn SecretSource>, gcp: Arc<dyn SecretSource>) -> Self {
        SecretSettings {
            aws,
            gcp,
            refresh: Self::DEFAULT_REFRESH,
            cache: Arc::default(),
        }
    }

    /// The real managers (default credential chains), with endpoint, project
    /// and refresh overrides from the environment (see docs/secrets.md).
    pub fn from_env() -> Self {
        let refresh = std::env::var(ENV_REFRESH_SECONDS)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Self::DEFAULT_REFRESH);
        Self::new(
            Arc::new(AwsSecretsManager::from_env()),
            Arc::new(GcpSecretManager::from_env()),
        )
        .with_refresh(refresh)
    }

    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// The cloud manager behind `client`; None for Kubernetes Secrets,
    /// which are read through the operator's own client (`kubernetes.rs`).
    fn source(&self, client: SecretClient) -> Option<&dyn SecretSource> {
        match client {
            SecretClient::Aws => Some(self.aws.as_ref()),
            SecretClient::Gcp => Some(self.gcp.as_ref()),
            SecretClient::Kubernetes => None,
        }
    }

    fn provider(&self, client: SecretClient) -> &'static str {
        self.source(client)
            .map_or(kubernetes::PROVIDER, |s| s.provider())
    }

    /// The secret's value: cached while younger than `refresh` and fetched for
    /// the same generation, else fetched now.
    async fn fetch(
        &self,
        bp: &BackgroundPersistence,
        client: SecretClient,
        name: &str,
    ) -> Result<SecretValue, SecretError> {
        let Some(source) = self.source(client) else {
            return Err(SecretError::Unavailable(
                "not a cloud secret manager".into(),
            ));
        };
        let key = CacheKey {
            uid: bp.metadata.uid.clone().unwrap_or_default(),
            client: source.provider(),
            name: name.to_string(),
        };
        // Requeues fire at `refresh`, so allow a little early.
        let fresh_for = self.refresh.saturating_sub(self.refresh / 10);
        if let Ok(cache) = self.cache.lock()
            && let Some(c) = cache.get(&key)
            && c.generation == bp.metadata.generation
            && c.at.elapsed() < fresh_for
        {
            return Ok(c.value.clone());
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, source.fetch(name))
            .await
            .unwrap_or_else(|_| {
                Err(SecretError::Unavailable(format!(
                    "no answer within {} s",
                    FETCH_TIMEOUT.as_secs()
                )))
            });
        if let Ok(mut cache) = self.cache.lock() {
            let keep_for = (self.refresh * 2).max(Duration::from_secs(60));
            cache.retain(|_, c| c.at.elapsed() < keep_for);
            match &fetched {
                Ok(value) => {
                    cache.insert(
                        key,
                        Cached {
                            at: Instant::now(),
                            generation: bp.metadata.generation,
                            value: value.clone(),
                        },
                    );
                }
                Err(_) => {
                    cache.remove(&key);
                }
            }
        }
        fetched
    }
}

/// What the read step learned about a resource's cloud secrets.
#[derive(Debug, Default)]
pub struct SecretsRead {
    /// Values and versions for render.
    pub inputs: SecretInputs,
    /// Versions applied and secrets that failed, for status.
    pub outcome: SecretsOutcome,
    /// The synced Secrets as they are in the cluster, by name.
    pub live: BTreeMap<String, Secret>,
    /// The Secret names the spec calls for (never pruned).
    pub keep: Vec<String>,
}

/// Whether the resource uses any cloud secret.
pub fn uses_cloud_secrets(bp: &BackgroundPersistence) -> bool {
    !secret::wanted(bp).is_empty()
}

/// The read step: fetches every cloud secret the spec names and reads the
/// Secrets they were last synced into (from the watch cache when ready). A
/// secret that cannot be fetched or parsed is reported and keeps its last
/// synced value and version.
pub async fn read(
    bp: &BackgroundPersistence,
    settings: &SecretSettings,
    client: &Client,
    caches: &Caches,
) -> Result<SecretsRead, Error> {
    let resource = bp.name_any();
    let ns = &bp.spec.common_persistence_specs.namespace;
    let wanted = secret::wanted(bp);
    let mut out = SecretsRead {
        keep: secret::secret_names(bp, &resource),
        ..Default::default()
    };
    let Some(client_kind) = bp.spec.common_persistence_specs.secret_client else {
        // Validation refuses this spec before the read step runs.
        return Ok(out);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in &out.keep {
        let live = cache::lookup(caches.secrets.as_ref(), Some(ns), name);
        if let Some(s) = live.or_get(&api, name).await? {
            out.live.insert(name.clone(), s);
        }
    }
    let provider = settings.provider(client_kind);
    for (slot, cloud_secret) in wanted {
        let secret_name = slot.secret_name(&resource);
        let value = match client_kind {
            // Read on every reconcile, uncached: the watch on Secrets
            // triggers one when the source changes.
            SecretClient::Kubernetes => kubernetes::fetch(client, ns, &cloud_secret, slot).await,
            _ => settings.fetch(bp, client_kind, &cloud_secret).await,
        };
        let fetched = value.and_then(|v| parse::entry(slot, &cloud_secret, &v));
        let entry = match fetched {
            Ok(entry) => Some(entry),
            Err(e) => {
                let kept = live_entry(out.live.get(&secret_name), slot);
                let keeping = match &kept {
                    Some(k) => format!(
                        "the writers keep the last synced version {} in Secret {secret_name}",
                        k.version
                    ),
                    None => format!("Secret {secret_name} has no synced value yet"),
                };
                out.outcome.failures.push(SecretIssue {
                    reason: e.reason(),
                    message: format!(
                        "spec.{}: cloud secret {cloud_secret:?} in {provider}: {e}; {keeping}",
                        slot.field()
                    ),
                });
                kept
            }
        };
        out.outcome.applied.push(SecretStatus {
            name: slot.field(),
            cloud_secret: entry
                .as_ref()
                .map(|e| e.cloud_secret.clone())
                .unwrap_or_else(|| cloud_secret.clone()),
            secret: secret_name,
            version: entry.as_ref().map(|e| e.version.clone()),
        });
        if let Some(entry) = entry {
            out.inputs.entries.insert(slot, entry);
        }
    }
    Ok(out)
}

/// The values and versions last synced into the cluster (`live`, by Secret
/// name), as render takes them: what the operator renders while the secret
/// managers answer as before (`kubectl bgpersist diff` reads no manager).
pub fn last_synced(bp: &BackgroundPersistence, live: &BTreeMap<String, Secret>) -> SecretInputs {
    let resource = bp.name_any();
    let mut inputs = SecretInputs::default();
    for (slot, _) in secret::wanted(bp) {
        if let Some(entry) = live_entry(live.get(&slot.secret_name(&resource)), slot) {
            inputs.entries.insert(slot, entry);
        }
    }
    inputs
}

/// The value a slot was last synced with, read back from its live Secret.
fn live_entry(live: Option<&Secret>, slot: Slot) -> Option<SecretEntry> {
    let live = live?;
    let annotations = live.metadata.annotations.as_ref()?;
    let cloud_secret = annotations.get(&slot.cloud_secret_annotation())?.clone();
    let version = annotations.get(&slot.version_annotation())?.clone();
    let data = live.data.as_ref()?;
    let out: BTreeMap<String, SecretBytes> = slot
        .keys()
        .into_iter()
        .filter_map(|key| Some((key.to_string(), SecretBytes::new(data.get(key)?.0.clone()))))
        .collect();
    // Half a pair (a username without its password) is not a usable value.
    if out.is_empty()
        || c::KAFKA_SECRET_PAIRS
            .iter()
            .any(|(a, b)| out.contains_key(*a) != out.contains_key(*b))
    {
        return None;
    }
    Some(SecretEntry {
        cloud_secret,
        version,
        data: out,
    })
}

/// Applies a rendered Secret unless the live one already holds exactly its
/// keys and values. Returns whether a write was sent.
pub async fn ensure(
    api: &Api<Secret>,
    desired: &Secret,
    live: Option<&Secret>,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let name = desired
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    if let Some(live) = live {
        let keys = |s: &Secret| -> Vec<String> {
            s.data
                .as_ref()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default()
        };
        let serialize = |s: &Secret| {
            serde_json::to_value(s).map_err(|source| Error::Serialize {
                object: name.clone(),
                source,
            })
        };
        if keys(live) == keys(desired) && apply::contains(&serialize(live)?, &serialize(desired)?) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    metrics.api_write();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_category() {
        let cases = [
            (SecretError::NotFound("x".into()), "SecretNotFound"),
            (SecretError::AccessDenied("x".into()), "SecretAccessDenied"),
            (SecretError::Malformed("x".into()), "SecretMalformed"),
            (SecretError::InvalidName("x".into()), "SecretNameInvalid"),
            (SecretError::Unavailable("x".into()), "SecretUnavailable"),
        ];
        for (e, reason) in cases {
            assert_eq!(e.reason(), reason);
        }
    }

    #[test]
    fn live_entry_needs_annotations_and_every_key() {
        use k8s_openapi::ByteString;
        let mut s = Secret::default();
        s.metadata.annotations = Some(BTreeMap::from([
            (
                Slot::KafkaSasl.cloud_secret_annotation(),
                "kafka/creds".into(),
            ),
            (Slot::KafkaSasl.version_annotation(), "v7".into()),
        ]));
        s.data = Some(BTreeMap::from([(
            "username".to_string(),
            ByteString(b"u".to_vec()),
        )]));
        assert_eq!(live_entry(Some(&s), Slot::KafkaSasl), None, "no password");
        if let Some(d) = s.data.as_mut() {
            d.insert("password".into(), ByteString(b"p".to_vec()));
        }
        let e = live_entry(Some(&s), Slot::KafkaSasl);
        assert_eq!(
            e.map(|e| (e.cloud_secret, e.version, e.data.len())),
            Some(("kafka/creds".into(), "v7".into(), 2))
        );
        assert_eq!(
            live_entry(Some(&s), Slot::StoreUri(crate::crd::StoreKind::OnlineStore)),
            None
        );
    }
}

#[cfg(test)]
mod status_tests {
    use crate::operator::status::{
        DEGRADED, READY, SecretIssue, SecretsOutcome, StatusInputs, compute,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_failed_secret_degrades_with_its_reason_and_shows_applied_versions() {
        let outcome = SecretsOutcome {
            applied: vec![crate::crd::SecretStatus {
                name: "kafka_sasl_secret".into(),
                cloud_secret: "kafka/creds".into(),
                secret: "bp-kafka-sasl".into(),
                version: Some("v1".into()),
            }],
            failures: vec![SecretIssue {
                reason: "SecretNotFound",
                message: "spec.kafka_sasl_secret: cloud secret \"kafka/creds\" ...".into(),
            }],
        };
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let s = compute(StatusInputs {
            secrets: &outcome,
            ..StatusInputs::new(Some(1), &now)
        });
        let by = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(by(DEGRADED), Some(("True".into(), "SecretNotFound".into())));
        assert_eq!(by(READY), Some(("False".into(), "SecretNotFound".into())));
        assert_eq!(s.secrets, outcome.applied);
    }
}
