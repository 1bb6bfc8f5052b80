//! A writer pod is Ready only once it has reached its bus: its bootstrap
//! address is a proxy this test opens only after watching the pod run
//! NotReady (and never restarted) for a while.

use crate::cluster::{self, writer};
use crate::support::rig;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection on `listener` to `target` until the test ends.
fn forward(listener: TcpListener, target: String) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_pod_is_ready_only_after_it_reaches_its_bus() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let host = rig("node", "BGP_RIG_HOST_IP");
    // A port on the pod-facing address that nothing listens on yet.
    let port = std::net::TcpListener::bind((host.as_str(), 0))?
        .local_addr()?
        .port();
    let prefix = crate::support::unique("node-ready");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["kafka_bootstrap_servers"] = json!(format!("{host}:{port}"));
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let bp = cluster::seed("ready", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = cluster::writer_selector(&name, "online");

    // Running with its container started, but not Ready, for 15 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let running_since = loop {
        let all = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let started = all.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.started == Some(true)))
        });
        if started {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "writer pod never started: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    while running_since.elapsed() < Duration::from_secs(15) {
        let all = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        assert!(
            !all.iter().any(cluster::is_ready),
            "a writer pod is Ready while its bus cannot be reached: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Open the bus: the proxy leads to Kafka's pod-facing SASL_SSL listener
    // (its certificate names the pod-facing address the proxy listens on).
    let listener = TcpListener::bind((host.as_str(), port)).await?;
    forward(listener, rig("kafka", "BGP_KAFKA_SASL_SSL_FOR_PODS"));
    let ready = cluster::wait_ready(&pods, &selector, 1, Duration::from_secs(60)).await?;
    let restarts: i32 = ready[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or_default();
    assert_eq!(
        restarts, 0,
        "the writer restarted while waiting for its bus"
    );

    cluster::cleanup(&client, &name, &ns).await;
    Ok(())
}
