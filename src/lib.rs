//! bgpersist: a Kubernetes operator for background persistence writers, and
//! the writer runtime those Deployments run.

pub mod cli;
pub mod contract;
pub mod crd;
pub mod formats;
pub mod http;
pub mod operator;
pub mod plugin;
pub mod pod_proxy;
pub mod quantity;
pub mod telemetry;
pub mod writer;

/// Select rustls' process-wide crypto provider. Both ring (kube) and aws-lc-rs
/// (cloud SDKs) are linked, so rustls cannot pick one on its own; every binary
/// and test calls this before the first TLS connection.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
