//! bgpersist-writer: consumes one bus subscription and writes one store,
//! configured exactly as the operator renders it (env + mounted files).

use bgpersist::crd::WriterType;
use bgpersist::http;
use bgpersist::writer::config::WriterConfig;
use bgpersist::writer::error::WriterError;
use bgpersist::writer::runtime::metrics::WriterMetrics;
use bgpersist::writer::runtime::start::Wiring;
use bgpersist::writer::types;
use bgpersist::writer::types::query_mirror_consumer::MirrorMetrics;
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    bgpersist::install_crypto_provider();
    let json = std::env::var("BGP_LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    bgpersist::telemetry::init(json);
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
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
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

async fn run() -> Result<(), WriterError> {
    let cfg = WriterConfig::from_env().map_err(|e| WriterError::Config(e.to_string()))?;
    let mut registry = Registry::default();
    let metrics = WriterMetrics::register(&mut registry);
    // Registered before the registry is served; only the mirror has its own.
    let mirror_metrics = (cfg.writer_type == WriterType::QueryMirrorConsumer)
        .then(|| MirrorMetrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
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
