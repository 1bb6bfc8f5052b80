//! Autoscaling with KEDA against the real API server.
//!
//! The rig's bare kube-apiserver runs no controllers: no KEDA and no HPA.
//! These tests install KEDA's CRDs (`hack/keda-crds`) and play the HPA's
//! part themselves, updating the Deployment's scale subresource under the
//! field manager the HPA controller writes with. What they prove is the
//! operator's side: what it renders and applies, that it never writes an
//! autoscaled writer's replicas, and how replicas change hands.

use crate::reconcile::Fixture;
use crate::support::keda;
use crate::support::kubeclient::{RequestCount, counting_client};
use bgpersist::crd::BackgroundPersistence;
use bgpersist::operator::controller::{Context, reconcile_once};
use bgpersist::operator::handover::{HANDOVER_MANAGER, operator_owns_replicas, owns_replicas};
use bgpersist::operator::keda::Keda;
use bgpersist::operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::ScaleSpec;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The field manager of the HPA controller (it runs in kube-controller-manager).
const HPA_MANAGER: &str = "kube-controller-manager";

fn keda_api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: keda::API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn scaled_objects(f: &Fixture) -> Api<DynamicObject> {
    keda_api(&f.client, &f.ns, "ScaledObject", "scaledobjects")
}

fn trigger_authentications(f: &Fixture) -> Api<DynamicObject> {
    keda_api(
        &f.client,
        &f.ns,
        "TriggerAuthentication",
        "triggerauthentications",
    )
}

/// A fixture on a rig with KEDA's CRDs installed.
async fn with_keda(patch: Value) -> anyhow::Result<Fixture> {
    let client = crate::install_crd().await?;
    keda::install_crds(&client).await?;
    Fixture::new(patch).await
}

/// Writes the scale subresource as the HPA controller does (an update, not an
/// apply), retrying on a conflict as it does: the rig's Deployment controller
/// writes status in between.
async fn scale_as_hpa(f: &Fixture, writer: &str, replicas: i32) -> anyhow::Result<()> {
    replace_scale_as_hpa(&f.deployments(), &f.dep_name(writer), replicas).await
}

async fn replace_scale_as_hpa(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    let pp = PostParams {
        field_manager: Some(HPA_MANAGER.into()),
        ..Default::default()
    };
    let mut attempt = 0;
    loop {
        let mut scale = api.get_scale(name).await?;
        scale.spec = Some(ScaleSpec {
            replicas: Some(replicas),
        });
        match api.replace_scale(name, &pp, &scale).await {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => attempt += 1,
            result => {
                result?;
                return Ok(());
            }
        }
    }
}

async fn deployment(f: &Fixture, writer: &str) -> anyhow::Result<Deployment> {
    Ok(f.deployments().get(&f.dep_name(writer)).await?)
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

async fn writer_status(f: &Fixture, writer: &str) -> anyhow::Result<bgpersist::crd::WriterStatus> {
    f.bps
        .get(&f.name)
        .await?
        .status
        .unwrap_or_default()
        .writers
        .into_iter()
        .find(|w| w.name == writer)
        .ok_or_else(|| anyhow::anyhow!("no status for writer {writer}"))
}

fn writer(name: &str, extra: Value) -> Value {
    let mut w = json!({"name": name, "bus_subscriber_type": "GO_METRICS_BUS_WRITER"});
    crate::support::json_merge(&mut w, &extra);
    w
}

#[tokio::test]
async fn autoscaled_writer_gets_keda_objects_and_leaves_replicas_to_the_autoscaler()
-> anyhow::Result<()> {
    let auto = json!({"autoscaling": {"min_replicas": 2, "max_replicas": 8, "lag_threshold": 50}});
    let f = with_keda(json!({"writers": [writer("a", auto), writer("b", json!({}))]})).await?;
    let report = f.reconcile().await?;
    let so_name = f.dep_name("a");
    for want in [
        format!("ScaledObject/{so_name}"),
        format!("TriggerAuthentication/{so_name}"),
        format!("Deployment/{so_name}"),
    ] {
        assert!(report.applied.contains(&want), "{want}: {report:?}");
    }
    assert!(
        !report.applied.iter().any(|a| a.ends_with(&f.dep_name("b"))
            && !a.starts_with("Deployment/")
            && !a.starts_with("PodDisruptionBudget/")),
        "no KEDA objects for the fixed writer: {report:?}"
    );

    // The ScaledObject, as stored by the API server under KEDA's schema.
    let bp = f.bps.get(&f.name).await?;
    let so = serde_json::to_value(scaled_objects(&f).get(&so_name).await?)?;
    assert_eq!(
        so["metadata"]["ownerReferences"][0]["uid"],
        json!(bp.metadata.uid)
    );
    assert_eq!(so["metadata"]["labels"]["bgpersist.dev/writer"], "a");
    assert_eq!(
        so["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": so_name})
    );
    assert_eq!(
        (
            &so["spec"]["minReplicaCount"],
            &so["spec"]["maxReplicaCount"]
        ),
        (&json!(2), &json!(8))
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    assert_eq!(trigger["authenticationRef"]["name"], json!(so_name));
    let group = format!("bgpersist.{}.a", f.name);
    for (key, want) in [
        ("consumerGroup", group.as_str()),
        ("topic", "metrics-bus-1"),
        ("lagThreshold", "50"),
        ("offsetResetPolicy", "earliest"),
        ("sasl", "scram_sha512"),
        ("tls", "enable"),
    ] {
        assert_eq!(trigger["metadata"][key], want, "trigger metadata {key}");
    }
    let env = deployment(&f, "a")
        .await?
        .spec
        .and_then(|s| s.template.spec);
    let env = serde_json::to_value(env.map(|p| p.containers[0].env.clone()))?;
    assert!(
        env.as_array().is_some_and(
            |e| e.contains(&json!({"name": "BGP_KAFKA_CONSUMER_GROUP", "value": group}))
        ),
        "the scaler watches the group the writer joins: {env}"
    );

    // Its credentials come from the Secret the operator syncs.
    let ta = serde_json::to_value(trigger_authentications(&f).get(&so_name).await?)?;
    let secret = format!("{}-kafka-sasl", f.name);
    assert_eq!(
        ta["spec"]["secretTargetRef"],
        json!([
            {"parameter": "username", "name": secret, "key": "username"},
            {"parameter": "password", "name": secret, "key": "password"},
        ])
    );
    let synced: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let keys = synced.get(&secret).await?.data.unwrap_or_default();
    assert!(keys.contains_key("username") && keys.contains_key("password"));

    // Replicas: created at min_replicas, then held by the hand-over manager, never by the operator.
    let a = deployment(&f, "a").await?;
    assert_eq!(replicas(&a), Some(2));
    let managers: Vec<_> = a
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert!(!operator_owns_replicas(&a), "managers: {managers:?}");
    assert!(owns_replicas(&a, HANDOVER_MANAGER));
    assert!(
        operator_owns_replicas(&deployment(&f, "b").await?),
        "a fixed writer's replicas stay the operator's"
    );
    assert_eq!(
        writer_status(&f, "a").await?.scaled_object,
        Some(so_name.clone())
    );

    // The autoscaler scales out; the operator leaves it be.
    scale_as_hpa(&f, "a", 4).await?;
    f.reconcile().await?;
    assert_eq!(replicas(&deployment(&f, "a").await?), Some(4));
    assert_eq!(writer_status(&f, "a").await?.desired_replicas, 4);
    f.count.reset();
    let again = f.reconcile().await?;
    assert_eq!(again, Default::default());
    assert_eq!(
        f.count.writes(),
        0,
        "writes on a no-op resync: {:?}",
        f.count.write_log()
    );
    assert_eq!(replicas(&deployment(&f, "a").await?), Some(4));

    // A spec change that rolls the writer keeps the autoscaler's count.
    let mut writers = serde_json::to_value(&f.bps.get(&f.name).await?.spec.writers)?;
    writers[0]["max_batch_size"] = json!(250);
    f.edit_spec(json!({"writers": writers})).await?;
    let report = f.reconcile().await?;
    assert!(
        report.applied.contains(&format!("Deployment/{so_name}")),
        "{report:?}"
    );
    let a = deployment(&f, "a").await?;
    assert_eq!(replicas(&a), Some(4));
    assert!(!operator_owns_replicas(&a));
    Ok(())
}

#[tokio::test]
async fn switching_autoscaling_on_keeps_the_fixed_replica_count() -> anyhow::Result<()> {
    let f =
        with_keda(json!({"writers": [writer("a", json!({"default_replica_count": 3}))]})).await?;
    f.reconcile().await?;
    let a = deployment(&f, "a").await?;
    assert_eq!(replicas(&a), Some(3));
    assert!(operator_owns_replicas(&a));

    let mut w = writer("a", json!({"default_replica_count": 3}));
    w["autoscaling"] = json!({"max_replicas": 10});
    f.edit_spec(json!({"writers": [w.clone()]})).await?;
    f.reconcile().await?;
    let a = deployment(&f, "a").await?;
    assert_eq!(
        replicas(&a),
        Some(3),
        "dropping replicas from the applied configuration must not reset them"
    );
    assert!(!operator_owns_replicas(&a));
    assert!(owns_replicas(&a, HANDOVER_MANAGER));

    // The next apply without replicas (here: a rollout) keeps them too.
    w["max_batch_size"] = json!(100);
    f.edit_spec(json!({"writers": [w]})).await?;
    let report = f.reconcile().await?;
    assert!(
        report
            .applied
            .contains(&format!("Deployment/{}", f.dep_name("a"))),
        "{report:?}"
    );
    assert_eq!(replicas(&deployment(&f, "a").await?), Some(3));
    Ok(())
}

#[tokio::test]
async fn switching_autoscaling_off_prunes_keda_objects_and_takes_replicas_back()
-> anyhow::Result<()> {
    let auto = json!({"default_replica_count": 2, "autoscaling": {"max_replicas": 8}});
    let f = with_keda(json!({"writers": [writer("a", auto)]})).await?;
    f.reconcile().await?;
    scale_as_hpa(&f, "a", 4).await?;
    f.reconcile().await?;
    assert_eq!(replicas(&deployment(&f, "a").await?), Some(4));

    f.edit_spec(json!({"writers": [writer("a", json!({"default_replica_count": 2}))]}))
        .await?;
    let report = f.reconcile().await?;
    let key = format!("{}/{}", f.ns, f.dep_name("a"));
    assert_eq!(
        report.pruned,
        vec![key.clone(), key],
        "ScaledObject and TriggerAuthentication"
    );
    assert!(
        scaled_objects(&f)
            .get_opt(&f.dep_name("a"))
            .await?
            .is_none()
    );
    assert!(
        trigger_authentications(&f)
            .get_opt(&f.dep_name("a"))
            .await?
            .is_none()
    );
    let a = deployment(&f, "a").await?;
    assert_eq!(replicas(&a), Some(2), "back at default_replica_count");
    assert!(operator_owns_replicas(&a));
    assert_eq!(writer_status(&f, "a").await?.scaled_object, None);

    f.count.reset();
    assert_eq!(f.reconcile().await?, Default::default());
    assert_eq!(f.count.writes(), 0, "{:?}", f.count.write_log());
    Ok(())
}

/// The rig has KEDA's CRDs for the other tests, so this one points the
/// operator at an API group no server serves: discovery answers 404 exactly
/// as on a cluster without KEDA.
#[tokio::test]
async fn without_keda_an_autoscaled_writer_is_degraded_and_not_applied() -> anyhow::Result<()> {
    let f =
        Fixture::new(json!({"writers": [writer("a", json!({})), writer("b", json!({}))]})).await?;
    f.reconcile().await?;
    let before = deployment(&f, "a").await?;

    let auto = json!({"autoscaling": {"max_replicas": 4}});
    f.edit_spec(json!({"writers": [
        writer("a", auto.clone()),
        writer("b", json!({"default_replica_count": 2})),
        writer("c", auto),
    ]}))
    .await?;
    let count = RequestCount::default();
    let ctx = Context::new(counting_client(&count).await?, Metrics::default())
        .with_defaults(crate::support::operator_defaults())
        .with_secrets(crate::support::secrets::in_memory())
        .with_keda(Keda::probing("absent.keda.sh/v1alpha1"));
    let bp: BackgroundPersistence = f.bps.get(&f.name).await?;
    let report = reconcile_once(&bp, &ctx).await?;

    assert_eq!(
        report.applied,
        vec![
            format!("Deployment/{}", f.dep_name("b")),
            // Two replicas now: it gets a budget.
            format!("PodDisruptionBudget/{}", f.dep_name("b")),
        ],
        "the rest of the resource is applied"
    );
    assert_eq!(replicas(&deployment(&f, "b").await?), Some(2));
    let after = deployment(&f, "a").await?;
    // The rig's controllers update the Deployment's status: what must not
    // change is what the operator applies, and it sends nothing for it.
    assert_eq!(
        before.spec, after.spec,
        "nothing applied for the autoscaled writer: it keeps its last Deployment"
    );
    let a_path = format!("/deployments/{}", f.dep_name("a"));
    assert!(
        !count.write_log().iter().any(|w| w.ends_with(&a_path)),
        "nothing applied for the autoscaled writer: {:?}",
        count.write_log()
    );
    assert!(f.deployments().get_opt(&f.dep_name("c")).await?.is_none());
    assert!(report.pruned.is_empty(), "{report:?}");

    let (degraded, reason, message, _) = f.condition("Degraded").await?;
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "KedaNotInstalled")
    );
    for w in [("a", 0), ("c", 2)] {
        let needle = format!(
            "writer {}: spec.writers[{}].autoscaling: KEDA ScaledObject CRD not installed",
            w.0, w.1
        );
        assert!(message.contains(&needle), "{message}");
        let st = writer_status(&f, w.0).await?;
        assert!(
            st.message
                .as_deref()
                .is_some_and(|m| m.contains("KEDA ScaledObject CRD not installed")),
            "{st:?}"
        );
    }
    assert_eq!(f.condition("Ready").await?.0, "False");
    Ok(())
}

#[tokio::test]
async fn pubsub_writer_autoscales_on_backlog_with_workload_identity() -> anyhow::Result<()> {
    let auto = json!({"hpa_pubsub_subscription_id": "projects/p/subscriptions/metrics-backlog",
        "hpa_target_average_value": 500, "autoscaling": {"min_replicas": 0, "max_replicas": 3}});
    let f = with_keda(
        json!({"common_persistence_specs": {"bus_backend": "PUBSUB"},
        "writers": [writer("a", auto)]}),
    )
    .await?;
    f.reconcile().await?;
    let so = serde_json::to_value(scaled_objects(&f).get(&f.dep_name("a")).await?)?;
    assert_eq!(so["spec"]["minReplicaCount"], 0);
    assert_eq!(so["spec"]["triggers"][0]["type"], "gcp-pubsub", "{so:#}");
    assert_eq!(
        so["spec"]["triggers"][0]["metadata"],
        json!({"subscriptionName": "projects/p/subscriptions/metrics-backlog",
            "mode": "SubscriptionSize", "value": "500"})
    );
    let ta = serde_json::to_value(trigger_authentications(&f).get(&f.dep_name("a")).await?)?;
    assert_eq!(ta["spec"], json!({"podIdentity": {"provider": "gcp"}}));
    let a = deployment(&f, "a").await?;
    assert_eq!(replicas(&a), Some(1), "created at default_replica_count");
    assert!(!operator_owns_replicas(&a));
    Ok(())
}

/// What changes when anything writes to an object.
fn fingerprint(bp: &BackgroundPersistence) -> Value {
    json!([
        bp.metadata.resource_version,
        bp.metadata.generation,
        serde_json::to_value(&bp.metadata.managed_fields).unwrap_or_default()
    ])
}

#[tokio::test]
async fn gitops_reapply_of_the_autoscaled_example_changes_nothing() -> anyhow::Result<()> {
    let client = crate::install_crd().await?;
    keda::install_crds(&client).await?;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/kafka-autoscaled.yaml"
    ))?;
    let mut doc: Value = serde_yaml::from_str(&text)?;
    let id = crate::support::unique("g");
    let name = format!("ga{}", &id[id.len().saturating_sub(8)..]).replace('-', "");
    let ns = format!("ns-{name}");
    doc["metadata"]["name"] = name.clone().into();
    doc["spec"]["common_persistence_specs"]["namespace"] = ns.clone().into();
    let bps: Api<BackgroundPersistence> = Api::all(client.clone());
    let argo = PatchParams::apply("argocd-controller");
    bps.patch(&name, &argo, &Patch::Apply(&doc)).await?;

    let count = RequestCount::default();
    let ctx = Context::new(counting_client(&count).await?, Metrics::default())
        .with_defaults(crate::support::operator_defaults())
        .with_secrets(crate::support::secrets::in_memory());
    reconcile_once(&bps.get(&name).await?, &ctx).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let online = format!("{name}-online-writer");
    let so: Api<DynamicObject> = keda_api(&client, &ns, "ScaledObject", "scaledobjects");
    assert!(so.get_opt(&online).await?.is_some());

    // The autoscaler scales out, then Argo CD syncs the unchanged file again.
    replace_scale_as_hpa(&deployments, &online, 7).await?;
    reconcile_once(&bps.get(&name).await?, &ctx).await?;
    let before = bps.get(&name).await?;
    bps.patch(&name, &argo, &Patch::Apply(&doc)).await?;
    let after = bps.get(&name).await?;
    assert_eq!(
        fingerprint(&after),
        fingerprint(&before),
        "the re-apply changed the resource"
    );
    count.reset();
    let report = reconcile_once(&after, &ctx).await?;
    assert_eq!(report, Default::default());
    assert_eq!(count.writes(), 0, "{:?}", count.write_log());
    let d = deployments.get(&online).await?;
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.replicas),
        Some(7),
        "the example's default_replica_count does not fight the autoscaler"
    );
    assert_eq!(after.name_any(), name);
    Ok(())
}
