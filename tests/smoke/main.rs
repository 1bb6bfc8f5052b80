//! Smoke tests: each rig part is reachable from the crates the product uses.
//! Run `hack/rig up` first (the test command does).

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod k8s;
mod kafka;
mod postgres;
mod pubsub;
mod redis;
