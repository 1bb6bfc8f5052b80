//! Publishing metrics-bus messages, waiting for the broker's acknowledgement
//! of every one before `write` returns (so offsets move only past published
//! messages).
//!
//! Kafka: an idempotent producer (`enable.idempotence=true`, `acks=all`)
//! by default, so librdkafka's own retries never duplicate or reorder within
//! a session; `BGP_PUBLISH_ACKS=1|0` trades that for latency. A retried batch
//! is published again whole (at-least-once); the metrics store drops the
//! repeats by identity. Pub/Sub: the official client's publisher.

use crate::crd::BusBackend;
use crate::telemetry::propagation;
use crate::writer::bus::kafka::KafkaContext;
use crate::writer::bus::pubsub::resource_path;
use crate::writer::config::{KafkaSettings, WriterConfig};
use crate::writer::runtime::sink::{Rejected, WriterError};
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{info, warn};

/// `all` (default; the producer is then idempotent), `1` or `0`.
pub use crate::writer::config::ENV_PUBLISH_ACKS;
/// Pub/Sub refuses larger messages; refused here rather than failing a whole
/// publish batch.
const PUBSUB_MAX_MESSAGE_BYTES: usize = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "BGP_PUBLISH_TOPIC is not set: this writer publishes to the metrics bus (metrics_bus_topic_id)"
    )]
    NoTopic,
    #[error("{ENV_PUBLISH_ACKS}={0:?}: must be all, 1 or 0")]
    Acks(String),
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("pubsub publisher: {0}")]
    Pubsub(String),
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Kafka key (empty: none); unused on Pub/Sub.
    pub key: String,
    pub payload: Vec<u8>,
}

/// Producer acknowledgements and whether the producer is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    All,
    Leader,
    None,
}

impl Acks {
    pub fn parse(value: Option<&str>) -> Result<Acks, PublishError> {
        match value.map(str::trim) {
            None | Some("" | "all" | "-1") => Ok(Acks::All),
            Some("1") => Ok(Acks::Leader),
            Some("0") => Ok(Acks::None),
            Some(other) => Err(PublishError::Acks(other.to_string())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// The producer settings, shared with the benchmark's produce-only ceiling.
/// The connection settings (`client.id`, SASL, TLS, `BGP_KAFKA_CONF_*`)
/// come from `settings`; acks and idempotence are set last: idempotence
/// needs `acks=all`, so it is on exactly when acks are `all`.
pub fn producer_config(settings: &KafkaSettings, acks: Acks) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.bootstrap_servers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c.set("acks", acks.as_str())
        .set("enable.idempotence", (acks == Acks::All).to_string());
    c
}

pub enum Publisher {
    Kafka(KafkaPublisher),
    Pubsub(PubsubPublisher),
}

impl Publisher {
    pub async fn open(cfg: &WriterConfig) -> Result<Publisher, PublishError> {
        let topic = cfg.publish_topic.clone().ok_or(PublishError::NoTopic)?;
        match cfg.backend {
            BusBackend::Kafka => {
                let acks = Acks::parse(cfg.publish_acks.as_deref())?;
                let config = producer_config(&cfg.kafka, acks);
                let context = KafkaContext::new(&cfg.kafka);
                let producer = config.create_with_context(context.clone())?;
                info!(%topic, acks = acks.as_str(), idempotent = acks == Acks::All, "publishing metrics to kafka");
                Ok(Publisher::Kafka(KafkaPublisher {
                    topic,
                    config,
                    context,
                    producer: Mutex::new(producer),
                }))
            }
            BusBackend::Pubsub => {
                let topic = resource_path(cfg.pubsub.project.as_deref(), "topics", &topic)
                    .map_err(PublishError::Pubsub)?;
                let mut builder = google_cloud_pubsub::client::Publisher::builder(topic.clone());
                if let Some(endpoint) = &cfg.pubsub.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_credentials(Anonymous::new().build());
                }
                let publisher = builder
                    .build()
                    .await
                    .map_err(|e| PublishError::Pubsub(format!("{topic}: {e}")))?;
                info!(%topic, "publishing metrics to pub/sub");
                Ok(Publisher::Pubsub(PubsubPublisher { topic, publisher }))
            }
        }
    }

    /// Publishes every message and waits until the broker has each. A
    /// message the broker refuses for good (too large) is returned as
    /// rejected; any other failure is retriable.
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<Vec<Rejected>, WriterError> {
        match self {
            Publisher::Kafka(p) => p.publish_all(msgs).await,
            Publisher::Pubsub(p) => p.publish_all(msgs).await,
        }
    }
}

pub struct KafkaPublisher {
    topic: String,
    config: ClientConfig,
    context: KafkaContext,
    /// Replaced when librdkafka reports a fatal error (the instance is then
    /// unusable for good).
    producer: Mutex<FutureProducer<KafkaContext>>,
}

/// Enqueues `record`, waiting while librdkafka's local queue is full (it
/// drains as the broker acknowledges).
pub(super) async fn send_when_queued<'a, K: rdkafka::message::ToBytes + ?Sized>(
    producer: &FutureProducer<KafkaContext>,
    mut record: FutureRecord<'a, K, [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

pub(super) fn too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

impl KafkaPublisher {
    fn producer(&self) -> FutureProducer<KafkaContext> {
        match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new producer if the current one failed fatally.
    fn renew_if_fatal(&self, producer: &FutureProducer<KafkaContext>) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            warn!(?code, %reason, "kafka producer failed fatally; creating a new one");
            match self
                .config
                .create_with_context::<_, FutureProducer<KafkaContext>>(self.context.clone())
            {
                Ok(fresh) => match self.producer.lock() {
                    Ok(mut p) => *p = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                },
                Err(e) => warn!(error = %e, "cannot create a new kafka producer"),
            }
        }
    }

    async fn publish_all(&self, msgs: &[Outgoing]) -> Result<Vec<Rejected>, WriterError> {
        let producer = self.producer();
        let mut rejected = Vec::new();
        let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(msgs.len());
        let mut failure: Option<KafkaError> = None;
        // The batch's store-write span: every message of it joins its trace.
        let traceparent = propagation::current();
        'enqueue: for (i, m) in msgs.iter().enumerate() {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).payload(&m.payload);
            if !m.key.is_empty() {
                record = record.key(&m.key);
            }
            if let Some(tp) = &traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: propagation::TRACEPARENT,
                    value: Some(tp.as_bytes()),
                }));
            }
            match send_when_queued(&producer, record).await {
                Ok(delivery) => pending.push((i, delivery)),
                Err(e) if too_large(&e) => rejected.push(Rejected {
                    record: i,
                    reason: format!("metrics message refused by kafka: {e}"),
                }),
                Err(e) => {
                    failure = Some(e);
                    break 'enqueue;
                }
            }
        }
        // Wait for everything in flight, even after a failure, so that the
        // retry does not race this attempt's deliveries.
        for (i, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) if too_large(&e) => rejected.push(Rejected {
                    record: i,
                    reason: format!("metrics message refused by kafka: {e}"),
                }),
                Ok(Err((e, _))) => {
                    failure.get_or_insert(e);
                }
                Err(_canceled) => {
                    failure.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        if let Some(e) = failure {
            self.renew_if_fatal(&producer);
            return Err(WriterError::Retriable(format!(
                "publishing to kafka topic {}: {e}",
                self.topic
            )));
        }
        rejected.sort_by_key(|r| r.record);
        Ok(rejected)
    }
}

pub struct PubsubPublisher {
    topic: String,
    publisher: google_cloud_pubsub::client::Publisher,
}

impl PubsubPublisher {
    async fn publish_all(&self, msgs: &[Outgoing]) -> Result<Vec<Rejected>, WriterError> {
        use google_cloud_pubsub::model::Message;
        let mut rejected = Vec::new();
        let mut pending = Vec::with_capacity(msgs.len());
        let traceparent = propagation::current();
        for (i, m) in msgs.iter().enumerate() {
            if m.payload.len() > PUBSUB_MAX_MESSAGE_BYTES {
                rejected.push(Rejected {
                    record: i,
                    reason: format!(
                        "metrics message of {} bytes exceeds the Pub/Sub limit of {PUBSUB_MAX_MESSAGE_BYTES}",
                        m.payload.len()
                    ),
                });
                continue;
            }
            let mut msg = Message::new().set_data(m.payload.clone());
            if let Some(tp) = &traceparent {
                msg = msg.set_attributes([(propagation::TRACEPARENT, tp.as_str())]);
            }
            pending.push(self.publisher.publish(msg));
        }
        let mut failure = None;
        for fut in pending {
            if let Err(e) = fut.await {
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(WriterError::Retriable(format!(
                "publishing to {}: {e}",
                self.topic
            ))),
            None => Ok(rejected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_default_to_all_and_idempotence_follows_them() -> Result<(), PublishError> {
        assert_eq!(Acks::parse(None)?, Acks::All);
        assert_eq!(Acks::parse(Some("all"))?, Acks::All);
        assert_eq!(Acks::parse(Some("-1"))?, Acks::All);
        assert_eq!(Acks::parse(Some("1"))?, Acks::Leader);
        assert_eq!(Acks::parse(Some("0"))?, Acks::None);
        assert!(Acks::parse(Some("2")).is_err());

        let settings = KafkaSettings {
            bootstrap_servers: "k:9092".into(),
            group_id: "g".into(),
            // A pass-through cannot turn idempotence off behind acks=all.
            properties: vec![
                ("client.id".into(), "bgpersist-metrics".into()),
                ("enable.idempotence".into(), "false".into()),
            ],
            ..Default::default()
        };
        let c = producer_config(&settings, Acks::All);
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("client.id"), Some("bgpersist-metrics"));
        let c = producer_config(&settings, Acks::Leader);
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("enable.idempotence"), Some("false"));
        Ok(())
    }
}
