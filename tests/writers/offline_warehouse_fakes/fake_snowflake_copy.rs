//! FakeSnowflake's `COPY INTO <table> FROM '<url>' STORAGE_INTEGRATION =
//! <name> FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME =
//! CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT`, with Snowflake's documented
//! semantics: an integration other than the one set up fails to compile
//! ("does not exist or not authorized"); a file this table loaded before, or
//! no file at the URL, is "Copy executed with 0 files processed."; otherwise
//! one result row per file (`file, status, rows_parsed, rows_loaded, ...`),
//! columns matched by name (absent ones NULL), values cast to the column
//! types, and a value that does not cast aborts the statement (22018).
//!
//! The fake cannot read buckets: a test registers the rows a URL holds
//! ([`FakeSnowflake::put_object`]). It keeps load metadata forever
//! (Snowflake: 64 days) and reads no parquet.

use super::fake_snowflake::{SqlError, State_, cast, compile_error, missing_table, unquote};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub type Rows = Vec<BTreeMap<String, Value>>;

/// Runs the statement after `COPY INTO `.
pub fn copy_into(s: &mut State_, rest: &str) -> Result<(Vec<Vec<Value>>, Option<u64>), SqlError> {
    let syntax = || compile_error("syntax error in COPY INTO".into());
    let (table, rest) = rest.split_once(" FROM '").ok_or_else(syntax)?;
    let (url, rest) = rest
        .split_once("' STORAGE_INTEGRATION = ")
        .ok_or_else(syntax)?;
    let (integration, options) = rest.split_once(' ').ok_or_else(syntax)?;
    if options
        != "FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT"
    {
        return Err(compile_error(format!("unmodelled COPY options: {options}")));
    }
    let (table, integration) = (unquote(table)?, unquote(integration)?);
    if s.integration.as_deref() != Some(integration.as_str()) {
        return Err(compile_error(format!(
            "Integration '{integration}' does not exist or not authorized."
        )));
    }
    let columns = s
        .tables
        .get(&table)
        .ok_or_else(|| missing_table(&table))?
        .columns
        .clone();
    let url = url.replace("''", "'");
    let none = || {
        Ok((
            vec![vec![json!("Copy executed with 0 files processed.")]],
            None,
        ))
    };
    let Some(object) = s.objects.get(&url).cloned() else {
        return none();
    };
    if s.loaded_files.get(&table).is_some_and(|f| f.contains(&url)) {
        return none();
    }
    let mut rows = Vec::new();
    for row in &object {
        let by_name: BTreeMap<String, &Value> = row
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect();
        let mut out = BTreeMap::new();
        for (name, ty) in &columns {
            let value = by_name.get(name).map_or(Ok(Value::Null), |v| cast(v, ty))?;
            out.insert(name.clone(), value);
        }
        rows.push(out);
    }
    let n = rows.len() as u64;
    if let Some(t) = s.tables.get_mut(&table) {
        t.rows.extend(rows);
    }
    s.loaded_files.entry(table).or_default().insert(url.clone());
    Ok((
        vec![vec![
            json!(url),
            json!("LOADED"),
            json!(n.to_string()),
            json!(n.to_string()),
            json!("1"),
            json!("0"),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ]],
        Some(n),
    ))
}
