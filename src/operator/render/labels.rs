//! Recommended labels (app.kubernetes.io/*) plus the two the operator selects on.

use crate::crd::{BackgroundPersistence, WriterSpec};
use crate::operator::model::ResolvedWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

pub const MANAGER: &str = "bgpersist-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Name of the owning BackgroundPersistence; finds children for pruning.
pub const LABEL_RESOURCE: &str = "bgpersist.dev/resource";
/// Writer name within the resource.
pub const LABEL_WRITER: &str = "bgpersist.dev/writer";

/// Labels on objects shared by all writers of a resource.
pub fn common(resource: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/part-of".into(), "bgpersist".into()),
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        (LABEL_RESOURCE.into(), resource.into()),
    ])
}

/// Labels on a writer's Deployment, pods and PodDisruptionBudget.
pub fn writer(resource: &str, w: &WriterSpec) -> BTreeMap<String, String> {
    let mut l = common(resource);
    l.insert("app.kubernetes.io/name".into(), "bgpersist-writer".into());
    l.insert(
        "app.kubernetes.io/instance".into(),
        format!("{resource}-{}", w.name),
    );
    l.insert(
        "app.kubernetes.io/component".into(),
        w.bus_subscriber_type
            .as_str()
            .to_lowercase()
            .replace('_', "-"),
    );
    if let Some(v) = w.version.as_deref().filter(|v| is_label_value(v)) {
        l.insert("app.kubernetes.io/version".into(), v.into());
    }
    l.insert(LABEL_WRITER.into(), w.name.clone());
    l
}

/// The metadata of a writer's own objects (its PodDisruptionBudget,
/// NetworkPolicy): named like its Deployment, in the target namespace, with
/// the writer's labels and the resource as owner.
pub fn writer_object_meta(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(rw.object_name.clone()),
        namespace: Some(bp.spec.common_persistence_specs.namespace.clone()),
        labels: Some(writer(resource, rw.spec)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// The immutable selector of a writer's pods.
pub fn selector(resource: &str, writer: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RESOURCE.into(), resource.into()),
        (LABEL_WRITER.into(), writer.into()),
    ])
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}
