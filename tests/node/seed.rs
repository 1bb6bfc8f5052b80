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
        // Pod settings as a platform team sets them: placement, labels,
        // annotations, env, log level, and a CA bundle from a ConfigMap.
        "writer_pod": {
            "node_selector": {"kubernetes.io/os": "linux"},
            "labels": {"team": "data"},
            "annotations": {"example.com/scrape": "true"},
            "env": [{"name": "AWS_REGION", "value": "us-east-1"}],
            "log_level": "info,bgpersist=debug",
            "volumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
            "volume_mounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": true}],
        },
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
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ca = std::fs::read_to_string(rig("kafka", "BGP_RIG_CA"))?;
    cms.create(
        &Default::default(),
        &serde_json::from_value(json!({"metadata": {"name": "corp-ca"}, "data": {"ca.pem": ca}}))?,
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
        // The pod settings, on a pod the node runs.
        assert_eq!(pod.labels().get("team").map(String::as_str), Some("data"));
        assert!(pod.annotations().contains_key("example.com/scrape"));
        let env: Vec<(String, String)> = spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert!(
            env.contains(&("RUST_LOG".into(), "info,bgpersist=debug".into())),
            "{env:?}"
        );
        assert!(
            env.contains(&("AWS_REGION".into(), "us-east-1".into())),
            "{env:?}"
        );
        assert!(
            env.contains(&("MALLOC_ARENA_MAX".into(), "1".into())),
            "{env:?}"
        );
        let pid = cluster::container_pid(pod)?;
        let ca_file = std::fs::read_to_string(format!("/proc/{pid}/root/etc/ssl/corp/ca.pem"));
        assert!(
            ca_file
                .as_deref()
                .is_ok_and(|c| c.contains("BEGIN CERTIFICATE")),
            "{writer_name}: the ConfigMap's CA is not mounted: {ca_file:?}"
        );
    }

    // The chart's PodMonitor selects every writer pod the node runs.
    let rendered = crate::cli::helm_template(
        "bgpersist",
        "bgpersist-system",
        &["--set", "writers.podMonitor.enabled=true"],
    )?;
    let monitor = crate::cli::yaml_docs(&rendered)?
        .into_iter()
        .find(|d| d["kind"] == "PodMonitor")
        .ok_or_else(|| anyhow::anyhow!("the chart rendered no PodMonitor"))?;
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["any"], true,
        "{monitor}"
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap_or_default();
    let selected = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items;
    for w in &writers {
        let writer_name = w["name"].as_str().unwrap_or_default();
        let pod = selected
            .iter()
            .find(|p| {
                p.labels().get("bgpersist.dev/writer").map(String::as_str) == Some(writer_name)
            })
            .ok_or_else(|| {
                anyhow::anyhow!("PodMonitor selector {selector} misses writer {writer_name}")
            })?;
        let ports = pod
            .spec
            .as_ref()
            .map(|s| s.containers[0].ports.clone().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            ports.iter().any(|p| p.name.as_deref() == Some(port)),
            "{writer_name}: no container port named {port:?}"
        );
    }

    // A writer whose pod settings no node matches stays Pending, unschedulable.
    let mut unplaceable = writer("unplaceable", "ONLINE_WRITER", 1);
    unplaceable["pod"] = json!({"node_selector": {"bgpersist.dev/test-pool": "none"}});
    let mut with_extra = writers.clone();
    with_extra.push(unplaceable);
    bp["spec"]["writers"] = json!(with_extra);
    cluster::apply_bp(&client, &bp).await?;
    harness::eventually(
        "the unplaceable writer's pod unschedulable",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            let selector = cluster::writer_selector(&name, "unplaceable");
            async move {
                let list = pods
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await?;
                Ok(list.items.iter().find_map(|p| {
                    let conditions = p.status.as_ref()?.conditions.as_ref()?;
                    conditions
                        .iter()
                        .any(|c| {
                            c.type_ == "PodScheduled"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                        .then_some(())
                }))
            }
        },
    )
    .await?;

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
