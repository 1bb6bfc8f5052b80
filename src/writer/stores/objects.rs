//! Objects named by `s3://bucket/key` or `gs://bucket/key`, and clients for
//! their buckets configured from the environment like the cloud SDKs:
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or the pod's web
//! identity, `AWS_ENDPOINT_URL` (+ `AWS_ALLOW_HTTP=true`) for an S3-compatible
//! endpoint; `GOOGLE_APPLICATION_CREDENTIALS`/workload identity and
//! `GOOGLE_BASE_URL` for GCS.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    S3,
    Gcs,
}

impl Scheme {
    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
        }
    }
}

/// Splits `s3://bucket/key` or `gs://bucket/key`.
pub fn parse_uri(uri: &str) -> Result<(Scheme, String, String), String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("uri {uri:?} is not s3://bucket/key or gs://bucket/key"))?;
    let scheme = match scheme {
        "s3" | "s3a" => Scheme::S3,
        "gs" => Scheme::Gcs,
        other => return Err(format!("uri {uri:?}: scheme {other:?} is not s3 or gs")),
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || key.is_empty() {
        return Err(format!("uri {uri:?} names no bucket or no object key"));
    }
    Path::parse(key).map_err(|e| format!("uri {uri:?}: object key is not valid: {e}"))?;
    Ok((scheme, bucket.to_string(), key.to_string()))
}

/// An object store client for one bucket, from the environment, with short
/// timeouts and few retries: the writer's own backoff handles outages.
pub fn open_bucket(scheme: Scheme, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        Scheme::S3 => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    "5s",
                )
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s")
                .build()
                .map_err(|e| format!("S3 client for bucket {bucket:?}: {e}"))?,
        ),
        Scheme::Gcs => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_config(
                    GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    "5s",
                )
                .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), "120s")
                .build()
                .map_err(|e| format!("GCS client for bucket {bucket:?}: {e}"))?,
        ),
    };
    Ok(store)
}
