//! A FAKE of the BigQuery REST API v2, in-process. It answers only the calls
//! the BigQuery offline store makes, in the shapes Google documents:
//!
//! - `GET .../projects/{p}/datasets/{d}` (datasets.get);
//! - `GET/PATCH .../datasets/{d}/tables/{t}` and `POST .../datasets/{d}/tables`
//!   (tables.get / patch / insert): a Table resource with `schema.fields`,
//!   types read back in their legacy names (INT64 → INTEGER) as BigQuery does;
//!   409 `duplicate` for an existing table; a patch must keep every field and
//!   may only add NULLABLE ones;
//! - `POST .../tables/{t}/insertAll`: `{"kind", "insertErrors": [{"index",
//!   "errors": [{"reason", "location", "message"}]}]}`; unknown fields are
//!   `invalid` "no such field", values that do not fit the column are
//!   `invalid`; with `skipInvalidRows: false` nothing is inserted and the
//!   other rows are `stopped`; rows are deduplicated by `insertId`;
//! - errors as `{"error": {"code", "message", "errors": [{"reason"}], "status"}}`;
//! - `POST /token`: an OAuth token endpoint for an `authorized_user` ADC file;
//! - load jobs (`jobs.insert` / `jobs.get`): see fake_bigquery_jobs.rs.
//!
//! It is not BigQuery: its type checks are a small subset of BigQuery's
//! coercions, it deduplicates insertIds forever (BigQuery: best effort, about
//! a minute), has no streaming buffer, quotas, IAM or partition pruning.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fake_bigquery_jobs::{self as jobs, Object};

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) fields: Vec<Value>,
    pub(super) partitioning: Option<Value>,
    pub(super) rows: Vec<Value>,
    pub(super) insert_ids: HashSet<String>,
}

#[derive(Default)]
pub(super) struct State_ {
    pub(super) project: String,
    pub(super) datasets: HashSet<String>,
    pub(super) tables: BTreeMap<(String, String), Table>,
    requests: Vec<Recorded>,
    /// Statuses the next insertAll calls answer with instead of inserting.
    insert_failures: VecDeque<u16>,
    required_bearer: Option<String>,
    tokens_issued: u32,
    /// Load jobs by id, as jobs.get answers them (see fake_bigquery_jobs).
    pub(super) jobs: BTreeMap<String, Value>,
    /// What Cloud Storage objects hold, registered by the tests.
    pub(super) objects: BTreeMap<String, Object>,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeBigQuery {
    pub url: String,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBigQuery {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, State_> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBigQuery {
    pub async fn start(project: &str, datasets: &[&str]) -> anyhow::Result<Self> {
        let state: Shared = Arc::default();
        {
            let mut s = lock(&state);
            s.project = project.to_string();
            s.datasets = datasets.iter().map(|d| d.to_string()).collect();
        }
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeBigQuery { url, state, server })
    }

    /// The next insertAll calls answer with these statuses, in order.
    pub fn fail_inserts(&self, statuses: &[u16]) {
        lock(&self.state).insert_failures.extend(statuses);
    }

    /// Every API call must carry `Authorization: Bearer <token>`, else 401.
    pub fn require_bearer(&self, token: &str) {
        lock(&self.state).required_bearer = Some(token.to_string());
    }

    pub fn rows(&self, dataset: &str, table: &str) -> Vec<Value> {
        let s = lock(&self.state);
        s.tables
            .get(&(dataset.to_string(), table.to_string()))
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }

    pub fn fields(&self, dataset: &str, table: &str) -> Vec<Value> {
        let s = lock(&self.state);
        s.tables
            .get(&(dataset.to_string(), table.to_string()))
            .map(|t| t.fields.clone())
            .unwrap_or_default()
    }

    pub fn partitioning(&self, dataset: &str, table: &str) -> Option<Value> {
        let s = lock(&self.state);
        s.tables
            .get(&(dataset.to_string(), table.to_string()))
            .and_then(|t| t.partitioning.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Requests whose path ends with `suffix` and whose method is `method`.
    pub fn calls(&self, method: &str, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }

    /// What `uri` holds, for load jobs (the fake cannot read Cloud Storage).
    pub fn put_object(&self, uri: &str, fields: Vec<Value>, rows: Vec<Value>) {
        lock(&self.state)
            .objects
            .insert(uri.to_string(), Object { fields, rows });
    }

    pub fn tokens_issued(&self) -> u32 {
        lock(&self.state).tokens_issued
    }
}

pub(super) fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// Google's JSON error body.
pub(super) fn google_error(code: u16, status: &str, reason: &str, message: &str) -> Response {
    reply(
        code,
        json!({"error": {"code": code, "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status}}),
    )
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut s = lock(&state);
    if path == "/token" {
        s.tokens_issued += 1;
        if body.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
            return reply(400, json!({"error": "unsupported_grant_type"}));
        }
        return reply(
            200,
            json!({"access_token": format!("ya29.fake-{}", s.tokens_issued),
                "expires_in": 3600, "token_type": "Bearer"}),
        );
    }
    s.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if let Some(want) = &s.required_bearer
        && authorization.as_deref() != Some(&format!("Bearer {want}"))
    {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let project = s.project.clone();
    match (method, segments.as_slice()) {
        (m, ["bigquery", "v2", "projects", p, "datasets", d, rest @ ..]) if *p == project => {
            if !s.datasets.contains(*d) {
                return google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("Not found: Dataset {p}:{d}"),
                );
            }
            let (p, d) = (p.to_string(), d.to_string());
            match (m, rest) {
                (Method::GET, []) => reply(
                    200,
                    json!({"kind": "bigquery#dataset", "id": format!("{p}:{d}"),
                        "datasetReference": {"projectId": p, "datasetId": d}}),
                ),
                (Method::GET, ["tables", t]) => get_table(&s, &p, &d, t),
                (Method::POST, ["tables"]) => create_table(&mut s, &p, &d, &body),
                (Method::PATCH, ["tables", t]) => patch_table(&mut s, &p, &d, t, &body),
                (Method::POST, ["tables", t, "insertAll"]) => insert_all(&mut s, &p, &d, t, &body),
                _ => google_error(404, "NOT_FOUND", "notFound", "Not found: URL"),
            }
        }
        (Method::POST, ["bigquery", "v2", "projects", p, "jobs"]) if *p == project => {
            jobs::insert_job(&mut s, &project, &body)
        }
        (Method::GET, ["bigquery", "v2", "projects", p, "jobs", id]) if *p == project => {
            jobs::get_job(&s, &project, id)
        }
        _ => google_error(404, "NOT_FOUND", "notFound", &format!("Not found: {path}")),
    }
}

fn table_resource(p: &str, d: &str, t: &str, table: &Table) -> Value {
    let mut v = json!({"kind": "bigquery#table", "id": format!("{p}:{d}.{t}"),
        "tableReference": {"projectId": p, "datasetId": d, "tableId": t},
        "schema": {"fields": table.fields}});
    if let Some(tp) = &table.partitioning {
        v["timePartitioning"] = tp.clone();
    }
    v
}

fn get_table(s: &State_, p: &str, d: &str, t: &str) -> Response {
    match s.tables.get(&(d.to_string(), t.to_string())) {
        Some(table) => reply(200, table_resource(p, d, t, table)),
        None => google_error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("Not found: Table {p}:{d}.{t}"),
        ),
    }
}

/// BigQuery reads standard SQL type names back in their legacy spelling.
fn legacy(field: &Value) -> Result<Value, String> {
    let name = field.get("name").and_then(Value::as_str).unwrap_or("");
    let ty = field.get("type").and_then(Value::as_str).unwrap_or("");
    let ty = match ty {
        "INT64" | "INTEGER" => "INTEGER",
        "FLOAT64" | "FLOAT" => "FLOAT",
        "BOOL" | "BOOLEAN" => "BOOLEAN",
        "STRING" | "BYTES" | "TIMESTAMP" | "DATE" | "TIME" | "DATETIME" | "NUMERIC"
        | "BIGNUMERIC" | "JSON" => ty,
        other => return Err(format!("Invalid field type {other:?} for field {name}")),
    };
    if name.is_empty() {
        return Err("Field name is required".into());
    }
    let mode = field
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("NULLABLE");
    Ok(json!({"name": name, "type": ty, "mode": mode}))
}

fn create_table(s: &mut State_, p: &str, d: &str, body: &Value) -> Response {
    let t = body
        .pointer("/tableReference/tableId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if s.tables.contains_key(&(d.to_string(), t.clone())) {
        return google_error(
            409,
            "ALREADY_EXISTS",
            "duplicate",
            &format!("Already Exists: Table {p}:{d}.{t}"),
        );
    }
    let mut fields = Vec::new();
    for f in body
        .pointer("/schema/fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match legacy(f) {
            Ok(f) => fields.push(f),
            Err(why) => return google_error(400, "INVALID_ARGUMENT", "invalid", &why),
        }
    }
    let table = Table {
        fields,
        partitioning: body.get("timePartitioning").cloned(),
        ..Table::default()
    };
    let resource = table_resource(p, d, &t, &table);
    s.tables.insert((d.to_string(), t), table);
    reply(200, resource)
}

fn patch_table(s: &mut State_, p: &str, d: &str, t: &str, body: &Value) -> Response {
    let Some(table) = s.tables.get_mut(&(d.to_string(), t.to_string())) else {
        return google_error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("Not found: Table {p}:{d}.{t}"),
        );
    };
    let mut fields = Vec::new();
    for f in body
        .pointer("/schema/fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match legacy(f) {
            Ok(f) => fields.push(f),
            Err(why) => return google_error(400, "INVALID_ARGUMENT", "invalid", &why),
        }
    }
    for old in &table.fields {
        if !fields
            .iter()
            .any(|f| f["name"] == old["name"] && f["type"] == old["type"])
        {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "invalid",
                &format!(
                    "Provided Schema does not match Table {p}:{d}.{t}. Field {} is missing in new schema",
                    old["name"].as_str().unwrap_or("")
                ),
            );
        }
    }
    for new in fields
        .iter()
        .filter(|f| !table.fields.iter().any(|o| o["name"] == f["name"]))
    {
        if new["mode"] == "REQUIRED" {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "invalid",
                &format!(
                    "Provided Schema does not match Table {p}:{d}.{t}. Cannot add required fields to an existing schema. (field: {})",
                    new["name"].as_str().unwrap_or("")
                ),
            );
        }
    }
    table.fields = fields;
    reply(200, table_resource(p, d, t, table))
}

/// Why `value` does not fit a column of type `ty`, BigQuery-style.
fn misfit(ty: &str, value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let ok = match ty {
        "STRING" => value.is_string(),
        "INTEGER" => value.is_i64() || value.is_u64() || text.parse::<i64>().is_ok(),
        "FLOAT" => value.is_number() || text.parse::<f64>().is_ok(),
        "BOOLEAN" => value.is_boolean() || matches!(text.as_str(), "true" | "false"),
        "TIMESTAMP" => {
            value.is_string()
                && text.len() >= 19
                && text
                    .as_bytes()
                    .get(10)
                    .is_some_and(|c| *c == b'T' || *c == b' ')
        }
        "DATE" => value.is_string() && text.len() == 10 && text.as_bytes()[4] == b'-',
        "NUMERIC" | "BIGNUMERIC" => text.parse::<f64>().is_ok(),
        "BYTES" => base64::engine::general_purpose::STANDARD
            .decode(&text)
            .is_ok(),
        "JSON" => value.is_string() && serde_json::from_str::<Value>(&text).is_ok(),
        _ => true,
    };
    (!ok).then(|| match ty {
        "INTEGER" => format!("Cannot convert value to integer (bad value): {text}"),
        "FLOAT" => format!("Cannot convert value to floating point (bad value): {text}"),
        "BOOLEAN" => format!("Cannot convert value to boolean (bad value): {text}"),
        "TIMESTAMP" => format!("Could not parse '{text}' as a timestamp."),
        "JSON" => format!("Could not parse '{text}' as JSON."),
        other => format!("Cannot convert value to {other} (bad value): {text}"),
    })
}

fn insert_all(s: &mut State_, p: &str, d: &str, t: &str, body: &Value) -> Response {
    if let Some(code) = s.insert_failures.pop_front() {
        return match code {
            429 => google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "rateLimitExceeded",
                "Exceeded rate limits: too many api requests per user per method for this user_method.",
            ),
            500 => google_error(
                500,
                "INTERNAL",
                "internalError",
                "An internal error occurred and the request could not be completed.",
            ),
            other => google_error(
                other,
                "UNAVAILABLE",
                "backendError",
                "The service is currently unavailable.",
            ),
        };
    }
    let Some(table) = s.tables.get_mut(&(d.to_string(), t.to_string())) else {
        return google_error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("Not found: Table {p}:{d}.{t}"),
        );
    };
    let rows = body
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let skip_invalid = body
        .get("skipInvalidRows")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut invalid: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(obj) = row.get("json").and_then(Value::as_object) else {
            invalid
                .entry(i)
                .or_default()
                .push(json!({"reason": "invalid", "location": "", "message": "Missing json"}));
            continue;
        };
        for (name, value) in obj {
            let field = table.fields.iter().find(|f| {
                f["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            });
            let error = match field {
                None => Some(format!("no such field: {name}.")),
                Some(_) if value.is_null() => None,
                Some(f) if f["mode"] == "REPEATED" => match value.as_array() {
                    None => Some(format!("Array specified for non-repeated field: {name}.")),
                    Some(items) if items.iter().any(Value::is_null) => {
                        Some(format!("Null value in repeated field: {name}."))
                    }
                    Some(items) => items
                        .iter()
                        .find_map(|v| misfit(f["type"].as_str().unwrap_or(""), v)),
                },
                Some(_) if value.is_array() => {
                    Some(format!("This field: {name} is not a repeated field."))
                }
                Some(f) => misfit(f["type"].as_str().unwrap_or(""), value),
            };
            if let Some(message) = error {
                invalid
                    .entry(i)
                    .or_default()
                    .push(json!({"reason": "invalid", "location": name, "message": message}));
            }
        }
    }
    let mut errors = Vec::new();
    if !invalid.is_empty() && !skip_invalid {
        for i in 0..rows.len() {
            let errs = invalid.get(&i).cloned().unwrap_or_else(|| {
                vec![json!({"reason": "stopped", "location": "", "message": ""})]
            });
            errors.push(json!({"index": i, "errors": errs}));
        }
    } else {
        for (i, row) in rows.iter().enumerate() {
            if let Some(errs) = invalid.get(&i) {
                errors.push(json!({"index": i, "errors": errs}));
                continue;
            }
            let id = row
                .get("insertId")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(id) = &id
                && !table.insert_ids.insert(id.clone())
            {
                continue;
            }
            table
                .rows
                .push(row.get("json").cloned().unwrap_or(Value::Null));
        }
    }
    let mut answer = json!({"kind": "bigquery#tableDataInsertAllResponse"});
    if !errors.is_empty() {
        answer["insertErrors"] = Value::Array(errors);
    }
    reply(200, answer)
}
