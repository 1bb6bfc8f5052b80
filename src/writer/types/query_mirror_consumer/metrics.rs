//! Prometheus metrics of the query mirror, beside the runtime's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label: the status class (`2xx` .. `5xx`) or the transport failure
/// (`timeout`, `connect`, `error`).
pub type ClassLabel = [(&'static str, &'static str); 1];

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone)]
pub struct MirrorMetrics {
    /// Every HTTP attempt, by class.
    pub attempts: Family<ClassLabel, Counter>,
    /// Final outcome of each replay: the class of the answer that ended it,
    /// or `exhausted` when every attempt failed.
    pub replays: Family<ClassLabel, Counter>,
    /// Time from sending an attempt to its full answer, by class.
    pub latency: Family<ClassLabel, Histogram, fn() -> Histogram>,
    /// Attempts that had to wait for the rate limiter.
    pub rate_limited: Counter,
}

impl Default for MirrorMetrics {
    fn default() -> Self {
        MirrorMetrics {
            attempts: Family::default(),
            replays: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rate_limited: Counter::default(),
        }
    }
}

impl MirrorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("bgpersist_mirror");
        r.register(
            "attempts",
            "Replay HTTP attempts, by status class or transport failure",
            m.attempts.clone(),
        );
        r.register(
            "replays",
            "Replays finished, by the class of the answer that ended them",
            m.replays.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Replay attempt latency, by status class or transport failure",
            m.latency.clone(),
        );
        r.register(
            "rate_limited",
            "Replay attempts that waited for the rate limiter",
            m.rate_limited.clone(),
        );
        m
    }
}

/// `2xx` for 204, and so on.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
