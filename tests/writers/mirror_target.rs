//! A small HTTP server standing in for the API server the query mirror
//! replays against: it records every request (method, path, headers, body)
//! and answers each operation id from a script (default 200).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub fn operation_id(&self) -> &str {
        self.header("x-bgpersist-original-operation-id")
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// operation id → statuses to answer, in order; then 200.
    scripts: HashMap<String, VecDeque<u16>>,
}

pub struct MirrorTarget {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MirrorTarget {
    pub async fn start() -> anyhow::Result<MirrorTarget> {
        let state: Arc<Mutex<State>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let state = shared.clone();
            async move { answer(state, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MirrorTarget { addr, state, task })
    }

    /// `BGP_API_SERVER_HOST` for a writer replaying here.
    pub fn host(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `operation_id`'s next requests with `statuses`, then 200.
    pub fn script(&self, operation_id: &str, statuses: &[u16]) {
        if let Ok(mut s) = self.state.lock() {
            s.scripts
                .insert(operation_id.into(), statuses.iter().copied().collect());
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .lock()
            .map(|s| s.received.clone())
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.state.lock().map(|s| s.received.len()).unwrap_or(0)
    }

    /// Requests per operation id.
    pub fn by_operation(&self) -> BTreeMap<String, Vec<Received>> {
        let mut out: BTreeMap<String, Vec<Received>> = BTreeMap::new();
        for r in self.received() {
            out.entry(r.operation_id().to_string()).or_default().push(r);
        }
        out
    }
}

impl Drop for MirrorTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: axum::extract::Request,
) -> (http::StatusCode, String) {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let op = headers
        .get("x-bgpersist-original-operation-id")
        .cloned()
        .unwrap_or_default();
    let status = match state.lock() {
        Ok(mut s) => {
            s.received.push(Received {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                headers,
                body,
                at: Instant::now(),
            });
            s.scripts
                .get_mut(&op)
                .and_then(VecDeque::pop_front)
                .unwrap_or(200)
        }
        Err(_) => 500,
    };
    let code = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    (code, format!(r#"{{"replayed":{op:?},"status":{status}}}"#))
}
