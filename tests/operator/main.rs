//! The operator against the rig's real kube-apiserver: admission, reconcile,
//! no-op resync, drift, edits, pruning, status, autoscaling with KEDA, and
//! cloud secrets end to end (`secrets/`).

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod autoscaling;
mod network_policy;
mod reconcile;
mod secrets;

use bgpersist::crd::BackgroundPersistence;

pub use support::kubeclient::install_crd;

/// The seed example with a short unique name and its own target namespace.
pub fn seed_resource(patch: serde_json::Value) -> anyhow::Result<BackgroundPersistence> {
    Ok(serde_json::from_value(seed_value(patch)?)?)
}

/// `seed_resource` as raw JSON, so values the Rust types refuse can still be sent.
pub fn seed_value(patch: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    support::seed_value("bp", patch)
}
