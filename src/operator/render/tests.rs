//! Render tests: spec in, objects out, no server.

use super::fixtures::{resolved, resolved_with, seed, seed_with};
use super::*;
use crate::contract as c;
use crate::crd::WriterType;
use serde_json::json;

fn render_all(bp: &BackgroundPersistence) -> Rendered {
    render(bp, &resolved(bp)).unwrap_or_else(|e| panic!("render: {e}"))
}

fn pod_of(w: &RenderedWriter) -> k8s_openapi::api::core::v1::PodSpec {
    w.deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default()
}

/// Every value `name` has in the writer container's env, in order (a
/// variable set twice shows twice).
fn env_values(w: &RenderedWriter, name: &str) -> Vec<String> {
    pod_of(w).containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .filter_map(|e| e.value.clone())
        .collect()
}

fn env_of(w: &RenderedWriter) -> std::collections::BTreeMap<String, String> {
    let pod = w
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .cloned()
        .unwrap_or_default();
    pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

/// A seed variant running one writer of `t`, with every bus ID and image
/// filled in (real references where the seed has placeholders).
fn one_writer(t: WriterType) -> BackgroundPersistence {
    seed_with(json!({
        "common_persistence_specs": {
            "usage_bus_subscription_id": "usage-bus-1",
            "vector_bus_subscription_id": "vector-bus-1",
            "bus_writer_image_go": "acme/go-writer:1",
            "bus_writer_image_python": "acme/python-writer:1",
            "bus_writer_image_bswl": "acme/bswl:1",
        },
        "writers": [{"name": "w", "bus_subscriber_type": t.as_str(), "default_replica_count": 2}]
    }))
}

#[test]
fn seed_renders_namespace_account_and_one_deployment_per_writer() {
    let bp = seed();
    let r = render_all(&bp);
    assert_eq!(
        r.namespace.metadata.name.as_deref(),
        Some("background-persistence")
    );
    assert_eq!(
        r.service_account.metadata.name.as_deref(),
        Some("background-persistence-sa")
    );
    assert_eq!(
        r.service_account.metadata.namespace.as_deref(),
        Some("background-persistence")
    );
    let names: Vec<_> = r
        .writers
        .iter()
        .map(|w| w.deployment.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "background-persistence-go-metrics-bus-writer",
            "background-persistence-go-result-bus-metrics-writer"
        ]
    );
    let owner = owner_reference(&bp).ok();
    for w in &r.writers {
        assert_eq!(
            w.deployment
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first().cloned()),
            owner
        );
        // The seed's writers run one replica each.
        assert!(w.pdb.is_none(), "{:?}", w.pdb);
        // The seed names placeholders for its type's image: the operator's own runs it.
        assert_eq!(w.image, super::fixtures::OPERATOR_IMAGE);
    }
    assert!(
        r.namespace.metadata.owner_references.is_none(),
        "namespaces are never owned"
    );
}

#[test]
fn resources_come_from_request_and_limit() {
    let r = render_all(&seed());
    let res = |i: usize| {
        r.writers[i]
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].resources.clone())
    };
    let json = serde_json::to_value(res(1)).unwrap_or_default();
    assert_eq!(
        json,
        json!({"requests": {"cpu": "400m", "memory": "1024Mi"}, "limits": {"cpu": "1", "memory": "1024Mi"}})
    );
}

#[test]
fn pods_run_restricted() {
    let r = render_all(&seed());
    let pod = pod_of(&r.writers[0]);
    let psc = pod.security_context.unwrap_or_default();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let sc = pod.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("background-persistence-sa")
    );
}

#[test]
fn kafka_sasl_secret_is_mounted_as_files_never_env() {
    let r = render_all(&seed());
    let pod = pod_of(&r.writers[0]);
    let vol = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "kafka-sasl");
    assert_eq!(
        vol.and_then(|v| v.secret)
            .and_then(|s| s.secret_name)
            .as_deref(),
        Some("background-persistence-kafka-sasl")
    );
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == "kafka-sasl");
    assert_eq!(
        mount.map(|m| (m.mount_path, m.read_only)),
        Some((c::KAFKA_SASL_MOUNT.to_string(), Some(true)))
    );
    let env = pod.containers[0].env.clone().unwrap_or_default();
    assert!(
        env.iter().all(|e| e.value_from.is_none()),
        "no secret reaches env"
    );
    assert_eq!(
        env_of(&r.writers[0])
            .get(c::ENV_KAFKA_SASL_DIR)
            .map(String::as_str),
        Some(c::KAFKA_SASL_MOUNT)
    );
}

#[test]
fn every_writer_type_renders_its_bus_settings() {
    let expect: &[(WriterType, &str, Option<&str>)] = &[
        (WriterType::OnlineWriter, "result-bus-1", None),
        (
            WriterType::MetricsWriter,
            "result-bus-1",
            Some("metrics-bus-1"),
        ),
        (WriterType::MetricsBusWriter, "metrics-bus-1", None),
        (
            WriterType::OfflineWriter,
            "result-bus-1",
            Some("offline-store-streaming-insert-bus-1"),
        ),
        (
            WriterType::OfflineStoreBulkInsertWriter,
            "offline-store-bulk-insert-bus-1",
            None,
        ),
        (
            WriterType::OfflineStoreStreamingInsertWriter,
            "offline-store-streaming-insert-bus-1",
            None,
        ),
        (WriterType::UsageBusWriter, "usage-bus-1", None),
        (WriterType::QueryMirrorConsumer, "operation-bus-1", None),
        (WriterType::OnlineVectorStoreWriter, "vector-bus-1", None),
        (WriterType::GoMetricsBusWriter, "metrics-bus-1", None),
        (
            WriterType::GoResultBusMetricsWriter,
            "result-bus-1",
            Some("metrics-bus-1"),
        ),
    ];
    assert_eq!(
        expect.len(),
        WriterType::ALL.len(),
        "one case per writer type"
    );
    for (t, subscription, publish) in expect {
        // Without an operator image, so each type's own image field is used.
        let bp = one_writer(*t);
        let r = render(&bp, &resolved_with(&bp, &Default::default()))
            .unwrap_or_else(|e| panic!("render: {e}"));
        let w = &r.writers[0];
        let env = env_of(w);
        assert_eq!(
            env.get(c::ENV_WRITER_TYPE).map(String::as_str),
            Some(t.as_str()),
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_SUBSCRIPTION).map(String::as_str),
            Some(*subscription),
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_PUBLISH_TOPIC).map(String::as_str),
            *publish,
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_BUS_BACKEND).map(String::as_str),
            Some("KAFKA"),
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_KAFKA_SECURITY_PROTOCOL).map(String::as_str),
            Some("SASL_SSL"),
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_KAFKA_SASL_MECHANISM).map(String::as_str),
            Some("SCRAM-SHA-512"),
            "{t}"
        );
        assert_eq!(
            env.get(c::ENV_KAFKA_CONSUMER_GROUP).map(String::as_str),
            Some("bgpersist.background-persistence.w")
        );
        assert_eq!(
            env.get(c::ENV_DLQ_TOPIC).map(String::as_str),
            Some("dlq-1"),
            "{t}"
        );
        assert_eq!(w.replicas, 2);
        assert_eq!(w.deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
        let component = w
            .deployment
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/component").cloned());
        assert_eq!(component, Some(t.as_str().to_lowercase().replace('_', "-")));
        let expected_image = match t.kind().image {
            crate::crd::ImageField::Go => "acme/go-writer:1",
            crate::crd::ImageField::Python => "acme/python-writer:1",
            crate::crd::ImageField::Bswl => "acme/bswl:1",
        };
        assert_eq!(w.image, expected_image, "{t}");
    }
}

#[test]
fn type_specific_settings_reach_the_writer() {
    for (writer_type, key, want) in [
        (WriterType::OnlineWriter, c::ENV_REDIS_IS_CLUSTERED, "1"),
        (
            WriterType::QueryMirrorConsumer,
            c::ENV_API_SERVER_HOST,
            "<your api server here>",
        ),
        (
            WriterType::OfflineStoreBulkInsertWriter,
            c::ENV_UPLOAD_BUCKET,
            "s3://<your data bucket>",
        ),
    ] {
        let r = render_all(&one_writer(writer_type));
        assert_eq!(
            env_of(&r.writers[0]).get(key).map(String::as_str),
            Some(want),
            "{writer_type:?}"
        );
    }
}

#[test]
fn batch_size_and_growth_reach_the_writer_only_when_set() {
    let mut bp = one_writer(WriterType::OfflineWriter);
    let plain = env_of(&render_all(&bp).writers[0]);
    assert!(!plain.contains_key(c::ENV_BATCH_GROWTH), "{plain:?}");
    bp.spec.writers[0].max_batch_size = Some(500);
    bp.spec.writers[0].max_batch_growth = Some(1);
    let env = env_of(&render_all(&bp).writers[0]);
    assert_eq!(
        env.get(c::ENV_MAX_BATCH_SIZE).map(String::as_str),
        Some("500")
    );
    assert_eq!(env.get(c::ENV_BATCH_GROWTH).map(String::as_str), Some("1"));
}

#[test]
fn a_batch_byte_limit_reaches_the_writer_only_when_set() {
    let mut bp = one_writer(WriterType::OnlineWriter);
    let plain = env_of(&render_all(&bp).writers[0]);
    assert!(!plain.contains_key(c::ENV_MAX_BATCH_BYTES), "{plain:?}");
    bp.spec.writers[0].max_batch_bytes = Some(1 << 20);
    let env = env_of(&render_all(&bp).writers[0]);
    assert_eq!(
        env.get(c::ENV_MAX_BATCH_BYTES).map(String::as_str),
        Some("1048576")
    );
}

#[test]
fn rust_image_runs_every_type_and_writer_image_wins() {
    let bp = seed_with(
        json!({"common_persistence_specs": {"bus_writer_image_rust": "bgpersist/writer:1"}}),
    );
    assert!(
        render_all(&bp)
            .writers
            .iter()
            .all(|w| w.image == "bgpersist/writer:1")
    );
    let bp = seed_with(
        json!({"common_persistence_specs": {"bus_writer_image_rust": "bgpersist/writer:1"},
        "writers": [{"name": "w", "bus_subscriber_type": "ONLINE_WRITER", "image": "mine:2"}]}),
    );
    assert_eq!(render_all(&bp).writers[0].image, "mine:2");
}

#[test]
fn config_hash_changes_with_the_pod_and_only_then() {
    let a = render_all(&seed());
    let b = render_all(&seed_with(json!({"metadata_provider": "GRPC_SERVER"})));
    assert_eq!(a.writers[0].config_hash, b.writers[0].config_hash);
    let c = render_all(&seed_with(json!({"kafka_bootstrap_servers": "other:9092"})));
    assert_ne!(a.writers[0].config_hash, c.writers[0].config_hash);
    let ann = a.writers[0]
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone());
    assert_eq!(
        ann.and_then(|m| m.get("bgpersist.dev/config-hash").cloned()),
        Some(a.writers[0].config_hash.clone())
    );
}

#[test]
fn cloud_identity_annotations_when_given() {
    let plain = render_all(&seed());
    assert!(plain.service_account.metadata.annotations.is_none());
    let bp = seed_with(json!({"common_persistence_specs": {
        "aws_role_arn": "arn:aws:iam::123456789012:role/writers",
        "gcp_service_account": "writers@p.iam.gserviceaccount.com"}}));
    let ann = render_all(&bp)
        .service_account
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        ann.get("eks.amazonaws.com/role-arn").map(String::as_str),
        Some("arn:aws:iam::123456789012:role/writers")
    );
    assert_eq!(
        ann.get("iam.gke.io/gcp-service-account")
            .map(String::as_str),
        Some("writers@p.iam.gserviceaccount.com")
    );
}

#[test]
fn pubsub_renders_no_kafka_settings() {
    let bp = seed_with(json!({"common_persistence_specs": {"bus_backend": "PUBSUB"}}));
    let r = render_all(&bp);
    let env = env_of(&r.writers[0]);
    assert!(env.keys().all(|k| !k.starts_with("BGP_KAFKA")), "{env:?}");
    let pod = pod_of(&r.writers[0]);
    assert!(
        pod.volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.name != "kafka-sasl")
    );
}

/// The seed with every writer at `replicas`.
fn seed_replicas(replicas: i32) -> BackgroundPersistence {
    let mut bp = seed();
    for w in &mut bp.spec.writers {
        w.default_replica_count = Some(replicas);
    }
    bp
}

#[test]
fn pdb_selects_the_writer_pods() {
    let bp = seed_replicas(2);
    let r = render_all(&bp);
    let w = &r.writers[0];
    let pdb = w.pdb.as_ref();
    assert_eq!(
        pdb.and_then(|p| p.metadata.owner_references.as_ref())
            .and_then(|o| o.first().cloned()),
        owner_reference(&bp).ok()
    );
    let pdb_sel = pdb
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.selector.clone())
        .and_then(|s| s.match_labels);
    let dep_sel = w
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone());
    assert_eq!(pdb_sel, dep_sel);
    let pod_labels = w
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .and_then(|m| m.labels)
        .unwrap_or_default();
    for (k, v) in dep_sel.unwrap_or_default() {
        assert_eq!(pod_labels.get(&k), Some(&v));
    }
}

#[test]
fn a_pdb_only_for_writers_that_may_run_two_pods() {
    let has_pdb = |bp: &BackgroundPersistence| {
        render_all(bp)
            .writers
            .iter()
            .map(|w| w.pdb.is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(has_pdb(&seed_replicas(1)), [false, false]);
    assert_eq!(has_pdb(&seed_replicas(2)), [true, true]);
    let autoscaled = |min: i32, max: i32| {
        seed_with(json!({"writers": [
            {"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "autoscaling": {"min_replicas": min, "max_replicas": max}}]}))
    };
    assert_eq!(has_pdb(&autoscaled(1, 1)), [false]);
    assert_eq!(has_pdb(&autoscaled(0, 3)), [true]);
    assert_eq!(has_pdb(&autoscaled(1, 2)), [true]);
}

#[test]
fn render_without_uid_is_an_error() {
    let mut bp = seed();
    bp.metadata.uid = None;
    assert!(matches!(
        render(&bp, &[]),
        Err(RenderError::MissingMetadata("uid"))
    ));
}

fn keda_json(obj: Option<&kube::api::DynamicObject>) -> serde_json::Value {
    obj.map(|o| serde_json::to_value(o).unwrap_or_default())
        .unwrap_or_default()
}

#[test]
fn autoscaled_kafka_writer_renders_a_scaled_object_and_no_replicas() {
    let bp = seed_with(json!({"writers": [
        {"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
         "kafka_consumer_group_override": "metrics-group",
         "autoscaling": {"min_replicas": 2, "max_replicas": 8, "lag_threshold": 50,
            "activation_lag_threshold": 5, "polling_interval_seconds": 15,
            "cooldown_period_seconds": 120}},
        {"name": "b", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "default_replica_count": 3}]}));
    let r = render_all(&bp);
    let (a, b) = (&r.writers[0], &r.writers[1]);
    assert_eq!(
        a.deployment.spec.as_ref().and_then(|s| s.replicas),
        None,
        "the autoscaler owns an autoscaled writer's replicas"
    );
    assert_eq!(
        a.replicas, 2,
        "created with default 1 raised to min_replicas"
    );
    assert_eq!(b.deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert!(b.autoscaling.is_none());

    let keda = a
        .autoscaling
        .as_ref()
        .unwrap_or_else(|| panic!("no KEDA objects"));
    let owner = serde_json::to_value(owner_reference(&bp).ok()).unwrap_or_default();
    let so = keda_json(Some(&keda.scaled_object));
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["kind"], "ScaledObject");
    assert_eq!(so["metadata"]["name"], "background-persistence-a");
    assert_eq!(so["metadata"]["namespace"], "background-persistence");
    assert_eq!(so["metadata"]["ownerReferences"], json!([owner]));
    assert_eq!(so["metadata"]["labels"]["bgpersist.dev/writer"], "a");
    assert_eq!(
        so["spec"],
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "background-persistence-a"},
            "minReplicaCount": 2,
            "maxReplicaCount": 8,
            "pollingInterval": 15,
            "cooldownPeriod": 120,
            "triggers": [{
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": "<bootstrap server1>:<port>,<bootstrap server2>:<port>,...",
                    "consumerGroup": "metrics-group",
                    "topic": "metrics-bus-1",
                    "lagThreshold": "50",
                    "activationLagThreshold": "5",
                    "offsetResetPolicy": "earliest",
                    "tls": "enable",
                    "sasl": "scram_sha512",
                },
                "authenticationRef": {"name": "background-persistence-a"},
            }],
        })
    );
    assert_eq!(
        env_of(a)
            .get(c::ENV_KAFKA_CONSUMER_GROUP)
            .map(String::as_str),
        Some("metrics-group"),
        "the scaler watches the group the writer joins"
    );
    let ta = keda_json(keda.trigger_authentication.as_ref());
    assert_eq!(ta["kind"], "TriggerAuthentication");
    assert_eq!(ta["metadata"]["ownerReferences"], json!([owner]));
    assert_eq!(
        ta["spec"],
        json!({"secretTargetRef": [
            {"parameter": "username", "name": "background-persistence-kafka-sasl", "key": "username"},
            {"parameter": "password", "name": "background-persistence-kafka-sasl", "key": "password"},
        ]})
    );
}

#[test]
fn autoscaled_writer_defaults_and_plaintext_kafka_needs_no_authentication() {
    let bp = seed_with(
        json!({"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": null,
        "kafka_sasl_secret": null, "common_persistence_specs": {"secret_client": null},
        "writers": [{"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
            "default_replica_count": 40, "autoscaling": {"max_replicas": 6}}]}),
    );
    let r = render_all(&bp);
    let a = &r.writers[0];
    assert_eq!(
        a.replicas, 6,
        "default_replica_count capped at max_replicas"
    );
    let keda = a
        .autoscaling
        .as_ref()
        .unwrap_or_else(|| panic!("no KEDA objects"));
    assert!(keda.trigger_authentication.is_none());
    let so = keda_json(Some(&keda.scaled_object));
    assert_eq!(
        so["spec"]["minReplicaCount"], 1,
        "scaling to zero is opt-in"
    );
    assert!(so["spec"].get("pollingInterval").is_none());
    let trigger = &so["spec"]["triggers"][0];
    assert!(trigger.get("authenticationRef").is_none());
    assert_eq!(trigger["metadata"]["lagThreshold"], "10");
    assert_eq!(trigger["metadata"]["tls"], "disable");
    assert!(trigger["metadata"].get("sasl").is_none());
    assert_eq!(
        trigger["metadata"]["consumerGroup"],
        "bgpersist.background-persistence.a"
    );
}

#[test]
fn autoscaled_pubsub_writer_scales_on_backlog_with_workload_identity() {
    let bp = seed_with(
        json!({"common_persistence_specs": {"bus_backend": "PUBSUB"},
        "writers": [
            {"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "hpa_pubsub_subscription_id": "projects/p/subscriptions/metrics-backlog",
             "hpa_target_average_value": 500,
             "autoscaling": {"min_replicas": 0, "max_replicas": 4, "activation_lag_threshold": 3}},
            {"name": "b", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "autoscaling": {"max_replicas": 4}}]}),
    );
    let r = render_all(&bp);
    let keda = |i: usize| {
        r.writers[i]
            .autoscaling
            .clone()
            .unwrap_or_else(|| panic!("writer {i} has no KEDA objects"))
    };
    let so = keda_json(Some(&keda(0).scaled_object));
    assert_eq!(so["spec"]["minReplicaCount"], 0);
    assert_eq!(
        so["spec"]["triggers"],
        json!([{
            "type": "gcp-pubsub",
            "metadata": {"subscriptionName": "projects/p/subscriptions/metrics-backlog",
                "mode": "SubscriptionSize", "value": "500", "activationValue": "3"},
            "authenticationRef": {"name": "background-persistence-a"},
        }])
    );
    assert_eq!(
        keda_json(keda(0).trigger_authentication.as_ref())["spec"],
        json!({"podIdentity": {"provider": "gcp"}})
    );
    let so = keda_json(Some(&keda(1).scaled_object));
    assert_eq!(
        so["spec"]["triggers"][0]["metadata"],
        json!({"subscriptionName": "metrics-bus-1", "mode": "SubscriptionSize", "value": "10"}),
        "default: the writer's own subscription, KEDA's default target"
    );
}

#[test]
fn exactly_once_is_rendered_only_when_asked() {
    let bp = seed_with(json!({"writers": [
        {"name": "eos", "bus_subscriber_type": "METRICS_WRITER", "metrics_exactly_once": true},
        {"name": "plain", "bus_subscriber_type": "METRICS_WRITER", "metrics_exactly_once": false},
    ]}));
    let r = render_all(&bp);
    let flag = |i: usize| {
        env_of(&r.writers[i])
            .get(c::ENV_PUBLISH_EXACTLY_ONCE)
            .cloned()
    };
    assert_eq!(flag(0), Some("true".to_string()));
    assert_eq!(flag(1), None);
}

#[test]
fn kafka_args_prefixes_and_default_mechanism_reach_writers_and_keda() {
    let bp = seed_with(json!({
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": null,
        "client_id_prefix": "team-a.",
        "group_id_prefix": "team-a.",
        "additional_kafka_args": {"compression.type": "zstd", "auto.offset.reset": "latest"},
        "writers": [
            {"name": "a", "bus_subscriber_type": "ONLINE_WRITER",
             "additional_kafka_args": {"compression.type": "lz4",
                "partition.assignment.strategy": "org.apache.kafka.clients.consumer.RangeAssignor"},
             "autoscaling": {"max_replicas": 4}},
            {"name": "b", "bus_subscriber_type": "ONLINE_WRITER",
             "kafka_consumer_group_override": "existing-group"}]
    }));
    let r = render_all(&bp);
    let (a, b) = (env_of(&r.writers[0]), env_of(&r.writers[1]));
    assert_eq!(
        a.get(c::ENV_KAFKA_SASL_MECHANISM).map(String::as_str),
        Some("PLAIN"),
        "seed 000: PLAIN when a SASL protocol names no mechanism"
    );
    assert_eq!(
        a.get(c::ENV_KAFKA_CLIENT_ID_PREFIX).map(String::as_str),
        Some("team-a.")
    );
    assert_eq!(
        a.get(c::ENV_KAFKA_CONSUMER_GROUP).map(String::as_str),
        Some("team-a.bgpersist.background-persistence.a")
    );
    assert_eq!(
        b.get(c::ENV_KAFKA_CONSUMER_GROUP).map(String::as_str),
        Some("existing-group"),
        "an override is used as written"
    );
    let args: serde_json::Value =
        serde_json::from_str(a.get(c::ENV_KAFKA_ARGS).map_or("{}", String::as_str))
            .unwrap_or_default();
    assert_eq!(
        args,
        json!({"auto.offset.reset": "latest", "compression.type": "lz4",
               "partition.assignment.strategy": "range"})
    );
    let so = keda_json(r.writers[0].autoscaling.as_ref().map(|k| &k.scaled_object));
    let meta = &so["spec"]["triggers"][0]["metadata"];
    assert_eq!(
        meta["consumerGroup"],
        "team-a.bgpersist.background-persistence.a"
    );
    assert_eq!(meta["offsetResetPolicy"], "latest");
    assert_eq!(meta["sasl"], "plaintext");
}

#[test]
fn oauthbearer_token_source_reaches_the_writers_env() {
    let bp = seed_with(json!({"kafka_sasl_mechanism": "OAUTHBEARER",
        "kafka_oauthbearer": {"method": "OIDC", "client_id": "writers", "scope": "kafka",
            "token_endpoint_url": "https://idp.example/token"}}));
    let env = env_of(&render_all(&bp).writers[0]);
    assert_eq!(env[c::ENV_KAFKA_SASL_MECHANISM], "OAUTHBEARER");
    assert_eq!(env[c::ENV_KAFKA_OAUTH_METHOD], "OIDC");
    assert_eq!(
        env[c::ENV_KAFKA_OAUTH_TOKEN_URL],
        "https://idp.example/token"
    );
    assert_eq!(env[c::ENV_KAFKA_OAUTH_CLIENT_ID], "writers");
    assert_eq!(env[c::ENV_KAFKA_OAUTH_SCOPE], "kafka");
    assert_eq!(
        env[c::ENV_KAFKA_SASL_DIR],
        c::KAFKA_SASL_MOUNT,
        "the client secret's file"
    );
    assert!(!env.contains_key(c::ENV_KAFKA_OAUTH_AWS_REGION));
    let bp = seed_with(
        json!({"kafka_sasl_mechanism": "OAUTHBEARER", "kafka_sasl_secret": null,
        "kafka_oauthbearer": {"method": "AWS_MSK_IAM", "aws_region": "eu-west-1"}}),
    );
    let env = env_of(&render_all(&bp).writers[0]);
    assert_eq!(env[c::ENV_KAFKA_OAUTH_METHOD], "AWS_MSK_IAM");
    assert_eq!(env[c::ENV_KAFKA_OAUTH_AWS_REGION], "eu-west-1");
    assert!(
        !env.contains_key(c::ENV_KAFKA_SASL_DIR),
        "no secret to mount"
    );
}

#[test]
fn keystore_and_truststore_locations_reach_the_writers_env() {
    let bp = seed_with(json!({"ssl_keystore_location": "s3://certs/client.p12",
        "ssl_truststore_location": "gs://certs/ca.pem"}));
    let env = env_of(&render_all(&bp).writers[0]);
    assert_eq!(
        env[c::ENV_KAFKA_SSL_KEYSTORE_LOCATION],
        "s3://certs/client.p12"
    );
    assert_eq!(
        env[c::ENV_KAFKA_SSL_TRUSTSTORE_LOCATION],
        "gs://certs/ca.pem"
    );
}

#[test]
fn the_operators_otlp_endpoint_reaches_writers_unless_their_env_sets_one() {
    let render_with = |bp: &BackgroundPersistence, endpoint: Option<&str>| {
        let defaults = crate::operator::model::Defaults {
            otlp_endpoint: endpoint.map(str::to_string),
            ..super::fixtures::defaults()
        };
        let resource = bp.metadata.name.as_deref().unwrap_or_default();
        let resolved: Vec<_> = bp
            .spec
            .writers
            .iter()
            .map(|w| {
                crate::operator::model::resolve(bp, resource, w, &defaults)
                    .unwrap_or_else(|e| panic!("resolve: {e}"))
            })
            .collect();
        render(bp, &resolved).unwrap_or_else(|e| panic!("render: {e}"))
    };
    let var = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let bp = seed();
    // Off unless the operator has an endpoint.
    let off = render_with(&bp, None);
    assert!(off.writers.iter().all(|w| !env_of(w).contains_key(var)));
    let on = render_with(&bp, Some("http://otel-collector.observability:4318"));
    assert!(on.writers.iter().all(|w| {
        env_of(w).get(var).map(String::as_str) == Some("http://otel-collector.observability:4318")
    }));
    // The resource's pod env wins, and is not doubled.
    let own = seed_with(json!({"common_persistence_specs": {"writer_pod": {"env": [
        {"name": var, "value": "http://mine:4318"}]}}}));
    for w in &render_with(&own, Some("http://otel-collector.observability:4318")).writers {
        assert_eq!(env_values(w, var), ["http://mine:4318"]);
    }
}

#[test]
fn writers_get_one_malloc_arena_unless_their_env_chooses() {
    let var = "MALLOC_ARENA_MAX";
    assert!(
        render_all(&seed())
            .writers
            .iter()
            .all(|w| env_of(w).get(var).map(String::as_str) == Some("1"))
    );
    let own = seed_with(json!({"common_persistence_specs": {"writer_pod": {"env": [
        {"name": var, "value": "4"}]}}}));
    for w in &render_all(&own).writers {
        assert_eq!(env_values(w, var), ["4"]);
    }
}
