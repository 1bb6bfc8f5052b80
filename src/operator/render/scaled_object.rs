//! A KEDA `ScaledObject` per autoscaled writer: KEDA creates (and owns) an
//! HPA for the writer's Deployment, fed by the Kafka consumer group's lag or
//! the Pub/Sub subscription's backlog. The operator never writes replicas of
//! an autoscaled writer (see `operator::handover`).

use super::{labels, secret};
use crate::crd::kafka_args;
use crate::crd::{
    AutoscalingSpec, BackgroundPersistence, BusBackend, KafkaSaslMechanism, KafkaSecurityProtocol,
    WriterSpec,
};
use crate::operator::model::ResolvedWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Map, Value, json};

pub const API_GROUP: &str = "keda.sh";
pub const API_VERSION: &str = "keda.sh/v1alpha1";

/// Backlog per replica KEDA aims for when the spec sets none (its documented default).
pub const DEFAULT_TARGET: i64 = 10;

pub fn api_resource() -> ApiResource {
    ApiResource {
        group: API_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: API_VERSION.into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

/// The ScaledObject of an autoscaled writer, named like its Deployment.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    auto: &AutoscalingSpec,
    owner: &OwnerReference,
    authentication: Option<&str>,
) -> DynamicObject {
    let w = rw.spec;
    let name = rw.object_name.clone();
    let mut trigger = match bp.spec.common_persistence_specs.bus_backend {
        BusBackend::Kafka => kafka_trigger(bp, rw, auto),
        BusBackend::Pubsub => pubsub_trigger(bp, w, auto),
    };
    if let Some(auth) = authentication {
        trigger["authenticationRef"] = json!({ "name": auth });
    }
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": auto.min(),
        "maxReplicaCount": auto.max_replicas,
        "triggers": [trigger],
    });
    if let Some(s) = auto.polling_interval_seconds {
        spec["pollingInterval"] = s.into();
    }
    if let Some(s) = auto.cooldown_period_seconds {
        spec["cooldownPeriod"] = s.into();
    }
    let mut obj = DynamicObject::new(&name, &api_resource())
        .within(&bp.spec.common_persistence_specs.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(labels::writer(resource, w));
    obj.metadata.owner_references = Some(vec![owner.clone()]);
    obj
}

/// Whether the writer's ScaledObject needs a TriggerAuthentication: SASL
/// credentials on Kafka, Workload Identity on Pub/Sub.
pub fn needs_authentication(bp: &BackgroundPersistence) -> bool {
    match bp.spec.common_persistence_specs.bus_backend {
        BusBackend::Kafka => secret::kafka_sasl_wanted(bp),
        BusBackend::Pubsub => true,
    }
}

fn kafka_trigger(bp: &BackgroundPersistence, rw: &ResolvedWriter, auto: &AutoscalingSpec) -> Value {
    let spec = &bp.spec;
    let w = rw.spec;
    let servers: Vec<&str> = spec
        .kafka_bootstrap_servers
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let topic = w
        .bus_subscriber_type
        .kind()
        .consumes
        .value(spec)
        .unwrap_or_default();
    let mut m = Map::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.into(), Value::String(v));
    };
    put("bootstrapServers", servers.join(","));
    put("consumerGroup", rw.consumer_group.clone());
    put("topic", topic.into());
    put(
        "lagThreshold",
        auto.lag_threshold.unwrap_or(DEFAULT_TARGET).to_string(),
    );
    if let Some(a) = auto.activation_lag_threshold {
        put("activationLagThreshold", a.to_string());
    }
    // A new group starts where the writers start it; the scaler must count lag the same way.
    put(
        "offsetResetPolicy",
        kafka_args::start_offset(&rw.kafka_args).into(),
    );
    let protocol = spec.kafka_security_protocol;
    let tls = matches!(
        protocol,
        Some(KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl)
    );
    put("tls", if tls { "enable" } else { "disable" }.into());
    let sasl = matches!(
        protocol,
        Some(KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl)
    );
    if sasl && let Some(mechanism) = spec.effective_sasl_mechanism() {
        put("sasl", keda_sasl(mechanism).into());
    }
    json!({"type": "kafka", "metadata": m})
}

/// KEDA's name for a SASL mechanism (its `sasl` parameter).
fn keda_sasl(m: KafkaSaslMechanism) -> &'static str {
    match m {
        KafkaSaslMechanism::Plain => "plaintext",
        KafkaSaslMechanism::ScramSha256 => "scram_sha256",
        KafkaSaslMechanism::ScramSha512 => "scram_sha512",
        KafkaSaslMechanism::OauthBearer => "oauthbearer",
    }
}

fn pubsub_trigger(bp: &BackgroundPersistence, w: &WriterSpec, auto: &AutoscalingSpec) -> Value {
    let subscription = w
        .hpa_pubsub_subscription_id
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| w.bus_subscriber_type.kind().consumes.value(&bp.spec))
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert("subscriptionName".into(), subscription.into());
    m.insert("mode".into(), "SubscriptionSize".into());
    m.insert(
        "value".into(),
        w.hpa_target_average_value
            .unwrap_or(DEFAULT_TARGET)
            .to_string()
            .into(),
    );
    if let Some(a) = auto.activation_lag_threshold {
        m.insert("activationValue".into(), a.to_string().into());
    }
    json!({"type": "gcp-pubsub", "metadata": m})
}
