//! USAGE_BUS_WRITER: usage events into the usage store, one Postgres table
//! (`usage_events`, docs/metrics-and-usage.md). `event_id` is the primary
//! key: a replayed event adds no row, and the first copy of an id wins.

use crate::formats::Message;
use crate::formats::v1::UsageEvent;
use crate::writer::stores::postgres::row_sink::{CopyValues, PgRow, RowSink, SqlValue};
use crate::writer::stores::postgres::rows::{JsonbText, Table, check_text, timestamp};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tokio_postgres::types::{ToSql, Type};

pub const USAGE_TABLE: Table = Table {
    name: "usage_events",
    ddl: "CREATE TABLE IF NOT EXISTS usage_events (
        event_id text PRIMARY KEY,
        environment_id text NOT NULL,
        deployment_id text NOT NULL,
        kind text NOT NULL,
        subject text NOT NULL,
        quantity double precision NOT NULL,
        unit text NOT NULL,
        occurred_at timestamptz NOT NULL,
        attributes jsonb NOT NULL,
        inserted_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS usage_events_environment_occurred_at
        ON usage_events (environment_id, occurred_at);",
};

/// Fresh events (the common case) are streamed with a binary COPY.
pub const COPY: &str = "COPY usage_events
    (event_id, environment_id, deployment_id, kind, subject, quantity, unit, occurred_at, attributes)
    FROM STDIN BINARY";
const COPY_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];
/// A batch holding events stored before (a replay): one statement, the rows
/// as arrays, existing event ids skipped.
pub const INSERT: &str = "INSERT INTO usage_events
    (event_id, environment_id, deployment_id, kind, subject, quantity, unit, occurred_at, attributes)
    SELECT i, e, d, k, s, q, u, o, a::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::float8[], $7::text[], $8::timestamptz[], $9::text[])
         AS t(i, e, d, k, s, q, u, o, a)
    ON CONFLICT (event_id) DO NOTHING";

/// One row of the usage table.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub event_id: String,
    pub environment_id: String,
    pub deployment_id: String,
    pub kind: String,
    pub subject: String,
    pub quantity: f64,
    pub unit: String,
    pub occurred_at: SystemTime,
    /// The attributes as a JSON object, keys sorted.
    pub attributes_json: String,
}

/// The usage store's sink.
pub type UsageSink = RowSink<UsageRow>;

impl PgRow for UsageRow {
    const TABLE: Table = USAGE_TABLE;
    const COPY: &'static str = COPY;
    const COPY_TYPES: &'static [Type] = &COPY_TYPES;
    const INSERT: &'static str = INSERT;
    type Values<'a> = UsageValues<'a>;

    fn decode(payload: &[u8]) -> Result<Vec<UsageRow>, String> {
        decode(payload).map(|r| vec![r])
    }

    fn values(&self) -> UsageValues<'_> {
        UsageValues {
            attributes: JsonbText(&self.attributes_json),
            row: self,
        }
    }

    fn columns(rows: &[UsageRow]) -> Vec<Box<dyn ToSql + Send + Sync + '_>> {
        let text = |f: fn(&UsageRow) -> &str| Box::new(rows.iter().map(f).collect::<Vec<_>>());
        vec![
            text(|r| &r.event_id),
            text(|r| &r.environment_id),
            text(|r| &r.deployment_id),
            text(|r| &r.kind),
            text(|r| &r.subject),
            Box::new(rows.iter().map(|r| r.quantity).collect::<Vec<_>>()),
            text(|r| &r.unit),
            Box::new(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>()),
            text(|r| &r.attributes_json),
        ]
    }
}

/// A usage row's COPY values: the attributes as jsonb text.
pub struct UsageValues<'a> {
    attributes: JsonbText<'a>,
    row: &'a UsageRow,
}

impl CopyValues for UsageValues<'_> {
    fn refs(&self) -> Vec<SqlValue<'_>> {
        let r = self.row;
        vec![
            &r.event_id,
            &r.environment_id,
            &r.deployment_id,
            &r.kind,
            &r.subject,
            &r.quantity,
            &r.unit,
            &r.occurred_at,
            &self.attributes,
        ]
    }
}

/// Decodes one usage event; a malformed one is poison.
pub fn decode(payload: &[u8]) -> Result<UsageRow, String> {
    let e = UsageEvent::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.UsageEvent: {e}"))?;
    if e.event_id.is_empty() {
        return Err("event_id is empty: it is what makes replays idempotent".into());
    }
    for (field, value) in [
        ("event_id", &e.event_id),
        ("environment_id", &e.environment_id),
        ("deployment_id", &e.deployment_id),
        ("kind", &e.kind),
        ("subject", &e.subject),
        ("unit", &e.unit),
    ] {
        check_text(field, value)?;
    }
    if !e.quantity.is_finite() {
        return Err(format!(
            "event {}: quantity {} is not a finite number",
            e.event_id, e.quantity
        ));
    }
    let occurred_at = timestamp(e.occurred_at_micros).ok_or_else(|| {
        format!(
            "event {}: occurred_at_micros {} is unset or out of range",
            e.event_id, e.occurred_at_micros
        )
    })?;
    let attributes: BTreeMap<String, String> = e.attributes.into_iter().collect();
    for (k, v) in &attributes {
        check_text("attribute name", k)?;
        check_text(&format!("attribute {k:?}"), v)?;
    }
    Ok(UsageRow {
        attributes_json: serde_json::to_string(&attributes).map_err(|e| e.to_string())?,
        event_id: e.event_id,
        environment_id: e.environment_id,
        deployment_id: e.deployment_id,
        kind: e.kind,
        subject: e.subject,
        quantity: e.quantity,
        unit: e.unit,
        occurred_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> UsageEvent {
        UsageEvent {
            event_id: id.into(),
            environment_id: "prod".into(),
            kind: "query".into(),
            subject: "user.age".into(),
            quantity: 2.5,
            unit: "cpu_seconds".into(),
            occurred_at_micros: 1_700_000_000_000_000,
            attributes: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_an_event() -> Result<(), String> {
        let row = decode(&event("e1").encode_to_vec())?;
        assert_eq!(row.event_id, "e1");
        assert_eq!(row.attributes_json, r#"{"a":"1","b":"2"}"#);
        assert_eq!(row.quantity, 2.5);
        assert_eq!(row.deployment_id, "");
        Ok(())
    }

    #[test]
    fn malformed_events_are_poison() {
        assert!(decode(b"\xff\xff garbage").is_err());
        let cases: Vec<(UsageEvent, &str)> = vec![
            (event(""), "event_id is empty"),
            (
                UsageEvent {
                    quantity: f64::NAN,
                    ..event("e")
                },
                "not a finite number",
            ),
            (
                UsageEvent {
                    occurred_at_micros: 0,
                    ..event("e")
                },
                "unset or out of range",
            ),
            (
                UsageEvent {
                    subject: "a\0b".into(),
                    ..event("e")
                },
                "subject contains a NUL",
            ),
        ];
        for (bad, why) in cases {
            let err = decode(&bad.encode_to_vec()).err().unwrap_or_default();
            assert!(err.contains(why), "{err}");
        }
    }
}
