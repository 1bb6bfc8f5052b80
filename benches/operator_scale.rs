//! Operator at scale (not a test): N resources × 9 writers against the rig's
//! API server, run by the real operator binary. Prints the time until every
//! child is applied, API requests per reconcile and the operator's peak RSS.
//!
//!   hack/rig up k8s && cargo bench --bench operator_scale
//!   BGP_BENCH_RESOURCES=50 cargo bench --bench operator_scale
//!
//! `BGP_BENCH_OPERATOR_ENV="K=V ..."`: variables for the operator process
//! only (a heap profiler's `LD_PRELOAD`).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::crd::BackgroundPersistence;
use common::env_or;
use common::process::{http_get, metric, peak_rss, profiling_env, terminate};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WRITERS: [(&str, &str); 9] = [
    ("online", "ONLINE_WRITER"),
    ("metrics", "METRICS_WRITER"),
    ("metrics-bus", "METRICS_BUS_WRITER"),
    ("offline", "OFFLINE_WRITER"),
    ("bulk", "OFFLINE_STORE_BULK_INSERT_WRITER"),
    ("streaming", "OFFLINE_STORE_STREAMING_INSERT_WRITER"),
    ("usage", "USAGE_BUS_WRITER"),
    ("mirror", "QUERY_MIRROR_CONSUMER"),
    ("vector", "ONLINE_VECTOR_STORE_WRITER"),
];
const NAMESPACES: usize = 10;

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = env_or("BGP_BENCH_RESOURCES", 200);
    let client = support::kubeclient::client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        bgpersist::crd::CRD_NAME,
        &PatchParams::apply("bgpersist-bench").force(),
        &Patch::Apply(bgpersist::crd::definition()),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Another build of the operator (one being compared) may stand in.
    let binary = std::env::var("BGP_BENCH_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bgpersist-operator").to_string());
    let mut operator = support::without_cloud_metadata(&mut Command::new(binary))
        .args([
            "--leader-elect=false",
            "--log-format",
            "text",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("BGP_WRITER_IMAGE", support::OPERATOR_IMAGE)
        .env("KUBECONFIG", support::rig("k8s", "BGP_KUBECONFIG"))
        .env("RUST_LOG", "warn")
        // As the chart's operator Deployment sets it.
        .env("MALLOC_ARENA_MAX", "1")
        .envs(profiling_env("BGP_BENCH_OPERATOR_ENV"))
        .stdout(Stdio::null())
        .spawn()?;

    let run = support::unique("b");
    let tag = format!("b{}", &run[run.len().saturating_sub(5)..]).replace('-', "");
    let bps: Api<BackgroundPersistence> = Api::all(client.clone());
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let bps = bps.clone();
        let bp = resource(&tag, i);
        async move {
            bps.create(&PostParams::default(), &bp?)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    });
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let created = started.elapsed();

    let want = n * WRITERS.len();
    // A metadata watch, not a LIST of every Deployment every 250 ms: that
    // poll made the API server being measured serialise all of their
    // metadata four times a second.
    let deployments: Api<PartialObjectMeta<Deployment>> = Api::all(client.clone());
    let config =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=bgpersist-operator");
    let mut seen = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(deployments, config).applied_objects());
    while seen.len() < want {
        let left = Duration::from_secs(1200).saturating_sub(started.elapsed());
        let next = tokio::time::timeout(left, events.try_next()).await;
        let Ok(next) = next else {
            anyhow::bail!("only {}/{want} Deployments after 20 min", seen.len());
        };
        let Some(d) = next? else {
            anyhow::bail!("the Deployment watch ended at {}/{want}", seen.len());
        };
        if let Some(name) = d.metadata.name.filter(|x| x.starts_with(&tag)) {
            seen.insert(name);
        }
    }
    let applied = started.elapsed();

    // Let the status writes and the watch echoes settle before reading
    // counters: quiet once a 3 s window sends no write. Reconciles never stop
    // (writers whose pods are not ready are looked at every 10 s).
    let mut last = f64::NAN;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let writes = metric(
            &http_get(port, "/metrics")?,
            "bgpersist_operator_api_writes_total",
        );
        if writes == last || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        last = writes;
    }
    let m = http_get(port, "/metrics")?;
    let reconciles = metric(&m, "bgpersist_operator_reconciles_total");
    let requests = api_requests(&m);
    let writes = metric(&m, "bgpersist_operator_api_writes_total");

    // A resync of everything with nothing changed: count what it costs.
    let before = requests;
    let before_writes = writes;
    for i in 0..n.min(20) {
        bps.patch(
            &format!("{tag}-{i}"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"bench/poke": "1"}}})),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m2 = http_get(port, "/metrics")?;
    let after = api_requests(&m2);
    let after_writes = metric(&m2, "bgpersist_operator_api_writes_total");
    let poke_reconciles = metric(&m2, "bgpersist_operator_reconciles_total") - reconciles;
    let poked = n.min(20) as f64;
    let window: Vec<String> = by_verb(&m2)
        .into_iter()
        .map(|(verb, n)| {
            let was = by_verb(&m)
                .into_iter()
                .find(|(v, _)| *v == verb)
                .map_or(0.0, |(_, n)| n);
            format!("{verb} {}", n - was)
        })
        .collect();
    // A high-water mark: read last, it covers the whole run.
    let hwm = peak_rss(operator.id())?;

    println!(
        "operator_scale: {n} resources x {} writers = {want} Deployments (+ PDBs, ServiceAccounts)",
        WRITERS.len()
    );
    println!(
        "  create {n} resources:             {:.2} s",
        created.as_secs_f64()
    );
    println!(
        "  all children applied after:       {:.2} s  ({:.1} Deployments/s)",
        applied.as_secs_f64(),
        want as f64 / applied.as_secs_f64()
    );
    println!("  reconciles until quiet:           {reconciles}");
    println!(
        "  API requests:                     {requests}  ({:.1} per reconcile)",
        requests / reconciles.max(1.0)
    );
    println!(
        "  API writes:                       {writes}  ({:.1} per resource)",
        writes / n as f64
    );
    // Every reconcile in the window is a no-op: the poked ones and the
    // periodic looks at writers that are not ready.
    println!(
        "  no-op reconciles ({poke_reconciles} in 5 s, {poked} poked): {:.1} requests, {:.1} writes per reconcile",
        (after - before) / poke_reconciles.max(1.0),
        (after_writes - before_writes) / poke_reconciles.max(1.0)
    );
    println!("    requests in that window by verb: {}", window.join(", "));
    println!("  operator peak RSS (VmHWM):        {hwm}");

    terminate(&mut operator);
    cleanup(&client, &tag, n).await
}

fn resource(tag: &str, i: usize) -> anyhow::Result<BackgroundPersistence> {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/seed-example.yaml"
    ))?;
    let mut v: serde_json::Value = serde_yaml::from_str(&yaml)?;
    v["metadata"]["name"] = format!("{tag}-{i}").into();
    let spec = &mut v["spec"];
    spec["common_persistence_specs"]["namespace"] = format!("{tag}-ns{}", i % NAMESPACES).into();
    spec["common_persistence_specs"]["service_account_name"] = format!("{tag}-{i}-sa").into();
    spec["common_persistence_specs"]["usage_bus_subscription_id"] = "usage-bus-1".into();
    spec["common_persistence_specs"]["vector_bus_subscription_id"] = "vector-bus-1".into();
    spec["writers"] = WRITERS
        .iter()
        .map(|(name, t)| serde_json::json!({"name": name, "bus_subscriber_type": t, "request": {"cpu": "200m", "memory": "512Mi"}, "default_replica_count": 1}))
        .collect();
    Ok(serde_json::from_value(v)?)
}

/// API requests of every kind so far (the counter's samples summed over labels).
fn api_requests(metrics: &str) -> f64 {
    by_verb(metrics).iter().map(|(_, n)| n).sum()
}

/// The API request counter's samples, by verb label.
fn by_verb(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("bgpersist_operator_api_requests_total{verb=\""))
        .filter_map(|l| {
            let (verb, rest) = l.split_once('"')?;
            Some((
                verb.to_string(),
                rest.rsplit(' ').next()?.parse::<f64>().ok()?,
            ))
        })
        .collect()
}

/// The bare API server runs no garbage collector: delete what was rendered.
async fn cleanup(client: &kube::Client, tag: &str, n: usize) -> anyhow::Result<()> {
    let bps: Api<BackgroundPersistence> = Api::all(client.clone());
    for i in 0..n {
        let _ = bps
            .delete(&format!("{tag}-{i}"), &DeleteParams::default())
            .await;
    }
    let lp = ListParams::default().labels("app.kubernetes.io/part-of=bgpersist");
    for k in 0..NAMESPACES {
        let ns = format!("{tag}-ns{k}");
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &lp)
            .await?;
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &lp)
            .await?;
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &lp)
            .await?;
        // Where a namespace controller runs, the rest (pods, Secrets) goes too.
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::default())
            .await;
    }
    Ok(())
}
