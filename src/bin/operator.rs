//! bgpersist-operator: reconciles BackgroundPersistence resources, serves
//! /metrics, /healthz and /readyz, and elects a leader through a Lease.

use bgpersist::cli::{LogArgs, one_line, with_env};
use bgpersist::http;
use bgpersist::operator::leader::{self, LeaseConfig};
use bgpersist::operator::metrics::Metrics;
use bgpersist::operator::{Context, run as run_controller};
use clap::builder::{NonEmptyStringValueParser, PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use prometheus_client::registry::Registry;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info};

/// After SIGTERM everything must be down by then; Kubernetes waits 30 s.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);
/// In-flight scrapes get this long once shutdown begins.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// Flags win over environment variables, which win over defaults.
#[derive(Debug, Parser)]
#[command(
    name = "bgpersist-operator",
    version,
    about = "Reconciles BackgroundPersistence resources; serves /metrics, /healthz and /readyz.",
    after_help = "An empty environment variable counts as unset. See docs/operator.md.",
    // Arguments come without the program name, as in the tests.
    no_binary_name = true,
    // A repeated flag: the last one wins.
    args_override_self = true
)]
struct Cli {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "BGP_METRICS_ADDR",
        value_name = "HOST:PORT",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease before reconciling; a bare flag means true.
    #[arg(
        long,
        env = "BGP_LEADER_ELECT",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = false,
        default_missing_value = "true",
        default_value = "true",
        value_parser = PossibleValuesParser::new(["true", "false", "1", "0"])
            .map(|v| v == "true" || v == "1")
    )]
    leader_elect: bool,
    /// Namespace of the Lease; unset: $POD_NAMESPACE, else "default".
    #[arg(
        long,
        env = "BGP_LEASE_NAMESPACE",
        value_name = "NS",
        value_parser = NonEmptyStringValueParser::new()
    )]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "BGP_LEASE_NAME",
        value_name = "NAME",
        default_value = "bgpersist-operator",
        value_parser = NonEmptyStringValueParser::new()
    )]
    lease_name: String,
    /// Holder identity in the Lease; unset: $POD_NAME, else the hostname.
    #[arg(
        long,
        env = "BGP_LEASE_IDENTITY",
        value_name = "ID",
        value_parser = NonEmptyStringValueParser::new()
    )]
    lease_identity: Option<String>,
    /// Resources reconciled at once: fewer use less memory, more apply a
    /// large first pass sooner.
    #[arg(
        long,
        env = "BGP_MAX_CONCURRENT_RECONCILES",
        value_name = "N",
        default_value_t = bgpersist::operator::controller::CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    max_concurrent_reconciles: u16,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    metrics_addr: SocketAddr,
    leader_elect: bool,
    lease: LeaseConfig,
    log_json: bool,
    max_concurrent_reconciles: u16,
}

/// `env` reads a variable: the process's in main, a table in the tests.
fn parse<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // The seam exists because tests cannot set the process env (set_var is unsafe in edition 2024).
    let matches = with_env(Cli::command(), &env).try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // One variable per flag is clap's; the second-choice variable is ours.
    let namespace = cli
        .lease_namespace
        .or_else(|| env("POD_NAMESPACE").filter(|v| !v.is_empty()))
        .unwrap_or("default".into());
    let identity = cli.lease_identity.unwrap_or_else(leader::default_identity);
    Ok(Config {
        metrics_addr: cli.metrics_addr,
        leader_elect: cli.leader_elect,
        lease: LeaseConfig::new(cli.lease_name, namespace, identity),
        log_json: cli.log.log_format.is_json(),
        max_concurrent_reconciles: cli.max_concurrent_reconciles,
    })
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
    let cfg = match parse(args, |k| std::env::var(k).ok()) {
        Ok(cfg) => cfg,
        Err(e) => return parse_failure(&e),
    };
    bgpersist::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return startup_failure(&format!("cannot start the async runtime: {e}")),
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        bgpersist::telemetry::init(cfg.log_json, "bgpersist-operator")
    };
    let result = runtime.block_on(run(cfg));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(e)) => startup_failure(&e),
        Err(Failure::Runtime(e)) => {
            error!(error = %e, "operator failed");
            ExitCode::FAILURE
        }
    };
    // Before the runtime goes: a gRPC exporter's connection lives on it.
    telemetry.shutdown();
    // Don't let a stuck blocking task hold the exit hostage.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// --help and --version print and exit 0; a bad flag or variable is a
/// startup failure.
fn parse_failure(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => match e.print() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        _ => startup_failure(&one_line(e)),
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
    // Writer pods' /readyz answers 503 while not ready: read it without retries.
    let mut without_retries = config.clone();
    without_retries.default_retry = false;
    let pod_reader = metrics
        .counting_client(without_retries)
        .map_err(|e| Failure::Startup(format!("cannot build the Kubernetes client: {e}")))?;
    let client = metrics
        .counting_client(config)
        .map_err(|e| Failure::Startup(format!("cannot build the Kubernetes client: {e}")))?;
    let listener = http::bind(cfg.metrics_addr)
        .await
        .map_err(|e| Failure::Startup(e.to_string()))?;
    info!(addr = %cfg.metrics_addr, leader_elect = cfg.leader_elect, "operator starting");

    let ready = Arc::new(http::Readiness::default());
    let mut server = tokio::spawn(http::serve_on(
        listener,
        Arc::new(registry),
        ready.clone(),
        stopped(stop_rx.clone()),
    ));
    let leader_gauge = metrics.leader.clone();
    let ctx = Arc::new(
        Context::new(client.clone(), metrics)
            .with_pod_reader(pod_reader)
            .with_concurrency(cfg.max_concurrent_reconciles),
    );
    let ready_ctl = ready.clone();
    let controller = |stop: leader::Stop| async move {
        ready_ctl.set_ready(true);
        leader_gauge.set(1);
        info!("controller running");
        run_controller(ctx, stop).await;
        leader_gauge.set(0);
        ready_ctl.set_ready(false);
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
        ready.set_ready(false);
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
        // A variable missing from the table reads as empty, which counts as
        // unset: the test process's own environment must not leak in.
        let env = |k: &str| {
            let value = env
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string());
            Some(value.unwrap_or_default())
        };
        parse(args, env).map_err(|e| match e.kind() {
            ErrorKind::DisplayHelp => "help".into(),
            ErrorKind::DisplayVersion => "version".into(),
            _ => one_line(&e),
        })
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

    #[test]
    fn env_layers() {
        let cfg = |env: &[(&str, &str)]| run_cfg(&[], env).unwrap_or_else(|e| panic!("{e}"));
        // BGP_LEASE_NAMESPACE beats POD_NAMESPACE.
        let both = [("BGP_LEASE_NAMESPACE", "a"), ("POD_NAMESPACE", "b")];
        assert_eq!(cfg(&both).lease.namespace, "a");
        let all = [
            ("BGP_LEASE_NAME", "n"),
            ("BGP_LEASE_IDENTITY", "i"),
            ("BGP_LOG_FORMAT", "text"),
            ("BGP_LEADER_ELECT", "0"),
        ];
        let c = cfg(&all);
        assert_eq!(
            (c.lease.name.as_str(), c.lease.identity.as_str()),
            ("n", "i")
        );
        assert!(!c.log_json && !c.leader_elect);
        // Deployments template variables empty: that is unset, not "".
        let empty = [
            "BGP_METRICS_ADDR",
            "BGP_LEADER_ELECT",
            "BGP_LEASE_NAMESPACE",
            "BGP_LEASE_NAME",
            "BGP_LEASE_IDENTITY",
            "BGP_LOG_FORMAT",
            "POD_NAMESPACE",
        ]
        .map(|k| (k, ""));
        assert_eq!(cfg(&empty).lease, cfg(&[]).lease);
        assert_eq!(cfg(&empty).metrics_addr, cfg(&[]).metrics_addr);
        assert!(cfg(&empty).leader_elect && cfg(&empty).log_json);
        for env in [
            ("BGP_METRICS_ADDR", "nope"),
            ("BGP_LEADER_ELECT", "maybe"),
            ("BGP_LOG_FORMAT", "xml"),
        ] {
            assert!(run_cfg(&[], &[env]).is_err(), "{env:?} was accepted");
        }
        // A flag beats a bad variable too.
        let text = run_cfg(&["--log-format=text"], &[("BGP_LOG_FORMAT", "xml")]);
        assert_eq!(text.map(|c| c.log_json), Ok(false));
    }

    #[test]
    fn concurrent_reconciles() {
        let n = |args: &[&str], env: &[(&str, &str)]| {
            run_cfg(args, env).map(|c| c.max_concurrent_reconciles)
        };
        assert_eq!(
            n(&[], &[]).ok(),
            Some(bgpersist::operator::controller::CONCURRENCY)
        );
        let env = [("BGP_MAX_CONCURRENT_RECONCILES", "8")];
        assert_eq!(n(&[], &env).ok(), Some(8));
        assert_eq!(n(&["--max-concurrent-reconciles=4"], &env).ok(), Some(4));
        for bad in ["0", "1025", "-1", "many"] {
            let flag = format!("--max-concurrent-reconciles={bad}");
            assert!(n(&[flag.as_str()], &[]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn leader_elect_spellings() {
        let elect = |args: &[&str], env: &[(&str, &str)]| {
            run_cfg(args, env)
                .map(|c| c.leader_elect)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        let off = [("BGP_LEADER_ELECT", "false")];
        assert!(elect(&["--leader-elect"], &off));
        assert!(elect(&["--leader-elect", "--log-format", "text"], &off));
        assert!(elect(&["--leader-elect=true"], &off));
        assert!(elect(&["--leader-elect", "1"], &off));
        assert!(!elect(&["--leader-elect=false"], &[]));
        assert!(!elect(&["--leader-elect", "0"], &[]));
        // A repeated flag: the last one wins, as before clap.
        assert!(!elect(&["--leader-elect", "--leader-elect=false"], &[]));
        let last = run_cfg(&["--lease-name", "a", "--lease-name", "b"], &[]);
        assert_eq!(last.map(|c| c.lease.name), Ok("b".into()));
        for bad in [&["--leader-elect="][..], &["--leader-elect", "yes"]] {
            assert!(run_cfg(bad, &[]).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn errors_are_one_line() {
        for args in [
            &["--metrics-addr", "nope"][..],
            &["--leader-elect=maybe"],
            &["--log-format", "xml"],
            &["--lease-name"],
            &["--lease-name="],
            &["--bogus", "1"],
            &["--lease-nam", "x"],
            &["positional"],
        ] {
            let e = run_cfg(args, &[]).err().unwrap_or_default();
            assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
            assert!(e.ends_with(" (see --help)"), "{args:?}: {e}");
        }
        // tests/operator_process.rs looks for these words.
        let e = run_cfg(&["--no-such-flag"], &[]);
        assert_eq!(e, Err("unknown flag --no-such-flag (see --help)".into()));
        let e = run_cfg(&["--log-format", "xml"], &[])
            .err()
            .unwrap_or_default();
        assert!(e.contains("'xml'") && e.contains("json, text"), "{e}");
        assert_eq!(run_cfg(&["--version"], &[]), Err("version".into()));
        assert_eq!(run_cfg(&["-h"], &[]), Err("help".into()));
    }

    /// What the chart renders (deploy/base is its output), what the
    /// benches, tests and hack/demo pass: all of it still parses.
    #[test]
    fn shipped_spellings_parse() {
        let manifest: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../deploy/base/operator.yaml"))
                .unwrap_or_else(|e| panic!("{e}"));
        let container = &manifest["spec"]["template"]["spec"]["containers"][0];
        let mut env: Vec<(&str, &str)> = container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert!(env.iter().any(|(k, _)| *k == "BGP_LEASE_NAME"), "{env:?}");
        env.push(("POD_NAMESPACE", "bgpersist-system"));
        let cfg = run_cfg(&[], &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.metrics_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.lease.namespace, "bgpersist-system");
        assert!(cfg.leader_elect && cfg.log_json);
        // leaderElection.enabled=false and logFormat=text render these.
        let off = [("BGP_LEADER_ELECT", "false"), ("BGP_LOG_FORMAT", "text")];
        let cfg = run_cfg(&[], &off).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cfg.leader_elect && !cfg.log_json);

        for args in [
            // benches/operator_scale.rs
            &[
                "--leader-elect=false",
                "--log-format",
                "text",
                "--metrics-addr",
                "127.0.0.1:9",
            ][..],
            // tests/operator_process.rs
            &[
                "--metrics-addr",
                "127.0.0.1:9",
                "--lease-name",
                "l",
                "--lease-namespace",
                "default",
                "--log-format",
                "text",
            ],
        ] {
            run_cfg(args, &[]).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // hack/demo
        let demo = [
            ("BGP_LOG_FORMAT", "text"),
            ("BGP_METRICS_ADDR", "127.0.0.1:9"),
            ("BGP_LEADER_ELECT", "false"),
        ];
        run_cfg(&[], &demo).unwrap_or_else(|e| panic!("{e}"));
    }
}
