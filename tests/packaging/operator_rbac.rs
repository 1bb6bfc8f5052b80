//! The chart's RBAC is enough, and no more: install the rendered chart on the
//! rig, mint a token for the chart's ServiceAccount (TokenRequest), run the
//! real operator binary with exactly the env its Deployment renders and a
//! kubeconfig holding only that token, and watch it reconcile the seed
//! example with one writer autoscaled: namespace, ServiceAccount, the synced
//! Secret, Deployments, PDBs, KEDA ScaledObject and TriggerAuthentication,
//! status, an Event, a prune, and the Lease.

use crate::cli::{self, kind, kubectl, yaml_docs};
use crate::operator_process::{BIN, free_port, http_get};
use crate::support;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::cloud::moto;

/// The operator process, killed if the test fails before stopping it.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(exit) = self.child.try_wait()? {
            bail!("the operator exited with {exit}:\n{}", self.logs());
        }
        Ok(())
    }

    /// RBAC refusals in the log: `... is forbidden: User "system:serviceaccount:..." cannot ...`.
    fn denials(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains("system:serviceaccount:") && l.contains("cannot "))
            .map(String::from)
            .collect()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns Some, failing after `within` with `what`
/// and the operator's log.
async fn wait_for<T>(
    op: &mut Operator,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        op.alive()?;
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {within:?} waiting for {what} (last error: {last})\n--- operator log (tail)\n{}",
                tail(&op.logs(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A kubeconfig for the rig's API server that authenticates with `token` only.
fn token_kubeconfig(path: &Path, token: &str) -> anyhow::Result<()> {
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(cli::admin_kubeconfig())?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    anyhow::ensure!(
        cluster["server"].is_string(),
        "rig kubeconfig has no server"
    );
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rig", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "rig", "user": "operator"}}],
        "current-context": "operator",
    });
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// `kubectl auth can-i` as the operator: exit 0 is yes, 1 is no.
fn can_i(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let out = Command::new(std::env::var("BGP_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .env("KUBECONFIG", kubeconfig)
        .args(["auth", "can-i"])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.code(), said.as_str()) {
        (Some(0), "yes") => Ok(true),
        (Some(1), "no") => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args:?}: {} {said} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The seed example renamed for this run, its SASL secret pointed at `cloud`.
fn seed(name: &str, ns: &str, cloud: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(cli::repo_path("deploy/examples/seed-example.yaml"))?;
    let mut bp: Value = serde_yaml::from_str(&text)?;
    bp["metadata"]["name"] = name.into();
    bp["spec"]["common_persistence_specs"]["namespace"] = ns.into();
    bp["spec"]["kafka_sasl_secret"] = cloud.into();
    Ok(bp)
}

fn apply_bp(bp: &Value) -> anyhow::Result<()> {
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=bgpersist-packaging-test",
            "-f",
            "-",
        ],
        Some(&serde_yaml::to_string(bp)?),
    )?;
    Ok(())
}

/// A condition of the resource as (status, reason), if present.
fn condition(bp: &Value, type_: &str) -> Option<(String, String)> {
    bp["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn exists(args: &[&str]) -> anyhow::Result<bool> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--ignore-not-found", "-o", "name"]);
    Ok(!kubectl(&all, None)?.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_the_seed_with_only_the_charts_rbac() -> anyhow::Result<()> {
    let _alone = crate::REAL_OPERATOR.lock().await;
    let id = cli::short_id();
    let release = format!("pkg{id}");
    let release_ns = format!("bgp-{release}");
    let bp_name = format!("pkg{id}");
    let target_ns = format!("ns-pkg{id}");
    let cloud = format!("bgp/packaging/{id}");
    // The test runs the operator process itself, with the pod's env and token;
    // the rig's node would otherwise run the chart's Deployment as a second
    // operator, which would take the Lease.
    let rendered = cli::helm_template(&release, &release_ns, &["--set", "replicaCount=0"])?;

    let result = scenario(
        &release,
        &release_ns,
        &bp_name,
        &target_ns,
        &cloud,
        &rendered,
    )
    .await;

    // Clean up what this run created (the rig has no garbage collector).
    let _ = kubectl(
        &[
            "delete",
            "bp",
            &bp_name,
            "--ignore-not-found",
            "--wait=false",
        ],
        None,
    );
    for k in [
        "deployments",
        "poddisruptionbudgets",
        "serviceaccounts",
        "secrets",
        "scaledobjects.keda.sh",
        "triggerauthentications.keda.sh",
        "networkpolicies.networking.k8s.io",
    ] {
        let _ = kubectl(
            &[
                "delete",
                k,
                "-n",
                &target_ns,
                "-l",
                &format!("bgpersist.dev/resource={bp_name}"),
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
    let _ = kubectl(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        Some(&rendered),
    );
    let _ = moto()
        .delete_secret()
        .secret_id(&cloud)
        .force_delete_without_recovery(true)
        .send()
        .await;
    result
}

async fn scenario(
    release: &str,
    release_ns: &str,
    bp_name: &str,
    target_ns: &str,
    cloud: &str,
    rendered: &str,
) -> anyhow::Result<()> {
    // 1. Install: the CRD from the chart's crds/ (and KEDA's, for the
    // autoscaled writer), then every rendered object.
    cli::ensure_keda_crds()?;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=bgpersist-tests",
            "-f",
            "charts/bgpersist/crds/backgroundpersistence.yaml",
        ],
        None,
    )?;
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/backgroundpersistences.bgpersist.dev",
        ],
        None,
    )?;
    kubectl(&["create", "namespace", release_ns], None)?;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=bgpersist-packaging-test",
            "-f",
            "-",
        ],
        Some(rendered),
    )?;
    let docs = yaml_docs(rendered)?;
    let deployment = docs
        .iter()
        .find(|d| kind(d) == "Deployment")
        .context("the chart renders no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"]
        .as_str()
        .context("no serviceAccountName")?;

    // 2. A token for the chart's ServiceAccount, as the kubelet would mount.
    let token = kubectl(
        &["create", "token", sa, "-n", release_ns, "--duration=1h"],
        None,
    )?;
    let kubeconfig =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{release}.kubeconfig"));
    token_kubeconfig(&kubeconfig, token.trim())?;

    // Least privilege, seen from the outside.
    let yes: &[&[&str]] = &[
        &["list", "backgroundpersistences.bgpersist.dev"],
        &[
            "patch",
            "backgroundpersistences.bgpersist.dev",
            "--subresource=status",
        ],
        &["create", "deployments.apps", "-n", target_ns],
        &["delete", "poddisruptionbudgets.policy", "-n", target_ns],
        &["create", "leases.coordination.k8s.io", "-n", release_ns],
        &[
            "patch",
            "leases.coordination.k8s.io/bgpersist-operator",
            "-n",
            release_ns,
        ],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "scaledobjects.keda.sh", "-n", target_ns],
        &["delete", "triggerauthentications.keda.sh", "-n", target_ns],
        &[
            "patch",
            "networkpolicies.networking.k8s.io",
            "-n",
            target_ns,
        ],
        &[
            "delete",
            "networkpolicies.networking.k8s.io",
            "-n",
            target_ns,
        ],
        &[
            "list",
            "networkpolicies.networking.k8s.io",
            "--all-namespaces",
        ],
        // Why a writer is not ready: its pods watched, /readyz through the proxy.
        &["list", "pods", "-n", target_ns],
        &["watch", "pods", "--all-namespaces"],
        // The read step's watch caches (operator/watches.rs).
        &["watch", "namespaces"],
        &["watch", "scaledobjects.keda.sh", "--all-namespaces"],
        &[
            "watch",
            "networkpolicies.networking.k8s.io",
            "--all-namespaces",
        ],
        &["get", "pods", "--subresource=proxy", "-n", target_ns],
        // Documented consequence: RBAC cannot narrow Secrets to the operator's own.
        &["list", "secrets", "--all-namespaces"],
    ];
    let no: &[&[&str]] = &[
        &["update", "deployments.apps", "-n", target_ns],
        &["create", "pods", "-n", target_ns],
        &["delete", "pods", "-n", target_ns],
        &["create", "pods", "--subresource=exec", "-n", target_ns],
        &["get", "configmaps", "-n", target_ns],
        &["delete", "namespaces"],
        &["patch", "backgroundpersistences.bgpersist.dev"],
        &["delete", "backgroundpersistences.bgpersist.dev"],
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
        &["list", "leases.coordination.k8s.io", "-n", release_ns],
        &[
            "patch",
            "leases.coordination.k8s.io/someone-else",
            "-n",
            release_ns,
        ],
        &["create", "leases.coordination.k8s.io", "-n", target_ns],
        &["create", "events.events.k8s.io", "-n", target_ns],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["update", "scaledobjects.keda.sh", "-n", target_ns],
        &["get", "scaledjobs.keda.sh", "-n", target_ns],
        &[
            "update",
            "networkpolicies.networking.k8s.io",
            "-n",
            target_ns,
        ],
    ];
    for (args, want) in yes
        .iter()
        .map(|a| (a, true))
        .chain(no.iter().map(|a| (a, false)))
    {
        assert_eq!(
            can_i(&kubeconfig, args)?,
            want,
            "kubectl auth can-i {} as the operator",
            args.join(" ")
        );
    }

    // 3. The operator, with the env its Deployment renders (downward API
    // resolved by hand, the metrics address moved to a free local port), the
    // AWS SDK pointed at the rig's moto, and only the token to authenticate.
    let container = &pod["containers"][0];
    let pod_name = format!("{release}-0");
    let port = free_port()?;
    let mut cmd = Command::new(BIN);
    support::without_cloud_metadata(&mut cmd);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for e in container["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().unwrap_or_default();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.clone(),
            Some("metadata.namespace") => release_ns.to_string(),
            Some(other) => bail!("env {key}: fieldRef {other} is not resolved by this test"),
            None => e["value"].as_str().unwrap_or_default().to_string(),
        };
        cmd.env(key, value);
    }
    cmd.env("BGP_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("BGP_LOG_FORMAT", "text")
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "BGP_AWS_ENDPOINT_URL",
            support::rig("moto", "BGP_AWS_ENDPOINT"),
        )
        .env("AWS_REGION", support::rig("moto", "BGP_AWS_REGION"))
        .env(
            "AWS_ACCESS_KEY_ID",
            support::rig("moto", "BGP_AWS_ACCESS_KEY_ID"),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            support::rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"),
        )
        // The shared rig holds other tests' resources naming GCP secrets;
        // without credentials they fail at once instead of waiting 30 s for
        // an unreachable Google (which would also outlast the 8 s shutdown).
        .env("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent")
        .env("BGP_GCP_SECRET_MANAGER_ENDPOINT", "http://127.0.0.1:9");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{release}-operator.log"));
    let out = std::fs::File::create(&log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let mut op = Operator { child, log };

    // Leading through the chart's Lease Role.
    wait_for(
        &mut op,
        "/readyz to answer 200 (leadership)",
        Duration::from_secs(45),
        || Ok((http_get(port, "/readyz").ok().map(|r| r.status) == Some(200)).then_some(())),
    )
    .await?;
    let lease = cli::get_json(&["lease", "bgpersist-operator", "-n", release_ns])?;
    assert_eq!(lease["spec"]["holderIdentity"], pod_name.as_str());

    // 4. The seed example, its Kafka SASL secret served by moto.
    moto()
        .create_secret()
        .name(cloud)
        .secret_string(r#"{"username": "bgpersist", "password": "packaging-test"}"#)
        .send()
        .await?;
    let mut bp = seed(bp_name, target_ns, cloud)?;
    // The writer pruned below is autoscaled: its KEDA objects and its
    // PodDisruptionBudget go with it.
    bp["spec"]["writers"][1]["autoscaling"] = json!({"max_replicas": 3});
    // Two replicas: the other writer has a PodDisruptionBudget too.
    bp["spec"]["writers"][0]["default_replica_count"] = json!(2);
    // And NetworkPolicies, applied and pruned through the chart's rule.
    bp["spec"]["common_persistence_specs"]["network_policy"] = json!({"enabled": true});
    apply_bp(&bp)?;

    let writers = ["go-metrics-bus-writer", "go-result-bus-metrics-writer"];
    let live = wait_for(
        &mut op,
        "the seed's status (Ready, Progressing, Degraded=False, 2 writers)",
        Duration::from_secs(120),
        || {
            let live = cli::get_json(&["bp", bp_name])?;
            let done = condition(&live, "Ready").is_some()
                && condition(&live, "Progressing").is_some()
                && condition(&live, "Degraded").is_some_and(|(s, _)| s == "False")
                && live["status"]["writers"].as_array().map(Vec::len) == Some(2);
            Ok(done.then_some(live))
        },
    )
    .await
    .map_err(|e| {
        let now = cli::get_json(&["bp", bp_name]).unwrap_or_default();
        anyhow::anyhow!("{e}\n--- status now\n{:#}", now["status"])
    })?;
    assert_eq!(
        condition(&live, "Ready"),
        Some(("False".into(), "WritersNotReady".into())),
        "no kubelet on the rig: the writers never become ready"
    );
    assert_eq!(
        condition(&live, "Progressing"),
        Some(("True".into(), "RollingOut".into()))
    );
    assert_eq!(
        live["status"]["secrets"][0]["secret"],
        format!("{bp_name}-kafka-sasl")
    );

    for w in writers {
        let dep = format!("{bp_name}-{w}");
        assert!(
            exists(&["deployment", &dep, "-n", target_ns])?,
            "Deployment {dep}"
        );
        assert!(
            exists(&["pdb", &dep, "-n", target_ns])?,
            "PodDisruptionBudget {dep}"
        );
        assert!(
            exists(&["networkpolicy", &dep, "-n", target_ns])?,
            "NetworkPolicy {dep}"
        );
    }
    let autoscaled = format!("{bp_name}-{}", writers[1]);
    for kind in ["scaledobject.keda.sh", "triggerauthentication.keda.sh"] {
        assert!(
            exists(&[kind, &autoscaled, "-n", target_ns])?,
            "{kind} {autoscaled}"
        );
    }
    assert!(exists(&[
        "serviceaccount",
        "background-persistence-sa",
        "-n",
        target_ns
    ])?);
    let secret = cli::get_json(&["secret", &format!("{bp_name}-kafka-sasl"), "-n", target_ns])?;
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"], bp_name,
        "the synced Secret is owned by the resource"
    );

    // An Event about the resource, in "default" through the events Role.
    wait_for(
        &mut op,
        "an Applied event in default",
        Duration::from_secs(30),
        || {
            let events = cli::get_json(&["events.v1.events.k8s.io", "-n", "default"])?;
            let found = events["items"].as_array().into_iter().flatten().any(|e| {
                e["regarding"]["name"] == bp_name
                    && e["reason"] == "Applied"
                    && e["reportingController"] == "bgpersist-operator"
            });
            Ok(found.then_some(()))
        },
    )
    .await?;

    // 5. Prune: a writer removed from the spec loses its Deployment and PDB.
    bp["spec"]["writers"]
        .as_array_mut()
        .context("writers")?
        .retain(|w| w["name"] == writers[0]);
    apply_bp(&bp)?;
    let gone = format!("{bp_name}-{}", writers[1]);
    wait_for(
        &mut op,
        "the removed writer to be pruned",
        Duration::from_secs(60),
        || {
            let left = exists(&["deployment", &gone, "-n", target_ns])?
                || exists(&["pdb", &gone, "-n", target_ns])?
                || exists(&["networkpolicy", &gone, "-n", target_ns])?
                || exists(&["scaledobject.keda.sh", &gone, "-n", target_ns])?
                || exists(&["triggerauthentication.keda.sh", &gone, "-n", target_ns])?;
            Ok((!left).then_some(()))
        },
    )
    .await?;
    assert!(exists(&[
        "deployment",
        &format!("{bp_name}-{}", writers[0]),
        "-n",
        target_ns
    ])?);

    let denials = op.denials();
    assert!(
        denials.is_empty(),
        "the operator was refused by RBAC:\n{}",
        denials.join("\n")
    );

    // 6. SIGTERM: exits 0 and hands the Lease back.
    let sent = Command::new("kill")
        .args(["-TERM", &op.child.id().to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = op.child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            bail!(
                "still running 15 s after SIGTERM:\n{}",
                tail(&op.logs(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", tail(&op.logs(), 40));
    let lease = cli::get_json(&["lease", "bgpersist-operator", "-n", release_ns])?;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(holder.is_empty(), "the Lease is still held by {holder:?}");
    Ok(())
}
