//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

#[derive(Clone)]
pub struct Metrics {
    api_requests: Family<VerbLabel, Counter>,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            api_requests: Family::default(),
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            writes: Counter::default(),
        }
    }
}

impl Metrics {
    /// Metrics registered under the `bgpersist_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("bgpersist_operator");
        sub.register("reconciles", "Reconciles started", m.reconciles.clone());
        sub.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            m.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.duration.clone(),
        );
        sub.register(
            "api_requests",
            "Requests sent to the API server, by HTTP method",
            m.api_requests.clone(),
        );
        sub.register(
            "api_writes",
            "Create/patch/delete requests sent to the API server",
            m.writes.clone(),
        );
        m
    }

    /// A client whose every request is counted in `api_requests` by method.
    pub fn counting_client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        let requests = self.api_requests.clone();
        let layer =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                requests
                    .get_or_create(&VerbLabel {
                        verb: req.method().as_str().to_string(),
                    })
                    .inc();
                req
            });
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&layer)
            .build())
    }

    /// Counts a reconcile and records its duration when the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn api_write(&self) {
        self.writes.inc();
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}
