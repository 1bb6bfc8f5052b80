//! ONLINE_WRITER: result-bus feature values into the online store
//! (`stores::online`: Redis or DynamoDB).

use crate::formats::Message;
use crate::formats::v1::{ResultMessage, value::Kind};
use crate::writer::config::WriterConfig;
use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use crate::writer::stores::online::{OnlineRecord, OnlineStore, Store};

/// The result-bus writer: decodes [`ResultMessage`]s, upserts into [`Store`].
pub struct OnlineSink(Store);

impl OnlineSink {
    /// The store named by `uri` (see [`Store::open`]).
    pub async fn open(uri: &str, cfg: &WriterConfig) -> Result<Self, String> {
        Store::open(uri, cfg).await.map(OnlineSink)
    }
}

impl Sink for OnlineSink {
    type Record = OnlineRecord;
    /// Newer-wins upserts commute: two batches may be written at once.
    const OVERLAPPING_WRITES: bool = true;
    /// A call of a few entities costs Redis little more per entity than a
    /// full one: send what has arrived rather than wait out the window.
    const UNTIL_DRAINED: bool = true;

    fn decode(&self, payload: &[u8]) -> Result<Vec<OnlineRecord>, WriterError> {
        decode(payload).map_err(WriterError::Decode)
    }

    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, WriterError> {
        self.0.write(records).await
    }
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
    use crate::formats::fixtures::feature_value as fv;

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
}
