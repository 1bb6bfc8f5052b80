//! The chart's alerting rules and Grafana dashboard name only series the
//! binaries export: every `bgpersist_*` name in them is one the writer's and
//! the operator's registries produce.

use crate::cli::repo_path;
use bgpersist::operator::metrics::Metrics;
use bgpersist::writer::runtime::metrics::WriterMetrics;
use bgpersist::writer::types::query_mirror_consumer::MirrorMetrics;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;

/// Every sample name the registries can expose, from their `# TYPE` lines
/// (families without a series yet still declare themselves there).
fn exported() -> BTreeSet<String> {
    // Families show only once they hold a series: give each one.
    let mut writer = Registry::default();
    let w = WriterMetrics::register(&mut writer);
    let poison = bgpersist::writer::error::WriterError::Decode("x".into());
    w.count_error(&poison);
    w.count_dead_letter(&poison);
    let _ = MirrorMetrics::register(&mut writer);
    let mut operator = Registry::default();
    let o = Metrics::register(&mut operator);
    o.count_api_request("get");
    o.reconcile_failed("x");
    o.set_conditions(
        "x",
        &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: String::new(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }],
    );
    let mut names = BTreeSet::new();
    for registry in [&writer, &operator] {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let Some((name, kind)) = rest.split_once(' ') else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["", "_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

/// The `bgpersist_*` metric names mentioned in `text`.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("bgpersist_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_exported_series() {
    let exported = exported();
    for must in [
        "bgpersist_writer_consumer_lag_messages",
        "bgpersist_operator_resource_condition",
        "bgpersist_build_info",
    ] {
        assert!(exported.contains(must), "{must} not exported: {exported:?}");
    }
    for file in [
        "charts/bgpersist/files/prometheus-rules.yaml",
        "charts/bgpersist/files/dashboard.json",
    ] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap_or_default();
        let names = mentioned(&text);
        assert!(!names.is_empty(), "{file} names no bgpersist series");
        let unknown: Vec<_> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names series nothing exports: {unknown:?}"
        );
    }
}
