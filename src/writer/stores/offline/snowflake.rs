//! The Snowflake offline store, over the documented SQL API v2
//! (`POST /api/v2/statements`, `GET /api/v2/statements/{handle}`).
//! See docs/offline-store.md.
//!
//! URI: `snowflake://<user>@<account>/<database>/<schema>?warehouse=<wh>&role=<role>`
//! plus one credential: `private_key_file=<path>` or `private_key=<base64
//! PKCS#8 DER>` (key-pair JWT), or `token_file=<path>` / `token=<token>` with
//! `token_type=OAUTH|PROGRAMMATIC_ACCESS_TOKEN` (default OAUTH). With
//! `BGP_SNOWFLAKE_ENDPOINT` set, requests go there (credentials optional).
//!
//! Rows are loaded with one `MERGE ... USING (SELECT ... FROM
//! TABLE(FLATTEN(PARSE_JSON(?))))` per table and chunk, the rows bound as one
//! JSON text, inserting only keys the table does not hold yet: a replay adds
//! nothing. Tables are created with `CREATE TABLE IF NOT EXISTS` and gain
//! columns with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`.

mod copy_into;

use super::json_rows::{self, JsonRow};
use super::object::ObjectLoad;
use super::snowflake_auth::{KeyPairJwt, SnowflakeAuth, TokenKind, TokenSource};
use super::snowflake_sql::{Column, Encoded, encode, ident, is_data_error, merge_statement};
use super::warehouse::{self, WarehouseError};
use super::{OfflineStore, TableRows};
use crate::writer::runtime::sink::{Rejected, WriterError};
use base64::Engine;
use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::info;

/// Endpoint override (a fake); credentials become optional.
pub use crate::writer::config::ENV_SNOWFLAKE_ENDPOINT as ENV_ENDPOINT;
/// The statement `timeout` sent with every request, in seconds.
pub const STATEMENT_TIMEOUT_SECS: u64 = 120;
/// Rows per MERGE.
const MAX_ROWS: usize = 10_000;
/// Bound JSON text per MERGE.
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Resubmissions (same requestId, `retry=true`) of a request whose answer was lost.
const RESUBMITS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnowflakeTarget {
    pub account: String,
    pub database: String,
    pub schema: String,
    pub warehouse: Option<String>,
    pub role: Option<String>,
    pub endpoint: url::Url,
}

/// What a statement came to.
enum Answer {
    /// HTTP 200: the ResultSet.
    Done(Value),
    /// HTTP 422: the statement failed (QueryFailureStatus).
    Failed { sql_state: String, text: String },
}

pub struct SnowflakeStore {
    target: SnowflakeTarget,
    auth: SnowflakeAuth,
    http: reqwest::Client,
    /// `snowflake_storage_integration_name`: bulk objects load with COPY
    /// INTO through it; without one their rows are merged like a batch's.
    storage_integration: Option<String>,
    /// Upper-cased column names of the tables this process has made sure of.
    tables: Mutex<HashMap<String, HashSet<String>>>,
}

/// Splits the URI into where to connect and how to authenticate.
pub fn parse_uri(
    uri: &str,
    endpoint: Option<&str>,
) -> Result<(SnowflakeTarget, SnowflakeAuth), WarehouseError> {
    let bad = |why: &str| {
        WarehouseError::Uri(format!(
            "{why}; expected snowflake://<user>@<account>/<database>/<schema>?warehouse=...&<credential>"
        ))
    };
    let overridden = endpoint.is_some();
    let url = url::Url::parse(uri.trim()).map_err(|e| bad(&e.to_string()))?;
    if !url.scheme().eq_ignore_ascii_case("snowflake") {
        return Err(bad(&format!("scheme {:?} is not snowflake", url.scheme())));
    }
    let account = url.host_str().unwrap_or_default().to_string();
    let path: Vec<&str> = url.path().trim_matches('/').split('/').collect();
    let [database, schema] = path.as_slice() else {
        return Err(bad("database and schema missing"));
    };
    if account.is_empty() || database.is_empty() || schema.is_empty() {
        return Err(bad("account, database or schema missing"));
    }
    let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let param = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let user = param("user").or_else(|| Some(url.username().to_string()).filter(|u| !u.is_empty()));
    let endpoint = match endpoint {
        Some(e) => e.to_string(),
        None => format!("https://{account}.snowflakecomputing.com"),
    };
    let endpoint = url::Url::parse(&endpoint)
        .ok()
        .filter(|u| !u.cannot_be_a_base())
        .ok_or_else(|| WarehouseError::Uri(format!("{ENV_ENDPOINT} is not an http(s) URL")))?;
    let kind = param("token_type")
        .map(|t| TokenKind::parse(&t))
        .transpose()?
        .unwrap_or(TokenKind::OAuth);
    let key = match (param("private_key_file"), param("private_key")) {
        (Some(file), _) => Some(std::fs::read(&file).map_err(|e| {
            WarehouseError::Credentials(format!("Snowflake private key file {file}: {e}"))
        })?),
        // Query decoding turns a '+' left unescaped into a space; base64 has no spaces.
        (None, Some(b64)) => Some(decode_base64(&b64.replace(' ', "+")).ok_or_else(|| {
            WarehouseError::Credentials("private_key is not base64 (PKCS#8 DER)".into())
        })?),
        (None, None) => None,
    };
    let auth = if let Some(key) = key {
        let user = user.ok_or_else(|| {
            WarehouseError::Credentials(
                "key-pair authentication needs the user (user@account or user=)".into(),
            )
        })?;
        SnowflakeAuth::KeyPair(KeyPairJwt::new(&account, &user, &key)?)
    } else if let Some(file) = param("token_file") {
        SnowflakeAuth::Token {
            source: TokenSource::File(PathBuf::from(file)),
            kind,
        }
    } else if let Some(token) = param("token") {
        SnowflakeAuth::Token {
            source: TokenSource::Inline(token),
            kind,
        }
    } else if overridden {
        SnowflakeAuth::Anonymous
    } else {
        return Err(WarehouseError::Credentials(
            "no Snowflake credential: add private_key_file, private_key, token_file or token to the URI".into(),
        ));
    };
    let target = SnowflakeTarget {
        account,
        database: database.to_string(),
        schema: schema.to_string(),
        warehouse: param("warehouse"),
        role: param("role"),
        endpoint,
    };
    Ok((target, auth))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let s = s.trim();
    STANDARD
        .decode(s)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
}

impl SnowflakeStore {
    /// Opens the store of `uri`, at `endpoint` (`BGP_SNOWFLAKE_ENDPOINT`) when set.
    pub fn open(uri: &str, endpoint: Option<&str>) -> Result<Self, WarehouseError> {
        let (target, auth) = parse_uri(uri, endpoint)?;
        Self::new(target, auth)
    }

    pub fn new(target: SnowflakeTarget, auth: SnowflakeAuth) -> Result<Self, WarehouseError> {
        Ok(SnowflakeStore {
            target,
            auth,
            http: warehouse::http_client()?,
            storage_integration: None,
            tables: Mutex::new(HashMap::new()),
        })
    }

    /// Bulk objects load with COPY INTO through `name` (blank: none).
    pub fn with_storage_integration(mut self, name: Option<String>) -> Self {
        self.storage_integration = name.filter(|n| !n.trim().is_empty());
        self
    }

    fn request(
        &self,
        method: Method,
        url: url::Url,
    ) -> Result<reqwest::RequestBuilder, WriterError> {
        let mut req = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json");
        if let Some((token, kind)) = self.auth.bearer()? {
            req = req
                .bearer_auth(token)
                .header("X-Snowflake-Authorization-Token-Type", kind.header_value());
        }
        Ok(req)
    }

    fn statements_url(&self, tail: &[&str]) -> url::Url {
        let mut url = self.target.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["api", "v2", "statements"])
                .extend(tail);
        }
        url
    }

    /// Runs one statement to its end. A request whose answer is lost (no
    /// answer, 502/503/504) is resubmitted with the same `requestId` and
    /// `retry=true`, which Snowflake does not execute twice.
    async fn execute(
        &self,
        statement: &str,
        bindings: Option<Value>,
    ) -> Result<Answer, WriterError> {
        self.execute_for(statement, bindings, STATEMENT_TIMEOUT_SECS)
            .await
    }

    /// [`Self::execute`] with its own timeout (seconds).
    async fn execute_for(
        &self,
        statement: &str,
        bindings: Option<Value>,
        timeout: u64,
    ) -> Result<Answer, WriterError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut body = json!({
            "statement": statement,
            "timeout": timeout,
            "database": self.target.database,
            "schema": self.target.schema,
        });
        if let Some(w) = &self.target.warehouse {
            body["warehouse"] = json!(w);
        }
        if let Some(r) = &self.target.role {
            body["role"] = json!(r);
        }
        if let Some(b) = bindings {
            body["bindings"] = b;
        }
        let mut attempt = 0;
        loop {
            let mut url = self.statements_url(&[]);
            url.query_pairs_mut().append_pair("requestId", &request_id);
            if attempt > 0 {
                url.query_pairs_mut().append_pair("retry", "true");
            }
            let sent = self
                .send(self.request(Method::POST, url)?.json(&body))
                .await;
            let lost = match &sent {
                Err(_) => true,
                Ok((s, _)) => matches!(s.as_u16(), 502..=504),
            };
            if lost && attempt < RESUBMITS {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            let (status, answer) = sent?;
            return self.settle(status, answer, timeout).await;
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(StatusCode, Value), WriterError> {
        super::warehouse::send_json("Snowflake", req).await
    }

    /// Follows a statement still running (202) until it ends.
    async fn settle(
        &self,
        mut status: StatusCode,
        mut body: Value,
        timeout: u64,
    ) -> Result<Answer, WriterError> {
        let deadline = Instant::now() + Duration::from_secs(timeout + 30);
        let mut wait = Duration::from_millis(100);
        loop {
            match status {
                StatusCode::OK => return Ok(Answer::Done(body)),
                StatusCode::UNPROCESSABLE_ENTITY => {
                    return Ok(Answer::Failed {
                        sql_state: text_field(&body, "sqlState"),
                        text: status_text(status, &body),
                    });
                }
                StatusCode::ACCEPTED => {}
                s => {
                    return Err(WriterError::Retriable(format!(
                        "Snowflake statement: {}",
                        status_text(s, &body)
                    )));
                }
            }
            let handle = text_field(&body, "statementHandle");
            if handle.is_empty() || Instant::now() > deadline {
                return Err(WriterError::Retriable(format!(
                    "Snowflake statement {handle:?} did not finish in time"
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            let url = self.statements_url(&[&handle]);
            (status, body) = self.send(self.request(Method::GET, url)?).await?;
        }
    }

    /// Runs DDL or a catalog query; any failure is worth retrying (privileges
    /// being granted, a warehouse resuming), never a reason to drop rows.
    async fn must(&self, statement: &str, bindings: Option<Value>) -> Result<Value, WriterError> {
        match self.execute(statement, bindings).await? {
            Answer::Done(v) => Ok(v),
            Answer::Failed { text, .. } => Err(WriterError::Retriable(format!(
                "Snowflake refused {:?}: {text}",
                statement.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// Creates the table if needed and adds missing columns.
    async fn ensure_table(&self, table: &str, columns: &[Column]) -> Result<(), WriterError> {
        let cached = self.tables.lock().await.get(table).cloned();
        let mut have = match cached {
            Some(have) => have,
            None => {
                let defs: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{} {}", ident(&c.name), c.sql_type))
                    .collect();
                self.must(
                    &format!(
                        "CREATE TABLE IF NOT EXISTS {} ({})",
                        ident(table),
                        defs.join(", ")
                    ),
                    None,
                )
                .await?;
                self.columns_of(table).await?
            }
        };
        for c in columns {
            let upper = c.name.to_ascii_uppercase();
            if !have.contains(&upper) {
                self.must(
                    &format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                        ident(table),
                        ident(&c.name),
                        c.sql_type
                    ),
                    None,
                )
                .await?;
                info!(table, column = %c.name, "added column to Snowflake table");
                have.insert(upper);
            }
        }
        self.tables.lock().await.insert(table.to_string(), have);
        Ok(())
    }

    async fn columns_of(&self, table: &str) -> Result<HashSet<String>, WriterError> {
        let result = self
            .must(
                "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = CURRENT_SCHEMA() AND TABLE_NAME = ?",
                Some(json!({ "1": { "type": "TEXT", "value": table.to_ascii_uppercase() } })),
            )
            .await?;
        Ok(result
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|row| row.get(0).and_then(Value::as_str))
            .map(str::to_ascii_uppercase)
            .collect())
    }

    async fn load_table(
        &self,
        table: &str,
        rows: &[TableRows],
        members: &[usize],
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), WriterError> {
        let now = json_rows::now_text();
        let encoded: Vec<Encoded> =
            warehouse::encode_members(members, rejected, |i| encode(&rows[i], i, &now))
                .into_iter()
                .map(|(_, e)| e)
                .collect();
        // Entries keyed on different columns cannot share a MERGE.
        let mut key_columns: Vec<&'static str> = Vec::new();
        for e in &encoded {
            if !key_columns.contains(&e.key_column) {
                key_columns.push(e.key_column);
            }
        }
        for key_column in key_columns {
            let group: Vec<&Encoded> = encoded
                .iter()
                .filter(|e| e.key_column == key_column)
                .collect();
            let mut columns: Vec<Column> = Vec::new();
            for e in &group {
                for c in &e.columns {
                    if !columns.iter().any(|k| k.name.eq_ignore_ascii_case(&c.name)) {
                        columns.push(c.clone());
                    }
                }
            }
            self.ensure_table(table, &columns).await?;
            self.merge_all(table, key_column, &columns, &group, rejected)
                .await?;
        }
        Ok(())
    }

    /// MERGEs the group in chunks; a chunk refused for its data is split per
    /// entry, and an entry refused alone is rejected.
    async fn merge_all(
        &self,
        table: &str,
        key_column: &str,
        columns: &[Column],
        group: &[&Encoded],
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), WriterError> {
        let statement = merge_statement(table, key_column, columns);
        let flat: Vec<(usize, &String, &JsonRow)> = group
            .iter()
            .flat_map(|e| e.rows.iter().map(|(k, r)| (e.entry, k, r)))
            .collect();
        let sizes: Vec<(usize, usize)> = flat
            .iter()
            .map(|(e, k, r)| (*e, k.len() + Value::Object((*r).clone()).to_string().len()))
            .collect();
        let mut work: VecDeque<Vec<(usize, &String, &JsonRow)>> =
            warehouse::chunks(&sizes, MAX_ROWS, MAX_BYTES)
                .into_iter()
                .map(|r| flat[r].to_vec())
                .collect();
        let mut refused: HashSet<usize> = HashSet::new();
        while let Some(mut chunk) = work.pop_front() {
            chunk.retain(|(e, _, _)| !refused.contains(e));
            // Duplicate keys in one MERGE source would all be inserted: keep the first.
            let mut seen = HashSet::new();
            let unique: Vec<Value> = chunk
                .iter()
                .filter(|(_, k, _)| seen.insert(k.as_str()))
                .map(|(_, _, r)| Value::Object((*r).clone()))
                .collect();
            if unique.is_empty() {
                continue;
            }
            let bindings =
                json!({ "1": { "type": "TEXT", "value": Value::Array(unique).to_string() } });
            match self.execute(&statement, Some(bindings)).await? {
                Answer::Done(_) => {}
                Answer::Failed { sql_state, text } if is_data_error(&sql_state) => {
                    let mut entries: Vec<usize> = chunk.iter().map(|(e, _, _)| *e).collect();
                    entries.dedup();
                    if let [only] = entries.as_slice() {
                        refused.insert(*only);
                        rejected.push(Rejected {
                            record: *only,
                            reason: format!("Snowflake refused rows for table {table}: {text}"),
                        });
                    } else {
                        for e in entries.into_iter().rev() {
                            work.push_front(
                                chunk.iter().copied().filter(|(x, _, _)| *x == e).collect(),
                            );
                        }
                    }
                }
                Answer::Failed { sql_state, text } => {
                    // A missing table or column (dropped behind our back): look again next time.
                    if sql_state.starts_with("42") {
                        self.tables.lock().await.remove(table);
                    }
                    return Err(WriterError::Retriable(format!(
                        "Snowflake MERGE into {table}: {text}"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl OfflineStore for SnowflakeStore {
    async fn load(&self, rows: &[TableRows]) -> Result<Vec<Rejected>, WriterError> {
        let mut rejected = Vec::new();
        for (table, members) in warehouse::by_table(rows) {
            self.load_table(&table, rows, &members, &mut rejected)
                .await?;
        }
        Ok(rejected)
    }

    /// With a storage integration, objects in S3 or Cloud Storage load with
    /// COPY INTO where they lie; otherwise their rows are merged.
    async fn load_object(&self, object: &ObjectLoad) -> Result<Option<String>, WriterError> {
        match (
            &self.storage_integration,
            copy_into::stage_url(&object.uri),
            &object.schema,
        ) {
            (Some(integration), Some(url), Some(schema)) if !object.transformed => {
                self.copy_into(object, &url, integration, schema).await
            }
            _ => super::load_collected(self, object).await,
        }
    }
}

fn text_field(body: &Value, name: &str) -> String {
    body.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `HTTP 422 100038 (22018): Numeric value 'abc' is not recognized`
fn status_text(status: StatusCode, body: &Value) -> String {
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| body.as_str())
        .unwrap_or("");
    format!(
        "HTTP {} {} ({}): {message}",
        status.as_u16(),
        text_field(body, "code"),
        text_field(body, "sqlState")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_carry_account_database_schema_and_credential() -> Result<(), WarehouseError> {
        let (t, auth) = parse_uri(
            "snowflake://loader@xy12345.eu-west-1/ANALYTICS/FEATURES?warehouse=LOAD_WH&role=LOADER&token=abc&token_type=pat",
            None,
        )?;
        assert_eq!(t.account, "xy12345.eu-west-1");
        assert_eq!(
            (t.database.as_str(), t.schema.as_str()),
            ("ANALYTICS", "FEATURES")
        );
        assert_eq!(t.warehouse.as_deref(), Some("LOAD_WH"));
        assert_eq!(t.role.as_deref(), Some("LOADER"));
        assert_eq!(
            t.endpoint.as_str(),
            "https://xy12345.eu-west-1.snowflakecomputing.com/"
        );
        assert!(matches!(
            auth,
            SnowflakeAuth::Token {
                kind: TokenKind::ProgrammaticAccessToken,
                ..
            }
        ));
        // No credential is an error, except against the endpoint override.
        assert!(parse_uri("snowflake://acct/DB/SCH", None).is_err());
        let (t, auth) = parse_uri("snowflake://acct/DB/SCH", Some("http://127.0.0.1:9"))?;
        assert!(matches!(auth, SnowflakeAuth::Anonymous));
        assert_eq!(t.endpoint.as_str(), "http://127.0.0.1:9/");
        for bad in [
            "snowflake://acct/DB",
            "snowflake:///DB/SCH?token=x",
            "sf://a/b/c?token=x",
        ] {
            assert!(parse_uri(bad, None).is_err(), "{bad}");
        }
        // A key pair needs the user.
        assert!(parse_uri("snowflake://acct/DB/SCH?private_key=AAAA", None).is_err());
        Ok(())
    }

    #[test]
    fn errors_never_echo_the_uri() {
        let err = parse_uri("snowflake://acct/DB?token=s3cret", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.is_empty() && !err.contains("s3cret"), "{err}");
    }
}
