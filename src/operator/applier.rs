//! The apply step's bookkeeping. Every object a reconcile applies, or must
//! keep without applying (a refused writer keeps what it last had), is
//! recorded by kind; pruning then deletes exactly the objects carrying the
//! resource's labels that were not recorded. A new rendered kind is a new
//! `Kind` variant, and the exhaustive matches below do not compile until it
//! says how it is pruned.

use super::cache::{self, Caches};
use super::{Error, apply, metrics::Metrics, render};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DynamicObject};
use std::collections::BTreeMap;

/// The kinds a resource renders into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Secret,
    Deployment,
    PodDisruptionBudget,
    ScaledObject,
    TriggerAuthentication,
    NetworkPolicy,
}

impl Kind {
    /// Pruned kinds, in the order they are pruned: a writer's Deployment
    /// goes before what it uses.
    pub const PRUNE_ORDER: [Kind; 7] = [
        Kind::Deployment,
        Kind::PodDisruptionBudget,
        Kind::ScaledObject,
        Kind::TriggerAuthentication,
        // After the Deployment: its pods never run unconfined.
        Kind::NetworkPolicy,
        Kind::ServiceAccount,
        Kind::Secret,
    ];

    /// Kinds of which a writer has one each, named like its Deployment.
    pub const PER_WRITER: [Kind; 5] = [
        Kind::Deployment,
        Kind::PodDisruptionBudget,
        Kind::ScaledObject,
        Kind::TriggerAuthentication,
        Kind::NetworkPolicy,
    ];

    /// How the kind is named in reports and events.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::Deployment => "Deployment",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
            Kind::ScaledObject => "ScaledObject",
            Kind::TriggerAuthentication => "TriggerAuthentication",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Whether objects of the kind are pruned. The target namespace never is:
    /// it may hold other workloads.
    pub fn pruned(self) -> bool {
        match self {
            Kind::Namespace => false,
            Kind::ServiceAccount
            | Kind::Secret
            | Kind::Deployment
            | Kind::PodDisruptionBudget
            | Kind::ScaledObject
            | Kind::TriggerAuthentication
            | Kind::NetworkPolicy => true,
        }
    }
}

/// What one reconcile applied and what it keeps, in the target namespace.
#[derive(Debug)]
pub struct Applied {
    namespace: String,
    keep: BTreeMap<Kind, Vec<(String, String)>>,
    /// "Kind/name" of every object written, in the order written.
    pub written: Vec<String>,
}

impl Applied {
    pub fn new(namespace: &str) -> Self {
        Applied {
            namespace: namespace.to_string(),
            keep: BTreeMap::new(),
            written: Vec::new(),
        }
    }

    /// An object the reconcile applied (`wrote`: it had to send it).
    pub fn record(&mut self, kind: Kind, name: &str, wrote: bool) {
        if wrote {
            self.written.push(format!("{}/{name}", kind.label()));
        }
        self.keep(kind, name);
    }

    /// An object pruning must leave alone although it was not applied.
    pub fn keep(&mut self, kind: Kind, name: &str) {
        let key = (self.namespace.clone(), name.to_string());
        let kept = self.keep.entry(kind).or_default();
        if !kept.contains(&key) {
            kept.push(key);
        }
    }

    /// Everything a writer may have, named like its Deployment.
    pub fn keep_writer(&mut self, deployment: &str) {
        for kind in Kind::PER_WRITER {
            self.keep(kind, deployment);
        }
    }

    pub fn kept(&self, kind: Kind) -> &[(String, String)] {
        self.keep.get(&kind).map(Vec::as_slice).unwrap_or_default()
    }

    /// Deletes the objects of `resource` (labelled `selector`) that were
    /// neither applied nor kept, kind by kind in `Kind::PRUNE_ORDER`, listed
    /// from the watch caches when they are ready. KEDA's kinds only when its
    /// CRDs are served. Returns "namespace/name" of each deleted object.
    pub async fn prune(
        &self,
        client: &Client,
        caches: &Caches,
        resource: &str,
        selector: &str,
        keda_served: bool,
        m: &Metrics,
    ) -> Result<Vec<String>, Error> {
        let mut pruned = Vec::new();
        for kind in Kind::PRUNE_ORDER {
            let keep = self.kept(kind);
            let c = || client.clone();
            let deleted = match kind {
                Kind::Namespace => Vec::new(),
                Kind::ServiceAccount => {
                    let cached = cache::owned_by(caches.service_accounts.as_ref(), resource);
                    let api = Api::<ServiceAccount>::all(c());
                    apply::prune(&api, cached, selector, keep, m).await?
                }
                Kind::Secret => {
                    let cached = cache::owned_by(caches.secrets.as_ref(), resource);
                    apply::prune(&Api::<Secret>::all(c()), cached, selector, keep, m).await?
                }
                Kind::Deployment => {
                    let cached = caches
                        .deployments
                        .as_ref()
                        .and_then(|c| c.owned_by(resource));
                    let api = Api::<Deployment>::all(c());
                    apply::prune(&api, cached, selector, keep, m).await?
                }
                Kind::PodDisruptionBudget => {
                    let cached = caches.pdbs.as_ref().and_then(|c| c.owned_by(resource));
                    let api = Api::<PodDisruptionBudget>::all(c());
                    apply::prune(&api, cached, selector, keep, m).await?
                }
                // Also when the resource turns `network_policy` off.
                Kind::NetworkPolicy => {
                    let cached = cache::owned_by(caches.network_policies.as_ref(), resource);
                    let api = Api::<NetworkPolicy>::all(c());
                    apply::prune(&api, cached, selector, keep, m).await?
                }
                Kind::ScaledObject | Kind::TriggerAuthentication if keda_served => {
                    let (ar, store) = if kind == Kind::ScaledObject {
                        let ar = render::scaled_object::api_resource();
                        (ar, caches.scaled_objects.as_ref())
                    } else {
                        let ar = render::trigger_authentication::api_resource();
                        (ar, caches.trigger_authentications.as_ref())
                    };
                    let all: Api<DynamicObject> = Api::all_with(c(), &ar);
                    let scoped = |ns: &str| Api::namespaced_with(c(), ns, &ar);
                    let cached = cache::owned_by(store, resource);
                    apply::prune_with(&all, scoped, cached, selector, keep, m).await?
                }
                Kind::ScaledObject | Kind::TriggerAuthentication => Vec::new(),
            };
            pruned.extend(deleted);
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::Deployment,
        Kind::PodDisruptionBudget,
        Kind::ScaledObject,
        Kind::TriggerAuthentication,
        Kind::NetworkPolicy,
    ];

    #[test]
    fn every_pruned_kind_is_in_the_prune_order_once() {
        for k in ALL {
            let times = Kind::PRUNE_ORDER.iter().filter(|p| **p == k).count();
            assert_eq!(times, usize::from(k.pruned()), "{k:?}");
        }
    }

    #[test]
    fn record_notes_only_writes_and_keeps_everything() {
        let mut a = Applied::new("ns");
        a.record(Kind::Deployment, "r-w", true);
        a.record(Kind::PodDisruptionBudget, "r-w", false);
        a.keep(Kind::Secret, "r-stores");
        assert_eq!(a.written, vec!["Deployment/r-w"]);
        assert_eq!(a.kept(Kind::Deployment), [("ns".into(), "r-w".into())]);
        assert_eq!(a.kept(Kind::PodDisruptionBudget).len(), 1);
        assert_eq!(a.kept(Kind::Secret), [("ns".into(), "r-stores".into())]);
        assert!(a.kept(Kind::ScaledObject).is_empty());
    }

    #[test]
    fn a_kept_writer_keeps_every_per_writer_kind_once() {
        let mut a = Applied::new("ns");
        a.record(Kind::Deployment, "r-w", false);
        a.keep_writer("r-w");
        for k in Kind::PER_WRITER {
            assert_eq!(a.kept(k), [("ns".into(), "r-w".into())], "{k:?}");
        }
        assert!(a.kept(Kind::Secret).is_empty());
    }
}
