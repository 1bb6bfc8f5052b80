//! The real `bgpersist-operator` binary against the rig's API server: probes,
//! metrics, leader election over a Lease, SIGTERM, and startup errors.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bgpersist-operator");
const NAMESPACE: &str = "default";

/// A running operator process, killed if the test fails before stopping it.
struct Operator {
    child: Child,
    port: u16,
    identity: String,
    log: PathBuf,
}

impl Operator {
    fn start(lease: &str, identity: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{identity}.log"));
        let out = std::fs::File::create(&log)?;
        let child = base_command()
            .env("KUBECONFIG", crate::support::rig("k8s", "BGP_KUBECONFIG"))
            // The identity comes from POD_NAME, as in a Deployment.
            .env("POD_NAME", identity)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--lease-name", lease, "--lease-namespace", NAMESPACE])
            .args(["--log-format", "text"])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child,
            port,
            identity: identity.into(),
            log,
        })
    }

    fn status(&self, path: &str) -> Option<u16> {
        http_get(self.port, path).ok().map(|r| r.status)
    }

    /// Waits until `path` answers `want`, failing with the process log.
    async fn wait_for(&mut self, path: &str, want: u16, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.status(path) == Some(want) {
                return Ok(());
            }
            if let Some(exit) = self.child.try_wait()? {
                anyhow::bail!("{} exited with {exit}:\n{}", self.identity, self.logs());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{path} never answered {want} on {}:\n{}",
                    self.identity,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.child.try_wait()? {
                return Ok(exit);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} still running {within:?} after SIGTERM:\n{}",
                    self.identity,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with no inherited in-cluster hints, so only KUBECONFIG counts.
fn base_command() -> Command {
    let mut cmd = Command::new(BIN);
    crate::support::without_cloud_metadata(&mut cmd);
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("BGP_METRICS_ADDR")
        .env_remove("BGP_LEASE_NAME")
        .env_remove("BGP_LEASE_IDENTITY")
        .env("RUST_LOG", "info")
        // As the chart installs it: its own image runs the seed's writers.
        .env("BGP_WRITER_IMAGE", crate::support::OPERATOR_IMAGE)
        .stdin(Stdio::null());
    cmd
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct HttpResponse {
    pub status: u16,
    head: String,
    body: String,
}

/// A minimal HTTP/1.1 GET: the dev-dependencies carry no HTTP client.
pub fn http_get(port: u16, path: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(HttpResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

async fn holder(leases: &Api<Lease>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(leases.get(name).await?.spec.and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_serves_probes_and_metrics_and_hands_over_on_sigterm() -> anyhow::Result<()> {
    let _alone = crate::REAL_OPERATOR.lock().await;
    let client = crate::support::kubeclient::install_crd().await?;
    let lease = crate::support::unique("op-lease");
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let result = scenario(&leases, &lease).await;
    let _ = leases.delete(&lease, &DeleteParams::default()).await;
    result
}

async fn scenario(leases: &Api<Lease>, lease: &str) -> anyhow::Result<()> {
    let startup = Duration::from_secs(30);
    let mut a = Operator::start(lease, &crate::support::unique("op-a"))?;
    a.wait_for("/healthz", 200, startup).await?;
    a.wait_for("/readyz", 200, startup).await?;

    let metrics = http_get(a.port, "/metrics")?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        metrics.head
    );
    assert!(
        metrics.body.contains("bgpersist_operator_reconciles"),
        "{}",
        metrics.body
    );
    assert_eq!(holder(leases, lease).await?.as_deref(), Some(&*a.identity));

    // A second instance runs and is healthy but never ready while A leads.
    let mut b = Operator::start(lease, &crate::support::unique("op-b"))?;
    b.wait_for("/healthz", 200, startup).await?;
    for _ in 0..10 {
        assert_eq!(b.status("/readyz"), Some(503), "{}", b.logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(holder(leases, lease).await?.as_deref(), Some(&*a.identity));

    let exit = a.terminate(Duration::from_secs(10)).await?;
    assert_eq!(exit.code(), Some(0), "{}", a.logs());
    assert!(a.logs().contains("released lease"), "{}", a.logs());

    // B takes over once the released lease's last term has run out (≤ 15 s).
    b.wait_for("/readyz", 200, startup).await?;
    assert_eq!(holder(leases, lease).await?.as_deref(), Some(&*b.identity));
    let exit = b.terminate(Duration::from_secs(10)).await?;
    assert_eq!(exit.code(), Some(0), "{}", b.logs());
    assert_eq!(holder(leases, lease).await?, None, "released on SIGTERM");
    Ok(())
}

/// Runs the binary to its exit and returns (exit code, stderr).
async fn run_to_exit(mut cmd: Command) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("operator did not exit on a startup error");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    Ok((status.code(), stderr))
}

#[tokio::test]
async fn startup_errors_exit_2_with_one_line() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?.to_string();
    let empty_home =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(crate::support::unique("home"));
    std::fs::create_dir_all(&empty_home)?;

    let mut bad_flag = base_command();
    bad_flag.arg("--no-such-flag");
    let mut no_config = base_command();
    no_config
        .env("KUBECONFIG", empty_home.join("missing"))
        .env("HOME", &empty_home)
        .args(["--metrics-addr", "127.0.0.1:0"]);
    let mut port_taken = base_command();
    port_taken
        .env("KUBECONFIG", crate::support::rig("k8s", "BGP_KUBECONFIG"))
        .args(["--metrics-addr", &taken_addr]);

    for (case, cmd, reason) in [
        ("bad flag", bad_flag, "unknown flag --no-such-flag"),
        ("no kubeconfig", no_config, "Kubernetes client"),
        ("port in use", port_taken, "cannot listen on"),
    ] {
        let (code, stderr) = run_to_exit(cmd).await?;
        assert_eq!(code, Some(2), "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        assert!(
            stderr.starts_with("bgpersist-operator: ") && stderr.contains(reason),
            "{case}: {stderr}"
        );
    }
    drop(taken);
    Ok(())
}
