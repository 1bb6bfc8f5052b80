//! ONLINE_VECTOR_STORE_WRITER: Kafka → Qdrant's REST API, a contract test
//! against FakeQdrant (no Qdrant server is obtainable here; see
//! vector_fake_qdrant.rs for what the fake reproduces). Shows: collection
//! created with the URI's distance, the `api-key` header on every request,
//! `wait=true` upserts, point ids (integers and UUIDs kept, other ids as
//! UUIDv5 with the bus id in the payload), newest observation wins, a replay
//! sends no upsert, 503s pause and retry, a dimension mismatch is
//! dead-lettered, a collection recreated with another size is noticed.

use crate::harness::*;
use crate::pg_store::{drained, kafka_letters};
use crate::support::unique;
use crate::vector_common::*;
use crate::vector_fake_qdrant::FakeQdrant;
use bgpersist::writer::stores::vector::qdrant::ID_NAMESPACE;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "k3y-test";

fn expected_point_id(id: &str) -> Value {
    match id {
        "7" => json!(7),
        "550e8400-e29b-41d4-a716-446655440000" => json!(id),
        other => json!(
            uuid::Uuid::new_v5(&ID_NAMESPACE, other.as_bytes())
                .hyphenated()
                .to_string()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_vectors_into_fake_qdrant_speak_the_documented_rest_shapes() -> anyhow::Result<()> {
    let fake = FakeQdrant::start(Some(KEY)).await?;
    // The first two upserts meet an outage: the writer pauses and retries.
    fake.fail_upserts(&[503, 503]);
    let (topic, dlq, group) = (unique("vectors"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let run = unique("q");
    let mut ids: Vec<String> = vec!["7".into(), "550e8400-e29b-41d4-a716-446655440000".into()];
    ids.extend((0..10).map(|i| format!("{run}/doc-{i}")));
    let observed = |ts: i64| {
        batch(
            ids.iter()
                .enumerate()
                .map(|(i, id)| record("docs", id, i, ts, 4))
                .collect(),
        )
    };
    let garbage = b"\xff\xff\xff not a VectorBatch".to_vec();
    let phase_one = vec![observed(2), garbage.clone(), observed(3), observed(1)];
    produce(&topic, &phase_one).await?;

    let uri = format!(
        "qdrant://127.0.0.1:{}?api_key={KEY}&distance=Dot",
        fake.addr.port()
    );
    let writer = Writer::start(&vector_env_kafka(&topic, &dlq, &group, &uri))?;
    let log = |e: anyhow::Error| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text());
    drained(&topic, &group, 2, phase_one.len())
        .await
        .map_err(log)?;

    let docs = fake
        .collection("docs")
        .ok_or_else(|| anyhow::anyhow!("no collection"))?;
    assert_eq!((docs.size, docs.distance.as_str()), (4, "Dot"));
    assert_eq!(docs.points.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        let pid = expected_point_id(id);
        let p = docs
            .points
            .get(&pid.to_string())
            .ok_or_else(|| anyhow::anyhow!("{id}: no point {pid}"))?;
        assert_eq!(p.vector, embedding(i, 3, 4), "{id}: the newest observation");
        assert_eq!(p.payload.get("_bgp_id"), Some(&json!(id)));
        assert_eq!(p.payload.get("_bgp_observed_at_micros"), Some(&json!(3)));
        assert!(
            p.payload
                .get("_bgp_content_sha256")
                .is_some_and(Value::is_string)
        );
        for (k, v) in metadata(i, 3).as_object().into_iter().flatten() {
            assert_eq!(p.payload.get(k), Some(v), "{id}: metadata {k}");
        }
    }
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.api_key.as_deref() == Some(KEY)));
    let create: Vec<&Value> = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path == "/collections/docs")
        .map(|r| &r.body)
        .collect();
    assert_eq!(
        create,
        [&json!({ "vectors": { "size": 4, "distance": "Dot" } })]
    );
    let upserts = |rs: &[crate::vector_fake_qdrant::Request]| {
        rs.iter()
            .filter(|r| r.method == "PUT" && r.path == "/collections/docs/points")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(upserts(&requests).iter().all(|r| r.query == "wait=true"));
    assert!(
        writer.metric("bgpersist_writer_write_retries_total") >= Some(2.0),
        "the 503s were not retried"
    );

    // Phase two: a replay, older observations and a wrong dimension.
    let seen = requests.len();
    let wrong_dim = batch(vec![record("docs", &format!("{run}/five"), 0, 9, 5)]);
    let phase_two = vec![observed(3), observed(0), wrong_dim.clone(), observed(2)];
    produce(&topic, &phase_two).await?;
    drained(&topic, &group, 2, phase_one.len() + phase_two.len())
        .await
        .map_err(log)?;
    let after = fake
        .collection("docs")
        .ok_or_else(|| anyhow::anyhow!("no collection"))?;
    for (pid, p) in &docs.points {
        assert_eq!(after.points.get(pid).map(|a| &a.payload), Some(&p.payload));
    }
    assert_eq!(after.points.len(), ids.len());
    assert!(
        upserts(&fake.requests()[seen..]).is_empty(),
        "nothing newer: no upsert at all"
    );

    // Phase three: the collection is recreated with six dimensions behind the
    // writer's back. A four-dimension vector is now refused; a six one is written.
    fake.recreate("docs", 6);
    let four = batch(vec![record("docs", &format!("{run}/late-four"), 1, 20, 4)]);
    let six = batch(vec![record("docs", &format!("{run}/six"), 2, 20, 6)]);
    produce(&topic, &[four.clone(), six]).await?;
    drained(&topic, &group, 2, phase_one.len() + phase_two.len() + 2)
        .await
        .map_err(log)?;
    let recreated = fake
        .collection("docs")
        .ok_or_else(|| anyhow::anyhow!("no collection"))?;
    let six_id = expected_point_id(&format!("{run}/six")).to_string();
    assert_eq!(recreated.points.keys().collect::<Vec<_>>(), [&six_id]);

    let letters = kafka_letters(&dlq, 3).await?;
    let class_of = |payload: &[u8]| {
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
    assert_eq!(class_of(&garbage).0, "decode");
    let (class, reason) = class_of(&wrong_dim);
    assert_eq!(class, "rejected");
    assert!(reason.contains("dimension 4; this one has 5"), "{reason}");
    let (class, reason) = class_of(&four);
    assert_eq!(class, "rejected");
    assert!(reason.contains("dimension 6; this one has 4"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_pauses_instead_of_dropping() -> anyhow::Result<()> {
    let fake = FakeQdrant::start(Some(KEY)).await?;
    let (topic, dlq, group) = (unique("vectors"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    produce(&topic, &[batch(vec![record("docs", "a", 0, 1, 4)])]).await?;
    let uri = format!("qdrant://127.0.0.1:{}?api_key=wrong", fake.addr.port());
    let writer = Writer::start(&vector_env_kafka(&topic, &dlq, &group, &uri))?;
    eventually("the writer to retry", Duration::from_secs(30), || {
        let retries = writer.metric("bgpersist_writer_write_retries_total");
        async move { Ok((retries >= Some(2.0)).then_some(())) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert_eq!(
        writer.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0)
    );
    assert_eq!(
        committed_and_end(&topic, &group, 1)?,
        (0, 1),
        "nothing committed"
    );
    assert!(writer.log_text().contains("401"), "{}", writer.log_text());
    Ok(())
}
