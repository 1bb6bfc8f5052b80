//! `common_persistence_specs.network_policy` enforced on the node by the
//! rig's `netpol` part (kube-router's policy controller): what a writer's
//! policy does not allow is refused, what it allows gets through.
//!
//! Probe pods run the project's image with bash (`/dev/tcp`) and print, once
//! a second, which of their targets accept a TCP connection:
//! - one with the writer's labels, so its policy selects it, reaches the bus
//!   and the store but not Postgres (no port of the online writer's), while
//!   a pod without those labels reaches that Postgres at the same time;
//! - the writer's metrics port answers a pod that `metrics_from` names and
//!   refuses one it does not.
//!
//! With the policy not enforced the labelled probe reaches Postgres and every
//! probe the metrics port, and the test fails. The writer, under its policy,
//! becomes Ready and writes what is produced to its topic into Redis.

use crate::cluster::{self, writer};
use crate::harness::{self, dataset, pkeys, redis_entities};
use crate::support::rig;
use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a probe reports, and how long the test waits for a report.
const PROBE_ROUNDS: u32 = 50;
const WAIT: Duration = Duration::from_secs(45);

/// One line a second: `round=N at=HH:MM:SS host:port=open|closed ...`, the
/// time for reading a failure beside the enforcer's log.
/// A target that neither accepts nor refuses within 2 s counts as closed.
const PROBE_SCRIPT: &str = r#"
for round in $(seq 1 "$ROUNDS"); do
  line="round=$round at=$(date +%T)"
  for t in "$@"; do
    if timeout 2 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}"' _ "$t" 2>/dev/null; then
      line="$line $t=open"
    else
      line="$line $t=closed"
    fi
  done
  echo "$line"
  sleep 1
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_blocks_what_it_does_not_allow_and_passes_what_it_does() -> anyhow::Result<()> {
    // Fails (never skips) without an enforcer: nothing would be blocked.
    rig("netpol", "BGP_NETPOL_ENFORCER");
    let client = cluster::operator().await?;
    let prefix = crate::support::unique("node-netpol-traffic");
    let redis = rig("redis", "BGP_REDIS_URL_FOR_PODS");
    let topic = crate::support::unique("netpol-results");
    let mut patch = cluster::cloud_secrets(&prefix, &[("online_store", redis.clone())]).await?;
    patch["common_persistence_specs"]["result_bus_online_store_subscription_id"] = json!(topic);
    patch["common_persistence_specs"]["network_policy"] = json!({
        "enabled": true,
        "metrics_from": [{"podSelector": {"matchLabels": {"bgpersist.dev/test-probe": "scraper"}}}],
    });
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let bp = cluster::seed("netpoltraffic", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let result = check(&client, &name, &ns, &redis, &topic).await;
    cluster::cleanup(&client, &name, &ns).await;
    result
}

async fn check(
    client: &kube::Client,
    name: &str,
    ns: &str,
    redis: &str,
    topic: &str,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ready = cluster::wait_ready(
        &pods,
        &cluster::writer_selector(name, "online"),
        1,
        Duration::from_secs(120),
    )
    .await?;
    let writer_ip = ready[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("the writer pod has no IP")?;
    let metrics = format!("{writer_ip}:{}", bgpersist::contract::WRITER_HTTP_PORT);
    let kafka = rig("kafka", "BGP_KAFKA_SASL_SSL_FOR_PODS");
    let store = host_port(redis)?;
    let postgres = host_port(&rig("postgres", "BGP_POSTGRES_URL_FOR_PODS"))?;

    let writer_labels = json!({"bgpersist.dev/resource": name, "bgpersist.dev/writer": "online"});
    let probes = [
        (
            "probe-writer",
            writer_labels,
            vec![&kafka, &store, &postgres],
        ),
        (
            "probe-other",
            json!({"bgpersist.dev/test-probe": "other"}),
            vec![&postgres, &metrics],
        ),
        (
            "probe-scraper",
            json!({"bgpersist.dev/test-probe": "scraper"}),
            vec![&metrics],
        ),
    ];
    for (probe, labels, targets) in &probes {
        pods.create(&PostParams::default(), &probe_pod(probe, labels, targets)?)
            .await?;
    }

    // Egress: the bus and the store open, Postgres refused, in one round of
    // the selected probe; the same Postgres open to the unselected one.
    wait_round(&pods, "probe-writer", |r| {
        r.get(&kafka) == Some(&true)
            && r.get(&store) == Some(&true)
            && r.get(&postgres) == Some(&false)
    })
    .await?;
    // Ingress: the metrics port refused to a pod metrics_from does not
    // name, open to one it names.
    wait_round(&pods, "probe-other", |r| {
        r.get(&postgres) == Some(&true) && r.get(&metrics) == Some(&false)
    })
    .await?;
    wait_round(&pods, "probe-scraper", |r| r.get(&metrics) == Some(&true)).await?;

    // The writer itself, under its policy, writes what reaches its topic.
    let keys = pkeys("netpol", 3);
    let (payloads, expected) = dataset(&keys);
    harness::produce(topic, &payloads).await?;
    let conn = harness::standalone().await?;
    harness::eventually("the results in Redis", Duration::from_secs(60), || {
        let (keys, expected) = (&keys, &expected);
        let mut conn = conn.clone();
        async move { Ok((redis_entities(&mut conn, "", keys).await? == *expected).then_some(())) }
    })
    .await
}

/// `host:port` of a `scheme://[user@]host:port/...` URI.
fn host_port(uri: &str) -> anyhow::Result<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hp = authority.rsplit('@').next().unwrap_or_default();
    anyhow::ensure!(hp.contains(':'), "no port in {uri}");
    Ok(hp.to_string())
}

fn probe_pod(name: &str, labels: &Value, targets: &[&String]) -> anyhow::Result<Pod> {
    let mut command = vec![
        json!("bash"),
        json!("-c"),
        json!(PROBE_SCRIPT),
        json!("probe"),
    ];
    command.extend(targets.iter().map(|t| json!(t)));
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "probe",
                "image": cluster::image(),
                "imagePullPolicy": "Never",
                "command": command,
                "env": [{"name": "ROUNDS", "value": PROBE_ROUNDS.to_string()}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "200m", "memory": "64Mi"},
                },
            }],
        },
    }))?)
}

/// A probe's rounds so far: target -> open.
fn rounds(log: &str) -> Vec<BTreeMap<String, bool>> {
    log.lines()
        .filter(|l| l.starts_with("round="))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.rsplit_once('='))
                .filter(|(_, state)| matches!(*state, "open" | "closed"))
                .map(|(t, state)| (t.to_string(), state == "open"))
                .collect()
        })
        .collect()
}

/// Waits for a round of `probe` that `want` accepts; fails with its log.
async fn wait_round(
    pods: &Api<Pod>,
    probe: &str,
    want: impl Fn(&BTreeMap<String, bool>) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut log = String::new();
    while Instant::now() < deadline {
        // A pod not started yet has no log: keep waiting.
        if let Ok(l) = pods.logs(probe, &LogParams::default()).await {
            log = l;
            if rounds(&log).iter().any(&want) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let state = cluster::describe(&pods.get_opt(probe).await?.into_iter().collect::<Vec<_>>());
    anyhow::bail!("{probe}: no round as expected within {WAIT:?}; its log:\n{log}\n{state}")
}
