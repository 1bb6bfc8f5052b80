//! Prometheus metrics of the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// One series per resource and condition type, labelled with its current
/// status (kube-state-metrics' shape for conditions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub resource: String,
    pub r#type: String,
    pub status: String,
}

#[derive(Clone)]
pub struct Metrics {
    api_requests: Family<VerbLabel, Counter>,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    writes: Counter,
    conditions: Family<ConditionLabels, Gauge>,
    /// The condition series shown per resource, to remove them when they change.
    shown:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<ConditionLabels>>>>,
    /// 1 while this replica holds the Lease and reconciles.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            api_requests: Family::default(),
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            writes: Counter::default(),
            conditions: Family::default(),
            shown: Default::default(),
            leader: Gauge::default(),
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
            "Requests sent to the API server, by Kubernetes verb (get, list, watch, create, patch, update, delete)",
            m.api_requests.clone(),
        );
        sub.register(
            "resource_condition",
            "1 for each resource's condition (Ready, Progressing, Degraded, Reconciling, Stalled) at its current status",
            m.conditions.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, else 0",
            m.leader.clone(),
        );
        sub.register(
            "api_writes",
            "Create/patch/delete requests sent to the API server",
            m.writes.clone(),
        );
        crate::telemetry::register_build_info(registry, "operator");
        m
    }

    /// A client whose every request is counted in `api_requests` by verb.
    pub fn counting_client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        let metrics = self.clone();
        let layer =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                metrics.count_api_request(verb(req.method(), req.uri()));
                req
            });
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&layer)
            .build())
    }

    /// One request to the API server, by its Kubernetes verb.
    pub fn count_api_request(&self, verb: &str) {
        self.api_requests
            .get_or_create(&VerbLabel {
                verb: verb.to_string(),
            })
            .inc();
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

    /// The resource's conditions as they were just computed: one series per
    /// type at its current status; the series of an older status removed.
    pub fn set_conditions(&self, resource: &str, conditions: &[Condition]) {
        let now: Vec<ConditionLabels> = conditions
            .iter()
            .map(|c| ConditionLabels {
                resource: resource.to_string(),
                r#type: c.type_.clone(),
                status: c.status.clone(),
            })
            .collect();
        let Ok(mut shown) = self.shown.lock() else {
            return;
        };
        for old in shown.remove(resource).unwrap_or_default() {
            if !now.contains(&old) {
                self.conditions.remove(&old);
            }
        }
        for labels in &now {
            self.conditions.get_or_create(labels).set(1);
        }
        shown.insert(resource.to_string(), now);
    }

    /// Drops the condition series of resources that no longer exist.
    pub fn retain_resources(&self, live: &std::collections::HashSet<String>) {
        let Ok(mut shown) = self.shown.lock() else {
            return;
        };
        shown.retain(|resource, series| {
            let keep = live.contains(resource);
            if !keep {
                for labels in series.iter() {
                    self.conditions.remove(labels);
                }
            }
            keep
        });
    }
}

/// The Kubernetes verb of an API request: watches and lists are GETs, and
/// a GET names one object only when the path ends in a name.
pub fn verb(method: &http::Method, uri: &http::Uri) -> &'static str {
    let query = uri.query().unwrap_or_default();
    match *method {
        http::Method::GET
            if query
                .split('&')
                .any(|q| q == "watch=true" || q == "watch=1") =>
        {
            "watch"
        }
        http::Method::GET if is_collection(uri.path()) => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether `path` names a collection (`.../namespaces/ns/deployments`)
/// rather than one object (`.../deployments/name`): API paths alternate
/// group/version, then (namespaces, name,) resource, name, subresource.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // After /api/v1 (2 parts) or /apis/group/version (3 parts).
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    rest.len() == 1
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_counted_by_kubernetes_verb() {
        let cases = [
            (
                "GET",
                "/apis/apps/v1/namespaces/ns/deployments?watch=true&resourceVersion=1",
                "watch",
            ),
            ("GET", "/apis/apps/v1/namespaces/ns/deployments", "list"),
            (
                "GET",
                "/apis/bgpersist.dev/v1alpha1/backgroundpersistences",
                "list",
            ),
            ("GET", "/api/v1/namespaces", "list"),
            ("GET", "/api/v1/namespaces/ns", "get"),
            ("GET", "/apis/apps/v1/namespaces/ns/deployments/w", "get"),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/ns/deployments/w?fieldManager=x",
                "patch",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
                "update",
            ),
            ("POST", "/api/v1/namespaces/ns/events", "create"),
            ("DELETE", "/api/v1/namespaces/ns/secrets/s", "delete"),
        ];
        for (method, uri, want) in cases {
            let m: http::Method = method.parse().unwrap_or_default();
            let u: http::Uri = uri.parse().unwrap_or_default();
            assert_eq!(verb(&m, &u), want, "{method} {uri}");
        }
    }

    fn encoded(m: &Metrics) -> String {
        let mut registry = Registry::default();
        registry.register("c", "", m.conditions.clone());
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    fn cond(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: String::new(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn one_condition_series_per_resource_and_type_at_its_current_status() {
        let m = Metrics::default();
        m.set_conditions("a", &[cond("Ready", "False"), cond("Stalled", "True")]);
        m.set_conditions("b", &[cond("Ready", "True")]);
        m.set_conditions("a", &[cond("Ready", "True"), cond("Stalled", "False")]);
        let text = encoded(&m);
        assert!(
            text.contains(r#"c{resource="a",type="Ready",status="True"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"c{resource="a",type="Ready",status="False"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"c{resource="a",type="Stalled",status="False"} 1"#),
            "{text}"
        );
        m.retain_resources(&std::collections::HashSet::from(["b".to_string()]));
        let text = encoded(&m);
        assert!(!text.contains(r#"resource="a""#), "{text}");
        assert!(
            text.contains(r#"c{resource="b",type="Ready",status="True"} 1"#),
            "{text}"
        );
    }
}
