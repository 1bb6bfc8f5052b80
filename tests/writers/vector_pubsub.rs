//! ONLINE_VECTOR_STORE_WRITER on Pub/Sub (the rig's emulator) → pgvector:
//! newest observation per id, poison dead-lettered with attributes.

use crate::harness::*;
use crate::support::unique;
use crate::vector_common::*;
use std::time::Duration;

const ACK_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_vectors_reach_pgvector_newest_first() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let schema = VectorSchema::new(&unique("vecps")).await?;
    let result = run(&mut ps, &schema).await;
    schema.drop().await;
    ps.cleanup().await;
    result
}

async fn run(ps: &mut PubsubResources, schema: &VectorSchema) -> anyhow::Result<()> {
    let topic = ps.topic(&unique("vectors")).await?;
    let sub_id = unique("vec-writer");
    ps.subscription(&sub_id, &topic, ACK_DEADLINE).await?;
    let dlq = ps.topic(&unique("dlq")).await?;
    let dlq_reader = ps
        .subscription(&unique("dlq-reader"), &dlq, ACK_DEADLINE)
        .await?;
    let run = unique("p");
    let ids: Vec<String> = (0..10).map(|i| format!("{run}-{i}")).collect();
    let observed = |ts: i64| {
        let records = ids
            .iter()
            .enumerate()
            .map(|(i, id)| record("emb", id, i, ts, 8))
            .collect();
        (batch(records), Vec::new())
    };
    let poison = batch(vec![record("bad/name", "x", 0, 1, 8)]);
    pubsub_publish(&topic, &[observed(7), (poison.clone(), Vec::new())]).await?;

    let writer = Writer::start(&[
        ("BGP_WRITER_TYPE", "ONLINE_VECTOR_STORE_WRITER".into()),
        ("BGP_WRITER_NAME", "vectors".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "PUBSUB".into()),
        ("BGP_SUBSCRIPTION", sub_id.clone()),
        ("BGP_PUBSUB_ENDPOINT", pubsub_endpoint()),
        ("BGP_PUBSUB_PROJECT", pubsub_project()),
        ("BGP_DLQ_TOPIC", dlq.clone()),
        ("BGP_VECTOR_STORE_URI", schema.uri()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ])?;
    let rows = eventually("the vectors", Duration::from_secs(60), || async {
        let rows = schema.rows("emb").await?;
        Ok((rows.len() == ids.len()).then_some(rows))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(rows[id].observed_at_micros, 7);
        assert_eq!(rows[id].embedding, embedding(i, 7, 8));
    }

    // An older observation of every id, in a later batch: the store keeps the newer.
    pubsub_publish(&topic, &[observed(4)]).await?;
    eventually("the older message written", Duration::from_secs(60), || {
        let written = writer.metric("bgpersist_writer_records_written_total");
        async move { Ok((written >= Some(20.0)).then_some(())) }
    })
    .await?;
    assert_eq!(
        schema.rows("emb").await?,
        rows,
        "an older observation overwrote"
    );

    let mut reader = PubsubReader::start(&dlq_reader, ACK_DEADLINE, 1).await?;
    let letters = reader.receive(1, Duration::from_secs(30)).await?;
    reader.stop().await?;
    assert_eq!(letters[0].data.as_ref(), poison.as_slice());
    let attr = |k: &str| letters[0].attributes.get(k).map(String::as_str);
    assert_eq!(attr("bgp-dlq-error-class"), Some("decode"));
    assert!(attr("bgp-dlq-error-message").is_some_and(|m| m.contains("collection must be")));
    Ok(())
}
