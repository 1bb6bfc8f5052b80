//! HTTP endpoints of the operator and the writers: Prometheus metrics and Kubernetes probes.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
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

/// Whether the process is ready, and why not: `/readyz` answers 503 with the
/// reason, so `kubectl describe pod` shows it in the probe's failure event.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        if ready && let Ok(mut r) = self.reason.lock() {
            *r = None;
        }
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Not ready, because of `reason`.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason.into());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
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
        ready.not_ready("bus not reached: broken");
        assert_eq!(
            get(app.clone(), "/readyz").await.2,
            "not ready: bus not reached: broken"
        );
        ready.set_ready(true);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);

        let (status, ctype, body) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("bgpersist_operator_reconciles"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
