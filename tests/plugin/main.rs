//! `kubectl-bgpersist`, the binary, run as a user runs it: `render` offline
//! and against what the operator applies on the rig's API server, `diff`
//! on the rig's API server. `status` needs writer pods: tests/node.

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod diff;
mod render;

use bgpersist::crd::BackgroundPersistence;
use bgpersist::operator::controller::{Context, reconcile_once};
use bgpersist::operator::metrics::Metrics;
use kube::Client;
use kube::api::{Api, PostParams};
use std::path::PathBuf;

/// A seed resource created on the rig and reconciled once by the operator's
/// own code (cloud secrets served from memory), and its file.
pub struct Applied {
    pub client: Client,
    pub bps: Api<BackgroundPersistence>,
    pub name: String,
    pub ns: String,
    pub file: PathBuf,
    pub ctx: Context,
}

impl Applied {
    /// The seed, every writer at two replicas so each also has a
    /// PodDisruptionBudget, applied by one reconcile.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let mut value = support::seed_value(prefix, serde_json::json!({}))?;
        for w in value["spec"]["writers"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            w["default_replica_count"] = serde_json::json!(2);
        }
        let client = support::kubeclient::install_crd().await?;
        let bp: BackgroundPersistence = serde_json::from_value(value.clone())?;
        let name = bp.metadata.name.clone().unwrap_or_default();
        let ns = bp.spec.common_persistence_specs.namespace.clone();
        let file = std::env::temp_dir().join(format!("{}.json", support::unique(&name)));
        std::fs::write(&file, serde_json::to_vec_pretty(&value)?)?;
        let bps: Api<BackgroundPersistence> = Api::all(client.clone());
        bps.create(&PostParams::default(), &bp).await?;
        let ctx = Context::new(client.clone(), Metrics::default())
            .with_defaults(crate::support::operator_defaults())
            .with_secrets(support::secrets::in_memory());
        let applied = Applied {
            client,
            bps,
            name,
            ns,
            file,
            ctx,
        };
        applied.reconcile().await?;
        Ok(applied)
    }

    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let bp = self.bps.get(&self.name).await?;
        reconcile_once(&bp, &self.ctx).await?;
        Ok(())
    }

    pub async fn cleanup(&self) {
        let _ = self.bps.delete(&self.name, &Default::default()).await;
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = nss.delete(&self.ns, &Default::default()).await;
        let _ = std::fs::remove_file(&self.file);
    }
}
