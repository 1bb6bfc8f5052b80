//! Prometheus metrics of a writer.

use crate::writer::error::WriterError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `class` label of `bgpersist_writer_errors_total`: a [`WriterError`]'s label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub class: &'static str,
}

/// Bus-to-store bounds, seconds: 1-2-5 steps from 1 ms to 500 s, so that
/// latency objectives such as "99 % within 50 ms" are read off a bucket
/// exactly instead of interpolated inside a doubling one (32–64 ms).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    200.0, 500.0,
];

#[derive(Clone)]
pub struct WriterMetrics {
    /// Failures by class: dead letters (decode, rejected), retried writes
    /// (retriable), and the fatal error that stopped the writer (config, runtime).
    pub errors: Family<ErrorLabels, Counter>,
    pub consumed: Counter,
    pub written: Counter,
    pub dead_lettered: Counter,
    pub retries: Counter,
    pub batch_seconds: Histogram,
    /// Payload bytes per batch: shows whether `max_batch_bytes` cuts batches.
    pub batch_bytes: Histogram,
    pub bus_to_store_seconds: Histogram,
    /// Kafka: messages behind the end of the assigned partitions. Pub/Sub:
    /// the subscription's backlog from Cloud Monitoring, -1 while unknown.
    pub lag_messages: Gauge,
    /// Pub/Sub: age of the subscription's oldest unacked message, from Cloud
    /// Monitoring; -1 while unknown (and always on Kafka).
    pub oldest_unacked_seconds: Gauge,
    /// 1 once the bus answered, 0 while it does not (the reason is on /readyz).
    pub bus_reachable: Gauge,
    /// 0 while writes to the store fail and are retried, else 1.
    pub store_writable: Gauge,
    /// Dead letters by class (decode, rejected).
    pub dead_letters: Family<ErrorLabels, Counter>,
    /// Unix time of the last batch written, so a stalled writer shows.
    pub last_write: Gauge<f64, AtomicU64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            errors: Family::default(),
            consumed: Counter::default(),
            written: Counter::default(),
            dead_lettered: Counter::default(),
            retries: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1 KiB to 1 GiB, by fours.
            batch_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 11)),
            bus_to_store_seconds: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            lag_messages: Gauge::default(),
            oldest_unacked_seconds: Gauge::default(),
            bus_reachable: Gauge::default(),
            store_writable: Gauge::default(),
            dead_letters: Family::default(),
            last_write: Gauge::default(),
            lag_seconds: Gauge::default(),
        }
    }
}

impl WriterMetrics {
    /// Records bus-to-store latency of messages just written, from their
    /// publish times (ms since the epoch), and the newest one's age as lag.
    pub fn observe_written(&self, published_ms: impl Iterator<Item = i64>) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut newest = None;
        for ms in published_ms {
            self.bus_to_store_seconds
                .observe((now_ms - ms).max(0) as f64 / 1000.0);
            newest = newest.max(Some(ms));
        }
        if let Some(ms) = newest {
            self.lag_seconds.set((now_ms - ms).max(0) as f64 / 1000.0);
        }
    }

    pub fn count_dead_letter(&self, error: &WriterError) {
        self.dead_letters
            .get_or_create(&ErrorLabels {
                class: error.label(),
            })
            .inc();
    }

    /// A batch was durably written now.
    pub fn wrote(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_write.set(now);
    }

    pub fn count_error(&self, error: &WriterError) {
        self.errors
            .get_or_create(&ErrorLabels {
                class: error.label(),
            })
            .inc();
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Until a write says otherwise.
        m.store_writable.set(1);
        // Until Cloud Monitoring says (Pub/Sub only).
        m.oldest_unacked_seconds.set(-1);
        let r = registry.sub_registry_with_prefix("bgpersist_writer");
        r.register(
            "errors",
            "Writer failures by class (decode, rejected, retriable, config, runtime)",
            m.errors.clone(),
        );
        r.register(
            "messages_consumed",
            "Bus messages received",
            m.consumed.clone(),
        );
        r.register(
            "records_written",
            "Records durably written to the store",
            m.written.clone(),
        );
        r.register(
            "messages_dead_lettered",
            "Messages sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        r.register(
            "write_retries",
            "Batch writes retried after a retriable store error",
            m.retries.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Time to decode, write and dead-letter one batch",
            m.batch_seconds.clone(),
        );
        r.register(
            "batch_bytes",
            "Payload bytes of one batch (bounded by max_batch_bytes)",
            m.batch_bytes.clone(),
        );
        r.register(
            "bus_to_store_seconds",
            "Time from message publish to durable write",
            m.bus_to_store_seconds.clone(),
        );
        r.register(
            "bus_reachable",
            "1 once the bus answered, 0 while it does not (the reason is on /readyz)",
            m.bus_reachable.clone(),
        );
        r.register(
            "store_writable",
            "0 while writes to the store fail and are retried (the reason is on /readyz), else 1",
            m.store_writable.clone(),
        );
        r.register(
            "dead_letters",
            "Messages sent to the dead-letter topic, by class (decode, rejected)",
            m.dead_letters.clone(),
        );
        r.register(
            "last_write_timestamp_seconds",
            "Unix time of the last batch durably written",
            m.last_write.clone(),
        );
        r.register(
            "consumer_lag_messages",
            "Kafka: messages behind the end of the assigned partitions; Pub/Sub: the subscription's backlog from Cloud Monitoring (-1 while unknown)",
            m.lag_messages.clone(),
        );
        r.register(
            "oldest_unacked_seconds",
            "Pub/Sub: age of the subscription's oldest unacked message from Cloud Monitoring (-1 while unknown, and on Kafka)",
            m.oldest_unacked_seconds.clone(),
        );
        r.register(
            "consumer_lag_seconds",
            "Age of the newest message written",
            m.lag_seconds.clone(),
        );
        crate::telemetry::register_build_info(registry, "writer");
        m
    }
}
