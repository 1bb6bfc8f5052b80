//! The rig's Kafka: topics, producing, the consume-only ceiling, and the
//! environment of a writer that reads from it.

use crate::support::{rig, unique};
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Partitions of every bench topic.
pub const PARTITIONS: i32 = 4;

/// How long a producer waits when its local queue is full, unless a bench
/// says otherwise.
pub const BACKOFF: Duration = Duration::from_millis(2);

pub fn bootstrap() -> String {
    rig("kafka", "BGP_KAFKA_PLAINTEXT")
}

/// A client configuration for the rig's broker.
pub fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

pub fn admin() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(kafka().create()?)
}

/// Creates `topic` with [`PARTITIONS`] partitions.
pub async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<()> {
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

pub async fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&str],
) -> anyhow::Result<()> {
    admin.delete_topics(topics, &AdminOptions::new()).await?;
    Ok(())
}

/// A producer batching for 5 ms, with `settings` on top.
pub fn producer(settings: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
    let mut config = kafka();
    config.set("linger.ms", "5");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    Ok(config.create()?)
}

/// Seconds a [`produce`] took to queue its messages and to have them all
/// delivered.
pub struct Produced {
    pub messages: u64,
    pub queued_secs: f64,
    pub delivered_secs: f64,
}

impl Produced {
    /// Messages/s until the last delivery.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.delivered_secs
    }

    /// Messages/s of queueing alone (the pace a paced run held).
    pub fn queue_rate(&self) -> f64 {
        self.messages as f64 / self.queued_secs
    }
}

/// Sends `(key, payload)` messages to `topic` at about `per_second` (0: as
/// fast as the producer takes them, waiting `backoff` whenever its queue is
/// full) and waits for every delivery. The clock includes making the
/// messages when `messages` makes them lazily.
pub async fn produce<P: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    messages: impl IntoIterator<Item = (String, P)>,
    per_second: u64,
    backoff: Duration,
) -> anyhow::Result<Produced> {
    let started = Instant::now();
    let mut pending = Vec::new();
    for (j, (key, payload)) in messages.into_iter().enumerate() {
        if per_second > 0 {
            let due = started + Duration::from_secs_f64(j as f64 / per_second as f64);
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut record = FutureRecord::to(topic).key(&key).payload(payload.as_ref());
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    let queued_secs = started.elapsed().as_secs_f64();
    let messages = pending.len() as u64;
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(Produced {
        messages,
        queued_secs,
        delivered_secs: started.elapsed().as_secs_f64(),
    })
}

/// Consume-only ceiling: a fresh group reads `n` messages of `topic` from
/// the start, copying each payload like the writer does; (messages/s,
/// bytes/s), the clock started at the first message.
pub async fn consume_only(topic: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let consumer: StreamConsumer = kafka()
        .set("group.id", unique("bench-consume"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let first = consumer.recv().await?;
    let mut bytes = first.payload().map_or(0, <[u8]>::len) as u64;
    drop(first);
    let started = Instant::now();
    for _ in 1..n {
        let m = consumer.recv().await?;
        let p = std::hint::black_box(m.payload().unwrap_or_default().to_vec());
        bytes += p.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(((n - 1) as f64 / secs, bytes as f64 / secs))
}

/// The bus alone, the latency floor under a writer: a consumer with the
/// writer's librdkafka defaults reads a fresh `topic` from the start, on a
/// thread of its own, copying each payload like the writer does. The first
/// `warm_up` messages only start it (the reply to `warmed` says they are
/// in: fetching has begun, as for a running writer); each of the next `n`
/// is timed from its create time to its receipt. Milliseconds (Kafka's
/// timestamp resolution), in arrival order.
pub fn time_arrivals(
    topic: &str,
    warm_up: u64,
    n: u64,
    warmed: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Vec<f64>>>> {
    let mut config = kafka();
    config
        .set("group.id", unique("bench-latency"))
        .set("enable.auto.commit", "false");
    for (k, v) in bgpersist::writer::bus::kafka::CONSUMER_DEFAULTS {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create()?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    Ok(std::thread::spawn(move || {
        let mut millis = Vec::with_capacity(n as usize);
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen < warm_up + n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{seen} of {} messages arrived",
                warm_up + n
            );
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
            std::hint::black_box(m.payload().unwrap_or_default().to_vec());
            seen += 1;
            if seen == warm_up {
                let _ = warmed.send(());
            }
            if seen > warm_up
                && let Some(created) = m.timestamp().to_millis()
            {
                millis.push((now - created) as f64);
            }
        }
        Ok(millis)
    }))
}

/// The environment of writer `name` of `writer_type` reading `topic` from
/// the rig's Kafka in a fresh consumer group, as the operator sets it for
/// resource `bench`; then `more` (its store, its settings).
pub fn writer_env<'a>(
    writer_type: &str,
    name: &str,
    topic: &str,
    more: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(&'a str, String)> {
    let mut env = vec![
        ("BGP_WRITER_TYPE", writer_type.to_string()),
        ("BGP_WRITER_NAME", name.to_string()),
        ("BGP_RESOURCE", "bench".to_string()),
        ("BGP_BUS_BACKEND", "KAFKA".to_string()),
        ("BGP_SUBSCRIPTION", topic.to_string()),
        ("BGP_KAFKA_BOOTSTRAP_SERVERS", bootstrap()),
        ("BGP_KAFKA_CONSUMER_GROUP", unique("bench-writer")),
    ];
    env.extend(more);
    env
}
