//! Faults during a rollout, on the node: while results keep arriving, a
//! spec change rolls the writer's pods, and meanwhile a new writer pod and the
//! operator's leader pod are deleted. The end state is exact: every key holds
//! its newest value in Redis, the rollout completes on the new template, the
//! resource is Ready for its generation, and the group's lag is 0.

use crate::cluster::{self, OPERATOR_NS, OPERATOR_SELECTOR, writer};
use crate::harness::{self, Paced, observation, result_message};
use crate::operator_pod::holder;
use crate::seed::ensure_topics;
use crate::support::{self, rig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
/// Messages, spread over `KEYS` keys: each key is written N / KEYS times,
/// and the last write (the largest observation time) must win.
const N: u64 = 6000;
const KEYS: u64 = 300;
const RATE: u64 = 200;
const TS_BASE: i64 = 1_700_000_000_000_000;

fn key(i: u64) -> String {
    format!("k{}", i % KEYS)
}

/// Message `i` observes key(i) (prefixed by the run) at time TS_BASE + i
/// with value 100000 + i.
fn message(run: &str, i: u64) -> Vec<u8> {
    let i64_of = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    result_message(vec![observation(
        &format!("{run}{}", key(i)),
        "age",
        TS_BASE + i64_of(i),
        100_000 + i64_of(i),
    )])
}

/// The newest (value, ts) of every key after all N messages.
fn expected(run: &str) -> BTreeMap<String, (String, String)> {
    (N - KEYS..N)
        .map(|i| {
            (
                format!("{run}{}", key(i)),
                ((100_000 + i).to_string(), (TS_BASE as u64 + i).to_string()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_writer_and_leader_pods_mid_rollout_loses_nothing() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let topic = support::unique("node-rollfault");
    ensure_topics(&[(&topic, PARTITIONS)]).await?;
    let prefix = support::unique("node-rollfault");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["common_persistence_specs"] = json!({"result_bus_online_store_subscription_id": topic});
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 2)]);
    let mut bp = cluster::seed("rollfault", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let result = run(&client, &mut bp, &name, &ns, &topic).await;
    cluster::cleanup(&client, &name, &ns).await;
    harness::delete_topics(&[&topic]).await?;
    result
}

async fn run(
    client: &kube::Client,
    bp: &mut serde_json::Value,
    name: &str,
    ns: &str,
    topic: &str,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sel = cluster::writer_selector(name, "online");
    cluster::wait_ready(&pods, &sel, 2, Duration::from_secs(180)).await?;
    let old_hashes = template_hashes(&pods, &sel).await?;

    // The key prefix keeps this run's keys apart from earlier runs'.
    let run = support::unique("rf");
    let make = {
        let run = run.clone();
        move |i: u64| message(&run, i)
    };
    let paced = Paced::start(topic, RATE, N, make);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A spec change that changes the pod template: a rollout.
    let t_roll = Instant::now();
    bp["spec"]["writers"][0]["pod"] = json!({"env": [{"name": "ROLLOUT", "value": "2"}]});
    cluster::apply_bp(client, bp).await?;

    // As soon as a pod of the new template runs, delete it, and the leader.
    let new_pod = wait_new_pod(&pods, &sel, &old_hashes, Duration::from_secs(90)).await?;
    pods.delete(&new_pod, &DeleteParams::default()).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let leader = holder(&leases).await?;
    if let Some(leader) = &leader {
        operator_pods
            .delete(leader, &DeleteParams::default())
            .await?;
    }
    anyhow::ensure!(
        paced.sent() < N,
        "the faults must happen while producing (all {N} sent already)"
    );
    eprintln!(
        "deleted new writer pod {new_pod} and operator leader {leader:?} {:.1} s into the rollout",
        t_roll.elapsed().as_secs_f64()
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let dep = format!("{name}-online");
    wait_rolled_out(&deployments, &dep, &pods, &sel, &old_hashes).await?;
    eprintln!(
        "rollout complete {:.1} s after the spec change",
        t_roll.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while paced.sent() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let positions = paced.finish().await?;
    assert_eq!(positions.len() as u64, N, "every message produced");

    let want = expected(&run);
    let mut redis = harness::standalone().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = newest(&mut redis, &want).await?;
        if got == want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {KEYS} keys without their newest value, e.g. {wrong:?}",
        want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count()
    );

    let group = format!("bgpersist.{name}.online");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (committed, end) = loop {
        let (c, e) = harness::committed_and_end(topic, &group, PARTITIONS)?;
        if c == e || Instant::now() > deadline {
            break (c, e);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(committed, end, "consumer lag after the rollout");

    // The operator that took over reports the resource Ready for its generation.
    cluster::wait_bp_ready(client, name, Duration::from_secs(90)).await?;
    let running = operator_pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
        .items;
    assert!(
        running.iter().any(cluster::is_ready),
        "no operator pod Ready after the leader was deleted: {}",
        cluster::describe(&running)
    );
    Ok(())
}

/// The (value, ts) Redis holds for each key of `want`.
async fn newest(
    redis: &mut redis::aio::MultiplexedConnection,
    want: &BTreeMap<String, (String, String)>,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut pipe = redis::pipe();
    for k in want.keys() {
        pipe.cmd("HMGET")
            .arg(format!("user/{k}"))
            .arg("user.age")
            .arg("user.age_ts");
    }
    let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(redis).await?;
    Ok(want
        .keys()
        .zip(rows)
        .filter_map(|(k, (v, ts))| Some((k.clone(), (v?, ts?))))
        .collect())
}

/// The pod-template hashes of the pods matching `selector`.
async fn template_hashes(pods: &Api<Pod>, selector: &str) -> anyhow::Result<Vec<String>> {
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .filter_map(|p| p.labels().get("pod-template-hash").cloned())
        .collect())
}

async fn wait_new_pod(
    pods: &Api<Pod>,
    selector: &str,
    old: &[String],
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await?
            .items;
        if let Some(p) = all.iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.labels()
                    .get("pod-template-hash")
                    .is_some_and(|h| !old.contains(h))
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }) {
            return Ok(p.name_any());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no pod of the new template running: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until the Deployment has rolled out its newest generation: every
/// replica updated and Ready, and no pod of an old template left.
async fn wait_rolled_out(
    deployments: &Api<Deployment>,
    name: &str,
    pods: &Api<Pod>,
    selector: &str,
    old: &[String],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let d = deployments.get(name).await?;
        let generation = d.metadata.generation;
        let s = d.status.clone().unwrap_or_default();
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await?
            .items;
        let stale = all.iter().any(|p| {
            p.labels()
                .get("pod-template-hash")
                .is_some_and(|h| old.contains(h))
        });
        if s.observed_generation == generation
            && s.updated_replicas == Some(want)
            && s.ready_replicas == Some(want)
            && s.replicas == Some(want)
            && !stale
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} not rolled out: {s:?}; pods: {}",
            cluster::describe(&all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
