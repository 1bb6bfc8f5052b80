//! Kafka around the writers: the rig's plaintext client, topics, producing (all at once,
//! tracked, or paced) and the consumer group's offsets. The `_at` forms take
//! the bootstrap servers of another cluster (a broker a test owns).

use crate::support::rig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

pub fn kafka_plain() -> ClientConfig {
    kafka_at(&rig("kafka", "BGP_KAFKA_PLAINTEXT"))
}

/// A plaintext client of the cluster at `bootstrap`.
pub fn kafka_at(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

pub async fn create_topics(names: &[(&str, i32)]) -> anyhow::Result<()> {
    create_topics_at(&rig("kafka", "BGP_KAFKA_PLAINTEXT"), names).await
}

pub async fn create_topics_at(bootstrap: &str, names: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_at(bootstrap).create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces payloads in order, keyed so each pkey's messages share a partition
/// only by chance: the writer must not depend on order.
pub async fn produce(topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    produce_compressed(topic, payloads, "none").await
}

/// `produce` with the producer compressing its batches with `codec`
/// (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
pub async fn produce_compressed(
    topic: &str,
    payloads: &[Vec<u8>],
    codec: &str,
) -> anyhow::Result<()> {
    // Idempotent: a retried send must not add a message, since tests count
    // offsets exactly.
    let producer: FutureProducer = kafka_plain()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", codec)
        .create()?;
    let sends = payloads.iter().enumerate().map(|(i, p)| {
        let key = i.to_string();
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(p),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// Committed offsets of `group` on `topic`, summed over partitions, and the end offsets.
pub fn committed_and_end(topic: &str, group: &str, partitions: i32) -> anyhow::Result<(i64, i64)> {
    Ok(offsets_by_partition(topic, group, partitions)?
        .iter()
        .fold((0, 0), |(c, e), (pc, pe)| (c + pc.max(&0), e + pe)))
}

/// Delivery position of each produced message: (partition, offset).
pub type Positions = Vec<(i32, i64)>;

/// Produces `payloads` (keyed by index) and returns where each one landed.
pub async fn produce_tracked(topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<Positions> {
    let producer: FutureProducer = kafka_plain().set("linger.ms", "5").create()?;
    let mut out = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(5000) {
        let sends = chunk.iter().enumerate().map(|(i, p)| {
            let key = (out.len() + i).to_string();
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(p),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            out.push(r?);
        }
    }
    Ok(out)
}

/// A background producer of `make(0)`, `make(1)`, ... at a steady rate.
pub struct Paced {
    /// Messages handed to the producer so far.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<Positions>>,
}

impl Paced {
    /// Starts producing about `per_second` messages a second, at most `limit`.
    pub fn start(
        topic: &str,
        per_second: u64,
        limit: u64,
        make: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> Paced {
        let rig_kafka = rig("kafka", "BGP_KAFKA_PLAINTEXT");
        Paced::start_at(&rig_kafka, topic, per_second, limit, make)
    }

    /// `start` on the cluster at `bootstrap`.
    pub fn start_at(
        bootstrap: &str,
        topic: &str,
        per_second: u64,
        limit: u64,
        make: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> Paced {
        use std::sync::atomic::Ordering;
        let topic = topic.to_string();
        let client = kafka_at(bootstrap);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let counter = sent.clone();
        let handle = tokio::spawn(async move {
            // Idempotent: a send retried across a broker restart is stored
            // once, so the topic holds exactly the messages made.
            let producer: FutureProducer = client
                .clone()
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create()?;
            let per_tick = (per_second / 100).max(1);
            let mut pending = Vec::new();
            let mut i = 0u64;
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !*stopped.borrow() && i < limit {
                interval.tick().await;
                for _ in 0..per_tick.min(limit - i) {
                    let payload = make(i);
                    let key = i.to_string();
                    let mut record = FutureRecord::to(&topic).key(&key).payload(&payload);
                    loop {
                        match producer.send_result(record) {
                            Ok(delivery) => {
                                pending.push(delivery);
                                break;
                            }
                            Err((
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                                ),
                                r,
                            )) => {
                                record = r;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err((e, _)) => anyhow::bail!("produce: {e}"),
                        }
                    }
                    i += 1;
                    counter.store(i, Ordering::SeqCst);
                }
            }
            let mut out = Vec::with_capacity(pending.len());
            for d in pending {
                let (partition, offset) = d
                    .await
                    .map_err(|_| anyhow::anyhow!("producer dropped a delivery"))?
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| e)?;
                out.push((partition, offset));
            }
            Ok(out)
        });
        Paced { sent, stop, handle }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops producing, waits for every delivery and returns where each message landed.
    pub async fn finish(self) -> anyhow::Result<Positions> {
        let _ = self.stop.send(true);
        self.handle.await?
    }
}

/// Per partition: (committed offset, or -1 when none; end offset).
pub fn offsets_by_partition(
    topic: &str,
    group: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i64, i64)>> {
    offsets_by_partition_at(
        &rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        topic,
        group,
        partitions,
    )
}

/// `offsets_by_partition` on the cluster at `bootstrap`.
pub fn offsets_by_partition_at(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i64, i64)>> {
    // read_uncommitted: librdkafka's default (read_committed) asks the
    // broker for stable offsets only, and an offset commit pending in a
    // killed writer's open transaction then blocks the query until that
    // transaction is aborted (transaction.timeout.ms). We want the offsets
    // as they stand.
    let consumer: BaseConsumer = kafka_at(bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    (0..partitions)
        .map(|p| {
            let c = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            let end = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1;
            Ok((c, end))
        })
        .collect()
}

pub async fn delete_topics(names: &[&str]) -> anyhow::Result<()> {
    delete_topics_at(&rig("kafka", "BGP_KAFKA_PLAINTEXT"), names).await
}

pub async fn delete_topics_at(bootstrap: &str, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_at(bootstrap).create()?;
    admin.delete_topics(names, &AdminOptions::new()).await?;
    Ok(())
}

/// A dead letter: payload and headers.
pub type Letter = (Vec<u8>, std::collections::BTreeMap<String, String>);

/// A Kafka message's headers as (key, UTF-8 value) pairs, in any collection.
pub fn headers_of<C: FromIterator<(String, String)>>(m: &impl rdkafka::Message) -> C {
    use rdkafka::message::Headers;
    m.headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

/// The first `n` messages of a Kafka dead-letter topic, from the beginning.
pub async fn dead_letters(topic: &str, n: usize) -> anyhow::Result<Vec<Letter>> {
    dead_letters_at(&rig("kafka", "BGP_KAFKA_PLAINTEXT"), topic, n).await
}

/// `dead_letters` on the cluster at `bootstrap`.
pub async fn dead_letters_at(
    bootstrap: &str,
    topic: &str,
    n: usize,
) -> anyhow::Result<Vec<Letter>> {
    use rdkafka::consumer::StreamConsumer;
    let consumer: StreamConsumer = kafka_at(bootstrap)
        .set("group.id", crate::support::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut letters = Vec::new();
    while letters.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} of {n} dead letters on {topic} in 30 s", letters.len())
            })??;
        letters.push((
            rdkafka::Message::payload(&m).unwrap_or_default().to_vec(),
            headers_of(&m),
        ));
    }
    Ok(letters)
}
