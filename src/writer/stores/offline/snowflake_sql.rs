//! Snowflake's side of the rows: the column type of each Arrow type, quoted
//! identifiers, the MERGE statement, and entries encoded as keyed JSON rows
//! (see docs/offline-store.md).

use super::TableRows;
use super::json_rows::{self, JsonRow, ROW_KEY_COLUMN};
use arrow_schema::DataType;
use serde_json::Value;

/// One entry ready to merge.
pub struct Encoded {
    pub entry: usize,
    pub key_column: &'static str,
    pub columns: Vec<Column>,
    /// (row key, row)
    pub rows: Vec<(String, JsonRow)>,
}

/// A table column and how the MERGE source reads it from a JSON row.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub sql_type: String,
    /// Expression over the FLATTEN row `f`.
    pub source: String,
}

impl Column {
    pub fn new(name: &str, sql_type: &str, json_text: bool) -> Self {
        let path = format!("f.value:\"{}\"", name.replace('"', ""));
        let source = match sql_type {
            "VARIANT" if json_text => format!("PARSE_JSON({path}::VARCHAR)"),
            "VARIANT" => path,
            "BINARY" => format!("TO_BINARY({path}::VARCHAR, 'BASE64')"),
            t => format!("{path}::{t}"),
        };
        Column {
            name: name.to_string(),
            sql_type: sql_type.to_string(),
            source,
        }
    }
}

/// Data exceptions (22) and constraint violations (23): the rows are at fault.
pub fn is_data_error(sql_state: &str) -> bool {
    sql_state.starts_with("22") || sql_state.starts_with("23")
}

/// The Snowflake column type of an Arrow type (see docs/offline-store.md).
pub fn snowflake_type(dt: &DataType) -> Option<String> {
    use DataType as D;
    Some(
        match dt {
            D::Boolean => "BOOLEAN",
            D::Int8 | D::Int16 | D::Int32 | D::Int64 => "NUMBER(38,0)",
            D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => "NUMBER(38,0)",
            D::Float16 | D::Float32 | D::Float64 => "FLOAT",
            D::Utf8 | D::LargeUtf8 | D::Utf8View => "VARCHAR",
            D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "BINARY",
            D::Date32 | D::Date64 => "DATE",
            D::Timestamp(_, _) => "TIMESTAMP_TZ",
            D::Time32(_) | D::Time64(_) => "TIME",
            D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
                if (1..=38).contains(p) && *s >= 0 && i16::from(*s) <= i16::from(*p) {
                    return Some(format!("NUMBER({p},{s})"));
                }
                "VARCHAR"
            }
            D::List(_) | D::LargeList(_) | D::FixedSizeList(_, _) => "ARRAY",
            D::Struct(_) | D::Map(_, _) => "VARIANT",
            D::Dictionary(_, values) => return snowflake_type(values),
            _ => return None,
        }
        .to_string(),
    )
}

/// A quoted identifier meaning what the unquoted name means (upper case).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.to_ascii_uppercase().replace('"', "\"\""))
}

/// `MERGE INTO t USING (rows of the bound JSON array) ON key WHEN NOT MATCHED THEN INSERT`.
pub fn merge_statement(table: &str, key_column: &str, columns: &[Column]) -> String {
    let select: Vec<String> = columns
        .iter()
        .map(|c| format!("{} AS {}", c.source, ident(&c.name)))
        .collect();
    let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
    let values: Vec<String> = names.iter().map(|n| format!("s.{n}")).collect();
    let key = ident(key_column);
    format!(
        "MERGE INTO {} AS t USING (SELECT {} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) AS f) AS s \
         ON t.{key} = s.{key} WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
        ident(table),
        select.join(", "),
        names.join(", "),
        values.join(", ")
    )
}

/// An entry's rows with their keys; tables without a key column of their
/// own get the row key in `bgpersist_row_key`, and `inserted_at` is `now`
/// unless the rows carry their own.
pub fn encode(entry: &TableRows, index: usize, now: &str) -> Result<Encoded, String> {
    let schema = entry.batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len() + 2);
    for f in schema.fields() {
        // An all-null column says nothing about its type: left out, like its nulls.
        if f.data_type() == &DataType::Null {
            continue;
        }
        let json_text = json_rows::is_json_text(f);
        let ty = match json_text {
            true => Some("VARIANT".to_string()),
            false => snowflake_type(f.data_type()),
        }
        .ok_or_else(|| {
            format!(
                "column {:?}: Arrow type {} has no Snowflake type",
                f.name(),
                f.data_type()
            )
        })?;
        columns.push(Column::new(f.name(), &ty, json_text));
    }
    let mut json = json_rows::json_rows(&entry.batch)?;
    let keys = json_rows::row_keys(entry, &json)?;
    let key_column = match json_rows::key_column(&schema) {
        Some(k) => k,
        None => {
            columns.push(Column::new(ROW_KEY_COLUMN, "VARCHAR", false));
            for (row, key) in json.iter_mut().zip(&keys) {
                row.insert(ROW_KEY_COLUMN.to_string(), Value::String(key.clone()));
            }
            ROW_KEY_COLUMN
        }
    };
    if schema.column_with_name(json_rows::INSERTED_AT).is_none() {
        columns.push(Column::new(json_rows::INSERTED_AT, "TIMESTAMP_TZ", false));
        for row in json.iter_mut() {
            row.insert(
                json_rows::INSERTED_AT.to_string(),
                Value::String(now.to_string()),
            );
        }
    }
    Ok(Encoded {
        entry: index,
        key_column,
        columns,
        rows: keys.into_iter().zip(json).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_inserts_only_new_keys() {
        let columns = vec![
            Column::new("observation_id", "VARCHAR", false),
            Column::new("value", "NUMBER(38,0)", false),
            Column::new("tags", "VARIANT", false),
            Column::new("doc", "VARIANT", true),
        ];
        assert_eq!(
            merge_statement("user_age", "observation_id", &columns),
            "MERGE INTO \"USER_AGE\" AS t USING (SELECT f.value:\"observation_id\"::VARCHAR AS \"OBSERVATION_ID\", \
             f.value:\"value\"::NUMBER(38,0) AS \"VALUE\", f.value:\"tags\" AS \"TAGS\", \
             PARSE_JSON(f.value:\"doc\"::VARCHAR) AS \"DOC\" \
             FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) AS f) AS s ON t.\"OBSERVATION_ID\" = s.\"OBSERVATION_ID\" \
             WHEN NOT MATCHED THEN INSERT (\"OBSERVATION_ID\", \"VALUE\", \"TAGS\", \"DOC\") \
             VALUES (s.\"OBSERVATION_ID\", s.\"VALUE\", s.\"TAGS\", s.\"DOC\")"
        );
    }

    #[test]
    fn arrow_types_map_to_snowflake_types() {
        use arrow_schema::TimeUnit;
        for (dt, want) in [
            (DataType::Utf8, Some("VARCHAR")),
            (DataType::Int64, Some("NUMBER(38,0)")),
            (DataType::Float32, Some("FLOAT")),
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                Some("TIMESTAMP_TZ"),
            ),
            (DataType::Decimal128(12, 2), Some("NUMBER(12,2)")),
            (DataType::Decimal256(60, 2), Some("VARCHAR")),
            (DataType::Binary, Some("BINARY")),
            (
                DataType::List(std::sync::Arc::new(arrow_schema::Field::new(
                    "item",
                    DataType::Utf8,
                    true,
                ))),
                Some("ARRAY"),
            ),
            (DataType::Null, None),
            (DataType::Duration(TimeUnit::Second), None),
        ] {
            assert_eq!(snowflake_type(&dt).as_deref(), want, "{dt}");
        }
    }
}
