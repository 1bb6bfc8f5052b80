//! A FAKE of the Snowflake SQL API v2, in-process, in the shapes of
//! Snowflake's published OpenAPI spec (snowflakedb/snowflake-rest-api-specs,
//! `sqlapi.yaml`):
//!
//! - `POST /api/v2/statements?requestId=<uuid>[&retry=true]` with
//!   `{"statement", "timeout", "database", "schema", "warehouse", "role",
//!   "bindings": {"1": {"type", "value"}}}`; 200 ResultSet
//!   (`resultSetMetaData`, `data`, `statementHandle`, `stats`), 202
//!   QueryStatus (`statementHandle`, `statementStatusUrl`), 422
//!   QueryFailureStatus (`code`, `message`, `sqlState`, `statementHandle`),
//!   401 for a wrong bearer token;
//! - `GET /api/v2/statements/{statementHandle}` for statements still running;
//! - a request resubmitted with the same `requestId` and `retry=true` gets
//!   the first answer back and is not executed again.
//!
//! It "executes" only the statement shapes the store sends (CREATE TABLE IF
//! NOT EXISTS, the INFORMATION_SCHEMA column query, ALTER TABLE ADD COLUMN IF
//! NOT EXISTS, and MERGE ... USING (SELECT f.value:"k"::TYPE ... FROM
//! TABLE(FLATTEN(INPUT => PARSE_JSON(?)))) ... WHEN NOT MATCHED THEN INSERT),
//! with MERGE's documented semantics: source rows are matched against the
//! target only, so duplicate keys within one source are all inserted. Casts
//! follow a small subset of Snowflake's rules (e.g. 'abc'::NUMBER fails with
//! 100038 / 22018). Anything else is a 422 and a recorded violation.
//!
//! `COPY INTO` from a bucket URL through a storage integration is in
//! fake_snowflake_copy.rs.
//!
//! It is not Snowflake: no SQL engine, no transactions, no sessions or
//! warehouses, no result partitions, no real token validation.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fake_snowflake_copy as copy;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    pub token_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub(super) struct Table {
    /// (UPPER name, type) in order.
    pub(super) columns: Vec<(String, String)>,
    pub(super) rows: Vec<BTreeMap<String, Value>>,
}

#[derive(Default)]
pub(super) struct State_ {
    pub(super) tables: BTreeMap<String, Table>,
    /// What bucket URLs hold, for COPY INTO (see fake_snowflake_copy).
    pub(super) objects: BTreeMap<String, copy::Rows>,
    /// The storage integration set up, if any.
    pub(super) integration: Option<String>,
    /// Load metadata: the files each table has loaded.
    pub(super) loaded_files: BTreeMap<String, std::collections::BTreeSet<String>>,
    requests: Vec<Recorded>,
    /// Answers by requestId, for resubmissions.
    answers: HashMap<String, (u16, Value)>,
    /// Statements run (not resubmissions served from `answers`).
    executed: Vec<String>,
    /// Statements answered 202; their handle → polls left before the answer.
    running: HashMap<String, (u32, u16, Value)>,
    /// Statuses the next POSTs answer with without executing.
    failures: VecDeque<u16>,
    /// The next N statements run, but their answer is "lost" (503).
    lose_answers: u32,
    /// The next N MERGEs run asynchronously (202, then polled).
    run_async: u32,
    required: Option<(String, String)>,
    /// Things a client of the documented API must not do.
    violations: Vec<String>,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeSnowflake {
    pub url: String,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSnowflake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, State_> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSnowflake {
    pub async fn start() -> anyhow::Result<Self> {
        let state: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeSnowflake { url, state, server })
    }

    /// Sets up storage integration `name` (upper case, as Snowflake keeps it).
    pub fn create_integration(&self, name: &str) {
        lock(&self.state).integration = Some(name.to_ascii_uppercase());
    }

    /// What the bucket URL `url` holds, for COPY INTO.
    pub fn put_object(&self, url: &str, rows: copy::Rows) {
        lock(&self.state).objects.insert(url.to_string(), rows);
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        lock(&self.state).failures.extend(statuses);
    }

    pub fn lose_next_answers(&self, n: u32) {
        lock(&self.state).lose_answers = n;
    }

    pub fn run_next_merges_async(&self, n: u32) {
        lock(&self.state).run_async = n;
    }

    /// Requests must carry `Authorization: Bearer <token>` and this token type.
    pub fn require(&self, token: &str, token_type: &str) {
        lock(&self.state).required = Some((token.to_string(), token_type.to_string()));
    }

    pub fn rows(&self, table: &str) -> Vec<BTreeMap<String, Value>> {
        lock(&self.state)
            .tables
            .get(&table.to_ascii_uppercase())
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }

    pub fn columns(&self, table: &str) -> Vec<(String, String)> {
        lock(&self.state)
            .tables
            .get(&table.to_ascii_uppercase())
            .map(|t| t.columns.clone())
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Statements submitted (POST), in order, resubmissions included.
    pub fn statements(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| {
                r.body
                    .get("statement")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }

    /// Statements actually run.
    pub fn executed(&self) -> Vec<String> {
        lock(&self.state).executed.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn new_handle() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    // Read in a block: a borrow of the request must not live across the await below.
    let [authorization, token_type, user_agent, accept, content_type] = {
        let headers = req.headers();
        [
            header::AUTHORIZATION.as_str(),
            "x-snowflake-authorization-token-type",
            header::USER_AGENT.as_str(),
            header::ACCEPT.as_str(),
            header::CONTENT_TYPE.as_str(),
        ]
        .map(|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
    };
    let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut s = lock(&state);
    s.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
        token_type: token_type.clone(),
        body: body.clone(),
    });
    if user_agent.is_none_or(|u| u.is_empty()) {
        s.violations
            .push(format!("{method} {path}: no User-Agent (required)"));
    }
    if accept.as_deref() != Some("application/json") {
        s.violations
            .push(format!("{method} {path}: Accept is {accept:?}"));
    }
    if let Some((token, kind)) = s.required.clone()
        && (authorization.as_deref() != Some(&format!("Bearer {token}"))
            || token_type.as_deref() != Some(&kind))
    {
        return reply(
            401,
            json!({"code": "390303", "message": "Invalid OAuth access token. "}),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::POST, ["api", "v2", "statements"]) => {
            if content_type.as_deref() != Some("application/json") {
                s.violations
                    .push(format!("POST: Content-Type is {content_type:?}"));
            }
            submit(&mut s, &query, &body)
        }
        (Method::GET, ["api", "v2", "statements", handle]) => poll(&mut s, handle),
        _ => reply(404, json!({"code": "390404", "message": "Not found"})),
    }
}

fn submit(s: &mut State_, query: &HashMap<String, String>, body: &Value) -> Response {
    let request_id = query.get("requestId").cloned().unwrap_or_default();
    if uuid::Uuid::parse_str(&request_id).is_err() {
        s.violations
            .push(format!("requestId {request_id:?} is not a UUID"));
    }
    let retry = query.get("retry").is_some_and(|r| r == "true");
    if let Some((status, answer)) = s.answers.get(&request_id).cloned() {
        if !retry {
            s.violations
                .push(format!("requestId {request_id} reused without retry=true"));
        }
        return reply(status, answer);
    }
    if let Some(status) = s.failures.pop_front() {
        return reply(
            status,
            json!({"code": "390000", "message": format!("Fake failure {status}")}),
        );
    }
    for field in ["statement", "database", "schema"] {
        if !body.get(field).is_some_and(Value::is_string) {
            s.violations.push(format!("request body has no {field}"));
        }
    }
    let statement = body
        .get("statement")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let bindings = body.get("bindings").cloned().unwrap_or(Value::Null);
    let handle = new_handle();
    s.executed.push(statement.clone());
    let (status, answer) = match execute(s, &statement, &bindings) {
        Ok((data, inserted)) => (200, result_set(&handle, &request_id, data, inserted)),
        Err((code, sql_state, message)) => (
            422,
            json!({"code": code, "message": message, "sqlState": sql_state,
                "statementHandle": handle, "createdOn": 1_700_000_000_000u64,
                "statementStatusUrl": format!("/api/v2/statements/{handle}")}),
        ),
    };
    if s.lose_answers > 0 {
        s.lose_answers -= 1;
        s.answers.insert(request_id, (status, answer));
        return reply(
            503,
            json!({"code": "390503", "message": "Service Unavailable"}),
        );
    }
    if s.run_async > 0 && statement.starts_with("MERGE") {
        s.run_async -= 1;
        s.running.insert(handle.clone(), (1, status, answer));
        let accepted = json!({"code": "333334",
            "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
            "statementHandle": handle, "statementStatusUrl": format!("/api/v2/statements/{handle}")});
        s.answers.insert(request_id, (202, accepted.clone()));
        return reply(202, accepted);
    }
    s.answers.insert(request_id, (status, answer.clone()));
    reply(status, answer)
}

fn poll(s: &mut State_, handle: &str) -> Response {
    match s.running.get_mut(handle) {
        Some((left, _, _)) if *left > 0 => {
            *left -= 1;
            reply(
                202,
                json!({"code": "333334", "message": "Asynchronous execution in progress.",
                "statementHandle": handle, "statementStatusUrl": format!("/api/v2/statements/{handle}")}),
            )
        }
        Some((_, status, answer)) => reply(*status, answer.clone()),
        None => reply(
            422,
            json!({"code": "000709", "message": format!("Statement {handle} not found"),
            "sqlState": "02000", "statementHandle": handle}),
        ),
    }
}

fn result_set(
    handle: &str,
    request_id: &str,
    data: Vec<Vec<Value>>,
    inserted: Option<u64>,
) -> Value {
    let mut v = json!({
        "resultSetMetaData": {"numRows": data.len(), "format": "jsonv2",
            "rowType": [{"name": "COLUMN_NAME", "type": "TEXT", "length": 16_777_216, "precision": 0, "scale": 0, "nullable": false}],
            "partitionInfo": [{"rowCount": data.len(), "uncompressedSize": 100}]},
        "data": data,
        "code": "090001", "sqlState": "00000", "message": "Statement executed successfully.",
        "statementHandle": handle, "createdOn": 1_700_000_000_000u64,
        "statementStatusUrl": format!("/api/v2/statements/{handle}?requestId={request_id}"),
    });
    if let Some(n) = inserted {
        v["stats"] = json!({"numRowsInserted": n});
    }
    v
}

pub(super) type SqlError = (String, String, String);

pub(super) fn compile_error(message: String) -> SqlError {
    (
        "001003".into(),
        "42000".into(),
        format!("SQL compilation error:\n{message}"),
    )
}

/// Runs one statement of the shapes the store sends: (rows, rows inserted).
fn execute(
    s: &mut State_,
    statement: &str,
    bindings: &Value,
) -> Result<(Vec<Vec<Value>>, Option<u64>), SqlError> {
    if let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
        let (name, defs) = rest
            .split_once(" (")
            .ok_or_else(|| compile_error("syntax error in CREATE TABLE".into()))?;
        let name = unquote(name)?;
        let defs = defs.strip_suffix(')').unwrap_or(defs);
        let mut columns = Vec::new();
        for def in split_top(defs) {
            let (col, ty) = def
                .split_once(' ')
                .ok_or_else(|| compile_error(format!("bad column definition {def}")))?;
            columns.push((unquote(col)?, ty.to_string()));
        }
        s.tables.entry(name).or_insert(Table {
            columns,
            rows: Vec::new(),
        });
        return Ok((vec![vec![json!("Table successfully created.")]], None));
    }
    if statement.starts_with("SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS") {
        let table = bindings
            .pointer("/1/value")
            .and_then(Value::as_str)
            .unwrap_or("");
        let rows = s
            .tables
            .get(table)
            .map(|t| t.columns.iter().map(|(n, _)| vec![json!(n)]).collect())
            .unwrap_or_default();
        return Ok((rows, None));
    }
    if let Some(rest) = statement.strip_prefix("ALTER TABLE ") {
        let (name, col) = rest
            .split_once(" ADD COLUMN IF NOT EXISTS ")
            .ok_or_else(|| compile_error("unsupported ALTER TABLE".into()))?;
        let name = unquote(name)?;
        let (col, ty) = col
            .split_once(' ')
            .ok_or_else(|| compile_error("bad column definition".into()))?;
        let col = unquote(col)?;
        let table = s
            .tables
            .get_mut(&name)
            .ok_or_else(|| missing_table(&name))?;
        if !table.columns.iter().any(|(n, _)| *n == col) {
            table.columns.push((col, ty.to_string()));
        }
        return Ok((vec![vec![json!("Statement executed successfully.")]], None));
    }
    if let Some(rest) = statement.strip_prefix("COPY INTO ") {
        return copy::copy_into(s, rest);
    }
    if statement.starts_with("MERGE INTO ") {
        return merge(s, statement, bindings).map(|n| (vec![vec![json!(n.to_string())]], Some(n)));
    }
    let message = format!(
        "FakeSnowflake does not run: {}",
        statement.chars().take(60).collect::<String>()
    );
    s.violations.push(message.clone());
    Err(compile_error(message))
}

pub(super) fn missing_table(name: &str) -> SqlError {
    (
        "002003".into(),
        "42S02".into(),
        format!("SQL compilation error:\nObject '{name}' does not exist or not authorized."),
    )
}

/// `"ABC"` → `ABC`
pub(super) fn unquote(ident: &str) -> Result<String, SqlError> {
    ident
        .trim()
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .map(|i| i.replace("\"\"", "\""))
        .ok_or_else(|| compile_error(format!("expected a quoted identifier, got {ident}")))
}

/// Splits at commas outside parentheses and quotes.
fn split_top(list: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for c in list.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('(', None) => depth += 1,
            (')', None) => depth -= 1,
            (',', None) if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// `f.value:"key"[::TYPE]`, `TO_BINARY(f.value:"key"::VARCHAR, 'BASE64')` or
/// `PARSE_JSON(f.value:"key"::VARCHAR)` → (key, cast).
fn source_expr(expr: &str) -> Result<(String, Option<String>), SqlError> {
    let wrapped = |prefix: &str, suffix: &str| {
        expr.strip_prefix(prefix)
            .and_then(|e| e.strip_suffix(suffix))
    };
    let (expr, wrapper) = match (
        wrapped("TO_BINARY(", "::VARCHAR, 'BASE64')"),
        wrapped("PARSE_JSON(", "::VARCHAR)"),
    ) {
        (Some(inner), _) => (inner, Some("BINARY")),
        (_, Some(inner)) => (inner, Some("PARSE_JSON")),
        _ => (expr, None),
    };
    let rest = expr
        .strip_prefix("f.value:\"")
        .ok_or_else(|| compile_error(format!("unsupported expression {expr}")))?;
    let (key, cast) = rest
        .split_once('"')
        .ok_or_else(|| compile_error(format!("unsupported expression {expr}")))?;
    let cast = match (wrapper, cast.strip_prefix("::")) {
        (Some(w), _) => Some(w.to_string()),
        (None, Some(t)) => Some(t.to_string()),
        (None, None) if cast.is_empty() => None,
        _ => return Err(compile_error(format!("unsupported expression {expr}"))),
    };
    Ok((key.to_string(), cast))
}

/// Snowflake's cast of a JSON value to `ty` (a small subset of its rules).
pub(super) fn cast(value: &Value, ty: &str) -> Result<Value, SqlError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let base = ty.split('(').next().unwrap_or(ty);
    let numeric = |t: &str| -> Result<Value, SqlError> {
        match value {
            Value::Number(_) => Ok(value.clone()),
            _ => t
                .parse::<f64>()
                .map(|_| Value::String(t.to_string()))
                .map_err(|_| {
                    (
                        "100038".into(),
                        "22018".into(),
                        format!("Numeric value '{t}' is not recognized"),
                    )
                }),
        }
    };
    match base {
        "VARCHAR" => Ok(Value::String(text)),
        "NUMBER" => numeric(&text),
        "FLOAT" if matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            Ok(Value::String(text))
        }
        "FLOAT" => numeric(&text),
        "BOOLEAN" => match text.as_str() {
            "true" | "false" => Ok(Value::Bool(text == "true")),
            _ => Err((
                "100037".into(),
                "22018".into(),
                format!("Boolean value '{text}' is not recognized"),
            )),
        },
        "TIMESTAMP_TZ" | "TIMESTAMP_NTZ" | "DATE" | "TIME" => {
            let ok = match base {
                "DATE" => text.len() == 10,
                "TIME" => text.len() >= 8,
                _ => text.len() >= 19 && text.as_bytes().get(10) == Some(&b'T'),
            };
            if ok {
                Ok(Value::String(text))
            } else {
                Err((
                    "100035".into(),
                    "22007".into(),
                    format!("Timestamp '{text}' is not recognized"),
                ))
            }
        }
        "BINARY" => base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map(|_| Value::String(text.clone()))
            .map_err(|_| {
                (
                    "100115".into(),
                    "22000".into(),
                    format!("The following string is not a legal base64-encoded value: '{text}'"),
                )
            }),
        "VARIANT" => Ok(value.clone()),
        "ARRAY" if value.is_array() => Ok(value.clone()),
        "ARRAY" => Err((
            "100072".into(),
            "22000".into(),
            format!("Failed to cast variant value {text} to ARRAY"),
        )),
        "PARSE_JSON" => serde_json::from_str(&text).map_err(|e| {
            (
                "100069".into(),
                "22P02".into(),
                format!("Error parsing JSON: {e}"),
            )
        }),
        other => Err(compile_error(format!("unsupported type {other}"))),
    }
}

fn merge(s: &mut State_, statement: &str, bindings: &Value) -> Result<u64, SqlError> {
    let syntax = || compile_error("FakeSnowflake: MERGE is not in the expected shape".into());
    let rest = statement.strip_prefix("MERGE INTO ").ok_or_else(syntax)?;
    let (target, rest) = rest.split_once(" AS t USING (SELECT ").ok_or_else(syntax)?;
    let (select, rest) = rest
        .split_once(" FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) AS f) AS s ON t.")
        .ok_or_else(syntax)?;
    let (on, rest) = rest
        .split_once(" WHEN NOT MATCHED THEN INSERT (")
        .ok_or_else(syntax)?;
    let (insert_cols, values) = rest.split_once(") VALUES (").ok_or_else(syntax)?;
    let values = values.strip_suffix(')').ok_or_else(syntax)?;
    let target = unquote(target)?;
    let (left, right) = on.split_once(" = s.").ok_or_else(syntax)?;
    let key = unquote(left)?;
    if unquote(right)? != key {
        return Err(syntax());
    }
    let mut source_columns = Vec::new();
    for item in split_top(select) {
        let (expr, alias) = item.rsplit_once(" AS ").ok_or_else(syntax)?;
        let (json_key, cast_to) = source_expr(expr)?;
        source_columns.push((unquote(alias)?, json_key, cast_to));
    }
    let insert_cols: Vec<String> = split_top(insert_cols)
        .iter()
        .map(|c| unquote(c))
        .collect::<Result<_, _>>()?;
    let values: Vec<String> = split_top(values)
        .iter()
        .map(|v| {
            v.strip_prefix("s.")
                .map(unquote)
                .unwrap_or_else(|| Err(syntax()))
        })
        .collect::<Result<_, _>>()?;
    if insert_cols != values || insert_cols.len() != source_columns.len() {
        return Err(syntax());
    }
    if bindings.pointer("/1/type").and_then(Value::as_str) != Some("TEXT") {
        return Err((
            "002049".into(),
            "22000".into(),
            "Bind variable 1 must be TEXT".into(),
        ));
    }
    let text = bindings
        .pointer("/1/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let source: Value = serde_json::from_str(text).map_err(|e| {
        (
            "100069".into(),
            "22P02".into(),
            format!("Error parsing JSON: {e}"),
        )
    })?;
    let source = source.as_array().cloned().unwrap_or_default();
    let table = s
        .tables
        .get(&target)
        .ok_or_else(|| missing_table(&target))?;
    // Build every new row first: a failing MERGE changes nothing.
    let mut new_rows: Vec<BTreeMap<String, Value>> = Vec::new();
    for element in &source {
        let obj = element.as_object().cloned().unwrap_or_else(Map::new);
        let mut row = BTreeMap::new();
        for (column, json_key, cast_to) in &source_columns {
            let raw = obj.get(json_key).cloned().unwrap_or(Value::Null);
            let value = match cast_to {
                Some(t) => cast(&raw, t)?,
                None => raw,
            };
            let (_, target_type) = table
                .columns
                .iter()
                .find(|(n, _)| n == column)
                .ok_or_else(|| compile_error(format!("invalid identifier '\"{column}\"'")))?;
            // The implicit conversion into the target column.
            let stored = match target_type.as_str() {
                "VARIANT" => value,
                t => cast(&value, t)?,
            };
            row.insert(column.clone(), stored);
        }
        let key_value = row.get(&key).cloned().unwrap_or(Value::Null);
        let matched =
            !key_value.is_null() && table.rows.iter().any(|r| r.get(&key) == Some(&key_value));
        if !matched {
            new_rows.push(row);
        }
    }
    let n = new_rows.len() as u64;
    if let Some(table) = s.tables.get_mut(&target) {
        table.rows.extend(new_rows);
    }
    Ok(n)
}
