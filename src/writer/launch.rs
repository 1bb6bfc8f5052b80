//! Which module runs each writer type: the one table from `BGP_WRITER_TYPE`
//! (the catalog's `bus_subscriber_type`) to the sink it opens, and the path
//! every sink then takes (connect the bus, wait until it answers, run the
//! shared runtime). The binary only wires signals and the HTTP endpoints.

use crate::crd::{BusBackend, WriterType};
use crate::writer::bus::Bus;
use crate::writer::bus::kafka::KafkaBus;
use crate::writer::bus::pubsub::PubsubBus;
use crate::writer::config::WriterConfig;
use crate::writer::feature_metrics::FeatureMetricsSink;
use crate::writer::feature_metrics::exactly_once::{self, ExactlyOnce};
use crate::writer::metrics::WriterMetrics;
use crate::writer::metrics_store::MetricsStoreSink;
use crate::writer::mirror::{MirrorMetrics, MirrorSink};
use crate::writer::offline::bulk::BulkDecoder;
use crate::writer::offline::result::ResultDecoder;
use crate::writer::offline::sink::Decoder;
use crate::writer::offline::streaming::StreamingDecoder;
use crate::writer::offline::{OfflineSink, Store, open_store};
use crate::writer::online::OnlineSink;
use crate::writer::runtime::{MAX_BACKOFF, Runtime, Settings};
use crate::writer::sink::Sink;
use crate::writer::usage::UsageSink;
use crate::writer::vector::VectorSink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Why a writer stopped with an error, and so its exit code.
#[derive(Debug)]
pub enum RunError {
    /// It can never work as configured: one line on stderr, exit code 2.
    Config(String),
    /// It failed while running: logged, exit code 1.
    Runtime(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            RunError::Runtime(_) => 1,
        }
    }
}

/// Opens `cfg.writer_type`'s sink and runs it until `stop` (or a failure).
/// `ready` turns true once the bus has answered.
pub async fn run(
    cfg: &WriterConfig,
    metrics: WriterMetrics,
    mirror_metrics: Option<MirrorMetrics>,
    ready: Arc<AtomicBool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<(), RunError> {
    match cfg.writer_type {
        WriterType::OnlineWriter => {
            let uri = cfg
                .store_uri("online_store")
                .map_err(|e| RunError::Config(format!("online store: {e}")))?;
            let sink = OnlineSink::open(&uri, cfg)
                .await
                .map_err(RunError::Config)?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::OfflineWriter => {
            let sink = offline_sink(cfg, ResultDecoder).await?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::OfflineStoreStreamingInsertWriter => {
            let sink = offline_sink(cfg, StreamingDecoder).await?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::OfflineStoreBulkInsertWriter => {
            let decoder = BulkDecoder::new(cfg.upload_bucket.as_deref());
            let sink = offline_sink(cfg, decoder).await?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter
            if exactly_once::requested(cfg.publish_exactly_once.as_deref())
                .map_err(|e| RunError::Config(e.to_string()))? =>
        {
            let writer =
                ExactlyOnce::connect(cfg, metrics).map_err(|e| RunError::Config(e.to_string()))?;
            ready.store(true, Ordering::SeqCst);
            writer
                .run(stop_rx)
                .await
                .map_err(|e| RunError::Runtime(e.to_string()))
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter => {
            let sink = FeatureMetricsSink::open(cfg)
                .await
                .map_err(|e| RunError::Config(e.to_string()))?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::MetricsBusWriter | WriterType::GoMetricsBusWriter => {
            let uri = cfg
                .store_uri("metrics_store")
                .map_err(|e| RunError::Config(format!("metrics store: {e}")))?;
            let sink = MetricsStoreSink::open(&uri)
                .map_err(|e| RunError::Config(format!("metrics store: {e}")))?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::UsageBusWriter => {
            let uri = cfg
                .store_uri("usage_store")
                .map_err(|e| RunError::Config(format!("usage store: {e}")))?;
            let sink =
                UsageSink::open(&uri).map_err(|e| RunError::Config(format!("usage store: {e}")))?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
        WriterType::QueryMirrorConsumer => {
            let Some(settings) = cfg.mirror.clone() else {
                return Err(RunError::Config("query mirror: no settings".into()));
            };
            let cfg = settings.bounded(cfg);
            let sink = MirrorSink::new(settings, mirror_metrics.unwrap_or_default())
                .map_err(|e| RunError::Config(format!("query mirror: {e}")))?;
            on_bus(sink, metrics, &cfg, ready, stop_rx).await
        }
        WriterType::OnlineVectorStoreWriter => {
            let uri = cfg
                .store_uri("vector_store")
                .map_err(|e| RunError::Config(format!("vector store: {e}")))?;
            let sink = VectorSink::open(&uri, cfg).map_err(|e| RunError::Config(e.to_string()))?;
            on_bus(sink, metrics, cfg, ready, stop_rx).await
        }
    }
}

/// The offline store of `cfg` behind `decoder` (one of the three offline
/// writer types' message formats).
async fn offline_sink<D: Decoder>(
    cfg: &WriterConfig,
    decoder: D,
) -> Result<OfflineSink<D, Store>, RunError> {
    let store = open_store(cfg)
        .await
        .map_err(|e| RunError::Config(e.to_string()))?;
    Ok(OfflineSink::new(
        decoder,
        store,
        cfg.query_table_write_drop_ratio,
    ))
}

/// Connects the configured bus and runs the shared runtime with `sink` on it.
async fn on_bus<S: Sink>(
    sink: S,
    metrics: WriterMetrics,
    cfg: &WriterConfig,
    ready: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    match cfg.backend {
        BusBackend::Kafka => {
            let bus = KafkaBus::connect(
                &cfg.kafka,
                &cfg.subscription,
                cfg.dlq_topic.clone(),
                metrics.clone(),
            )
            .map_err(|e| RunError::Config(e.to_string()))?;
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
            .map_err(|e| RunError::Config(e.to_string()))?;
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
) -> Result<(), RunError> {
    let settings = Settings {
        writer: cfg.writer_name.clone(),
        max_batch_size: cfg.max_batch_size,
        max_batch_wait: cfg.max_batch_wait,
        max_backoff: MAX_BACKOFF,
    };
    if !reach_bus(&bus, stop.clone()).await {
        return Ok(());
    }
    ready.store(true, Ordering::SeqCst);
    let totals = Runtime::new(bus, sink, metrics, settings)
        .run(stop)
        .await
        .map_err(|e| RunError::Runtime(e.to_string()))?;
    info!(?totals, "exiting");
    Ok(())
}
