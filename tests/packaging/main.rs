//! Packaging: the Helm chart (lint, freshness of its CRD copy and of the
//! plain manifests, server-side dry run), its least-privilege RBAC pinned rule
//! by rule, the real operator binary reconciling the seed example on the
//! rig's API server with nothing but the chart's ServiceAccount token, and
//! that binary's probes, metrics, leader election, SIGTERM and startup errors
//! (`operator_process.rs`).

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../cli/mod.rs"]
mod cli;

mod crd_fresh;
mod metric_names;
mod operator_process;
mod operator_rbac;
mod quiet_errors;

/// A real operator process reconciles every resource in the cluster: the
/// tests that run one take turns, so two never reconcile the same objects.
pub static REAL_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use cli::{helm, helm_template, kind, kubectl, name, repo_path, yaml_docs};
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[test]
fn chart_crd_is_the_generated_crd() {
    let read = |p: &str| std::fs::read_to_string(repo_path(p)).unwrap_or_default();
    let generated = read("crds/backgroundpersistence.yaml");
    assert!(
        !generated.is_empty(),
        "crds/backgroundpersistence.yaml missing"
    );
    assert!(
        read("charts/bgpersist/crds/backgroundpersistence.yaml") == generated,
        "charts/bgpersist/crds/backgroundpersistence.yaml is stale (crds/ changed): run hack/manifests"
    );
    assert!(
        read("deploy/base/crd.yaml") == generated,
        "deploy/base/crd.yaml is stale (crds/ changed): run hack/manifests"
    );
}

#[test]
fn generated_manifests_are_fresh() -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new(repo_path("hack/manifests"));
    cmd.arg("--check").current_dir(cli::repo());
    cli::run(cmd, None).map_err(|e| anyhow::anyhow!("{e}\nrun hack/manifests to regenerate"))?;
    Ok(())
}

#[test]
fn chart_lints_clean() -> anyhow::Result<()> {
    for extra in [
        &[][..],
        &["--values", "charts/bgpersist/ci/full-values.yaml"],
        &[
            "--set",
            "leaderElection.enabled=false,rbac.create=false,serviceAccount.create=false,serviceAccount.name=ops",
        ],
    ] {
        let mut args = vec!["lint", "charts/bgpersist", "--strict"];
        args.extend_from_slice(extra);
        let out = helm(&args)?;
        for bad in ["[WARNING]", "[ERROR]"] {
            assert!(!out.contains(bad), "helm {args:?}:\n{out}");
        }
    }
    // The values schema refuses what the operator does not support.
    let refused = helm(&[
        "lint",
        "charts/bgpersist",
        "--set",
        "watchNamespaces[0]=team-a",
    ]);
    assert!(
        refused.is_err(),
        "a namespace filter value must be refused: the operator has none"
    );
    Ok(())
}

/// Rules as (api group, resource, verbs, resource names), order-free.
type Rules = BTreeSet<(String, String, Vec<String>, Vec<String>)>;

fn rules_of(role: &Value) -> Rules {
    let strs = |v: &Value| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let mut out = Rules::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                out.insert((
                    group.clone(),
                    resource,
                    strs(&rule["verbs"]),
                    strs(&rule["resourceNames"]),
                ));
            }
        }
    }
    out
}

fn rules(spec: &[(&str, &str, &[&str], &[&str])]) -> Rules {
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    spec.iter()
        .map(|(g, r, verbs, names)| (g.to_string(), r.to_string(), sorted(verbs), sorted(names)))
        .collect()
}

/// The RBAC is exactly what src/operator uses; widening it must be a
/// deliberate edit of this list (and the live test proves it is enough).
#[test]
fn rendered_rbac_is_least_privilege() -> anyhow::Result<()> {
    let docs = yaml_docs(&helm_template("bgp", "ops", &[])?)?;
    let find = |k: &str, suffix: &str| {
        docs.iter()
            .find(|d| kind(d) == k && name(d).ends_with(suffix))
            .cloned()
            .unwrap_or_else(|| panic!("no {k} *{suffix} rendered"))
    };
    const RW: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    let cluster = find("ClusterRole", "bgp-bgpersist");
    assert_eq!(
        rules_of(&cluster),
        rules(&[
            (
                "bgpersist.dev",
                "backgroundpersistences",
                &["get", "list", "watch"],
                &[]
            ),
            (
                "bgpersist.dev",
                "backgroundpersistences/status",
                &["patch"],
                &[]
            ),
            // Read from a metadata-only watch cache (operator/watches.rs).
            (
                "",
                "namespaces",
                &["get", "list", "watch", "create", "patch"],
                &[]
            ),
            ("", "serviceaccounts", RW, &[]),
            ("", "secrets", RW, &[]),
            ("apps", "deployments", RW, &[]),
            ("policy", "poddisruptionbudgets", RW, &[]),
            // Why a writer is not ready (operator/writer_health.rs).
            ("", "pods", &["list", "watch"], &[]),
            ("", "pods/proxy", &["get"], &[]),
            // Writers' NetworkPolicies (operator/network_policy.rs).
            ("networking.k8s.io", "networkpolicies", RW, &[]),
            ("keda.sh", "scaledobjects", RW, &[]),
            ("keda.sh", "triggerauthentications", RW, &[]),
        ])
    );
    let lease = find("Role", "-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "ops");
    assert_eq!(
        rules_of(&lease),
        rules(&[
            ("coordination.k8s.io", "leases", &["create"], &[]),
            (
                "coordination.k8s.io",
                "leases",
                &["get", "patch"],
                &["bgpersist-operator"]
            ),
        ])
    );
    let events = find("Role", "-events");
    assert_eq!(events["metadata"]["namespace"], "default");
    assert_eq!(
        rules_of(&events),
        rules(&[("events.k8s.io", "events", &["create", "patch"], &[])])
    );
    for binding in docs.iter().filter(|d| kind(d).ends_with("Binding")) {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "bgp-bgpersist", "namespace": "ops"}]),
            "{}",
            name(binding)
        );
    }

    // Without leader election there is no Lease Role.
    let off = yaml_docs(&helm_template(
        "bgp",
        "ops",
        &["--set", "leaderElection.enabled=false"],
    )?)?;
    assert!(!off.iter().any(|d| name(d).ends_with("-leader-election")));
    Ok(())
}

#[test]
fn operator_deployment_is_recreated_restricted_and_leader_elected() -> anyhow::Result<()> {
    let docs = yaml_docs(&helm_template("bgp", "ops", &[])?)?;
    let dep = docs
        .iter()
        .find(|d| kind(d) == "Deployment")
        .ok_or_else(|| anyhow::anyhow!("no Deployment rendered"))?;
    let spec = &dep["spec"];
    assert_eq!(spec["strategy"], json!({"type": "Recreate"}));
    assert_eq!(spec["replicas"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "bgp-bgpersist");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["command"], json!(["/usr/local/bin/bgpersist-operator"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = |n: &str| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(env("BGP_LEADER_ELECT")["value"], "true");
    assert_eq!(env("BGP_LEASE_NAME")["value"], "bgpersist-operator");
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["image"], "bgpersist:0.1.0");
    assert_eq!(env("MALLOC_ARENA_MAX")["value"], "1");
    Ok(())
}

/// Every value `name` has in the env of the operator container the chart
/// renders with `set`, in order.
fn operator_env_values(set: &[&str], name: &str) -> anyhow::Result<Vec<Value>> {
    let docs = yaml_docs(&helm_template("bgp", "ops", set)?)?;
    let dep = docs
        .iter()
        .find(|d| kind(d) == "Deployment")
        .ok_or_else(|| anyhow::anyhow!("no Deployment rendered"))?;
    Ok(dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == name)
        .map(|e| e["value"].clone())
        .collect())
}

#[test]
fn extra_env_chooses_the_operators_malloc_arenas() -> anyhow::Result<()> {
    let set = [
        "--set-string",
        "extraEnv[0].name=MALLOC_ARENA_MAX,extraEnv[0].value=4",
    ];
    let values = operator_env_values(&set, "MALLOC_ARENA_MAX")?;
    assert_eq!(values, [json!("4")]);
    Ok(())
}

#[test]
fn tracing_endpoint_sets_the_operators_otlp_env_only_when_given() -> anyhow::Result<()> {
    let endpoint_of = |set: &[&str]| -> anyhow::Result<Value> {
        Ok(operator_env_values(set, "OTEL_EXPORTER_OTLP_ENDPOINT")?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    };
    assert_eq!(endpoint_of(&[])?, Value::Null);
    assert_eq!(
        endpoint_of(&["--set", "tracing.otlpEndpoint=http://otel.obs:4318"])?,
        "http://otel.obs:4318"
    );
    Ok(())
}

/// What `kubectl apply --dry-run=server` needs and the rig lacks: the
/// Prometheus Operator's CRDs. Those objects are checked by `helm lint` only.
fn needs_absent_crds(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

#[test]
fn chart_and_plain_manifests_pass_a_server_side_dry_run() -> anyhow::Result<()> {
    // Namespaced objects need their namespace to exist, even in a dry run.
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=bgpersist-tests",
            "-f",
            "deploy/base/namespace.yaml",
        ],
        None,
    )?;
    // Not the release deploy/base installs (tests/gitops applies that one).
    let rendered = helm_template(
        "bgpdryrun",
        "bgpersist-system",
        &[
            "--include-crds",
            "--values",
            "charts/bgpersist/ci/full-values.yaml",
        ],
    )?;
    let docs: Vec<Value> = yaml_docs(&rendered)?;
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "BackgroundPersistence",
    ] {
        assert!(kinds.contains(k), "full values render no {k}: {kinds:?}");
    }
    let checkable: Vec<Value> = docs.into_iter().filter(|d| !needs_absent_crds(d)).collect();
    let out = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--field-manager=bgpersist-tests",
            "-f",
            "-",
        ],
        Some(&cli::to_yaml_stream(&checkable)?),
    )?;
    assert_eq!(
        out.matches("(server dry run)").count(),
        checkable.len(),
        "{out}"
    );

    let base = kubectl(&["kustomize", "deploy/base"], None)?;
    let base_docs = yaml_docs(&base)?;
    let out = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--field-manager=bgpersist-tests",
            "-f",
            "-",
        ],
        Some(&base),
    )?;
    assert_eq!(
        out.matches("(server dry run)").count(),
        base_docs.len(),
        "{out}"
    );
    Ok(())
}
