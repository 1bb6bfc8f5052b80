use crate::support::{rig, unique};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn plaintext() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig("kafka", "BGP_KAFKA_PLAINTEXT"));
    c
}

fn scram(mechanism: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig("kafka", "BGP_KAFKA_SASL"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", rig("kafka", "BGP_KAFKA_SCRAM_USER"))
        .set("sasl.password", password);
    c
}

async fn produce(config: &ClientConfig, topic: &str, payloads: &[String]) -> anyhow::Result<()> {
    let producer: FutureProducer = config.clone().set("message.timeout.ms", "20000").create()?;
    for p in payloads {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(p),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

async fn consume(config: &ClientConfig, topic: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    Ok(got)
}

#[tokio::test]
async fn produce_plaintext_consume_with_scram_256_and_512() -> anyhow::Result<()> {
    let topic = unique("smoke-kafka");
    let payloads: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    produce(&plaintext(), &topic, &payloads).await?;
    let password = rig("kafka", "BGP_KAFKA_SCRAM_PASSWORD");
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let got = consume(&scram(mechanism, &password), &topic, payloads.len()).await?;
        assert_eq!(got, payloads, "{mechanism}");
    }
    // And the other way round: produce through SASL, read in plaintext.
    let topic2 = unique("smoke-kafka");
    produce(&scram("SCRAM-SHA-512", &password), &topic2, &payloads).await?;
    assert_eq!(
        consume(&plaintext(), &topic2, payloads.len()).await?,
        payloads
    );
    Ok(())
}

/// Records the client's error callbacks, where librdkafka reports auth failures.
#[derive(Clone, Default)]
struct ErrorLog(Arc<Mutex<Vec<String>>>);
impl ClientContext for ErrorLog {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for ErrorLog {}

#[tokio::test]
async fn scram_with_wrong_password_is_refused() -> anyhow::Result<()> {
    let log = ErrorLog::default();
    let consumer: BaseConsumer<ErrorLog> = scram("SCRAM-SHA-512", "not-the-password")
        .set("group.id", unique("smoke-bad"))
        .create_with_context(log.clone())?;
    let result = consumer.fetch_metadata(None, Duration::from_secs(10));
    assert!(
        result.is_err(),
        "metadata must not be served with a wrong password"
    );
    // librdkafka reports the refusal through the error callback, served by poll.
    let mut errors = String::new();
    for _ in 0..100 {
        let _ = consumer.poll(Duration::from_millis(100));
        errors = log.0.lock().map(|v| v.join("\n")).unwrap_or_default();
        if !errors.is_empty() {
            break;
        }
    }
    assert!(
        errors.to_lowercase().contains("authentication"),
        "expected an authentication failure, got: {errors}"
    );
    Ok(())
}
