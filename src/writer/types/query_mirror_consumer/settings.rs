//! QUERY_MIRROR_CONSUMER settings: the replay target from `api_server_host`
//! (rendered by the operator) and the mirror's own knobs, read from the
//! environment with defaults (docs/mirror-and-vector.md).

use std::time::Duration;

/// Replays per second, all requests of the process together (retries count).
pub const ENV_RATE_PER_SECOND: &str = "BGP_MIRROR_RATE_PER_SECOND";
/// Path appended to the API server's base URL.
pub const ENV_PATH: &str = "BGP_MIRROR_PATH";
/// Whole-request timeout (connect, send, answer and body), milliseconds.
pub const ENV_TIMEOUT_MS: &str = "BGP_MIRROR_TIMEOUT_MS";
/// Attempts per replay before it counts as exhausted (first try included).
pub const ENV_MAX_ATTEMPTS: &str = "BGP_MIRROR_MAX_ATTEMPTS";
/// Longest pause between two attempts of one replay, milliseconds.
pub const ENV_MAX_BACKOFF_MS: &str = "BGP_MIRROR_MAX_BACKOFF_MS";
/// `pause` (default) or `dead-letter`: what an exhausted replay does.
pub const ENV_ON_EXHAUSTED: &str = "BGP_MIRROR_ON_EXHAUSTED";

pub const DEFAULT_RATE_PER_SECOND: f64 = 50.0;
pub const DEFAULT_PATH: &str = "/v1/query/online";

/// Seconds of rate-limited replays one batch may hold, so a batch (and a
/// SIGTERM waiting for it) ends within a few seconds whatever the rate.
pub const BATCH_SECONDS: f64 = 2.0;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("BGP_API_SERVER_HOST is not set (api_server_host in the spec): nowhere to replay")]
    NoTarget,
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("HTTP client: {0}")]
    Client(String),
}

/// What a replay that got no usable answer after every attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Pause the subscription and retry the batch (answered replays are not
    /// sent again): nothing is skipped, the backlog waits on the bus.
    Pause,
    /// Dead-letter the message with the last error and go on.
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// Full URL every replay is POSTed to.
    pub endpoint: url::Url,
    pub rate_per_second: f64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_backoff: Duration,
    pub on_exhausted: OnExhausted,
    /// Replays in flight at once (the rate limit still applies).
    pub concurrency: usize,
}

impl MirrorSettings {
    pub fn from_vars(
        api_server_host: Option<&str>,
        concurrency: usize,
        vars: &[(String, String)],
    ) -> Result<Self, MirrorError> {
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let invalid = |name: &'static str, value: String, reason: &str| MirrorError::Invalid {
            name,
            value,
            reason: reason.into(),
        };
        let positive = |name: &'static str, default: u64| -> Result<u64, MirrorError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(name, v, "must be a whole number above 0")),
            }
        };
        let rate_per_second = match get(ENV_RATE_PER_SECOND) {
            None => DEFAULT_RATE_PER_SECOND,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.01 && *r <= 1_000_000.0)
                .ok_or_else(|| {
                    invalid(
                        ENV_RATE_PER_SECOND,
                        v,
                        "must be a number from 0.01 to 1000000",
                    )
                })?,
        };
        let path = get(ENV_PATH).unwrap_or_else(|| DEFAULT_PATH.to_string());
        if !path.starts_with('/') {
            return Err(invalid(ENV_PATH, path, "must start with '/'"));
        }
        let on_exhausted = match get(ENV_ON_EXHAUSTED).as_deref() {
            None | Some("pause") => OnExhausted::Pause,
            Some("dead-letter") => OnExhausted::DeadLetter,
            Some(other) => {
                return Err(invalid(
                    ENV_ON_EXHAUSTED,
                    other.into(),
                    "must be pause or dead-letter",
                ));
            }
        };
        Ok(MirrorSettings {
            endpoint: endpoint(api_server_host, &path)?,
            rate_per_second,
            timeout: Duration::from_millis(positive(ENV_TIMEOUT_MS, 10_000)?),
            max_attempts: positive(ENV_MAX_ATTEMPTS, 4)?.min(100) as u32,
            max_backoff: Duration::from_millis(positive(ENV_MAX_BACKOFF_MS, 5_000)?),
            on_exhausted,
            concurrency: concurrency.max(1),
        })
    }

    /// The largest batch worth taking at this rate (see [`BATCH_SECONDS`]).
    pub fn batch_cap(&self) -> usize {
        ((self.rate_per_second * BATCH_SECONDS).ceil() as usize).max(1)
    }

    /// `cfg` with its batch size capped at [`Self::batch_cap`].
    pub fn bounded(&self, cfg: &crate::writer::WriterConfig) -> crate::writer::WriterConfig {
        let mut cfg = cfg.clone();
        cfg.max_batch_size = cfg.max_batch_size.min(self.batch_cap());
        tracing::info!(
            endpoint = %self.endpoint,
            rate_per_second = self.rate_per_second,
            max_batch_size = cfg.max_batch_size,
            on_exhausted = ?self.on_exhausted,
            "query mirror configured"
        );
        cfg
    }
}

/// `api_server_host` as users write it: `https://api.example.com`,
/// `http://10.0.0.5:8080/prefix` or a bare `api.example.com` (HTTPS).
fn endpoint(host: Option<&str>, path: &str) -> Result<url::Url, MirrorError> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(MirrorError::NoTarget)?;
    let with_scheme = if host.contains("://") {
        host.to_string()
    } else {
        format!("https://{host}")
    };
    let bad = |reason: String| MirrorError::Invalid {
        name: crate::contract::ENV_API_SERVER_HOST,
        value: host.to_string(),
        reason,
    };
    let mut url = url::Url::parse(&with_scheme).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must be an http(s) URL or a host name".into()));
    }
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}{path}"));
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::writer::config::fixtures::vars;

    #[test]
    fn defaults_and_target_forms() -> Result<(), MirrorError> {
        let s = MirrorSettings::from_vars(Some("api.example.com"), 64, &[])?;
        assert_eq!(
            s.endpoint.as_str(),
            "https://api.example.com/v1/query/online"
        );
        assert_eq!(s.rate_per_second, 50.0);
        assert_eq!(s.max_attempts, 4);
        assert_eq!(s.on_exhausted, OnExhausted::Pause);
        assert_eq!(s.batch_cap(), 100);
        let s = MirrorSettings::from_vars(
            Some("http://127.0.0.1:8080/base/?x=1"),
            1,
            &vars(&[
                (ENV_PATH, "/replay"),
                (ENV_RATE_PER_SECOND, "0.5"),
                (ENV_ON_EXHAUSTED, "dead-letter"),
            ]),
        )?;
        assert_eq!(s.endpoint.as_str(), "http://127.0.0.1:8080/base/replay");
        assert_eq!(s.batch_cap(), 1);
        assert_eq!(s.on_exhausted, OnExhausted::DeadLetter);
        Ok(())
    }

    #[test]
    fn refuses_what_cannot_work() {
        for host in [None, Some(""), Some("ftp://h"), Some("http://")] {
            assert!(MirrorSettings::from_vars(host, 1, &[]).is_err(), "{host:?}");
        }
        for (k, v) in [
            (ENV_RATE_PER_SECOND, "0"),
            (ENV_RATE_PER_SECOND, "fast"),
            (ENV_PATH, "v1/query"),
            (ENV_MAX_ATTEMPTS, "0"),
            (ENV_ON_EXHAUSTED, "drop"),
        ] {
            let err = MirrorSettings::from_vars(Some("h"), 1, &vars(&[(k, v)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with(k), "{k}={v}: {err}");
        }
    }
}
