use super::labels;
use crate::crd::BackgroundPersistence;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;

/// The target namespace. It carries no owner reference: deleting the resource
/// must never delete a namespace that may hold other workloads.
pub fn render(bp: &BackgroundPersistence, resource: &str) -> Namespace {
    let mut l = labels::common(resource);
    // A namespace can be shared by several resources: only the part-of label is meaningful.
    l.remove(labels::LABEL_RESOURCE);
    Namespace {
        metadata: ObjectMeta {
            name: Some(bp.spec.common_persistence_specs.namespace.clone()),
            labels: Some(l),
            ..Default::default()
        },
        ..Default::default()
    }
}
