//! GitOps: the examples (and the resource the chart renders from values)
//! survive server-side apply unchanged, twice, with no defaulted field for
//! Argo CD to call drift; the plain manifests re-apply as no-ops; and the Argo
//! CD health check in docs/gitops.md reads the operator's real status.
//!
//! Runs with no operator in this binary. A re-apply is a no-op when the
//! object's generation and the GitOps tool's managed-fields entry stay as
//! they were (controllers may still write status and annotations).

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../cli/mod.rs"]
mod cli;

use anyhow::{Context as _, bail};
use bgpersist::crd::BackgroundPersistence;
use bgpersist::operator::status::{self, WriterOutcome};
use bgpersist::operator::validate::{self, Problem};
use cli::{kind, kubectl, name, repo_path, yaml_docs};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use std::process::{Command, Stdio};

const MANAGER: &str = "argocd-controller";

/// Every example file, plus the BackgroundPersistence the chart renders from
/// its CI values: (where it came from, the resource).
fn sources() -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_path("deploy/examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        for doc in yaml_docs(&std::fs::read_to_string(&f)?)? {
            out.push((f.display().to_string(), doc));
        }
    }
    let rendered = cli::helm_template(
        "gitops",
        "bgpersist-system",
        &["--values", "charts/bgpersist/ci/full-values.yaml"],
    )?;
    for doc in yaml_docs(&rendered)? {
        if kind(&doc) == "BackgroundPersistence" {
            out.push(("charts/bgpersist (ci/full-values.yaml)".into(), doc));
        }
    }
    anyhow::ensure!(
        out.len() >= 5,
        "expected 4 examples and the chart's resource"
    );
    Ok(out)
}

/// What the operator renders for a source: it must pass the operator's own
/// checks. Returns the KEDA objects of its autoscaled writers.
fn render_checked(source: &str, doc: &Value) -> anyhow::Result<Vec<Value>> {
    let mut bp: BackgroundPersistence = serde_json::from_value(doc.clone())
        .with_context(|| format!("{source}: not a BackgroundPersistence"))?;
    // Render sets owner references, which need the UID the server assigns.
    bp.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    // Under the operator as the chart installs it (its own image runs the
    // writers of a resource that names only placeholder images).
    let checked = validate::validate_with(&bp, &support::operator_defaults());
    assert!(
        checked.problems.is_empty(),
        "{source}: the operator would refuse {:?}",
        checked.problems
    );
    let rendered = bgpersist::operator::render::render(&bp, &checked.writers)
        .map_err(|e| anyhow::anyhow!("{source}: render: {e}"))?;
    let mut keda = Vec::new();
    for a in rendered
        .writers
        .iter()
        .filter_map(|w| w.autoscaling.as_ref())
    {
        keda.push(serde_json::to_value(&a.scaled_object)?);
        if let Some(auth) = &a.trigger_authentication {
            keda.push(serde_json::to_value(auth)?);
        }
    }
    Ok(keda)
}

#[test]
fn examples_pass_the_operators_own_checks() -> anyhow::Result<()> {
    let mut backends = Vec::new();
    let mut autoscaled = Vec::new();
    for (source, doc) in sources()? {
        let backend = doc["spec"]["common_persistence_specs"]["bus_backend"].clone();
        if !render_checked(&source, &doc)?.is_empty() {
            autoscaled.push(backend.clone());
        }
        backends.push(backend);
    }
    for want in ["KAFKA", "PUBSUB"] {
        assert!(backends.contains(&json!(want)), "no example for {want}");
        assert!(
            autoscaled.contains(&json!(want)),
            "no autoscaled example for {want}"
        );
    }
    Ok(())
}

/// The ScaledObjects and TriggerAuthentications the examples render pass
/// KEDA's own CRD schema (a server-side dry run against the real CRDs).
#[test]
fn examples_keda_objects_pass_kedas_schema() -> anyhow::Result<()> {
    cli::ensure_crd()?;
    cli::ensure_keda_crds()?;
    let mut checked = 0;
    for (source, doc) in sources()? {
        for mut obj in render_checked(&source, &doc)? {
            // The example's namespace need not exist for a dry run elsewhere.
            obj["metadata"]["namespace"] = "default".into();
            kubectl(
                &[
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "--field-manager",
                    MANAGER,
                    "-f",
                    "-",
                ],
                Some(&serde_yaml::to_string(&obj)?),
            )
            .with_context(|| format!("{source}: {} {} refused", kind(&obj), name(&obj)))?;
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} KEDA objects rendered");
    Ok(())
}

fn apply(doc: &Value, output: bool) -> anyhow::Result<String> {
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager",
        MANAGER,
        "-f",
        "-",
    ];
    if output {
        args.extend_from_slice(&["-o", "json"]);
    }
    kubectl(&args, Some(&serde_yaml::to_string(doc)?))
}

/// `kubectl diff --server-side`: Ok(None) when there is no difference.
fn diff(manifests: &str) -> anyhow::Result<Option<String>> {
    let mut child = Command::new(std::env::var("BGP_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .env("KUBECONFIG", cli::admin_kubeconfig())
        .args([
            "diff",
            "--server-side",
            "--field-manager",
            MANAGER,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(manifests.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    match out.status.code() {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        _ => bail!(
            "kubectl diff failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The parts of an object that change when anything is written to it.
/// What a re-apply would change: the object's generation (its spec) and the
/// GitOps tool's field-manager entry. Other managers' entries are left out:
/// the rig's controllers annotate a Deployment and update its status on
/// their own.
fn fingerprint(obj: &Value) -> Value {
    let managers: Vec<&Value> = obj["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter(|f| f["manager"] == MANAGER).collect())
        .unwrap_or_default();
    json!({
        "generation": obj["metadata"]["generation"],
        "managedFields": managers,
    })
}

#[test]
fn examples_apply_twice_without_change_or_drift() -> anyhow::Result<()> {
    cli::ensure_crd()?;
    // As on a cluster running autoscaled writers.
    cli::ensure_keda_crds()?;
    let id = cli::short_id();
    let mut applied = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (i, (source, mut doc)) in sources()?.into_iter().enumerate() {
            // Unique names: the rig is shared with the other tests.
            let bp = format!("gitops{id}{i}");
            doc["metadata"]["name"] = bp.clone().into();
            doc["spec"]["common_persistence_specs"]["namespace"] = format!("ns-{bp}").into();
            applied.push(bp.clone());

            apply(&doc, false).with_context(|| format!("{source}: first apply"))?;
            let live = cli::get_json(&["bp", &bp])?;
            assert_eq!(
                live["spec"], doc["spec"],
                "{source}: the stored spec differs from the file (defaulting would show as drift)"
            );
            let before = fingerprint(&live);
            let again: Value = serde_json::from_str(&apply(&doc, true)?)?;
            assert_eq!(
                fingerprint(&again),
                before,
                "{source}: the second server-side apply changed the object \
                 (is an operator running against the rig?)"
            );
            if let Some(d) = diff(&serde_yaml::to_string(&doc)?)? {
                panic!("{source}: kubectl diff --server-side shows drift:\n{d}");
            }
        }
        Ok(())
    })();
    for bp in &applied {
        let _ = kubectl(
            &["delete", "bp", bp, "--ignore-not-found", "--wait=false"],
            None,
        );
    }
    result
}

#[test]
fn plain_manifests_reapply_as_a_no_op() -> anyhow::Result<()> {
    let base = kubectl(&["kustomize", "deploy/base"], None)?;
    // The CRD is crds/backgroundpersistence.yaml byte for byte (see
    // tests/packaging); every test binary applies it with its own field
    // manager, and a second owner would keep removed fields alive on the rig.
    let docs: Vec<Value> = yaml_docs(&base)?
        .into_iter()
        .filter(|d| kind(d) != "CustomResourceDefinition")
        // The rig's node would run the operator Deployment, and that operator
        // would reconcile every other test's resources: none of its pods here.
        .map(|mut d| {
            if kind(&d) == "Deployment" {
                d["spec"]["replicas"] = json!(0);
            }
            d
        })
        .collect();
    let stream = cli::to_yaml_stream(&docs)?;
    let args = [
        "apply",
        "--server-side",
        "--field-manager",
        MANAGER,
        "-f",
        "-",
        "-o",
        "json",
    ];
    kubectl(&args, Some(&stream))?;
    let get = |d: &Value| -> anyhow::Result<Value> {
        let ns = d["metadata"]["namespace"].as_str();
        let k = kind(d).to_lowercase();
        let mut a = vec![k.as_str(), name(d)];
        if let Some(ns) = ns {
            a.extend_from_slice(&["-n", ns]);
        }
        cli::get_json(&a)
    };
    let before: Vec<Value> = docs
        .iter()
        .map(|d| get(d).map(|o| fingerprint(&o)))
        .collect::<Result<_, _>>()?;
    kubectl(&args, Some(&stream))?;
    for (d, was) in docs.iter().zip(before) {
        assert_eq!(
            fingerprint(&get(d)?),
            was,
            "{} {}: the second apply changed it",
            kind(d),
            name(d)
        );
    }
    let drift = diff(&stream)?;
    // Gone again, namespace included, before the next apply under these
    // names (`hack/demo`, a rerun) meets a namespace still terminating.
    kubectl(
        &["delete", "--ignore-not-found", "--timeout=120s", "-f", "-"],
        Some(&stream),
    )?;
    if let Some(d) = drift {
        panic!("deploy/base: kubectl diff --server-side shows drift:\n{d}");
    }
    Ok(())
}

/// `value` as a Lua 5.1 table constructor (null becomes nil, as Argo CD's
/// JSON-to-Lua conversion does).
fn lua_literal(value: &Value) -> String {
    fn string(s: &str) -> String {
        let mut out = String::from("\"");
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b" _.-/:".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        out.push('"');
        out
    }
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The first ```lua block of docs/gitops.md.
fn health_script() -> anyhow::Result<String> {
    let doc = std::fs::read_to_string(repo_path("docs/gitops.md"))?;
    let start = doc
        .find("```lua\n")
        .context("no ```lua block in docs/gitops.md")?
        + 7;
    let len = doc[start..]
        .find("```")
        .context("unterminated ```lua block")?;
    Ok(doc[start..start + len].to_string())
}

/// Runs the health check on `obj` with lua5.1; returns (status, message).
fn health(obj: &Value) -> anyhow::Result<(String, String)> {
    let program = format!(
        "obj = {}\nlocal function check()\n{}\nend\nlocal hs = check()\nprint(hs.status)\nprint(hs.message)\n",
        lua_literal(obj),
        health_script()?
    );
    let mut cmd = Command::new("lua5.1");
    cmd.arg("-");
    let out = cli::run(cmd, Some(&program)).map_err(|e| {
        anyhow::anyhow!("{e}\n(lua5.1 comes from hack/deps: apt-get install lua5.1)")
    })?;
    let mut lines = out.lines();
    Ok((
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    ))
}

/// The kstatus library's verdict on `obj` (hack/kstatus, the Go library Flux
/// and kpt use); returns (status, message).
fn kstatus(obj: &Value) -> anyhow::Result<(String, String)> {
    let cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/kstatus/run"));
    let out = cli::run(cmd, Some(&obj.to_string()))?;
    let mut lines = out.lines();
    Ok((
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    ))
}

fn deployment(generation: i64, ready: i32) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = Some("bp-online-writer".into());
    d.metadata.generation = Some(generation);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(generation),
        replicas: Some(1),
        updated_replicas: Some(1),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        ..Default::default()
    });
    d
}

/// A resource at `generation` carrying the status the operator computes.
fn resource(
    generation: i64,
    observed: i64,
    writers: Vec<WriterOutcome>,
    problems: &[Problem],
) -> Value {
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let st = status::compute(status::StatusInputs {
        writers,
        problems,
        ..status::StatusInputs::new(Some(observed), &now)
    });
    json!({
        "apiVersion": "bgpersist.dev/v1alpha1",
        "kind": "BackgroundPersistence",
        "metadata": {"name": "bp", "generation": generation},
        "spec": {},
        "status": st,
    })
}

#[test]
fn kstatus_reads_the_operators_status() -> anyhow::Result<()> {
    let ready = |n| WriterOutcome::applied("online-writer", &deployment(1, n), "img", "h", 1);
    assert_eq!(kstatus(&resource(1, 1, vec![ready(1)], &[]))?.0, "Current");
    let rolling = kstatus(&resource(1, 1, vec![ready(0)], &[]))?;
    assert_eq!(rolling.0, "InProgress");
    assert!(rolling.1.contains("online-writer"), "{rolling:?}");
    assert_eq!(
        kstatus(&resource(2, 1, vec![ready(1)], &[]))?.0,
        "InProgress",
        "status of an older generation"
    );
    let problem = Problem {
        writer: Some("online-writer".into()),
        field: "writers[0].request.cpu".into(),
        reason: "above its limit".into(),
    };
    let refused = WriterOutcome::refused("online-writer", 1, &[&problem]);
    let failed = kstatus(&resource(
        1,
        1,
        vec![refused],
        std::slice::from_ref(&problem),
    ))?;
    assert_eq!(failed.0, "Failed");
    assert!(failed.1.contains("above its limit"), "{failed:?}");
    Ok(())
}

#[test]
fn argocd_health_check_reads_the_operators_status() -> anyhow::Result<()> {
    let ready = |n| WriterOutcome::applied("online-writer", &deployment(1, n), "img", "h", 1);

    let fresh = json!({"metadata": {"name": "bp", "generation": 1}, "spec": {}});
    assert_eq!(health(&fresh)?.0, "Progressing");

    let healthy = health(&resource(1, 1, vec![ready(1)], &[]))?;
    assert_eq!(healthy, ("Healthy".into(), "1/1 writers ready".into()));

    let rolling = health(&resource(1, 1, vec![ready(0)], &[]))?;
    assert_eq!(rolling.0, "Progressing");
    assert!(rolling.1.contains("online-writer"), "{rolling:?}");

    let stale = health(&resource(2, 1, vec![ready(1)], &[]))?;
    assert_eq!(stale.0, "Progressing", "status of an older generation");

    let problem = Problem {
        writer: Some("online-writer".into()),
        field: "writers[0].request.cpu".into(),
        reason: "above its limit".into(),
    };
    let refused = WriterOutcome::refused("online-writer", 1, &[&problem]);
    let degraded = health(&resource(
        1,
        1,
        vec![refused],
        std::slice::from_ref(&problem),
    ))?;
    assert_eq!(degraded.0, "Degraded");
    assert!(degraded.1.starts_with("InvalidWriters: "), "{degraded:?}");
    assert!(degraded.1.contains("above its limit"), "{degraded:?}");

    // Quotes, backslashes and non-ASCII survive the conversion.
    let odd = Problem {
        writer: None,
        field: "common_persistence_specs.namespace".into(),
        reason: "\"quoted\" \\ naïve".into(),
    };
    let spec_level = health(&resource(1, 1, vec![], std::slice::from_ref(&odd)))?;
    assert_eq!(spec_level.0, "Degraded");
    assert!(
        spec_level.1.contains("\"quoted\" \\ naïve"),
        "{spec_level:?}"
    );
    Ok(())
}
