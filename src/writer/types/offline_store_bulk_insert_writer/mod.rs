//! OFFLINE_STORE_BULK_INSERT_WRITER: `BulkInsertMessage`s point at parquet
//! objects (`s3://bucket/key`, `gs://bucket/key`). Their footers are read
//! while the batch is written (decode is synchronous and does no I/O); each
//! object then streams into the store by row group, one transaction per
//! object, so an object of any size loads in bounded memory.
//!
//! Object stores are configured from the environment (`stores::objects`).
//! A missing object is refused for good
//! (dead-lettered with the reason); an unreachable store is retried.

use crate::formats::Message;
use crate::formats::v1::BulkInsertMessage;
use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::objects::open_bucket;
pub use crate::writer::stores::objects::{Scheme, parse_uri};
use crate::writer::stores::offline::ident;
use crate::writer::stores::offline::object::{ObjectLoad, SourceError};
use crate::writer::stores::offline::parquet_object::ParquetObject;
use crate::writer::stores::offline::sink::{Decoder, Prepared};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Objects whose footers are read at once.
const LOCATE_CONCURRENCY: usize = 4;

/// A decoded bulk-insert message.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRef {
    pub uri: String,
    pub scheme: Scheme,
    pub bucket: String,
    pub key: String,
    pub table: String,
    /// Rows the producer says the object holds; 0: unchecked.
    pub row_count: i64,
    pub idempotency_key: Option<String>,
}

/// Decodes bulk-insert messages and fetches their objects.
pub struct BulkDecoder {
    /// `bigquery_upload_bucket`: when set, objects must live in it.
    upload_bucket: Option<(Option<Scheme>, String)>,
    stores: Mutex<HashMap<(Scheme, String), Arc<dyn ObjectStore>>>,
}

impl BulkDecoder {
    /// `upload_bucket` is `bucket`, `s3://bucket` or `gs://bucket`.
    pub fn new(upload_bucket: Option<&str>) -> Self {
        let upload_bucket = upload_bucket
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| match b.split_once("://") {
                Some((s, rest)) => (
                    parse_uri(&format!("{s}://{rest}/x")).ok().map(|p| p.0),
                    rest.trim_end_matches('/').to_string(),
                ),
                None => (None, b.trim_end_matches('/').to_string()),
            });
        BulkDecoder {
            upload_bucket,
            stores: Mutex::new(HashMap::new()),
        }
    }

    pub fn decode(&self, payload: &[u8]) -> Result<Vec<ObjectRef>, String> {
        let msg = BulkInsertMessage::decode(payload)
            .map_err(|e| format!("not a bgpersist.bus.v1.BulkInsertMessage: {e}"))?;
        ident::check_table(&msg.table)?;
        let (scheme, bucket, key) = parse_uri(&msg.uri)?;
        if let Some((want_scheme, want_bucket)) = &self.upload_bucket
            && (*want_bucket != bucket || want_scheme.is_some_and(|s| s != scheme))
        {
            return Err(format!(
                "uri {:?} is outside the upload bucket {want_bucket:?}",
                msg.uri
            ));
        }
        Ok(vec![ObjectRef {
            uri: msg.uri,
            scheme,
            bucket,
            key,
            table: msg.table,
            row_count: msg.row_count,
            idempotency_key: (!msg.idempotency_key.is_empty()).then_some(msg.idempotency_key),
        }])
    }

    fn store(&self, scheme: Scheme, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let id = (scheme, bucket.to_string());
        if let Some(s) = self.stores.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let store = open_bucket(scheme, bucket)?;
        if let Ok(mut m) = self.stores.lock() {
            m.insert(id, store.clone());
        }
        Ok(store)
    }

    /// Finds the object and reads its footer; its rows stream while it loads.
    async fn locate(&self, obj: &ObjectRef) -> Result<ObjectLoad, SourceError> {
        let store = self
            .store(obj.scheme, &obj.bucket)
            .map_err(SourceError::Unavailable)?;
        let path = Path::parse(&obj.key).map_err(|e| SourceError::Refused(e.to_string()))?;
        let meta = store
            .head(&path)
            .await
            .map_err(|e| SourceError::from_store(&obj.uri, &e))?;
        let version = meta
            .e_tag
            .clone()
            .unwrap_or_else(|| format!("{}@{}", meta.size, meta.last_modified));
        let object =
            ParquetObject::open(&obj.uri, store, path, meta.size, meta.e_tag.clone()).await?;
        let rows = object.rows();
        if obj.row_count > 0 && obj.row_count as u64 != rows {
            return Err(SourceError::Refused(format!(
                "{}: the message says {} rows, the object holds {rows}",
                obj.uri, obj.row_count
            )));
        }
        Ok(ObjectLoad {
            uri: obj.uri.clone(),
            table: obj.table.clone(),
            // Without a producer key, the object's version identifies the load.
            idempotency_key: obj
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("object:{}#{version}", obj.uri)),
            rows,
            schema: Some(object.schema()),
            source: Arc::new(object),
            transformed: false,
        })
    }
}

impl Decoder for BulkDecoder {
    type Item = ObjectRef;

    fn decode(&self, payload: &[u8]) -> Result<Vec<ObjectRef>, String> {
        BulkDecoder::decode(self, payload)
    }

    async fn prepare(&self, items: &[ObjectRef]) -> Result<Prepared, WriterError> {
        let locates: Vec<_> = items.iter().map(|obj| self.locate(obj)).collect();
        let located: Vec<Result<ObjectLoad, SourceError>> = futures::stream::iter(locates)
            .buffered(LOCATE_CONCURRENCY)
            .collect()
            .await;
        let mut prepared = Prepared::default();
        for (i, result) in located.into_iter().enumerate() {
            match result {
                Ok(object) if object.rows == 0 => {}
                Ok(object) => prepared.objects.push((i, object)),
                Err(SourceError::Refused(reason)) => {
                    prepared.rejected.push(Rejected { record: i, reason })
                }
                Err(SourceError::Unavailable(reason)) => {
                    return Err(WriterError::Retriable(reason));
                }
            }
        }
        Ok(prepared)
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(uri: &str, table: &str) -> Vec<u8> {
        BulkInsertMessage {
            uri: uri.into(),
            table: table.into(),
            row_count: 3,
            idempotency_key: String::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn uris_name_a_scheme_bucket_and_key() {
        assert_eq!(
            parse_uri("s3://up/day=1/part-0.parquet"),
            Ok((Scheme::S3, "up".into(), "day=1/part-0.parquet".into()))
        );
        assert_eq!(parse_uri("gs://up/a.parquet").map(|p| p.0), Ok(Scheme::Gcs));
        for bad in [
            "up/a.parquet",
            "http://up/a",
            "s3://up",
            "s3:///a",
            "s3://up/a//b",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_outside_the_upload_bucket_are_refused() -> Result<(), String> {
        let d = BulkDecoder::new(Some("s3://uploads"));
        let ok = d.decode(&message("s3://uploads/a.parquet", "events"))?;
        assert_eq!(ok[0].bucket, "uploads");
        assert_eq!(ok[0].idempotency_key, None);
        let err = d
            .decode(&message("s3://other/a.parquet", "events"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("outside the upload bucket"), "{err}");
        let err = d
            .decode(&message("gs://uploads/a.parquet", "events"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("outside the upload bucket"), "{err}");
        let any = BulkDecoder::new(Some("uploads"));
        assert!(
            any.decode(&message("gs://uploads/a.parquet", "events"))
                .is_ok()
        );
        let unset = BulkDecoder::new(None);
        assert!(unset.decode(&message("gs://x/a.parquet", "events")).is_ok());
        let err = unset
            .decode(&message("s3://x/a", "drop table"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("table name"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_store_is_retriable() -> Result<(), String> {
        use object_store::RetryConfig;
        use object_store::aws::AmazonS3Builder;
        // A closed local port: nothing leaves the machine.
        let d = BulkDecoder::new(None);
        let store = AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:1")
            .with_allow_http(true)
            .with_access_key_id("x")
            .with_secret_access_key("y")
            .with_retry(RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .map_err(|e| e.to_string())?;
        if let Ok(mut m) = d.stores.lock() {
            m.insert((Scheme::S3, "b".into()), Arc::new(store));
        }
        let obj = d.decode(&message("s3://b/a.parquet", "events"))?;
        let result = d.prepare(&obj).await;
        assert!(
            matches!(result, Err(WriterError::Retriable(_))),
            "{result:?}"
        );
        Ok(())
    }
}
