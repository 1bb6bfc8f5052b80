//! The KEDA `TriggerAuthentication` an autoscaled writer's ScaledObject
//! refers to: on Kafka, the SASL username and password from the Secret the
//! operator syncs from the cloud secret (the writers mount the same one); on
//! Pub/Sub, KEDA's own GCP Workload Identity (Cloud Monitoring is read by
//! the KEDA operator, not by the writers).

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

/// The writer's TriggerAuthentication, when its trigger needs credentials.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
) -> Option<DynamicObject> {
    let w = rw.spec;
    if !scaled_object::needs_authentication(bp) {
        return None;
    }
    let spec = match bp.spec.common_persistence_specs.bus_backend {
        BusBackend::Kafka => {
            let secret = super::names::kafka_sasl_secret_name(resource);
            let key = |parameter: &str, key: &str| json!({"parameter": parameter, "name": secret, "key": key});
            json!({"secretTargetRef": [
                key("username", c::KAFKA_SASL_USERNAME_FILE),
                key("password", c::KAFKA_SASL_PASSWORD_FILE),
            ]})
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
