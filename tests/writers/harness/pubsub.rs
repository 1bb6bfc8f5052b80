//! Pub/Sub helpers (tests/writers/online_pubsub.rs): the rig's emulator through
//! the official google-cloud-pubsub crate (API notes in tests/smoke/pubsub.rs).

use crate::support::rig;
use std::time::Duration;

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
