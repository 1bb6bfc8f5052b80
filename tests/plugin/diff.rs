//! `diff` on the rig's API server: nothing after the operator applied, the
//! field someone edited, and what an edit of the resource would create or prune.

use crate::Applied;
use crate::support::plugin::on_rig;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn diff_shows_drift_and_what_an_edit_would_create_or_prune() -> anyhow::Result<()> {
    let applied = Applied::new("diff").await?;
    let name = applied.name.as_str();
    let ns = applied.ns.as_str();

    let clean = on_rig(&["diff", name])?;
    assert_eq!(
        clean.code, 0,
        "no difference right after the operator applied: {clean}"
    );
    assert!(clean.stdout.is_empty(), "{clean}");

    // Someone edits a field the operator manages (another field manager).
    let deployments: Api<Deployment> = Api::namespaced(applied.client.clone(), ns);
    let dep = format!("{name}-go-metrics-bus-writer");
    let edited = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "writer", "image": "edited.example/writer:drift"}]}}}});
    let live = deployments.get(&dep).await?;
    let container = live
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .map(|c| c.name.clone())
        .ok_or_else(|| anyhow::anyhow!("{dep} has no container"))?;
    anyhow::ensure!(container == "writer", "container is named {container}");
    deployments
        .patch(&dep, &PatchParams::default(), &Patch::Strategic(edited))
        .await?;
    let drift = on_rig(&["diff", name])?;
    assert_eq!(drift.code, 1, "{drift}");
    assert!(
        drift
            .stdout
            .contains(&format!("Deployment {ns}/{dep} (live)")),
        "{drift}"
    );
    let changed = |sign: char, text: &str| {
        drift
            .stdout
            .lines()
            .any(|l| l.starts_with(sign) && l.contains("image:") && l.contains(text))
    };
    assert!(changed('-', "edited.example/writer:drift"), "{drift}");
    assert!(changed('+', crate::support::OPERATOR_IMAGE), "{drift}");
    assert_eq!(
        drift.stdout.matches("(live)").count(),
        1,
        "only the edited object differs: {drift}"
    );

    // The operator puts it back: no difference again.
    applied.reconcile().await?;
    let back = on_rig(&["diff", name])?;
    assert_eq!(back.code, 0, "{back}");

    // A writer removed and another added in the resource.
    let mut writers = applied.bps.get(name).await?.spec.writers;
    let mut added = writers[0].clone();
    added.name = "added".into();
    writers.remove(1);
    writers.push(added);
    applied
        .bps
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"writers": writers}})),
        )
        .await?;
    let edit = on_rig(&["diff", name])?;
    assert_eq!(edit.code, 1, "{edit}");
    for kind in ["Deployment", "PodDisruptionBudget"] {
        let gone = format!("--- {kind} {ns}/{name}-go-result-bus-metrics-writer (would be pruned)");
        let new = format!("+++ {kind} {ns}/{name}-added (would be created)");
        assert!(edit.stdout.contains(&gone), "{gone}\n{edit}");
        assert!(edit.stdout.contains(&new), "{new}\n{edit}");
    }

    let wrong_ns = on_rig(&["diff", name, "-n", "default"])?;
    assert_eq!(wrong_ns.code, 2, "{wrong_ns}");
    let missing = on_rig(&["diff", "no-such-resource"])?;
    assert_eq!(missing.code, 2, "{missing}");
    assert!(missing.stderr.contains("not found"), "{missing}");
    applied.cleanup().await;
    Ok(())
}
