//! METRICS_WRITER and GO_RESULT_BUS_METRICS_WRITER: result-bus messages in,
//! metrics-bus messages out (docs/metrics-and-usage.md). Each result message
//! yields one `MetricsMessage` ([`compute`]), published to the metrics-bus
//! topic; the "store" is that topic, so `write` returns once the broker has
//! acknowledged every message of the batch.

pub mod compute;
pub mod exactly_once;
pub mod publish;

use crate::formats::Message;
use crate::formats::v1::ResultMessage;
use crate::writer::config::WriterConfig;
use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use publish::{Outgoing, PublishError, Publisher};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct FeatureMetricsSink {
    publisher: Publisher,
    skip_feature_metrics: bool,
}

impl FeatureMetricsSink {
    pub async fn open(cfg: &WriterConfig) -> Result<Self, PublishError> {
        Ok(FeatureMetricsSink {
            publisher: Publisher::open(cfg).await?,
            skip_feature_metrics: cfg.skip_feature_metrics,
        })
    }
}

/// A result message as received, with when.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub result: ResultMessage,
    pub consumed_at_micros: i64,
}

impl Sink for FeatureMetricsSink {
    type Record = Received;

    // The metrics bus has no order to keep: publishes of two batches commute.
    // The metrics are computed in `write`, so two batches in flight also
    // spread that work over two cores.
    const OVERLAPPING_WRITES: bool = true;

    fn decode(&self, payload: &[u8]) -> Result<Vec<Received>, WriterError> {
        Ok(vec![Received {
            result: parse(payload).map_err(WriterError::Decode)?,
            consumed_at_micros: now_micros(),
        }])
    }

    async fn write(&self, records: &[Received]) -> Result<Vec<Rejected>, WriterError> {
        let messages: Vec<Outgoing> = records
            .iter()
            .map(|r| outgoing(&r.result, r.consumed_at_micros, self.skip_feature_metrics))
            .collect();
        self.publisher.publish_all(&messages).await
    }
}

/// Only bytes that are no `ResultMessage` are poison: values the other
/// writers refuse are what the metrics count.
pub fn parse(payload: &[u8]) -> Result<ResultMessage, String> {
    ResultMessage::decode(payload).map_err(|e| format!("not a bgpersist.bus.v1.ResultMessage: {e}"))
}

/// The metrics message to publish for one result, keyed by its operation ID.
pub fn outgoing(
    result: &ResultMessage,
    consumed_at_micros: i64,
    skip_feature_metrics: bool,
) -> Outgoing {
    let metrics = compute::compute(result, consumed_at_micros, skip_feature_metrics);
    Outgoing {
        key: result.operation_id.clone(),
        payload: metrics.encode_to_vec(),
    }
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::MetricsMessage;

    #[test]
    fn a_result_becomes_one_keyed_metrics_message() -> Result<(), String> {
        let result = ResultMessage {
            operation_id: "op-9".into(),
            environment_id: "prod".into(),
            produced_at_micros: 5,
            ..Default::default()
        };
        let parsed = parse(&result.encode_to_vec())?;
        assert_eq!(parsed, result);
        let out = outgoing(&parsed, 6, false);
        assert_eq!(out.key, "op-9");
        let metrics = MetricsMessage::decode(out.payload.as_slice()).map_err(|e| e.to_string())?;
        assert_eq!(metrics, compute::compute(&result, 6, false));
        assert!(parse(b"\xff\xff garbage").is_err());
        Ok(())
    }
}
