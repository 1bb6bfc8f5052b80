//! `kubectl bgpersist status NAME`: per writer, its replicas (the resource's
//! status and its Deployment), readiness, consumer lag, dead-letter, retry
//! and write rates (two scrapes of each pod's `/metrics` through the API
//! server's pod proxy, `--window` apart) and the last error: a pod's
//! `/readyz` reason, else why its container waits, else what the resource's
//! status says.

use super::metrics::{self, Rates, Snapshot};
use super::{KubeOptions, PluginError, get_resource};
use crate::crd::{BackgroundPersistence, WriterStatus};
use crate::operator::render::{LABEL_RESOURCE, LABEL_WRITER, deployment_name};
use crate::operator::status::{DEGRADED, READY};
use crate::pod_proxy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The exit code when some writer is not ready.
pub const EXIT_NOT_READY: u8 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub resource: String,
    pub namespace: String,
    /// The resource's Ready condition: status and message.
    pub ready: Option<String>,
    pub writers: Vec<WriterReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WriterReport {
    pub name: String,
    pub deployment: String,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub ready: bool,
    /// Pods whose metrics were read both times.
    pub pods_scraped: usize,
    /// Summed over the writer's pods; None when no pod could be scraped.
    pub consumer_lag_messages: Option<f64>,
    /// The largest over its pods.
    pub consumer_lag_seconds: Option<f64>,
    pub rates: Option<Rates>,
    pub last_error: Option<String>,
}

impl StatusReport {
    pub fn all_ready(&self) -> bool {
        self.writers.iter().all(|w| w.ready)
    }
}

/// One pod's scrapes and reason.
struct PodReading {
    name: String,
    first: Option<Snapshot>,
    rates: Option<Rates>,
    last: Option<Snapshot>,
    reason: Option<String>,
}

pub async fn status(
    client: &Client,
    opts: &KubeOptions,
    name: &str,
    window: Duration,
) -> Result<StatusReport, PluginError> {
    let bp = get_resource(client, name).await?;
    opts.check_namespace(&bp)?;
    let ns = bp.spec.common_persistence_specs.namespace.clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // First scrape of every writer's pods, one wait, then the second: the
    // command takes one window whatever the number of writers.
    let mut per_writer = Vec::new();
    for w in &bp.spec.writers {
        let selector = format!("{LABEL_RESOURCE}={name},{LABEL_WRITER}={}", w.name);
        let pods = pods_api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let mut readings = Vec::new();
        for pod in pods {
            let mut r = PodReading {
                name: pod.name_any(),
                first: None,
                rates: None,
                last: None,
                reason: waiting_reason(&pod),
            };
            if r.reason.is_none() {
                match scrape(client, &ns, &r.name).await {
                    Ok(s) => r.first = Some(s),
                    Err(e) => r.reason = Some(e.to_string()),
                }
            }
            readings.push(r);
        }
        per_writer.push((w, readings));
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    for (_, readings) in &mut per_writer {
        for r in readings.iter_mut() {
            let Some(first) = r.first else { continue };
            match scrape(client, &ns, &r.name).await {
                Ok(second) => {
                    r.rates = Some(metrics::rates(&first, &second, started.elapsed()));
                    r.last = Some(second);
                }
                Err(e) => r.reason = Some(e.to_string()),
            }
            if r.reason.is_none() {
                r.reason = match pod_proxy::not_ready_reason(client, &ns, &r.name).await {
                    Ok(reason) => reason.map(|reason| format!("pod {}: {reason}", r.name)),
                    Err(e) => Some(e.to_string()),
                };
            }
        }
    }

    let mut writers = Vec::new();
    for (w, readings) in per_writer {
        let shown = bp
            .status
            .as_ref()
            .and_then(|s| s.writers.iter().find(|s| s.name == w.name));
        let deployment = shown
            .and_then(|s| s.deployment.clone())
            .unwrap_or_else(|| deployment_name(name, &w.name));
        let live = deployments.get_opt(&deployment).await?;
        writers.push(report(
            &bp,
            &w.name,
            deployment,
            live.as_ref(),
            shown,
            &readings,
        ));
    }
    Ok(StatusReport {
        resource: name.to_string(),
        namespace: ns,
        ready: condition(&bp, READY).map(|(status, message)| format!("{status}: {message}")),
        writers,
    })
}

fn report(
    bp: &BackgroundPersistence,
    writer: &str,
    deployment: String,
    live: Option<&Deployment>,
    shown: Option<&WriterStatus>,
    readings: &[PodReading],
) -> WriterReport {
    // The Deployment is the truth now; the status is what the operator last saw.
    let desired_replicas = live
        .and_then(|d| d.spec.as_ref()?.replicas)
        .or(shown.map(|s| s.desired_replicas))
        .unwrap_or_default();
    let ready_replicas = match live {
        Some(d) => d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or_default(),
        None => shown.map(|s| s.ready_replicas).unwrap_or_default(),
    };
    let scraped: Vec<&PodReading> = readings.iter().filter(|r| r.last.is_some()).collect();
    let last = |f: fn(&Snapshot) -> f64| scraped.iter().filter_map(|r| r.last.as_ref()).map(f);
    let any = !scraped.is_empty();
    let ready = live.is_some() && ready_replicas >= desired_replicas;
    let last_error = readings
        .iter()
        .find_map(|r| r.reason.clone())
        .or_else(|| shown.and_then(|s| s.message.clone()))
        .or_else(|| {
            if ready {
                return None;
            }
            condition(bp, DEGRADED)
                .filter(|(s, _)| s == "True")
                .or_else(|| condition(bp, READY).filter(|(s, _)| s != "True"))
                .map(|(_, m)| m)
        });
    WriterReport {
        name: writer.to_string(),
        deployment,
        desired_replicas,
        ready_replicas,
        ready,
        pods_scraped: scraped.len(),
        consumer_lag_messages: any.then(|| last(|s| s.lag_messages).sum()),
        consumer_lag_seconds: any.then(|| last(|s| s.lag_seconds).fold(0.0, f64::max)),
        rates: scraped.iter().filter_map(|r| r.rates).reduce(|a, b| a + b),
        last_error,
    }
}

/// A condition's status and message.
fn condition(bp: &BackgroundPersistence, type_: &str) -> Option<(String, String)> {
    bp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.message.clone()))
}

/// Why a pod's writer cannot answer: not running, or its container waiting
/// (`CrashLoopBackOff`, `ImagePullBackOff`, ...) or terminated.
fn waiting_reason(pod: &Pod) -> Option<String> {
    let name = pod.name_any();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first());
    let state = container.and_then(|c| c.state.as_ref());
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_else(|| "waiting".into());
        return Some(match w.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("pod {name}: {reason}: {m}"),
            None => format!("pod {name}: {reason}"),
        });
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return Some(format!(
            "pod {name}: terminated ({}, exit {})",
            t.reason.as_deref().unwrap_or("unknown"),
            t.exit_code
        ));
    }
    (phase != "Running").then(|| format!("pod {name}: {phase}"))
}

async fn scrape(client: &Client, ns: &str, pod: &str) -> Result<Snapshot, PluginError> {
    let reply = pod_proxy::get(client, ns, pod, "metrics").await?;
    if !reply.is_success() {
        return Err(PluginError::Metrics {
            pod: pod.to_string(),
            status: reply.status,
            body: reply.body.chars().take(200).collect(),
        });
    }
    metrics::parse(&reply.body).map_err(|source| PluginError::MetricsText {
        pod: pod.to_string(),
        source,
    })
}

/// The report as a table: one row per writer.
pub fn table(r: &StatusReport) -> String {
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let rows: Vec<[String; 8]> = r
        .writers
        .iter()
        .map(|w| {
            [
                w.name.clone(),
                format!("{}/{}", w.ready_replicas, w.desired_replicas),
                if w.ready { "yes" } else { "no" }.into(),
                w.consumer_lag_messages
                    .map_or("-".into(), |v| format!("{v:.0}")),
                num(w.consumer_lag_seconds),
                num(w.rates.map(|r| r.dead_letters_per_second)),
                num(w.rates.map(|r| r.retries_per_second)),
                w.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "WRITER",
        "READY",
        "OK",
        "LAG(MSGS)",
        "LAG(S)",
        "DEAD-LETTERS/S",
        "RETRIES/S",
        "LAST ERROR",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 8]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = format!(
        "{} (namespace {}): Ready {}\n",
        r.resource,
        r.namespace,
        r.ready.as_deref().unwrap_or("unknown")
    );
    out.push_str(&line(&header));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}
