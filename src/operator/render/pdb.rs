use super::labels;
use crate::crd::BackgroundPersistence;
use crate::operator::model::ResolvedWriter;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// At most one pod of a writer down at a time during voluntary disruptions;
/// `None` for a writer that never runs two pods. Over one pod,
/// `maxUnavailable: 1` refuses no eviction: such a budget would only be one
/// more object to write and watch per writer (9 of 22 API writes in the first
/// pass of `operator_scale`, docs/benchmarks.md).
pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
) -> Option<PodDisruptionBudget> {
    if !may_run_several_pods(rw) {
        return None;
    }
    let w = rw.spec;
    Some(PodDisruptionBudget {
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
    })
}

/// Two or more replicas, or an autoscaler that may scale to two or more
/// (an autoscaled writer's replicas never exceed its `max_replicas`).
fn may_run_several_pods(rw: &ResolvedWriter) -> bool {
    let most = rw
        .spec
        .autoscaling
        .as_ref()
        .map_or(rw.replicas, |a| a.max_replicas);
    most >= 2
}
