//! `common_persistence_specs.network_policy` against the real API server: one
//! NetworkPolicy per writer, admitted and selecting exactly the writer's
//! pods, nothing written on a resync, pruned when turned off.

use crate::reconcile::Fixture;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use serde_json::json;

#[tokio::test]
async fn network_policies_are_applied_kept_without_writes_and_pruned_when_off() -> anyhow::Result<()>
{
    let f = Fixture::new(json!({"common_persistence_specs": {"network_policy": {
        "enabled": true,
        "metrics_from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    }}}))
    .await?;
    let writers = ["go-metrics-bus-writer", "go-result-bus-metrics-writer"];
    let report = f.reconcile().await?;
    for w in writers {
        let want = format!("NetworkPolicy/{}", f.dep_name(w));
        assert!(
            report.applied.contains(&want),
            "{want} in {:?}",
            report.applied
        );
    }

    // Admitted as rendered, selecting by the Deployment's own selector.
    let policies: Api<NetworkPolicy> = Api::namespaced(f.client.clone(), &f.ns);
    for w in writers {
        let np = policies.get(&f.dep_name(w)).await?;
        let dep = f.deployments().get(&f.dep_name(w)).await?;
        let spec = np.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.pod_selector,
            dep.spec.map(|s| s.selector),
            "{w}: the policy selects the Deployment's pods"
        );
        let ingress = serde_json::to_value(&spec.ingress)?;
        assert_eq!(
            ingress[0]["ports"],
            json!([{"port": 9090, "protocol": "TCP"}])
        );
        assert_eq!(
            ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
        assert_eq!(
            np.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.clone()),
            Some(f.name.clone())
        );
    }

    // A resync writes nothing: the live policies hold every rendered field.
    f.count.reset();
    let again = f.reconcile().await?;
    assert!(
        again.applied.is_empty() && again.pruned.is_empty() && !again.status_written,
        "nothing applied, pruned or written: {again:?}"
    );
    assert_eq!(f.count.writes(), 0, "writes: {:?}", f.count.write_log());

    // Turned off: pruned, the writers stay.
    f.edit_spec(json!({"common_persistence_specs": {"network_policy": {"enabled": false}}}))
        .await?;
    let off = f.reconcile().await?;
    for w in writers {
        let name = f.dep_name(w);
        assert!(
            off.pruned.iter().any(|p| p.ends_with(&format!("/{name}"))),
            "{name} pruned: {:?}",
            off.pruned
        );
        assert!(
            policies.get_opt(&name).await?.is_none(),
            "{name} still there"
        );
        assert!(
            f.deployments().get_opt(&name).await?.is_some(),
            "Deployment {name} kept"
        );
    }
    Ok(())
}
