//! Why a writer is not ready, in the writer's own words, for the resource's
//! status: the `/readyz` reason of a running pod (read through the API
//! server's pod proxy), else the last line a crashed container wrote
//! (`terminationMessagePolicy: FallbackToLogsOnError`). Read only for writers
//! that are not rolled out, so a healthy resource costs no extra request.

use super::cache::{self, Caches};
use super::reasons;
use super::render;
use super::status::PodReport;
use crate::pod_proxy;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::time::Duration;
use tracing::debug;

/// How long one pod's `/readyz` may take through the proxy.
const PROXY_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many not-ready pods are asked per writer: their reasons
/// are almost always the same.
const PODS_ASKED: usize = 3;

/// The first reason a not-ready pod of `writer` gives, classified; None when
/// no pod says anything (none yet, still pulling, or all ready). Pods come
/// from the watch cache when it is ready; only `/readyz` is asked live.
pub async fn report(
    client: &Client,
    caches: &Caches,
    ns: &str,
    resource: &str,
    writer: &str,
) -> Option<PodReport> {
    let labels = render::selector(resource, writer);
    let mut listed = match cache::pods(caches, ns, &labels) {
        Some(pods) => pods,
        None => list(client, ns, &labels, writer).await?,
    };
    // By name, so the same pod's words are shown from one reconcile to the next.
    listed.sort_by_key(|p| p.name_any());
    let waiting = listed
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_ready(p));
    for pod in waiting.take(PODS_ASKED) {
        if let Some(text) = crashed(pod) {
            return Some(classify(writer, &text));
        }
        if !running(pod) {
            continue;
        }
        let name = pod.name_any();
        match tokio::time::timeout(
            PROXY_TIMEOUT,
            pod_proxy::not_ready_reason(client, ns, &name),
        )
        .await
        {
            Ok(Ok(Some(reason))) => return Some(classify(writer, &reason)),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => debug!(pod = %name, error = %e, "writer /readyz not read"),
            Err(_) => debug!(pod = %name, "writer /readyz did not answer in time"),
        }
    }
    None
}

async fn list(
    client: &Client,
    ns: &str,
    labels: &std::collections::BTreeMap<String, String>,
    writer: &str,
) -> Option<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Some(list.items),
        Err(e) => {
            debug!(%writer, error = %e, "writer pods not listed");
            None
        }
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// "exited with code N: <last line>" of a container that is not running
/// after a failed start.
fn crashed(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        if c.state.as_ref().is_some_and(|s| s.running.is_some()) {
            return None;
        }
        let last = c.last_state.as_ref()?.terminated.as_ref()?;
        if last.exit_code == 0 {
            return None;
        }
        let line = last
            .message
            .as_deref()
            .and_then(|m| m.lines().rev().map(str::trim).find(|l| !l.is_empty()))
            .unwrap_or("no output");
        Some(format!("exited with code {}: {line}", last.exit_code))
    })
}

/// The condition reason a writer's words map to, and whether they mean a
/// configuration that can never work (the resource is then Stalled).
pub fn classify(writer: &str, text: &str) -> PodReport {
    let (reason, never_works) = if text.contains("SASL authentication failed") {
        (reasons::BUS_AUTHENTICATION_FAILED, true)
    } else if text.contains("does not exist; create it") {
        (reasons::BUS_TOPIC_NOT_FOUND, true)
    } else if text.starts_with("exited with code 2:") {
        (reasons::WRITER_MISCONFIGURED, true)
    } else if text.starts_with("exited with code") {
        (reasons::WRITER_CRASHING, false)
    } else if text.starts_with("bus not reached") {
        (reasons::BUS_UNREACHABLE, false)
    } else if text.starts_with("store not written") {
        (reasons::STORE_NOT_WRITABLE, false)
    } else {
        (reasons::WRITERS_NOT_READY, false)
    };
    PodReport {
        reason,
        message: format!("writer '{writer}': {text}"),
        never_works,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    #[test]
    fn writer_words_map_to_reasons() {
        let cases = [
            (
                "bus not reached: kafka: SASL authentication failed for user 'u' at broker b:9096: x",
                reasons::BUS_AUTHENTICATION_FAILED,
                true,
            ),
            (
                "bus not reached: topic 'result-bus-1' does not exist; create it or correct the resource",
                reasons::BUS_TOPIC_NOT_FOUND,
                true,
            ),
            (
                "bus not reached: kafka: broker b:9092 unreachable: Connection refused",
                reasons::BUS_UNREACHABLE,
                false,
            ),
            (
                "store not written: redis: connection refused",
                reasons::STORE_NOT_WRITABLE,
                false,
            ),
            (
                "exited with code 2: BGP_ONLINE_STORE_URI: unknown scheme",
                reasons::WRITER_MISCONFIGURED,
                true,
            ),
            ("exited with code 1: boom", reasons::WRITER_CRASHING, false),
        ];
        for (text, reason, never) in cases {
            let r = classify("w", text);
            assert_eq!((r.reason, r.never_works), (reason, never), "{text}");
            assert_eq!(r.message, format!("writer 'w': {text}"));
        }
    }

    fn pod_with(status: ContainerStatus) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![status]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_crash_looping_container_gives_its_last_line() {
        let pod = pod_with(ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 2,
                    message: Some("{\"level\":\"INFO\"}\nBGP_DLQ_TOPIC: missing\n".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            crashed(&pod).as_deref(),
            Some("exited with code 2: BGP_DLQ_TOPIC: missing")
        );
        assert!(!running(&pod));
    }

    #[test]
    fn a_running_container_has_not_crashed() {
        let pod = pod_with(ContainerStatus {
            state: Some(ContainerState {
                running: Some(Default::default()),
                ..Default::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(crashed(&pod), None);
        assert!(running(&pod));
    }
}
