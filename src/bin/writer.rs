//! bgpersist-writer: consumes one bus subscription and writes one store,
//! configured exactly as the operator renders it (env + mounted files).
// The nested futures of the writer types' runtimes exceed the default query depth.
#![recursion_limit = "256"]

use bgpersist::crd::{BusBackend, WriterType};
use bgpersist::http;
use bgpersist::writer::bus::Bus;
use bgpersist::writer::bus::kafka::KafkaBus;
use bgpersist::writer::bus::pubsub::PubsubBus;
use bgpersist::writer::config::WriterConfig;
use bgpersist::writer::feature_metrics::FeatureMetricsSink;
use bgpersist::writer::feature_metrics::exactly_once::{self, ExactlyOnce};
use bgpersist::writer::metrics::WriterMetrics;
use bgpersist::writer::metrics_store::MetricsStoreSink;
use bgpersist::writer::mirror::{MirrorMetrics, MirrorSettings, MirrorSink};
use bgpersist::writer::offline::bulk::BulkDecoder;
use bgpersist::writer::offline::result::ResultDecoder;
use bgpersist::writer::offline::streaming::StreamingDecoder;
use bgpersist::writer::offline::{OfflineSink, open_store};
use bgpersist::writer::online::OnlineSink;
use bgpersist::writer::runtime::{Runtime, Settings};
use bgpersist::writer::sink::Sink;
use bgpersist::writer::usage::UsageSink;
use bgpersist::writer::vector::VectorSink;
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

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
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(reason)) => fail(&reason),
        Err(Failure::Runtime(reason)) => {
            error!(%reason, "writer failed");
            ExitCode::from(1)
        }
    }
}

/// A configuration error is one line on stderr and exit code 2.
fn fail(reason: &str) -> ExitCode {
    eprintln!("bgpersist-writer: {reason}");
    ExitCode::from(2)
}

enum Failure {
    Config(String),
    Runtime(String),
}

async fn run() -> Result<(), Failure> {
    let cfg = WriterConfig::from_env().map_err(|e| Failure::Config(e.to_string()))?;
    let mut registry = Registry::default();
    let metrics = WriterMetrics::register(&mut registry);
    // Registered before the registry is served; only the mirror has its own.
    let mirror_metrics = (cfg.writer_type == WriterType::QueryMirrorConsumer)
        .then(|| MirrorMetrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
    let listener = http::bind(cfg.http_addr)
        .await
        .map_err(|e| Failure::Config(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::Config(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::Config(e.to_string()))?;
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

    // One arm per writer type: open its sink, then run the shared runtime on it.
    let result = match cfg.writer_type {
        WriterType::OnlineWriter => {
            let uri = cfg
                .store_uri("online_store")
                .map_err(|e| Failure::Config(format!("online store: {e}")))?;
            let sink = OnlineSink::open(&uri, &cfg)
                .await
                .map_err(Failure::Config)?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::OfflineWriter => {
            let store = open_store(&cfg)
                .await
                .map_err(|e| Failure::Config(e.to_string()))?;
            let sink = OfflineSink::new(ResultDecoder, store, cfg.query_table_write_drop_ratio);
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::OfflineStoreStreamingInsertWriter => {
            let store = open_store(&cfg)
                .await
                .map_err(|e| Failure::Config(e.to_string()))?;
            let sink = OfflineSink::new(StreamingDecoder, store, cfg.query_table_write_drop_ratio);
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::OfflineStoreBulkInsertWriter => {
            let store = open_store(&cfg)
                .await
                .map_err(|e| Failure::Config(e.to_string()))?;
            let decoder = BulkDecoder::new(cfg.upload_bucket.as_deref());
            let sink = OfflineSink::new(decoder, store, cfg.query_table_write_drop_ratio);
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter
            if exactly_once::requested(
                std::env::var(exactly_once::ENV_EXACTLY_ONCE)
                    .ok()
                    .as_deref(),
            )
            .map_err(|e| Failure::Config(e.to_string()))? =>
        {
            let writer =
                ExactlyOnce::connect(&cfg, metrics).map_err(|e| Failure::Config(e.to_string()))?;
            ready.store(true, Ordering::SeqCst);
            writer
                .run(stop_rx)
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter => {
            let sink = FeatureMetricsSink::open(&cfg)
                .await
                .map_err(|e| Failure::Config(e.to_string()))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::MetricsBusWriter | WriterType::GoMetricsBusWriter => {
            let uri = cfg
                .store_uri("metrics_store")
                .map_err(|e| Failure::Config(format!("metrics store: {e}")))?;
            let sink = MetricsStoreSink::open(&uri)
                .map_err(|e| Failure::Config(format!("metrics store: {e}")))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::UsageBusWriter => {
            let uri = cfg
                .store_uri("usage_store")
                .map_err(|e| Failure::Config(format!("usage store: {e}")))?;
            let sink =
                UsageSink::open(&uri).map_err(|e| Failure::Config(format!("usage store: {e}")))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::QueryMirrorConsumer => {
            let settings =
                MirrorSettings::from_env(cfg.api_server_host.as_deref(), cfg.concurrency)
                    .map_err(|e| Failure::Config(format!("query mirror: {e}")))?;
            let cfg = settings.bounded(&cfg);
            let sink = MirrorSink::new(settings, mirror_metrics.unwrap_or_default())
                .map_err(|e| Failure::Config(format!("query mirror: {e}")))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::OnlineVectorStoreWriter => {
            let uri = cfg
                .store_uri("vector_store")
                .map_err(|e| Failure::Config(format!("vector store: {e}")))?;
            let sink = VectorSink::open(&uri, &cfg).map_err(|e| Failure::Config(e.to_string()))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    result
}

/// Connects the configured bus and runs the shared runtime with `sink` on it.
async fn on_bus<S: Sink>(
    sink: S,
    metrics: WriterMetrics,
    cfg: &WriterConfig,
    ready: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    match cfg.backend {
        BusBackend::Kafka => {
            let bus = KafkaBus::connect(
                &cfg.kafka,
                &cfg.subscription,
                cfg.dlq_topic.clone(),
                metrics.clone(),
            )
            .map_err(|e| Failure::Config(e.to_string()))?;
            // Boxed: one runtime per writer type would otherwise nest too deep for the compiler.
            Box::pin(drive(bus, sink, metrics, cfg, ready, stop)).await
        }
        BusBackend::Pubsub => {
            let bus = PubsubBus::connect(
                &cfg.pubsub,
                &cfg.subscription,
                cfg.dlq_topic.as_deref(),
                cfg.max_batch_size,
            )
            .await
            .map_err(|e| Failure::Config(e.to_string()))?;
            // Boxed: one runtime per writer type would otherwise nest too deep for the compiler.
            Box::pin(drive(bus, sink, metrics, cfg, ready, stop)).await
        }
    }
}

/// Waits until the bus answers (readiness follows it), logging each new
/// reason it does not; false when shutdown came first.
async fn reach_bus<B: Bus>(bus: &B, mut stop: watch::Receiver<bool>) -> bool {
    let mut last_error: Option<String> = None;
    loop {
        match bus.reached().await {
            Ok(()) => {
                info!("bus reached");
                return true;
            }
            Err(e) => {
                let reason = e.to_string();
                if last_error.as_deref() != Some(reason.as_str()) {
                    warn!(%reason, "bus not reached yet; not ready");
                    last_error = Some(reason);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

async fn drive<B: Bus, S: Sink>(
    bus: B,
    sink: S,
    metrics: WriterMetrics,
    cfg: &WriterConfig,
    ready: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let settings = Settings {
        writer: cfg.writer_name.clone(),
        max_batch_size: cfg.max_batch_size,
        max_batch_wait: cfg.max_batch_wait,
        max_backoff: Duration::from_secs(10),
    };
    if !reach_bus(&bus, stop.clone()).await {
        return Ok(());
    }
    ready.store(true, Ordering::SeqCst);
    let totals = Runtime::new(bus, sink, metrics, settings)
        .run(stop)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    info!(?totals, "exiting");
    Ok(())
}
