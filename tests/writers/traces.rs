//! Traces (docs/tracing.md): an ONLINE_WRITER on Kafka → Redis exports
//! OTLP to a real OpenTelemetry Collector (hack/otelcol: the OTLP receiver
//! and the file exporter); its batch span links each message's
//! `traceparent`, its store write is a child of it, and its dead letter
//! carries the batch's `traceparent` beside the original key and headers.

use crate::harness::*;
use crate::support::{rig, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The collector as a child process, its spans written to `spans`.
struct Collector {
    child: Child,
    port: u16,
    spans: PathBuf,
    log: PathBuf,
}

impl Collector {
    fn start() -> anyhow::Result<Collector> {
        let port = free_port()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("otelcol"));
        std::fs::create_dir_all(&dir)?;
        let (spans, log, config) = (
            dir.join("spans.json"),
            dir.join("collector.log"),
            dir.join("config.yaml"),
        );
        // No telemetry server of its own: port 8888 is not ours to take.
        let yaml = format!(
            r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {spans}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#,
            spans = spans.display()
        );
        std::fs::write(&config, yaml)?;
        let out = std::fs::File::create(&log)?;
        let child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/otelcol/run"))
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?;
        Ok(Collector {
            child,
            port,
            spans,
            log,
        })
    }

    /// Waits until the OTLP receiver accepts connections (hack/otelcol/run
    /// may build the collector first); fails at once if it exited.
    async fn listening(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the collector exited ({status}):\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("the collector does not listen:\n{}", self.log_text())
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One exported span, as the file exporter writes it (OTLP JSON: ids in hex).
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    links: Vec<(String, String)>,
    attributes: Vec<(String, Value)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn links_to(&self, trace_id: &str, span_id: &str) -> bool {
        self.links
            .iter()
            .any(|(t, s)| t == trace_id && s == span_id)
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An OTLP attribute list as (key, value) pairs, the value unwrapped from
/// its `stringValue` / `intValue` / ... wrapper.
fn attributes(v: &Value) -> Vec<(String, Value)> {
    v.get("attributes")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|kv| {
                    let value = kv
                        .get("value")
                        .and_then(Value::as_object)
                        .and_then(|o| o.values().next().cloned())
                        .unwrap_or(Value::Null);
                    (text(kv, "key"), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every span in the exporter's file (one export request per line).
fn read_spans(path: &Path) -> anyhow::Result<Vec<Span>> {
    let Ok(content) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in content.lines().filter(|l| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line)?;
        for rs in request["resourceSpans"].as_array().into_iter().flatten() {
            let service = attributes(&rs["resource"])
                .into_iter()
                .find(|(k, _)| k == "service.name")
                .and_then(|(_, v)| v.as_str().map(str::to_string))
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let links = s["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| (text(l, "traceId"), text(l, "spanId")))
                        .collect();
                    out.push(Span {
                        service: service.clone(),
                        name: text(s, "name"),
                        trace_id: text(s, "traceId"),
                        span_id: text(s, "spanId"),
                        parent: text(s, "parentSpanId"),
                        links,
                        attributes: attributes(s),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Produces one message with `key` and `headers` and waits for the broker.
async fn produce_with(
    topic: &str,
    key: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka_plain().create()?;
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload).headers(h),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// The next dead letter on `dlq`: its key and headers, in order.
type Letter = (Option<Vec<u8>>, Vec<(String, String)>);

async fn read_dead_letter(dlq: &str) -> anyhow::Result<Letter> {
    let consumer: StreamConsumer = kafka_plain()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[dlq])?;
    let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
    let headers = headers_of(&m);
    Ok((m.key().map(<[u8]>::to_vec), headers))
}

// The producer's contexts, as an upstream service would send them.
const GOOD_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const GOOD_SPAN: &str = "00f067aa0ba902b7";
const POISON_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const POISON_SPAN: &str = "b7ad6b7169203331";

#[tokio::test]
async fn batch_spans_link_messages_and_dead_letters_carry_the_batch_context() -> anyhow::Result<()>
{
    let mut collector = Collector::start()?;
    let (topic, dlq, group) = (unique("traced"), unique("traced-dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let good = result_message(vec![observation(&unique("traced-e"), "age", 1, 7)]);
    produce_with(
        &topic,
        "good-key",
        &[("traceparent", &format!("00-{GOOD_TRACE}-{GOOD_SPAN}-01"))],
        &good,
    )
    .await?;
    produce_with(
        &topic,
        "poison-key",
        &[
            ("x-origin", "upstream"),
            (
                "traceparent",
                &format!("00-{POISON_TRACE}-{POISON_SPAN}-01"),
            ),
        ],
        b"\x08\x96\x01 definitely not a ResultMessage",
    )
    .await?;

    // The collector answers before the writer starts, so no span is lost to
    // a refused connection.
    collector.listening().await?;

    let mut env = online_writer_env(&topic, &dlq, &group, &rig("redis", "BGP_REDIS_URL"));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    let mut writer = Writer::start(&env)?;

    let (key, headers) = read_dead_letter(&dlq)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    // SIGTERM flushes what the batch processor still holds.
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(30))?, Some(0));

    // The dead letter keeps the original key and headers; its traceparent is
    // the writer's (one, not the original beside it).
    assert_eq!(key.as_deref(), Some(b"poison-key".as_slice()));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-origin" && v == "upstream"),
        "{headers:?}"
    );
    let traceparents: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.as_str())
        .collect();
    let [dead_letter_context] = traceparents.as_slice() else {
        anyhow::bail!("one traceparent expected on the dead letter: {headers:?}");
    };
    let parts: Vec<&str> = dead_letter_context.split('-').collect();
    let ["00", dl_trace, dl_span, _flags] = parts.as_slice() else {
        anyhow::bail!("not a W3C traceparent: {dead_letter_context}");
    };
    assert_ne!(
        *dl_trace, POISON_TRACE,
        "the writer's context, not the producer's"
    );

    let spans = eventually(
        "the collector to hold the batch and store-write spans",
        Duration::from_secs(30),
        || async {
            let spans = read_spans(&collector.spans)?;
            let linked = |t, s| spans.iter().any(|b: &Span| b.links_to(t, s));
            Ok(
                (linked(GOOD_TRACE, GOOD_SPAN) && linked(POISON_TRACE, POISON_SPAN))
                    .then_some(spans),
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ncollector log:\n{}", collector.log_text()))?;

    // The good message's batch: a consumer-side "process" span after the
    // messaging conventions, with the store write as its child.
    let good_batch = spans
        .iter()
        .find(|s| s.links_to(GOOD_TRACE, GOOD_SPAN))
        .ok_or_else(|| anyhow::anyhow!("no span links the good message: {spans:#?}"))?;
    assert_eq!(good_batch.name, format!("{topic} process"));
    assert_eq!(good_batch.service, "bgpersist-writer");
    assert_ne!(
        good_batch.trace_id, GOOD_TRACE,
        "a batch starts its own trace"
    );
    assert!(good_batch.parent.is_empty(), "{good_batch:?}");
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", topic.as_str()),
    ] {
        assert_eq!(
            good_batch.attribute(key).and_then(Value::as_str),
            Some(value),
            "{key} on {good_batch:?}"
        );
    }
    // OTLP JSON writes 64-bit integers as strings.
    let count = good_batch
        .attribute("messaging.batch.message_count")
        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()));
    assert!(
        count.as_deref().is_some_and(|c| c == "1" || c == "2"),
        "{good_batch:?}"
    );
    let write = spans
        .iter()
        .find(|s| s.parent == good_batch.span_id)
        .ok_or_else(|| anyhow::anyhow!("no child of the batch span: {spans:#?}"))?;
    assert_eq!(write.name, "store write");
    assert_eq!(write.trace_id, good_batch.trace_id);

    // The poison message's batch is the one whose context the dead letter carries.
    let poison_batch = spans
        .iter()
        .find(|s| s.links_to(POISON_TRACE, POISON_SPAN))
        .ok_or_else(|| anyhow::anyhow!("no span links the poison message: {spans:#?}"))?;
    assert_eq!(
        (*dl_trace, *dl_span),
        (
            poison_batch.trace_id.as_str(),
            poison_batch.span_id.as_str()
        )
    );
    let _ = delete_topics(&[&topic, &dlq]).await;
    Ok(())
}
