//! The plugin's one error type; its variant decides the exit code.

use crate::operator::validate::Problem;
use crate::pod_proxy::PodProxyError;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubeconfig: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a BackgroundPersistence: {reason}")]
    ParseFile { path: String, reason: String },
    #[error("BackgroundPersistence {0} not found")]
    NotFound(String),
    #[error("namespace {given} given, but {resource} runs its writers in {actual}")]
    Namespace {
        given: String,
        resource: String,
        actual: String,
    },
    /// The spec has problems validation refuses; each is printed.
    #[error("{} validation problem(s)", problems.len())]
    Invalid { problems: Vec<Problem> },
    #[error(transparent)]
    Operator(#[from] crate::operator::Error),
    #[error(transparent)]
    PodProxy(#[from] PodProxyError),
    #[error("pod {pod}: /metrics answered {status}: {body}")]
    Metrics {
        pod: String,
        status: u16,
        body: String,
    },
    #[error("pod {pod}: /metrics is not Prometheus text: {source}")]
    MetricsText { pod: String, source: std::io::Error },
    #[error("{kind} {name}: no API resource is known for {api_version}")]
    UnknownKind {
        kind: String,
        name: String,
        api_version: String,
    },
    #[error("cannot print: {0}")]
    Print(String),
}

impl PluginError {
    /// 1: the resource is refused by validation (render); every other
    /// failure is 2, as for `kubectl diff`. Status' 3 (not ready) is a
    /// result, not an error.
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::Invalid { .. } => 1,
            _ => 2,
        }
    }
}

impl From<serde_json::Error> for PluginError {
    fn from(e: serde_json::Error) -> Self {
        PluginError::Print(e.to_string())
    }
}

impl From<serde_yaml::Error> for PluginError {
    fn from(e: serde_yaml::Error) -> Self {
        PluginError::Print(e.to_string())
    }
}
