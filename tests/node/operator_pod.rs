//! The operator as `helm install` runs it: a pod of the project's image under
//! the chart's ServiceAccount, leader election on, two replicas.

use crate::cluster::{self, OPERATOR_NS, OPERATOR_SELECTOR};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use std::time::{Duration, Instant};

const LEASE: &str = "bgpersist-operator";

pub(crate) async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

#[tokio::test]
async fn deleting_the_leader_pod_hands_over_to_the_other_replica() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);

    // Both replicas run; the one holding the Lease is the one Ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (leader, follower) = loop {
        let all = pods
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await?
            .items;
        let running: Vec<&Pod> = all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        let holder = holder(&leases).await?;
        if running.len() == 2
            && let Some(h) = &holder
            && let Some(l) = running.iter().find(|p| &p.name_any() == h)
            && cluster::is_ready(l)
        {
            let f = running
                .iter()
                .find(|p| &p.name_any() != h)
                .map(|p| p.name_any());
            break (l.name_any(), f.unwrap_or_default());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leader among two running operator pods (holder {holder:?}): {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let follower_pod = pods.get(&follower).await?;
    assert!(
        !cluster::is_ready(&follower_pod),
        "the follower {follower} reports Ready while {leader} leads"
    );
    // The pod runs the chart's identity and the project's image.
    let spec = pods.get(&leader).await?.spec.unwrap_or_default();
    assert_eq!(spec.service_account_name.as_deref(), Some(cluster::RELEASE));
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(cluster::image().as_str())
    );

    let t0 = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await?;
    // The other replica, or the pod replacing the deleted one: whichever
    // takes the released Lease first.
    let deadline = t0 + Duration::from_secs(90);
    let successor = loop {
        let h = holder(&leases).await?;
        if let Some(h) = h.as_deref().filter(|h| *h != leader)
            && let Some(p) = pods.get_opt(h).await?
            && cluster::is_ready(&p)
        {
            break h.to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no other pod took over from {leader} within 90 s (holder {h:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The figure the closing note quotes: delete to the new leader Ready.
    eprintln!(
        "leader handover: {leader} deleted -> {successor} holds the Lease and is Ready after {:.1} s (the follower was {follower})",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
