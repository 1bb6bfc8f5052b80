//! A resource's life on the node: a cloud secret rotation rolls exactly the
//! pods that mount it, the garbage collector removes what the operator made
//! (never a ServiceAccount that was there before), and a writer's PDB refuses
//! an eviction that would take too many of its pods.

use crate::cluster::{self, writer};
use crate::offline_harness::PgSchema;
use crate::seed::pod_pg_uri;
use crate::support::{self, rig};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn ready_uids(
    pods: &Api<Pod>,
    resource: &str,
    writer: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let sel = cluster::writer_selector(resource, writer);
    Ok(cluster::uids(&cluster::ready_pods(pods, &sel).await?))
}

#[tokio::test]
async fn rotating_a_cloud_secret_restarts_exactly_the_pods_that_mount_it() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let schema = PgSchema::create().await?;
    let prefix = support::unique("node-rot");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[
            ("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS")),
            ("offline_store", pod_pg_uri(&schema)),
        ],
    )
    .await?;
    patch["writers"] = json!([
        writer("online", "ONLINE_WRITER", 1),
        writer("offline", "OFFLINE_WRITER", 1)
    ]);
    let bp = cluster::seed("rot", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for w in ["online", "offline"] {
        let sel = cluster::writer_selector(&name, w);
        cluster::wait_ready(&pods, &sel, 1, Duration::from_secs(120)).await?;
    }
    let online_before = ready_uids(&pods, &name, "online").await?;
    let offline_before = ready_uids(&pods, &name, "offline").await?;

    // A new version of the online store's URI only (another Redis database).
    let rotated = rig("redis", "BGP_REDIS_URL_FOR_PODS").replace("/0", "/1");
    support::cloud::put_aws(&format!("{prefix}/online_store"), &rotated).await?;

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sel = cluster::writer_selector(&name, "online");
        let all = pods.list(&ListParams::default().labels(&sel)).await?.items;
        let now = cluster::uids(&all);
        if all.len() == 1
            && cluster::is_ready(&all[0])
            && now
                .values()
                .all(|u| !online_before.values().any(|b| b == u))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the online writer's pod was not replaced after the rotation: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Several refresh intervals later the offline writer still runs the same pod.
    tokio::time::sleep(Duration::from_secs(3 * cluster::SECRET_REFRESH_SECONDS + 2)).await;
    assert_eq!(
        ready_uids(&pods, &name, "offline").await?,
        offline_before,
        "the offline writer, which does not mount the rotated secret, was restarted"
    );

    cluster::cleanup(&client, &name, &ns).await;
    schema.drop().await;
    Ok(())
}

/// How many objects of a kind labelled with the resource are left in `ns`.
async fn left<K>(client: &Client, ns: &str, selector: &str) -> anyhow::Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .len())
}

#[tokio::test]
async fn deleting_the_resource_collects_what_it_made_but_not_a_preexisting_service_account()
-> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = support::unique("node-gc");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let bp = cluster::seed("gc", patch)?;
    let (name, ns) = cluster::names(&bp);
    let sa_name = bp["spec"]["common_persistence_specs"]["service_account_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // The namespace and its ServiceAccount exist before the resource does.
    cluster::create_namespace(&client, &ns, json!({})).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": sa_name}}))?,
    )
    .await?;

    cluster::apply_bp(&client, &bp).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sel = cluster::writer_selector(&name, "online");
    let ready = cluster::wait_ready(&pods, &sel, 1, Duration::from_secs(120)).await?;
    assert_eq!(
        ready[0]
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some(sa_name.as_str())
    );
    let sa = sas.get(&sa_name).await?;
    assert!(
        sa.owner_references().is_empty(),
        "the operator took over the pre-existing ServiceAccount: {:?}",
        sa.owner_references()
    );

    let bps: Api<bgpersist::crd::BackgroundPersistence> = Api::all(client.clone());
    bps.delete(&name, &DeleteParams::default()).await?;
    let selector = format!("bgpersist.dev/resource={name}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = [
            (
                "Deployment",
                left::<Deployment>(&client, &ns, &selector).await?,
            ),
            (
                "ReplicaSet",
                left::<ReplicaSet>(&client, &ns, &selector).await?,
            ),
            ("Pod", left::<Pod>(&client, &ns, &selector).await?),
            (
                "PodDisruptionBudget",
                left::<PodDisruptionBudget>(&client, &ns, &selector).await?,
            ),
            ("Secret", left::<Secret>(&client, &ns, &selector).await?),
        ];
        if counts.iter().all(|(_, n)| *n == 0) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not collected 120 s after the resource was deleted: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        sas.get_opt(&sa_name).await?.is_some(),
        "the pre-existing ServiceAccount {sa_name} was deleted with the resource"
    );
    cluster::cleanup(&client, &name, &ns).await;
    Ok(())
}

#[tokio::test]
async fn an_eviction_that_would_break_a_writers_pdb_is_refused() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = support::unique("node-pdb");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 2)]);
    let bp = cluster::seed("pdb", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sel = cluster::writer_selector(&name, "online");
    cluster::wait_ready(&pods, &sel, 2, Duration::from_secs(120)).await?;
    // The PDB controller has counted both pods healthy.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let allowed = pdbs
            .list(&ListParams::default().labels(&sel))
            .await?
            .items
            .first()
            .and_then(|p| p.status.as_ref())
            .map(|s| s.disruptions_allowed);
        if allowed == Some(1) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "PDB never allowed one disruption: {allowed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The pods as they are now: a rollout (the synced secrets' versions reach
    // the pod template) may have replaced the first ones.
    let ready = cluster::wait_ready(&pods, &sel, 2, Duration::from_secs(120)).await?;
    // One pod may go (maxUnavailable 1); the second, right after, may not.
    pods.evict(&ready[0].name_any(), &EvictParams::default())
        .await?;
    // Right after: the replacement pod is not Ready yet, so the budget has
    // nothing left. (A replacement Ready again restores it: the writers' pods
    // come up in about a second here.) kube-rs retries 429s by default, which
    // would wait for exactly that: these two requests go without retries.
    let mut config = crate::support::kubeclient::config().await?;
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(Client::try_from(config)?, &ns);
    let refused = pods
        .evict(&ready[1].name_any(), &EvictParams::default())
        .await;
    match refused {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 429, "{e:?}");
            assert!(e.message.contains("disruption budget"), "{e:?}");
        }
        other => panic!("the second eviction was not refused: {other:?}"),
    }
    assert!(
        pods.get_opt(&ready[1].name_any())
            .await?
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "the pod whose eviction was refused is going anyway"
    );
    cluster::cleanup(&client, &name, &ns).await;
    Ok(())
}
