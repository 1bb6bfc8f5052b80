//! Reconcile against the real API server.

use crate::support::kubeclient::{RequestCount, counting_client};
use crate::{install_crd, seed_resource};
use bgpersist::crd::BackgroundPersistence;
use bgpersist::operator::controller::{Context, reconcile_once};
use bgpersist::operator::metrics::Metrics;
use bgpersist::operator::watches::Watches;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// One resource created on the rig, and an operator context whose client
/// counts its requests (shared with the other test modules of this binary).
pub(crate) struct Fixture {
    pub(crate) client: Client,
    pub(crate) count: RequestCount,
    pub(crate) ctx: Context,
    pub(crate) bps: Api<BackgroundPersistence>,
    pub(crate) name: String,
    pub(crate) ns: String,
}

impl Fixture {
    pub(crate) async fn new(patch: serde_json::Value) -> anyhow::Result<Self> {
        let client = install_crd().await?;
        let bp = seed_resource(patch)?;
        let bps: Api<BackgroundPersistence> = Api::all(client.clone());
        bps.create(&PostParams::default(), &bp).await?;
        let count = RequestCount::default();
        // The seed names a Kafka SASL cloud secret: serve it from memory.
        let ctx = Context::new(counting_client(&count).await?, Metrics::default())
            .with_defaults(crate::support::operator_defaults())
            .with_secrets(crate::support::secrets::in_memory());
        Ok(Fixture {
            name: bp.name_any(),
            ns: bp.spec.common_persistence_specs.namespace.clone(),
            client,
            count,
            ctx,
            bps,
        })
    }

    /// Reads the resource back and reconciles it once, as a watch event would.
    pub(crate) async fn reconcile(
        &self,
    ) -> anyhow::Result<bgpersist::operator::controller::Report> {
        let bp = self.bps.get(&self.name).await?;
        Ok(reconcile_once(&bp, &self.ctx).await?)
    }

    pub(crate) fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(crate) fn dep_name(&self, writer: &str) -> String {
        format!("{}-{writer}", self.name)
    }

    pub(crate) async fn edit_spec(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        self.bps
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": patch})),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn condition(
        &self,
        type_: &str,
    ) -> anyhow::Result<(String, String, String, Option<i64>)> {
        let bp = self.bps.get(&self.name).await?;
        let c = bp
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_))
            .ok_or_else(|| anyhow::anyhow!("no {type_} condition"))?;
        Ok((c.status, c.reason, c.message, c.observed_generation))
    }

    /// Plays the part of the missing kube-controller-manager: marks a Deployment rolled out.
    async fn mark_ready(&self, writer: &str) -> anyhow::Result<()> {
        let d = self.deployments().get(&self.dep_name(writer)).await?;
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {"observedGeneration": d.metadata.generation, "replicas": replicas,
            "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}});
        self.deployments()
            .patch_status(
                &self.dep_name(writer),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        Ok(())
    }

    /// Marks `writers` ready and reconciles until status counts `ready`:
    /// the rig's Deployment controller may rewrite a status we patched (its
    /// pods never start), so the marking is repeated as it would be by
    /// kubelets reporting.
    async fn settle_ready(&self, writers: &[&str], ready: &str) -> anyhow::Result<()> {
        for _ in 0..25 {
            for w in writers {
                self.mark_ready(w).await?;
            }
            self.reconcile().await?;
            let shown = self
                .bps
                .get(&self.name)
                .await?
                .status
                .and_then(|s| s.writers_ready);
            if shown.as_deref() == Some(ready) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn seed_is_reconciled_then_resync_writes_nothing() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    let report = f.reconcile().await?;
    let mut applied = report.applied.clone();
    applied.sort();
    let expected = [
        format!("Deployment/{}", f.dep_name("go-metrics-bus-writer")),
        format!("Deployment/{}", f.dep_name("go-result-bus-metrics-writer")),
        format!("Namespace/{}", f.ns),
        format!("Secret/{}-kafka-sasl", f.name),
        "ServiceAccount/background-persistence-sa".to_string(),
    ];
    assert_eq!(applied, expected);
    assert!(report.status_written);

    // The objects carry what the spec says.
    let bp = f.bps.get(&f.name).await?;
    let d = f
        .deployments()
        .get(&f.dep_name("go-result-bus-metrics-writer"))
        .await?;
    let owner = d
        .owner_references()
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no owner"))?;
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.as_str())),
        ("BackgroundPersistence", bp.metadata.uid.as_deref())
    );
    let pod = d
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .ok_or_else(|| anyhow::anyhow!("no pod spec"))?;
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some(crate::support::OPERATOR_IMAGE)
    );
    let limits = serde_json::to_value(&pod.containers[0].resources)?;
    assert_eq!(
        limits["limits"]["memory"],
        json!("1Gi"),
        "the server canonicalises 1024Mi"
    );
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let sa: Api<ServiceAccount> = Api::namespaced(f.client.clone(), &f.ns);
    assert!(sa.get_opt("background-persistence-sa").await?.is_some());
    // One replica each: a budget would refuse no eviction, so there is none.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(f.client.clone(), &f.ns);
    assert_eq!(pdbs.list(&Default::default()).await?.items.len(), 0);
    let ns: Api<Namespace> = Api::all(f.client.clone());
    assert!(ns.get_opt(&f.ns).await?.is_some());

    let (ready, reason, _, generation) = f.condition("Ready").await?;
    assert_eq!(
        (ready.as_str(), reason.as_str(), generation),
        ("False", "WritersNotReady", Some(1))
    );
    assert_eq!(f.condition("Progressing").await?.0, "True");

    // A resync with nothing changed sends no write at all.
    f.count.reset();
    let again = f.reconcile().await?;
    assert_eq!(
        again,
        Default::default(),
        "nothing applied, pruned or written"
    );
    assert_eq!(
        f.count.writes(),
        0,
        "writes on a no-op resync: {:?}",
        f.count.write_log()
    );
    assert!(
        f.count.reads() > 0,
        "the counter sees the reconcile's reads"
    );
    Ok(())
}

#[tokio::test]
async fn a_resync_read_from_the_watch_caches_sends_no_request() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    // The caches are filled as the controller's watches fill them, through a
    // client of their own: the count is the reconcile's alone.
    let keda = bgpersist::operator::keda::Keda::default()
        .served(&f.client)
        .await?;
    let (caches, fill) = Watches::new(&f.client, keda).fill();
    let filling = tokio::spawn(fill);
    let ctx = Context::new(f.ctx.client.clone(), Metrics::default())
        .with_defaults(crate::support::operator_defaults())
        .with_secrets(crate::support::secrets::in_memory())
        .with_caches(caches.clone());
    tokio::time::timeout(Duration::from_secs(30), caches.wait_ready()).await?;
    let bp = f.bps.get(&f.name).await?;
    let first = reconcile_once(&bp, &ctx).await?;
    assert!(!first.applied.is_empty(), "{first:?}");
    // Until the watches bring back what was written (and its status).
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bp = f.bps.get(&f.name).await?;
        if reconcile_once(&bp, &ctx).await? == Default::default() {
            settled = true;
            break;
        }
    }
    assert!(settled, "the reconcile kept applying");

    f.count.reset();
    let bp = f.bps.get(&f.name).await?;
    let again = reconcile_once(&bp, &ctx).await?;
    filling.abort();
    assert_eq!(
        again,
        Default::default(),
        "nothing applied, pruned or written"
    );
    assert_eq!(
        (f.count.reads(), f.count.writes()),
        (0, 0),
        "API requests on a no-op resync: {:?}",
        f.count.log()
    );
    Ok(())
}

#[tokio::test]
async fn ready_when_deployments_roll_out() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    f.reconcile().await?;
    f.settle_ready(&["go-metrics-bus-writer"], "1/2").await?;
    assert_eq!(
        f.condition("Ready").await?.0,
        "False",
        "one of two is ready"
    );
    assert_eq!(
        f.bps
            .get(&f.name)
            .await?
            .status
            .and_then(|s| s.writers_ready)
            .as_deref(),
        Some("1/2")
    );
    f.settle_ready(
        &["go-metrics-bus-writer", "go-result-bus-metrics-writer"],
        "2/2",
    )
    .await?;
    let (ready, reason, message, _) = f.condition("Ready").await?;
    assert_eq!(
        (ready.as_str(), reason.as_str(), message.as_str()),
        ("True", "AllWritersReady", "2/2 writers ready")
    );
    assert_eq!(f.condition("Progressing").await?.0, "False");
    assert_eq!(f.condition("Degraded").await?.0, "False");
    Ok(())
}

#[tokio::test]
async fn hand_edited_deployment_is_restored() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    f.reconcile().await?;
    let name = f.dep_name("go-metrics-bus-writer");
    let edit = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 5}});
    f.deployments()
        .patch(
            &name,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(edit),
        )
        .await?;
    let report = f.reconcile().await?;
    assert_eq!(report.applied, vec![format!("Deployment/{name}")]);
    assert_eq!(
        f.deployments()
            .get(&name)
            .await?
            .spec
            .and_then(|s| s.replicas),
        Some(1)
    );
    Ok(())
}

#[tokio::test]
async fn spec_edit_updates_and_removed_writer_is_pruned() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    f.reconcile().await?;
    let mut bp = f.bps.get(&f.name).await?;
    bp.spec.writers[0].default_replica_count = Some(3);
    f.edit_spec(json!({"writers": bp.spec.writers})).await?;
    let report = f.reconcile().await?;
    let scaled = f.dep_name("go-metrics-bus-writer");
    assert_eq!(
        report.applied,
        vec![
            format!("Deployment/{scaled}"),
            format!("PodDisruptionBudget/{scaled}")
        ],
        "three replicas get a budget"
    );
    let d = f.deployments().get(&scaled).await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        f.condition("Ready").await?.3,
        Some(2),
        "conditions carry the new generation"
    );

    f.edit_spec(json!({"writers": [bp.spec.writers[0]]}))
        .await?;
    let report = f.reconcile().await?;
    let gone = f.dep_name("go-result-bus-metrics-writer");
    assert_eq!(
        report.pruned,
        vec![format!("{}/{gone}", f.ns)],
        "its Deployment (one replica: it had no PDB)"
    );
    assert!(f.deployments().get_opt(&gone).await?.is_none());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(f.client.clone(), &f.ns);
    assert!(pdbs.get_opt(&scaled).await?.is_some());

    // Back to one replica: its budget goes, the writer stays.
    bp.spec.writers[0].default_replica_count = Some(1);
    f.edit_spec(json!({"writers": [bp.spec.writers[0]]}))
        .await?;
    let report = f.reconcile().await?;
    assert_eq!(report.pruned, vec![format!("{}/{scaled}", f.ns)]);
    assert!(pdbs.get_opt(&scaled).await?.is_none());
    assert!(f.deployments().get_opt(&scaled).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn invalid_writer_is_reported_and_nothing_applied_for_it() -> anyhow::Result<()> {
    // Request above limit passes the schema but not the operator's checks.
    let extra = json!({"name": "greedy", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
        "request": {"cpu": "2"}, "limit": {"cpu": "1"}});
    let f = Fixture::new(json!({})).await?;
    let mut writers = serde_json::to_value(&f.bps.get(&f.name).await?.spec.writers)?;
    if let Some(list) = writers.as_array_mut() {
        list.push(extra);
    }
    f.edit_spec(json!({"writers": writers})).await?;
    let report = f.reconcile().await?;
    assert_eq!(
        report
            .applied
            .iter()
            .filter(|a| a.starts_with("Deployment/"))
            .count(),
        2
    );
    assert!(
        f.deployments()
            .get_opt(&f.dep_name("greedy"))
            .await?
            .is_none(),
        "nothing applied for the refused writer"
    );
    let (degraded, reason, message, _) = f.condition("Degraded").await?;
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidWriters")
    );
    assert!(
        message.contains("writer greedy: spec.writers[2].request.cpu: must not exceed the limit"),
        "{message}"
    );
    let status = f.bps.get(&f.name).await?.status.unwrap_or_default();
    let greedy = status
        .writers
        .iter()
        .find(|w| w.name == "greedy")
        .and_then(|w| w.message.clone());
    assert_eq!(
        greedy.as_deref(),
        Some("spec.writers[2].request.cpu: must not exceed the limit")
    );
    // The refusal is also a Warning event on the resource (cluster-scoped
    // objects get their events in "default").
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(f.client.clone(), "default");
    let warnings: Vec<_> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(f.name.as_str()))
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("InvalidWriters")
        })
        .collect();
    assert_eq!(warnings.len(), 1, "one Warning event for the refusal");
    let note = warnings[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("writer greedy: spec.writers[2].request.cpu"),
        "{note}"
    );

    // A writer that becomes invalid keeps its last good Deployment untouched.
    let first = f.dep_name("go-metrics-bus-writer");
    let before = f.deployments().get(&first).await?;
    if let Some(list) = writers.as_array_mut() {
        list[0]["request"] = json!({"cpu": "4", "memory": "512Mi"});
    }
    f.edit_spec(json!({"writers": writers})).await?;
    let report = f.reconcile().await?;
    assert!(
        report.pruned.is_empty() && !report.applied.contains(&format!("Deployment/{first}")),
        "{report:?}"
    );
    let after = f.deployments().get(&first).await?;
    // The rig's Deployment controller writes status meanwhile; the spec and
    // its generation are what the operator would have changed.
    assert_eq!(before.metadata.generation, after.metadata.generation);
    assert_eq!(before.spec, after.spec);
    Ok(())
}

#[tokio::test]
async fn controller_applies_and_restores_drift_from_watch_events() -> anyhow::Result<()> {
    let f = Fixture::new(json!({})).await?;
    let ctx = Arc::new(
        Context::new(f.client.clone(), Metrics::default())
            .with_defaults(crate::support::operator_defaults())
            .with_secrets(crate::support::secrets::in_memory()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Only this test's resource: the other tests reconcile theirs by hand.
    let selection =
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={}", f.name));
    let task = tokio::spawn(bgpersist::operator::controller::run_selected(
        ctx,
        selection,
        async move {
            let _ = stopped.await;
        },
    ));
    let name = f.dep_name("go-metrics-bus-writer");
    let exists = || async { f.deployments().get_opt(&name).await.ok().flatten() };
    wait_for("the controller to create the Deployment", || async {
        exists().await.is_some()
    })
    .await?;

    let edit = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 4}});
    f.deployments()
        .patch(
            &name,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(edit),
        )
        .await?;
    wait_for("the drift to be restored", || async {
        exists().await.and_then(|d| d.spec.and_then(|s| s.replicas)) == Some(1)
    })
    .await?;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[tokio::test]
async fn pod_settings_reach_the_pods_and_a_resync_writes_nothing() -> anyhow::Result<()> {
    let f = Fixture::new(json!({
        "common_persistence_specs": {"writer_pod": {
            "node_selector": {"pool": "writers", "zone": "a"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "writers", "effect": "NoSchedule"}],
            "priority_class_name": "bulk",
            "image_pull_secrets": [{"name": "registry"}],
            "labels": {"team": "data"},
            "annotations": {"ad.datadoghq.com/writer.logs": "[]"},
            "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
            "log_level": "info",
            "volumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
            "volume_mounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": true}],
            "topology_spread_constraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"bgpersist.dev/resource": "background-persistence"}}}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}
        }},
        "writers": [
            {"name": "go-metrics-bus-writer", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "pod": {"node_selector": {"zone": "b"}, "log_level": "debug"}},
            {"name": "go-result-bus-metrics-writer", "bus_subscriber_type": "GO_RESULT_BUS_METRICS_WRITER"}
        ]
    }))
    .await?;
    f.reconcile().await?;
    let d = f
        .deployments()
        .get(&f.dep_name("go-metrics-bus-writer"))
        .await?;
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let pod = template.spec.unwrap_or_default();
    assert_eq!(
        pod.node_selector,
        Some(std::collections::BTreeMap::from([
            ("pool".to_string(), "writers".to_string()),
            ("zone".to_string(), "b".to_string())
        ])),
        "the writer's key wins, the resource's others stay"
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("bulk"));
    assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
    assert!(pod.affinity.is_some() && pod.topology_spread_constraints.is_some());
    assert_eq!(
        pod.image_pull_secrets
            .map(|s| s.into_iter().map(|r| r.name).collect::<Vec<_>>()),
        Some(vec!["registry".to_string()])
    );
    let labels = meta.labels.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(
        labels.get("bgpersist.dev/writer").map(String::as_str),
        Some("go-metrics-bus-writer")
    );
    assert!(
        meta.annotations
            .unwrap_or_default()
            .contains_key("ad.datadoghq.com/writer.logs")
    );
    let c = &pod.containers[0];
    let env: std::collections::BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("debug"));
    assert_eq!(env.get("AWS_REGION").map(String::as_str), Some("eu-west-1"));
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "corp-ca" && m.mount_path == "/etc/ssl/corp")
    );
    assert!(pod.volumes.iter().flatten().any(|v| v.name == "corp-ca"));

    // What the server defaulted (configMap defaultMode, ...) is no drift.
    f.count.reset();
    let again = f.reconcile().await?;
    assert_eq!(
        again,
        Default::default(),
        "nothing applied, pruned or written"
    );
    assert_eq!(f.count.writes(), 0, "writes: {:?}", f.count.write_log());
    Ok(())
}
