//! Bulk objects in Cloud Storage load where they lie: one BigQuery load job
//! (`jobs.insert`, `configuration.load` from the `gs://` URI, PARQUET,
//! WRITE_APPEND, new NULLABLE columns allowed), polled with `jobs.get` until
//! DONE. The writer reads none of the rows.
//!
//! The job id is derived from the dataset, table and idempotency key, and
//! BigQuery keeps job ids unique per project: a replayed message meets its
//! earlier job (409 duplicate) and waits for that one instead of loading the
//! object twice.

use super::{BigQueryStore, error_text, retriable};
use crate::writer::runtime::sink::WriterError;
use crate::writer::stores::offline::object::ObjectLoad;
use crate::writer::stores::offline::warehouse;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How often a running job is asked about.
const POLL: Duration = Duration::from_secs(1);
/// A job still running after this is left to BigQuery; the message is
/// retried, which waits for the same job.
const WAIT: Duration = Duration::from_secs(3600);

impl BigQueryStore {
    /// The job's id for `object` (letters, digits, `_`; under 1024 chars).
    pub fn job_id(&self, object: &ObjectLoad) -> String {
        let digest = Sha256::digest(
            format!(
                "{}\n{}\n{}\n{}",
                self.target.project, self.target.dataset, object.table, object.idempotency_key
            )
            .as_bytes(),
        );
        let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
        format!("bgpersist_load_{hex}")
    }

    /// `<endpoint>/bigquery/v2/projects/<p>/jobs[/<id>]`
    fn jobs_url(&self, id: Option<&str>) -> url::Url {
        self.target
            .project_url(["jobs"].iter().chain(id.as_slice()))
    }

    /// Loads `object` (a `gs://` URI) with one load job; `Ok(Some(reason))`
    /// when BigQuery refuses it for good.
    pub(super) async fn load_job(
        &self,
        object: &ObjectLoad,
    ) -> Result<Option<String>, WriterError> {
        let id = self.job_id(object);
        let job = json!({
            "jobReference": { "projectId": self.target.project, "jobId": id },
            "configuration": { "load": {
                "sourceUris": [object.uri],
                "sourceFormat": "PARQUET",
                "destinationTable": {
                    "projectId": self.target.project,
                    "datasetId": self.target.dataset,
                    "tableId": object.table,
                },
                "createDisposition": "CREATE_IF_NEEDED",
                "writeDisposition": "WRITE_APPEND",
                "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
            }},
        });
        let (status, body) = self
            .call(Method::POST, self.jobs_url(None), Some(&job))
            .await?;
        let mut current = match status {
            s if s.is_success() => body,
            // Inserted before (a replay, or our own retry): wait for that job.
            StatusCode::CONFLICT => Value::Null,
            s if warehouse::worth_retrying(s) => {
                return Err(retriable("inserting a load job", s, &body));
            }
            s => {
                return Ok(Some(format!(
                    "BigQuery refused the load job for {}: {}",
                    object.uri,
                    error_text(s, &body)
                )));
            }
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if current.pointer("/status/state").and_then(Value::as_str) == Some("DONE") {
                return done(object, &id, &current);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriterError::Retriable(format!(
                    "BigQuery load job {id} for {} still running after {} s",
                    object.uri,
                    WAIT.as_secs()
                )));
            }
            if !current.is_null() {
                tokio::time::sleep(POLL).await;
            }
            let (status, body) = self
                .call(Method::GET, self.jobs_url(Some(&id)), None)
                .await?;
            if !status.is_success() {
                return Err(retriable(&format!("reading load job {id}"), status, &body));
            }
            current = body;
        }
    }
}

/// The outcome of a DONE job. A failed job is refused whatever the reason:
/// its id is spent, so a retry would only meet the same failure; the
/// dead-lettered message can be replayed once the cause is fixed.
fn done(object: &ObjectLoad, id: &str, job: &Value) -> Result<Option<String>, WriterError> {
    let Some(error) = job.pointer("/status/errorResult") else {
        return Ok(None);
    };
    let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    Ok(Some(format!(
        "BigQuery load job {id} for {} failed: {reason}: {message}",
        object.uri
    )))
}
