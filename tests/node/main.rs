//! What users run as pods, tested as pods on the rig's node: the image
//! `hack/image` builds, the operator installed by `helm install`, and the
//! writer Deployments it renders running as real pods (kubelet, containerd,
//! the scheduler, the controllers and the garbage collector).
//!
//! Needs `hack/rig up` (with the `node` part) and `hack/image`. All tests
//! share one Helm release of the operator, `bgpersist-node-tests`; `hack/test`
//! runs this binary after the others and uninstalls the release afterwards,
//! since that operator reconciles every BackgroundPersistence in the cluster.
//! Each test has its own resource and target namespace.

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../cli/mod.rs"]
mod cli;

#[allow(dead_code, unused_imports)]
#[path = "../writers/harness/mod.rs"]
mod harness;

#[allow(dead_code, unused_imports)]
#[path = "../writers/offline_harness.rs"]
mod offline_harness;

mod cluster;
mod image;
mod lifecycle;
mod network_policy;
mod network_policy_traffic;
mod operator_pod;
mod plugin_status;
mod preflight;
mod readiness;
mod rollout_faults;
mod scaling;
mod seed;
