//! Bulk objects into the Snowflake store with `COPY INTO` through the
//! resource's storage integration, against FakeSnowflake: the table is made
//! from the object's footer schema, the writer reads none of the rows, a
//! replay is skipped by load metadata, rows that do not cast refuse the
//! object, and a wrong integration is retried (a configuration error). What
//! this cannot show: that real Snowflake reads the parquet as the fake
//! pretends.

use super::Untouched;
use super::fake_snowflake::FakeSnowflake;
use arrow_schema::{DataType, Field, Schema};
use bgpersist::writer::runtime::sink::WriterError;
use bgpersist::writer::stores::offline::OfflineStore;
use bgpersist::writer::stores::offline::object::ObjectLoad;
use bgpersist::writer::stores::offline::snowflake::{SnowflakeStore, parse_uri};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

fn store(fake: &FakeSnowflake, integration: &str) -> anyhow::Result<SnowflakeStore> {
    let uri = "snowflake://loader@xy12345.eu-west-1/DB/SCH?warehouse=WH&token=t";
    let (target, auth) = parse_uri(uri, Some(fake.url.as_str()))?;
    Ok(SnowflakeStore::new(target, auth)?.with_storage_integration(Some(integration.into())))
}

fn object(uri: &str, source: Arc<Untouched>) -> ObjectLoad {
    ObjectLoad {
        uri: uri.into(),
        table: "events".into(),
        idempotency_key: "k".into(),
        rows: 2,
        schema: Some(Arc::new(Schema::new(vec![
            Field::new("observation_id", DataType::Utf8, false),
            Field::new("value", DataType::Int64, true),
        ]))),
        source,
        transformed: false,
    }
}

fn rows(values: &[(&str, Value)]) -> Vec<BTreeMap<String, Value>> {
    values
        .iter()
        .map(|(id, v)| {
            BTreeMap::from([
                ("observation_id".to_string(), json!(id)),
                ("value".to_string(), v.clone()),
            ])
        })
        .collect()
}

fn copies(fake: &FakeSnowflake) -> Vec<String> {
    fake.statements()
        .into_iter()
        .filter(|s| s.starts_with("COPY INTO"))
        .collect()
}

#[tokio::test]
async fn fake_snowflake_objects_load_with_copy_into_and_replays_are_skipped() -> anyhow::Result<()>
{
    let fake = FakeSnowflake::start().await?;
    fake.create_integration("bgp_int");
    fake.put_object(
        "gcs://uploads/a.parquet",
        rows(&[("o1", json!(1)), ("o2", json!(2))]),
    );
    let store = store(&fake, "bgp_int")?;
    let source = Arc::new(Untouched::default());
    let load = object("gs://uploads/a.parquet", source.clone());
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(fake.rows("events").len(), 2);
    assert_eq!(
        fake.columns("events")
            .iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>(),
        ["OBSERVATION_ID VARCHAR", "VALUE NUMBER(38,0)"]
    );
    assert_eq!(
        copies(&fake),
        [
            "COPY INTO \"EVENTS\" FROM 'gcs://uploads/a.parquet' STORAGE_INTEGRATION = \"BGP_INT\" \
          FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE \
          ON_ERROR = ABORT_STATEMENT"
        ]
    );
    // Replayed: Snowflake's load metadata skips the file.
    assert_eq!(store.load_object(&load).await?, None);
    assert_eq!(fake.rows("events").len(), 2);
    assert_eq!(copies(&fake).len(), 2);
    assert_eq!(source.opens(), 0, "rows were read");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    Ok(())
}

#[tokio::test]
async fn fake_snowflake_bad_rows_refuse_the_object_and_a_wrong_integration_is_retried()
-> anyhow::Result<()> {
    let fake = FakeSnowflake::start().await?;
    fake.create_integration("bgp_int");
    fake.put_object("s3://uploads/bad.parquet", rows(&[("o1", json!("abc"))]));
    let source = Arc::new(Untouched::default());
    let refused = store(&fake, "bgp_int")?
        .load_object(&object("s3://uploads/bad.parquet", source.clone()))
        .await?
        .unwrap_or_default();
    assert!(
        refused.contains("Snowflake refused the rows of s3://uploads/bad.parquet"),
        "{refused}"
    );
    assert!(fake.rows("events").is_empty());

    let result = store(&fake, "other_int")?
        .load_object(&object("s3://uploads/bad.parquet", source.clone()))
        .await;
    assert!(
        matches!(&result, Err(WriterError::Retriable(r)) if r.contains("does not exist or not authorized")),
        "{result:?}"
    );
    assert_eq!(source.opens(), 0);
    Ok(())
}
