//! The apply step of a writer's NetworkPolicy, kept out of the controller:
//! applied when rendered, kept as it is when its store URI was not read
//! this time, and left to pruning when the resource turns it off.

use super::applier::{Applied, Kind};
use super::cache::{self, Caches};
use super::render::RenderedWriter;
use super::render::network_policy::WriterPolicy;
use super::{Error, apply, metrics::Metrics};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, Client};

pub async fn apply(
    client: &Client,
    ns: &str,
    w: &RenderedWriter,
    caches: &Caches,
    m: &Metrics,
    applied: &mut Applied,
) -> Result<(), Error> {
    match &w.network_policy {
        WriterPolicy::Off => {}
        WriterPolicy::KeepLive => applied.keep(Kind::NetworkPolicy, &w.object_name),
        WriterPolicy::Apply(policy) => {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
            let live = cache::lookup(caches.network_policies.as_ref(), Some(ns), &w.object_name);
            let (_, wrote) = apply::ensure(&api, policy, live, m).await?;
            applied.record(Kind::NetworkPolicy, &w.object_name, wrote);
        }
    }
    Ok(())
}
