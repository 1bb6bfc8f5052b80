//! A FAKE of GCP Secret Manager, in-process, for the official
//! `google-cloud-secretmanager-v1` client (HTTP+JSON transport). It serves
//! only `AccessSecretVersion` as Google documents it:
//!
//! - `GET /v1/projects/{project}/secrets/{secret}/versions/{version}:access`,
//!   `{version}` a number or `latest`;
//! - 200 with `{"name": "projects/<number>/secrets/<secret>/versions/<n>",
//!   "payload": {"data": "<base64>", "dataCrc32c": "<int64 as string>"}}`;
//! - errors as Google's JSON error body `{"error": {"code", "message", "status"}}`:
//!   404 NOT_FOUND for an unknown secret or version, 403 PERMISSION_DENIED for
//!   a secret marked denied.
//!
//! It is not Secret Manager: no IAM, no auth check, no other method. Tests
//! assert only what it shows: the operator's behaviour on these responses.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::ByteString;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Google answers with the project number, not the ID.
pub const PROJECT_NUMBER: &str = "123456789012";

#[derive(Default)]
struct State_ {
    /// "projects/<id>/secrets/<secret>" → versions (1-based).
    versions: HashMap<String, Vec<Vec<u8>>>,
    denied: HashSet<String>,
    bad_checksum: HashSet<String>,
    /// Paths requested, in order.
    requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeGcpSecretManager {
    pub endpoint: String,
    state: Arc<Mutex<State_>>,
}

impl FakeGcpSecretManager {
    pub async fn start() -> anyhow::Result<Self> {
        let state: Arc<Mutex<State_>> = Arc::default();
        let app = Router::new()
            .route(
                "/v1/projects/{project}/secrets/{secret}/versions/{version}",
                get(access),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeGcpSecretManager { endpoint, state })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State_) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Adds a version to `secret` ("projects/<id>/secrets/<name>"); returns its number.
    pub fn add_version(&self, secret: &str, data: &[u8]) -> usize {
        self.with(|s| {
            let v = s.versions.entry(secret.to_string()).or_default();
            v.push(data.to_vec());
            v.len()
        })
    }

    /// Every access to `secret` is refused with PERMISSION_DENIED.
    pub fn deny(&self, secret: &str) {
        self.with(|s| s.denied.insert(secret.to_string()));
    }

    /// `secret`'s responses carry a wrong dataCrc32c.
    pub fn corrupt_checksum(&self, secret: &str) {
        self.with(|s| s.bad_checksum.insert(secret.to_string()));
    }

    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }
}

fn google_error(code: StatusCode, status: &str, message: String) -> Response {
    let body = serde_json::json!({
        "error": {"code": code.as_u16(), "message": message, "status": status}
    });
    (
        code,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

async fn access(
    State(state): State<Arc<Mutex<State_>>>,
    Path((project, secret, version)): Path<(String, String, String)>,
) -> Response {
    let Some(version) = version.strip_suffix(":access") else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Method not found.".into(),
        );
    };
    let key = format!("projects/{project}/secrets/{secret}");
    let mut s = match state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    s.requests
        .push(format!("/v1/{key}/versions/{version}:access"));
    if s.denied.contains(&key) {
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "Permission 'secretmanager.versions.access' denied for resource '{key}/versions/{version}' (or it may not exist)."
            ),
        );
    }
    let numbered = format!("projects/{PROJECT_NUMBER}/secrets/{secret}");
    let Some(versions) = s.versions.get(&key).filter(|v| !v.is_empty()) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Secret [{numbered}] not found or has no versions."),
        );
    };
    let n = if version == "latest" {
        versions.len()
    } else {
        version.parse::<usize>().unwrap_or(0)
    };
    let Some(data) = n.checked_sub(1).and_then(|i| versions.get(i)) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Secret Version [{numbered}/versions/{version}] not found."),
        );
    };
    let mut crc = crc32c(data);
    if s.bad_checksum.contains(&key) {
        crc ^= 1;
    }
    // k8s-openapi's ByteString serializes as standard base64, as proto3 JSON encodes bytes.
    let data_b64 = serde_json::to_value(ByteString(data.clone())).unwrap_or_default();
    let body = serde_json::json!({
        "name": format!("{numbered}/versions/{n}"),
        "payload": {"data": data_b64, "dataCrc32c": crc.to_string()},
    });
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// CRC32C (Castagnoli), written here independently of the operator's.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    crc ^ 0xFFFF_FFFF
}
