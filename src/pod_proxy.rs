//! Reads a writer pod's HTTP endpoints (`/readyz`, `/metrics`) through the API
//! server's pod proxy. The operator uses it to put a writer's not-ready reason
//! on the resource, and `kubectl-bgpersist status` to read writer metrics;
//! going through the API server means neither needs a route to pod addresses,
//! only RBAC `get` on `pods/proxy`. Use a client without kube's default
//! retries (`Config::default_retry`): they retry a 503, which `/readyz` answers
//! while not ready.

use crate::contract::WRITER_HTTP_PORT;
use http::Request;
use kube::Client;
use kube::client::Body;

#[derive(Debug, thiserror::Error)]
pub enum PodProxyError {
    #[error("cannot build the proxy request for pod {pod}: {source}")]
    Request { pod: String, source: http::Error },
    #[error("pod {pod} not reached through the API server: {source}")]
    Send { pod: String, source: kube::Error },
    #[error("pod {pod}: the proxied reply was not readable: {source}")]
    Body { pod: String, source: kube::Error },
}

/// One proxied HTTP reply: a 503 from `/readyz` is an answer, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReply {
    pub status: u16,
    pub body: String,
}

impl PodReply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// GET `path` on the writer HTTP port of `pod`.
pub async fn get(
    client: &Client,
    namespace: &str,
    pod: &str,
    path: &str,
) -> Result<PodReply, PodProxyError> {
    let uri = format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}:{WRITER_HTTP_PORT}/proxy/{}",
        path.trim_start_matches('/')
    );
    let request =
        Request::get(uri)
            .body(Body::empty())
            .map_err(|source| PodProxyError::Request {
                pod: pod.to_string(),
                source,
            })?;
    let response = client
        .send(request)
        .await
        .map_err(|source| PodProxyError::Send {
            pod: pod.to_string(),
            source,
        })?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect_bytes()
        .await
        .map_err(|source| PodProxyError::Body {
            pod: pod.to_string(),
            source,
        })?;
    Ok(PodReply {
        status,
        body: String::from_utf8_lossy(&bytes).trim().to_string(),
    })
}

/// The reason a writer pod gives for not being ready, or None when it is
/// ready: a 503 body is "not ready: <the writer's reason>" (`http.rs`), and
/// the reason is returned without that prefix.
pub async fn not_ready_reason(
    client: &Client,
    namespace: &str,
    pod: &str,
) -> Result<Option<String>, PodProxyError> {
    let reply = get(client, namespace, pod, "readyz").await?;
    Ok(if reply.is_success() {
        None
    } else if reply.body.is_empty() {
        Some(format!("/readyz answered {}", reply.status))
    } else {
        let reason = reply
            .body
            .strip_prefix("not ready: ")
            .unwrap_or(&reply.body);
        Some(reason.to_string())
    })
}
