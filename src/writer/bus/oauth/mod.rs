//! OAUTHBEARER tokens for librdkafka. librdkafka asks for a token when a
//! client starts and again at 80 % of its lifetime, through a synchronous
//! callback; the token sources are async HTTP clients, so each fetch runs on
//! a thread of its own with a one-thread runtime (the callback may run on a
//! runtime worker, where blocking on the writer's own runtime would panic).

mod msk_iam;
mod oidc;

use crate::writer::config::KafkaOAuth;
use rdkafka::client::OAuthToken;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use msk_iam::{MSK_IAM_PRINCIPAL, msk_iam_token};
pub use oidc::oidc_token;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The token endpoint answered with an OAuth error (RFC 6749 §5.2) or a
    /// body that is not a token response.
    #[error("token endpoint {url} refused the client credentials grant: {reason}")]
    Refused { url: String, reason: String },
    /// The token endpoint could not be reached.
    #[error("token endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("AWS MSK IAM token: {0}")]
    Aws(String),
    #[error("token fetch: {0}")]
    Runtime(String),
}

/// How long a token is taken to live when the endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Bound on one fetch, so a hung endpoint cannot hold librdkafka's callback.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A token from `source`, fetched on a thread of its own (see the module doc).
pub fn token_blocking(source: &KafkaOAuth) -> Result<OAuthToken, OAuthError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| OAuthError::Runtime(e.to_string()))?;
                runtime.block_on(async {
                    tokio::time::timeout(FETCH_TIMEOUT, token(source))
                        .await
                        .map_err(|_| {
                            OAuthError::Runtime(format!("no token within {FETCH_TIMEOUT:?}"))
                        })?
                })
            })
            .join()
            .map_err(|_| OAuthError::Runtime("the token fetch thread panicked".into()))?
    })
}

/// A token from `source`.
pub async fn token(source: &KafkaOAuth) -> Result<OAuthToken, OAuthError> {
    match source {
        KafkaOAuth::Oidc {
            token_url,
            client_id,
            client_secret_file,
            scope,
        } => {
            let secret = crate::writer::config::read_secret_file(client_secret_file)
                .map_err(|e| OAuthError::Config(e.to_string()))?;
            oidc_token(token_url, client_id, &secret, scope.as_deref()).await
        }
        KafkaOAuth::MskIam { region } => msk_iam_token(region.as_deref()).await,
    }
}

/// Milliseconds since the Unix epoch, `after` from now.
fn expiry_ms(after: Duration) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from((now + after).as_millis()).unwrap_or(i64::MAX)
}
