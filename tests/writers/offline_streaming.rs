//! OFFLINE_STORE_STREAMING_INSERT_WRITER: parquet bodies from Kafka and
//! Pub/Sub into Postgres. Replays add nothing (unique keys and recorded
//! idempotency keys), tables evolve when a column appears, malformed bodies
//! and hostile names are dead-lettered with the reason while the rest flows,
//! and the query-log drop ratio samples by operation id.

use crate::harness::*;
use crate::offline_harness::*;
use crate::support::unique;
use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use bgpersist::writer::stores::offline::drop_ratio;
use std::sync::Arc;
use std::time::Duration;

fn texts<S: AsRef<str>>(values: &[S]) -> ArrayRef {
    Arc::new(StringArray::from(
        values.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
    ))
}

/// Rows of `events`: observation ids, pkeys and amounts, plus the extra
/// columns given.
fn events(ids: &[&str], extra: Vec<(&str, ArrayRef)>) -> anyhow::Result<Vec<u8>> {
    let amounts: Vec<i64> = (0..ids.len() as i64).map(|i| 100 + i).collect();
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("observation_id", texts(ids)),
        (
            "pkey",
            texts(&ids.iter().map(|i| format!("p-{i}")).collect::<Vec<_>>()),
        ),
        ("amount", Arc::new(Int64Array::from(amounts))),
    ];
    cols.extend(extra);
    to_parquet(&RecordBatch::try_from_iter(cols)?)
}

async fn all_committed(
    topic: &str,
    group: &str,
    total: i64,
    writer: &Writer,
) -> anyhow::Result<()> {
    eventually(
        "every message committed",
        Duration::from_secs(90),
        || async {
            let (c, e) = committed_and_end(topic, group, 2)?;
            Ok((c == e && e == total).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))
}

#[tokio::test]
async fn streaming_replays_add_nothing_tables_evolve_and_bad_bodies_are_dead_lettered()
-> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("stream"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
    let pg = PgSchema::create().await?;

    let first_events = streaming_message("events", events(&["e1", "e2", "e3"], vec![])?, "k1");
    let clicks_batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
        ),
        ("url", texts(&["/a", "/b", "/c", "/d"])),
    ])?;
    // No unique column: only the recorded keys keep replays out.
    let clicks = streaming_message("clicks", to_parquet(&clicks_batch)?, "k3");
    let unkeyed_batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![5, 6])) as ArrayRef),
        ("url", texts(&["/e", "/f"])),
    ])?;
    let unkeyed = streaming_message("clicks", to_parquet(&unkeyed_batch)?, "");
    let malformed = streaming_message("events", b"PAR1 this is not parquet".to_vec(), "k4");
    let hostile = streaming_message(
        "events\"; DROP TABLE events; --",
        events(&["x1"], vec![])?,
        "k5",
    );
    produce(
        &topic,
        &[
            first_events.clone(),
            malformed.clone(),
            clicks.clone(),
            hostile.clone(),
            unkeyed.clone(),
        ],
    )
    .await?;
    let writer = Writer::start(&offline_env(
        "OFFLINE_STORE_STREAMING_INSERT_WRITER",
        &topic,
        &dlq,
        &group,
        &pg.uri(),
    ))?;
    all_committed(&topic, &group, 5, &writer).await?;
    assert_eq!(pg.count("events", "observation_id").await?, (3, 3));

    // A new column, the first batch replayed, and a column whose type changed.
    let evolved = streaming_message(
        "events",
        events(&["e4", "e5"], vec![("country", texts(&["de", "fr"]))])?,
        "k2",
    );
    let retyped = streaming_message(
        "events",
        to_parquet(&RecordBatch::try_from_iter([
            ("observation_id", texts(&["e6"])),
            ("amount", texts(&["lots"])),
        ])?)?,
        "k6",
    );
    produce(
        &topic,
        &[
            evolved,
            first_events.clone(),
            clicks.clone(),
            unkeyed.clone(),
            retyped.clone(),
        ],
    )
    .await?;
    all_committed(&topic, &group, 10, &writer).await?;

    assert_eq!(pg.count("events", "observation_id").await?, (5, 5));
    let layout: Vec<(String, String)> = pg.columns("events").await?;
    let names: Vec<&str> = layout.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        ["observation_id", "pkey", "amount", "inserted_at", "country"]
    );
    let country = pg
        .client
        .query(
            &format!(
                "SELECT observation_id, country FROM {} ORDER BY observation_id",
                pg.table("events")
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<anyhow::Result<Vec<(String, Option<String>)>>>()?;
    assert_eq!(
        country,
        [
            ("e1".into(), None),
            ("e2".into(), None),
            ("e3".into(), None),
            ("e4".into(), Some("de".into())),
            ("e5".into(), Some("fr".into())),
        ]
    );
    assert_eq!(pg.count("clicks", "id").await?, (6, 6));
    let keys = pg.texts("bgpersist_loads", "idempotency_key").await?;
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys.starts_with(&["k1".to_string(), "k2".into(), "k3".into()]));
    assert!(keys[3].starts_with("sha256:"), "{keys:?}");

    let letters = dlq_letters(&dlq, 3).await?;
    let reason = |p: &[u8]| reason_of(&letters, p).unwrap_or_default().to_string();
    assert!(
        reason(&malformed).contains("events: not a readable parquet file"),
        "{letters:?}"
    );
    assert!(reason(&hostile).contains("table name"), "{letters:?}");
    assert!(
        reason(&retyped).contains("\"amount\" of table events is bigint; these rows carry text"),
        "{letters:?}"
    );
    pg.drop().await;
    Ok(())
}

/// A `query_log` batch of `n` queries with ids `<run>-op-<i>`.
fn query_log(run: &str, n: usize) -> anyhow::Result<RecordBatch> {
    let col = |f: &dyn Fn(usize) -> String| texts(&(0..n).map(f).collect::<Vec<_>>());
    let ts = |offset: i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(
                (0..n as i64)
                    .map(|i| 1_700_000_000_000_000 + i * 1_000 + offset)
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let mut tables = ListBuilder::new(StringBuilder::new());
    for _ in 0..n {
        tables.values().append_value("user__age");
        tables.values().append_value("user__score");
        tables.append(true);
    }
    Ok(RecordBatch::try_from_iter([
        ("operation_id", col(&|i| format!("{run}-op-{i}"))),
        ("environment_id", col(&|_| "env-1".into())),
        ("deployment_id", col(&|_| "dep-1".into())),
        ("operation_kind", col(&|_| "online_query".into())),
        ("query_timestamp", ts(0)),
        ("execution_started_at", ts(10)),
        ("execution_finished_at", ts(900)),
        ("query_status", col(&|_| "success".into())),
        ("query_name", col(&|_| "user_features".into())),
        ("query_name_version", col(&|_| "3".into())),
        ("branch_name", col(&|_| "main".into())),
        ("correlation_id", col(&|i| format!("corr-{i}"))),
        ("value_tables", Arc::new(tables.finish()) as ArrayRef),
        ("agent_id", col(&|_| "agent".into())),
        ("trace_id", col(&|i| format!("trace-{i}"))),
        ("query_plan_id", col(&|_| "plan".into())),
        ("meta_query_hash", col(&|_| "hash".into())),
    ])?)
}

#[tokio::test]
async fn streaming_drop_ratio_samples_query_log_by_operation_id() -> anyhow::Result<()> {
    const QUERIES: usize = 60;
    let run = unique("q");
    let body = to_parquet(&query_log(&run, QUERIES)?)?;
    let mut cases = Vec::new();
    for ratio in [1.0, 0.0, 0.5] {
        let (topic, dlq, group) = (unique("stream"), unique("dlq"), unique("grp"));
        create_topics(&[(&topic, 2), (&dlq, 1)]).await?;
        let pg = PgSchema::create().await?;
        // The query log, a feature table beside it, and the query log replayed
        // under another key (a producer retry): sampled the same way again.
        let messages = [
            streaming_message("query_log", body.clone(), "ql-1"),
            streaming_message("events", events(&["e1"], vec![])?, "ev-1"),
            streaming_message("query_log", body.clone(), "ql-1-retry"),
        ];
        produce(&topic, &messages).await?;
        let mut env = offline_env(
            "OFFLINE_STORE_STREAMING_INSERT_WRITER",
            &topic,
            &dlq,
            &group,
            &pg.uri(),
        );
        env.push(("BGP_QUERY_TABLE_WRITE_DROP_RATIO", ratio.to_string()));
        let writer = Writer::start(&env)?;
        cases.push((ratio, topic, group, pg, writer));
    }
    for (ratio, topic, group, pg, writer) in cases {
        all_committed(&topic, &group, 3, &writer).await?;
        assert_eq!(
            pg.count("events", "observation_id").await?,
            (1, 1),
            "ratio {ratio}"
        );
        let ids = if pg.exists("query_log").await? {
            pg.texts("query_log", "operation_id").await?
        } else {
            Vec::new()
        };
        let mut want: Vec<String> = (0..QUERIES)
            .map(|i| format!("{run}-op-{i}"))
            .filter(|id| drop_ratio::keeps(id, ratio))
            .collect();
        want.sort();
        assert_eq!(ids, want, "ratio {ratio}");
        if ratio == 0.0 {
            assert_eq!(ids.len(), QUERIES);
            let layout = pg.columns("query_log").await?;
            let ty = |c: &str| layout.iter().find(|(n, _)| n == c).map(|(_, t)| t.as_str());
            assert_eq!(ty("value_tables"), Some("ARRAY"));
            assert_eq!(ty("query_timestamp"), Some("timestamp with time zone"));
            let tables: Vec<String> = pg
                .client
                .query_one(
                    &format!(
                        "SELECT value_tables FROM {} WHERE operation_id = $1",
                        pg.table("query_log")
                    ),
                    &[&format!("{run}-op-0")],
                )
                .await?
                .try_get(0)?;
            assert_eq!(tables, ["user__age", "user__score"]);
        } else if ratio == 1.0 {
            assert!(ids.is_empty());
        } else {
            assert!(!ids.is_empty() && ids.len() < QUERIES, "{} kept", ids.len());
        }
        pg.drop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_streaming_replayed_twice_adds_nothing_and_malformed_is_dead_lettered()
-> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let result = pubsub_streaming(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn pubsub_streaming(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let ack = Duration::from_secs(10);
    let topic = ps.topic(&unique("stream")).await?;
    let sub = unique("offline");
    ps.subscription(&sub, &topic, ack).await?;
    let dlq = ps.topic(&unique("dlq")).await?;
    let dlq_sub = ps.subscription(&unique("dlq-reader"), &dlq, ack).await?;
    let pg = PgSchema::create().await?;

    let good = streaming_message("events", events(&["a", "b", "c"], vec![])?, "ps-1");
    let malformed = streaming_message("events", b"garbage".to_vec(), "ps-2");
    let messages: Vec<Outgoing> = [good.clone(), malformed.clone(), good.clone(), good]
        .into_iter()
        .map(|p| (p, Vec::new()))
        .collect();
    pubsub_publish(&topic, &messages).await?;

    let mut env = online_pubsub_writer_env(&sub, Some(&dlq), "", ack);
    env.retain(|(k, _)| {
        !matches!(
            *k,
            "BGP_WRITER_TYPE" | "BGP_WRITER_NAME" | "BGP_ONLINE_STORE_URI"
        )
    });
    env.extend([
        (
            "BGP_WRITER_TYPE",
            "OFFLINE_STORE_STREAMING_INSERT_WRITER".into(),
        ),
        ("BGP_WRITER_NAME", "offline".into()),
        ("BGP_OFFLINE_STORE_URI", pg.uri()),
    ]);
    let writer = Writer::start(&env)?;
    eventually(
        "all four messages handled",
        Duration::from_secs(60),
        || async {
            let written = writer
                .metric("bgpersist_writer_records_written_total")
                .unwrap_or(0.0);
            let dead = writer
                .metric("bgpersist_writer_messages_dead_lettered_total")
                .unwrap_or(0.0);
            Ok((written >= 3.0 && dead >= 1.0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert_eq!(pg.count("events", "observation_id").await?, (3, 3));
    assert_eq!(
        pg.count("bgpersist_loads", "idempotency_key").await?,
        (1, 1)
    );

    let mut reader = PubsubReader::start(&dlq_sub, ack, 1).await?;
    let letters = reader.receive(1, Duration::from_secs(30)).await?;
    assert_eq!(letters[0].data.as_ref(), malformed.as_slice());
    let reason = letters[0]
        .attributes
        .get("bgp-dlq-error-message")
        .cloned()
        .unwrap_or_default();
    assert!(reason.contains("not a readable parquet file"), "{reason}");
    reader.stop().await?;
    pg.drop().await;
    Ok(())
}
