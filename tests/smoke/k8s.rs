use crate::support::{rig, unique};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use std::time::Duration;

pub async fn client() -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(rig("k8s", "BGP_KUBECONFIG"))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test]
async fn creates_namespace_and_installs_crd() -> anyhow::Result<()> {
    let client = client().await?;
    let ns_name = unique("smoke");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    assert_eq!(
        namespaces.get(&ns_name).await?.metadata.name.as_deref(),
        Some(ns_name.as_str())
    );

    // A throwaway CRD with a unique group so reruns never collide.
    let group = format!("{}.smoke.bgpersist.dev", unique("g"));
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}
                }}}
            }]
        }
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await?;
    let crd_name = format!("widgets.{group}");
    let established = await_condition(crds.clone(), &crd_name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established).await??;

    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns_name, &resource);
    let good: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))?;
    widgets.create(&PostParams::default(), &good).await?;
    // The schema is enforced by the real server: size 0 violates `minimum: 1`.
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "w2"}, "spec": {"size": 0}
    }))?;
    let err = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("schema must refuse size 0");
    assert!(
        err.to_string().contains("spec.size"),
        "unexpected error: {err}"
    );

    crds.delete(&format!("widgets.{group}"), &Default::default())
        .await?;
    Ok(())
}
