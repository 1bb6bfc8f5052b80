//! Running the command-line tools a user installs with (helm through
//! `hack/helm`, kubectl) against the rig, failing with the whole story: the
//! command line, its exit status, stdout and stderr.
#![allow(dead_code)]

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn repo_path(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// Kubernetes version the chart is rendered for: the rig's.
pub fn kube_version() -> String {
    let v = crate::support::rig("k8s", "BGP_K8S_VERSION");
    v.trim_start_matches('v').to_string()
}

/// kubectl: `BGP_KUBECTL` when set, else the one on PATH.
fn kubectl_bin() -> String {
    std::env::var("BGP_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Runs `cmd`, feeding `stdin`; returns stdout, or fails with everything.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {line}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "{line} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            tail(&stdout, 60),
            tail(&stderr, 60)
        );
    }
    Ok(stdout)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `hack/helm ARGS`: builds Helm from its Go module on first use (cached).
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(repo_path("hack/helm"));
    cmd.args(args).current_dir(repo());
    run(cmd, None)
}

/// `helm template` of the chart for the rig's Kubernetes version.
pub fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<String> {
    let version = kube_version();
    let mut args = vec![
        "template",
        release,
        "charts/bgpersist",
        "--namespace",
        namespace,
        "--kube-version",
        &version,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// kubectl as the rig's admin (or with `kubeconfig`).
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(kubectl_bin());
    cmd.env("KUBECONFIG", kubeconfig)
        .args(args)
        .current_dir(repo());
    run(cmd, stdin)
}

pub fn admin_kubeconfig() -> PathBuf {
    PathBuf::from(crate::support::rig("k8s", "BGP_KUBECONFIG"))
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    kubectl_as(&admin_kubeconfig(), args, stdin)
}

/// Installs the generated CRD (same field manager as the kube-rs tests) and
/// waits until it is served: on a fresh rig this binary may run first.
pub fn ensure_crd() -> anyhow::Result<()> {
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "bgpersist-tests",
            "-f",
            "crds/backgroundpersistence.yaml",
        ],
        None,
    )?;
    wait_established(&["backgroundpersistences.bgpersist.dev"])
}

/// Installs KEDA's ScaledObject and TriggerAuthentication CRDs (see
/// `hack/keda-crds`) and waits until they are established.
pub fn ensure_keda_crds() -> anyhow::Result<()> {
    for f in crate::support::keda::crd_files()? {
        let path = f.display().to_string();
        kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "bgpersist-tests",
                "-f",
                &path,
            ],
            None,
        )?;
    }
    wait_established(&["scaledobjects.keda.sh", "triggerauthentications.keda.sh"])
}

/// Polls until each CRD is Established. Not `kubectl wait` (nor a jsonpath
/// filter): both fail at once, instead of waiting, on a CRD whose status has
/// no conditions yet, which is what a fresh CRD looks like for a moment.
fn wait_established(crds: &[&str]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for crd in crds {
        loop {
            let doc = get_json(&["crd", crd])?;
            let established = doc["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if established {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("CRD {crd} not Established after 60 s: {}", doc["status"]);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    Ok(())
}

/// `kubectl get ... -o json` as a value.
pub fn get_json(args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let text = kubectl(&all, None)?;
    serde_json::from_str(&text).with_context(|| format!("kubectl {all:?} printed no JSON"))
}

/// The documents of a multi-document YAML stream, empty ones dropped.
pub fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// One YAML stream of `docs`, ready for `kubectl apply -f -`.
pub fn to_yaml_stream(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// A short unique suffix (lowercase hex) for names with length limits.
pub fn short_id() -> String {
    let n = crate::support::unique("x");
    let digest = n.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{:08x}", digest as u32)
}
