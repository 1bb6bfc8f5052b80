//! Cloud secrets end to end: AWS Secrets Manager on the rig's moto, GCP
//! Secret Manager through the official client against an in-process fake,
//! the operator reconciling against the rig's real kube-apiserver.

mod aws;
mod fake_gcp_secret_manager;
mod gcp;
mod kubernetes;
mod leaks;
mod rotation;

use bgpersist::crd::{BackgroundPersistence, SecretStatus};
use bgpersist::operator::controller::{Context, Report, reconcile_once};
use bgpersist::operator::metrics::Metrics;
use bgpersist::operator::secrets::{AwsSecretsManager, SecretSettings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub use crate::support::cloud::{create_aws, moto, put_aws};
pub use crate::support::kubeclient::install_crd;

/// The seed example, with a short unique name and namespace, merged with `patch`.
pub fn seed_value(patch: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    crate::support::seed_value("sec", patch)
}

/// Secret settings reading AWS from moto and re-reading on every reconcile.
pub fn moto_settings() -> SecretSettings {
    SecretSettings::new(
        Arc::new(AwsSecretsManager::from_client(moto())),
        Arc::new(crate::support::secrets::InMemory),
    )
    .with_refresh(Duration::ZERO)
}

pub struct Fixture {
    pub client: Client,
    pub ctx: Context,
    pub bps: Api<BackgroundPersistence>,
    pub name: String,
    pub ns: String,
}

impl Fixture {
    /// Creates the seed resource merged with `patch`; reconciles read secrets through `settings`.
    pub async fn new(patch: serde_json::Value, settings: SecretSettings) -> anyhow::Result<Self> {
        let client = install_crd().await?;
        let bp: BackgroundPersistence = serde_json::from_value(seed_value(patch)?)?;
        let bps: Api<BackgroundPersistence> = Api::all(client.clone());
        bps.create(&PostParams::default(), &bp).await?;
        Ok(Fixture {
            ctx: Context::new(client.clone(), Metrics::default())
                .with_defaults(crate::support::operator_defaults())
                .with_secrets(settings),
            name: bp.name_any(),
            ns: bp.spec.common_persistence_specs.namespace.clone(),
            client,
            bps,
        })
    }

    /// Reads the resource back and reconciles it once, as a watch event would.
    pub async fn reconcile(&self) -> anyhow::Result<Report> {
        let bp = self.bps.get(&self.name).await?;
        Ok(reconcile_once(&bp, &self.ctx).await?)
    }

    pub async fn edit_spec(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        self.bps
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": patch })),
            )
            .await?;
        Ok(())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn sasl_name(&self) -> String {
        format!("{}-kafka-sasl", self.name)
    }

    pub fn stores_name(&self) -> String {
        format!("{}-stores", self.name)
    }

    pub fn dep_name(&self, writer: &str) -> String {
        format!("{}-{writer}", self.name)
    }

    /// One key of a synced Secret, as text; None when the Secret or key is absent.
    pub async fn secret_value(&self, secret: &str, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .secrets()
            .get_opt(secret)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(key).cloned())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
    }

    /// The config-hash annotation of a writer's pod template.
    pub async fn config_hash(&self, writer: &str) -> anyhow::Result<String> {
        let d = self.deployments().get(&self.dep_name(writer)).await?;
        Ok(d.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("bgpersist.dev/config-hash").cloned())
            .unwrap_or_default())
    }

    pub async fn status_secrets(&self) -> anyhow::Result<Vec<SecretStatus>> {
        Ok(self
            .bps
            .get(&self.name)
            .await?
            .status
            .map(|s| s.secrets)
            .unwrap_or_default())
    }

    /// (status, reason, message) of a condition.
    pub async fn condition(&self, type_: &str) -> anyhow::Result<(String, String, String)> {
        let bp = self.bps.get(&self.name).await?;
        let c = bp
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_))
            .ok_or_else(|| anyhow::anyhow!("no {type_} condition"))?;
        Ok((c.status, c.reason, c.message))
    }
}

pub async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
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
async fn store_uri_secrets_need_a_secret_client_at_admission() -> anyhow::Result<()> {
    let client = install_crd().await?;
    let v = seed_value(json!({
        "kafka_sasl_secret": null,
        "common_persistence_specs": {"secret_client": null},
        "store_uri_secrets": {"metrics_store": "bgp/metrics-uri"}
    }))?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    let bp: BackgroundPersistence = serde_json::from_value(v)?;
    match api.create(&PostParams::default(), &bp).await {
        Err(kube::Error::Api(s)) => assert!(
            s.message
                .contains("store_uri_secrets needs common_persistence_specs.secret_client"),
            "{}",
            s.message
        ),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    Ok(())
}
