//! What every Kafka client of a writer carries: its last error, and the
//! OAUTHBEARER token source when that is the mechanism.

use super::oauth;
use crate::writer::config::{KafkaOAuth, KafkaSettings};
use crate::writer::runtime::metrics::WriterMetrics;
use rdkafka::ClientContext;
use rdkafka::client::OAuthToken;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The last error librdkafka reported for a client. The producer's is the
/// one that arrives: its background thread dispatches errors at once, while
/// the consumer's wait until it is polled, after the bus was reached.
#[derive(Clone, Default)]
pub struct ClientErrors(Arc<Mutex<Option<String>>>);

impl ClientErrors {
    pub(super) fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|e| e.clone())
    }

    pub(super) fn clear(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = None;
        }
    }

    fn record(&self, error: KafkaError, reason: &str) {
        warn!(%error, reason, "kafka client error");
        // "N/N brokers are down" follows the failure that explains it (a
        // refused connection, a failed handshake): keep that one.
        let summary = matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        if let Ok(mut last) = self.0.lock()
            && !(summary && last.is_some())
        {
            *last = Some(reason.to_string());
        }
    }
}

/// A writer's Kafka client context: errors, and OAUTHBEARER tokens.
#[derive(Clone, Default)]
pub struct KafkaContext {
    pub errors: ClientErrors,
    oauth: Option<KafkaOAuth>,
}

impl KafkaContext {
    pub fn new(settings: &KafkaSettings) -> Self {
        KafkaContext {
            errors: ClientErrors::default(),
            oauth: settings.oauth.clone(),
        }
    }
}

impl ClientContext for KafkaContext {
    // Harmless without OAUTHBEARER: librdkafka then never asks.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record(error, reason);
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let source = self.oauth.as_ref().ok_or(
            "sasl.mechanism OAUTHBEARER needs kafka_oauthbearer (OIDC or AWS_MSK_IAM) to say where tokens come from",
        )?;
        match oauth::token_blocking(source) {
            Ok(token) => {
                info!(principal = %token.principal_name, expires_ms = token.lifetime_ms, "kafka OAUTHBEARER token fetched");
                Ok(token)
            }
            // librdkafka reports it as the client's error, which readiness shows.
            Err(e) => Err(e.to_string().into()),
        }
    }
}

/// The consumer's context: the shared one, librdkafka's statistics feeding
/// the lag gauge, and a count of partition revocations (the exactly-once
/// writer drops what it holds of partitions it lost).
pub struct LagContext {
    pub metrics: WriterMetrics,
    pub base: KafkaContext,
    pub revocations: AtomicU64,
}

impl LagContext {
    pub fn new(metrics: WriterMetrics, base: KafkaContext) -> Self {
        LagContext {
            metrics,
            base,
            revocations: AtomicU64::new(0),
        }
    }
}

impl ClientContext for LagContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn stats(&self, stats: Statistics) {
        self.metrics.lag_messages.set(consumer_lag(&stats));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.base.generate_oauth_token(config)
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Assign(_)) {
            self.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The consumer's lag in messages, summed over its assigned partitions.
pub(crate) fn consumer_lag(stats: &Statistics) -> i64 {
    stats
        .topics
        .values()
        .flat_map(|t| t.partitions.values())
        .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
        .map(|p| p.consumer_lag)
        .sum()
}
