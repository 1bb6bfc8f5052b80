//! The official `google-cloud-pubsub` 1.7 crate against the rig's
//! Pub/Sub emulator (admin, publish, streaming pull, ack, no redelivery).
//!
//! API paths used (google-cloud-pubsub 1.7, google-cloud-auth 1.18), for reuse
//! by the writer runtime:
//! - credentials: `google_cloud_auth::credentials::anonymous::Builder::new().build()`;
//!   the crate ignores `PUBSUB_EMULATOR_HOST`, so every client builder gets
//!   `.with_endpoint("http://127.0.0.1:18085").with_credentials(creds)`.
//! - admin (REST): `client::TopicAdmin::builder()...build().await?`, then
//!   `.create_topic().set_name("projects/P/topics/T").send().await?`;
//!   `client::SubscriptionAdmin::builder()...build().await?`, then
//!   `.create_subscription().set_name("projects/P/subscriptions/S").set_topic(..)
//!   .set_ack_deadline_seconds(10).send().await?`; `delete_subscription()
//!   .set_subscription(..)` / `delete_topic().set_topic(..)`.
//! - publish (gRPC): `client::Publisher::builder("projects/P/topics/T")
//!   .with_endpoint(..).with_credentials(..).build().await?`;
//!   `publisher.publish(model::Message::new().set_data(..).set_attributes([(k, v)]))`
//!   returns a `PublishFuture` resolving to the message id; `publisher.flush().await`.
//! - streaming pull (gRPC): `client::Subscriber::builder().with_endpoint(..)
//!   .with_credentials(..).build().await?`, then
//!   `subscriber.subscribe("projects/P/subscriptions/S")
//!   .set_max_lease_extension(Duration::from_secs(10)).build()` gives a
//!   `subscriber::MessageStream`; `stream.next().await` yields
//!   `Option<Result<(model::Message, subscriber::handler::Handler)>>`.
//! - ack: `handler.ack()` (sync, best effort, batched by the lease loop;
//!   dropping a handler nacks). `stream.shutdown_token().shutdown().await`
//!   flushes pending acks before the stream goes away.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::MessageStream;

const MESSAGES: usize = 3;
/// The subscription's and the stream's ack deadline (the minimum Pub/Sub allows).
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// A handler dropped without ack (a nack) is redelivered at once; a lost ack
/// only after the ack deadline. Measured on the emulator, an unacked message
/// came back 10.5 s or 20.5 s after the first stream closed, so this window
/// catches the first case always and a lost ack most of the time; raise it to
/// 22 s to catch a lost ack every time.
const NO_REDELIVERY_WINDOW: Duration = Duration::from_secs(12);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_streaming_pull_ack_round_trip() -> anyhow::Result<()> {
    let endpoint = support::rig("pubsub", "BGP_PUBSUB_ENDPOINT");
    let project = support::rig("pubsub", "BGP_PUBSUB_PROJECT");
    let topic = format!(
        "projects/{project}/topics/{}",
        support::unique("smoke-topic")
    );
    let subscription = format!(
        "projects/{project}/subscriptions/{}",
        support::unique("smoke-sub")
    );
    let started = Instant::now();

    let topics = TopicAdmin::builder()
        .with_endpoint(&endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    let subscriptions = SubscriptionAdmin::builder()
        .with_endpoint(&endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;

    let created = topics.create_topic().set_name(&topic).send().await?;
    assert_eq!(created.name, topic);
    let created = subscriptions
        .create_subscription()
        .set_name(&subscription)
        .set_topic(&topic)
        .set_ack_deadline_seconds(ACK_DEADLINE.as_secs() as i32)
        .send()
        .await?;
    assert_eq!(created.name, subscription);
    assert_eq!(created.topic, topic);

    let result = round_trip(&endpoint, &topic, &subscription).await;

    // Clean up even when the round trip failed; report the first error.
    let sub_deleted = subscriptions
        .delete_subscription()
        .set_subscription(&subscription)
        .send()
        .await;
    let topic_deleted = topics.delete_topic().set_topic(&topic).send().await;
    result?;
    sub_deleted.context("delete subscription")?;
    topic_deleted.context("delete topic")?;
    eprintln!("pubsub smoke test took {:?}", started.elapsed());
    Ok(())
}

async fn round_trip(endpoint: &str, topic: &str, subscription: &str) -> anyhow::Result<()> {
    // Expected messages, keyed by payload.
    let sent: BTreeMap<String, HashMap<String, String>> = (0..MESSAGES)
        .map(|i| {
            let attrs = HashMap::from([
                ("index".to_string(), i.to_string()),
                ("kind".to_string(), "smoke".to_string()),
                ("unicode".to_string(), format!("µ-{i}-✓")),
            ]);
            (format!("payload-{i}-{}", support::unique("m")), attrs)
        })
        .collect();

    let publisher = Publisher::builder(topic)
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    let pending: Vec<_> = sent
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
    let mut ids = Vec::with_capacity(MESSAGES);
    for fut in pending {
        let id = tokio::time::timeout(RECEIVE_TIMEOUT, fut)
            .await
            .context("publish timed out")??;
        ensure!(!id.is_empty(), "empty message id");
        ids.push(id);
    }

    let subscriber = Subscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    let open = || {
        subscriber
            .subscribe(subscription)
            .set_max_lease_extension(ACK_DEADLINE)
            .build()
    };

    // Receive every message over streaming pull and ack it.
    let mut stream = open();
    let mut received: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    let mut received_ids = Vec::new();
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    while received.len() < MESSAGES {
        let (msg, handler) = tokio::time::timeout_at(deadline, stream.next())
            .await
            .with_context(|| {
                format!(
                    "received {} of {MESSAGES} messages before timing out",
                    received.len()
                )
            })?
            .context("message stream ended")??;
        handler.ack();
        let data = String::from_utf8(msg.data.to_vec())?;
        ensure!(!msg.message_id.is_empty(), "received message without id");
        received_ids.push(msg.message_id.clone());
        if received.insert(data.clone(), msg.attributes).is_some() {
            bail!("message {data:?} delivered twice before all were received");
        }
    }
    assert_eq!(received, sent, "payloads and attributes round-trip");
    ids.sort();
    received_ids.sort();
    assert_eq!(received_ids, ids, "message ids match the publish results");

    // Flush the acks and wait for their RPCs before letting the stream go.
    stream.shutdown_token().shutdown().await;
    drop(stream);

    // A fresh stream must see nothing for longer than the ack deadline: an
    // ack the server did not take would be redelivered by then.
    let mut stream = open();
    expect_silence(&mut stream, NO_REDELIVERY_WINDOW).await?;
    stream.shutdown_token().shutdown().await;
    Ok(())
}

async fn expect_silence(stream: &mut MessageStream, window: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(window, stream.next()).await {
        Err(_elapsed) => Ok(()),
        Ok(None) => bail!("message stream ended during the no-redelivery window"),
        Ok(Some(Err(e))) => Err(e).context("message stream failed"),
        Ok(Some(Ok((msg, handler)))) => {
            handler.ack();
            bail!(
                "message {} ({:?}) redelivered after ack",
                msg.message_id,
                String::from_utf8_lossy(&msg.data)
            )
        }
    }
}
