//! HTTP endpoints of the operator and the writers: Prometheus metrics and Kubernetes probes.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What can hold a started process back; when several fail, the reason
/// shown is the first in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Bus,
    Store,
}

/// Whether the process is ready, and why not: `/readyz` answers 503 with the
/// reason, so `kubectl describe pod` shows it in the probe's failure event.
/// Ready means started (the writer reached its bus, the operator leads) and
/// no check failing: each check is set and cleared by its own owner, so a
/// store that recovers cannot hide a bus that is still failing.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    failing: Mutex<BTreeMap<Check, String>>,
}

impl Readiness {
    /// Started (or no longer): ready unless a check fails.
    pub fn set_ready(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// `check` fails because of `reason`.
    pub fn failing(&self, check: Check, reason: impl Into<String>) {
        if let Ok(mut f) = self.failing.lock() {
            f.insert(check, reason.into());
        }
    }

    /// `check` passes again.
    pub fn passing(&self, check: Check) {
        if let Ok(mut f) = self.failing.lock() {
            f.remove(&check);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && self.failing.lock().map(|f| f.is_empty()).unwrap_or(false)
    }

    pub fn reason(&self) -> Option<String> {
        self.failing
            .lock()
            .ok()
            .and_then(|f| f.values().next().cloned())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    ready: Arc<Readiness>,
}

/// Binds `addr`; separate from serving so a taken port is a startup error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_on(bind(addr).await?, registry, ready, shutdown).await
}

/// Serves on an already bound listener until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve_on(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router(registry, ready))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

pub fn router(registry: Arc<Registry>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, ready })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.is_ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        let body = match state.ready.reason() {
            Some(reason) => format!("not ready: {reason}"),
            None => "not ready".to_string(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String, String) {
        let req = Request::get(path).body(Body::empty()).unwrap_or_default();
        let res = match router.oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let status = res.status();
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap_or_default();
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let mut registry = Registry::default();
        let _m = crate::operator::metrics::Metrics::register(&mut registry);
        let ready = Arc::new(Readiness::default());
        let app = router(Arc::new(registry), ready.clone());

        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.failing(Check::Store, "store not written: refused");
        ready.failing(Check::Bus, "bus not reached: broken");
        assert_eq!(
            get(app.clone(), "/readyz").await.2,
            "not ready: bus not reached: broken"
        );
        // Started, but each failing check holds it back until its owner clears it.
        ready.set_ready(true);
        ready.passing(Check::Bus);
        assert_eq!(
            get(app.clone(), "/readyz").await.2,
            "not ready: store not written: refused"
        );
        ready.passing(Check::Store);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);

        let (status, ctype, body) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("bgpersist_operator_reconciles"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
