//! The Kubernetes Secrets synced from cloud secrets (`kafka_sasl_secret`,
//! `store_uri_secrets`), rendered from values the read step fetched, so render
//! stays pure. Values live only in the rendered Secret's `data`: `Debug`
//! redacts them, and only versions reach a writer's config hash.

use super::names::{kafka_sasl_secret_name, stores_secret_name};
use super::{RenderError, labels};
use crate::contract as c;
use crate::crd::{BackgroundPersistence, BusBackend, StoreKind};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Annotation on a synced Secret naming, per slot, the cloud secret it came from.
pub const ANNOTATION_CLOUD_SECRET: &str = "bgpersist.dev/cloud-secret.";
/// Annotation on a synced Secret giving, per slot, the cloud secret's version.
pub const ANNOTATION_VERSION: &str = "bgpersist.dev/version.";

/// One cloud secret a resource can use, and where its value goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// `kafka_sasl_secret`: `username` and `password` in `<resource>-kafka-sasl`.
    KafkaSasl,
    /// `store_uri_secrets.<store>`: one file in `<resource>-stores`.
    StoreUri(StoreKind),
}

impl Slot {
    /// The spec field naming the cloud secret, as users write it.
    pub fn field(self) -> String {
        match self {
            Slot::KafkaSasl => "kafka_sasl_secret".into(),
            Slot::StoreUri(k) => format!("store_uri_secrets.{}", k.uri_secret_key().unwrap_or("")),
        }
    }

    /// Short identifier, used in annotation names.
    pub fn id(self) -> &'static str {
        match self {
            Slot::KafkaSasl => "kafka_sasl",
            Slot::StoreUri(k) => k.uri_secret_key().unwrap_or("store"),
        }
    }

    /// The Kubernetes Secret the slot is synced into.
    pub fn secret_name(self, resource: &str) -> String {
        match self {
            Slot::KafkaSasl => kafka_sasl_secret_name(resource),
            Slot::StoreUri(_) => stores_secret_name(resource),
        }
    }

    /// The keys the slot may write in its Secret: the Kafka credentials and
    /// TLS files (each optional: the parser checks what goes together), or
    /// the store's URI file.
    pub fn keys(self) -> Vec<&'static str> {
        match self {
            Slot::KafkaSasl => c::KAFKA_SECRET_FILES.to_vec(),
            Slot::StoreUri(k) => store_uri_file(k).into_iter().collect(),
        }
    }

    pub fn cloud_secret_annotation(self) -> String {
        format!("{ANNOTATION_CLOUD_SECRET}{}", self.id())
    }

    pub fn version_annotation(self) -> String {
        format!("{ANNOTATION_VERSION}{}", self.id())
    }
}

/// The file (and Secret key) holding a store's URI.
pub fn store_uri_file(kind: StoreKind) -> Option<&'static str> {
    match kind {
        StoreKind::OnlineStore => Some(c::ONLINE_STORE_URI_FILE),
        StoreKind::OfflineStore => Some(c::OFFLINE_STORE_URI_FILE),
        StoreKind::MetricsStore => Some(c::METRICS_STORE_URI_FILE),
        StoreKind::UsageStore => Some(c::USAGE_STORE_URI_FILE),
        StoreKind::VectorStore => Some(c::VECTOR_STORE_URI_FILE),
        StoreKind::MetricsBus | StoreKind::QueryMirror => None,
    }
}

/// Whether the writers mount the Kafka SASL Secret.
pub fn kafka_sasl_wanted(bp: &BackgroundPersistence) -> bool {
    bp.spec.common_persistence_specs.bus_backend == BusBackend::Kafka
        && bp
            .spec
            .kafka_sasl_secret
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
}

/// The store URI file a writer of `store` mounts, when the spec names a secret for it.
pub fn store_mount(bp: &BackgroundPersistence, store: StoreKind) -> Option<&'static str> {
    bp.spec
        .store_uri_secrets
        .as_ref()
        .and_then(|s| s.for_store(store))
        .and_then(|_| store_uri_file(store))
}

/// The slots the spec uses, each with the cloud secret it names. A store's
/// secret counts only while some writer writes that store.
pub fn wanted(bp: &BackgroundPersistence) -> Vec<(Slot, String)> {
    let mut out = Vec::new();
    if kafka_sasl_wanted(bp)
        && let Some(name) = bp.spec.kafka_sasl_secret.as_deref()
    {
        out.push((Slot::KafkaSasl, name.trim().to_string()));
    }
    if let Some(stores) = &bp.spec.store_uri_secrets {
        for kind in StoreKind::WITH_URI {
            let used = bp
                .spec
                .writers
                .iter()
                .any(|w| w.bus_subscriber_type.kind().store == kind);
            if let Some(name) = stores.for_store(kind).filter(|_| used) {
                out.push((Slot::StoreUri(kind), name.trim().to_string()));
            }
        }
    }
    out
}

/// The Secret names the spec calls for: kept from pruning even when nothing
/// could be rendered for them this time.
pub fn secret_names(bp: &BackgroundPersistence, resource: &str) -> Vec<String> {
    let mut names: Vec<String> = wanted(bp)
        .iter()
        .map(|(slot, _)| slot.secret_name(resource))
        .collect();
    names.dedup();
    names
}

/// Bytes of a secret value. `Debug` shows only their length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }
    /// The value itself: only for writing it into a Secret (or a test's assertion).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A cloud secret's value, as the keys of its Secret, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEntry {
    /// The cloud secret the value came from.
    pub cloud_secret: String,
    /// Its version (AWS VersionId, GCP version number).
    pub version: String,
    /// Secret key → value.
    pub data: BTreeMap<String, SecretBytes>,
}

/// What render knows about cloud secrets: per slot, the value to write. A
/// slot is absent when neither the cloud nor the cluster has a value for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretInputs {
    pub entries: BTreeMap<Slot, SecretEntry>,
}

impl SecretInputs {
    pub fn version(&self, slot: Slot) -> Option<&str> {
        self.entries.get(&slot).map(|e| e.version.as_str())
    }
}

/// A rendered Secret and the slots it carries. `Debug` redacts the values.
#[derive(Clone)]
pub struct RenderedSecret {
    pub name: String,
    pub slots: Vec<Slot>,
    pub secret: Secret,
}

impl std::fmt::Debug for RenderedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self
            .secret
            .data
            .as_ref()
            .map(|d| d.keys().collect())
            .unwrap_or_default();
        f.debug_struct("RenderedSecret")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// Renders one Secret per name for the wanted slots that have a value.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    owner: &OwnerReference,
    inputs: &SecretInputs,
) -> Result<Vec<RenderedSecret>, RenderError> {
    let mut by_name: BTreeMap<String, Vec<(Slot, &SecretEntry)>> = BTreeMap::new();
    for (slot, _) in wanted(bp) {
        if let Some(entry) = inputs.entries.get(&slot) {
            by_name
                .entry(slot.secret_name(resource))
                .or_default()
                .push((slot, entry));
        }
    }
    let ns = bp.spec.common_persistence_specs.namespace.clone();
    let mut out = Vec::new();
    for (name, slots) in by_name {
        let mut data = BTreeMap::new();
        let mut annotations = BTreeMap::new();
        for (slot, entry) in &slots {
            let keys = slot.keys();
            if !keys.iter().any(|k| entry.data.contains_key(*k)) {
                return Err(RenderError::SecretKeyMissing {
                    field: slot.field(),
                    key: keys.first().copied().unwrap_or_default(),
                });
            }
            for key in keys {
                if let Some(value) = entry.data.get(key) {
                    data.insert(key.to_string(), ByteString(value.expose().to_vec()));
                }
            }
            annotations.insert(slot.cloud_secret_annotation(), entry.cloud_secret.clone());
            annotations.insert(slot.version_annotation(), entry.version.clone());
        }
        out.push(RenderedSecret {
            name: name.clone(),
            slots: slots.iter().map(|(s, _)| *s).collect(),
            secret: Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    labels: Some(labels::common(resource)),
                    annotations: Some(annotations),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::render::fixtures::{resolved, seed, seed_with};
    use crate::operator::render::{Rendered, RenderedWriter, render, render_with_secrets};
    use serde_json::json;

    const METRICS: Slot = Slot::StoreUri(StoreKind::MetricsStore);

    fn with_store_secret() -> BackgroundPersistence {
        seed_with(json!({"store_uri_secrets": {
            "metrics_store": "bgp/metrics-uri",
            "online_store": "bgp/online-uri"
        }}))
    }

    fn entry(cloud: &str, version: &str, data: &[(&str, &str)]) -> SecretEntry {
        SecretEntry {
            cloud_secret: cloud.into(),
            version: version.into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn keda_authenticates_with_the_files_the_kafka_secret_holds() {
        let bp = seed_with(json!({
            "kafka_security_protocol": "SSL", "kafka_sasl_mechanism": null,
            "writers": [{"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
                "autoscaling": {"max_replicas": 4}}]
        }));
        let pem = "-----BEGIN CERTIFICATE-----";
        let mtls = SecretInputs {
            entries: BTreeMap::from([(
                Slot::KafkaSasl,
                entry(
                    "kafka/user",
                    "v1",
                    &[("ca.pem", pem), ("cert.pem", pem), ("key.pem", pem)],
                ),
            )]),
        };
        let r = rendered(&bp, &mtls);
        let auth = r.writers[0]
            .autoscaling
            .as_ref()
            .and_then(|a| a.trigger_authentication.as_ref())
            .map(|t| t.data["spec"]["secretTargetRef"].clone())
            .unwrap_or_default();
        let parameters: Vec<&str> = auth
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["parameter"].as_str())
            .collect();
        assert_eq!(parameters, ["ca", "cert", "key"], "{auth}");
    }

    fn inputs(sasl_version: &str, metrics_version: &str, password: &str) -> SecretInputs {
        SecretInputs {
            entries: BTreeMap::from([
                (
                    Slot::KafkaSasl,
                    entry(
                        "<your aws kafka auth secret here>",
                        sasl_version,
                        &[("username", "kafka-user-value"), ("password", password)],
                    ),
                ),
                (
                    METRICS,
                    entry(
                        "bgp/metrics-uri",
                        metrics_version,
                        &[("metrics_store_uri", "postgres://m:pw-value@db/metrics")],
                    ),
                ),
            ]),
        }
    }

    fn rendered(bp: &BackgroundPersistence, inputs: &SecretInputs) -> Rendered {
        render_with_secrets(bp, &resolved(bp), inputs).unwrap_or_else(|e| panic!("render: {e}"))
    }

    fn hashes(r: &Rendered) -> Vec<String> {
        r.writers.iter().map(|w| w.config_hash.clone()).collect()
    }

    fn pod(w: &RenderedWriter) -> k8s_openapi::api::core::v1::PodSpec {
        w.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default()
    }

    #[test]
    fn wanted_follows_the_bus_and_the_writers_stores() {
        let bp = with_store_secret();
        assert_eq!(
            wanted(&bp),
            vec![
                (Slot::KafkaSasl, "<your aws kafka auth secret here>".into()),
                (METRICS, "bgp/metrics-uri".into())
            ],
            "no writer writes the online store, so its secret is not read"
        );
        let pubsub = seed_with(json!({"common_persistence_specs": {"bus_backend": "PUBSUB"}}));
        assert_eq!(wanted(&pubsub), vec![], "no SASL off Kafka");
        assert_eq!(
            secret_names(&bp, "bp"),
            vec!["bp-kafka-sasl".to_string(), "bp-stores".to_string()]
        );
    }

    #[test]
    fn no_values_no_secret_objects_but_the_mounts_stay() {
        let bp = with_store_secret();
        let r = render(&bp, &resolved(&bp)).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.secrets.is_empty());
        let volumes: Vec<String> = pod(&r.writers[0])
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(volumes, ["tmp", "kafka-sasl", "stores"]);
    }

    #[test]
    fn secrets_render_owned_labelled_and_annotated_with_versions() {
        let bp = with_store_secret();
        let r = rendered(&bp, &inputs("v1", "m1", "pw-1"));
        let names: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "background-persistence-kafka-sasl",
                "background-persistence-stores"
            ]
        );
        let owner = crate::operator::render::owner_reference(&bp).ok();
        for s in &r.secrets {
            let m = &s.secret.metadata;
            assert_eq!(m.namespace.as_deref(), Some("background-persistence"));
            assert_eq!(
                m.owner_references.as_ref().and_then(|o| o.first().cloned()),
                owner
            );
            assert_eq!(
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(labels::LABEL_RESOURCE))
                    .map(String::as_str),
                Some("background-persistence")
            );
            assert_eq!(s.secret.type_.as_deref(), Some("Opaque"));
        }
        let sasl = &r.secrets[0].secret;
        let data = sasl.data.clone().unwrap_or_default();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["password", "username"]
        );
        assert_eq!(
            data.get("password").map(|b| b.0.as_slice()),
            Some(&b"pw-1"[..])
        );
        let ann = sasl.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            ann.get("bgpersist.dev/version.kafka_sasl")
                .map(String::as_str),
            Some("v1")
        );
        assert_eq!(
            ann.get("bgpersist.dev/cloud-secret.kafka_sasl")
                .map(String::as_str),
            Some("<your aws kafka auth secret here>")
        );
        let stores = &r.secrets[1].secret;
        assert_eq!(
            stores
                .data
                .as_ref()
                .map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["metrics_store_uri".to_string()])
        );
        assert_eq!(
            stores
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("bgpersist.dev/version.metrics_store"))
                .map(String::as_str),
            Some("m1")
        );
    }

    #[test]
    fn store_uri_is_mounted_only_into_writers_of_that_store() {
        let bp = with_store_secret();
        let r = rendered(&bp, &inputs("v1", "m1", "pw-1"));
        // GO_METRICS_BUS_WRITER writes the metrics store; GO_RESULT_BUS_METRICS_WRITER the metrics bus.
        let metrics_writer = pod(&r.writers[0]);
        let stores = metrics_writer
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "stores")
            .and_then(|v| v.secret)
            .unwrap_or_default();
        assert_eq!(
            stores.secret_name.as_deref(),
            Some("background-persistence-stores")
        );
        let items: Vec<(String, String)> = stores
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            items,
            [(
                "metrics_store_uri".to_string(),
                "metrics_store_uri".to_string()
            )],
            "only its own store's key"
        );
        let c0 = &metrics_writer.containers[0];
        assert!(
            c0.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == c::STORES_MOUNT && m.read_only == Some(true))
        );
        let env: Vec<(String, Option<String>)> = c0
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert!(env.contains(&(
            c::ENV_STORE_URI_FILE.into(),
            Some("/etc/bgpersist/stores/metrics_store_uri".into())
        )));

        let bus_writer = pod(&r.writers[1]);
        assert!(
            !bus_writer
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "stores")
        );
        assert!(
            !bus_writer.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name == c::ENV_STORE_URI_FILE)
        );
    }

    #[test]
    fn a_new_version_rolls_only_the_writers_that_mount_it() {
        let bp = with_store_secret();
        let base = hashes(&rendered(&bp, &inputs("v1", "m1", "pw-1")));
        assert_eq!(
            hashes(&rendered(&bp, &inputs("v1", "m1", "pw-1"))),
            base,
            "stable"
        );
        let store_rotated = hashes(&rendered(&bp, &inputs("v1", "m2", "pw-1")));
        assert_ne!(store_rotated[0], base[0], "the metrics-store writer rolls");
        assert_eq!(store_rotated[1], base[1], "the metrics-bus writer does not");
        let sasl_rotated = hashes(&rendered(&bp, &inputs("v2", "m1", "pw-1")));
        assert_ne!(sasl_rotated[0], base[0]);
        assert_ne!(sasl_rotated[1], base[1], "every Kafka writer mounts SASL");
        // The hash follows versions, never values.
        assert_eq!(
            hashes(&rendered(&bp, &inputs("v1", "m1", "pw-other"))),
            base
        );

        // Without secrets, the hash is the pod spec's alone, as before.
        let plain = seed_with(json!({"kafka_sasl_secret": null}));
        let r = rendered(&plain, &inputs("v9", "m9", "pw-1"));
        assert_eq!(
            hashes(&r),
            hashes(&rendered(&plain, &SecretInputs::default()))
        );
    }

    #[test]
    fn values_never_reach_deployments_or_debug_output() {
        let bp = with_store_secret();
        let r = rendered(&bp, &inputs("v1", "m1", "pw-value"));
        let deployments =
            serde_json::to_string(&r.writers.iter().map(|w| &w.deployment).collect::<Vec<_>>())
                .unwrap_or_default();
        let debug = format!("{r:?}");
        for text in [&deployments, &debug] {
            for value in ["pw-value", "kafka-user-value", "postgres://m:"] {
                assert!(!text.contains(value), "{value} leaked");
            }
        }
        assert!(debug.contains("background-persistence-kafka-sasl"));
    }

    #[test]
    fn store_secrets_need_a_secret_client() {
        let bp = seed_with(json!({
            "kafka_sasl_secret": null,
            "common_persistence_specs": {"secret_client": null},
            "store_uri_secrets": {"metrics_store": "x"}
        }));
        let v = crate::operator::validate::validate(&bp);
        assert!(
            v.fatal()
                .any(|p| p.field == "common_persistence_specs.secret_client"
                    && p.reason.contains("store_uri_secrets")),
            "{:?}",
            v.problems
        );
        assert!(
            seed().spec.store_uri_secrets.is_none(),
            "the seed is unchanged"
        );
    }
}
