use super::labels;
use crate::crd::BackgroundPersistence;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

pub const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
pub const GKE_ANNOTATION: &str = "iam.gke.io/gcp-service-account";

pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    owner: &OwnerReference,
) -> ServiceAccount {
    let c = &bp.spec.common_persistence_specs;
    let mut annotations = BTreeMap::new();
    if let Some(arn) = c.aws_role_arn.as_deref().filter(|s| !s.is_empty()) {
        annotations.insert(IRSA_ANNOTATION.to_string(), arn.to_string());
    }
    if let Some(gsa) = c.gcp_service_account.as_deref().filter(|s| !s.is_empty()) {
        annotations.insert(GKE_ANNOTATION.to_string(), gsa.to_string());
    }
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(c.service_account_name.clone()),
            namespace: Some(c.namespace.clone()),
            labels: Some(labels::common(resource)),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        // Writers reach the bus and stores with cloud identity or mounted
        // secrets, never with the Kubernetes API.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}
