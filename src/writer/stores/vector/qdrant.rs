//! Qdrant through its REST API (reqwest): one Qdrant collection per bus
//! collection, created on first use (`PUT /collections/{name}` with the
//! first vector's size and the URI's distance), points upserted with
//! `PUT /collections/{name}/points?wait=true`.
//!
//! URI: `qdrant://host[:port][/prefix]` (HTTP, port 6333 by default),
//! `qdrants://...` (HTTPS, 6333), or a plain `http(s)://` URL; parameters
//! `api_key` (sent as the `api-key` header) and `distance` (`Cosine`
//! default, `Dot`, `Euclid`, `Manhattan`).
//!
//! Point ids must be unsigned integers or UUIDs: a bus id that is the
//! canonical decimal of a u64 or a lowercase hyphenated UUID is used as is,
//! any other is mapped to UUIDv5([`ID_NAMESPACE`], id). The payload is the
//! metadata plus `_bgp_id` (the bus id), `_bgp_observed_at_micros` and
//! `_bgp_content_sha256`. Newer wins: before an upsert the stored versions of
//! the batch's points are read (`POST /collections/{name}/points`) and points
//! the store already holds a newer (or the same) observation of are left out.

use super::{StoreError, VectorError, VectorPoint, VectorStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// Namespace of the UUIDv5 point ids (fixed forever: changing it would
/// orphan every stored point).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_4b1c_9a53_4d2e_8b7f_2c1d_5e3a_9b40);
pub const DEFAULT_PORT: u16 = 6333;
pub const PAYLOAD_ID: &str = "_bgp_id";
pub const PAYLOAD_OBSERVED_AT: &str = "_bgp_observed_at_micros";
pub const PAYLOAD_CONTENT: &str = "_bgp_content_sha256";

/// Where and how to reach Qdrant.
#[derive(Clone, Debug, PartialEq)]
pub struct QdrantTarget {
    /// Base URL without a trailing slash, e.g. `http://qdrant:6333`.
    pub base: String,
    pub api_key: Option<String>,
    pub distance: String,
}

impl QdrantTarget {
    /// Parses the vector-store URI. Errors never echo it (it may hold a key).
    pub fn parse(uri: &str) -> Result<Self, VectorError> {
        let uri = uri.trim();
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| VectorError::Uri("no scheme".into()))?;
        let (http, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "qdrant" => ("http", true),
            "qdrants" => ("https", true),
            "http" => ("http", false),
            "https" => ("https", false),
            other => {
                return Err(VectorError::Uri(format!(
                    "scheme {other:?} is not Qdrant's"
                )));
            }
        };
        let mut url = url::Url::parse(&format!("{http}://{rest}"))
            .map_err(|e| VectorError::Uri(format!("not a valid URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(VectorError::Uri("no host".into()));
        }
        if default_port && url.port().is_none() {
            url.set_port(Some(DEFAULT_PORT))
                .map_err(|_| VectorError::Uri("cannot set the port".into()))?;
        }
        let mut api_key = None;
        let mut distance = "Cosine".to_string();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "api_key" => api_key = Some(v.into_owned()).filter(|k| !k.is_empty()),
                "distance" => {
                    distance = ["Cosine", "Dot", "Euclid", "Manhattan"]
                        .into_iter()
                        .find(|d| d.eq_ignore_ascii_case(&v))
                        .ok_or_else(|| {
                            VectorError::Uri(format!(
                                "distance {v:?} is not Cosine, Dot, Euclid or Manhattan"
                            ))
                        })?
                        .to_string()
                }
                other => {
                    return Err(VectorError::Uri(format!("unknown parameter {other:?}")));
                }
            }
        }
        url.set_query(None);
        url.set_fragment(None);
        Ok(QdrantTarget {
            base: url.as_str().trim_end_matches('/').to_string(),
            api_key,
            distance,
        })
    }
}

/// The Qdrant point id of a bus id (see the module docs).
pub fn point_id(id: &str) -> Value {
    if let Ok(n) = id.parse::<u64>()
        && n.to_string() == id
    {
        return json!(n);
    }
    if let Ok(u) = Uuid::parse_str(id)
        && u.hyphenated().to_string() == id
    {
        return json!(id);
    }
    json!(
        Uuid::new_v5(&ID_NAMESPACE, id.as_bytes())
            .hyphenated()
            .to_string()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers that mean "not now": the store is down, busy or refuses the key.
fn unavailable(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
        )
}

/// Qdrant's error text (`{"status":{"error":"..."}}`), else the status.
fn error_text(status: StatusCode, body: &Value) -> String {
    match body.pointer("/status/error").and_then(Value::as_str) {
        Some(e) => format!("qdrant answered {status}: {e}"),
        None => format!("qdrant answered {status}"),
    }
}

fn classify(status: StatusCode, body: &Value) -> StoreError {
    let text = error_text(status, body);
    if unavailable(status) {
        StoreError::Retriable(text)
    } else {
        StoreError::Refused(text)
    }
}

pub struct QdrantStore {
    target: QdrantTarget,
    client: reqwest::Client,
    concurrency: usize,
    dims: Mutex<HashMap<String, usize>>,
}

impl QdrantStore {
    pub fn open(uri: &str, concurrency: usize) -> Result<Self, VectorError> {
        let target = QdrantTarget::parse(uri)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| VectorError::Client(e.to_string()))?;
        Ok(QdrantStore {
            target,
            client,
            concurrency: concurrency.clamp(1, 8),
            dims: Mutex::new(HashMap::new()),
        })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn dims(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.dims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One REST call: (status, JSON body or Null). Transport failures are retriable.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), StoreError> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.target.base));
        if let Some(key) = &self.target.api_key {
            req = req.header("api-key", key);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| StoreError::Retriable(format!("qdrant: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| StoreError::Retriable(format!("qdrant: reading the answer: {e}")))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// The size of the collection's single unnamed vector, if it exists.
    async fn read_size(&self, collection: &str) -> Result<Option<usize>, StoreError> {
        let (status, body) = self
            .call(Method::GET, &format!("/collections/{collection}"), None)
            .await?;
        match status {
            StatusCode::OK => body
                .pointer("/result/config/params/vectors/size")
                .and_then(Value::as_u64)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    StoreError::Refused(format!(
                        "qdrant collection {collection} has no single unnamed vector \
                         (named vectors are not written by bgpersist)"
                    ))
                }),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(classify(status, &body)),
        }
    }

    /// (observed_at_micros, content hex) stored for each point id (as JSON text).
    async fn stored_versions(
        &self,
        collection: &str,
        ids: &[Value],
    ) -> Result<HashMap<String, (i64, String)>, StoreError> {
        let request = json!({
            "ids": ids,
            "with_payload": [PAYLOAD_OBSERVED_AT, PAYLOAD_CONTENT],
            "with_vector": false,
        });
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/collections/{collection}/points"),
                Some(&request),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.gone_or(collection, status, &body));
        }
        let mut out = HashMap::new();
        for p in body
            .pointer("/result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ts = p
                .pointer(&format!("/payload/{PAYLOAD_OBSERVED_AT}"))
                .and_then(Value::as_i64);
            let content = p
                .pointer(&format!("/payload/{PAYLOAD_CONTENT}"))
                .and_then(Value::as_str);
            // A point without our keys was written by someone else: ours replaces it.
            if let (Some(id), Some(ts), Some(content)) = (p.get("id"), ts, content) {
                out.insert(id.to_string(), (ts, content.to_string()));
            }
        }
        Ok(out)
    }

    /// A 404 on points means the collection went away: forget it and retry
    /// (the next attempt recreates it).
    fn gone_or(&self, collection: &str, status: StatusCode, body: &Value) -> StoreError {
        if status == StatusCode::NOT_FOUND {
            self.forget(collection);
            StoreError::Retriable(error_text(status, body))
        } else {
            classify(status, body)
        }
    }
}

impl VectorStore for QdrantStore {
    async fn dimension(&self, collection: &str, wanted: usize) -> Result<usize, StoreError> {
        if let Some(d) = self.dims().get(collection) {
            return Ok(*d);
        }
        let size = match self.read_size(collection).await? {
            Some(n) => n,
            None => {
                let create = json!({
                    "vectors": { "size": wanted, "distance": self.target.distance }
                });
                let (status, body) = self
                    .call(
                        Method::PUT,
                        &format!("/collections/{collection}"),
                        Some(&create),
                    )
                    .await?;
                let raced = status == StatusCode::CONFLICT
                    || (status == StatusCode::BAD_REQUEST
                        && error_text(status, &body).contains("already exists"));
                if status == StatusCode::OK {
                    wanted
                } else if raced {
                    // Created meanwhile by another writer: use what it made.
                    self.read_size(collection).await?.ok_or_else(|| {
                        StoreError::Retriable(format!("qdrant collection {collection} flickers"))
                    })?
                } else {
                    return Err(classify(status, &body));
                }
            }
        };
        self.dims().insert(collection.to_string(), size);
        Ok(size)
    }

    fn forget(&self, collection: &str) {
        self.dims().remove(collection);
    }

    async fn upsert(&self, collection: &str, points: &[&VectorPoint]) -> Result<(), StoreError> {
        let ids: Vec<Value> = points.iter().map(|p| point_id(&p.id)).collect();
        let stored = self.stored_versions(collection, &ids).await?;
        let mut out = Vec::with_capacity(points.len());
        for (p, id) in points.iter().zip(ids) {
            let content = hex(&p.content_sha256);
            if let Some((ts, c)) = stored.get(&id.to_string())
                && (p.observed_at_micros, &content) <= (*ts, c)
            {
                continue;
            }
            let mut payload = p.metadata.clone();
            payload.insert(PAYLOAD_ID.into(), json!(p.id));
            payload.insert(PAYLOAD_OBSERVED_AT.into(), json!(p.observed_at_micros));
            payload.insert(PAYLOAD_CONTENT.into(), json!(content));
            out.push(json!({ "id": id, "vector": p.embedding, "payload": payload }));
        }
        if out.is_empty() {
            return Ok(());
        }
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/collections/{collection}/points?wait=true"),
                Some(&json!({ "points": out })),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.gone_or(collection, status, &body));
        }
        match body.get("status").and_then(Value::as_str) {
            Some("ok") => Ok(()),
            _ => Err(StoreError::Retriable(format!(
                "qdrant answered 200 without status \"ok\": {body}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() -> Result<(), VectorError> {
        let t = QdrantTarget::parse("qdrant://q.internal?api_key=k3y&distance=dot")?;
        assert_eq!(t.base, "http://q.internal:6333");
        assert_eq!(t.api_key.as_deref(), Some("k3y"));
        assert_eq!(t.distance, "Dot");
        let t = QdrantTarget::parse("qdrants://q.example.com/proxy/")?;
        assert_eq!(t.base, "https://q.example.com:6333/proxy");
        assert_eq!((t.api_key, t.distance.as_str()), (None, "Cosine"));
        let t = QdrantTarget::parse("http://127.0.0.1:8080")?;
        assert_eq!(t.base, "http://127.0.0.1:8080");
        for bad in [
            "qdrant://h?distance=cos",
            "qdrant://h?apikey=secret",
            "redis://h",
            "qdrant://",
        ] {
            let err = QdrantTarget::parse(bad).err().map(|e| e.to_string());
            assert!(
                err.as_ref().is_some_and(|e| !e.contains("secret")),
                "{bad}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn point_ids_are_integers_uuids_or_uuid_v5() {
        assert_eq!(point_id("42"), json!(42));
        assert_eq!(point_id("18446744073709551615"), json!(u64::MAX));
        let u = "550e8400-e29b-41d4-a716-446655440000";
        assert_eq!(point_id(u), json!(u));
        // Not canonical: mapped, so "042" and "42" (or two spellings of a UUID) stay apart.
        for id in [
            "042",
            "-1",
            "18446744073709551616",
            "550E8400-E29B-41D4-A716-446655440000",
            "doc/7",
        ] {
            let v = point_id(id);
            let s = v.as_str().unwrap_or_default();
            let parsed = Uuid::parse_str(s).ok();
            assert_eq!(parsed.map(|u| u.get_version_num()), Some(5), "{id} -> {v}");
            assert_eq!(v, point_id(id), "deterministic");
        }
        assert_ne!(point_id("doc/7"), point_id("doc/8"));
    }
}
