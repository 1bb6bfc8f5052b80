//! bgpersist-operator: reconciles BackgroundPersistence resources, serves
//! /metrics, /healthz and /readyz, and elects a leader through a Lease.

use bgpersist::http;
use bgpersist::operator::leader::{self, LeaseConfig};
use bgpersist::operator::metrics::Metrics;
use bgpersist::operator::{Context, run as run_controller};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info};

const USAGE: &str = "usage: bgpersist-operator [--metrics-addr ADDR] [--leader-elect[=true|false]]
    [--lease-namespace NS] [--lease-name NAME] [--lease-identity ID] [--log-format json|text]
env: BGP_METRICS_ADDR, BGP_LEADER_ELECT, BGP_LEASE_NAMESPACE (else POD_NAMESPACE),
     BGP_LEASE_NAME, BGP_LEASE_IDENTITY (else POD_NAME, else hostname), BGP_LOG_FORMAT";

/// After SIGTERM everything must be down by then; Kubernetes waits 30 s.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);
/// In-flight scrapes get this long once shutdown begins.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

const FLAGS: [&str; 6] = [
    "metrics-addr",
    "leader-elect",
    "lease-namespace",
    "lease-name",
    "lease-identity",
    "log-format",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    metrics_addr: SocketAddr,
    leader_elect: bool,
    lease: LeaseConfig,
    log_json: bool,
}

#[derive(Debug)]
enum Parsed {
    Run(Config),
    Help,
}

/// Flags win over environment variables, which win over defaults.
fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument '{arg}'"));
        };
        let known = FLAGS.iter().any(|f| flag.split('=').next() == Some(*f));
        if !known {
            return Err(format!("unknown flag --{flag}"));
        }
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            // Only --leader-elect may stand alone; the others take the next arg.
            None if flag == "leader-elect" => {
                let explicit = it.next_if(|v| ["true", "false", "1", "0"].contains(&v.as_str()));
                (flag, explicit.cloned())
            }
            None => match it.next() {
                Some(v) => (flag, Some(v.clone())),
                None => return Err(format!("--{flag} needs a value")),
            },
        };
        flags.push((name.to_string(), value));
    }
    let mut take = |name: &str, var: &str| -> Option<String> {
        match flags.iter().rposition(|(n, _)| n == name) {
            Some(pos) => {
                let value = flags[pos].1.clone();
                flags.retain(|(n, _)| n != name);
                Some(value.unwrap_or_else(|| "true".into()))
            }
            // An empty variable counts as unset, as Deployments often template them.
            None => env(var).filter(|v| !v.is_empty()),
        }
    };

    let addr_text = take("metrics-addr", "BGP_METRICS_ADDR").unwrap_or("0.0.0.0:8080".into());
    let metrics_addr = addr_text.parse().map_err(|_| {
        format!("--metrics-addr: '{addr_text}' is not a socket address (host:port)")
    })?;
    let leader_elect = match take("leader-elect", "BGP_LEADER_ELECT").as_deref() {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => return Err(format!("--leader-elect: '{other}' is not true or false")),
    };
    let namespace = take("lease-namespace", "BGP_LEASE_NAMESPACE")
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or("default".into());
    let name = take("lease-name", "BGP_LEASE_NAME").unwrap_or("bgpersist-operator".into());
    let identity =
        take("lease-identity", "BGP_LEASE_IDENTITY").unwrap_or_else(leader::default_identity);
    let log_json = match take("log-format", "BGP_LOG_FORMAT").as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => return Err(format!("--log-format: '{other}' is not json or text")),
    };
    for (flag, value) in [
        ("lease-namespace", &namespace),
        ("lease-name", &name),
        ("lease-identity", &identity),
    ] {
        if value.is_empty() {
            return Err(format!("--{flag} must not be empty"));
        }
    }
    Ok(Parsed::Run(Config {
        metrics_addr,
        leader_elect,
        lease: LeaseConfig::new(name, namespace, identity),
        log_json,
    }))
}

/// Why the process ends non-zero: startup problems exit 2, later ones 1.
enum Failure {
    Startup(String),
    Runtime(String),
}

fn main() -> ExitCode {
    // args() would panic on a non-UTF-8 argument; refuse it instead.
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let Ok(args) = args else {
        return startup_failure("arguments must be UTF-8");
    };
    let cfg = match parse(&args, |k| std::env::var(k).ok()) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return startup_failure(&format!("{e} (see --help)")),
    };
    bgpersist::install_crypto_provider();
    bgpersist::telemetry::init(cfg.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return startup_failure(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(run(cfg));
    // Don't let a stuck blocking task hold the exit hostage.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(e)) => startup_failure(&e),
        Err(Failure::Runtime(e)) => {
            error!(error = %e, "operator failed");
            ExitCode::FAILURE
        }
    }
}

/// Exactly one line on stderr, whatever the error's own formatting.
fn startup_failure(reason: &str) -> ExitCode {
    let reason: Vec<&str> = reason.split_whitespace().collect();
    eprintln!("bgpersist-operator: {}", reason.join(" "));
    ExitCode::from(2)
}

async fn run(cfg: Config) -> Result<(), Failure> {
    // Signals first, so a SIGTERM during startup is not lost.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Startup(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Startup(format!("cannot handle SIGINT: {e}")))?;
    let signals = stop_tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
        let _ = signals.send(true);
    });

    let config = kube::Config::infer()
        .await
        .map_err(|e| Failure::Startup(format!("no Kubernetes client configuration: {e}")))?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client = metrics
        .counting_client(config)
        .map_err(|e| Failure::Startup(format!("cannot build the Kubernetes client: {e}")))?;
    let listener = http::bind(cfg.metrics_addr)
        .await
        .map_err(|e| Failure::Startup(e.to_string()))?;
    info!(addr = %cfg.metrics_addr, leader_elect = cfg.leader_elect, "operator starting");

    let ready = Arc::new(AtomicBool::new(false));
    let mut server = tokio::spawn(http::serve_on(
        listener,
        Arc::new(registry),
        ready.clone(),
        stopped(stop_rx.clone()),
    ));
    let ctx = Arc::new(Context::new(client.clone(), metrics));
    let ready_ctl = ready.clone();
    let controller = |stop: leader::Stop| async move {
        ready_ctl.store(true, Ordering::Relaxed);
        info!("controller running");
        run_controller(ctx, stop).await;
        ready_ctl.store(false, Ordering::Relaxed);
        info!("controller stopped");
    };

    let work = async {
        let result = if cfg.leader_elect {
            leader::lead(client, &cfg.lease, stopped(stop_rx.clone()), controller)
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                let _ = tx.send(());
            });
            controller(leader::Stop::from(rx)).await;
            Ok(())
        };
        ready.store(false, Ordering::Relaxed);
        // Whatever ended the controller ends the process, so stop serving too.
        let _ = stop_tx.send(true);
        match tokio::time::timeout(HTTP_DRAIN, &mut server).await {
            Ok(Ok(Err(e))) => result.and(Err(Failure::Runtime(e.to_string()))),
            _ => result,
        }
    };
    tokio::pin!(work);
    let mut deadline_rx = stop_rx.clone();
    let deadline = async move {
        let _ = deadline_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_DEADLINE).await;
    };
    tokio::select! {
        result = &mut work => result,
        () = deadline => Err(Failure::Runtime(format!(
            "graceful shutdown took longer than {}s", SHUTDOWN_DEADLINE.as_secs()
        ))),
    }
}

/// Resolves once shutdown was requested.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // Err means the sender is gone, which also means shutting down.
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_cfg(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        match parse(&args, env)? {
            Parsed::Run(cfg) => Ok(cfg),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults() {
        let cfg = run_cfg(&[], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.metrics_addr.to_string(), "0.0.0.0:8080");
        assert!(cfg.leader_elect && cfg.log_json);
        assert_eq!(cfg.lease.name, "bgpersist-operator");
        assert_eq!(cfg.lease.namespace, "default");
    }

    #[test]
    fn flags_beat_env() {
        let env = [
            ("BGP_METRICS_ADDR", "127.0.0.1:1"),
            ("BGP_LEADER_ELECT", "false"),
            ("POD_NAMESPACE", "ops"),
        ];
        let cfg = run_cfg(&[], &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.metrics_addr.to_string(), "127.0.0.1:1");
        assert!(!cfg.leader_elect);
        assert_eq!(cfg.lease.namespace, "ops");
        let args = [
            "--metrics-addr=127.0.0.1:2",
            "--leader-elect",
            "--lease-namespace",
            "kube-system",
            "--lease-identity",
            "me",
            "--log-format",
            "text",
        ];
        let cfg = run_cfg(&args, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.metrics_addr.to_string(), "127.0.0.1:2");
        assert!(cfg.leader_elect && !cfg.log_json);
        assert_eq!(cfg.lease.namespace, "kube-system");
        assert_eq!(cfg.lease.identity, "me");
    }

    #[test]
    fn bad_input_is_an_error() {
        for args in [
            &["--metrics-addr", "nope"][..],
            &["--leader-elect=maybe"],
            &["--log-format", "xml"],
            &["--lease-name"],
            &["--lease-name="],
            &["--bogus", "1"],
            &["positional"],
        ] {
            assert!(run_cfg(args, &[]).is_err(), "{args:?} was accepted");
        }
        assert_eq!(run_cfg(&["--help"], &[]), Err("help".into()));
        let off = run_cfg(&["--leader-elect", "false"], &[]).map(|c| c.leader_elect);
        assert_eq!(off, Ok(false));
    }
}
