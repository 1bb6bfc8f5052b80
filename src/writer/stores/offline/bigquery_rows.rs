//! BigQuery's side of the rows: the column type of each Arrow type, table
//! schemas as JSON fields, and entries encoded as insertAll rows with their
//! insertIds (see docs/offline-store.md).

use super::TableRows;
use super::json_rows::{self, JsonRow};
use arrow_schema::DataType;
use serde_json::{Value, json};
use std::collections::HashSet;

/// insertIds longer than this are replaced by their SHA-256.
const MAX_INSERT_ID: usize = 128;

/// One row on its way: which entry it belongs to and what is sent.
pub struct Pending {
    pub entry: usize,
    /// Position in its entry.
    pub row: usize,
    pub insert_id: String,
    pub json: JsonRow,
    /// Encoded size, for cutting requests.
    pub size: usize,
}

/// A BigQuery column type: `STRING`, or `REPEATED` `STRING` for a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BqType {
    pub name: &'static str,
    pub repeated: bool,
}

impl BqType {
    pub const fn of(name: &'static str) -> Self {
        BqType {
            name,
            repeated: false,
        }
    }
}

/// An entry ready to load: its rows and the BigQuery type of each column.
pub struct Encoded {
    pub rows: Vec<Pending>,
    pub columns: Vec<(String, BqType)>,
}

/// The BigQuery column type of an Arrow type (see docs/offline-store.md):
/// lists of scalars are REPEATED columns, other nested values JSON.
pub fn bigquery_type(dt: &DataType) -> Option<BqType> {
    use DataType as D;
    if let D::List(item) | D::LargeList(item) | D::FixedSizeList(item, _) = dt {
        return Some(match scalar_type(item.data_type()) {
            Some(name) => BqType {
                name,
                repeated: true,
            },
            None => BqType::of("JSON"),
        });
    }
    match dt {
        D::Struct(_) | D::Map(_, _) => Some(BqType::of("JSON")),
        D::Dictionary(_, values) => bigquery_type(values),
        other => scalar_type(other).map(BqType::of),
    }
}

fn scalar_type(dt: &DataType) -> Option<&'static str> {
    use DataType as D;
    Some(match dt {
        D::Boolean => "BOOL",
        D::Int8 | D::Int16 | D::Int32 | D::Int64 => "INT64",
        D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => "INT64",
        D::Float16 | D::Float32 | D::Float64 => "FLOAT64",
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "STRING",
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "BYTES",
        D::Date32 | D::Date64 => "DATE",
        D::Timestamp(_, _) => "TIMESTAMP",
        D::Time32(_) | D::Time64(_) => "TIME",
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            let (p, s) = (i16::from(*p), i16::from(*s));
            let whole = p - s;
            if (0..=9).contains(&s) && whole <= 29 {
                "NUMERIC"
            } else if (0..=38).contains(&s) && whole <= 38 {
                "BIGNUMERIC"
            } else {
                return None;
            }
        }
        D::Dictionary(_, values) => return scalar_type(values),
        _ => return None,
    })
}

/// An entry's rows as insertAll rows, with their insertIds and column
/// types; `inserted_at` is `now` unless the rows carry their own.
pub fn encode(entry: &TableRows, index: usize, now: &str) -> Result<Encoded, String> {
    let schema = entry.batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len() + 1);
    // Nested columns, sent as JSON text like JSON-text columns already are.
    let mut nested = Vec::new();
    for f in schema.fields() {
        // An all-null column says nothing about its type: left out, like its nulls.
        if f.data_type() == &DataType::Null {
            continue;
        }
        let ty = if json_rows::is_json_text(f) {
            BqType::of("JSON")
        } else {
            bigquery_type(f.data_type()).ok_or_else(|| {
                format!(
                    "column {:?}: Arrow type {} has no BigQuery type",
                    f.name(),
                    f.data_type()
                )
            })?
        };
        if ty.name == "JSON" && !json_rows::is_json_text(f) {
            nested.push(f.name().clone());
        }
        columns.push((f.name().clone(), ty));
    }
    let mut json = json_rows::json_rows(&entry.batch)?;
    let keys = json_rows::row_keys(entry, &json)?;
    for name in &nested {
        for row in json.iter_mut() {
            if let Some(v) = row.get_mut(name) {
                *v = Value::String(v.to_string());
            }
        }
    }
    if schema.column_with_name(json_rows::INSERTED_AT).is_none() {
        columns.push((json_rows::INSERTED_AT.to_string(), BqType::of("TIMESTAMP")));
        for row in json.iter_mut() {
            row.insert(
                json_rows::INSERTED_AT.to_string(),
                Value::String(now.to_string()),
            );
        }
    }
    let rows = json
        .into_iter()
        .zip(keys)
        .enumerate()
        .map(|(row, (json, key))| {
            let insert_id = if key.len() > MAX_INSERT_ID {
                json_rows::hex(&<sha2::Sha256 as sha2::Digest>::digest(&key))
            } else {
                key
            };
            let size = Value::Object(json.clone()).to_string().len() + insert_id.len() + 32;
            Pending {
                entry: index,
                row,
                insert_id,
                json,
                size,
            }
        })
        .collect();
    Ok(Encoded { rows, columns })
}

pub fn field(name: &str, ty: BqType) -> Value {
    let mode = if ty.repeated { "REPEATED" } else { "NULLABLE" };
    json!({ "name": name, "type": ty.name, "mode": mode })
}

pub fn schema_fields(table: &Value) -> Vec<Value> {
    table
        .pointer("/schema/fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Lower-cased column names (BigQuery column names ignore case).
pub fn field_names(fields: &[Value]) -> HashSet<String> {
    fields
        .iter()
        .filter_map(|f| f.get("name").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect()
}

pub fn missing(fields: &[Value], wanted: &[(String, BqType)]) -> Vec<(String, BqType)> {
    let have = field_names(fields);
    wanted
        .iter()
        .filter(|(n, _)| !have.contains(&n.to_ascii_lowercase()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, Fields, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn arrow_types_map_to_bigquery_types() {
        let item = Arc::new(Field::new("item", DataType::Int64, true));
        let nested = Arc::new(Field::new("item", DataType::List(item.clone()), true));
        let one = |name| Some(BqType::of(name));
        for (dt, want) in [
            (DataType::Utf8, one("STRING")),
            (DataType::Int32, one("INT64")),
            (DataType::Float64, one("FLOAT64")),
            (DataType::Boolean, one("BOOL")),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                one("TIMESTAMP"),
            ),
            (DataType::Date32, one("DATE")),
            (DataType::Binary, one("BYTES")),
            (DataType::Decimal128(38, 9), one("NUMERIC")),
            (DataType::Decimal128(38, 10), one("BIGNUMERIC")),
            (DataType::Decimal256(76, 0), None),
            (
                DataType::List(item),
                Some(BqType {
                    name: "INT64",
                    repeated: true,
                }),
            ),
            (DataType::List(nested), one("JSON")),
            (DataType::Null, None),
            (DataType::Struct(Fields::empty()), one("JSON")),
            (
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                one("STRING"),
            ),
            (DataType::Duration(TimeUnit::Second), None),
        ] {
            assert_eq!(bigquery_type(&dt), want, "{dt}");
        }
    }
}
