//! USAGE_BUS_WRITER: usage events into the usage store, one Postgres table
//! (`usage_events`, docs/metrics-and-usage.md). `event_id` is the primary
//! key: a replayed event adds no row, and the first copy of an id wins.

use crate::formats::Message;
use crate::formats::v1::UsageEvent;
use crate::writer::pg::{self, PgError};
use crate::writer::pg_rows::{
    InsertRows, JsonbText, PgTable, Table, check_text, is_key_conflict, timestamp,
};
use crate::writer::sink::{Rejected, Sink, SinkError};
use deadpool_postgres::Object;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

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

const POOL_SIZE: usize = 2;

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

pub struct UsageSink {
    table: PgTable,
}

impl UsageSink {
    /// Builds the pool; connects (and creates the table) on the first write.
    pub fn open(uri: &str) -> Result<Self, PgError> {
        Ok(UsageSink {
            table: PgTable::new(pg::pool(uri, POOL_SIZE)?, USAGE_TABLE),
        })
    }
}

impl Sink for UsageSink {
    type Record = UsageRow;

    // Inserts that skip existing event ids commute.
    const OVERLAPPING_WRITES: bool = true;

    fn decode(&self, payload: &[u8]) -> Result<Vec<UsageRow>, String> {
        decode(payload).map(|r| vec![r])
    }

    async fn write(&self, rows: &[UsageRow]) -> Result<Vec<Rejected>, SinkError> {
        self.table.write_isolating(rows).await
    }
}

impl InsertRows for [UsageRow] {
    fn row_count(&self) -> usize {
        self.len()
    }

    async fn insert(
        &self,
        conn: &Object,
        range: Range<usize>,
    ) -> Result<(), tokio_postgres::Error> {
        let rows = &self[range];
        match copy(conn, rows).await {
            Err(e) if is_key_conflict(&e) => insert_skipping_existing(conn, rows).await,
            done => done,
        }
    }
}

/// All or nothing: a row refused, or an event id already stored, fails the COPY.
async fn copy(conn: &Object, rows: &[UsageRow]) -> Result<(), tokio_postgres::Error> {
    let writer = BinaryCopyInWriter::new(conn.copy_in(COPY).await?, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &r.event_id,
                &r.environment_id,
                &r.deployment_id,
                &r.kind,
                &r.subject,
                &r.quantity,
                &r.unit,
                &r.occurred_at,
                &JsonbText(&r.attributes_json),
            ])
            .await?;
    }
    writer.finish().await.map(drop)
}

async fn insert_skipping_existing(
    conn: &Object,
    rows: &[UsageRow],
) -> Result<(), tokio_postgres::Error> {
    let col = |f: fn(&UsageRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let ids = col(|r| &r.event_id);
    let envs = col(|r| &r.environment_id);
    let deployments = col(|r| &r.deployment_id);
    let kinds = col(|r| &r.kind);
    let subjects = col(|r| &r.subject);
    let quantities: Vec<f64> = rows.iter().map(|r| r.quantity).collect();
    let units = col(|r| &r.unit);
    let times: Vec<SystemTime> = rows.iter().map(|r| r.occurred_at).collect();
    let attributes = col(|r| &r.attributes_json);
    let statement = conn.prepare_cached(INSERT).await?;
    conn.execute(
        &statement,
        &[
            &ids,
            &envs,
            &deployments,
            &kinds,
            &subjects,
            &quantities,
            &units,
            &times,
            &attributes,
        ],
    )
    .await
    .map(drop)
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
