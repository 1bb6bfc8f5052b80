//! Smoke tests: each rig part is reachable from the crates the product uses.
//! Run `hack/rig up` first (the test command does).

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod k8s;
mod kafka;
mod postgres;
mod pubsub;
mod redis;
