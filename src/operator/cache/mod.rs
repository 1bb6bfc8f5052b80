//! Watch caches for the read step: the controller's watches on the owned
//! kinds also fill reflector stores, and a reconcile reads the live objects
//! it compares, prunes and reports on from them, so a resync of an unchanged
//! resource sends no request. A store that has not finished its first list
//! answers `Live::Ask`, and the caller reads the API server as before (tests
//! that reconcile by hand run without stores).
//!
//! Stores keep trimmed objects: managed fields are what makes a watched
//! object big, and only whether the operator's apply owns `spec.replicas` is
//! ever read from them; of pods only the status says anything. Deployments
//! and PodDisruptionBudgets, one per writer, are kept as JSON text
//! (`compact.rs`).

pub mod compact;
pub use compact::Compact;

use super::FIELD_MANAGER;
use super::render::{LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
use kube::Resource;
use kube::api::{DynamicObject, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the read step knows of one live object before applying.
#[derive(Debug)]
pub enum Live<K> {
    /// No usable cache: read it from the API server.
    Ask,
    /// The watch cache's copy; None when the object is not there.
    Cached(Option<K>),
}

impl<K> Live<K> {
    /// The cached copy, else the API server's answer for `name`.
    pub async fn or_get(self, api: &kube::Api<K>, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match self {
            Live::Cached(live) => Ok(live),
            Live::Ask => api.get_opt(name).await,
        }
    }

    /// The cached copy turned into a `T` (`Ask` stays `Ask`).
    pub fn map<T>(self, f: impl FnOnce(K) -> T) -> Live<T> {
        match self {
            Live::Cached(live) => Live::Cached(live.map(f)),
            Live::Ask => Live::Ask,
        }
    }
}

/// One listed object, as pruning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub namespace: String,
    pub name: String,
    pub deleting: bool,
}

/// The reflector stores the controller fills; each None until a watch fills it.
#[derive(Clone, Default)]
pub struct Caches {
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    pub service_accounts: Option<Store<ServiceAccount>>,
    pub secrets: Option<Store<Secret>>,
    pub deployments: Option<Compact<Deployment>>,
    pub pdbs: Option<Compact<PodDisruptionBudget>>,
    pub network_policies: Option<Store<NetworkPolicy>>,
    pub pods: Option<Store<Pod>>,
    pub scaled_objects: Option<Store<DynamicObject>>,
    pub trigger_authentications: Option<Store<DynamicObject>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("deployments", &self.deployments.is_some())
            .finish_non_exhaustive()
    }
}

impl Caches {
    /// Resolves once every store there is has finished its first list (or
    /// lost its watch for good).
    pub async fn wait_ready(&self) {
        async fn one<K>(s: Option<&Store<K>>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            if let Some(s) = s {
                let _ = s.wait_until_ready().await;
            }
        }
        one(self.namespaces.as_ref()).await;
        one(self.service_accounts.as_ref()).await;
        one(self.secrets.as_ref()).await;
        while !(ready_compact(self.deployments.as_ref()) && ready_compact(self.pdbs.as_ref())) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        one(self.network_policies.as_ref()).await;
        one(self.pods.as_ref()).await;
        one(self.scaled_objects.as_ref()).await;
        one(self.trigger_authentications.as_ref()).await;
    }
}

fn ready_compact<K>(c: Option<&Compact<K>>) -> bool
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    c.is_none_or(Compact::is_ready)
}

/// The object `name` in `ns` from a compact cache, or `Ask` without a ready one.
pub fn compact<K>(c: Option<&Compact<K>>, ns: &str, name: &str) -> Live<K>
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    c.map_or(Live::Ask, |c| c.get(ns, name))
}

/// The store when it has finished its first list, else None.
fn ready<K>(store: Option<&Store<K>>) -> Option<&Store<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.filter(|s| matches!(s.wait_until_ready().now_or_never(), Some(Ok(()))))
}

/// The object `name` in `ns` from `store`, or `Ask` when there is no ready store.
pub fn lookup<K>(store: Option<&Store<K>>, ns: Option<&str>, name: &str) -> Live<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    lookup_with(store, ns, name, &K::DynamicType::default())
}

/// `lookup` for kinds known only at run time.
pub fn lookup_with<K>(
    store: Option<&Store<K>>,
    ns: Option<&str>,
    name: &str,
    dyntype: &K::DynamicType,
) -> Live<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let Some(store) = ready(store) else {
        return Live::Ask;
    };
    let mut key = ObjectRef::new_with(name, dyntype.clone());
    if let Some(ns) = ns {
        key = key.within(ns);
    }
    Live::Cached(store.get(&key).map(|k| (*k).clone()))
}

/// The objects of `resource` in `store` (its labels, as pruning selects
/// them), or None when there is no ready store.
pub fn owned_by<K>(store: Option<&Store<K>>, resource: &str) -> Option<Vec<Listed>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let store = ready(store)?;
    let mine = |k: &K| {
        let l = k.meta().labels.as_ref();
        let is = |key: &str, v: &str| l.and_then(|l| l.get(key)).is_some_and(|x| x == v);
        is(LABEL_RESOURCE, resource) && is(LABEL_MANAGED_BY, MANAGER)
    };
    Some(
        store
            .state_filter(mine)
            .iter()
            .map(|k| Listed {
                namespace: k.meta().namespace.clone().unwrap_or_default(),
                name: k.meta().name.clone().unwrap_or_default(),
                deleting: k.meta().deletion_timestamp.is_some(),
            })
            .collect(),
    )
}

/// Writer pods in `ns` matching every label of `selector`; None without a ready store.
pub fn pods(caches: &Caches, ns: &str, selector: &BTreeMap<String, String>) -> Option<Vec<Pod>> {
    let store = ready(caches.pods.as_ref())?;
    let matches = |p: &Pod| {
        p.metadata.namespace.as_deref() == Some(ns)
            && selector.iter().all(|(k, v)| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .is_some_and(|x| x == v)
            })
    };
    Some(
        store
            .state_filter(matches)
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect(),
    )
}

/// A live Namespace from its metadata: the operator renders nothing else of it.
pub fn namespace(meta: PartialObjectMeta<Namespace>) -> Namespace {
    Namespace {
        metadata: meta.metadata,
        ..Default::default()
    }
}

/// Keeps of the managed fields only whether the operator's own apply owns
/// `spec.replicas` (see `handover::operator_owns_replicas`).
pub fn trim_managed_fields(meta: &mut ObjectMeta) {
    let Some(entries) = meta.managed_fields.take() else {
        return;
    };
    let kept: Vec<_> = entries
        .into_iter()
        .filter(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER)
                && e.operation.as_deref() == Some("Apply")
                && e.subresource.as_deref().unwrap_or_default().is_empty()
        })
        .map(|mut e| {
            let replicas = e
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some();
            e.fields_v1 =
                replicas.then(|| FieldsV1(serde_json::json!({"f:spec": {"f:replicas": {}}})));
            e
        })
        .collect();
    meta.managed_fields = (!kept.is_empty()).then_some(kept);
}

/// A pod as the read step looks at it: identity, labels and status.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.spec = None;
    if let Some(s) = pod.status.take() {
        pod.status = Some(PodStatus {
            conditions: s.conditions,
            container_statuses: s.container_statuses,
            phase: s.phase,
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use serde_json::json;

    fn entry(manager: &str, op: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn trimming_keeps_whether_the_operator_owns_replicas() {
        let mut d = Deployment::default();
        d.metadata.managed_fields = Some(vec![
            entry(
                FIELD_MANAGER,
                "Apply",
                json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}),
            ),
            entry("kube-controller-manager", "Update", json!({"f:status": {}})),
        ]);
        assert!(super::super::handover::operator_owns_replicas(&d));
        trim_managed_fields(&mut d.metadata);
        assert!(super::super::handover::operator_owns_replicas(&d));
        assert_eq!(d.metadata.managed_fields.as_ref().map(Vec::len), Some(1));

        d.metadata.managed_fields = Some(vec![
            entry(
                FIELD_MANAGER,
                "Apply",
                json!({"f:spec": {"f:template": {}}}),
            ),
            entry(
                "bgpersist-replicas-handover",
                "Apply",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
        ]);
        trim_managed_fields(&mut d.metadata);
        assert!(!super::super::handover::operator_owns_replicas(&d));
    }

    #[test]
    fn a_store_that_never_listed_asks_the_api() {
        let (store, _writer) = kube::runtime::reflector::store::<Deployment>();
        assert!(matches!(lookup(Some(&store), Some("ns"), "d"), Live::Ask));
        assert!(matches!(
            lookup::<Deployment>(None, Some("ns"), "d"),
            Live::Ask
        ));
        assert_eq!(owned_by(Some(&store), "r"), None);
    }

    #[test]
    fn a_listed_store_answers_with_its_copy_or_absent() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<Deployment>();
        let mut d = Deployment::default();
        d.metadata.name = Some("r-w".into());
        d.metadata.namespace = Some("ns".into());
        d.metadata.labels = Some(BTreeMap::from([
            (LABEL_RESOURCE.to_string(), "r".to_string()),
            (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        ]));
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(d));
        writer.apply_watcher_event(&Event::InitDone);
        assert!(matches!(
            lookup(Some(&store), Some("ns"), "r-w"),
            Live::Cached(Some(_))
        ));
        assert!(matches!(
            lookup(Some(&store), Some("ns"), "other"),
            Live::Cached(None)
        ));
        let listed = owned_by(Some(&store), "r").unwrap_or_default();
        assert_eq!(listed.len(), 1);
        assert_eq!(owned_by(Some(&store), "s"), Some(Vec::new()));
    }
}
