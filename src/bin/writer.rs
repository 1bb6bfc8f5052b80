//! bgpersist-writer: consumes one bus subscription and writes one store,
//! configured exactly as the operator renders it (env + mounted files).

use bgpersist::cli::{LogArgs, one_line, with_env};
use bgpersist::crd::WriterType;
use bgpersist::http;
use bgpersist::writer::config::WriterConfig;
use bgpersist::writer::error::WriterError;
use bgpersist::writer::runtime::metrics::WriterMetrics;
use bgpersist::writer::runtime::start::Wiring;
use bgpersist::writer::types;
use bgpersist::writer::types::query_mirror_consumer::MirrorMetrics;
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info};

/// The writer's one flag; the rest of its configuration is environment.
#[derive(Parser)]
#[command(
    name = "bgpersist-writer",
    version,
    about = "Consumes one bus subscription and writes one store.",
    after_help = "Configured by the BGP_* environment the operator renders into the writer's \
                  Deployment (and its mounted files): see docs/operator.md. An empty \
                  BGP_LOG_FORMAT counts as unset.",
    no_binary_name = true,
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Fetch one Kafka OAUTHBEARER token as the writer would
    /// (BGP_KAFKA_SASL_MECHANISM=OAUTHBEARER, BGP_KAFKA_OAUTH_*, the client
    /// secret file) and print its principal and expiry as JSON: checks the
    /// identity provider or the pod's AWS identity without a broker.
    KafkaToken {
        /// Print the token itself too (it is a credential until it expires).
        #[arg(long)]
        reveal: bool,
    },
}

fn main() -> ExitCode {
    let cmd = with_env(Cli::command(), |k| std::env::var(k).ok());
    let cli = match cmd
        .try_get_matches_from(std::env::args_os().skip(1))
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return match e.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        Err(e) => return fail(WriterError::Config(one_line(&e))),
    };
    bgpersist::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(WriterError::Config(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        bgpersist::telemetry::init(cli.log.log_format.is_json(), "bgpersist-writer")
    };
    let result = match cli.command {
        Some(Command::KafkaToken { reveal }) => runtime.block_on(kafka_token(reveal)),
        None => runtime.block_on(run()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    };
    // After the last span (the failure's log line included) has ended.
    telemetry.shutdown();
    code
}

/// A configuration error is one line on stderr, any other a log line; the
/// error decides the exit code.
fn fail(e: WriterError) -> ExitCode {
    match &e {
        WriterError::Config(reason) => eprintln!("bgpersist-writer: {reason}"),
        other => error!(
            class = other.label(),
            reason = other.reason(),
            "writer failed"
        ),
    }
    ExitCode::from(e.exit_code())
}

async fn kafka_token(reveal: bool) -> Result<(), WriterError> {
    use bgpersist::writer::bus::oauth;
    let source = bgpersist::writer::config::kafka_oauth_from_env()
        .map_err(|e| WriterError::Config(e.to_string()))?
        .ok_or_else(|| WriterError::Config("BGP_KAFKA_SASL_MECHANISM is not OAUTHBEARER".into()))?;
    let token = oauth::token(&source)
        .await
        .map_err(|e| WriterError::Config(e.to_string()))?;
    let mut out = serde_json::json!({
        "principal": token.principal_name,
        "expires_ms": token.lifetime_ms,
    });
    if reveal {
        out["token"] = token.token.into();
    }
    println!("{out}");
    Ok(())
}

async fn run() -> Result<(), WriterError> {
    let mut cfg = WriterConfig::from_env().map_err(|e| WriterError::Config(e.to_string()))?;
    bgpersist::writer::bus::keystore::fetch_remote_tls(&mut cfg.kafka)
        .await
        .map_err(|e| WriterError::Config(e.to_string()))?;
    let mut registry = Registry::default();
    // Every series names its writer, whatever the scraper's relabelling.
    let labelled = registry
        .sub_registry_with_label(("resource".into(), cfg.resource.clone().into()))
        .sub_registry_with_label(("writer".into(), cfg.writer_name.clone().into()))
        .sub_registry_with_label(("type".into(), cfg.writer_type.as_str().into()));
    let metrics = WriterMetrics::register(labelled);
    // Registered before the registry is served; only the mirror has its own.
    let mirror_metrics = (cfg.writer_type == WriterType::QueryMirrorConsumer)
        .then(|| MirrorMetrics::register(labelled));
    let ready = Arc::new(http::Readiness::default());
    let listener = http::bind(cfg.http_addr)
        .await
        .map_err(|e| WriterError::Config(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| WriterError::Config(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| WriterError::Config(e.to_string()))?;
    let signals = stop_tx.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested: finishing the batch in hand");
        let _ = signals.send(true);
    });
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(http::serve_on(
        listener,
        Arc::new(registry),
        ready.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));

    let wiring = Wiring {
        cfg: &cfg,
        metrics,
        ready,
        stop: stop_rx,
    };
    let result = types::run(wiring, mirror_metrics).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    result
}
