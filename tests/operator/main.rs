//! The operator against the rig's real kube-apiserver: admission, reconcile,
//! no-op resync, drift, edits, pruning and status.

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod reconcile;

use bgpersist::crd::BackgroundPersistence;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Installs the generated CRD once per test binary.
pub async fn install_crd() -> anyhow::Result<kube::Client> {
    static DONE: OnceCell<()> = OnceCell::const_new();
    let client = support::kubeclient::client().await?;
    DONE.get_or_try_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = bgpersist::crd::definition();
        crds.patch(
            bgpersist::crd::CRD_NAME,
            &PatchParams::apply("bgpersist-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(
            crds,
            bgpersist::crd::CRD_NAME,
            conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established).await??;
        // Established can precede the schema being served; give discovery a beat.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    Ok(client)
}

/// The seed example with a short unique name and its own target namespace.
pub fn seed_resource(patch: serde_json::Value) -> anyhow::Result<BackgroundPersistence> {
    Ok(serde_json::from_value(seed_value(patch)?)?)
}

/// `seed_resource` as raw JSON, so values the Rust types refuse can still be sent.
pub fn seed_value(patch: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/seed-example.yaml"
    ))?;
    let mut v: serde_json::Value = serde_yaml::from_str(&yaml)?;
    let n = support::unique("t");
    let short = format!("bp{}", &n[n.len().saturating_sub(8)..]).replace('-', "");
    v["metadata"]["name"] = short.clone().into();
    v["spec"]["common_persistence_specs"]["namespace"] = format!("ns-{short}").into();
    merge(&mut v["spec"], &patch);
    Ok(v)
}

/// RFC 7386 merge: null deletes.
pub fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
