//! The BigQuery offline store, over the documented REST API v2:
//! `tabledata.insertAll` for rows, `tables.get` / `tables.insert` /
//! `tables.patch` for the schema, load jobs for bulk objects in Cloud
//! Storage (`jobs.rs`). See docs/offline-store.md.
//!
//! URI: `bigquery://<project>/<dataset>`. Credentials: Application Default
//! Credentials (Workload Identity on GKE), scope `bigquery`. With
//! `BGP_BIGQUERY_ENDPOINT` set the requests go there, without credentials.
//!
//! Every row carries an `insertId` (its `observation_id` / `operation_id`,
//! else `<idempotency key>/<row>`, else a hash of the row), so BigQuery drops
//! a replayed row on a best-effort basis. Requests use
//! `skipInvalidRows: false`: when a row is invalid nothing is inserted, the
//! entries holding invalid rows are refused and the rest is sent again, so
//! an entry lands whole or not at all.

mod jobs;

use super::bigquery_rows::{BqType, Pending, encode, field, field_names, missing, schema_fields};
use super::json_rows;
use super::object::ObjectLoad;
use super::warehouse::{self, WarehouseError};
use super::{OfflineStore, TableRows};
use crate::writer::runtime::sink::{Rejected, WriterError};
use google_cloud_auth::credentials::{AccessTokenCredentials, Builder as CredentialsBuilder};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// Endpoint override (a fake or an emulator); requests go without credentials.
pub use crate::writer::config::ENV_BIGQUERY_ENDPOINT as ENV_ENDPOINT;
pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// Rows per insertAll request (BigQuery's recommendation; the hard limit is 50,000).
const MAX_ROWS: usize = 500;
/// Body size per insertAll request (the hard limit is 10 MB).
const MAX_BYTES: usize = 5 * 1024 * 1024;
/// A new table is partitioned by day on the first of these it has.
const PARTITION_COLUMNS: [&str; 2] = ["observed_at", "query_timestamp"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQueryTarget {
    pub project: String,
    pub dataset: String,
    pub endpoint: url::Url,
}

impl BigQueryTarget {
    /// `bigquery://<project>/<dataset>`; `endpoint` overrides the API root.
    pub fn parse(uri: &str, endpoint: Option<&str>) -> Result<Self, WarehouseError> {
        let bad = |why: &str| {
            WarehouseError::Uri(format!("{why}; expected bigquery://<project>/<dataset>"))
        };
        let url = url::Url::parse(uri.trim()).map_err(|e| bad(&e.to_string()))?;
        if !url.scheme().eq_ignore_ascii_case("bigquery") {
            return Err(bad(&format!("scheme {:?} is not bigquery", url.scheme())));
        }
        let project = url.host_str().unwrap_or_default().to_string();
        let dataset = url.path().trim_matches('/').to_string();
        if project.is_empty() || dataset.is_empty() || dataset.contains('/') {
            return Err(bad("project or dataset missing"));
        }
        let endpoint = url::Url::parse(endpoint.unwrap_or(DEFAULT_ENDPOINT))
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| WarehouseError::Uri(format!("{ENV_ENDPOINT} is not an http(s) URL")))?;
        Ok(BigQueryTarget {
            project,
            dataset,
            endpoint,
        })
    }

    /// `<endpoint>/bigquery/v2/projects/<p>/datasets/<d>/<tail...>`
    fn url(&self, tail: &[&str]) -> url::Url {
        self.project_url(["datasets", self.dataset.as_str()].iter().chain(tail))
    }

    /// `<endpoint>/bigquery/v2/projects/<p>/<tail...>`
    fn project_url<'a>(&self, tail: impl IntoIterator<Item = &'a &'a str>) -> url::Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["bigquery", "v2", "projects", self.project.as_str()]);
            path.extend(tail);
        }
        url
    }

    fn missing_dataset(&self) -> String {
        format!(
            "BigQuery dataset {}:{} does not exist: create it, or fix the offline store URI (bigquery://<project>/<dataset>)",
            self.project, self.dataset
        )
    }
}

/// Where bearer tokens come from.
#[derive(Clone, Debug)]
pub enum GoogleAuth {
    Credentials(AccessTokenCredentials),
    /// No Authorization header: the endpoint override (a fake, an emulator).
    Anonymous,
}

impl GoogleAuth {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's file, or the metadata server (Workload Identity).
    pub fn application_default() -> Result<Self, WarehouseError> {
        CredentialsBuilder::default()
            .with_scopes([SCOPE])
            .build_access_token_credentials()
            .map(GoogleAuth::Credentials)
            .map_err(|e| WarehouseError::Credentials(e.to_string()))
    }

    async fn bearer(&self) -> Result<Option<String>, WriterError> {
        match self {
            GoogleAuth::Anonymous => Ok(None),
            // The library caches the token and refreshes it before it expires.
            GoogleAuth::Credentials(c) => {
                c.access_token().await.map(|t| Some(t.token)).map_err(|e| {
                    WriterError::Retriable(format!("cannot obtain a Google access token: {e}"))
                })
            }
        }
    }
}

pub struct BigQueryStore {
    target: BigQueryTarget,
    auth: GoogleAuth,
    http: reqwest::Client,
    /// Each table's schema fields as BigQuery last returned them.
    tables: Mutex<HashMap<String, Vec<Value>>>,
}

impl BigQueryStore {
    /// Opens the store of `uri` with ADC, or anonymously at `endpoint`
    /// (`BGP_BIGQUERY_ENDPOINT`) when set.
    pub async fn open(uri: &str, endpoint: Option<&str>) -> Result<Self, WarehouseError> {
        let target = BigQueryTarget::parse(uri, endpoint)?;
        let auth = match endpoint {
            Some(_) => GoogleAuth::Anonymous,
            None => GoogleAuth::application_default()?,
        };
        Self::connect(target, auth).await
    }

    /// Builds the store and checks that the dataset exists: a missing dataset
    /// is a configuration error at startup; an unreachable API is not (the
    /// first load retries).
    pub async fn connect(target: BigQueryTarget, auth: GoogleAuth) -> Result<Self, WarehouseError> {
        let store = BigQueryStore {
            target,
            auth,
            http: warehouse::http_client()?,
            tables: Mutex::new(HashMap::new()),
        };
        match store.call(Method::GET, store.target.url(&[]), None).await {
            Ok((s, _)) if s.is_success() => {}
            Ok((StatusCode::NOT_FOUND, _)) => {
                return Err(WarehouseError::Missing(store.target.missing_dataset()));
            }
            Ok((s, body)) => {
                warn!(error = %error_text(s, &body), "cannot check the BigQuery dataset yet")
            }
            Err(e) => warn!(error = %e, "cannot check the BigQuery dataset yet"),
        }
        Ok(store)
    }

    async fn call(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), WriterError> {
        let mut req = self.http.request(method, url);
        if let Some(token) = self.auth.bearer().await? {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        super::warehouse::send_json("BigQuery", req).await
    }

    async fn load_table(
        &self,
        table: &str,
        rows: &[TableRows],
        members: &[usize],
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), WriterError> {
        let now = json_rows::now_text();
        let encoded = warehouse::encode_members(members, rejected, |i| encode(&rows[i], i, &now));
        if encoded.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<(String, BqType)> = Vec::new();
        for (_, e) in &encoded {
            for (name, ty) in &e.columns {
                if !wanted.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    wanted.push((name.clone(), *ty));
                }
            }
        }
        let refusal = self.ensure_table(table, &wanted).await?.err();
        let known: HashSet<String> = self
            .tables
            .lock()
            .await
            .get(table)
            .map(|fields| field_names(fields))
            .unwrap_or_default();
        let mut pending = Vec::new();
        for (i, e) in encoded {
            let unknown: Vec<&str> = e
                .columns
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !known.contains(&n.to_ascii_lowercase()))
                .collect();
            if unknown.is_empty() {
                pending.extend(e.rows);
            } else {
                let why = refusal
                    .clone()
                    .unwrap_or_else(|| "the table has no such columns".into());
                rejected.push(Rejected {
                    record: i,
                    reason: format!(
                        "BigQuery table {table} cannot take columns {unknown:?}: {why}"
                    ),
                });
            }
        }
        self.insert(table, pending, rejected).await
    }

    /// Makes sure `table` exists with every `wanted` column. `Ok(Err(why))`:
    /// BigQuery refused the table or the new columns for good.
    async fn ensure_table(
        &self,
        table: &str,
        wanted: &[(String, BqType)],
    ) -> Result<Result<(), String>, WriterError> {
        let cached = self.tables.lock().await.get(table).cloned();
        let fields = match cached {
            Some(f) if missing(&f, wanted).is_empty() => return Ok(Ok(())),
            // Columns missing from what we knew: another writer may have added them.
            _ => match self.get_table(table).await? {
                Some(f) => f,
                None => match self.create_table(table, wanted).await? {
                    Ok(f) => f,
                    Err(why) => return Ok(Err(why)),
                },
            },
        };
        let new = missing(&fields, wanted);
        // Remembered even if the new columns are refused: entries without them still load.
        self.tables
            .lock()
            .await
            .insert(table.to_string(), fields.clone());
        if new.is_empty() {
            return Ok(Ok(()));
        }
        match self.add_columns(table, fields, &new).await? {
            Ok(fields) => {
                self.tables.lock().await.insert(table.to_string(), fields);
                Ok(Ok(()))
            }
            Err(why) => Ok(Err(why)),
        }
    }

    /// `tables.get`: the table's fields, or `None` when it does not exist.
    async fn get_table(&self, table: &str) -> Result<Option<Vec<Value>>, WriterError> {
        let (status, body) = self
            .call(Method::GET, self.target.url(&["tables", table]), None)
            .await?;
        match status {
            s if s.is_success() => Ok(Some(schema_fields(&body))),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(retriable(&format!("reading table {table}"), s, &body)),
        }
    }

    /// `tables.insert` with the wanted columns (all NULLABLE).
    async fn create_table(
        &self,
        table: &str,
        wanted: &[(String, BqType)],
    ) -> Result<Result<Vec<Value>, String>, WriterError> {
        let fields: Vec<Value> = wanted.iter().map(|(n, t)| field(n, *t)).collect();
        let mut resource = json!({
            "tableReference": {
                "projectId": self.target.project,
                "datasetId": self.target.dataset,
                "tableId": table,
            },
            "schema": { "fields": fields },
        });
        if let Some((column, _)) = PARTITION_COLUMNS.iter().find_map(|p| {
            wanted
                .iter()
                .find(|(n, t)| n == p && !t.repeated && matches!(t.name, "TIMESTAMP" | "DATE"))
        }) {
            resource["timePartitioning"] = json!({ "type": "DAY", "field": column });
        }
        let (status, body) = self
            .call(Method::POST, self.target.url(&["tables"]), Some(&resource))
            .await?;
        match status {
            s if s.is_success() => {
                info!(table, "created BigQuery table");
                Ok(Ok(schema_fields(&body)))
            }
            // Another writer created it first.
            StatusCode::CONFLICT => match self.get_table(table).await? {
                Some(f) => Ok(Ok(f)),
                None => Err(WriterError::Retriable(format!(
                    "BigQuery table {table} exists and does not: retrying"
                ))),
            },
            StatusCode::NOT_FOUND => Err(WriterError::Retriable(self.target.missing_dataset())),
            s if warehouse::worth_retrying(s) => {
                Err(retriable(&format!("creating table {table}"), s, &body))
            }
            s => Ok(Err(format!(
                "creating the table was refused: {}",
                error_text(s, &body)
            ))),
        }
    }

    /// `tables.patch` with the current fields plus the new ones (NULLABLE,
    /// the only columns BigQuery lets a table gain).
    async fn add_columns(
        &self,
        table: &str,
        mut fields: Vec<Value>,
        new: &[(String, BqType)],
    ) -> Result<Result<Vec<Value>, String>, WriterError> {
        fields.extend(new.iter().map(|(n, t)| field(n, *t)));
        let patch = json!({ "schema": { "fields": fields } });
        let (status, body) = self
            .call(
                Method::PATCH,
                self.target.url(&["tables", table]),
                Some(&patch),
            )
            .await?;
        match status {
            s if s.is_success() => {
                info!(table, columns = ?new, "added columns to BigQuery table");
                Ok(Ok(schema_fields(&body)))
            }
            StatusCode::NOT_FOUND => {
                self.tables.lock().await.remove(table);
                Err(WriterError::Retriable(format!(
                    "BigQuery table {table} vanished while adding columns"
                )))
            }
            s if warehouse::worth_retrying(s) => {
                Err(retriable(&format!("adding columns to {table}"), s, &body))
            }
            s => Ok(Err(format!(
                "adding columns was refused: {}",
                error_text(s, &body)
            ))),
        }
    }

    /// `tabledata.insertAll` in chunks; refuses entries whose rows BigQuery
    /// reports invalid and sends the rest again.
    async fn insert(
        &self,
        table: &str,
        pending: Vec<Pending>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<(), WriterError> {
        let sizes: Vec<(usize, usize)> = pending.iter().map(|p| (p.entry, p.size)).collect();
        let mut work: VecDeque<Vec<&Pending>> = warehouse::chunks(&sizes, MAX_ROWS, MAX_BYTES)
            .into_iter()
            .map(|r| pending[r].iter().collect())
            .collect();
        let mut refused: HashSet<usize> = HashSet::new();
        let url = self.target.url(&["tables", table, "insertAll"]);
        while let Some(mut chunk) = work.pop_front() {
            chunk.retain(|p| !refused.contains(&p.entry));
            if chunk.is_empty() {
                continue;
            }
            let body = json!({
                "kind": "bigquery#tableDataInsertAllRequest",
                "skipInvalidRows": false,
                "ignoreUnknownValues": false,
                "rows": chunk.iter().map(|p| json!({ "insertId": p.insert_id, "json": p.json })).collect::<Vec<_>>(),
            });
            let (status, resp) = self.call(Method::POST, url.clone(), Some(&body)).await?;
            if status.is_success() {
                let bad = self.invalid_entries(table, &chunk, &resp).await?;
                if bad.is_empty() {
                    continue;
                }
                for (entry, reason) in bad {
                    refused.insert(entry);
                    rejected.push(Rejected {
                        record: entry,
                        reason: format!("BigQuery refused a row for table {table}: {reason}"),
                    });
                }
                // The valid rows were stopped with the invalid ones: send them again.
                work.push_front(chunk);
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                self.tables.lock().await.remove(table);
                return Err(retriable(&format!("inserting into {table}"), status, &resp));
            }
            if warehouse::worth_retrying(status) {
                return Err(retriable(&format!("inserting into {table}"), status, &resp));
            }
            // The request as a whole was refused: find the entry at fault.
            let mut entries: Vec<usize> = chunk.iter().map(|p| p.entry).collect();
            entries.dedup();
            if entries.len() > 1 {
                for e in entries.into_iter().rev() {
                    work.push_front(chunk.iter().copied().filter(|p| p.entry == e).collect());
                }
            } else {
                refused.extend(entries.iter().copied());
                rejected.extend(entries.into_iter().map(|e| Rejected {
                    record: e,
                    reason: format!(
                        "BigQuery refused rows for table {table}: {}",
                        error_text(status, &resp)
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Entries with invalid rows in an insertAll answer, with the first reason
    /// for each. Unknown fields mean our view of the schema is stale (or a
    /// new column has not reached the streaming backend yet): retry.
    async fn invalid_entries(
        &self,
        table: &str,
        chunk: &[&Pending],
        resp: &Value,
    ) -> Result<BTreeMap<usize, String>, WriterError> {
        let Some(errors) = resp
            .get("insertErrors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        else {
            return Ok(BTreeMap::new());
        };
        let mut bad = BTreeMap::new();
        for row_errors in errors {
            let Some(p) = row_errors
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| chunk.get(i as usize))
            else {
                continue;
            };
            for e in row_errors
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
                let message = e.get("message").and_then(Value::as_str).unwrap_or("");
                if reason == "stopped" {
                    continue;
                }
                if message.starts_with("no such field") {
                    self.tables.lock().await.remove(table);
                    return Err(WriterError::Retriable(format!(
                        "BigQuery table {table} does not accept a column yet ({message}); retrying once its schema has settled"
                    )));
                }
                bad.entry(p.entry)
                    .or_insert_with(|| format!("row {}: {message} ({reason})", p.row));
            }
        }
        if bad.is_empty() {
            return Err(WriterError::Retriable(format!(
                "BigQuery insertAll into {table} reported errors without an invalid row: {resp}"
            )));
        }
        Ok(bad)
    }
}

impl OfflineStore for BigQueryStore {
    async fn load(&self, rows: &[TableRows]) -> Result<Vec<Rejected>, WriterError> {
        let mut rejected = Vec::new();
        for (table, members) in warehouse::by_table(rows) {
            self.load_table(&table, rows, &members, &mut rejected)
                .await?;
        }
        Ok(rejected)
    }

    /// Objects in Cloud Storage load with a load job; others (S3) through
    /// insertAll, collected first.
    async fn load_object(&self, object: &ObjectLoad) -> Result<Option<String>, WriterError> {
        if object.uri.starts_with("gs://") && !object.transformed {
            self.load_job(object).await
        } else {
            super::load_collected(self, object).await
        }
    }
}

/// `HTTP 403 accessDenied: Access Denied: ...` from a Google error body.
fn error_text(status: StatusCode, body: &Value) -> String {
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .or_else(|| body.as_str())
        .unwrap_or("");
    let reason = body
        .pointer("/error/errors/0/reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("HTTP {} {reason}: {message}", status.as_u16())
}

fn retriable(doing: &str, status: StatusCode, body: &Value) -> WriterError {
    WriterError::Retriable(format!("BigQuery {doing}: {}", error_text(status, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_project_and_dataset() -> Result<(), WarehouseError> {
        let t = BigQueryTarget::parse("bigquery://my-proj/features", None)?;
        assert_eq!(
            (t.project.as_str(), t.dataset.as_str()),
            ("my-proj", "features")
        );
        assert_eq!(
            t.url(&["tables", "user_age", "insertAll"]).as_str(),
            "https://bigquery.googleapis.com/bigquery/v2/projects/my-proj/datasets/features/tables/user_age/insertAll"
        );
        let local = BigQueryTarget::parse("BIGQUERY://p/d/", Some("http://127.0.0.1:9/"))?;
        assert_eq!(
            local.url(&[]).as_str(),
            "http://127.0.0.1:9/bigquery/v2/projects/p/datasets/d"
        );
        for bad in [
            "bigquery://p",
            "bigquery:///d",
            "bq://p/d",
            "bigquery://p/d/e",
            "p/d",
        ] {
            assert!(BigQueryTarget::parse(bad, None).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn google_errors_read_well() {
        let body = json!({"error": {"code": 403, "message": "Access Denied: Table p:d.t",
            "errors": [{"reason": "accessDenied", "message": "Access Denied"}], "status": "PERMISSION_DENIED"}});
        assert_eq!(
            error_text(StatusCode::FORBIDDEN, &body),
            "HTTP 403 accessDenied: Access Denied: Table p:d.t"
        );
    }
}
