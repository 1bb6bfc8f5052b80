//! METRICS_BUS_WRITER and GO_METRICS_BUS_WRITER: metrics-bus messages into
//! the metrics store, one Postgres table (`metrics`, docs/metrics-and-usage.md).
//!
//! Each metric point gets an idempotency key, the SHA-256 of its identity
//! (environment, name, kind, labels, observation time); a replayed point has
//! the same key and `ON CONFLICT DO NOTHING` adds no row. The value is not
//! part of the identity: a point measured again on a replay (a delay, say)
//! keeps its first value.

use crate::formats::Message;
use crate::formats::v1::{Metric, MetricsMessage, metric};
use crate::writer::stores::postgres::row_sink::{CopyValues, PgRow, RowSink, SqlValue};
use crate::writer::stores::postgres::rows::{JsonbText, Table, check_text, timestamp};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tokio_postgres::types::{ToSql, Type};

/// The metrics table. Labels are a JSON object; `kind` is `counter`,
/// `gauge`, `histogram_sample` or `unspecified`.
pub const METRICS_TABLE: Table = Table {
    name: "metrics",
    ddl: "CREATE TABLE IF NOT EXISTS metrics (
        idempotency_key bytea PRIMARY KEY,
        environment_id text NOT NULL,
        name text NOT NULL,
        labels jsonb NOT NULL,
        kind text NOT NULL,
        value double precision NOT NULL,
        observed_at timestamptz NOT NULL,
        inserted_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS metrics_name_observed_at ON metrics (name, observed_at);",
};

/// Fresh points (the common case) are streamed with a binary COPY.
pub const COPY: &str = "COPY metrics
    (idempotency_key, environment_id, name, labels, kind, value, observed_at)
    FROM STDIN BINARY";
const COPY_TYPES: [Type; 7] = [
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::FLOAT8,
    Type::TIMESTAMPTZ,
];
/// A batch holding points stored before (a replay): one statement, the
/// rows as arrays, existing keys skipped.
pub const INSERT: &str = "INSERT INTO metrics
    (idempotency_key, environment_id, name, labels, kind, value, observed_at)
    SELECT k, e, n, l::jsonb, kd, v, o
    FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::float8[], $7::timestamptz[]) AS t(k, e, n, l, kd, v, o)
    ON CONFLICT (idempotency_key) DO NOTHING";

/// One row of the metrics table.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub idempotency_key: [u8; 32],
    pub environment_id: String,
    pub name: String,
    /// The labels as a JSON object, keys sorted.
    pub labels_json: String,
    pub kind: String,
    pub value: f64,
    pub observed_at: SystemTime,
}

/// The metrics store's sink.
pub type MetricsStoreSink = RowSink<MetricRow>;

impl PgRow for MetricRow {
    const TABLE: Table = METRICS_TABLE;
    const COPY: &'static str = COPY;
    const COPY_TYPES: &'static [Type] = &COPY_TYPES;
    const INSERT: &'static str = INSERT;
    type Values<'a> = MetricValues<'a>;

    fn decode(payload: &[u8]) -> Result<Vec<MetricRow>, String> {
        decode(payload)
    }

    fn values(&self) -> MetricValues<'_> {
        MetricValues {
            key: &self.idempotency_key[..],
            labels: JsonbText(&self.labels_json),
            row: self,
        }
    }

    fn columns(rows: &[MetricRow]) -> Vec<Box<dyn ToSql + Send + Sync + '_>> {
        let text = |f: fn(&MetricRow) -> &str| Box::new(rows.iter().map(f).collect::<Vec<_>>());
        vec![
            Box::new(
                rows.iter()
                    .map(|r| &r.idempotency_key[..])
                    .collect::<Vec<_>>(),
            ),
            text(|r| &r.environment_id),
            text(|r| &r.name),
            text(|r| &r.labels_json),
            text(|r| &r.kind),
            Box::new(rows.iter().map(|r| r.value).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|r| r.observed_at).collect::<Vec<_>>()),
        ]
    }
}

/// A metric row's COPY values: the key as bytes, the labels as jsonb text.
pub struct MetricValues<'a> {
    key: &'a [u8],
    labels: JsonbText<'a>,
    row: &'a MetricRow,
}

impl CopyValues for MetricValues<'_> {
    fn refs(&self) -> Vec<SqlValue<'_>> {
        let r = self.row;
        vec![
            &self.key,
            &r.environment_id,
            &r.name,
            &self.labels,
            &r.kind,
            &r.value,
            &r.observed_at,
        ]
    }
}

/// The stored name of a metric kind.
pub fn kind_name(kind: i32) -> String {
    match metric::Kind::try_from(kind) {
        Ok(metric::Kind::Unspecified) => "unspecified".into(),
        Ok(metric::Kind::Counter) => "counter".into(),
        Ok(metric::Kind::Gauge) => "gauge".into(),
        Ok(metric::Kind::HistogramSample) => "histogram_sample".into(),
        // A kind added by a newer producer: kept, by number.
        Err(_) => format!("kind_{kind}"),
    }
}

/// Decodes a metrics-bus message into rows. Any malformed metric makes the
/// whole message poison (dead-lettered whole, like every bus).
pub fn decode(payload: &[u8]) -> Result<Vec<MetricRow>, String> {
    let msg = MetricsMessage::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.MetricsMessage: {e}"))?;
    check_text("environment_id", &msg.environment_id)?;
    msg.metrics
        .into_iter()
        .enumerate()
        .map(|(i, m)| row(&msg.environment_id, m).map_err(|e| format!("metrics[{i}]: {e}")))
        .collect()
}

fn row(environment_id: &str, m: Metric) -> Result<MetricRow, String> {
    if m.name.is_empty() {
        return Err("name is empty".into());
    }
    check_text("name", &m.name)?;
    if !m.value.is_finite() {
        return Err(format!(
            "{}: value {} is not a finite number",
            m.name, m.value
        ));
    }
    let observed_at = timestamp(m.observed_at_micros).ok_or_else(|| {
        format!(
            "{}: observed_at_micros {} is unset or out of range",
            m.name, m.observed_at_micros
        )
    })?;
    let labels: BTreeMap<String, String> = m.labels.into_iter().collect();
    for (k, v) in &labels {
        check_text("label name", k)?;
        check_text(&format!("label {k:?}"), v)?;
    }
    let kind = kind_name(m.kind);
    Ok(MetricRow {
        idempotency_key: identity(
            environment_id,
            &m.name,
            &kind,
            &labels,
            m.observed_at_micros,
        ),
        labels_json: serde_json::to_string(&labels).map_err(|e| e.to_string())?,
        environment_id: environment_id.to_string(),
        name: m.name,
        kind,
        value: m.value,
        observed_at,
    })
}

/// SHA-256 of a metric point's identity; every part length-prefixed so no
/// two identities encode alike.
pub fn identity(
    environment_id: &str,
    name: &str,
    kind: &str,
    labels: &BTreeMap<String, String>,
    observed_at_micros: i64,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |s: &[u8]| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s);
    };
    part(b"bgpersist.metric.v1");
    part(environment_id.as_bytes());
    part(name.as_bytes());
    part(kind.as_bytes());
    part(&observed_at_micros.to_be_bytes());
    for (k, v) in labels {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn metric(name: &str, labels: &[(&str, &str)], value: f64, at: i64) -> Metric {
        Metric {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            value,
            observed_at_micros: at,
            kind: metric::Kind::Counter as i32,
        }
    }

    fn encode(metrics: Vec<Metric>) -> Vec<u8> {
        MetricsMessage {
            environment_id: "prod".into(),
            metrics,
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_rows_with_sorted_labels_and_kind_names() -> Result<(), String> {
        let mut gauge = metric("queue", &[], 1.5, 7);
        gauge.kind = metric::Kind::Gauge as i32;
        let mut future = metric("new", &[], 1.0, 7);
        future.kind = 42;
        let rows = decode(&encode(vec![
            metric("values", &[("z", "1"), ("a", "2")], 3.0, 1_000_000),
            gauge,
            future,
        ]))?;
        assert_eq!(rows[0].labels_json, r#"{"a":"2","z":"1"}"#);
        assert_eq!(rows[0].environment_id, "prod");
        assert_eq!(rows[0].kind, "counter");
        assert_eq!(rows[0].value, 3.0);
        assert_eq!(rows[1].kind, "gauge");
        assert_eq!(rows[2].kind, "kind_42");
        Ok(())
    }

    #[test]
    fn identity_ignores_the_value_and_label_order_but_nothing_else() -> Result<(), String> {
        let a = decode(&encode(vec![metric(
            "m",
            &[("x", "1"), ("y", "2")],
            1.0,
            5,
        )]))?;
        let b = decode(&encode(vec![metric(
            "m",
            &[("y", "2"), ("x", "1")],
            9.0,
            5,
        )]))?;
        assert_eq!(a[0].idempotency_key, b[0].idempotency_key);
        for other in [
            metric("m", &[("x", "1"), ("y", "3")], 1.0, 5),
            metric("m", &[("x", "1")], 1.0, 5),
            metric("m", &[("x", "1"), ("y", "2")], 1.0, 6),
            metric("n", &[("x", "1"), ("y", "2")], 1.0, 5),
            // Length prefixes: "x"+"12" is not "x1"+"2".
            metric("m", &[("x", "12")], 1.0, 5),
        ] {
            let c = decode(&encode(vec![other.clone()]))?;
            assert_ne!(a[0].idempotency_key, c[0].idempotency_key, "{other:?}");
        }
        Ok(())
    }

    #[test]
    fn malformed_metrics_make_the_message_poison() {
        assert!(decode(b"\xff\xff not protobuf").is_err());
        for (bad, why) in [
            (metric("", &[], 1.0, 5), "name is empty"),
            (metric("m", &[], f64::NAN, 5), "not a finite number"),
            (metric("m", &[], f64::INFINITY, 5), "not a finite number"),
            (metric("m", &[], 1.0, 0), "unset or out of range"),
            (metric("m", &[], 1.0, -5), "unset or out of range"),
            (metric("m\0", &[], 1.0, 5), "NUL"),
            (metric("m", &[("k", "v\0")], 1.0, 5), "NUL"),
        ] {
            let err = decode(&encode(vec![metric("ok", &[], 1.0, 5), bad]))
                .err()
                .unwrap_or_default();
            assert!(err.starts_with("metrics[1]: "), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }
}
