//! Bus message formats (generated from proto/bgpersist/bus/v1/bus.proto).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/bgpersist.bus.v1.rs"));
}

pub use prost::Message;

/// Test fixtures: result-bus values as producers send them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::v1::{FeatureValue, Value, value::Kind};

    /// One feature value of `ns.feature` for `pkey` (no value when `kind` is None).
    pub fn feature_value(ns: &str, feature: &str, pkey: &str, kind: Option<Kind>) -> FeatureValue {
        FeatureValue {
            namespace: ns.into(),
            feature: feature.into(),
            pkey: pkey.into(),
            value: kind.map(|k| Value { kind: Some(k) }),
            observed_at_micros: 1_700_000_000_000_000,
            observation_id: format!("obs-{ns}-{feature}-{pkey}"),
            ..Default::default()
        }
    }
}
