//! ONLINE_WRITER: result-bus feature values into the online store.

pub mod dynamodb;
pub mod redis;

use crate::formats::Message;
use crate::formats::v1::{ResultMessage, value::Kind};
use crate::writer::config::WriterConfig;
use crate::writer::sink::{Rejected, Sink, SinkError};
use crate::writer::store_uri::split_scheme;

/// The online store of this run, picked from the URI scheme by [`OnlineSink::open`].
pub enum OnlineSink {
    Redis(redis::RedisSink),
    Dynamo(dynamodb::DynamoSink),
}

impl OnlineSink {
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
            .map(|t| OnlineSink::Redis(redis::RedisSink::new(t))),
            "dynamodb" => {
                let target = dynamodb::DynamoTarget::parse(uri, cfg.concurrency)?;
                Ok(OnlineSink::Dynamo(
                    dynamodb::DynamoSink::connect(target).await?,
                ))
            }
            _ => Err(format!(
                "online store URI: scheme {scheme:?} is not redis, rediss or dynamodb"
            )),
        }
    }
}

impl Sink for OnlineSink {
    type Record = OnlineRecord;
    /// Newer-wins upserts commute: two batches may be written at once.
    const OVERLAPPING_WRITES: bool = true;

    fn decode(&self, payload: &[u8]) -> Result<Vec<OnlineRecord>, String> {
        decode(payload)
    }

    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, SinkError> {
        match self {
            OnlineSink::Redis(s) => s.write(records).await,
            OnlineSink::Dynamo(s) => s.write(records).await,
        }
    }
}

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

/// Decodes a result-bus message; any malformed value makes the whole message poison.
pub fn decode(payload: &[u8]) -> Result<Vec<OnlineRecord>, String> {
    let msg = ResultMessage::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.ResultMessage: {e}"))?;
    let mut out = Vec::with_capacity(msg.values.len());
    for (i, v) in msg.values.into_iter().enumerate() {
        if v.namespace.is_empty() || v.feature.is_empty() || v.pkey.is_empty() {
            return Err(format!(
                "values[{i}]: namespace, feature and pkey must all be set"
            ));
        }
        if v.namespace.contains(['.', '/']) {
            return Err(format!(
                "values[{i}]: namespace {:?} must not contain '.' or '/'",
                v.namespace
            ));
        }
        let value_json = match v.value.and_then(|v| v.kind) {
            None => {
                return Err(format!(
                    "values[{i}] ({}.{}): no value",
                    v.namespace, v.feature
                ));
            }
            Some(Kind::DoubleValue(d)) if !d.is_finite() => {
                return Err(format!(
                    "values[{i}] ({}.{}): {d} is not a finite number",
                    v.namespace, v.feature
                ));
            }
            Some(Kind::DoubleValue(d)) => serde_json::Value::from(d).to_string(),
            Some(Kind::IntValue(n)) => n.to_string(),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s).to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::JsonValue(j)) => {
                let parsed: serde_json::Value = serde_json::from_str(&j)
                    .map_err(|e| format!("values[{i}]: json_value is not JSON: {e}"))?;
                parsed.to_string()
            }
        };
        out.push(OnlineRecord {
            field: format!("{}.{}", v.namespace, v.feature),
            namespace: v.namespace,
            pkey: v.pkey,
            observed_at_micros: v.observed_at_micros,
            value_json,
            ttl_seconds: v.max_staleness_seconds.max(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::{FeatureValue, Value};

    fn fv(ns: &str, feature: &str, pkey: &str, kind: Option<Kind>) -> FeatureValue {
        FeatureValue {
            namespace: ns.into(),
            feature: feature.into(),
            pkey: pkey.into(),
            value: kind.map(|k| Value { kind: Some(k) }),
            observed_at_micros: 5,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_every_value_kind() -> Result<(), String> {
        let msg = ResultMessage {
            values: vec![
                fv("user", "age", "1", Some(Kind::IntValue(42))),
                fv("user", "score", "1", Some(Kind::DoubleValue(0.5))),
                fv(
                    "user",
                    "name",
                    "1",
                    Some(Kind::StringValue("A \"q\"".into())),
                ),
                fv("user", "vip", "1", Some(Kind::BoolValue(true))),
                fv("user", "tags", "1", Some(Kind::JsonValue("[1, 2]".into()))),
            ],
            ..Default::default()
        };
        let recs = decode(&msg.encode_to_vec())?;
        let values: Vec<&str> = recs.iter().map(|r| r.value_json.as_str()).collect();
        assert_eq!(values, ["42", "0.5", r#""A \"q\"""#, "true", "[1,2]"]);
        assert_eq!(recs[0].field, "user.age");
        Ok(())
    }

    #[test]
    fn refuses_garbage_and_incomplete_values() {
        assert!(decode(b"\xff\xff\xff not protobuf").is_err());
        for bad in [
            fv("", "age", "1", Some(Kind::IntValue(1))),
            fv("user", "age", "1", None),
            fv("user", "x", "1", Some(Kind::DoubleValue(f64::NAN))),
            fv("user", "x", "1", Some(Kind::JsonValue("{not json".into()))),
            fv("us.er", "x", "1", Some(Kind::IntValue(1))),
        ] {
            let msg = ResultMessage {
                values: vec![bad.clone()],
                ..Default::default()
            };
            assert!(decode(&msg.encode_to_vec()).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_uri_scheme_picks_the_store() -> Result<(), Box<dyn std::error::Error>> {
        use crate::contract as c;
        let vars: Vec<(String, String)> = [
            (c::ENV_WRITER_TYPE, "ONLINE_WRITER"),
            (c::ENV_WRITER_NAME, "online"),
            (c::ENV_BUS_BACKEND, "KAFKA"),
            (c::ENV_SUBSCRIPTION, "result-bus"),
            (c::ENV_KAFKA_BOOTSTRAP_SERVERS, "k:9092"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg = WriterConfig::from_vars(&vars)?;
        assert!(matches!(
            OnlineSink::open("redis://h:6379/0", &cfg).await?,
            OnlineSink::Redis(_)
        ));
        assert!(matches!(
            OnlineSink::open("REDISS://a:1,rediss://b:2", &cfg).await?,
            OnlineSink::Redis(_)
        ));
        assert!(matches!(
            OnlineSink::open("dynamodb://features?region=eu-west-1", &cfg).await?,
            OnlineSink::Dynamo(_)
        ));
        for bad in ["memcached://h", "features", "", "dynamodb://x"] {
            assert!(OnlineSink::open(bad, &cfg).await.is_err(), "{bad}");
        }
        Ok(())
    }
}
