//! METRICS_WRITER with exactly-once delivery on Kafka (opt-in,
//! `BGP_PUBLISH_EXACTLY_ONCE=true`). Per batch one Kafka transaction holds
//! the metrics messages, the batch's dead letters and the result offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata), so
//! they become visible to `read_committed` consumers together or not at all.
//!
//! Its own loop rather than the shared runtime: here the transaction commits
//! the offsets, which the runtime leaves to the bus. The consumer is polled
//! only between transactions (and while waiting out a failure, with its
//! partitions paused), so a rebalance never lands inside one.

use super::now_micros;
use super::publish::{
    Acks, ENV_PUBLISH_ACKS, Outgoing, producer_config, send_when_queued, too_large,
};
use super::{outgoing, parse};
use crate::crd::BusBackend;
use crate::writer::bus::Envelope;
use crate::writer::bus::kafka::{
    KafkaContext, LagContext, client_config, envelope, next_offsets_by_partition,
};
use crate::writer::config::WriterConfig;
use crate::writer::error::WriterError;
use crate::writer::runtime::dlq;
use crate::writer::runtime::metrics::WriterMetrics;
use crate::writer::runtime::{MAX_BACKOFF, retry_backoff};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::timeout_at;
use tracing::{info, warn};

pub use crate::writer::config::{
    ENV_PUBLISH_EXACTLY_ONCE as ENV_EXACTLY_ONCE, ENV_TRANSACTIONAL_ID,
};
/// Bound on each blocking transactional call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ExactlyOnceError {
    #[error("{ENV_EXACTLY_ONCE}={0:?}: must be true or false")]
    Flag(String),
    #[error("{ENV_EXACTLY_ONCE}=true needs the Kafka bus (Pub/Sub has no transactions)")]
    NotKafka,
    #[error(
        "{ENV_EXACTLY_ONCE}=true needs acks=all (transactions are idempotent); {ENV_PUBLISH_ACKS} is {0:?}"
    )]
    Acks(String),
    #[error(
        "BGP_PUBLISH_TOPIC is not set: this writer publishes to the metrics bus (metrics_bus_topic_id)"
    )]
    NoTopic,
    #[error(
        "BGP_DLQ_TOPIC is not set: a poison message must be dead-lettered inside the transaction"
    )]
    NoDeadLetterTopic,
    #[error("{ENV_TRANSACTIONAL_ID} is unset and so is HOSTNAME, to derive it from")]
    NoTransactionalId,
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the transactional producer failed for good (fenced by a newer instance?): {0}")]
    Fatal(KafkaError),
}

/// Whether `BGP_PUBLISH_EXACTLY_ONCE` asks for transactions.
pub fn requested(value: Option<&str>) -> Result<bool, ExactlyOnceError> {
    match value.map(str::trim) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ExactlyOnceError::Flag(other.to_string())),
    }
}

/// The transactional id: the explicit one, else group and host name.
pub fn transactional_id(
    explicit: Option<&str>,
    group: &str,
    hostname: Option<&str>,
) -> Result<String, ExactlyOnceError> {
    match (
        explicit.filter(|s| !s.is_empty()),
        hostname.filter(|s| !s.is_empty()),
    ) {
        (Some(id), _) => Ok(id.to_string()),
        (None, Some(host)) => Ok(format!("{group}.{host}")),
        (None, None) => Err(ExactlyOnceError::NoTransactionalId),
    }
}

/// Why a transaction did not commit.
enum Attempt {
    /// Abort and try again (the broker refused a message for good: it is
    /// dead-lettered in the next attempt).
    Redo,
    Failed(KafkaError),
}

type PartitionKey = (String, i32);

pub struct ExactlyOnce {
    consumer: StreamConsumer<LagContext>,
    producer: FutureProducer<KafkaContext>,
    topic: String,
    dlq_topic: String,
    writer: String,
    skip_feature_metrics: bool,
    max_batch: usize,
    max_wait: Duration,
    metrics: WriterMetrics,
    /// Received, not yet committed, in arrival order.
    held: VecDeque<Envelope>,
    /// Topic names, shared by the envelopes.
    topics: Vec<Arc<str>>,
    revocations_seen: u64,
    /// Messages the broker refused to take as metrics, by (partition,
    /// offset): the writer consumes one topic.
    refused: HashMap<(i32, i64), String>,
}

impl ExactlyOnce {
    pub fn connect(cfg: &WriterConfig, metrics: WriterMetrics) -> Result<Self, ExactlyOnceError> {
        if cfg.backend != BusBackend::Kafka {
            return Err(ExactlyOnceError::NotKafka);
        }
        let acks = cfg.publish_acks.clone();
        if !matches!(Acks::parse(acks.as_deref()), Ok(Acks::All)) {
            return Err(ExactlyOnceError::Acks(acks.unwrap_or_default()));
        }
        let topic = cfg.publish_topic.clone().ok_or(ExactlyOnceError::NoTopic)?;
        let dlq_topic = cfg
            .dlq_topic
            .clone()
            .ok_or(ExactlyOnceError::NoDeadLetterTopic)?;
        let id = transactional_id(
            cfg.transactional_id.as_deref(),
            &cfg.kafka.group_id,
            cfg.hostname.as_deref(),
        )?;

        let consumer: StreamConsumer<LagContext> = client_config(&cfg.kafka)
            .set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &cfg.kafka.auto_offset_reset)
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagContext::new(
                metrics.clone(),
                KafkaContext::new(&cfg.kafka),
            ))?;
        consumer.subscribe(&[cfg.subscription.as_str()])?;
        let producer: FutureProducer<KafkaContext> = producer_config(&cfg.kafka, Acks::All)
            .set("transactional.id", &id)
            .set("transaction.timeout.ms", "60000")
            .create_with_context(KafkaContext::new(&cfg.kafka))?;
        // Fences any earlier producer with this id and aborts its open transaction.
        tokio::task::block_in_place(|| producer.init_transactions(CALL_TIMEOUT))
            .map_err(ExactlyOnceError::Fatal)?;
        info!(%topic, transactional_id = %id, "publishing metrics to kafka in transactions");
        Ok(ExactlyOnce {
            consumer,
            producer,
            topic,
            dlq_topic,
            writer: cfg.writer_name.clone(),
            skip_feature_metrics: cfg.skip_feature_metrics,
            max_batch: cfg.max_batch_size.max(1),
            max_wait: cfg.max_batch_wait,
            metrics,
            held: VecDeque::new(),
            topics: Vec::new(),
            revocations_seen: 0,
            refused: HashMap::new(),
        })
    }

    /// Runs until `shutdown`; a batch being committed is finished first.
    /// Messages received but not committed are redelivered to the next owner.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ExactlyOnceError> {
        let mut backoff = new_backoff();
        while self.gather(&mut shutdown).await {
            let started = Instant::now();
            loop {
                let n = self.held.len().min(self.max_batch);
                if n == 0 {
                    break;
                }
                match self.transact(n).await {
                    Ok((published, dead)) => {
                        self.record(n, published, dead, started);
                        self.held.drain(..n);
                        backoff = new_backoff();
                        break;
                    }
                    Err(attempt) => {
                        self.abort()?;
                        if let Attempt::Failed(e) = attempt {
                            if is_fatal(&e) {
                                return Err(ExactlyOnceError::Fatal(e));
                            }
                            self.metrics.retries.inc();
                            let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                            warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "metrics transaction aborted; retrying the batch");
                            if !self.wait(delay, &mut shutdown).await {
                                break;
                            }
                        }
                    }
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.consumer.unsubscribe();
        info!("writer stopped");
        Ok(())
    }

    /// Receives into `held` until a batch is full or `max_wait` passed since
    /// the first message. False on shutdown.
    async fn gather(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = self.consumer.resume(&assignment) {
                    warn!(error = %e, "resume before receiving the next batch");
                }
            }
            Err(e) => warn!(error = %e, "assignment, to resume before receiving"),
        }
        while self.held.is_empty() {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return false,
                m = self.consumer.recv() => match m {
                    Ok(m) => { let e = envelope(&m, &mut self.topics); drop(m); self.hold(e); }
                    Err(e) => warn!(error = %e, "kafka receive"),
                },
            }
        }
        let deadline = tokio::time::Instant::now() + self.max_wait;
        while self.held.len() < self.max_batch {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return false,
                m = timeout_at(deadline, self.consumer.recv()) => match m {
                    Ok(Ok(m)) => { let e = envelope(&m, &mut self.topics); drop(m); self.hold(e); }
                    Ok(Err(e)) => { warn!(error = %e, "kafka receive"); break; }
                    Err(_) => break,
                },
            }
        }
        self.drop_revoked();
        !self.held.is_empty() || !*shutdown.borrow()
    }

    /// Adds a received message. A message at or before one already held
    /// means its partition was rewound (a rebalance reset it to the committed
    /// offset): the held copies from there on are dropped and come again.
    fn hold(&mut self, env: Envelope) {
        self.drop_revoked();
        hold_in_order(&mut self.held, env);
    }

    /// After a revocation, forgets held messages of partitions no longer ours.
    fn drop_revoked(&mut self) {
        let revocations = self.consumer.context().revocations.load(Ordering::SeqCst);
        if revocations == self.revocations_seen {
            return;
        }
        self.revocations_seen = revocations;
        let assigned: Vec<PartitionKey> = match self.consumer.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(_) => Vec::new(),
        };
        let before = self.held.len();
        self.held.retain(|h| {
            position(h).is_some_and(|(t, p, _)| assigned.iter().any(|(at, ap)| at == t && *ap == p))
        });
        if self.held.len() != before {
            info!(
                dropped = before - self.held.len(),
                "rebalance: dropped held messages of revoked partitions"
            );
        }
    }

    /// One transaction over the first `n` held messages: (published, dead-lettered).
    async fn transact(&mut self, n: usize) -> Result<(u64, u64), Attempt> {
        self.producer.begin_transaction().map_err(Attempt::Failed)?;
        let consumed_at = now_micros();
        let mut deliveries: Vec<(usize, bool, DeliveryFuture)> = Vec::with_capacity(n);
        for i in 0..n {
            let Some(env) = self.held.get(i) else { break };
            let poison = match self.refused.get(&key(env)) {
                Some(reason) => Err(WriterError::Rejected(reason.clone())),
                None => parse(&env.payload)
                    .map(|r| outgoing(&r, consumed_at, self.skip_feature_metrics))
                    .map_err(WriterError::Decode),
            };
            let (is_metrics, delivery) = match poison {
                Ok(out) => match self.send_metrics(&out).await {
                    Ok(d) => (true, d),
                    Err(e) if too_large(&e) => {
                        self.refused
                            .insert(key(env), format!("metrics message refused by kafka: {e}"));
                        return Err(Attempt::Redo);
                    }
                    Err(e) => return Err(Attempt::Failed(e)),
                },
                Err(error) => {
                    let headers = dlq::headers(&env.origin(), &error, &self.writer, 1);
                    warn!(class = error.label(), reason = error.reason(), origin = ?env.origin(), "message dead-lettered in the transaction");
                    (
                        false,
                        self.send_dead_letter(env, &headers)
                            .await
                            .map_err(Attempt::Failed)?,
                    )
                }
            };
            deliveries.push((i, is_metrics, delivery));
        }
        let (mut published, mut dead) = (0u64, 0u64);
        let mut failure = None;
        for (i, is_metrics, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) if is_metrics => published += 1,
                Ok(Ok(_)) => dead += 1,
                Ok(Err((e, _))) if is_metrics && too_large(&e) => {
                    if let Some(env) = self.held.get(i) {
                        self.refused
                            .insert(key(env), format!("metrics message refused by kafka: {e}"));
                    }
                    failure.get_or_insert(Attempt::Redo);
                }
                Ok(Err((e, _))) => {
                    failure.get_or_insert(Attempt::Failed(e));
                }
                Err(_) => {
                    failure.get_or_insert(Attempt::Failed(KafkaError::Canceled));
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        let offsets = next_offsets(self.held.range(..n)).map_err(Attempt::Failed)?;
        let group = self
            .consumer
            .group_metadata()
            // Only a consumer without a group has none; ours always has one.
            .ok_or(Attempt::Failed(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::InvalidGroupId,
            )))?;
        let producer = &self.producer;
        tokio::task::block_in_place(|| {
            producer.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)?;
            producer.commit_transaction(CALL_TIMEOUT)
        })
        .map_err(Attempt::Failed)?;
        if !self.refused.is_empty() {
            for env in self.held.range(..n) {
                self.refused.remove(&key(env));
            }
        }
        Ok((published, dead))
    }

    async fn send_metrics(&self, out: &Outgoing) -> Result<DeliveryFuture, KafkaError> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic).payload(&out.payload);
        if !out.key.is_empty() {
            record = record.key(&out.key);
        }
        send_when_queued(&self.producer, record).await
    }

    async fn send_dead_letter(
        &self,
        env: &Envelope,
        headers: &[(&'static str, String)],
    ) -> Result<DeliveryFuture, KafkaError> {
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
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dlq_topic)
            .payload(env.payload.as_slice())
            .headers(h);
        if let Some(key) = &env.key {
            record = record.key(key.as_slice());
        }
        send_when_queued(&self.producer, record).await
    }

    fn abort(&self) -> Result<(), ExactlyOnceError> {
        match tokio::task::block_in_place(|| self.producer.abort_transaction(CALL_TIMEOUT)) {
            Ok(()) => Ok(()),
            Err(e) if is_fatal(&e) => Err(ExactlyOnceError::Fatal(e)),
            // No transaction open (begin failed): nothing to abort.
            Err(e) => {
                warn!(error = %e, "abort");
                Ok(())
            }
        }
    }

    /// Waits `delay` with the partitions paused, serving the consumer so the
    /// group session lives and rebalances are seen. False on shutdown.
    async fn wait(&mut self, delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = self.consumer.pause(&assignment) {
                    warn!(error = %e, "pause while waiting to retry the batch");
                }
            }
            Err(e) => warn!(error = %e, "assignment, to pause while waiting to retry"),
        }
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return false,
                m = timeout_at(deadline, self.consumer.recv()) => match m {
                    // Only partitions assigned meanwhile deliver while paused.
                    Ok(Ok(m)) => { let e = envelope(&m, &mut self.topics); drop(m); self.hold(e); }
                    Ok(Err(e)) => warn!(error = %e, "kafka receive"),
                    Err(_) => break,
                },
            }
        }
        self.drop_revoked();
        true
    }

    fn record(&self, n: usize, published: u64, dead: u64, started: Instant) {
        self.metrics.consumed.inc_by(n as u64);
        self.metrics.written.inc_by(published);
        self.metrics.dead_lettered.inc_by(dead);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .observe_written(self.held.range(..n).filter_map(|e| e.published_ms));
    }
}

/// The runtime's retry delays, capped as the runtime's are.
fn new_backoff() -> impl Iterator<Item = Duration> {
    retry_backoff(MAX_BACKOFF)
}

/// Appends `env`, first dropping held messages of its partition at or past
/// its offset (a rewound partition delivers them again, in order).
fn hold_in_order(held: &mut VecDeque<Envelope>, env: Envelope) {
    if let Some((topic, partition, offset)) = position(&env) {
        held.retain(|h| match position(h) {
            Some((t, p, o)) => !(t == topic && p == partition && o >= offset),
            None => true,
        });
    }
    held.push_back(env);
}

fn position(env: &Envelope) -> Option<(&str, i32, i64)> {
    match &env.token {
        crate::writer::bus::AckToken::Kafka {
            topic,
            partition,
            offset,
        } => Some((&**topic, *partition, *offset)),
        crate::writer::bus::AckToken::Pubsub { .. } => None,
    }
}

fn key(env: &Envelope) -> (i32, i64) {
    position(env).map_or((-1, -1), |(_, p, o)| (p, o))
}

/// The offsets to commit: one past the highest of each partition.
pub fn next_offsets<'a>(
    batch: impl Iterator<Item = &'a Envelope>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in next_offsets_by_partition(batch) {
        tpl.add_partition_offset(t, p, Offset::Offset(o))?;
    }
    Ok(tpl)
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::bus::AckToken;

    fn at(topic: &str, partition: i32, offset: i64) -> Envelope {
        Envelope {
            payload: Vec::new(),
            published_ms: None,
            traceparent: None,
            key: None,
            headers: Vec::new(),
            token: AckToken::Kafka {
                topic: topic.into(),
                partition,
                offset,
            },
        }
    }

    #[test]
    fn the_flag_and_the_id_read_strictly() -> Result<(), ExactlyOnceError> {
        assert!(!requested(None)?);
        assert!(!requested(Some("false"))?);
        assert!(requested(Some(" true "))?);
        assert!(requested(Some("yes")).is_err());
        assert_eq!(transactional_id(Some("tx-1"), "g", Some("pod-a"))?, "tx-1");
        assert_eq!(transactional_id(None, "g", Some("pod-a"))?, "g.pod-a");
        assert_eq!(transactional_id(Some(""), "g", Some("pod-a"))?, "g.pod-a");
        assert!(transactional_id(None, "g", None).is_err());
        Ok(())
    }

    #[test]
    fn a_rewound_partition_replaces_what_was_held_from_there_on() {
        let mut held = VecDeque::new();
        for e in [at("r", 0, 5), at("r", 1, 2), at("r", 0, 6), at("r", 0, 7)] {
            hold_in_order(&mut held, e);
        }
        // Partition 0 reset to its committed offset 6 after a rebalance.
        hold_in_order(&mut held, at("r", 0, 6));
        let got: Vec<_> = held.iter().filter_map(position).collect();
        assert_eq!(got, vec![("r", 0, 5), ("r", 1, 2), ("r", 0, 6)]);
    }

    #[test]
    fn offsets_are_one_past_each_partitions_highest() -> Result<(), KafkaError> {
        let batch = [at("r", 0, 7), at("r", 1, 3), at("r", 0, 9), at("r", 0, 8)];
        let tpl = next_offsets(batch.iter())?;
        let got: Vec<(String, i32, Offset)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("r".into(), 0, Offset::Offset(10)),
                ("r".into(), 1, Offset::Offset(4))
            ]
        );
        Ok(())
    }
}
