//! The node's side of the tests: the image, the Helm-installed operator,
//! resources applied as a user would, and pods watched until they are Ready.

use crate::cli;
use crate::support::{self, rig};
use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A release and namespace of the tests' own: `deploy/base` (applied by
/// tests/gitops) uses `bgpersist-system` and cluster-wide names of `bgpersist`.
pub const OPERATOR_NS: &str = "bgpersist-node-tests";
pub const RELEASE: &str = "bgpersist-node-tests";
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=bgpersist,\
    app.kubernetes.io/instance=bgpersist-node-tests,app.kubernetes.io/component=operator";
/// How often the Helm-installed operator re-reads cloud secrets: short, so
/// the rotation test sees a rotation within seconds.
pub const SECRET_REFRESH_SECONDS: u64 = 2;

/// `BGP_IMAGE` and `BGP_IMAGE_ARCHIVE` from the file `hack/image` writes.
pub fn image_env(key: &str) -> String {
    let path = std::path::Path::new(&rig("k8s", "BGP_RIG_DIR")).join("image.env");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("{key} missing from {}: run hack/image", path.display()))
}

pub fn image() -> String {
    image_env("BGP_IMAGE")
}

pub async fn client() -> anyhow::Result<Client> {
    rig("node", "BGP_NODE_NAME");
    support::kubeclient::client().await
}

/// Installs the chart once per test binary (`helm upgrade --install`) with the
/// image from `hack/image` and two replicas, and waits for a leader.
pub async fn operator() -> anyhow::Result<Client> {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let client = client().await?;
    DONE.get_or_try_init(|| async {
        cli::ensure_crd()?;
        let image = image();
        let (repository, tag) = image.rsplit_once(':').context("image without a tag")?;
        let env = |name: &str, value: String| json!({"name": name, "value": value});
        let values = json!({
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "replicaCount": 2,
            "logFormat": "text",
            "secretRefreshSeconds": SECRET_REFRESH_SECONDS,
            // The rig's moto stands in for AWS Secrets Manager; GCP fails fast.
            "extraEnv": [
                env("BGP_AWS_ENDPOINT_URL", rig("moto", "BGP_AWS_ENDPOINT_FOR_PODS")),
                env("AWS_REGION", rig("moto", "BGP_AWS_REGION")),
                env("AWS_ACCESS_KEY_ID", rig("moto", "BGP_AWS_ACCESS_KEY_ID")),
                env("AWS_SECRET_ACCESS_KEY", rig("moto", "BGP_AWS_SECRET_ACCESS_KEY")),
                env("AWS_EC2_METADATA_DISABLED", "true".into()),
                env("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent".into()),
                env("BGP_GCP_SECRET_MANAGER_ENDPOINT", "http://127.0.0.1:9".into()),
            ],
        });
        let file = std::path::Path::new(&rig("k8s", "BGP_RIG_DIR")).join("node-tests-values.json");
        std::fs::write(&file, serde_json::to_vec(&values)?)?;
        let file = file.display().to_string();
        cli::helm(&[
            "upgrade",
            "--install",
            RELEASE,
            "charts/bgpersist",
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--kubeconfig",
            &rig("k8s", "BGP_KUBECONFIG"),
            "--values",
            &file,
        ])?;
        // Only the leader is Ready; the follower stays NotReady by design.
        let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready_pods(&pods, OPERATOR_SELECTOR).await?.is_empty() {
            if Instant::now() > deadline {
                let all = pods
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await?;
                bail!(
                    "no operator pod Ready within 120 s: {}",
                    describe(&all.items)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    Ok(client)
}

pub fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods matching `selector` that are Ready and not terminating.
pub async fn ready_pods(pods: &Api<Pod>, selector: &str) -> anyhow::Result<Vec<Pod>> {
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(list.items.into_iter().filter(is_ready).collect())
}

/// Waits until exactly `n` pods matching `selector` are Ready (and no other
/// pod of theirs is left); returns them. Fails with every pod's state.
pub async fn wait_ready(
    pods: &Api<Pod>,
    selector: &str,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<Pod>> {
    let deadline = Instant::now() + within;
    loop {
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await?
            .items;
        let ready: Vec<Pod> = all.iter().filter(|p| is_ready(p)).cloned().collect();
        if ready.len() == n && all.len() == n {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            bail!(
                "{n} Ready pods for {selector} not reached within {within:?}: {}",
                describe(&all)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line per pod: name, phase, readiness, container states.
pub fn describe(pods: &[Pod]) -> String {
    let lines: Vec<String> = pods
        .iter()
        .map(|p| {
            let st = p.status.as_ref();
            let containers: Vec<String> = st
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}: ready={} restarts={} {:?}",
                        c.name, c.ready, c.restart_count, c.state
                    )
                })
                .collect();
            format!(
                "{} phase={:?} ready={} [{}] {:?}",
                p.name_any(),
                st.and_then(|s| s.phase.clone()),
                is_ready(p),
                containers.join("; "),
                st.and_then(|s| s.conditions.clone()).unwrap_or_default()
            )
        })
        .collect();
    format!("{} pod(s)\n  {}", pods.len(), lines.join("\n  "))
}

pub fn uids(pods: &[Pod]) -> BTreeMap<String, String> {
    pods.iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect()
}

/// The selector of one writer's pods.
pub fn writer_selector(resource: &str, writer: &str) -> String {
    format!("bgpersist.dev/resource={resource},bgpersist.dev/writer={writer}")
}

/// Applies a BackgroundPersistence as a user would (server-side, own manager),
/// after creating the Kafka topics its spec names: a writer is Ready only once
/// its topic and dead-letter topic exist, for tests as for users.
pub async fn apply_bp(client: &Client, bp: &Value) -> anyhow::Result<()> {
    let specs = &bp["spec"]["common_persistence_specs"];
    if specs["bus_backend"].as_str().unwrap_or("KAFKA") == "KAFKA"
        && let Some(fields) = specs.as_object()
    {
        let topics: Vec<(&str, i32)> = fields
            .iter()
            .filter(|(k, _)| {
                k.ends_with("_subscription_id") || k.ends_with("_topic") || k.ends_with("_topic_id")
            })
            .filter_map(|(_, v)| v.as_str().map(|t| (t, 1)))
            .collect();
        crate::seed::ensure_topics(&topics).await?;
    }
    apply_bp_as_is(client, bp).await
}

/// Applies a BackgroundPersistence without creating its topics first.
pub async fn apply_bp_as_is(client: &Client, bp: &Value) -> anyhow::Result<()> {
    let api: Api<bgpersist::crd::BackgroundPersistence> = Api::all(client.clone());
    let name = bp["metadata"]["name"].as_str().context("no name")?;
    api.patch(
        name,
        &PatchParams::apply("bgpersist-node-tests").force(),
        &Patch::Apply(bp),
    )
    .await?;
    Ok(())
}

/// Cloud secrets of one test in the rig's moto: SASL credentials that work on
/// the rig's Kafka (with the rig's CA, for TLS) and the given store URIs,
/// under `<prefix>/...`.
pub async fn cloud_secrets(prefix: &str, stores: &[(&str, String)]) -> anyhow::Result<Value> {
    let sasl = format!("{prefix}/kafka-sasl");
    let creds = json!({
        "username": rig("kafka", "BGP_KAFKA_SCRAM_USER"),
        "password": rig("kafka", "BGP_KAFKA_SCRAM_PASSWORD"),
        "ssl_ca_pem": std::fs::read_to_string(rig("kafka", "BGP_RIG_CA"))?,
    });
    support::cloud::create_aws(&sasl, &creds.to_string()).await?;
    let mut uris = serde_json::Map::new();
    for (slot, uri) in stores {
        let name = format!("{prefix}/{slot}");
        support::cloud::create_aws(&name, uri).await?;
        uris.insert((*slot).to_string(), name.into());
    }
    Ok(json!({"kafka_sasl_secret": sasl, "store_uri_secrets": uris}))
}

/// The seed example pointed at the rig, as `hack/demo` does: the pod-facing
/// SASL_SSL listener with the seed's own security settings (SASL_SSL,
/// SCRAM-SHA-512; the rig's CA in the Kafka secret), this project's image for
/// every image field, a standalone Redis; `patch` merged last.
pub fn seed(prefix: &str, patch: Value) -> anyhow::Result<Value> {
    let image = image();
    let mut bp = support::seed_value(
        prefix,
        json!({
            "common_persistence_specs": {
                "bus_writer_image_go": image,
                "bus_writer_image_python": image,
                "bus_writer_image_bswl": image,
                "bus_writer_image_rust": image,
                "service_account_name": "writers",
            },
            "kafka_bootstrap_servers": rig("kafka", "BGP_KAFKA_SASL_SSL_FOR_PODS"),
            "redis_is_clustered": "0",
        }),
    )?;
    support::json_merge(&mut bp["spec"], &patch);
    Ok(bp)
}

/// A small writer entry: requests stay low so every test's pods fit the
/// node's two cores at once.
pub fn writer(name: &str, kind: &str, replicas: i64) -> Value {
    json!({
        "name": name,
        "bus_subscriber_type": kind,
        "request": {"cpu": "10m", "memory": "32Mi"},
        "limit": {"cpu": "1", "memory": "256Mi"},
        "default_replica_count": replicas,
    })
}

/// A resource's name and its target namespace.
pub fn names(bp: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&bp["metadata"]["name"]),
        s(&bp["spec"]["common_persistence_specs"]["namespace"]),
    )
}

/// Creates a namespace with `labels` before the operator would.
pub async fn create_namespace(client: &Client, name: &str, labels: Value) -> anyhow::Result<()> {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = json!({"metadata": {"name": name, "labels": labels}});
    nss.create(&Default::default(), &serde_json::from_value(ns)?)
        .await?;
    Ok(())
}

/// Deletes a test's resource and namespace; errors are ignored (cleanup).
pub async fn cleanup(client: &Client, resource: &str, namespace: &str) {
    let bps: Api<bgpersist::crd::BackgroundPersistence> = Api::all(client.clone());
    let _ = bps.delete(resource, &Default::default()).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = nss.delete(namespace, &Default::default()).await;
}

/// The host PID of a pod's first container, from containerd's task list.
pub fn container_pid(pod: &Pod) -> anyhow::Result<u32> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.container_id.clone())
        .context("pod has no container id")?;
    let id = id.trim_start_matches("containerd://");
    let out = std::process::Command::new("ctr")
        .args([
            "--address",
            &rig("node", "BGP_NODE_CONTAINERD_SOCK"),
            "--namespace",
            "k8s.io",
            "tasks",
            "ls",
        ])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next().and_then(|p| p.parse().ok()))?
        })
        .with_context(|| format!("container {id} not in containerd's task list"))
}

/// Waits until the resource is Ready for its current generation (the
/// condition and the status both observed it).
pub async fn wait_bp_ready(client: &Client, name: &str, within: Duration) -> anyhow::Result<()> {
    let api: Api<bgpersist::crd::BackgroundPersistence> = Api::all(client.clone());
    let deadline = Instant::now() + within;
    loop {
        let bp = api.get(name).await?;
        let generation = bp.metadata.generation;
        let status = bp.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        if status.observed_generation == generation
            && ready.is_some_and(|c| c.status == "True" && c.observed_generation == generation)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} not Ready for generation {generation:?}: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
