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
    let consumer: BaseConsumer = kafka_plain().set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut sum = 0;
    let mut end = 0;
    for p in 0..partitions {
        if let Some(Offset::Offset(o)) = committed.find_partition(topic, p).map(|e| e.offset()) {
            sum += o;
        }
        end += consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))?
            .1;
    }
    Ok((sum, end))
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
