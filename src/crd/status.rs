use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written by the operator only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BackgroundPersistenceStatus {
    /// The `metadata.generation` this status describes. camelCase, unlike the
    /// spec: kstatus (Flux, kpt, cli-utils) and Argo CD read this name.
    #[serde(
        default,
        rename = "observedGeneration",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, each with reason, message and
    /// observedGeneration; Reconciling and Stalled mirror Progressing and
    /// Degraded under the names kstatus reads (abnormal-true).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Writers ready out of desired, e.g. "2/3" (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers_ready: Option<String>,
    /// One entry per writer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub writers: Vec<WriterStatus>,
    /// One entry per cloud secret the spec names: the version applied, never the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub secrets: Vec<SecretStatus>,
}

/// The cloud secret version synced into a Kubernetes Secret for the writers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretStatus {
    /// The spec field naming the cloud secret ("kafka_sasl_secret", "store_uri_secrets.online_store").
    pub name: String,
    /// The cloud secret the applied version came from.
    pub cloud_secret: String,
    /// The Kubernetes Secret, in the writers' namespace, holding it.
    pub secret: String,
    /// The cloud secret's version last applied (AWS VersionId, GCP version number); unset until one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What the operator last applied for one writer and how far it has rolled out.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WriterStatus {
    /// The writer's name in the spec.
    pub name: String,
    /// The Deployment's name in the target namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Replicas the operator (or the autoscaler) asks for.
    pub desired_replicas: i32,
    /// Replicas whose /readyz answers (the writer reached its bus and its store writes succeed).
    pub ready_replicas: i32,
    /// The image the writer runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The KEDA ScaledObject scaling this writer, when autoscaled (desired replicas are then the autoscaler's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_object: Option<String>,
    /// Hash of the writer's rendered pod template; changes when a rollout is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Why the writer is not applied, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
