//! Google Cloud Pub/Sub through the official `google-cloud-pubsub` crate:
//! streaming pull, at-least-once.
//!
//! - A pump task reads the crate's `MessageStream` into a channel, so its
//!   `next()` is never cancelled by batching timeouts or shutdown races.
//! - Each received message's handler stays in the bus (`AckToken::Pubsub(id)`
//!   → handler) until the runtime calls `done`; only then is it acked. A
//!   handler dropped without ack is a nack: whatever is unfinished at `close`
//!   is redelivered at once, to this or another writer.
//! - Flow control: the stream asks the server for at most two batches of
//!   outstanding (unacked) messages and bytes, one in hand and one
//!   prefetched, so memory stays bounded however long a store outage lasts.
//! - Leases: the crate's lease loop (its own task) extends every message it
//!   has received, handed out or still queued, by the ack deadline until it is
//!   acked or nacked, for at most [`MAX_LEASE`] after receipt. A batch held
//!   through a store outage therefore stays ours; only past `MAX_LEASE` does
//!   the server redeliver it (a duplicate, never a loss: writers are
//!   idempotent).
//! - Pause: flow control already stops the server sending more than the
//!   window while a batch is held, so `pause`/`resume` are no-ops and
//!   `keep_alive` just sleeps. The pump keeps reading meanwhile on purpose:
//!   read from the stream, a message is under lease management and extended;
//!   left in the transport buffers it would expire there and come back as a
//!   duplicate.

use super::pending::Pending;
use super::{AckToken, Batching, Bus, BusError, Envelope};
use crate::writer::config::PubsubSettings;
use crate::writer::runtime::dlq;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

/// Lease extension (the stream's ack deadline) unless configured: how long a
/// crashed writer's messages wait before the server redelivers them.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(60);
/// How long a received message is kept under lease at most. The runtime
/// never gives up on a batch, so this only bounds how long a wedged writer
/// can hold messages; past it they are redelivered (duplicates).
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
/// Pub/Sub refuses attribute values longer than this many bytes.
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// How long one preflight lookup (subscription, dead-letter topic) may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `close` waits for pending acks/nacks and dead letters to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A full resource path from an ID or a path: `projects/<project>/<kind>/<id>`.
/// `kind` is `subscriptions` or `topics`.
pub fn resource_path(project: Option<&str>, kind: &str, id: &str) -> Result<String, String> {
    let id = id.trim();
    if id.starts_with("projects/") {
        let parts: Vec<&str> = id.split('/').collect();
        let well_formed =
            parts.len() == 4 && parts[1..].iter().all(|p| !p.is_empty()) && parts[2] == kind;
        return if well_formed {
            Ok(id.to_string())
        } else {
            Err(format!(
                "{id:?} is not of the form projects/<project>/{kind}/<id>"
            ))
        };
    }
    if id.is_empty() || id.contains('/') {
        return Err(format!(
            "{id:?} is neither a {kind} ID nor projects/<project>/{kind}/<id>"
        ));
    }
    match project.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Ok(format!("projects/{p}/{kind}/{id}")),
        None => Err(format!(
            "{kind} {id:?} is a short ID: set BGP_PUBSUB_PROJECT (or GOOGLE_CLOUD_PROJECT) or give projects/<project>/{kind}/{id}"
        )),
    }
}

/// Messages the server may have outstanding on the stream: one batch in hand
/// and one prefetched while it is written, at the largest a batch may grow
/// to (with fewer, batches of a growing writer could never fill, so never
/// grow).
pub fn max_outstanding_messages(largest_batch: usize) -> i64 {
    twice(largest_batch.max(1))
}

/// Payload bytes the server may have outstanding: two batches' worth, as for
/// messages.
pub fn max_outstanding_bytes(max_batch_bytes: usize) -> i64 {
    twice(max_batch_bytes.max(1))
}

fn twice(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 2).saturating_mul(2)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Dead-letter headers as Pub/Sub attributes, within the attribute limits.
pub fn dlq_attributes(headers: &[(&'static str, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                truncate_bytes(v, MAX_ATTRIBUTE_VALUE_BYTES).to_string(),
            )
        })
        .collect()
}

/// A received message as the runtime sees it.
pub fn envelope(subscription: &Arc<str>, mut msg: Message, id: u64) -> Envelope {
    let published_ms = msg
        .publish_time
        .as_ref()
        .map(|t| t.seconds() * 1000 + i64::from(t.nanos()) / 1_000_000);
    let mut headers: Vec<(String, Vec<u8>)> = std::mem::take(&mut msg.attributes)
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    // The attributes are a map: sorted, so a dead letter's are stable.
    headers.sort();
    let traceparent = headers
        .iter()
        .find(|(k, _)| k == crate::telemetry::propagation::TRACEPARENT)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let ordering_key = std::mem::take(&mut msg.ordering_key);
    Envelope {
        traceparent,
        key: (!ordering_key.is_empty()).then(|| ordering_key.into_bytes()),
        headers,
        published_ms,
        token: AckToken::Pubsub {
            id,
            subscription: subscription.clone(),
            message_id: std::mem::take(&mut msg.message_id),
        },
        payload: Vec::from(msg.data),
    }
}

/// The admin clients the preflight reads the subscription and the
/// dead-letter topic with.
struct Admin {
    subscriptions: SubscriptionAdmin,
    topics: TopicAdmin,
}

impl Admin {
    async fn connect(settings: &PubsubSettings) -> Result<Self, BusError> {
        let (mut subscriptions, mut topics) = (SubscriptionAdmin::builder(), TopicAdmin::builder());
        if let Some(endpoint) = &settings.endpoint {
            subscriptions = subscriptions
                .with_endpoint(endpoint)
                .with_credentials(Anonymous::new().build());
            topics = topics
                .with_endpoint(endpoint)
                .with_credentials(Anonymous::new().build());
        }
        let subscriptions = subscriptions
            .build()
            .await
            .map_err(|e| BusError::Pubsub(format!("subscription admin client: {e}")))?;
        let topics = topics
            .build()
            .await
            .map_err(|e| BusError::Pubsub(format!("topic admin client: {e}")))?;
        Ok(Admin {
            subscriptions,
            topics,
        })
    }
}

/// The preflight's verdict on one lookup: not found can never work; a
/// permission refusal is no verdict, since reading metadata needs
/// `pubsub.subscriptions.get` / `pubsub.topics.get`, which a consume- and
/// publish-only identity (roles/pubsub.subscriber, publisher) lacks.
fn looked_up<T>(
    result: Result<Result<T, google_cloud_pubsub::Error>, tokio::time::error::Elapsed>,
    what: &'static str,
    name: &str,
) -> Result<(), BusError> {
    let error = match result {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => {
            return Err(BusError::Pubsub(format!(
                "{what} {name} not reached within {}s",
                REACH_TIMEOUT.as_secs()
            )));
        }
    };
    match error.status().map(|s| s.code) {
        Some(Code::NotFound) => Err(BusError::NotFound {
            what,
            name: name.to_string(),
        }),
        Some(Code::PermissionDenied) => {
            debug!(%name, "no permission to read the {what}'s metadata; not checked");
            Ok(())
        }
        _ => Err(BusError::Pubsub(format!(
            "{what} {name} not reached: {error}"
        ))),
    }
}

/// What the pump forwards: a message with its handler, or why the stream failed.
type Received = Result<(Message, Handler), String>;

/// How the pump opens a stream.
#[derive(Clone)]
struct StreamSettings {
    subscription: String,
    ack_deadline: Duration,
    max_outstanding_messages: i64,
    max_outstanding_bytes: i64,
}

pub struct PubsubBus {
    /// Shared by the envelopes (their origin).
    subscription: Arc<str>,
    rx: mpsc::Receiver<Received>,
    stop: watch::Sender<bool>,
    /// The pump; returns the shutdowns of the streams it opened.
    pump: Option<JoinHandle<JoinSet<()>>>,
    dlq: Option<(String, Publisher)>,
    admin: Admin,
    /// Handlers of messages handed out (or waiting in `pending`), by token.
    held: HashMap<u64, Handler>,
    /// Received, not yet handed out: served first by `next_batch`.
    pending: Pending,
    next_id: u64,
}

impl PubsubBus {
    /// Connects with an endpoint override and anonymous credentials when
    /// `settings.endpoint` is set (the emulator), else with Application
    /// Default Credentials (GKE Workload Identity, a key file, gcloud).
    pub async fn connect(
        settings: &PubsubSettings,
        subscription: &str,
        dlq_topic: Option<&str>,
        largest_batch: usize,
        max_batch_bytes: usize,
    ) -> Result<Self, BusError> {
        let project = settings.project.as_deref();
        let subscription =
            resource_path(project, "subscriptions", subscription).map_err(BusError::Pubsub)?;
        let dlq_topic = dlq_topic
            .map(|t| resource_path(project, "topics", t))
            .transpose()
            .map_err(BusError::Pubsub)?;

        let mut builder = Subscriber::builder();
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_credentials(Anonymous::new().build());
        }
        let subscriber = builder
            .build()
            .await
            .map_err(|e| BusError::Pubsub(format!("subscriber client: {e}")))?;

        let dlq = match dlq_topic {
            None => None,
            Some(topic) => {
                let mut builder = Publisher::builder(topic.clone());
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_credentials(Anonymous::new().build());
                }
                let publisher = builder.build().await.map_err(|e| {
                    BusError::Pubsub(format!("dead-letter publisher for {topic}: {e}"))
                })?;
                Some((topic, publisher))
            }
        };

        let admin = Admin::connect(settings).await?;
        let stream = StreamSettings {
            subscription: subscription.clone(),
            ack_deadline: settings.ack_deadline.unwrap_or(DEFAULT_ACK_DEADLINE),
            max_outstanding_messages: max_outstanding_messages(largest_batch),
            max_outstanding_bytes: max_outstanding_bytes(max_batch_bytes),
        };
        info!(
            %subscription,
            dead_letter_topic = dlq.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""),
            max_outstanding_messages = stream.max_outstanding_messages,
            max_outstanding_bytes = stream.max_outstanding_bytes,
            ack_deadline_s = stream.ack_deadline.as_secs(),
            emulator = settings.endpoint.is_some(),
            "pub/sub streaming pull"
        );
        let capacity = usize::try_from(stream.max_outstanding_messages).unwrap_or(usize::MAX);
        let (tx, rx) = mpsc::channel(capacity.clamp(1, 1 << 20));
        let (stop, stop_rx) = watch::channel(false);
        let pump = tokio::spawn(pump(subscriber, stream, tx, stop_rx));
        Ok(PubsubBus {
            subscription: Arc::from(subscription),
            rx,
            stop,
            pump: Some(pump),
            dlq,
            admin,
            held: HashMap::new(),
            pending: Pending::default(),
            next_id: 0,
        })
    }

    fn accept(&mut self, received: Received) -> Result<(), BusError> {
        let (msg, handler) = received.map_err(BusError::Pubsub)?;
        let id = self.next_id;
        self.next_id += 1;
        self.held.insert(id, handler);
        self.pending.push(envelope(&self.subscription, msg, id));
        Ok(())
    }

    /// Waits for one message (or stream error) from the pump. Cancel-safe.
    async fn receive(&mut self) -> Result<(), BusError> {
        match self.rx.recv().await {
            Some(received) => self.accept(received),
            None => Err(BusError::Pubsub("the bus is closed".into())),
        }
    }
}

/// Reads the stream in its own task, so that the crate's `next()` (whose
/// stream opening is not cancel-safe: a cancelled open can strand the
/// messages the server sent on it until their ack deadline) is never
/// cancelled by batching timeouts. Messages it forwards are under lease
/// management already. A stream that fails for good (e.g. subscription not
/// found, permission denied; transient errors are retried inside the crate)
/// is reopened with capped backoff.
async fn pump(
    subscriber: Subscriber,
    settings: StreamSettings,
    tx: mpsc::Sender<Received>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut shutdowns = JoinSet::new();
    let mut backoff = Duration::ZERO;
    'streams: loop {
        let mut stream = subscriber
            .subscribe(settings.subscription.clone())
            .set_max_lease_extension(settings.ack_deadline)
            .set_max_lease(MAX_LEASE)
            .set_max_outstanding_messages(settings.max_outstanding_messages)
            .set_max_outstanding_bytes(settings.max_outstanding_bytes)
            .build();
        let token = stream.shutdown_token();
        let stopped = loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break true,
                n = stream.next() => n,
            };
            let failure = match next {
                Some(Ok(m)) => {
                    backoff = Duration::ZERO;
                    if tx.send(Ok(m)).await.is_err() {
                        break true;
                    }
                    continue;
                }
                Some(Err(e)) => format!("streaming pull from {}: {e}", settings.subscription),
                None => format!("streaming pull from {} ended", settings.subscription),
            };
            break tx.send(Err(failure)).await.is_err();
        };
        drop(stream);
        // Finishes once every handler the stream gave out is acked or
        // dropped, with the acks/nacks sent.
        while shutdowns.try_join_next().is_some() {}
        shutdowns.spawn(async move { token.shutdown().await });
        if stopped {
            break 'streams;
        }
        backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break 'streams,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
    shutdowns
}

impl Bus for PubsubBus {
    /// The subscription exists, and the dead-letter topic when one is set:
    /// a writer is ready only once the server has answered for both.
    async fn reached(&self) -> Result<(), BusError> {
        let subscription = timeout(
            REACH_TIMEOUT,
            self.admin
                .subscriptions
                .get_subscription()
                .set_subscription(&*self.subscription)
                .send(),
        )
        .await;
        looked_up(subscription, "subscription", &self.subscription)?;
        if let Some((topic, _)) = &self.dlq {
            let found = timeout(
                REACH_TIMEOUT,
                self.admin.topics.get_topic().set_topic(topic).send(),
            )
            .await;
            looked_up(found, "dead-letter topic", topic)?;
        }
        Ok(())
    }

    async fn next_batch(&mut self, batching: Batching) -> Result<Vec<Envelope>, BusError> {
        if self.pending.is_empty() {
            self.receive().await?;
        }
        let deadline = Instant::now() + batching.wait;
        while !self.pending.holds_a_batch(&batching) {
            if batching.until_drained {
                // Only what the stream task has already forwarded.
                match self.rx.try_recv() {
                    Ok(received) => {
                        if let Err(e) = self.accept(received) {
                            warn!(error = %e, "pubsub receive");
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                }
            }
            match timeout_at(deadline, self.receive()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "pubsub receive");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(self.pending.take_batch(&batching))
    }

    async fn done(&mut self, batch: &[Envelope]) -> Result<(), BusError> {
        for env in batch {
            if let AckToken::Pubsub { id, .. } = env.token
                && let Some(handler) = self.held.remove(&id)
            {
                // Queued for the lease loop, which sends acks every 100 ms
                // and flushes them on shutdown.
                handler.ack();
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        env: &Envelope,
        headers: &[(&'static str, String)],
    ) -> Result<(), BusError> {
        let (topic, publisher) = self.dlq.as_ref().ok_or(BusError::NoDeadLetterTopic)?;
        let kept = dlq::kept_headers(env, headers)
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()));
        let mut msg = Message::new()
            .set_data(env.payload.clone())
            .set_attributes(kept.chain(dlq_attributes(headers)));
        let ordering_key = env.key.as_deref().map(String::from_utf8_lossy);
        if let Some(key) = &ordering_key {
            msg = msg.set_ordering_key(key.as_ref());
        }
        let published = publisher.publish(msg).await;
        if let (Err(_), Some(key)) = (&published, &ordering_key) {
            // A failed publish pauses its ordering key; the retry needs it.
            publisher.resume_publish(key.as_ref());
        }
        published.map_err(|e| BusError::Pubsub(format!("dead-letter publish to {topic}: {e}")))?;
        Ok(())
    }

    /// No-op: flow control bounds what the server sends while a batch is
    /// held, and the lease loop extends everything received (module doc).
    fn pause(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    /// Just waits: the crate's lease loop extends held messages on its own
    /// task, and the pump keeps what the flow-control window lets in under
    /// lease.
    async fn keep_alive(&mut self, for_: Duration) {
        tokio::time::sleep(for_).await;
    }

    async fn close(&mut self) -> Result<(), BusError> {
        // First end the pull, so that the server does not hand the nacked
        // messages straight back to this stream while it goes away.
        let _ = self.stop.send(true);
        self.rx.close();
        let shutdowns = match self.pump.take() {
            Some(pump) => match timeout(CLOSE_TIMEOUT, pump).await {
                Ok(Ok(shutdowns)) => Some(shutdowns),
                _ => None,
            },
            None => Some(JoinSet::new()),
        };
        // Then nack what is unfinished (redelivered at once). A stream's
        // shutdown waits until every handler it gave out is acked or
        // dropped, so drop them all, including those still queued.
        let unfinished = self.held.len();
        self.pending.clear();
        self.held.clear();
        let mut queued = 0usize;
        while self.rx.try_recv().is_ok() {
            queued += 1;
        }
        if unfinished + queued > 0 {
            info!(
                unfinished,
                queued, "nacking unfinished messages for redelivery"
            );
        }
        // Sends the queued acks and nacks and waits for their RPCs.
        let flushed = match shutdowns {
            Some(s) => timeout(CLOSE_TIMEOUT, s.join_all()).await.is_ok(),
            None => false,
        };
        if !flushed {
            warn!("pubsub stream shutdown timed out; unsent acks mean redeliveries");
        }
        if let Some((_, publisher)) = &self.dlq {
            let _ = timeout(CLOSE_TIMEOUT, publisher.flush()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_take_the_project_and_paths_pass_through() {
        assert_eq!(
            resource_path(Some("p"), "subscriptions", "s"),
            Ok("projects/p/subscriptions/s".into())
        );
        assert_eq!(
            resource_path(None, "topics", "projects/q/topics/t"),
            Ok("projects/q/topics/t".into())
        );
        // A full path wins over the project.
        assert_eq!(
            resource_path(Some("p"), "topics", "projects/q/topics/t"),
            Ok("projects/q/topics/t".into())
        );
        assert_eq!(
            resource_path(Some("p"), "topics", " t "),
            Ok("projects/p/topics/t".into())
        );
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        let err = resource_path(None, "subscriptions", "s")
            .err()
            .unwrap_or_default();
        assert!(err.contains("BGP_PUBSUB_PROJECT"), "{err}");
        assert!(resource_path(Some(""), "topics", "t").is_err());
        for bad in [
            "",
            "a/b",
            "projects/p/topics/t",
            "projects/p/subscriptions",
            "projects//subscriptions/s",
            "projects/p/subscriptions/s/x",
        ] {
            assert!(
                resource_path(Some("p"), "subscriptions", bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn flow_control_allows_one_batch_in_hand_and_one_prefetched() {
        assert_eq!(max_outstanding_messages(1000), 2000);
        assert_eq!(max_outstanding_messages(0), 2);
        assert!(max_outstanding_messages(usize::MAX) > 0);
        assert_eq!(max_outstanding_bytes(8 << 20), 16 << 20);
        assert!(max_outstanding_bytes(usize::MAX) > 0);
    }

    #[test]
    fn attribute_values_fit_the_pubsub_limit_at_a_char_boundary() {
        let long = "é".repeat(1024); // 2048 bytes
        let attrs = dlq_attributes(&[
            (dlq::H_ERROR_MESSAGE, long),
            (dlq::H_WRITER, "online".into()),
        ]);
        assert_eq!(attrs[0].0, "bgp-dlq-error-message");
        assert_eq!(attrs[0].1.len(), 1024);
        assert!(attrs[0].1.chars().all(|c| c == 'é'));
        assert_eq!(attrs[1], ("bgp-dlq-writer".into(), "online".into()));
        assert_eq!(truncate_bytes("aé", 2), "a");
        assert_eq!(truncate_bytes("abc", 3), "abc");
    }

    #[test]
    fn envelope_carries_publish_time_traceparent_and_origin() -> Result<(), serde_json::Error> {
        let msg: Message = serde_json::from_value(serde_json::json!({
            "data": "aGVsbG8=",
            "messageId": "42",
            "publishTime": "2024-05-06T07:08:09.123456Z",
            "attributes": {"traceparent": "00-abc-def-01", "other": "x"},
        }))?;
        let env = envelope(&Arc::from("projects/p/subscriptions/s"), msg, 7);
        assert_eq!(env.payload, b"hello");
        assert_eq!(env.published_ms, Some(1_714_979_289_123));
        assert_eq!(env.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(
            env.origin(),
            vec![
                (
                    dlq::H_ORIGINAL_TOPIC,
                    "projects/p/subscriptions/s".to_string()
                ),
                (dlq::H_ORIGINAL_MESSAGE_ID, "42".to_string()),
            ]
        );
        assert!(matches!(env.token, AckToken::Pubsub { id: 7, .. }));

        let bare = envelope(&Arc::from("s"), Message::new().set_data("x"), 8);
        assert_eq!(bare.published_ms, None);
        assert_eq!(bare.traceparent, None);
        Ok(())
    }
}
