//! The online stores (Redis, DynamoDB): one [`OnlineStore`] trait, and the
//! store of this run picked from the URI scheme.

pub mod dynamodb;
pub mod redis;

use crate::writer::config::WriterConfig;
use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::uri::split_scheme;
use std::future::Future;

/// One feature value bound for the online store.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineRecord {
    pub namespace: String,
    pub pkey: String,
    /// `<namespace>.<feature>`
    pub field: String,
    pub observed_at_micros: i64,
    /// The value as JSON text.
    pub value_json: String,
    pub ttl_seconds: i64,
}

/// What an online store does with a batch: newer-wins upserts, idempotent.
pub trait OnlineStore: Send + Sync {
    /// Writes durably, or says which records the store refuses for good.
    fn write(
        &self,
        records: &[OnlineRecord],
    ) -> impl Future<Output = Result<Vec<Rejected>, WriterError>> + Send;
}

/// The online store of this run, picked from the URI scheme by [`Store::open`].
pub enum Store {
    Redis(redis::RedisStore),
    Dynamo(dynamodb::DynamoStore),
}

impl Store {
    /// `redis://` / `rediss://` (one or more comma-separated) → Redis;
    /// `dynamodb://<table>?region=...` → DynamoDB. Errors are configuration
    /// errors, worded for the operator.
    pub async fn open(uri: &str, cfg: &WriterConfig) -> Result<Self, String> {
        let (scheme, _) = split_scheme(uri);
        match scheme.as_str() {
            "redis" | "rediss" => redis::RedisTarget::parse(
                uri,
                cfg.redis_is_clustered,
                &cfg.storage_cache_prefix,
                cfg.concurrency,
            )
            .map(|t| Store::Redis(redis::RedisStore::new(t))),
            "dynamodb" => {
                let target = dynamodb::DynamoTarget::parse(uri, cfg.concurrency)?;
                Ok(Store::Dynamo(dynamodb::DynamoStore::connect(target).await?))
            }
            _ => Err(format!(
                "online store URI: scheme {scheme:?} is not redis, rediss or dynamodb"
            )),
        }
    }
}

impl OnlineStore for Store {
    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, WriterError> {
        match self {
            Store::Redis(s) => s.write(records).await,
            Store::Dynamo(s) => s.write(records).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_uri_scheme_picks_the_store() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = crate::writer::config::fixtures::kafka_writer("ONLINE_WRITER", "online")?;
        assert!(matches!(
            Store::open("redis://h:6379/0", &cfg).await?,
            Store::Redis(_)
        ));
        assert!(matches!(
            Store::open("REDISS://a:1,rediss://b:2", &cfg).await?,
            Store::Redis(_)
        ));
        assert!(matches!(
            Store::open("dynamodb://features?region=eu-west-1", &cfg).await?,
            Store::Dynamo(_)
        ));
        for bad in ["memcached://h", "features", "", "dynamodb://x"] {
            assert!(Store::open(bad, &cfg).await.is_err(), "{bad}");
        }
        Ok(())
    }
}
