//! Starting writer processes and talking to the bus and stores around them.

use crate::support::{rig, unique};
use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn kafka_plain() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig("kafka", "BGP_KAFKA_PLAINTEXT"));
    c
}

pub async fn create_topics(names: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_plain().create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

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

/// Produces payloads in order, keyed so each pkey's messages share a partition
/// only by chance: the writer must not depend on order.
pub async fn produce(topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka_plain().set("linger.ms", "5").create()?;
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

/// The writer binary as a child process with its own log file.
pub struct Writer {
    pub child: Child,
    pub log: PathBuf,
    pub http_port: u16,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Writer {
    pub fn start(env: &[(&str, String)]) -> anyhow::Result<Writer> {
        let http_port = free_port()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}.log", unique("writer")));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("BGP_LOG_FORMAT", "text")
            .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BGP_MAX_BATCH_WAIT_MS", "20");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?;
        Ok(Writer {
            child,
            log,
            http_port,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{sig} failed");
        Ok(())
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "writer did not exit within {within:?}; log:\n{}",
            self.log_text()
        )
    }

    pub fn metrics(&self) -> String {
        crate::harness::http_get(self.http_port, "/metrics").unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Base environment of a Kafka → Redis online writer.
pub fn online_writer_env(
    topic: &str,
    dlq: &str,
    group: &str,
    redis_uri: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("BGP_WRITER_TYPE", "ONLINE_WRITER".into()),
        ("BGP_WRITER_NAME", "online".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "KAFKA".into()),
        ("BGP_SUBSCRIPTION", topic.into()),
        ("BGP_DLQ_TOPIC", dlq.into()),
        (
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ),
        ("BGP_KAFKA_CONSUMER_GROUP", group.into()),
        ("BGP_ONLINE_STORE_URI", redis_uri.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ]
}

/// Reads the hash of each pkey: field → value.
pub async fn redis_entities(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    prefix: &str,
    pkeys: &[String],
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for p in pkeys {
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}user/{p}"))
            .query_async(conn)
            .await?;
        if !h.is_empty() {
            out.insert(p.clone(), h);
        }
    }
    Ok(out)
}

/// Committed offsets of `group` on `topic`, summed over partitions, and the end offsets.
pub fn committed_and_end(topic: &str, group: &str, partitions: i32) -> anyhow::Result<(i64, i64)> {
    Ok(offsets_by_partition(topic, group, partitions)?
        .iter()
        .fold((0, 0), |(c, e), (pc, pe)| (c + pc.max(&0), e + pe)))
}

/// Polls `check` until it returns Some or `within` passes.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_err = None;
    while Instant::now() < deadline {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("timed out after {within:?} waiting for {what} (last error: {last_err:?})")
}

// ---------------------------------------------------------------------------
// Robustness helpers (tests/writers/robustness.rs): metrics scraping, tracked
// and paced producing, per-partition offsets, a dedicated Redis with AOF.
// ---------------------------------------------------------------------------

/// The value of an unlabelled sample `name` in a Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

impl Writer {
    /// An unlabelled sample from the writer's /metrics (None while it is not serving).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics();
        metric_value(&text, name)
    }

    /// True once the process has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
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
        use std::sync::atomic::Ordering;
        let topic = topic.to_string();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let counter = sent.clone();
        let handle = tokio::spawn(async move {
            let producer: FutureProducer = kafka_plain().set("linger.ms", "5").create()?;
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
    // read_uncommitted: librdkafka's default (read_committed) asks the
    // broker for stable offsets only, and an offset commit pending in a
    // killed writer's open transaction then blocks the query until that
    // transaction is aborted (transaction.timeout.ms). We want the offsets
    // as they stand.
    let consumer: BaseConsumer = kafka_plain()
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
    let admin: AdminClient<DefaultClientContext> = kafka_plain().create()?;
    admin.delete_topics(names, &AdminOptions::new()).await?;
    Ok(())
}

/// Every key starting with `prefix`.
pub async fn redis_keys(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A redis-server owned by one test: its own port and directory, append-only
/// file fsynced on every write, so a kill and restart keeps what was written.
pub struct OwnedRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl OwnedRedis {
    pub fn start() -> anyhow::Result<OwnedRedis> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("redis"));
        std::fs::create_dir_all(&dir)?;
        let mut r = OwnedRedis {
            port: free_port()?,
            dir,
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on the same port and directory and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "redis is already running");
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the server by PID and reaps it: a hard stop, no shutdown save.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Pub/Sub helpers (tests/writers/online_pubsub.rs): the rig's emulator through
// the official google-cloud-pubsub crate (API notes in tests/smoke/pubsub.rs).
// ---------------------------------------------------------------------------

pub fn pubsub_endpoint() -> String {
    rig("pubsub", "BGP_PUBSUB_ENDPOINT")
}

pub fn pubsub_project() -> String {
    rig("pubsub", "BGP_PUBSUB_PROJECT")
}

/// Topics and subscriptions created by one test, deleted by `cleanup`.
pub struct PubsubResources {
    topics: google_cloud_pubsub::client::TopicAdmin,
    subscriptions: google_cloud_pubsub::client::SubscriptionAdmin,
    created_topics: Vec<String>,
    created_subscriptions: Vec<String>,
}

impl PubsubResources {
    pub async fn new() -> anyhow::Result<PubsubResources> {
        use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
        use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
        let endpoint = pubsub_endpoint();
        Ok(PubsubResources {
            topics: TopicAdmin::builder()
                .with_endpoint(&endpoint)
                .with_credentials(Anonymous::new().build())
                .build()
                .await?,
            subscriptions: SubscriptionAdmin::builder()
                .with_endpoint(&endpoint)
                .with_credentials(Anonymous::new().build())
                .build()
                .await?,
            created_topics: Vec::new(),
            created_subscriptions: Vec::new(),
        })
    }

    /// Creates topic `id`; returns its full path.
    pub async fn topic(&mut self, id: &str) -> anyhow::Result<String> {
        let name = format!("projects/{}/topics/{id}", pubsub_project());
        self.topics.create_topic().set_name(&name).send().await?;
        self.created_topics.push(name.clone());
        Ok(name)
    }

    /// Creates subscription `id` on `topic` (a full path); returns its full path.
    pub async fn subscription(
        &mut self,
        id: &str,
        topic: &str,
        ack_deadline: Duration,
    ) -> anyhow::Result<String> {
        let name = format!("projects/{}/subscriptions/{id}", pubsub_project());
        self.subscriptions
            .create_subscription()
            .set_name(&name)
            .set_topic(topic)
            .set_ack_deadline_seconds(ack_deadline.as_secs() as i32)
            .send()
            .await?;
        self.created_subscriptions.push(name.clone());
        Ok(name)
    }

    /// Deletes what was created, best effort.
    pub async fn cleanup(&mut self) {
        for s in self.created_subscriptions.drain(..) {
            let _ = self
                .subscriptions
                .delete_subscription()
                .set_subscription(&s)
                .send()
                .await;
        }
        for t in self.created_topics.drain(..) {
            let _ = self.topics.delete_topic().set_topic(&t).send().await;
        }
    }
}

/// A message to publish: payload and attributes.
pub type Outgoing = (Vec<u8>, Vec<(String, String)>);

/// Publishes each payload with its attributes; returns the message ids in order.
pub async fn pubsub_publish(topic: &str, messages: &[Outgoing]) -> anyhow::Result<Vec<String>> {
    use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
    use google_cloud_pubsub::client::Publisher;
    use google_cloud_pubsub::model::Message;
    let publisher = Publisher::builder(topic)
        .with_endpoint(pubsub_endpoint())
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    let pending: Vec<_> = messages
        .iter()
        .map(|(data, attrs)| {
            publisher.publish(
                Message::new()
                    .set_data(data.clone())
                    .set_attributes(attrs.clone()),
            )
        })
        .collect();
    publisher.flush().await;
    let mut ids = Vec::with_capacity(pending.len());
    for fut in pending {
        ids.push(tokio::time::timeout(Duration::from_secs(30), fut).await??);
    }
    Ok(ids)
}

/// Streaming pulls on a subscription, each read and acked by its own task:
/// the crate's `next()` must not be cancelled while it opens a stream, so
/// timeouts apply to a channel instead.
///
/// The emulator never notices a streaming pull the client cancelled (its
/// RST_STREAM handler throws NoSuchMethodError, see .rig/logs/pubsub.log):
/// it keeps dispatching to the dead stream, where messages sit until their
/// ack deadline. Several live streams make a quick redelivery likely anyway.
pub struct PubsubReader {
    rx: tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<google_cloud_pubsub::model::Message>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PubsubReader {
    /// Reads `subscription` (a full path) over `streams` streams with the
    /// given lease extension.
    pub async fn start(
        subscription: &str,
        ack_deadline: Duration,
        streams: usize,
    ) -> anyhow::Result<PubsubReader> {
        use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
        use google_cloud_pubsub::client::Subscriber;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..streams.max(1) {
            let subscriber = Subscriber::builder()
                .with_endpoint(pubsub_endpoint())
                .with_credentials(Anonymous::new().build())
                .build()
                .await?;
            let mut stream = subscriber
                .subscribe(subscription)
                .set_max_lease_extension(ack_deadline)
                .build();
            let (tx, mut stopped) = (tx.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        n = stream.next() => n,
                    };
                    match next {
                        Some(Ok((msg, handler))) => {
                            handler.ack();
                            let _ = tx.send(Ok(msg));
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e.into()));
                            break;
                        }
                        None => break,
                    }
                }
                // Flush the acks before the stream goes away.
                stream.shutdown_token().shutdown().await;
            }));
        }
        Ok(PubsubReader { rx, stop, tasks })
    }

    /// The next `n` messages within `within`.
    pub async fn receive(
        &mut self,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<google_cloud_pubsub::model::Message>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("received {} of {n} messages in {within:?}", out.len())
                })?
                .ok_or_else(|| anyhow::anyhow!("message stream ended"))??;
            out.push(msg);
        }
        Ok(out)
    }

    /// Fails if a message arrives within `window`.
    pub async fn expect_silence(&mut self, window: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(window, self.rx.recv()).await {
            Err(_elapsed) => Ok(()),
            Ok(None) => anyhow::bail!("message stream ended during the silence window"),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(msg))) => anyhow::bail!(
                "unexpected message {} ({} bytes) within {window:?}",
                msg.message_id,
                msg.data.len()
            ),
        }
    }

    /// Stops reading and waits until the acks are sent.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), task).await??;
        }
        Ok(())
    }
}

/// Base environment of a Pub/Sub → Redis online writer. `dlq` may be None.
pub fn online_pubsub_writer_env(
    subscription: &str,
    dlq: Option<&str>,
    redis_uri: &str,
    ack_deadline: Duration,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BGP_WRITER_TYPE", "ONLINE_WRITER".into()),
        ("BGP_WRITER_NAME", "online".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "PUBSUB".into()),
        ("BGP_SUBSCRIPTION", subscription.into()),
        ("BGP_PUBSUB_ENDPOINT", pubsub_endpoint()),
        ("BGP_PUBSUB_PROJECT", pubsub_project()),
        (
            "BGP_PUBSUB_ACK_DEADLINE_SECONDS",
            ack_deadline.as_secs().to_string(),
        ),
        ("BGP_ONLINE_STORE_URI", redis_uri.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ];
    if let Some(d) = dlq {
        env.push(("BGP_DLQ_TOPIC", d.into()));
    }
    env
}

// ---- The online writers' shared dataset ----

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

/// A connection to the rig's standalone Redis.
pub async fn standalone() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(rig("redis", "BGP_REDIS_URL"))?
        .get_multiplexed_async_connection()
        .await?)
}
