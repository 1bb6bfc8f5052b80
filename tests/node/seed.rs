//! The seed example as writer pods: the Helm-installed operator syncs the
//! cloud secrets from moto and renders the Deployments, the node runs them
//! with the rendered security context and mounted secret files, and results
//! produced to Kafka land in Redis, the offline tables and the metrics store.

use crate::cluster::{self, writer};
use crate::harness::{self, dataset, pkeys, redis_entities};
use crate::offline_harness::PgSchema;
use crate::support::rig;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;

/// Creates topics that do not exist yet (the seed's are shared by runs).
pub async fn ensure_topics(names: &[(&str, i32)]) -> anyhow::Result<()> {
    for (name, partitions) in names {
        if let Err(e) = harness::create_topics(&[(name, *partitions)]).await
            && !e.to_string().contains("already exists")
        {
            return Err(e);
        }
    }
    Ok(())
}

/// The store URI a pod gets for `schema`: the rig's Postgres on the
/// pod-facing address, the schema first on the search path.
pub fn pod_pg_uri(schema: &PgSchema) -> String {
    format!(
        "{}?sslmode=disable&options=-csearch_path%3D{}",
        rig("postgres", "BGP_POSTGRES_URL_FOR_PODS"),
        schema.name
    )
}

/// Checks, from the host, what the kernel says about a writer's process: its
/// user, a read-only root filesystem, and the mounted SASL username file.
fn check_process(pod: &Pod) -> anyhow::Result<()> {
    let pid = cluster::container_pid(pod)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(uid, "65532", "{}: process uid", pod.name_any());
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default();
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "{}: root filesystem not read-only: {root}",
        pod.name_any()
    );
    let user = std::fs::read_to_string(format!(
        "/proc/{pid}/root/etc/bgpersist/kafka-sasl/username"
    ))?;
    assert_eq!(user.trim(), rig("kafka", "BGP_KAFKA_SCRAM_USER"));
    Ok(())
}

#[tokio::test]
async fn seed_example_runs_as_pods_and_results_land_in_redis_and_postgres() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    // The seed's topic layout (one result topic for the three result
    // subscriptions, a metrics bus, a dead-letter topic) under names of this
    // run's own: the rig has one Kafka for every run and for hack/demo, which
    // uses the seed's names.
    let run = crate::support::unique("seed");
    let (result, metrics, dlq) = (
        format!("{run}-result-bus"),
        format!("{run}-metrics-bus"),
        format!("{run}-dlq"),
    );
    ensure_topics(&[(&result, 1), (&metrics, 1), (&dlq, 1)]).await?;
    let schema = PgSchema::create().await?;
    let prefix = crate::support::unique("node-seed");
    let secrets = cluster::cloud_secrets(
        &prefix,
        &[
            ("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS")),
            ("offline_store", pod_pg_uri(&schema)),
            ("metrics_store", pod_pg_uri(&schema)),
        ],
    )
    .await?;
    let mut patch = secrets;
    patch["common_persistence_specs"] = json!({
        "result_bus_metrics_subscription_id": result,
        "result_bus_offline_store_subscription_id": result,
        "result_bus_online_store_subscription_id": result,
        "metrics_bus_subscription_id": metrics,
        "metrics_bus_topic_id": metrics,
        "kafka_dlq_topic": dlq,
    });
    // The seed's two writers keep their own requests; the two added are small.
    let mut bp = cluster::seed("seed", patch)?;
    let mut writers = bp["spec"]["writers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    writers.push(writer("online-writer", "ONLINE_WRITER", 1));
    writers.push(writer("offline-writer", "OFFLINE_WRITER", 1));
    bp["spec"]["writers"] = json!(writers);
    let (name, ns) = cluster::names(&bp);
    // The writers' pods must pass the `restricted` Pod Security Standard:
    // the ReplicaSet controller cannot create them otherwise.
    cluster::create_namespace(
        &client,
        &ns,
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await?;
    cluster::apply_bp(&client, &bp).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for w in &writers {
        let writer_name = w["name"].as_str().unwrap_or_default();
        let ready = cluster::wait_ready(
            &pods,
            &cluster::writer_selector(&name, writer_name),
            1,
            Duration::from_secs(180),
        )
        .await?;
        let pod = &ready[0];
        let spec = pod.spec.clone().unwrap_or_default();
        let sc = spec.security_context.clone().unwrap_or_default();
        assert_eq!(sc.run_as_user, Some(65532), "{writer_name}");
        assert_eq!(sc.run_as_non_root, Some(true), "{writer_name}");
        let csc = spec.containers[0]
            .security_context
            .clone()
            .unwrap_or_default();
        assert_eq!(csc.read_only_root_filesystem, Some(true), "{writer_name}");
        check_process(pod)?;
    }

    let keys = pkeys("seed", 5);
    let (payloads, expected) = dataset(&keys);
    harness::produce(&result, &payloads).await?;

    let redis = harness::standalone().await?;
    harness::eventually("the results in Redis", Duration::from_secs(60), || {
        let (keys, expected) = (&keys, &expected);
        let mut conn = redis.clone();
        async move { Ok((redis_entities(&mut conn, "", keys).await? == *expected).then_some(())) }
    })
    .await?;
    // The seed's topic is shared by runs: count this run's pkeys only.
    harness::eventually(
        "this run's pkeys in the offline table user__age",
        Duration::from_secs(60),
        || async {
            if !schema.exists("user__age").await? {
                return Ok(None);
            }
            let stored = schema.texts("user__age", "pkey").await?;
            Ok(keys.iter().all(|k| stored.contains(k)).then_some(()))
        },
    )
    .await?;
    // Result -> GO_RESULT_BUS_METRICS_WRITER -> metrics bus -> GO_METRICS_BUS_WRITER.
    harness::eventually(
        "rows in the metrics store",
        Duration::from_secs(60),
        || async { Ok((schema.count("metrics", "name").await?.0 > 0).then_some(())) },
    )
    .await?;

    cluster::cleanup(&client, &name, &ns).await;
    schema.drop().await;
    harness::delete_topics(&[&result, &metrics, &dlq]).await?;
    Ok(())
}
