//! Kafka through librdkafka. At-least-once: offsets are stored only after a
//! message is durably written or dead-lettered (`enable.auto.offset.store`
//! off); librdkafka auto-commits stored offsets, and commits them on
//! revocation, so a rebalance loses nothing.

pub use super::kafka_context::{ClientErrors, KafkaContext, LagContext};
use super::kafka_errors;
use super::pending::Pending;
use super::{AckToken, Batching, Bus, BusError, Envelope};
use crate::writer::config::KafkaSettings;
use crate::writer::runtime::dlq;
use crate::writer::runtime::metrics::WriterMetrics;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

pub struct KafkaBus {
    consumer: StreamConsumer<LagContext>,
    producer: FutureProducer<KafkaContext>,
    errors: ClientErrors,
    topic: String,
    dlq_topic: Option<String>,
    /// Who the client authenticates as, for error messages.
    sasl_user: Option<String>,
    /// Messages received while waiting out an outage, served first.
    pending: Pending,
    /// Topic names, shared by the envelopes (see [`envelope`]).
    topics: Vec<Arc<str>>,
}

impl KafkaBus {
    pub fn connect(
        settings: &KafkaSettings,
        topic: &str,
        dlq_topic: Option<String>,
        metrics: WriterMetrics,
    ) -> Result<Self, BusError> {
        let context = KafkaContext::new(settings);
        let errors = context.errors.clone();
        let mut base = client_config(settings);
        let mut consumer_config = base.clone();
        for (key, value) in CONSUMER_DEFAULTS {
            if !settings.properties.iter().any(|(k, _)| k == key) {
                consumer_config.set(*key, *value);
            }
        }
        let consumer: StreamConsumer<LagContext> = consumer_config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &settings.auto_offset_reset)
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagContext::new(metrics, context.clone()))?;
        consumer.subscribe(&[topic])?;
        let producer: FutureProducer<KafkaContext> = base
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create_with_context(context)?;
        let sasl_user = settings
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == "sasl.username")
            .map(|(_, v)| v.clone());
        Ok(KafkaBus {
            consumer,
            producer,
            errors,
            topic: topic.to_string(),
            dlq_topic,
            sasl_user,
            pending: Pending::default(),
            topics: Vec::new(),
        })
    }
}

/// Consumer settings a writer uses unless `additional_kafka_args` say
/// otherwise. A writer that crashes holds its partitions until its session
/// expires: 10 s instead of librdkafka's 45 s lets its restarted container
/// (or the other replicas) take them over within seconds; heartbeats every
/// 3 s (a third of it) keep a busy but live writer in the group.
///
/// librdkafka prefetches up to 64 MiB of messages by default, most of a
/// writer's memory under backlog; 8 MiB (which also caps `fetch.max.bytes`)
/// still holds many batches. A partition whose prefetch is full is fetched
/// again after `fetch.queue.backoff.ms`: librdkafka's 1 s would idle a
/// writer that empties 8 MiB in a tenth of that (docs/benchmarks.md).
///
/// Small messages cost librdkafka more than their bytes: each queued one
/// holds an op of a few hundred bytes and pins its whole fetch response, so
/// 8 MiB of 250-byte messages kept 31 MiB of heap. `queued.min.messages`
/// (100 000 by default; with the high-level consumer it counts the whole
/// consumer queue) caps that at 10 000 messages, a few batches ahead.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "3000"),
    ("queued.max.messages.kbytes", "8192"),
    ("queued.min.messages", "10000"),
    ("fetch.queue.backoff.ms", "10"),
];

/// Connection settings shared by every client: brokers, then the
/// pass-through librdkafka properties (security, client id, extras).
pub(crate) fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.bootstrap_servers);
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c
}

/// Per partition, one past the highest offset in `batch`: what to commit.
pub(crate) fn next_offsets_by_partition<'a>(
    batch: impl Iterator<Item = &'a Envelope>,
) -> BTreeMap<(&'a str, i32), i64> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for e in batch {
        if let AckToken::Kafka {
            topic,
            partition,
            offset,
        } = &e.token
        {
            let n = next.entry((&**topic, *partition)).or_insert(0);
            *n = (*n).max(offset + 1);
        }
    }
    next
}

/// `topics`: the topic names met so far, shared by their envelopes.
pub(crate) fn envelope(m: &BorrowedMessage<'_>, topics: &mut Vec<Arc<str>>) -> Envelope {
    let headers: Vec<(String, Vec<u8>)> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let traceparent = headers
        .iter()
        .find(|(k, _)| k == crate::telemetry::propagation::TRACEPARENT)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    Envelope {
        payload: m.payload().unwrap_or_default().to_vec(),
        published_ms: m.timestamp().to_millis(),
        traceparent,
        key: m.key().map(<[u8]>::to_vec),
        headers,
        token: AckToken::Kafka {
            topic: shared_topic(topics, m.topic()),
            partition: m.partition(),
            offset: m.offset(),
        },
    }
}

/// `name` from `topics`, added the first time. A writer consumes one topic,
/// so the list stays short.
fn shared_topic(topics: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(t) = topics.iter().find(|t| ***t == *name) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(name);
    topics.push(t.clone());
    t
}

/// How long one metadata request may take before `reached` reports failure.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

impl Bus for KafkaBus {
    /// A metadata request: proves the brokers answer and accept this
    /// client's credentials. Asked by the producer, whose own thread serves
    /// its events: an OAUTHBEARER token is fetched on an event, and the
    /// consumer's are served only while it is polled. For all topics, since
    /// the producer's request for one would auto-create it; the answer then
    /// proves the writer's topic and dead-letter topic exist.
    async fn reached(&self) -> Result<(), BusError> {
        let fetch = || self.producer.client().fetch_metadata(None, REACH_TIMEOUT);
        // librdkafka's metadata call blocks: keep it off the other tasks'
        // worker where the runtime has more than one.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => fetch(),
            _ => tokio::task::block_in_place(fetch),
        };
        let metadata = result.map_err(|e| match self.errors.last() {
            Some(cause) => BusError::KafkaUnreachable {
                request: e.to_string(),
                cause: kafka_errors::describe(&cause, self.sasl_user.as_deref()),
            },
            None => BusError::from(e),
        })?;
        self.errors.clear();
        let present: Vec<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name())
            .collect();
        // A subscription starting with '^' is a pattern, not one topic.
        let needed = [
            (!self.topic.starts_with('^')).then_some(("topic", &self.topic)),
            self.dlq_topic.as_ref().map(|t| ("dead-letter topic", t)),
        ];
        for (what, name) in needed.into_iter().flatten() {
            if !present.contains(&name.as_str()) {
                return Err(BusError::NotFound {
                    what,
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }

    async fn next_batch(&mut self, batching: Batching) -> Result<Vec<Envelope>, BusError> {
        // Messages are gathered in `self.pending`, never in a local: the
        // runtime may drop this future (shutdown, a write finishing) and a
        // message received but dropped could let a later offset be
        // committed past it.
        if self.pending.is_empty() {
            let first = self.consumer.recv().await?;
            self.pending.push(envelope(&first, &mut self.topics));
        }
        let deadline = Instant::now() + batching.wait;
        while !self.pending.holds_a_batch(&batching) {
            if batching.until_drained {
                // Only what librdkafka has already fetched: polled once, a
                // receive that is not ready is dropped without losing anything.
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => {
                        self.pending.push(envelope(&m, &mut self.topics));
                        continue;
                    }
                    Some(Err(e)) => warn!(error = %e, "kafka receive"),
                    None => {}
                }
                break;
            }
            match timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => self.pending.push(envelope(&m, &mut self.topics)),
                Ok(Err(e)) => {
                    warn!(error = %e, "kafka receive");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(self.pending.take_batch(&batching))
    }

    async fn done(&mut self, batch: &[Envelope]) -> Result<(), BusError> {
        // Batches are handled whole and in order, so the highest offset of
        // each partition ends a contiguous written prefix.
        for ((topic, partition), offset) in next_offsets_by_partition(batch.iter()) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
            // A partition revoked meanwhile refuses the store; its new owner
            // replays from the last commit (a duplicate, never a loss).
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                debug!(topic, partition, error = %e, "offset not stored (partition no longer assigned)");
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        env: &Envelope,
        headers: &[(&'static str, String)],
    ) -> Result<(), BusError> {
        let topic = self
            .dlq_topic
            .as_deref()
            .ok_or(BusError::NoDeadLetterTopic)?;
        let mut h = OwnedHeaders::new();
        for (k, v) in dlq::kept_headers(env, headers) {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], _>::to(topic)
            .payload(&env.payload)
            .headers(h);
        if let Some(key) = &env.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| BusError::Kafka(e))?;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BusError> {
        let assignment = self.consumer.assignment()?;
        self.consumer.pause(&assignment)?;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BusError> {
        let assignment = self.consumer.assignment()?;
        self.consumer.resume(&assignment)?;
        Ok(())
    }

    async fn keep_alive(&mut self, for_: Duration) {
        // Serving the consumer keeps the group session and rebalances going;
        // partitions assigned meanwhile are not paused, so keep their messages.
        let deadline = Instant::now() + for_;
        while let Ok(Ok(m)) = timeout_at(deadline, self.consumer.recv()).await {
            self.pending.push(envelope(&m, &mut self.topics));
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last auto-commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => return Err(e.into()),
        }
        self.consumer.unsubscribe();
        let _ = timeout(Duration::from_secs(5), async {
            self.producer.flush(Duration::from_secs(5))
        })
        .await;
        Ok(())
    }
}
