//! Result messages and the online writers' shared dataset.

use crate::support::unique;
use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use std::collections::BTreeMap;

/// A value observed for (namespace "user", pkey, feature) at `ts`.
pub fn observation(pkey: &str, feature: &str, ts: i64, value: i64) -> FeatureValue {
    FeatureValue {
        namespace: "user".into(),
        feature: feature.into(),
        pkey: pkey.into(),
        value: Some(Value {
            kind: Some(Kind::IntValue(value)),
        }),
        observed_at_micros: ts,
        ..Default::default()
    }
}

pub fn result_message(values: Vec<FeatureValue>) -> Vec<u8> {
    ResultMessage {
        operation_id: unique("op"),
        values,
        ..Default::default()
    }
    .encode_to_vec()
}

pub const FEATURES: [&str; 3] = ["age", "score", "visits"];

/// pkey → the entity's hash, as HGETALL returns it.
pub type Entities = BTreeMap<String, BTreeMap<String, String>>;

/// Observations ts 1..=5 of every (pkey, feature), newest not last, plus the
/// expected final hash of each pkey.
pub fn dataset(pkeys: &[String]) -> (Vec<Vec<u8>>, Entities) {
    let mut payloads = Vec::new();
    for ts in [2, 5, 1, 4, 3] {
        for p in pkeys {
            let values = FEATURES
                .iter()
                .map(|f| observation(p, f, ts, ts * 10))
                .collect();
            payloads.push(result_message(values));
        }
    }
    let expected = pkeys
        .iter()
        .map(|p| {
            let mut h = BTreeMap::from([("__id__".to_string(), p.clone())]);
            for f in FEATURES {
                h.insert(format!("user.{f}"), "50".into());
                h.insert(format!("user.{f}_ts"), "5".into());
            }
            (p.clone(), h)
        })
        .collect();
    (payloads, expected)
}

/// `n` pkeys unique to this run.
pub fn pkeys(prefix: &str, n: usize) -> Vec<String> {
    let run = unique(prefix);
    (0..n).map(|i| format!("{run}-{i}")).collect()
}
