//! A Pub/Sub writer's backlog from Cloud Monitoring. The bus is the rig's
//! real Pub/Sub emulator; Cloud Monitoring is a FAKE started here (the
//! emulator has none): an axum server answering `GET
//! /v3/projects/{project}/timeSeries` with the documented
//! `ListTimeSeriesResponse` JSON, or with the documented 403
//! `PERMISSION_DENIED` error. The writer reaches it through
//! `BGP_MONITORING_ENDPOINT`.

use crate::harness::*;
use crate::support::{rig, unique};
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const UNDELIVERED: &str = "pubsub.googleapis.com/subscription/num_undelivered_messages";
const OLDEST: &str = "pubsub.googleapis.com/subscription/oldest_unacked_message_age";

/// One request to the fake: the project in its path and its query parameters.
type Request = (String, HashMap<String, String>);

/// The fake's script and what it was asked.
#[derive(Clone)]
struct FakeMonitoring {
    /// Only this subscription has series.
    subscription_id: String,
    refuse: bool,
    /// (project, query parameters) of every request.
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeMonitoring {
    async fn start(subscription_id: &str, refuse: bool) -> anyhow::Result<(Self, String)> {
        let fake = FakeMonitoring {
            subscription_id: subscription_id.into(),
            refuse,
            requests: Arc::default(),
        };
        let app = Router::new()
            .route("/v3/projects/{project}/timeSeries", get(list_time_series))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((fake, url))
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A point of an INT64 gauge (int64 values are JSON strings in proto3 JSON).
fn point(end: &str, value: i64) -> serde_json::Value {
    json!({"interval": {"startTime": end, "endTime": end}, "value": {"int64Value": value.to_string()}})
}

async fn list_time_series(
    State(fake): State<FakeMonitoring>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> impl IntoResponse {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let filter = params.get("filter").cloned().unwrap_or_default();
    if let Ok(mut r) = fake.requests.lock() {
        r.push((project.clone(), params));
    }
    let json_body = |status: StatusCode, body: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
    };
    if fake.refuse {
        return json_body(
            StatusCode::FORBIDDEN,
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                "message": "Permission monitoring.timeSeries.list denied (or the resource may not exist)."}}),
        );
    }
    let wanted = format!(
        "resource.labels.subscription_id = \"{}\"",
        fake.subscription_id
    );
    // The newest point in the middle: neither the first nor the last is it.
    let (metric, points) = if filter.contains(&format!("metric.type = \"{UNDELIVERED}\"")) {
        (
            UNDELIVERED,
            vec![
                point("2026-01-01T00:01:00Z", 7),
                point("2026-01-01T00:03:00Z", 42),
                point("2026-01-01T00:02:00Z", 9),
            ],
        )
    } else if filter.contains(&format!("metric.type = \"{OLDEST}\"")) {
        (
            OLDEST,
            vec![
                point("2026-01-01T00:01:00Z", 3),
                point("2026-01-01T00:03:00Z", 17),
                point("2026-01-01T00:02:00Z", 5),
            ],
        )
    } else {
        return json_body(StatusCode::OK, json!({}));
    };
    if !filter.contains(&wanted) {
        return json_body(StatusCode::OK, json!({}));
    }
    json_body(
        StatusCode::OK,
        json!({"timeSeries": [{
            "metric": {"type": metric},
            "resource": {"type": "pubsub_subscription",
                         "labels": {"project_id": project, "subscription_id": fake.subscription_id}},
            "metricKind": "GAUGE", "valueType": "INT64",
            "points": points,
        }]}),
    )
}

/// A Pub/Sub online writer on the emulator, reading its backlog every second from `monitoring`.
async fn writer(
    ps: &mut PubsubResources,
    sub_id: &str,
    monitoring: &str,
) -> anyhow::Result<Writer> {
    let topic = ps.topic(&unique("backlog")).await?;
    ps.subscription(sub_id, &topic, Duration::from_secs(10))
        .await?;
    let mut env = online_pubsub_writer_env(
        sub_id,
        None,
        &rig("redis", "BGP_REDIS_URL"),
        Duration::from_secs(10),
    );
    env.push(("BGP_MONITORING_ENDPOINT", monitoring.into()));
    env.push(("BGP_PUBSUB_BACKLOG_INTERVAL_SECONDS", "1".into()));
    Writer::start(&env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_of_its_own_subscription_is_exported() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let result = backlog_exported(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn backlog_exported(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let sub_id = unique("backlog-sub");
    let (fake, url) = FakeMonitoring::start(&sub_id, false).await?;
    let w = writer(ps, &sub_id, &url).await?;
    let seen = eventually(
        "the backlog gauges from the fake",
        Duration::from_secs(60),
        || async {
            let lag = w.metric("bgpersist_writer_consumer_lag_messages");
            let age = w.metric("bgpersist_writer_oldest_unacked_seconds");
            Ok((lag == Some(42.0) && age == Some(17.0)).then_some(()))
        },
    )
    .await;
    seen.map_err(|e| anyhow::anyhow!("{e}\nmetrics:\n{}\nlog:\n{}", w.metrics(), w.log_text()))?;

    // It asked for its own subscription, in its project, over a window.
    let requests = fake.requests();
    let project = crate::harness::pubsub_project();
    for metric in [UNDELIVERED, OLDEST] {
        let asked = requests.iter().find(|(_, q)| {
            q.get("filter")
                .is_some_and(|f| f.contains(&format!("metric.type = \"{metric}\"")))
        });
        let (p, q) = asked.ok_or_else(|| anyhow::anyhow!("{metric} never asked: {requests:?}"))?;
        assert_eq!(p, &project);
        assert!(
            q.get("filter")
                .is_some_and(|f| f.contains(&format!("subscription_id = \"{sub_id}\""))),
            "{q:?}"
        );
        assert!(
            q.contains_key("interval.startTime") && q.contains_key("interval.endTime"),
            "{q:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_logged_once_and_the_gauges_say_unknown() -> anyhow::Result<()> {
    let mut ps = PubsubResources::new().await?;
    let result = refused(&mut ps).await;
    ps.cleanup().await;
    result
}

async fn refused(ps: &mut PubsubResources) -> anyhow::Result<()> {
    let sub_id = unique("backlog-refused");
    let (fake, url) = FakeMonitoring::start(&sub_id, true).await?;
    let w = writer(ps, &sub_id, &url).await?;
    // Three reads refused (one request each: the first metric fails the read).
    eventually("three refused reads", Duration::from_secs(60), || async {
        Ok((fake.requests().len() >= 3).then_some(()))
    })
    .await?;
    let metrics = w.metrics();
    assert_eq!(
        metric_value(&metrics, "bgpersist_writer_consumer_lag_messages"),
        Some(-1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "bgpersist_writer_oldest_unacked_seconds"),
        Some(-1.0),
        "{metrics}"
    );
    let log = w.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("roles/monitoring.viewer"))
        .count();
    assert_eq!(warnings, 1, "the refusal is logged once:\n{log}");
    assert!(
        log.contains("PERMISSION_DENIED") || log.contains("denied"),
        "{log}"
    );
    Ok(())
}
