//! `kubectl bgpersist status` on real writer pods: their metrics and
//! readiness read through the API server's pod proxy, for a writer that is
//! ready (exit 0) and one that cannot reach its bus (exit 3, the pod's own
//! `/readyz` reason as the last error).

use crate::cluster::{self, writer};
use crate::support::plugin::on_rig;
use crate::support::{self, rig};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The only pod of `selector` once its `/readyz` says why the bus is not reached.
async fn not_ready_with_reason(
    pods: &Api<Pod>,
    ns: &str,
    selector: &str,
) -> anyhow::Result<(String, String)> {
    let client = crate::support::kubeclient::pod_reader().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await?
            .items;
        if let [pod] = all.as_slice() {
            let name = pod.name_any();
            // A writer just started says only "not ready" until its first
            // attempt at the bus has a reason.
            if let Ok(Some(reason)) =
                bgpersist::pod_proxy::not_ready_reason(&client, ns, &name).await
                && reason.starts_with("bus not reached")
            {
                return Ok((name, reason));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no writer pod giving a not-ready reason: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_writers_through_the_pod_proxy() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = support::unique("node-status");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let good = cluster::seed("status", patch.clone())?;
    // A bus address on the pod-facing host where nothing listens.
    let host = rig("node", "BGP_RIG_HOST_IP");
    let closed = std::net::TcpListener::bind((host.as_str(), 0))?
        .local_addr()?
        .port();
    patch["kafka_bootstrap_servers"] = json!(format!("{host}:{closed}"));
    let bad = cluster::seed("nobus", patch)?;
    let (good_name, good_ns) = cluster::names(&good);
    let (bad_name, bad_ns) = cluster::names(&bad);
    cluster::apply_bp(&client, &good).await?;
    cluster::apply_bp(&client, &bad).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &good_ns);
    let selector = cluster::writer_selector(&good_name, "online");
    cluster::wait_ready(&pods, &selector, 1, Duration::from_secs(120)).await?;
    let out = on_rig(&["status", &good_name, "--window", "1s", "-o", "json"])?;
    assert_eq!(out.code, 0, "{out}");
    let report: Value = serde_json::from_str(&out.stdout)?;
    let w = &report["writers"][0];
    assert_eq!(w["name"], "online", "{out}");
    assert_eq!(
        (&w["ready_replicas"], &w["desired_replicas"]),
        (&json!(1), &json!(1)),
        "{out}"
    );
    assert_eq!(w["ready"], true, "{out}");
    assert_eq!(
        w["pods_scraped"], 1,
        "its /metrics read twice through the proxy: {out}"
    );
    assert!(w["consumer_lag_messages"].is_number(), "{out}");
    for rate in [
        "dead_letters_per_second",
        "retries_per_second",
        "written_per_second",
    ] {
        assert!(w["rates"][rate].is_number(), "{rate}: {out}");
    }
    assert!(w["last_error"].is_null(), "{out}");
    let table = on_rig(&["status", &good_name, "--window", "200ms"])?;
    assert_eq!(table.code, 0, "{table}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("online") && l.contains("1/1")),
        "{table}"
    );

    let bad_pods: Api<Pod> = Api::namespaced(client.clone(), &bad_ns);
    let selector = cluster::writer_selector(&bad_name, "online");
    let (pod, reason) = not_ready_with_reason(&bad_pods, &bad_ns, &selector).await?;
    assert!(reason.starts_with("bus not reached"), "{reason}");
    let out = on_rig(&["status", &bad_name, "--window", "200ms", "-o", "json"])?;
    assert_eq!(out.code, 3, "{out}");
    let report: Value = serde_json::from_str(&out.stdout)?;
    let w = &report["writers"][0];
    assert_eq!(w["ready"], false, "{out}");
    let last = w["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with(&format!("pod {pod}: bus not reached")),
        "the pod's own reason: {out}"
    );
    assert_eq!(
        w["pods_scraped"], 1,
        "a writer not ready still serves /metrics: {out}"
    );

    cluster::cleanup(&client, &good_name, &good_ns).await;
    cluster::cleanup(&client, &bad_name, &bad_ns).await;
    Ok(())
}
