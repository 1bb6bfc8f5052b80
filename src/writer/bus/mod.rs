//! Bus consumers: what the runtime needs from Kafka and Pub/Sub.

pub mod kafka;
mod kafka_context;
pub mod kafka_errors;
pub mod keystore;
pub mod oauth;
mod pending;
pub mod pubsub;
pub mod pubsub_backlog;

use crate::writer::runtime::dlq;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("pubsub: {0}")]
    Pubsub(String),
    /// The brokers did not answer; `cause` is the client's last error (a
    /// TLS handshake, an authentication failure) said for people
    /// (`kafka_errors::describe`); `request` is what failed, for the log.
    #[error("kafka: {cause}")]
    KafkaUnreachable { request: String, cause: String },
    /// A topic or subscription the writer needs is not there: it can never
    /// consume (or dead-letter) until someone creates it or fixes the resource.
    #[error("{what} '{name}' does not exist; create it or correct the resource")]
    NotFound { what: &'static str, name: String },
    #[error(
        "dead-letter topic is not configured (BGP_DLQ_TOPIC); refusing to drop a poison message"
    )]
    NoDeadLetterTopic,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub payload: Vec<u8>,
    /// Publish time, milliseconds since the Unix epoch, when the bus says.
    pub published_ms: Option<i64>,
    /// W3C trace context from the message headers/attributes, if any.
    pub traceparent: Option<String>,
    /// The message's key (Kafka) or ordering key (Pub/Sub), kept for its
    /// dead letter.
    pub key: Option<Vec<u8>>,
    /// Every header (Kafka) or attribute (Pub/Sub) as received, in order,
    /// kept for its dead letter.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Where it came from, which is also how it is acknowledged.
    pub token: AckToken,
}

impl Envelope {
    /// Where it came from, as dead-letter headers.
    pub fn origin(&self) -> Vec<(&'static str, String)> {
        self.token.origin()
    }

    /// A bare message at `offset` of topic "t", partition 0, for unit tests.
    #[cfg(test)]
    pub(crate) fn at_offset(offset: i64, payload: Vec<u8>) -> Envelope {
        Envelope {
            payload,
            published_ms: None,
            traceparent: None,
            key: None,
            headers: Vec::new(),
            token: AckToken::Kafka {
                topic: "t".into(),
                partition: 0,
                offset,
            },
        }
    }
}

/// Where a message came from and how to acknowledge it. Names are shared
/// (`Arc`), not copied per message: a batch holds thousands of envelopes.
#[derive(Debug, Clone)]
pub enum AckToken {
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    Pubsub {
        /// Index into the Pub/Sub consumer's pending handlers.
        id: u64,
        subscription: Arc<str>,
        message_id: String,
    },
}

impl AckToken {
    /// The topic (Kafka) or subscription (Pub/Sub) it was received from.
    pub fn source(&self) -> &str {
        match self {
            AckToken::Kafka { topic, .. } => topic,
            AckToken::Pubsub { subscription, .. } => subscription,
        }
    }

    /// As dead-letter headers, in order.
    pub fn origin(&self) -> Vec<(&'static str, String)> {
        match self {
            AckToken::Kafka {
                topic,
                partition,
                offset,
            } => vec![
                (dlq::H_ORIGINAL_TOPIC, topic.to_string()),
                (dlq::H_ORIGINAL_PARTITION, partition.to_string()),
                (dlq::H_ORIGINAL_OFFSET, offset.to_string()),
            ],
            AckToken::Pubsub {
                subscription,
                message_id,
                ..
            } => vec![
                (dlq::H_ORIGINAL_TOPIC, subscription.to_string()),
                (dlq::H_ORIGINAL_MESSAGE_ID, message_id.clone()),
            ],
        }
    }
}

/// How [`Bus::next_batch`] gathers a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub max: usize,
    /// Payload bytes a batch holds at most (a larger message still makes a
    /// batch of its own): bounds the writer's memory whatever the message
    /// size.
    pub max_bytes: usize,
    pub wait: Duration,
    /// Hand the batch over as soon as no further message has already been
    /// received, rather than waiting out `wait`. Under load messages queue
    /// up while the store is written, so batches still fill; at low rates a
    /// message is not held for the window.
    pub until_drained: bool,
}

/// A bus the runtime consumes.
pub trait Bus: Send {
    /// Succeeds once the bus has answered for this writer's subscription; the
    /// writer reports ready only after that. A bus whose `connect` already
    /// talked to the server keeps this default.
    fn reached(&self) -> impl Future<Output = Result<(), BusError>> + Send {
        async { Ok(()) }
    }

    /// Up to `batching.max` messages and `batching.max_bytes` of payload
    /// (at least one message): waits for the first, then at most
    /// `batching.wait` for more (or less, see [`Batching::until_drained`]).
    fn next_batch(
        &mut self,
        batching: Batching,
    ) -> impl Future<Output = Result<Vec<Envelope>, BusError>> + Send;

    /// Marks messages done (durably written or dead-lettered): their offsets
    /// may be committed / they are acknowledged.
    fn done(&mut self, batch: &[Envelope]) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Publishes `env`'s bytes to the dead-letter topic with `headers` and
    /// waits until the broker has it.
    fn dead_letter(
        &self,
        env: &Envelope,
        headers: &[(&'static str, String)],
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Keeps group membership alive while the runtime waits out a store
    /// outage: no new messages are fetched meanwhile.
    fn pause(&mut self) -> Result<(), BusError>;
    fn resume(&mut self) -> Result<(), BusError>;
    fn keep_alive(&mut self, for_: Duration) -> impl Future<Output = ()> + Send;

    /// Commits what is done and leaves the group.
    fn close(&mut self) -> impl Future<Output = Result<(), BusError>> + Send;
}
