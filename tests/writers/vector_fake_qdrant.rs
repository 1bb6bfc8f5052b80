//! FakeQdrant: an in-test HTTP server reproducing the parts of Qdrant's
//! documented REST API the vector writer uses, with Qdrant's documented
//! request and response shapes. It is a fake: it stores points in memory,
//! searches nothing, and shows only that the writer speaks these shapes.
//!
//! - `GET /collections/{name}` → 200 `{"result":{"status":"green",
//!   "points_count":n,"config":{"params":{"vectors":{"size":s,"distance":d}}}},
//!   "status":"ok","time":t}`; missing → 404 `{"status":{"error":"Not found:
//!   Collection `name` doesn't exist!"},"time":t}`.
//! - `PUT /collections/{name}` `{"vectors":{"size":s,"distance":d}}` → 200
//!   `{"result":true,"status":"ok","time":t}`; existing → 409 (Qdrant ≥ 1.8)
//!   `{"status":{"error":"Wrong input: Collection `name` already exists!"}}`.
//! - `POST /collections/{name}/points` `{"ids":[..],"with_payload":[..] |
//!   bool,"with_vector":bool}` → 200 `{"result":[{"id":..,"payload":{..},
//!   "vector":null}],..}` (only the ids that exist).
//! - `PUT /collections/{name}/points?wait=true` `{"points":[{"id","vector",
//!   "payload"}]}` → 200 `{"result":{"operation_id":n,"status":"completed"},
//!   "status":"ok","time":t}`; a vector of the wrong size → 400
//!   `{"status":{"error":"Wrong input: Vector dimension error: expected dim:
//!   s, got m"}}`; an id that is neither an unsigned integer nor a UUID → 400
//!   (format error); the whole request is refused, nothing applied.
//! - With an API key configured, a request without the matching `api-key`
//!   header gets 401 (body not modelled).

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Point {
    pub id: Value,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Collection {
    pub size: usize,
    pub distance: String,
    /// Point id (as JSON text) → point.
    pub points: BTreeMap<String, Point>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub api_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    api_key: Option<String>,
    collections: BTreeMap<String, Collection>,
    requests: Vec<Request>,
    /// Statuses to answer point upserts with before handling them (outages).
    upsert_failures: VecDeque<u16>,
    operations: u64,
}

pub struct FakeQdrant {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeQdrant {
    pub async fn start(api_key: Option<&str>) -> anyhow::Result<FakeQdrant> {
        let state = Arc::new(Mutex::new(State {
            api_key: api_key.map(str::to_string),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let state = shared.clone();
            async move { handle(state, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeQdrant { addr, state, task })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Answers the next point upserts with these statuses (Qdrant error body).
    pub fn fail_upserts(&self, statuses: &[u16]) {
        self.with(|s| s.upsert_failures.extend(statuses));
    }

    /// Drops and recreates a collection with another size, behind the writer's back.
    pub fn recreate(&self, name: &str, size: usize) {
        self.with(|s| {
            s.collections.insert(
                name.into(),
                Collection {
                    size,
                    distance: "Cosine".into(),
                    points: BTreeMap::new(),
                },
            );
        });
    }

    pub fn collection(&self, name: &str) -> Option<Collection> {
        self.with(|s| s.collections.get(name).cloned())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.with(|s| s.requests.clone())
    }
}

impl Drop for FakeQdrant {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok(result: Value) -> (u16, Value) {
    (
        200,
        json!({ "result": result, "status": "ok", "time": 0.000_1 }),
    )
}

fn error(status: u16, message: String) -> (u16, Value) {
    (
        status,
        json!({ "status": { "error": message }, "time": 0.000_1 }),
    )
}

fn valid_id(id: &Value) -> bool {
    id.is_u64()
        || id
            .as_str()
            .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: axum::extract::Request,
) -> (
    http::StatusCode,
    [(http::HeaderName, &'static str); 1],
    String,
) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let api_key = parts
        .headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, answer) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests.push(Request {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            api_key: api_key.clone(),
            body: body.clone(),
        });
        if s.api_key.is_some() && s.api_key != api_key {
            (401, Value::Null)
        } else {
            route(&mut s, parts.method.as_str(), parts.uri.path(), &body)
        }
    };
    let code = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let text = if answer.is_null() {
        "Unauthorized".to_string()
    } else {
        answer.to_string()
    };
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        text,
    )
}

fn route(s: &mut State, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["collections", name]) => match s.collections.get(*name) {
            Some(c) => ok(json!({
                "status": "green",
                "optimizer_status": "ok",
                "points_count": c.points.len(),
                "config": { "params": { "vectors": { "size": c.size, "distance": c.distance } } },
            })),
            None => error(
                404,
                format!("Not found: Collection `{name}` doesn't exist!"),
            ),
        },
        ("PUT", ["collections", name]) => {
            if s.collections.contains_key(*name) {
                return error(
                    409,
                    format!("Wrong input: Collection `{name}` already exists!"),
                );
            }
            let size = body.pointer("/vectors/size").and_then(Value::as_u64);
            let distance = body.pointer("/vectors/distance").and_then(Value::as_str);
            let (Some(size), Some(distance)) = (size, distance) else {
                return error(
                    400,
                    "Format error in JSON body: missing field `vectors`".into(),
                );
            };
            s.collections.insert(
                name.to_string(),
                Collection {
                    size: size as usize,
                    distance: distance.into(),
                    points: BTreeMap::new(),
                },
            );
            ok(json!(true))
        }
        ("POST", ["collections", name, "points"]) => {
            let Some(c) = s.collections.get(*name) else {
                return error(
                    404,
                    format!("Not found: Collection `{name}` doesn't exist!"),
                );
            };
            let wanted: Option<Vec<&str>> = body
                .get("with_payload")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect());
            let found: Vec<Value> = body
                .get("ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|id| c.points.get(&id.to_string()))
                .map(|p| {
                    let payload: Map<String, Value> = p
                        .payload
                        .iter()
                        .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(&k.as_str())))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    json!({ "id": p.id, "payload": payload, "vector": null })
                })
                .collect();
            ok(Value::Array(found))
        }
        ("PUT", ["collections", name, "points"]) => {
            if let Some(status) = s.upsert_failures.pop_front() {
                return error(status, "Service internal error: simulated outage".into());
            }
            s.operations += 1;
            let operation_id = s.operations;
            let Some(c) = s.collections.get_mut(*name) else {
                return error(
                    404,
                    format!("Not found: Collection `{name}` doesn't exist!"),
                );
            };
            let mut staged = Vec::new();
            for p in body
                .get("points")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = p.get("id").cloned().unwrap_or(Value::Null);
                if !valid_id(&id) {
                    return error(
                        400,
                        format!("Format error in JSON body: value {id} is not a valid point ID"),
                    );
                }
                let vector: Vec<f32> = p
                    .get("vector")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .map(|v| v as f32)
                    .collect();
                if vector.len() != c.size {
                    return error(
                        400,
                        format!(
                            "Wrong input: Vector dimension error: expected dim: {}, got {}",
                            c.size,
                            vector.len()
                        ),
                    );
                }
                let payload = p
                    .get("payload")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                staged.push(Point {
                    id,
                    vector,
                    payload,
                });
            }
            for p in staged {
                c.points.insert(p.id.to_string(), p);
            }
            ok(json!({ "operation_id": operation_id, "status": "completed" }))
        }
        _ => error(404, format!("Not found: {method} {path}")),
    }
}
