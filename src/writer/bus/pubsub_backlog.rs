//! A Pub/Sub writer's backlog, read from Cloud Monitoring: the Pub/Sub API
//! itself tells a subscriber nothing of it. Every `backlog_interval` the
//! writer lists the newest point of its own subscription's
//! `num_undelivered_messages` and `oldest_unacked_message_age` (official
//! `google-cloud-monitoring-v3` client, `projects.timeSeries.list`) into
//! `bgpersist_writer_consumer_lag_messages` and
//! `bgpersist_writer_oldest_unacked_seconds`.
//!
//! Both are -1 while unknown: reads off (the emulator has no Monitoring),
//! not yet answered, or refused. A refusal (the writer's identity lacks
//! `roles/monitoring.viewer`) is logged once; reads go on quietly at the
//! same pace, so granting the role later is picked up without a restart.
//! Other failures keep the last value and are logged when their text changes.

use super::pubsub::resource_path;
use crate::writer::config::PubsubSettings;
use crate::writer::runtime::metrics::WriterMetrics;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::error::rpc::Code;
use google_cloud_monitoring_v3::client::MetricService;
use google_cloud_monitoring_v3::model::TimeInterval;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Undelivered messages of a subscription (Cloud Monitoring metric type).
pub const NUM_UNDELIVERED: &str = "pubsub.googleapis.com/subscription/num_undelivered_messages";
/// Age in seconds of a subscription's oldest unacked message.
pub const OLDEST_UNACKED_AGE: &str =
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age";
/// How far back a read looks: Pub/Sub samples these metrics every 60 s and
/// they show in Monitoring up to a few minutes later.
const WINDOW: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
enum BacklogError {
    /// The identity may not read Monitoring (no `monitoring.timeSeries.list`).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// The newest backlog point of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub undelivered: Option<i64>,
    pub oldest_unacked_seconds: Option<i64>,
}

/// Starts reading `subscription`'s backlog into `metrics` until `stop`, when
/// reads are on; the gauges stay -1 otherwise.
pub fn spawn(
    settings: &PubsubSettings,
    subscription: &str,
    metrics: WriterMetrics,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    metrics.lag_messages.set(-1);
    metrics.oldest_unacked_seconds.set(-1);
    let interval = settings.backlog_interval?;
    let path = resource_path(settings.project.as_deref(), "subscriptions", subscription).ok()?;
    let endpoint = settings.monitoring_endpoint.clone();
    Some(tokio::spawn(run(endpoint, path, interval, metrics, stop)))
}

async fn run(
    endpoint: Option<String>,
    subscription: String,
    interval: Duration,
    metrics: WriterMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = MetricService::builder();
    if let Some(e) = &endpoint {
        builder = builder
            .with_endpoint(e)
            .with_credentials(Anonymous::new().build());
    }
    let client = match builder.build().await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cloud monitoring client; the pub/sub backlog is not read");
            return;
        }
    };
    info!(%subscription, interval_s = interval.as_secs(), "reading the pub/sub backlog from cloud monitoring");
    let mut last_failure: Option<String> = None;
    loop {
        match read(&client, &subscription).await {
            Ok(backlog) => {
                if last_failure.take().is_some() {
                    info!(%subscription, "pub/sub backlog readable again");
                }
                // No point in the window leaves what was shown.
                if let Some(n) = backlog.undelivered {
                    metrics.lag_messages.set(n);
                }
                if let Some(s) = backlog.oldest_unacked_seconds {
                    metrics.oldest_unacked_seconds.set(s);
                }
            }
            Err(e) => {
                let text = e.to_string();
                if let BacklogError::Refused(_) = e {
                    metrics.lag_messages.set(-1);
                    metrics.oldest_unacked_seconds.set(-1);
                }
                if last_failure.as_deref() != Some(text.as_str()) {
                    match e {
                        BacklogError::Refused(_) => warn!(
                            %subscription, error = %text,
                            "cloud monitoring refused to show the pub/sub backlog (grant the writers' identity roles/monitoring.viewer); the backlog gauges stay -1"
                        ),
                        BacklogError::Failed(_) => {
                            warn!(%subscription, error = %text, "pub/sub backlog not read")
                        }
                    }
                    last_failure = Some(text);
                } else {
                    debug!(%subscription, error = %text, "pub/sub backlog not read");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn read(client: &MetricService, subscription: &str) -> Result<Backlog, BacklogError> {
    Ok(Backlog {
        undelivered: newest(client, subscription, NUM_UNDELIVERED).await?,
        oldest_unacked_seconds: newest(client, subscription, OLDEST_UNACKED_AGE).await?,
    })
}

/// `projects/<p>/subscriptions/<id>` → (`projects/<p>`, `<id>`).
fn split(subscription: &str) -> (String, &str) {
    let parts: Vec<&str> = subscription.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "subscriptions", id] => (format!("projects/{p}"), id),
        _ => (String::new(), subscription),
    }
}

/// The filter of one metric of one subscription (the API takes one metric
/// type per request).
pub fn filter(metric: &str, subscription_id: &str) -> String {
    format!(
        "metric.type = \"{metric}\" AND resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"{subscription_id}\""
    )
}

/// The newest point's value of `metric` for the subscription in the window.
async fn newest(
    client: &MetricService,
    subscription: &str,
    metric: &str,
) -> Result<Option<i64>, BacklogError> {
    let (project, id) = split(subscription);
    let now = SystemTime::now();
    let start = now.checked_sub(WINDOW).unwrap_or(now);
    let stamp = |t: SystemTime| {
        google_cloud_wkt::Timestamp::try_from(t)
            .map_err(|e| BacklogError::Failed(format!("time {t:?}: {e}")))
    };
    let response = client
        .list_time_series()
        .set_name(project)
        .set_filter(filter(metric, id))
        .set_interval(
            TimeInterval::new()
                .set_start_time(stamp(start)?)
                .set_end_time(stamp(now)?),
        )
        .send()
        .await
        .map_err(|e| {
            let refused = e.status().map(|s| s.code) == Some(Code::PermissionDenied)
                || e.http_status_code() == Some(403);
            let text = format!("{metric}: {e}");
            if refused {
                BacklogError::Refused(text)
            } else {
                BacklogError::Failed(text)
            }
        })?;
    let newest = response
        .time_series
        .iter()
        .flat_map(|ts| ts.points.iter())
        .filter_map(|p| {
            let end = p.interval.as_ref()?.end_time.as_ref()?;
            let v = p.value.as_ref()?;
            let value = v
                .int64_value()
                .copied()
                .or_else(|| v.double_value().map(|d| d.round() as i64))?;
            Some(((end.seconds(), end.nanos()), value))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, v)| v);
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_names_one_metric_of_one_subscription() {
        assert_eq!(
            split("projects/p/subscriptions/s-1"),
            ("projects/p".to_string(), "s-1")
        );
        assert_eq!(
            filter(NUM_UNDELIVERED, "s-1"),
            "metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"s-1\""
        );
    }
}
