//! `common_persistence_specs.network_policy` on the node: the policy the
//! operator applies selects exactly the writer pods running there, and its
//! egress names the rig's pod-facing address (an IP literal) for the bus and
//! the store. This proves selection and admission; that the rig's enforcer
//! (part `netpol`) blocks what the policy does not allow is
//! `network_policy_traffic.rs`.

use crate::cluster::{self, writer};
use crate::support::rig;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_selects_the_writer_pods_running_on_the_node() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = crate::support::unique("node-netpol");
    let redis = rig("redis", "BGP_REDIS_URL_FOR_PODS");
    let mut patch = cluster::cloud_secrets(&prefix, &[("online_store", redis.clone())]).await?;
    patch["common_persistence_specs"]["network_policy"] = json!({"enabled": true});
    patch["writers"] = json!([
        writer("online", "ONLINE_WRITER", 2),
        writer("other", "ONLINE_WRITER", 1)
    ]);
    let bp = cluster::seed("netpol", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let result = check(&client, &name, &ns, &redis).await;
    cluster::cleanup(&client, &name, &ns).await;
    result
}

async fn check(client: &kube::Client, name: &str, ns: &str, redis: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let running = cluster::wait_ready(
        &pods,
        &cluster::writer_selector(name, "online"),
        2,
        Duration::from_secs(120),
    )
    .await?;
    let others = cluster::wait_ready(
        &pods,
        &cluster::writer_selector(name, "other"),
        1,
        Duration::from_secs(120),
    )
    .await?;

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let policy_name = format!("{name}-online");
    let deadline = Instant::now() + Duration::from_secs(30);
    let np = loop {
        if let Some(np) = policies.get_opt(&policy_name).await? {
            break np;
        }
        anyhow::ensure!(Instant::now() < deadline, "no NetworkPolicy {policy_name}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spec = np.spec.clone().unwrap_or_default();
    let labels = spec
        .pod_selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    anyhow::ensure!(!labels.is_empty(), "the policy selects every pod");
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");

    // What the policy selects, asked of the API server, is exactly the
    // online writer's running pods: not the other writer's.
    let selected: BTreeSet<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(cluster::is_ready)
        .filter_map(|p| p.metadata.name)
        .collect();
    let online: BTreeSet<String> = running
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(selected, online, "selected by {selector}");
    for p in &others {
        let name = p.metadata.name.clone().unwrap_or_default();
        assert!(
            !selected.contains(&name),
            "{name} of another writer is selected"
        );
    }
    let node = rig("node", "BGP_NODE_NAME");
    for p in &running {
        let on = p.spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(on.as_deref(), Some(node.as_str()), "pod on the rig's node");
    }

    // Bus and store are IP literals here: narrowed to the address.
    let host = rig("node", "BGP_RIG_HOST_IP");
    let egress = serde_json::to_value(&spec.egress)?;
    let port = |addr: &str| -> u16 {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    };
    let kafka_port = port(&rig("kafka", "BGP_KAFKA_SASL_SSL_FOR_PODS"));
    let redis_port = port(redis);
    let to_host = egress
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == format!("{host}/32"))
        .cloned()
        .unwrap_or_default();
    let mut ports: Vec<u64> = to_host["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    ports.sort_unstable();
    let mut want = vec![u64::from(kafka_port), u64::from(redis_port)];
    want.sort_unstable();
    assert_eq!(ports, want, "egress to {host}: {egress:#}");
    Ok(())
}
