//! `kubectl bgpersist`: the kubectl plugin's logic, one module per
//! subcommand (`status`, `render`, `diff`); `bin/kubectl_bgpersist.rs` only
//! parses flags. It reuses the operator's own pieces rather than copies:
//! `operator::plan` (validate, then render), the field manager of
//! `operator::apply`, and `pod_proxy` for a writer pod's endpoints, so what
//! it shows is what the operator does.

pub mod diff;
pub mod error;
pub mod metrics;
pub mod objects;
pub mod render;
pub mod status;

pub use error::PluginError;

use crate::crd::BackgroundPersistence;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::path::PathBuf;

/// The connection flags kubectl users expect (`--kubeconfig`, `--context`,
/// `-n`); `KUBECONFIG` is read as kubectl reads it when no file is given.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// BackgroundPersistence is cluster-scoped and names its writers'
    /// namespace itself: a namespace given must be that one.
    pub namespace: Option<String>,
}

impl KubeOptions {
    pub async fn client(&self) -> Result<Client, PluginError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options).await?,
            // KUBECONFIG, ~/.kube/config, else in-cluster, as kubectl.
            (None, None) => Config::infer().await?,
        };
        // A command fails fast; and kube's retries would take a writer's 503
        // from /readyz (an answer) for an overloaded server.
        let mut config = config;
        config.default_retry = false;
        Ok(Client::try_from(config)?)
    }

    /// Fails when `-n` names another namespace than the resource's writers'.
    pub fn check_namespace(&self, bp: &BackgroundPersistence) -> Result<(), PluginError> {
        let actual = &bp.spec.common_persistence_specs.namespace;
        match &self.namespace {
            Some(given) if given != actual => Err(PluginError::Namespace {
                given: given.clone(),
                resource: kube::ResourceExt::name_any(bp),
                actual: actual.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// How a subcommand prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// The live resource `name`.
pub async fn get_resource(
    client: &Client,
    name: &str,
) -> Result<BackgroundPersistence, PluginError> {
    Api::<BackgroundPersistence>::all(client.clone())
        .get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound(name.to_string()))
}
