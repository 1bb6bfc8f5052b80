use super::catalog::{BusField, ImageField, StoreKind, WriterType};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state: the bus, shared topic/subscription IDs and images, the Kafka
/// and secret settings, and the writers to run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bgpersist.dev",
    version = "v1alpha1",
    kind = "BackgroundPersistence",
    shortname = "bp",
    status = "super::BackgroundPersistenceStatus",
    category = "bgpersist",
    printcolumn = r#"{"name":"Bus","type":"string","jsonPath":".spec.common_persistence_specs.bus_backend"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.common_persistence_specs.namespace"}"#,
    printcolumn = r#"{"name":"Writers","type":"string","jsonPath":".status.writers_ready"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Background persistence: writers that consume query results, metrics, usage events and query logs from Kafka or Google Pub/Sub and persist them into online, offline, metrics, usage and vector stores. The operator runs one Deployment per writer in spec.common_persistence_specs.namespace, with a ServiceAccount and the secrets they mount; status reports each writer's rollout and Ready, Progressing, Degraded, Reconciling and Stalled conditions."
)]
pub struct BackgroundPersistenceSpec {
    /// Bus backend, namespace, identity, images and the topic/subscription IDs shared by the writers.
    pub common_persistence_specs: CommonPersistenceSpecs,
    /// Host name of the API server that QUERY_MIRROR_CONSUMER replays queries against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_host: Option<String>,
    /// Name of the cloud secret (in the `secret_client` manager) holding the Kafka SASL credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_sasl_secret: Option<String>,
    /// Kafka bootstrap servers, comma separated (`host:port, host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub kafka_bootstrap_servers: Option<String>,
    /// Kafka security protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_security_protocol: Option<KafkaSecurityProtocol>,
    /// Kafka SASL mechanism; PLAIN when a SASL protocol names none (seed 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// A PKCS#12 keystore for brokers that want a client certificate, as an
    /// `s3://` or `gs://` URI (seed 000); its password is the Kafka secret's
    /// `ssl_keystore_password`. The writers fetch it at start with their own
    /// cloud identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^(s3|s3a|gs)://[^/\s]+/\S+$"))]
    pub ssl_keystore_location: Option<String>,
    /// A PEM bundle of the CAs that sign the brokers' certificates, as an
    /// `s3://` or `gs://` URI (bgpersist extension; the Kafka secret's
    /// `ssl_ca_pem` is the other way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^(s3|s3a|gs)://[^/\s]+/\S+$"))]
    pub ssl_truststore_location: Option<String>,
    /// Where OAUTHBEARER tokens come from; required with kafka_sasl_mechanism OAUTHBEARER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_oauthbearer: Option<KafkaOAuthBearer>,
    /// Prefix of the writers' Kafka client ids (`<prefix>bgpersist-<writer>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub client_id_prefix: Option<String>,
    /// Prefix of the writers' derived Kafka consumer groups
    /// (`<prefix>bgpersist.<resource>.<writer>`); an override is used as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub group_id_prefix: Option<String>,
    /// librdkafka properties for every writer (`compression.type`,
    /// `auto.offset.reset`, `fetch.max.bytes`, ...); a writer's own
    /// `additional_kafka_args` win. Keys the writer owns are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub additional_kafka_args: Option<std::collections::BTreeMap<String, String>>,
    /// Whether the Redis online store is a Redis Cluster: "1"/"true" or "0"/"false".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self in ['0', '1', 'true', 'false', '']")
        .message("must be one of \"0\", \"1\", \"true\", \"false\""))]
    pub redis_is_clustered: Option<String>,
    /// Name of the Snowflake storage integration used for COPY INTO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snowflake_storage_integration_name: Option<String>,
    /// Metadata provider the writers use (for example "GRPC_SERVER").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_provider: Option<String>,
    /// Cloud secrets (in the `secret_client` manager) holding store connection URIs, one per store (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_uri_secrets: Option<StoreUriSecrets>,
    /// The writers to run: one Deployment each.
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub writers: Vec<WriterSpec>,
}

impl BackgroundPersistenceSpec {
    /// The SASL mechanism the writers use: the one set, else PLAIN when the
    /// protocol is a SASL one (seed 000's default; librdkafka's own, GSSAPI,
    /// is not built in).
    pub fn effective_sasl_mechanism(&self) -> Option<KafkaSaslMechanism> {
        match self.kafka_security_protocol {
            Some(KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl) => Some(
                self.kafka_sasl_mechanism
                    .unwrap_or(KafkaSaslMechanism::Plain),
            ),
            _ => self.kafka_sasl_mechanism,
        }
    }
}

/// Settings shared by every writer (`common_persistence_specs`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CommonPersistenceSpecs {
    /// "KAFKA" or "PUBSUB".
    pub bus_backend: BusBackend,
    /// Namespace the writers run in; created when absent.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// ServiceAccount the writers run as; created by the operator.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: String,
    /// IAM role for the writers' ServiceAccount (EKS IRSA annotation; bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub aws_role_arn: Option<String>,
    /// Google service account for the writers' ServiceAccount (GKE Workload Identity annotation; bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp_service_account: Option<String>,
    /// "AWS" (Secrets Manager) or "GCP" (Secret Manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_client: Option<SecretClient>,
    /// Dead-letter topic for messages that cannot be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_dlq_topic: Option<String>,
    /// Pod settings for every writer (placement, pull secrets, labels,
    /// annotations, env, log level, volumes; bgpersist extension); a
    /// writer's own `pod` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_pod: Option<super::pod::WriterPodSettings>,
    /// A NetworkPolicy per writer, when `enabled` (bgpersist extension):
    /// ingress only on the metrics port; egress only to DNS, HTTPS, the
    /// Kafka bootstrap ports and the writer's store ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<super::network_policy::NetworkPolicySettings>,

    /// Image of the Go bus writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub bus_writer_image_go: Option<String>,
    /// Image of the Python bus writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub bus_writer_image_python: Option<String>,
    /// Image of the BigQuery streaming write loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub bus_writer_image_bswl: Option<String>,
    /// Image of the Rust bus writers (this project's `bgpersist-writer`); when set it runs every writer type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(crate::crd::image::REFERENCE_PATTERN))]
    pub bus_writer_image_rust: Option<String>,

    /// Subscription (Kafka: topic) of parquet-upload notifications for bulk inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bigquery_parquet_upload_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of streaming writes to the offline store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bigquery_streaming_write_subscription_id: Option<String>,
    /// Topic of streaming writes to the offline store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bigquery_streaming_write_topic: Option<String>,
    /// Bucket (s3://... or gs://...) holding parquet files for bulk inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bigquery_upload_bucket: Option<String>,
    /// Topic of parquet-upload notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bigquery_upload_topic: Option<String>,
    /// Subscription (Kafka: topic) of the metrics bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_bus_subscription_id: Option<String>,
    /// Topic of the metrics bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_bus_topic_id: Option<String>,
    /// Subscription (Kafka: topic) of the result bus for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bus_metrics_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of the result bus for the offline store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bus_offline_store_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of the result bus for the online store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bus_online_store_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of the operation (query log) bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of the usage-events bus (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bus_subscription_id: Option<String>,
    /// Subscription (Kafka: topic) of the vector bus (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_bus_subscription_id: Option<String>,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum BusBackend {
    #[default]
    Kafka,
    Pubsub,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum SecretClient {
    Aws,
    Gcp,
    /// An existing Secret, in the writers' namespace or `<namespace>/<name>`.
    Kubernetes,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KafkaSecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaSaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

/// The OAUTHBEARER token source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.method != 'OIDC' || (has(self.token_endpoint_url) && has(self.client_id))")
    .message("kafka_oauthbearer.method OIDC needs token_endpoint_url and client_id"))]
pub struct KafkaOAuthBearer {
    /// OIDC: the client-credentials grant at token_endpoint_url, with the
    /// client secret from kafka_sasl_secret (`client_secret`). AWS_MSK_IAM:
    /// a token signed with the writers' AWS identity (IRSA through
    /// common_persistence_specs.aws_role_arn, or the node's role).
    pub method: KafkaOAuthMethod,
    /// OIDC token endpoint, `https://...` (the identity provider's `token_endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https?://[^\s]+$"))]
    pub token_endpoint_url: Option<String>,
    /// OIDC client id; it is also the Kafka principal librdkafka reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub client_id: Option<String>,
    /// OIDC scopes to request, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub scope: Option<String>,
    /// AWS_MSK_IAM: the cluster's region; else the pod's AWS_REGION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(r"^[a-z0-9-]+$"))]
    pub aws_region: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KafkaOAuthMethod {
    Oidc,
    AwsMskIam,
}

/// Names of cloud secrets whose value is a store's connection URI. Each is
/// synced into the `<resource>-stores` Secret and mounted only into the
/// writers that write that store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StoreUriSecrets {
    /// URI of the online store (ONLINE_WRITER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_store: Option<String>,
    /// URI of the offline store (OFFLINE_WRITER and the offline-store inserters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_store: Option<String>,
    /// URI of the metrics store (METRICS_BUS_WRITER, GO_METRICS_BUS_WRITER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_store: Option<String>,
    /// URI of the usage store (USAGE_BUS_WRITER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_store: Option<String>,
    /// URI of the vector store (ONLINE_VECTOR_STORE_WRITER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_store: Option<String>,
}

impl StoreUriSecrets {
    /// The cloud secret named for `store`, when set and not blank.
    pub fn for_store(&self, store: StoreKind) -> Option<&str> {
        let v = match store {
            StoreKind::OnlineStore => &self.online_store,
            StoreKind::OfflineStore => &self.offline_store,
            StoreKind::MetricsStore => &self.metrics_store,
            StoreKind::UsageStore => &self.usage_store,
            StoreKind::VectorStore => &self.vector_store,
            StoreKind::MetricsBus | StoreKind::QueryMirror => &None,
        };
        v.as_deref().filter(|s| !s.trim().is_empty())
    }

    /// Whether any store names a cloud secret.
    pub fn any(&self) -> bool {
        StoreKind::WITH_URI
            .iter()
            .any(|k| self.for_store(*k).is_some())
    }
}

/// One writer: a Deployment consuming one bus and writing one store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WriterSpec {
    /// Writer name, a DNS label; the Deployment is named `<resource>-<name>`.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// What the writer consumes and where it writes.
    pub bus_subscriber_type: WriterType,
    /// Resource requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<ResourceAmounts>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<ResourceAmounts>,
    /// Writer version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Replicas (1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub default_replica_count: Option<i32>,
    /// Image for this writer only, overriding the common images (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        pattern(crate::crd::image::REFERENCE_PATTERN)
    )]
    pub image: Option<String>,

    /// Largest number of messages written in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_batch_size: Option<i32>,
    /// Under a backlog, batches grow up to this many times max_batch_size
    /// (1: never); unset, the writer type's default (offline stores 8,
    /// others 1). bgpersist extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_batch_growth: Option<i32>,
    /// Largest total payload, in bytes, of the messages written in one batch
    /// (a larger message is a batch of its own); unset, 4 MiB. Bounds a
    /// writer's memory whatever its messages' size. bgpersist extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_batch_bytes: Option<i64>,
    /// Messages processed concurrently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub message_processing_concurrency: Option<i32>,
    /// Kafka consumer group to use instead of the derived one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub kafka_consumer_group_override: Option<String>,
    /// librdkafka properties for this writer, over the resource's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub additional_kafka_args: Option<std::collections::BTreeMap<String, String>>,
    /// Fraction of query-log writes dropped, "0" to "1" (a string to avoid float drift in GitOps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(0(\.[0-9]+)?|1(\.0+)?)$"))]
    pub query_table_write_drop_ratio: Option<String>,
    /// Skip producing per-feature metrics from results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_writer_skip_producing_feature_metrics: Option<bool>,
    /// METRICS_WRITER and GO_RESULT_BUS_METRICS_WRITER on Kafka: publish each
    /// batch's metrics and commit its offsets in one Kafka transaction
    /// (exactly-once for `read_committed` readers; bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_exactly_once: Option<bool>,
    /// Key prefix in the online store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_cache_prefix: Option<String>,
    /// Offline store the inserters write to (for example "postgres", "bigquery", "snowflake").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_store_inserter_db_type: Option<String>,
    /// URI of the usage store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub usage_store_uri: Option<String>,
    /// Pub/Sub subscription whose backlog drives autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_pubsub_subscription_id: Option<String>,
    /// Target backlog per replica for autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub hpa_target_average_value: Option<i64>,
    /// Pod settings for this writer, over `common_persistence_specs.writer_pod`
    /// (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<super::pod::WriterPodSettings>,
    /// Autoscale this writer with KEDA on Kafka consumer lag or Pub/Sub backlog;
    /// the autoscaler then owns the replica count (bgpersist extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// A KEDA ScaledObject for one writer. On Kafka it scales on the consumer
/// group's lag (`lag_threshold` per replica); on Pub/Sub on the subscription's
/// backlog (the writer's `hpa_target_average_value` per replica, read from
/// `hpa_pubsub_subscription_id`, default the writer's own subscription).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.min_replicas) || self.min_replicas <= self.max_replicas")
    .message("autoscaling.min_replicas must not exceed autoscaling.max_replicas")
    .reason(kube::core::Reason::FieldValueInvalid))]
pub struct AutoscalingSpec {
    /// Fewest replicas (1 when unset; 0 lets an idle writer scale to zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Most replicas. On Kafka, KEDA scales no further than the topic's partition count.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Kafka only: consumer lag per replica the autoscaler aims for (KEDA `lagThreshold`, 10 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lag_threshold: Option<i64>,
    /// Lag (Kafka) or backlog (Pub/Sub) above which a writer scaled to zero is woken (KEDA activation threshold, 0 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub activation_lag_threshold: Option<i64>,
    /// Seconds between two looks at the lag or backlog (KEDA `pollingInterval`, 30 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval_seconds: Option<i32>,
    /// Seconds without lag before scaling to zero, with `min_replicas` 0 (KEDA `cooldownPeriod`, 300 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_period_seconds: Option<i32>,
}

impl AutoscalingSpec {
    /// The fewest replicas, 1 when unset (scaling to zero is opt-in).
    pub fn min(&self) -> i32 {
        self.min_replicas.unwrap_or(1)
    }
}

/// CPU and memory as Kubernetes quantities ("200m", "512Mi").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ResourceAmounts {
    /// CPU, e.g. "200m" or "1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("isQuantity(self)").message("must be a Kubernetes quantity such as \"200m\" or \"1\""))]
    #[x_kube(validation = kube::core::Rule::new("!isQuantity(self) || !quantity(self).isLessThan(quantity('0'))").message("must not be negative"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory, e.g. "512Mi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("isQuantity(self)").message("must be a Kubernetes quantity such as \"512Mi\""))]
    #[x_kube(validation = kube::core::Rule::new("!isQuantity(self) || !quantity(self).isLessThan(quantity('0'))").message("must not be negative"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
}

// The catalog names spec fields; reading them lives beside the spec, so the
// catalog does not depend on it.
impl BusField {
    /// The field's value in a spec, when set and not blank.
    pub fn value(self, spec: &BackgroundPersistenceSpec) -> Option<&str> {
        let c: &CommonPersistenceSpecs = &spec.common_persistence_specs;
        let v = match self {
            BusField::ResultBusOnlineStoreSubscriptionId => {
                &c.result_bus_online_store_subscription_id
            }
            BusField::ResultBusMetricsSubscriptionId => &c.result_bus_metrics_subscription_id,
            BusField::ResultBusOfflineStoreSubscriptionId => {
                &c.result_bus_offline_store_subscription_id
            }
            BusField::MetricsBusSubscriptionId => &c.metrics_bus_subscription_id,
            BusField::MetricsBusTopicId => &c.metrics_bus_topic_id,
            BusField::BigqueryParquetUploadSubscriptionId => {
                &c.bigquery_parquet_upload_subscription_id
            }
            BusField::BigqueryStreamingWriteSubscriptionId => {
                &c.bigquery_streaming_write_subscription_id
            }
            BusField::BigqueryUploadBucket => &c.bigquery_upload_bucket,
            BusField::OperationSubscriptionId => &c.operation_subscription_id,
            BusField::UsageBusSubscriptionId => &c.usage_bus_subscription_id,
            BusField::VectorBusSubscriptionId => &c.vector_bus_subscription_id,
            BusField::ApiServerHost => &spec.api_server_host,
        };
        v.as_deref().filter(|s| !s.trim().is_empty())
    }
}

impl ImageField {
    /// The image field's value, when set and not blank.
    pub fn value(self, c: &CommonPersistenceSpecs) -> Option<&str> {
        let v = match self {
            ImageField::Go => &c.bus_writer_image_go,
            ImageField::Python => &c.bus_writer_image_python,
            ImageField::Bswl => &c.bus_writer_image_bswl,
        };
        v.as_deref().filter(|s| !s.trim().is_empty())
    }
}
