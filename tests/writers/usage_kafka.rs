//! USAGE_BUS_WRITER: Kafka → Postgres. Events land once however often they
//! are delivered, poison and rows the store refuses are dead-lettered while
//! the rest flows, and a store outage holds the offsets back until the rows
//! are in.

use crate::harness::*;
use crate::pg_store::*;
use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::UsageEvent;
use std::time::Duration;

const TS: i64 = 1_763_000_000_000_000;

fn event(id: &str, quantity: f64) -> UsageEvent {
    UsageEvent {
        event_id: id.into(),
        environment_id: "env-usage".into(),
        deployment_id: "dep-1".into(),
        kind: "query".into(),
        subject: "user.age".into(),
        quantity,
        unit: "cpu_seconds".into(),
        occurred_at_micros: TS + quantity as i64,
        attributes: [("region".to_string(), "eu".to_string())]
            .into_iter()
            .collect(),
    }
}

fn usage_writer_env(topic: &str, dlq: &str, group: &str, uri: &str) -> Vec<(&'static str, String)> {
    // As the operator renders the spec's usage_store_uri.
    kafka_writer_env(
        ("USAGE_BUS_WRITER", "usage"),
        topic,
        dlq,
        group,
        ("BGP_USAGE_STORE_URI", uri),
    )
}

#[tokio::test]
async fn usage_events_land_once_and_refused_rows_are_dead_lettered() -> anyhow::Result<()> {
    let schema = Schema::create("usage").await?;
    let result = events_land_once(&schema).await;
    schema.drop_schema().await;
    result
}

async fn events_land_once(schema: &Schema) -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("usage"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    // The table made ahead of time, as a DBA would, with a rule of its own
    // the writer does not know: the store refuses those rows for good.
    schema
        .client
        .batch_execute(bgpersist::writer::types::usage_bus_writer::USAGE_TABLE.ddl)
        .await?;
    schema
        .client
        .batch_execute("ALTER TABLE usage_events ADD CONSTRAINT sane CHECK (quantity < 1000000)")
        .await?;

    let mut payloads: Vec<Vec<u8>> = (0..50)
        .map(|i| event(&format!("e{i}"), i as f64).encode_to_vec())
        .collect();
    // Producer retries: the first ten again.
    payloads.extend((0..10).map(|i| event(&format!("e{i}"), i as f64).encode_to_vec()));
    let refused = event("too-much", 5e6).encode_to_vec();
    let poison = [
        b"\x08\x96\x01 not a UsageEvent".to_vec(),
        event("", 1.0).encode_to_vec(),
        event("nan", f64::NAN).encode_to_vec(),
    ];
    payloads.insert(13, poison[0].clone());
    payloads.insert(29, refused.clone());
    payloads.insert(41, poison[1].clone());
    payloads.insert(57, poison[2].clone());
    produce(&topic, &payloads).await?;

    let mut writer = Writer::start(&usage_writer_env(&topic, &dlq, &group, &schema.uri()))?;
    drained(&topic, &group, 3, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    let rows = schema
        .client
        .query(
            "SELECT event_id, environment_id, deployment_id, kind, subject, quantity, unit,
                    (extract(epoch from occurred_at) * 1000000)::bigint, attributes::text
             FROM usage_events ORDER BY quantity",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 50, "each event once, the refused one absent");
    for (i, row) in rows.iter().enumerate() {
        let e = event(&format!("e{i}"), i as f64);
        assert_eq!(row.get::<_, String>(0), e.event_id);
        assert_eq!(row.get::<_, String>(1), e.environment_id);
        assert_eq!(row.get::<_, String>(2), e.deployment_id);
        assert_eq!(row.get::<_, String>(3), e.kind);
        assert_eq!(row.get::<_, String>(4), e.subject);
        assert_eq!(row.get::<_, f64>(5), e.quantity);
        assert_eq!(row.get::<_, String>(6), e.unit);
        assert_eq!(row.get::<_, i64>(7), e.occurred_at_micros);
        assert_eq!(row.get::<_, String>(8), r#"{"region": "eu"}"#);
    }

    let mut letters = kafka_letters(&dlq, 4).await?;
    letters.sort_by_key(|(p, _)| p.clone());
    let mut expected: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            poison[0].clone(),
            "decode",
            "not a bgpersist.bus.v1.UsageEvent",
        ),
        (poison[1].clone(), "decode", "event_id is empty"),
        (poison[2].clone(), "decode", "not a finite number"),
        (refused, "rejected", "violates check constraint \"sane\""),
    ];
    expected.sort_by_key(|(p, _, _)| p.clone());
    for ((payload, headers), (want, class, reason)) in letters.iter().zip(&expected) {
        assert_eq!(payload, want);
        assert_eq!(
            headers.get("bgp-dlq-error-class").map(String::as_str),
            Some(*class)
        );
        let message = headers
            .get("bgp-dlq-error-message")
            .cloned()
            .unwrap_or_default();
        assert!(message.contains(reason), "{message}");
        assert_eq!(
            headers.get("bgp-dlq-writer").map(String::as_str),
            Some("usage")
        );
        assert_eq!(headers.get("bgp-dlq-original-topic"), Some(&topic));
        assert!(headers.contains_key("bgp-dlq-original-offset"));
    }
    assert!(
        has_sample(
            &writer.metrics(),
            "bgpersist_writer_messages_dead_lettered_total 4"
        ),
        "{}",
        writer.metrics()
    );
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));

    // A replay of the whole topic by a new group adds nothing and changes nothing.
    let before: Vec<(String, std::time::SystemTime)> = inserted(schema).await?;
    let group2 = unique("grp");
    let replay = Writer::start(&usage_writer_env(&topic, &dlq, &group2, &schema.uri()))?;
    drained(&topic, &group2, 3, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nreplay log:\n{}", replay.log_text()))?;
    assert_eq!(inserted(schema).await?, before);
    // The same four dead letters again, no more: replayed rows are absorbed.
    assert_eq!(
        replay.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(4.0)
    );
    Ok(())
}

/// (event_id, inserted_at) of every row: a rewritten row would change it.
async fn inserted(schema: &Schema) -> anyhow::Result<Vec<(String, std::time::SystemTime)>> {
    Ok(schema
        .client
        .query(
            "SELECT event_id, inserted_at FROM usage_events ORDER BY event_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[tokio::test]
async fn a_store_outage_holds_offsets_back_until_the_rows_are_in() -> anyhow::Result<()> {
    let schema = Schema::create("usage_outage").await?;
    let result = outage(&schema).await;
    schema.drop_schema().await;
    result
}

async fn outage(schema: &Schema) -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("usage"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let proxy = PgProxy::start().await?;
    proxy.set_up(false);
    let payloads: Vec<Vec<u8>> = (0..40)
        .map(|i| event(&format!("o{i}"), i as f64).encode_to_vec())
        .collect();
    produce(&topic, &payloads).await?;
    let writer = Writer::start(&usage_writer_env(
        &topic,
        &dlq,
        &group,
        &schema.uri_at(Some(proxy.port)),
    ))?;

    // The store is away: the writer retries and commits nothing.
    eventually(
        "retries while the store is down",
        Duration::from_secs(30),
        || async {
            Ok(writer
                .metric("bgpersist_writer_write_retries_total")
                .filter(|r| *r >= 3.0))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let committed: i64 = offsets_by_partition(&topic, &group, 2)?
        .iter()
        .map(|(c, _)| (*c).max(0))
        .sum();
    assert_eq!(committed, 0, "offsets moved while nothing was written");
    assert!(
        writer.log_text().contains("store write failed"),
        "{}",
        writer.log_text()
    );

    proxy.set_up(true);
    drained(&topic, &group, 2, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert_eq!(schema.count("usage_events").await?, 40);
    assert_eq!(
        writer.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0)
    );
    Ok(())
}
