use super::{labels, names::deployment_name};
use crate::crd::{BackgroundPersistence, WriterSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

/// At most one pod of a writer down at a time during voluntary disruptions.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    w: &WriterSpec,
    owner: &OwnerReference,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(deployment_name(resource, &w.name)),
            namespace: Some(bp.spec.common_persistence_specs.namespace.clone()),
            labels: Some(labels::writer(resource, w)),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(resource, &w.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
