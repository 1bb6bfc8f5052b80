//! `default_replica_count: 3` gives three writer pods in one consumer group
//! sharing the topic's partitions; scaling to 1 while results keep arriving
//! loses none of them (each one counted in Redis).

use crate::cluster::{self, writer};
use crate::harness::{self, Paced, kafka_plain, observation, result_message};
use crate::seed::ensure_topics;
use crate::support::{self, rig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

/// Partitions in a consumer-protocol member assignment (Kafka's
/// ConsumerProtocolAssignment: version, then per topic its name and ids).
fn assigned_partitions(bytes: &[u8]) -> usize {
    let int = |at: usize, n: usize| -> Option<usize> {
        bytes
            .get(at..at + n)
            .map(|b| b.iter().fold(0usize, |a, x| (a << 8) | *x as usize))
    };
    let (mut at, mut total) = (2, 0);
    let Some(topics) = int(at, 4) else { return 0 };
    at += 4;
    for _ in 0..topics {
        let Some(name_len) = int(at, 2) else {
            return total;
        };
        at += 2 + name_len;
        let Some(n) = int(at, 4) else { return total };
        total += n;
        at += 4 + 4 * n;
    }
    total
}

/// (members, partitions each) of `group` once it is Stable.
fn group_members(group: &str) -> anyhow::Result<Option<Vec<usize>>> {
    let consumer: BaseConsumer = kafka_plain().create()?;
    let list = consumer.fetch_group_list(Some(group), Duration::from_secs(5))?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group && g.state() == "Stable")
        .map(|g| {
            g.members()
                .iter()
                .map(|m| m.assignment().map(assigned_partitions).unwrap_or(0))
                .collect()
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_partitions_and_scaling_to_one_loses_nothing() -> anyhow::Result<()>
{
    let client = cluster::operator().await?;
    let topic = support::unique("node-scale");
    ensure_topics(&[(&topic, PARTITIONS)]).await?;
    let prefix = support::unique("node-scale");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    patch["common_persistence_specs"] = json!({"result_bus_online_store_subscription_id": topic});
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 3)]);
    let mut bp = cluster::seed("scale", patch)?;
    let (name, ns) = cluster::names(&bp);
    cluster::apply_bp(&client, &bp).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sel = cluster::writer_selector(&name, "online");
    cluster::wait_ready(&pods, &sel, 3, Duration::from_secs(180)).await?;

    let group = format!("bgpersist.{name}.online");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let members = group_members(&group)?;
        if let Some(m) = &members
            && m.len() == 3
            && m.iter().all(|n| *n > 0)
            && m.iter().sum::<usize>() == PARTITIONS as usize
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "group {group} never had 3 members sharing {PARTITIONS} partitions: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // One message per pkey, so every one lost would be a key missing.
    const N: u64 = 3000;
    let run = support::unique("k");
    let key = move |i: u64| format!("{run}-{i}");
    let make = {
        let key = key.clone();
        move |i: u64| result_message(vec![observation(&key(i), "age", 1, i as i64)])
    };
    let paced = Paced::start(&topic, 300, N, make);
    tokio::time::sleep(Duration::from_secs(3)).await;
    bp["spec"]["writers"][0]["default_replica_count"] = json!(1);
    cluster::apply_bp(&client, &bp).await?;
    let sent_when_scaled = paced.sent();
    assert!(
        sent_when_scaled < N,
        "the scale-down must start while producing"
    );
    cluster::wait_ready(&pods, &sel, 1, Duration::from_secs(120)).await?;
    // Every message produced before finish() stops the producer.
    let deadline = Instant::now() + Duration::from_secs(120);
    while paced.sent() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let positions = paced.finish().await?;
    assert_eq!(positions.len() as u64, N);

    let keys: Vec<String> = (0..N).map(&key).collect();
    let mut redis = harness::standalone().await?;
    let mut present = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.exists(format!("user/{k}"));
        }
        let found: Vec<bool> = pipe.query_async(&mut redis).await?;
        present = found.iter().filter(|f| **f).count();
        if present == keys.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        present,
        keys.len(),
        "results missing from Redis after scaling 3 -> 1"
    );

    cluster::cleanup(&client, &name, &ns).await;
    harness::delete_topics(&[&topic]).await?;
    Ok(())
}
