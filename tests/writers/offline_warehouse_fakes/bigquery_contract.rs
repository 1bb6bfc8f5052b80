//! The BigQuery offline store against FakeBigQuery. These show the requests
//! the store makes and how it handles BigQuery's documented answers; they do
//! not show that real BigQuery accepts them or deduplicates as the fake does.

use super::fake_bigquery::FakeBigQuery;
use super::{
    feature_rows, json_feature_rows, query_log_rows, split_inserted_at, text_value_rows,
    with_column,
};
use bgpersist::writer::runtime::sink::WriterError;
use bgpersist::writer::stores::offline::OfflineStore;
use bgpersist::writer::stores::offline::bigquery::{BigQueryStore, BigQueryTarget, GoogleAuth};
use bgpersist::writer::stores::offline::warehouse::WarehouseError;
use serde_json::{Value, json};

async fn store(fake: &FakeBigQuery, auth: GoogleAuth) -> anyhow::Result<BigQueryStore> {
    let target = BigQueryTarget::parse("bigquery://proj/features", Some(fake.url.as_str()))?;
    Ok(BigQueryStore::connect(target, auth).await?)
}

fn insert_ids(body: &Value) -> Vec<String> {
    body["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["insertId"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn retriable(
    result: Result<Vec<bgpersist::writer::runtime::sink::Rejected>, WriterError>,
) -> String {
    match result {
        Err(WriterError::Retriable(reason)) => reason,
        Err(other) => format!("unexpected {} error: {other}", other.label()),
        Ok(r) => format!("unexpected success: {r:?}"),
    }
}

/// FakeBigQuery: a missing table is created from the Arrow schema plus
/// `inserted_at` (with day partitioning on `observed_at`), rows arrive as
/// insertAll JSON with their observation / operation ids as insertIds, and
/// a replay (same store or a restarted one) sends the same insertIds, so
/// the fake keeps one copy.
#[tokio::test]
async fn fake_bigquery_rows_land_with_insert_ids_and_a_replay_adds_nothing() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let bq = store(&fake, GoogleAuth::Anonymous).await?;
    let rows = vec![
        feature_rows("user__age", &[("o1", 30), ("o2", 41)])?,
        query_log_rows(&["op-1"])?,
    ];
    assert_eq!(bq.load(&rows).await?, vec![]);

    let nullable = |name: &str, ty: &str| json!({"name": name, "type": ty, "mode": "NULLABLE"});
    assert_eq!(
        fake.fields("features", "user__age"),
        vec![
            nullable("observation_id", "STRING"),
            nullable("pkey", "STRING"),
            nullable("value", "INTEGER"),
            nullable("observed_at", "TIMESTAMP"),
            nullable("resolver_fqn", "STRING"),
            nullable("inserted_at", "TIMESTAMP"),
        ]
    );
    assert_eq!(
        fake.partitioning("features", "user__age"),
        Some(json!({"type": "DAY", "field": "observed_at"}))
    );
    assert_eq!(
        fake.partitioning("features", "query_log"),
        Some(json!({"type": "DAY", "field": "query_timestamp"}))
    );
    let inserts = fake.calls("POST", "/datasets/features/tables/user__age/insertAll");
    assert_eq!(inserts.len(), 1);
    assert_eq!(
        inserts[0].body["kind"],
        "bigquery#tableDataInsertAllRequest"
    );
    assert_eq!(inserts[0].body["skipInvalidRows"], false);
    assert_eq!(insert_ids(&inserts[0].body), ["o1", "o2"]);
    let row = |id: &str, v: i64| {
        json!({"observation_id": id, "pkey": "u1", "value": v,
            "observed_at": "2023-11-14T22:13:20.000000Z", "resolver_fqn": "user.age"})
    };
    let stored = fake.rows("features", "user__age");
    let (plain, stamps) = split_inserted_at(stored.clone());
    assert_eq!(plain, vec![row("o1", 30), row("o2", 41)]);
    assert!(
        stamps.iter().all(|s| s.len() == 27 && s.ends_with('Z')),
        "{stamps:?}"
    );
    let log = fake.calls("POST", "/tables/query_log/insertAll");
    assert_eq!(insert_ids(&log[0].body), ["op-1"]);
    assert_eq!(
        fake.fields("features", "query_log")[1],
        json!({"name": "value_tables", "type": "STRING", "mode": "REPEATED"})
    );
    assert_eq!(
        fake.rows("features", "query_log")[0]["value_tables"],
        json!(["user__age", "user__score"])
    );

    // Replayed by the same store, then by a fresh one (a restarted writer).
    assert_eq!(bq.load(&rows).await?, vec![]);
    let restarted = store(&fake, GoogleAuth::Anonymous).await?;
    assert_eq!(restarted.load(&rows).await?, vec![]);
    let inserts = fake.calls("POST", "/datasets/features/tables/user__age/insertAll");
    assert_eq!(inserts.len(), 3);
    // Same insertIds and rows; only `inserted_at` (the load time) differs.
    assert!(inserts.iter().all(|r| insert_ids(&r.body) == ["o1", "o2"]));
    let sent = |r: &super::fake_bigquery::Recorded| {
        let rows = r.body["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x["json"].clone());
        split_inserted_at(rows.collect()).0
    };
    assert!(inserts.iter().all(|r| sent(r) == sent(&inserts[0])));
    assert_eq!(
        fake.rows("features", "user__age"),
        stored,
        "replays changed nothing"
    );
    assert_eq!(fake.rows("features", "query_log").len(), 1);
    // The table was created once; the restarted store found it with tables.get.
    assert_eq!(fake.calls("POST", "/datasets/features/tables").len(), 2);
    Ok(())
}

/// FakeBigQuery: a JSON feature (text tagged `arrow.json`) gets a JSON
/// column, its value sent as the JSON text insertAll expects for JSON.
#[tokio::test]
async fn fake_bigquery_json_values_go_to_a_json_column() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let bq = store(&fake, GoogleAuth::Anonymous).await?;
    let rows = vec![json_feature_rows(
        "user__tags",
        &[("t1", r#"{"n":1,"tags":["a"]}"#)],
    )?];
    assert_eq!(bq.load(&rows).await?, vec![]);
    let fields = fake.fields("features", "user__tags");
    assert_eq!(
        fields[1],
        json!({"name": "value", "type": "JSON", "mode": "NULLABLE"})
    );
    let (plain, _) = split_inserted_at(fake.rows("features", "user__tags"));
    assert_eq!(
        plain,
        vec![json!({"observation_id": "t1", "value": r#"{"n":1,"tags":["a"]}"#})]
    );
    Ok(())
}

/// FakeBigQuery: a column the table lacks is added with tables.patch (all
/// current fields, as BigQuery returned them, plus the new NULLABLE one)
/// before the rows that carry it are inserted.
#[tokio::test]
async fn fake_bigquery_new_column_patches_the_schema() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let bq = store(&fake, GoogleAuth::Anonymous).await?;
    bq.load(&[feature_rows("user__age", &[("o1", 30)])?])
        .await?;
    let before = fake.fields("features", "user__age");
    assert!(fake.calls("PATCH", "/tables/user__age").is_empty());

    let wider = with_column(
        feature_rows("user__age", &[("o2", 31)])?,
        "source",
        vec!["batch"],
    )?;
    assert_eq!(bq.load(&[wider]).await?, vec![]);
    let patches = fake.calls("PATCH", "/datasets/features/tables/user__age");
    assert_eq!(patches.len(), 1);
    let mut expected = before.clone();
    expected.push(json!({"name": "source", "type": "STRING", "mode": "NULLABLE"}));
    assert_eq!(patches[0].body["schema"]["fields"], Value::Array(expected));
    let rows = fake.rows("features", "user__age");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["source"], "batch");
    assert!(rows[0].get("source").is_none());
    Ok(())
}

/// FakeBigQuery: 503, 429 and 500 answers (Google error bodies) make the
/// load Retriable (the runtime then backs off and calls again), as does a
/// refused token (401); once the fake recovers the rows land exactly once.
#[tokio::test]
async fn fake_bigquery_5xx_429_and_401_are_retriable() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let bq = store(&fake, GoogleAuth::Anonymous).await?;
    let rows = vec![feature_rows("user__age", &[("o1", 30), ("o2", 41)])?];
    fake.fail_inserts(&[503, 429, 500]);
    let first = retriable(bq.load(&rows).await);
    assert!(first.contains("HTTP 503 backendError"), "{first}");
    let second = retriable(bq.load(&rows).await);
    assert!(second.contains("HTTP 429 rateLimitExceeded"), "{second}");
    let third = retriable(bq.load(&rows).await);
    assert!(third.contains("HTTP 500"), "{third}");
    assert!(fake.rows("features", "user__age").is_empty());
    assert_eq!(bq.load(&rows).await?, vec![]);
    assert_eq!(fake.rows("features", "user__age").len(), 2);

    fake.require_bearer("some-token");
    let refused = retriable(bq.load(&rows).await);
    assert!(refused.contains("HTTP 401"), "{refused}");
    Ok(())
}

/// FakeBigQuery: with skipInvalidRows false an invalid row stops the whole
/// request; the store rejects the entry holding it (Rejected with BigQuery's
/// reason) and sends the other entries again, which then land. An entry
/// with a column type BigQuery has no type for is rejected before sending.
#[tokio::test]
async fn fake_bigquery_invalid_rows_reject_only_their_entry() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let bq = store(&fake, GoogleAuth::Anonymous).await?;
    bq.load(&[feature_rows("user__age", &[("o1", 30)])?])
        .await?;

    let mut odd = feature_rows("user__age", &[("o9", 1)])?;
    odd.batch = arrow_array::RecordBatch::try_from_iter([(
        "observation_id",
        std::sync::Arc::new(arrow_array::DurationSecondArray::from(vec![5]))
            as arrow_array::ArrayRef,
    )])?;
    let rows = vec![
        feature_rows("user__age", &[("o2", 31), ("o3", 32)])?,
        text_value_rows("user__age", "o4", "abc")?,
        feature_rows("user__age", &[("o5", 35)])?,
        odd,
    ];
    let rejected = bq.load(&rows).await?;
    let indexes: Vec<usize> = rejected.iter().map(|r| r.record).collect();
    assert_eq!(indexes, [3, 1], "{rejected:?}");
    assert!(
        rejected[0].reason.contains("has no BigQuery type"),
        "{rejected:?}"
    );
    assert!(
        rejected[1]
            .reason
            .contains("Cannot convert value to integer (bad value): abc"),
        "{rejected:?}"
    );
    let ids: Vec<Value> = fake
        .rows("features", "user__age")
        .iter()
        .map(|r| r["observation_id"].clone())
        .collect();
    assert_eq!(ids, [json!("o1"), json!("o2"), json!("o3"), json!("o5")]);
    // The first attempt carried all three entries; the second only the valid ones.
    let inserts = fake.calls("POST", "/tables/user__age/insertAll");
    assert_eq!(insert_ids(&inserts[1].body), ["o2", "o3", "o4", "o5"]);
    assert_eq!(insert_ids(&inserts[2].body), ["o2", "o3", "o5"]);
    Ok(())
}

/// FakeBigQuery + its OAuth token endpoint: credentials built by
/// google-cloud-auth from an `authorized_user` ADC file are exchanged for a
/// token once and sent as `Authorization: Bearer` on every API call. Not
/// shown: Workload Identity's metadata server, real token lifetimes.
#[tokio::test]
async fn fake_bigquery_adc_token_is_sent_as_bearer() -> anyhow::Result<()> {
    bgpersist::install_crypto_provider();
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let adc = json!({"type": "authorized_user", "client_id": "client", "client_secret": "secret",
        "refresh_token": "refresh", "token_uri": format!("{}/token", fake.url)});
    let credentials = google_cloud_auth::credentials::user_account::Builder::new(adc)
        .build_access_token_credentials()?;
    fake.require_bearer("ya29.fake-1");
    let bq = store(&fake, GoogleAuth::Credentials(credentials)).await?;
    assert_eq!(
        bq.load(&[feature_rows("user__age", &[("o1", 30)])?])
            .await?,
        vec![]
    );
    assert_eq!(fake.rows("features", "user__age").len(), 1);
    let requests = fake.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer ya29.fake-1"))
    );
    assert_eq!(fake.tokens_issued(), 1);
    Ok(())
}

/// FakeBigQuery: a dataset that does not exist is a configuration error at
/// startup, naming the project and dataset.
#[tokio::test]
async fn fake_bigquery_missing_dataset_is_a_configuration_error() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let target = BigQueryTarget::parse("bigquery://proj/nope", Some(fake.url.as_str()))?;
    match BigQueryStore::connect(target, GoogleAuth::Anonymous).await {
        Err(WarehouseError::Missing(msg)) => {
            assert!(msg.contains("proj:nope does not exist"), "{msg}")
        }
        Err(e) => anyhow::bail!("unexpected error {e}"),
        Ok(_) => anyhow::bail!("a missing dataset was accepted"),
    }
    Ok(())
}
