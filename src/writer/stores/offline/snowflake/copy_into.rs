//! Bulk objects load where they lie: one `COPY INTO <table> FROM '<url>'`
//! through the storage integration the resource names
//! (`snowflake_storage_integration_name`), parquet columns matched to the
//! table's by name. The writer reads none of the rows; the table is created
//! or widened from the object's footer first, like a batch's columns.
//!
//! Snowflake keeps load metadata per table for 64 days: a replayed message
//! copies the same file again and Snowflake skips it ("0 files processed").

use super::{Answer, SnowflakeStore};
use crate::writer::runtime::sink::WriterError;
use crate::writer::stores::offline::object::ObjectLoad;
use crate::writer::stores::offline::snowflake_sql::{Column, ident, is_data_error, snowflake_type};
use arrow_schema::Schema;

/// One COPY may read gigabytes: it gets an hour, not a batch's 120 s.
const COPY_TIMEOUT_SECS: u64 = 3600;

/// The stage URL of an object: `s3://` as is, `gs://` as `gcs://`.
pub fn stage_url(uri: &str) -> Option<String> {
    if let Some(rest) = uri.strip_prefix("gs://") {
        return Some(format!("gcs://{rest}"));
    }
    uri.starts_with("s3://").then(|| uri.to_string())
}

/// The COPY statement; `'` in the URL is doubled (a string literal).
pub fn copy_statement(table: &str, url: &str, integration: &str) -> String {
    format!(
        "COPY INTO {} FROM '{}' STORAGE_INTEGRATION = {} FILE_FORMAT = (TYPE = PARQUET) \
         MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT",
        ident(table),
        url.replace('\'', "''"),
        ident(integration)
    )
}

/// The table columns of a parquet schema, or why one cannot be stored.
fn columns(schema: &Schema) -> Result<Vec<Column>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            snowflake_type(f.data_type())
                .map(|t| Column::new(f.name(), &t, false))
                .ok_or_else(|| {
                    format!(
                        "column {:?} has type {}, which Snowflake cannot hold",
                        f.name(),
                        f.data_type()
                    )
                })
        })
        .collect()
}

impl SnowflakeStore {
    /// `Ok(Some(reason))` when Snowflake refuses the object's data.
    pub(super) async fn copy_into(
        &self,
        object: &ObjectLoad,
        url: &str,
        integration: &str,
        schema: &Schema,
    ) -> Result<Option<String>, WriterError> {
        let columns = match columns(schema) {
            Ok(c) => c,
            Err(reason) => return Ok(Some(format!("{}: {reason}", object.uri))),
        };
        self.ensure_table(&object.table, &columns).await?;
        let statement = copy_statement(&object.table, url, integration);
        match self
            .execute_for(&statement, None, COPY_TIMEOUT_SECS)
            .await?
        {
            Answer::Done(_) => Ok(None),
            Answer::Failed { sql_state, text } if is_data_error(&sql_state) => Ok(Some(format!(
                "Snowflake refused the rows of {}: {text}",
                object.uri
            ))),
            Answer::Failed { text, .. } => Err(WriterError::Retriable(format!(
                "Snowflake COPY INTO {} from {}: {text}",
                object.table, object.uri
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    #[test]
    fn urls_statements_and_columns() {
        assert_eq!(
            stage_url("gs://b/k.parquet").as_deref(),
            Some("gcs://b/k.parquet")
        );
        assert_eq!(
            stage_url("s3://b/k.parquet").as_deref(),
            Some("s3://b/k.parquet")
        );
        assert_eq!(stage_url("https://b/k"), None);
        assert_eq!(
            copy_statement("events", "s3://b/it's.parquet", "bgp_int"),
            "COPY INTO \"EVENTS\" FROM 's3://b/it''s.parquet' STORAGE_INTEGRATION = \"BGP_INT\" \
             FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE \
             ON_ERROR = ABORT_STATEMENT"
        );
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]);
        let c = columns(&schema).unwrap_or_default();
        assert_eq!(
            c.iter()
                .map(|c| (c.name.as_str(), c.sql_type.as_str()))
                .collect::<Vec<_>>(),
            vec![("id", "VARCHAR"), ("n", "NUMBER(38,0)")]
        );
        let odd = Schema::new(vec![Field::new("d", DataType::Null, true)]);
        assert!(columns(&odd).unwrap_or_default().is_empty());
        assert!(
            columns(&odd)
                .err()
                .unwrap_or_default()
                .contains("cannot hold")
        );
    }
}
