//! The controller's watches. Each watch of an owned kind both triggers
//! reconciles (a hand edit or deletion is seen at once) and fills the
//! reflector store the read step reads from (`cache.rs`), so every object is
//! watched once. Kinds the read step needs but that should not trigger a
//! reconcile (namespaces, writer pods, KEDA objects whose status KEDA
//! rewrites all the time) are watched with a mapper that maps to nothing.

use super::cache::{self, Caches, Compact};
use super::render::{self, LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER};
use super::secrets;
use crate::crd::BackgroundPersistence;
use futures::TryStreamExt;
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

type Ctl = Controller<BackgroundPersistence>;
type Watch<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The watches that fill the caches, not yet polled.
pub struct Watches {
    pub caches: Caches,
    deployments: Watch<Deployment>,
    pdbs: Watch<PodDisruptionBudget>,
    service_accounts: Watch<ServiceAccount>,
    secrets: Watch<Secret>,
    network_policies: Watch<NetworkPolicy>,
    pods: Watch<Pod>,
    namespaces: Watch<PartialObjectMeta<Namespace>>,
    keda: Vec<(ApiResource, Watch<DynamicObject>)>,
}

impl Watches {
    /// Every cache watch. `keda_served`: whether KEDA's kinds can be watched
    /// (looked up at start; a KEDA installed later is read live until the
    /// operator restarts).
    pub fn new(client: &Client, keda_served: bool) -> Self {
        let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        let mut caches = Caches::default();
        let c = || client.clone();
        let (store, deployments) = compacted(Api::<Deployment>::all(c()), owned.clone(), |d| {
            cache::trim_managed_fields(&mut d.metadata)
        });
        caches.deployments = Some(store);
        let (store, pdbs) = compacted(Api::<PodDisruptionBudget>::all(c()), owned.clone(), |p| {
            p.metadata.managed_fields = None;
            p.status = None;
        });
        caches.pdbs = Some(store);
        let (store, service_accounts) =
            reflected(Api::<ServiceAccount>::all(c()), owned.clone(), |s| {
                s.metadata.managed_fields = None;
            });
        caches.service_accounts = Some(store);
        let (store, secrets) = reflected(Api::<Secret>::all(c()), owned.clone(), |s| {
            s.metadata.managed_fields = None;
        });
        caches.secrets = Some(store);
        let (store, network_policies) =
            reflected(Api::<NetworkPolicy>::all(c()), owned.clone(), |p| {
                p.metadata.managed_fields = None;
            });
        caches.network_policies = Some(store);
        let (store, pods) = reflected(Api::<Pod>::all(c()), owned.clone(), cache::trim_pod);
        caches.pods = Some(store);
        // Metadata only: `Api<PartialObjectMeta<_>>` asks for nothing more.
        let (store, namespaces) = reflected(
            Api::<PartialObjectMeta<Namespace>>::all(c()),
            watcher::Config::default(),
            |n| n.metadata.managed_fields = None,
        );
        caches.namespaces = Some(store);
        let mut keda = Vec::new();
        if keda_served {
            let so = render::scaled_object::api_resource();
            let (store, stream) = reflected_dynamic(c(), owned.clone(), so.clone());
            caches.scaled_objects = Some(store);
            keda.push((so, stream));
            let ta = render::trigger_authentication::api_resource();
            let (store, stream) = reflected_dynamic(c(), owned, ta.clone());
            caches.trigger_authentications = Some(store);
            keda.push((ta, stream));
        }
        Watches {
            caches,
            deployments,
            pdbs,
            service_accounts,
            secrets,
            network_policies,
            pods,
            namespaces,
            keda,
        }
    }

    /// Adds the watches to `controller`: owned kinds trigger their
    /// resource, the others only fill their store.
    pub fn attach(self, controller: Ctl, client: &Client) -> (Ctl, Caches) {
        // `secret_client: KUBERNETES`: a change to a Secret a resource reads
        // reconciles that resource at once (its writers roll if the data
        // changed). Only names are needed, so only metadata is watched.
        let sources = watcher(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects();
        let resources = controller.store();
        let mut controller = controller
            .watches_stream(self.deployments, owner_of)
            .watches_stream(self.pdbs, owner_of)
            .watches_stream(self.service_accounts, owner_of)
            .watches_stream(self.secrets, owner_of)
            .watches_stream(self.network_policies, owner_of)
            .watches_stream(self.pods, nothing)
            .watches_stream(self.namespaces, nothing)
            .watches_stream(sources, move |s: PartialObjectMeta<Secret>| {
                reading(
                    &resources,
                    &s.namespace().unwrap_or_default(),
                    &s.name_any(),
                )
            });
        for (ar, stream) in self.keda {
            controller = controller.watches_stream_with(stream, nothing, ar);
        }
        (controller, self.caches)
    }

    /// The caches, and the future that fills them until it is dropped: for
    /// reconciling by hand (`reconcile_once`) with what the controller reads.
    pub fn fill(self) -> (Caches, impl std::future::Future<Output = ()> + Send) {
        fn drain<K: Send + 'static>(w: Watch<K>) -> BoxStream<'static, ()> {
            w.map(|_| ()).boxed()
        }
        let mut all = vec![
            drain(self.deployments),
            drain(self.pdbs),
            drain(self.service_accounts),
            drain(self.secrets),
            drain(self.network_policies),
            drain(self.pods),
            drain(self.namespaces),
        ];
        all.extend(self.keda.into_iter().map(|(_, w)| drain(w)));
        let run = futures::stream::select_all(all).for_each(|()| async {});
        (self.caches, run)
    }
}

/// A watch of `api` whose objects, trimmed by `trim`, fill the returned store.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, Watch<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects()
        .boxed();
    (store, stream)
}

/// `reflected` into a cache of JSON text (`cache::Compact`).
fn compacted<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Compact<K>, Watch<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let cache = Compact::default();
    let fill = cache.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .inspect_ok(move |event| fill.apply(event))
        .touched_objects()
        .boxed();
    (cache, stream)
}

/// `reflected` for a kind known only at run time.
fn reflected_dynamic(
    client: Client,
    config: watcher::Config,
    ar: ApiResource,
) -> (Store<DynamicObject>, Watch<DynamicObject>) {
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let stream = watcher(Api::all_with(client, &ar), config)
        .default_backoff()
        .modify(|o: &mut DynamicObject| o.metadata.managed_fields = None)
        .reflect(writer)
        .touched_objects()
        .boxed();
    (store, stream)
}

/// Children name their resource in a label: the resource is cluster-scoped and
/// owner references alone cannot be mapped back without its namespace.
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<BackgroundPersistence>> {
    obj.labels()
        .get(LABEL_RESOURCE)
        .map(|name| ObjectRef::new(name))
}

/// For watches that only fill a store.
fn nothing<K>(_: K) -> Option<ObjectRef<BackgroundPersistence>> {
    None
}

/// The resources that read the Secret `ns`/`name` as a Kubernetes secret source.
fn reading(
    resources: &Store<BackgroundPersistence>,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<BackgroundPersistence>> {
    resources
        .state()
        .iter()
        .filter(|bp| {
            bp.spec.common_persistence_specs.secret_client
                == Some(crate::crd::SecretClient::Kubernetes)
                && render::secret::wanted(bp).iter().any(|(_, reference)| {
                    secrets::kubernetes::locate(
                        reference,
                        &bp.spec.common_persistence_specs.namespace,
                    ) == (ns, name)
                })
        })
        .map(|bp| ObjectRef::from_obj(bp.as_ref()))
        .collect()
}
