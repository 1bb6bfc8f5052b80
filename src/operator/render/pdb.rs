use super::labels;
use crate::crd::BackgroundPersistence;
use crate::operator::model::ResolvedWriter;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// At most one pod of a writer down at a time during voluntary disruptions.
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
) -> PodDisruptionBudget {
    let w = rw.spec;
    PodDisruptionBudget {
        metadata: labels::writer_object_meta(bp, resource, rw, owner),
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
