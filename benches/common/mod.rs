//! Scaffolding shared by the benchmark drivers (`harness = false` mains): each
//! includes this module with `mod common;` and keeps only what it measures.
//!
//! - [`data`]: the generated messages' common parts;
//! - [`kafka`]: topics, producing, consume-only, a Kafka writer's environment;
//! - [`peer`]: peer tools (Benthos) on the same messages, measured alike;
//! - [`postgres`]: connections and schemas on the rig's Postgres;
//! - [`process`]: the release writer process, its `/metrics`, `/proc` figures;
//! - [`redis`]: removing what a run wrote to the rig's Redis;
//! - [`report`]: the machine and the lines several drivers print alike;
//! - [`s3`]: the S3 server a bulk bench reads from (moto, or s3s-fs).
// Each driver uses a subset of these pieces.
#![allow(dead_code)]

pub mod data;
pub mod kafka;
pub mod peer;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod report;
pub mod s3;

use std::future::Future;

/// Runs a driver's `run` on a multi-thread runtime, with the crate's TLS
/// provider installed first (the clients need it before any connection).
pub fn block_on(run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    bgpersist::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run)
}

/// `name` from the environment parsed as `T`; `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
