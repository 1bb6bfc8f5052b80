//! The KEDA `TriggerAuthentication` an autoscaled writer's ScaledObject
//! refers to: on Kafka, the SASL username and password from the Secret the
//! operator syncs from the cloud secret (the writers mount the same one); on
//! Pub/Sub, KEDA's own GCP Workload Identity (Cloud Monitoring is read by
//! the KEDA operator, not by the writers).

use super::secret::{SecretInputs, Slot};
use super::{labels, scaled_object};
use crate::contract as c;
use crate::crd::{BackgroundPersistence, BusBackend};
use crate::operator::model::ResolvedWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

pub fn api_resource() -> ApiResource {
    ApiResource {
        group: scaled_object::API_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: scaled_object::API_VERSION.into(),
        kind: "TriggerAuthentication".into(),
        plural: "triggerauthentications".into(),
    }
}

/// One per autoscaled writer, named like its Deployment.
pub fn name(resource: &str, writer: &str) -> String {
    super::names::deployment_name(resource, writer)
}

/// KEDA's Kafka parameters for the files the Kafka Secret may carry.
const KAFKA_PARAMETERS: [(&str, &str); 6] = [
    ("username", c::KAFKA_SASL_USERNAME_FILE),
    ("password", c::KAFKA_SASL_PASSWORD_FILE),
    ("ca", c::KAFKA_CA_FILE),
    ("cert", c::KAFKA_CERT_FILE),
    ("key", c::KAFKA_KEY_FILE),
    ("keyPassword", c::KAFKA_KEY_PASSWORD_FILE),
];

/// The writer's TriggerAuthentication, when its trigger needs credentials:
/// on Kafka, a reference to each file the synced Kafka Secret holds (the
/// credentials until a value was read), so KEDA's scaler connects as the
/// writers do, TLS material included.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
    secrets: &SecretInputs,
) -> Option<DynamicObject> {
    let w = rw.spec;
    if !scaled_object::needs_authentication(bp) {
        return None;
    }
    let spec = match bp.spec.common_persistence_specs.bus_backend {
        BusBackend::Kafka => {
            let secret = super::names::kafka_sasl_secret_name(resource);
            let held = secrets.entries.get(&Slot::KafkaSasl).map(|e| &e.data);
            let refs: Vec<serde_json::Value> = KAFKA_PARAMETERS
                .iter()
                .filter(|(_, file)| match held {
                    Some(data) => data.contains_key(*file),
                    None => [c::KAFKA_SASL_USERNAME_FILE, c::KAFKA_SASL_PASSWORD_FILE].contains(file),
                })
                .map(|(parameter, file)| json!({"parameter": parameter, "name": secret, "key": file}))
                .collect();
            json!({ "secretTargetRef": refs })
        }
        BusBackend::Pubsub => json!({"podIdentity": {"provider": "gcp"}}),
    };
    let mut obj = DynamicObject::new(&rw.object_name, &api_resource())
        .within(&bp.spec.common_persistence_specs.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(labels::writer(resource, w));
    obj.metadata.owner_references = Some(vec![owner.clone()]);
    Some(obj)
}
