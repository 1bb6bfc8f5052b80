//! FakeBigQuery's load jobs, in the shapes Google documents:
//!
//! - `POST .../projects/{p}/jobs` (jobs.insert) with `configuration.load`:
//!   answers the Job resource with `status.state: RUNNING`; a job id already
//!   used answers 409 `duplicate` ("Already Exists: Job ...");
//! - `GET .../projects/{p}/jobs/{id}` (jobs.get): `DONE`, with
//!   `statistics.load.outputRows`, or `status.errorResult` (`notFound` for a
//!   source URI it does not hold, `invalid` for a configuration it does not
//!   take).
//!
//! The fake cannot read Cloud Storage: a test registers what an object
//! holds ([`FakeBigQuery::put_object`]), and a job appends those rows,
//! creating the table or adding NULLABLE fields as `CREATE_IF_NEEDED` and
//! `ALLOW_FIELD_ADDITION` allow. It does not read parquet, check types or
//! model job locations and quotas.

use super::fake_bigquery::{State_, Table, google_error, reply};
use serde_json::{Value, json};

/// A registered object: its schema fields and rows.
#[derive(Clone, Default)]
pub struct Object {
    pub fields: Vec<Value>,
    pub rows: Vec<Value>,
}

pub fn insert_job(s: &mut State_, project: &str, body: &Value) -> axum::response::Response {
    let id = body
        .pointer("/jobReference/jobId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if id.is_empty() {
        return google_error(400, "INVALID_ARGUMENT", "invalid", "Job ID is required");
    }
    if s.jobs.contains_key(&id) {
        return google_error(
            409,
            "ALREADY_EXISTS",
            "duplicate",
            &format!("Already Exists: Job {project}:US.{id}"),
        );
    }
    let outcome = run_load(
        s,
        body.pointer("/configuration/load").unwrap_or(&Value::Null),
    );
    let mut job = json!({
        "kind": "bigquery#job",
        "id": format!("{project}:US.{id}"),
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "configuration": body["configuration"].clone(),
        "status": {"state": "RUNNING"},
    });
    let answer = job.clone();
    match outcome {
        Ok(rows) => {
            job["statistics"] = json!({"load": {"outputRows": rows.to_string()}});
        }
        Err((reason, message)) => {
            let error = json!({"reason": reason, "message": message});
            job["status"]["errorResult"] = error.clone();
            job["status"]["errors"] = json!([error]);
        }
    }
    job["status"]["state"] = json!("DONE");
    s.jobs.insert(id, job);
    reply(200, answer)
}

pub fn get_job(s: &State_, project: &str, id: &str) -> axum::response::Response {
    match s.jobs.get(id) {
        Some(job) => reply(200, job.clone()),
        None => google_error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("Not found: Job {project}:{id}"),
        ),
    }
}

/// Appends the object's rows to the destination; the rows loaded, or the
/// job's `(reason, message)`.
fn run_load(s: &mut State_, load: &Value) -> Result<usize, (String, String)> {
    let invalid = |m: &str| ("invalid".to_string(), m.to_string());
    if load["sourceFormat"] != "PARQUET" {
        return Err(invalid("only PARQUET loads are modelled"));
    }
    let uris: Vec<&str> = load["sourceUris"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(invalid("exactly one source URI is modelled"));
    };
    let Some(object) = s.objects.get(*uri).cloned() else {
        return Err(("notFound".into(), format!("Not found: URI {uri}")));
    };
    let dataset = load
        .pointer("/destinationTable/datasetId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let table = load
        .pointer("/destinationTable/tableId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !s.datasets.contains(&dataset) {
        return Err(("notFound".into(), format!("Not found: Dataset {dataset}")));
    }
    let key = (dataset, table);
    let exists = s.tables.contains_key(&key);
    if !exists && load["createDisposition"] != "CREATE_IF_NEEDED" {
        return Err(("notFound".into(), format!("Not found: Table {}", key.1)));
    }
    let t: &mut Table = s.tables.entry(key).or_default();
    let names = |fields: &[Value]| -> Vec<String> {
        fields
            .iter()
            .filter_map(|f| f["name"].as_str().map(str::to_ascii_lowercase))
            .collect()
    };
    let known = names(&t.fields);
    let new: Vec<Value> = object
        .fields
        .iter()
        .filter(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| !known.contains(&n.to_ascii_lowercase()))
        })
        .cloned()
        .collect();
    let may_add = load["schemaUpdateOptions"]
        .as_array()
        .is_some_and(|o| o.iter().any(|v| v == "ALLOW_FIELD_ADDITION"));
    if exists && !new.is_empty() && !may_add {
        return Err(invalid("Provided Schema does not match Table"));
    }
    t.fields.extend(new);
    t.rows.extend(object.rows.iter().cloned());
    Ok(object.rows.len())
}
