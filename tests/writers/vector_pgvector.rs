//! ONLINE_VECTOR_STORE_WRITER: Kafka → pgvector on the rig's Postgres.
//! Tables and schema created on first use, newest observation wins whatever
//! the order, a replay rewrites nothing, poison and refused vectors
//! (dimension mismatch, a value Postgres refuses) are dead-lettered while the
//! rest of the batch is written.

use crate::harness::*;
use crate::pg_store::{drained, kafka_letters};
use crate::support::unique;
use crate::vector_common::*;
use bgpersist::formats::v1::VectorRecord;
use std::collections::BTreeMap;
use std::time::Duration;

const DOCS: usize = 30;
const IMGS: usize = 12;

/// Phase one: every doc observed at ts 2, 3 and 1 (in that order, five per
/// message), two images riding along in each ts-3 message.
fn phase_one(run: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut img = 0;
    for ts in [2, 3, 1] {
        for chunk in (0..DOCS).collect::<Vec<_>>().chunks(5) {
            let mut records: Vec<VectorRecord> = chunk
                .iter()
                .map(|&i| record("docs", &format!("{run}-{i}"), i, ts, 4))
                .collect();
            if ts == 3 {
                for _ in 0..2 {
                    records.push(record("imgs", &format!("{run}-img-{img}"), img, 5, 3));
                    img += 1;
                }
            }
            out.push(batch(records));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_vectors_newest_wins_replays_rewrite_nothing_refusals_are_dead_lettered()
-> anyhow::Result<()> {
    let schema = VectorSchema::new(&unique("vec")).await?;
    let result = run(&schema).await;
    schema.drop().await;
    result
}

async fn run(schema: &VectorSchema) -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("vectors"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let run = unique("v");
    let good = phase_one(&run);
    let garbage = b"\x0a\x05\x0a\x03abc\xff\xff not a VectorBatch".to_vec();
    let nan = batch(vec![
        record("docs", &format!("{run}-nan-sibling"), 99, 1, 4),
        VectorRecord {
            embedding: vec![1.0, f32::NAN, 0.0, 0.0],
            ..record("docs", &format!("{run}-nan"), 98, 1, 4)
        },
    ]);
    let mut payloads = good.clone();
    payloads.insert(4, garbage.clone());
    payloads.insert(11, nan.clone());
    produce(&topic, &payloads).await?;

    let mut writer = Writer::start(&vector_env_kafka(&topic, &dlq, &group, &schema.uri()))?;
    let log = |e: anyhow::Error| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text());
    drained(&topic, &group, 3, payloads.len())
        .await
        .map_err(log)?;

    assert_eq!(
        schema.columns("docs").await?,
        [
            ("id", "text"),
            ("embedding", "vector(4)"),
            ("metadata", "jsonb"),
            ("observed_at_micros", "bigint"),
            ("content_sha256", "bytea"),
            ("written_at", "timestamp with time zone"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let docs = schema.rows("docs").await?;
    let imgs = schema.rows("imgs").await?;
    assert_eq!(docs.len(), DOCS, "{:?}", docs.keys().collect::<Vec<_>>());
    for i in 0..DOCS {
        let row = &docs[&format!("{run}-{i}")];
        assert_eq!(row.observed_at_micros, 3, "doc {i}: the newest observation");
        assert_eq!(row.embedding, embedding(i, 3, 4));
        assert_eq!(row.metadata, metadata(i, 3));
    }
    assert_eq!(imgs.len(), IMGS);
    assert_eq!(imgs[&format!("{run}-img-7")].embedding, embedding(7, 5, 3));

    // Phase two: everything again, older observations, and three refusals
    // among good records in the same batches.
    let mut again = good.clone();
    again.push(batch(
        (0..5)
            .map(|i| record("docs", &format!("{run}-{i}"), i + 50, 0, 4))
            .collect(),
    ));
    let wrong_dim = batch(vec![record("docs", &format!("{run}-5d"), 1, 9, 5)]);
    let nul = batch(vec![VectorRecord {
        metadata_json: r#"{"note": "a\u0000b"}"#.into(),
        ..record("docs", &format!("{run}-nul"), 2, 9, 4)
    }]);
    let fresh = batch(vec![record("docs", &format!("{run}-{DOCS}"), DOCS, 1, 4)]);
    again.insert(3, wrong_dim.clone());
    again.insert(9, nul.clone());
    again.push(fresh);
    produce(&topic, &again).await?;
    drained(&topic, &group, 3, payloads.len() + again.len())
        .await
        .map_err(log)?;

    let docs_after = schema.rows("docs").await?;
    assert_eq!(docs_after.len(), DOCS + 1);
    let unchanged: BTreeMap<&String, &Row> = docs_after
        .iter()
        .filter(|(k, _)| docs.contains_key(*k))
        .collect();
    assert_eq!(
        unchanged,
        docs.iter().collect::<BTreeMap<_, _>>(),
        "replayed and older observations rewrote rows (written_at included)"
    );
    assert_eq!(
        docs_after[&format!("{run}-{DOCS}")].embedding,
        embedding(DOCS, 1, 4)
    );
    assert_eq!(schema.rows("imgs").await?, imgs);

    let letters = kafka_letters(&dlq, 4).await?;
    let find = |payload: &[u8]| {
        letters
            .iter()
            .find(|(p, _)| p == payload)
            .map(|(_, h)| {
                (
                    h.get("bgp-dlq-error-class").cloned().unwrap_or_default(),
                    h.get("bgp-dlq-error-message").cloned().unwrap_or_default(),
                )
            })
            .unwrap_or_default()
    };
    let (class, reason) = find(&garbage);
    assert_eq!(class, "decode", "{reason}");
    let (class, reason) = find(&nan);
    assert_eq!(class, "decode");
    assert!(reason.contains("not a finite number"), "{reason}");
    let (class, reason) = find(&wrong_dim);
    assert_eq!(class, "rejected");
    assert!(reason.contains("dimension 4; this one has 5"), "{reason}");
    let (class, reason) = find(&nul);
    assert_eq!(class, "rejected");
    assert!(reason.contains("postgres refused"), "{reason}");
    for id in ["nan-sibling", "nan", "5d", "nul"] {
        assert!(
            !docs_after.contains_key(&format!("{run}-{id}")),
            "{id} written"
        );
    }
    let m = writer.metrics();
    assert!(
        has_sample(&m, "bgpersist_writer_messages_dead_lettered_total 4"),
        "{m}"
    );

    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}
