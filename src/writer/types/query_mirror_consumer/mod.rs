//! QUERY_MIRROR_CONSUMER: replays logged queries (`QueryLogEntry.request_json`)
//! against the API server, rate limited, with retries, recording each outcome.
//!
//! "Written" means answered: a replay is done once the target gave an HTTP
//! answer that is not worth retrying (2xx, 3xx, 4xx but 408/429). 5xx, 408,
//! 429, timeouts and connection failures are retried with capped backoff;
//! when the attempts run out the batch pauses and is retried (default) or
//! the message is dead-lettered (`BGP_MIRROR_ON_EXHAUSTED=dead-letter`).
//! See docs/mirror-and-vector.md.

pub mod metrics;
pub mod settings;

use crate::formats::Message;
use crate::formats::v1::QueryLogEntry;
use crate::telemetry::propagation;
use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
pub use metrics::MirrorMetrics;
use metrics::status_class;
pub use settings::{MirrorError, MirrorSettings, OnExhausted};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Marks a request as a replay, not a user's query.
pub const H_MIRROR: &str = "x-bgpersist-mirror";
/// The logged query's `operation_id`: lets the target tie (or dedupe) replays.
pub const H_OPERATION_ID: &str = "x-bgpersist-original-operation-id";
pub const H_ENVIRONMENT_ID: &str = "x-bgpersist-original-environment-id";
pub const H_DEPLOYMENT_ID: &str = "x-bgpersist-original-deployment-id";
/// 1 for the first try of a replay, 2 for its first retry, ...
pub const H_ATTEMPT: &str = "x-bgpersist-mirror-attempt";

/// One logged query to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub operation_id: String,
    /// The request exactly as logged (valid JSON), sent unchanged.
    pub body: String,
    /// Headers naming the replay and its origin, checked at decode time.
    headers: HeaderMap,
}

impl Replay {
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.operation_id.hash(&mut h);
        self.body.hash(&mut h);
        h.finish()
    }
}

/// Decodes a query-log message. No `request_json`, text that is not JSON or
/// ids that cannot travel in a header make it poison.
pub fn decode(payload: &[u8]) -> Result<Vec<Replay>, String> {
    let entry = QueryLogEntry::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.QueryLogEntry: {e}"))?;
    if entry.request_json.trim().is_empty() {
        return Err(format!(
            "operation {:?}: request_json is empty, nothing to replay",
            entry.operation_id
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&entry.request_json).map_err(|e| {
        format!(
            "operation {:?}: request_json is not JSON: {e}",
            entry.operation_id
        )
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(H_MIRROR, HeaderValue::from_static("replay"));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        (H_OPERATION_ID, &entry.operation_id),
        (H_ENVIRONMENT_ID, &entry.environment_id),
        (H_DEPLOYMENT_ID, &entry.deployment_id),
    ] {
        if value.is_empty() {
            continue;
        }
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("{name} {value:?} cannot be sent as an HTTP header value"))?;
        headers.insert(HeaderName::from_static(name), v);
    }
    Ok(vec![Replay {
        operation_id: entry.operation_id,
        body: entry.request_json,
        headers,
    }])
}

/// How one replay ended.
enum Outcome {
    /// The target gave an answer that ends the replay.
    Answered,
    /// Every attempt failed; the last reason.
    Exhausted(String),
}

pub struct MirrorSink {
    settings: MirrorSettings,
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    metrics: MirrorMetrics,
    /// Replays of the batch in hand already answered (index, fingerprint):
    /// when a paused batch is retried they are not sent again.
    answered: Mutex<HashSet<(usize, u64)>>,
}

impl MirrorSink {
    pub fn new(settings: MirrorSettings, metrics: MirrorMetrics) -> Result<Self, MirrorError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // A redirect is an answer to record; following it would turn the POST into a GET.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bgpersist-mirror/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(settings.concurrency)
            .build()
            .map_err(|e| MirrorError::Client(e.to_string()))?;
        let period = Duration::from_secs_f64(1.0 / settings.rate_per_second);
        // One permit at a time: replays are spread evenly, never sent in bursts.
        let quota = Quota::with_period(period)
            .ok_or_else(|| MirrorError::Client("rate limit period is zero".into()))?
            .allow_burst(NonZeroU32::MIN);
        Ok(MirrorSink {
            limiter: RateLimiter::direct(quota),
            settings,
            client,
            metrics,
            answered: Mutex::new(HashSet::new()),
        })
    }

    pub fn settings(&self) -> &MirrorSettings {
        &self.settings
    }

    fn answered(&self) -> std::sync::MutexGuard<'_, HashSet<(usize, u64)>> {
        // The set is plain data: a panic elsewhere cannot leave it half-written.
        self.answered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `r` until answered or out of attempts; `traceparent` is the
    /// batch's store-write span, so the replayed query joins its trace.
    async fn replay(&self, r: &Replay, traceparent: Option<&HeaderValue>) -> Outcome {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.settings.max_backoff)
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .build();
        let first = Instant::now();
        let mut attempt = 1u32;
        loop {
            if self.limiter.check().is_err() {
                self.metrics.rate_limited.inc();
                self.limiter.until_ready().await;
            }
            let started = Instant::now();
            let mut request = self
                .client
                .post(self.settings.endpoint.clone())
                .headers(r.headers.clone())
                .header(H_ATTEMPT, attempt);
            if let Some(tp) = traceparent {
                request = request.header(propagation::TRACEPARENT, tp.clone());
            }
            let sent = request.body(r.body.clone()).send().await;
            // Read the body so the connection goes back to the pool.
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    resp.bytes().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            let class = match &answer {
                Ok(status) => status_class(status.as_u16()),
                Err(e) if e.is_timeout() => "timeout",
                Err(e) if e.is_connect() => "connect",
                Err(_) => "error",
            };
            self.metrics
                .attempts
                .get_or_create(&[("class", class)])
                .inc();
            self.metrics
                .latency
                .get_or_create(&[("class", class)])
                .observe(elapsed.as_secs_f64());
            let reason = match answer {
                Ok(status) if !worth_retrying(status) => {
                    self.metrics
                        .replays
                        .get_or_create(&[("class", class)])
                        .inc();
                    info!(
                        operation_id = %r.operation_id,
                        status = status.as_u16(),
                        attempts = attempt,
                        latency_ms = elapsed.as_millis() as u64,
                        total_ms = first.elapsed().as_millis() as u64,
                        "query replayed"
                    );
                    return Outcome::Answered;
                }
                Ok(status) => format!("answered {status}"),
                Err(e) => format!("{class}: {e}"),
            };
            match backoff.next() {
                Some(delay) => {
                    warn!(operation_id = %r.operation_id, attempt, %reason, retry_in_ms = delay.as_millis() as u64, "replay failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => {
                    self.metrics
                        .replays
                        .get_or_create(&[("class", "exhausted")])
                        .inc();
                    warn!(operation_id = %r.operation_id, attempts = attempt, %reason, "replay got no usable answer");
                    return Outcome::Exhausted(format!(
                        "replay to {} got no usable answer in {attempt} attempts: {reason}",
                        self.settings.endpoint
                    ));
                }
            }
        }
    }
}

/// 5xx, 408 and 429 say "not now"; every other status is the answer.
fn worth_retrying(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

impl Sink for MirrorSink {
    type Record = Replay;

    fn decode(&self, payload: &[u8]) -> Result<Vec<Replay>, WriterError> {
        decode(payload).map_err(WriterError::Decode)
    }

    async fn write(&self, records: &[Replay]) -> Result<Vec<Rejected>, WriterError> {
        let done = self.answered().clone();
        let todo: Vec<(usize, u64)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.fingerprint()))
            .filter(|key| !done.contains(key))
            .collect();
        let traceparent = propagation::current().and_then(|t| HeaderValue::from_str(&t).ok());
        let traceparent = traceparent.as_ref();
        let mut outcomes = futures::stream::iter(todo)
            .map(|(i, fp)| async move { (i, fp, self.replay(&records[i], traceparent).await) })
            .buffer_unordered(self.settings.concurrency);
        let mut rejected = Vec::new();
        let mut exhausted: Vec<String> = Vec::new();
        while let Some((i, fp, outcome)) = outcomes.next().await {
            match outcome {
                Outcome::Answered => {
                    self.answered().insert((i, fp));
                }
                Outcome::Exhausted(reason) => match self.settings.on_exhausted {
                    OnExhausted::Pause => exhausted.push(reason),
                    OnExhausted::DeadLetter => {
                        self.answered().insert((i, fp));
                        rejected.push(Rejected { record: i, reason });
                    }
                },
            }
        }
        if let Some(first) = exhausted.first() {
            return Err(WriterError::Retriable(format!(
                "{} of {} replays unanswered (the rest will not be sent again); {first}",
                exhausted.len(),
                records.len()
            )));
        }
        self.answered().clear();
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::QueryLogEntry;

    fn entry(op: &str, json: &str) -> Vec<u8> {
        QueryLogEntry {
            operation_id: op.into(),
            environment_id: "env-1".into(),
            request_json: json.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_the_request_and_names_it_a_replay() -> Result<(), String> {
        let r = decode(&entry("op-1", r#"{"inputs":{"user.id":1}}"#))?;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].body, r#"{"inputs":{"user.id":1}}"#);
        let h = |k: &str| r[0].headers.get(k).and_then(|v| v.to_str().ok());
        assert_eq!(h(H_MIRROR), Some("replay"));
        assert_eq!(h(H_OPERATION_ID), Some("op-1"));
        assert_eq!(h(H_ENVIRONMENT_ID), Some("env-1"));
        assert_eq!(h(H_DEPLOYMENT_ID), None);
        assert_eq!(h("content-type"), Some("application/json"));
        Ok(())
    }

    #[test]
    fn poison_is_refused_with_a_reason() {
        for (payload, says) in [
            (
                b"\xff\xff not protobuf".to_vec(),
                "not a bgpersist.bus.v1.QueryLogEntry",
            ),
            (entry("op", ""), "request_json is empty"),
            (entry("op", "{not json"), "not JSON"),
            (entry("op\n2", "{}"), "cannot be sent as an HTTP header"),
        ] {
            let err = decode(&payload).err().unwrap_or_default();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn only_unavailability_is_retried() {
        use reqwest::StatusCode as S;
        for s in [
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
            S::SERVICE_UNAVAILABLE,
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
        ] {
            assert!(worth_retrying(s), "{s}");
        }
        for s in [
            S::OK,
            S::NO_CONTENT,
            S::FOUND,
            S::BAD_REQUEST,
            S::NOT_FOUND,
            S::UNPROCESSABLE_ENTITY,
        ] {
            assert!(!worth_retrying(s), "{s}");
        }
    }
}
