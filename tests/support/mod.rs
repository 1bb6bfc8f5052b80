//! Shared test support: read the env file that `hack/rig up` writes.
//!
//! A test that needs a part fails (never skips) when the rig is not up, with
//! the part's name and how to start it.
#![allow(dead_code)]
// Benches include this module too: a missing rig part stops them with its name.
#![allow(clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn rig_dir() -> PathBuf {
    std::env::var_os("BGP_RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".rig"))
}

fn rig_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = rig_dir().join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

/// The value of `key` from the rig's env file; panics naming the part when absent.
pub fn rig(part: &str, key: &str) -> String {
    bgpersist::install_crypto_provider();
    if let Ok(v) = std::env::var(key) {
        return v;
    }
    match rig_env().get(key) {
        Some(v) => v.clone(),
        None => panic!(
            "rig part '{part}' is not up ({key} missing from {}): run `hack/rig up {part}`",
            rig_dir().join("env").display()
        ),
    }
}

/// Keeps a spawned process's cloud SDKs off instance-metadata addresses:
/// the variables of hack/no-cloud-metadata.env, the one list hack/test
/// exports too (benchmarks run without hack/test).
pub fn without_cloud_metadata(cmd: &mut std::process::Command) -> &mut std::process::Command {
    let list = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hack/no-cloud-metadata.env"
    ));
    for (k, v) in list
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
    {
        cmd.env(k.trim(), v.trim());
    }
    cmd
}

/// A name unique to this test run, so tests can share the rig without clashing.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The image the tests hand the operator as the chart would
/// (`BGP_WRITER_IMAGE`); it runs the seed's writers, whose other image fields
/// are placeholders. A reference no node can pull (`.invalid`), so the
/// Deployments of the tests on the API server do not start writer pods on
/// the rig's node; tests/node runs the image `hack/image` builds.
pub const OPERATOR_IMAGE: &str = "registry.invalid/bgpersist:test";

/// The operator's defaults as the chart installs it.
pub fn operator_defaults() -> bgpersist::operator::model::Defaults {
    bgpersist::operator::model::Defaults {
        writer_image: Some(OPERATOR_IMAGE.into()),
        ..Default::default()
    }
}

/// The documented seed example with a short unique name (`<prefix>…`) and its
/// own target namespace, with `patch` merged into its spec.
pub fn seed_value(prefix: &str, patch: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/seed-example.yaml"
    ))?;
    let mut v: serde_json::Value = serde_yaml::from_str(&yaml)?;
    let n = unique("t");
    let short = format!("{prefix}{}", &n[n.len().saturating_sub(8)..]).replace('-', "");
    v["metadata"]["name"] = short.clone().into();
    v["spec"]["common_persistence_specs"]["namespace"] = format!("ns-{short}").into();
    json_merge(&mut v["spec"], &patch);
    Ok(v)
}

/// RFC 7386 merge: null deletes.
pub fn json_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub mod cloud;
pub mod keda;
pub mod kubeclient;
pub mod plugin;
pub mod scrape;
pub mod secrets;
