//! The metrics one result message yields: a pure function of the message
//! (plus the time it was consumed, for the delay), so a replayed message
//! yields points with the same identity and the metrics store keeps one.

use crate::formats::v1::{FeatureValue, Metric, MetricsMessage, ResultMessage, metric, value};
use std::collections::{BTreeMap, HashMap};

/// Values in the result (per query).
pub const QUERY_VALUES: &str = "bgp_query_values";
/// Values without a value (per query).
pub const QUERY_NULL_VALUES: &str = "bgp_query_null_values";
/// Values the writers refuse as poison (per query).
pub const QUERY_INVALID_VALUES: &str = "bgp_query_invalid_values";
/// Seconds from `produced_at_micros` to this writer consuming the result.
pub const QUERY_RESULT_DELAY: &str = "bgp_query_result_delay_seconds";
/// Values of one feature in the result.
pub const FEATURE_VALUES: &str = "bgp_feature_values";
pub const FEATURE_NULL_VALUES: &str = "bgp_feature_null_values";
pub const FEATURE_INVALID_VALUES: &str = "bgp_feature_invalid_values";
/// Seconds from the feature's newest observation to the result's production.
pub const FEATURE_OBSERVATION_AGE: &str = "bgp_feature_observation_age_seconds";

/// What a value is, as far as the metrics go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Valid,
    Null,
    /// What ONLINE_WRITER and OFFLINE_WRITER dead-letter (docs/bus-formats.md).
    Invalid,
}

/// Classifies one value with the writers' poison rules; a missing value is null.
pub fn quality(v: &FeatureValue) -> Quality {
    if v.namespace.is_empty()
        || v.feature.is_empty()
        || v.pkey.is_empty()
        || v.namespace.contains(['.', '/'])
    {
        return Quality::Invalid;
    }
    match v.value.as_ref().and_then(|v| v.kind.as_ref()) {
        None => Quality::Null,
        Some(value::Kind::DoubleValue(d)) if !d.is_finite() => Quality::Invalid,
        Some(value::Kind::JsonValue(j))
            if serde_json::from_str::<serde::de::IgnoredAny>(j).is_err() =>
        {
            Quality::Invalid
        }
        Some(_) => Quality::Valid,
    }
}

#[derive(Default)]
struct Counts {
    values: u64,
    nulls: u64,
    invalid: u64,
    newest_observed: i64,
}

impl Counts {
    fn add(&mut self, v: &FeatureValue) {
        self.values += 1;
        match quality(v) {
            Quality::Valid => {}
            Quality::Null => self.nulls += 1,
            Quality::Invalid => self.invalid += 1,
        }
        self.newest_observed = self.newest_observed.max(v.observed_at_micros);
    }
}

/// The metrics of one result message, consumed at `consumed_at_micros`.
///
/// Every point is observed at the message's `produced_at_micros`, else its
/// newest value's observation time, else (a message with neither) the
/// consume time: only then does a replay yield a new identity.
pub fn compute(
    msg: &ResultMessage,
    consumed_at_micros: i64,
    skip_feature_metrics: bool,
) -> MetricsMessage {
    let mut query = Counts::default();
    let mut features: BTreeMap<(&str, &str), Counts> = BTreeMap::new();
    for v in &msg.values {
        query.add(v);
        if !skip_feature_metrics {
            features
                .entry((v.namespace.as_str(), v.feature.as_str()))
                .or_default()
                .add(v);
        }
    }
    let observed_at = [msg.produced_at_micros, query.newest_observed]
        .into_iter()
        .find(|t| *t > 0)
        .unwrap_or(consumed_at_micros);

    let mut base = HashMap::new();
    for (k, v) in [
        ("operation_id", &msg.operation_id),
        ("deployment_id", &msg.deployment_id),
    ] {
        if !v.is_empty() {
            base.insert(k.to_string(), v.clone());
        }
    }
    let point = |name: &str, labels: &HashMap<String, String>, value: f64, kind| Metric {
        name: name.to_string(),
        labels: labels.clone(),
        value,
        observed_at_micros: observed_at,
        kind: kind as i32,
    };
    use metric::Kind::{Counter, HistogramSample};
    // Null and invalid counts are sparse: a zero is left out (absent means
    // 0), which spares most results half their points.
    let counted = |metrics: &mut Vec<Metric>,
                   names: [&str; 3],
                   labels: &HashMap<String, String>,
                   c: &Counts| {
        metrics.push(point(names[0], labels, c.values as f64, Counter));
        for (name, n) in [(names[1], c.nulls), (names[2], c.invalid)] {
            if n > 0 {
                metrics.push(point(name, labels, n as f64, Counter));
            }
        }
    };
    let mut metrics = Vec::new();
    let query_names = [QUERY_VALUES, QUERY_NULL_VALUES, QUERY_INVALID_VALUES];
    counted(&mut metrics, query_names, &base, &query);
    if msg.produced_at_micros > 0 {
        let delay = seconds(consumed_at_micros - msg.produced_at_micros);
        metrics.push(point(QUERY_RESULT_DELAY, &base, delay, HistogramSample));
    }
    let feature_names = [FEATURE_VALUES, FEATURE_NULL_VALUES, FEATURE_INVALID_VALUES];
    for ((namespace, feature), counts) in features {
        let mut labels = base.clone();
        labels.insert("namespace".into(), namespace.into());
        labels.insert("feature".into(), feature.into());
        counted(&mut metrics, feature_names, &labels, &counts);
        if msg.produced_at_micros > 0 && counts.newest_observed > 0 {
            let age = seconds(msg.produced_at_micros - counts.newest_observed);
            metrics.push(point(
                FEATURE_OBSERVATION_AGE,
                &labels,
                age,
                HistogramSample,
            ));
        }
    }
    MetricsMessage {
        environment_id: msg.environment_id.clone(),
        metrics,
    }
}

/// Microseconds as seconds, never negative (clocks of producer and writer differ).
fn seconds(micros: i64) -> f64 {
    micros.max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::Value;

    fn fv(feature: &str, kind: Option<value::Kind>, at: i64) -> FeatureValue {
        FeatureValue {
            namespace: "user".into(),
            feature: feature.into(),
            pkey: "1".into(),
            value: kind.map(|k| Value { kind: Some(k) }),
            observed_at_micros: at,
            ..Default::default()
        }
    }

    fn result() -> ResultMessage {
        ResultMessage {
            operation_id: "op-1".into(),
            environment_id: "prod".into(),
            deployment_id: "dep".into(),
            produced_at_micros: 10_000_000,
            values: vec![
                fv("age", Some(value::Kind::IntValue(3)), 4_000_000),
                fv("age", None, 7_000_000),
                fv("score", Some(value::Kind::DoubleValue(f64::NAN)), 9_000_000),
                fv("score", Some(value::Kind::JsonValue("{bad".into())), 1),
                fv("score", Some(value::Kind::DoubleValue(0.5)), 2),
            ],
        }
    }

    /// (name, feature label or "", value) of every point.
    fn summary(m: &MetricsMessage) -> Vec<(String, String, f64)> {
        m.metrics
            .iter()
            .map(|p| {
                let f = p.labels.get("feature").cloned().unwrap_or_default();
                (p.name.clone(), f, p.value)
            })
            .collect()
    }

    #[test]
    fn per_query_and_per_feature_counts() {
        let m = compute(&result(), 12_500_000, false);
        assert_eq!(m.environment_id, "prod");
        let s = |n: &str, f: &str, v: f64| (n.to_string(), f.to_string(), v);
        assert_eq!(
            summary(&m),
            vec![
                s(QUERY_VALUES, "", 5.0),
                s(QUERY_NULL_VALUES, "", 1.0),
                s(QUERY_INVALID_VALUES, "", 2.0),
                s(QUERY_RESULT_DELAY, "", 2.5),
                s(FEATURE_VALUES, "age", 2.0),
                s(FEATURE_NULL_VALUES, "age", 1.0),
                s(FEATURE_OBSERVATION_AGE, "age", 3.0),
                s(FEATURE_VALUES, "score", 3.0),
                s(FEATURE_INVALID_VALUES, "score", 2.0),
                s(FEATURE_OBSERVATION_AGE, "score", 1.0),
            ]
        );
        let p = &m.metrics[4];
        assert_eq!(
            p.labels.get("operation_id").map(String::as_str),
            Some("op-1")
        );
        assert_eq!(
            p.labels.get("deployment_id").map(String::as_str),
            Some("dep")
        );
        assert_eq!(p.labels.get("namespace").map(String::as_str), Some("user"));
        assert_eq!(p.kind, metric::Kind::Counter as i32);
        assert_eq!(m.metrics[3].kind, metric::Kind::HistogramSample as i32);
        assert!(m.metrics.iter().all(|p| p.observed_at_micros == 10_000_000));
    }

    #[test]
    fn skipping_feature_metrics_keeps_the_query_ones() {
        let m = compute(&result(), 12_500_000, true);
        let names: Vec<&str> = m.metrics.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                QUERY_VALUES,
                QUERY_NULL_VALUES,
                QUERY_INVALID_VALUES,
                QUERY_RESULT_DELAY
            ]
        );
    }

    #[test]
    fn the_observation_time_is_deterministic_when_the_message_says_when() {
        let mut msg = result();
        msg.produced_at_micros = 0;
        let a = compute(&msg, 1, false);
        let b = compute(&msg, 2, false);
        assert_eq!(
            a, b,
            "no delay point without produced_at, same points on a replay"
        );
        assert!(a.metrics.iter().all(|p| p.observed_at_micros == 9_000_000));
        assert!(!a.metrics.iter().any(|p| p.name == QUERY_RESULT_DELAY));

        let empty = ResultMessage::default();
        let m = compute(&empty, 77, false);
        assert_eq!(
            summary(&m),
            [(QUERY_VALUES.to_string(), String::new(), 0.0)]
        );
        assert!(m.metrics.iter().all(|p| p.observed_at_micros == 77));
        assert!(m.metrics.iter().all(|p| p.labels.is_empty()));
    }

    #[test]
    fn zero_null_and_invalid_counts_are_left_out() {
        let msg = ResultMessage {
            produced_at_micros: 10,
            values: vec![fv("age", Some(value::Kind::IntValue(1)), 5)],
            ..Default::default()
        };
        let m = compute(&msg, 10, false);
        let names: Vec<&str> = m.metrics.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                QUERY_VALUES,
                QUERY_RESULT_DELAY,
                FEATURE_VALUES,
                FEATURE_OBSERVATION_AGE
            ]
        );
    }

    #[test]
    fn a_clock_behind_the_producer_gives_zero_delay() {
        let m = compute(&result(), 1, true);
        assert_eq!(m.metrics[3].name, QUERY_RESULT_DELAY);
        assert_eq!(m.metrics[3].value, 0.0);
    }

    #[test]
    fn quality_follows_the_writers_poison_rules() {
        let mut bad_ns = fv("x", Some(value::Kind::IntValue(1)), 1);
        bad_ns.namespace = "a.b".into();
        assert_eq!(quality(&bad_ns), Quality::Invalid);
        let mut no_pkey = fv("x", None, 1);
        no_pkey.pkey.clear();
        assert_eq!(quality(&no_pkey), Quality::Invalid);
        assert_eq!(quality(&fv("x", None, 1)), Quality::Null);
        assert_eq!(
            quality(&fv("x", Some(value::Kind::JsonValue("[1]".into())), 1)),
            Quality::Valid
        );
    }
}
