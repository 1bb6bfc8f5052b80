//! The path every writer type's sink takes: connect the configured bus, wait
//! until it answers (readiness follows), then run the shared runtime.

use crate::crd::BusBackend;
use crate::http::{Check, Readiness};
use crate::writer::bus::Bus;
use crate::writer::bus::kafka::KafkaBus;
use crate::writer::bus::pubsub::PubsubBus;
use crate::writer::bus::pubsub_backlog;
use crate::writer::config::WriterConfig;
use crate::writer::error::WriterError;
use crate::writer::runtime::metrics::WriterMetrics;
use crate::writer::runtime::sink::Sink;
use crate::writer::runtime::{MAX_BACKOFF, Runtime, Settings};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often a running writer asks its bus again whether its topics (or
/// subscription) and credentials still answer. On Kafka a metadata request
/// for all topics (asking for the two by name could auto-create them, which
/// would hide a missing one); Pub/Sub's admin calls count against a
/// per-project quota, so less often.
const KAFKA_RECHECK: Duration = Duration::from_secs(15);
const PUBSUB_RECHECK: Duration = Duration::from_secs(60);

/// What a writer type's run is handed besides its sink.
pub struct Wiring<'a> {
    pub cfg: &'a WriterConfig,
    pub metrics: WriterMetrics,
    /// Turns true once the bus has answered (`/readyz`).
    pub ready: Arc<Readiness>,
    /// Turns true when shutdown is requested.
    pub stop: watch::Receiver<bool>,
}

/// Connects the configured bus and runs the shared runtime with `sink` on it.
pub async fn on_bus<S: Sink>(sink: S, wiring: Wiring<'_>) -> Result<(), WriterError> {
    let cfg = wiring.cfg;
    match cfg.backend {
        BusBackend::Kafka => {
            let bus = KafkaBus::connect(
                &cfg.kafka,
                &cfg.subscription,
                cfg.dlq_topic.clone(),
                wiring.metrics.clone(),
            )
            .map_err(|e| WriterError::Config(e.to_string()))?;
            // Boxed: one runtime per writer type would otherwise nest too deep for the compiler.
            Box::pin(drive(bus, sink, wiring)).await
        }
        BusBackend::Pubsub => {
            let bus = PubsubBus::connect(
                &cfg.pubsub,
                &cfg.subscription,
                cfg.dlq_topic.as_deref(),
                cfg.batch_ceiling(S::BACKLOG_GROWTH),
                cfg.max_batch_bytes,
            )
            .await
            .map_err(|e| WriterError::Config(e.to_string()))?;
            let backlog = pubsub_backlog::spawn(
                &cfg.pubsub,
                &cfg.subscription,
                wiring.metrics.clone(),
                wiring.stop.clone(),
            );
            // Boxed: one runtime per writer type would otherwise nest too deep for the compiler.
            let result = Box::pin(drive(bus, sink, wiring)).await;
            if let Some(task) = backlog {
                task.abort();
            }
            result
        }
    }
}

/// Waits until the bus answers (readiness follows it), logging each new
/// reason it does not; false when shutdown came first.
async fn reach_bus<B: Bus>(
    bus: &B,
    ready: &Readiness,
    metrics: &WriterMetrics,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut last_error: Option<String> = None;
    loop {
        match bus.reached().await {
            Ok(()) => {
                info!("bus reached");
                metrics.bus_reachable.set(1);
                ready.passing(Check::Bus);
                return true;
            }
            Err(e) => {
                let reason = e.to_string();
                metrics.bus_reachable.set(0);
                ready.failing(Check::Bus, format!("bus not reached: {reason}"));
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

async fn drive<B: Bus, S: Sink>(bus: B, sink: S, wiring: Wiring<'_>) -> Result<(), WriterError> {
    let Wiring {
        cfg,
        metrics,
        ready,
        stop,
    } = wiring;
    let settings = Settings {
        writer: cfg.writer_name.clone(),
        max_batch_size: cfg.max_batch_size,
        batch_ceiling: cfg.batch_ceiling(S::BACKLOG_GROWTH),
        max_batch_bytes: cfg.max_batch_bytes,
        max_batch_wait: cfg.max_batch_wait,
        max_backoff: MAX_BACKOFF,
        bus_recheck: match cfg.backend {
            BusBackend::Kafka => KAFKA_RECHECK,
            BusBackend::Pubsub => PUBSUB_RECHECK,
        },
    };
    if !reach_bus(&bus, &ready, &metrics, stop.clone()).await {
        return Ok(());
    }
    ready.set_ready(true);
    let totals = Runtime::new(bus, sink, metrics, settings)
        .with_readiness(ready)
        .run(stop)
        .await?;
    info!(?totals, "exiting");
    Ok(())
}
