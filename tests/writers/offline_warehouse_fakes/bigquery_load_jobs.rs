//! Bulk objects in Cloud Storage into the BigQuery store through load jobs,
//! against FakeBigQuery: the writer sends the documented job, reads none of
//! the rows, waits for DONE, a replay meets its earlier job (409) and adds
//! nothing, and a failed job is refused with BigQuery's reason. What this
//! cannot show: that real BigQuery loads the parquet as the fake pretends.

use super::Untouched;
use super::fake_bigquery::FakeBigQuery;
use bgpersist::writer::stores::offline::OfflineStore;
use bgpersist::writer::stores::offline::bigquery::{BigQueryStore, BigQueryTarget, GoogleAuth};
use bgpersist::writer::stores::offline::object::ObjectLoad;
use serde_json::json;
use std::sync::Arc;

fn object(uri: &str, key: &str, source: Arc<Untouched>) -> ObjectLoad {
    ObjectLoad {
        uri: uri.into(),
        table: "events".into(),
        idempotency_key: key.into(),
        rows: 2,
        schema: None,
        source,
        transformed: false,
    }
}

#[tokio::test]
async fn fake_bigquery_gs_objects_load_with_one_job_and_replays_add_nothing() -> anyhow::Result<()>
{
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let target = BigQueryTarget::parse("bigquery://proj/features", Some(fake.url.as_str()))?;
    let store = BigQueryStore::connect(target, GoogleAuth::Anonymous).await?;
    let uri = "gs://uploads/day=1/part-0.parquet";
    fake.put_object(
        uri,
        vec![
            json!({"name": "observation_id", "type": "STRING", "mode": "NULLABLE"}),
            json!({"name": "value", "type": "INTEGER", "mode": "NULLABLE"}),
        ],
        vec![
            json!({"observation_id": "o1", "value": 1}),
            json!({"observation_id": "o2", "value": 2}),
        ],
    );
    let source = Arc::new(Untouched::default());
    let load = object(uri, "day-1", source.clone());
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(fake.rows("features", "events").len(), 2);
    assert_eq!(source.opens(), 0, "rows were read");

    let jobs = fake.calls("POST", "/projects/proj/jobs");
    assert_eq!(jobs.len(), 1);
    let id = store.job_id(&load);
    assert_eq!(jobs[0].body["jobReference"]["jobId"], json!(id));
    assert_eq!(
        jobs[0].body["configuration"]["load"],
        json!({
            "sourceUris": [uri],
            "sourceFormat": "PARQUET",
            "destinationTable": {"projectId": "proj", "datasetId": "features", "tableId": "events"},
            "createDisposition": "CREATE_IF_NEEDED",
            "writeDisposition": "WRITE_APPEND",
            "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
        })
    );
    // The job answered RUNNING: the store asked until DONE.
    assert!(!fake.calls("GET", &format!("/jobs/{id}")).is_empty());

    // Replayed: the same job id meets 409, the store waits for that job.
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(fake.rows("features", "events").len(), 2);
    assert_eq!(fake.calls("POST", "/projects/proj/jobs").len(), 2);

    // Another key is another job.
    assert_eq!(
        store
            .load_object(&object(uri, "day-1-again", source.clone()))
            .await?,
        None
    );
    assert_eq!(fake.rows("features", "events").len(), 4);
    assert_eq!(source.opens(), 0);
    Ok(())
}

#[tokio::test]
async fn fake_bigquery_a_failed_load_job_is_refused_with_its_reason() -> anyhow::Result<()> {
    let fake = FakeBigQuery::start("proj", &["features"]).await?;
    let target = BigQueryTarget::parse("bigquery://proj/features", Some(fake.url.as_str()))?;
    let store = BigQueryStore::connect(target, GoogleAuth::Anonymous).await?;
    let source = Arc::new(Untouched::default());
    let missing = object("gs://uploads/nope.parquet", "k", source.clone());
    let refused = store.load_object(&missing).await?.unwrap_or_default();
    assert!(
        refused.contains("notFound: Not found: URI gs://uploads/nope.parquet"),
        "{refused}"
    );
    assert!(fake.rows("features", "events").is_empty());
    // S3 objects cannot be loaded by a job: their rows are read (here, the
    // source refuses, which shows it was opened).
    let s3 = object("s3://uploads/a.parquet", "k2", source.clone());
    let refused = store.load_object(&s3).await?.unwrap_or_default();
    assert!(refused.contains("the store read the rows"), "{refused}");
    assert_eq!(source.opens(), 1);
    // Nor can sampled (query_log) rows: they are read and filtered.
    let sampled = ObjectLoad {
        transformed: true,
        ..object("gs://uploads/q.parquet", "k3", source.clone())
    };
    let refused = store.load_object(&sampled).await?.unwrap_or_default();
    assert!(refused.contains("the store read the rows"), "{refused}");
    assert_eq!(source.opens(), 2);
    assert_eq!(fake.calls("POST", "/projects/proj/jobs").len(), 1);
    Ok(())
}
