//! Arrow rows as JSON objects, for the warehouses that load JSON (BigQuery
//! `insertAll`, Snowflake `PARSE_JSON`), and the key that makes each row's
//! load idempotent.
//!
//! Values: integers and booleans as JSON numbers and booleans; floats as
//! numbers, non-finite ones as the strings `"NaN"`, `"Infinity"`,
//! `"-Infinity"` (both warehouses parse those); timestamps as RFC 3339 UTC
//! with microseconds (`2024-05-01T12:00:00.000001Z`; nanoseconds are cut,
//! zone-less timestamps are taken as UTC); dates `YYYY-MM-DD`; times
//! `HH:MM:SS.ffffff`; decimals as exact strings; binary as standard base64;
//! lists as arrays, structs and string-keyed maps as objects; dictionaries
//! as their values. Nulls are left out of the row. Durations, intervals and
//! unions have no JSON form: an entry holding one is refused. A text column
//! tagged with the `arrow.json` extension holds JSON text, loaded as JSON.

use super::TableRows;
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType, OffsetSizeTrait, PrimitiveArray, RecordBatch};
use arrow_schema::extension::EXTENSION_TYPE_NAME_KEY;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use base64::Engine;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// One row, column name → value.
pub type JsonRow = Map<String, Value>;

/// Columns that identify a row by themselves, in order of preference:
/// per-feature tables carry `observation_id`, `query_log` `operation_id`.
pub const KEY_COLUMNS: [&str; 2] = ["observation_id", "operation_id"];

/// The column holding the row key in tables that have no key column of
/// their own (Snowflake merges on it).
pub const ROW_KEY_COLUMN: &str = "bgpersist_row_key";

/// The column every warehouse table gets (as the Postgres store's does):
/// when the rows do not carry it, the time of the load.
pub const INSERTED_AT: &str = "inserted_at";

/// Canonical Arrow extension name of JSON text.
const ARROW_JSON: &str = "arrow.json";

/// Whether `field` holds JSON text (`arrow.json` extension on a string type).
pub fn is_json_text(field: &Field) -> bool {
    field
        .metadata()
        .get(EXTENSION_TYPE_NAME_KEY)
        .map(String::as_str)
        == Some(ARROW_JSON)
        && matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

/// Microseconds since the epoch as the JSON timestamp text used for rows.
pub fn timestamp_text(micros: i64) -> Option<String> {
    arrow_array::temporal_conversions::timestamp_us_to_datetime(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// Now, as [`timestamp_text`].
pub fn now_text() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    timestamp_text(micros).unwrap_or_default()
}

/// Every row of `batch` as a JSON object (nulls omitted).
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<JsonRow>, String> {
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let values =
            column_json(array.as_ref()).map_err(|e| format!("column {:?}: {e}", field.name()))?;
        columns.push((field.name().clone(), values));
    }
    let mut rows = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let mut row = Map::new();
        for (name, values) in columns.iter_mut() {
            let v = std::mem::take(&mut values[r]);
            if !v.is_null() {
                row.insert(name.clone(), v);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The key column of a table with this schema, if it has one.
pub fn key_column(schema: &Schema) -> Option<&'static str> {
    KEY_COLUMNS
        .into_iter()
        .find(|k| schema.column_with_name(k).is_some())
}

/// A stable key per row: the key column's value; else the entry's
/// idempotency key and the row's position; else a hash of the row itself.
/// A replay of the same entry yields the same keys. A row whose key column
/// is empty cannot be loaded idempotently and refuses the entry.
pub fn row_keys(entry: &TableRows, rows: &[JsonRow]) -> Result<Vec<String>, String> {
    if let Some(column) = key_column(&entry.batch.schema()) {
        return rows
            .iter()
            .enumerate()
            .map(|(i, row)| match row.get(column) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(format!(
                    "row {i}: {column} is empty, so the row cannot be loaded idempotently"
                )),
            })
            .collect();
    }
    Ok(match &entry.idempotency_key {
        Some(key) => (0..rows.len()).map(|i| format!("{key}/{i}")).collect(),
        None => rows
            .iter()
            .map(|row| hex(&Sha256::digest(Value::Object(row.clone()).to_string())))
            .collect(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One JSON value per row of `array` (`Null` where the row is null).
pub fn column_json(array: &dyn Array) -> Result<Vec<Value>, String> {
    let mut out = match array.data_type() {
        DataType::Null => vec![Value::Null; array.len()],
        DataType::Boolean => array
            .as_boolean_opt()
            .ok_or_else(|| mismatch(array))?
            .iter()
            .map(|v| v.map(Value::Bool).unwrap_or(Value::Null))
            .collect(),
        DataType::Int8 => numbers::<Int8Type>(array, |v| v.into())?,
        DataType::Int16 => numbers::<Int16Type>(array, |v| v.into())?,
        DataType::Int32 => numbers::<Int32Type>(array, |v| v.into())?,
        DataType::Int64 => numbers::<Int64Type>(array, |v| v.into())?,
        DataType::UInt8 => numbers::<UInt8Type>(array, |v| v.into())?,
        DataType::UInt16 => numbers::<UInt16Type>(array, |v| v.into())?,
        DataType::UInt32 => numbers::<UInt32Type>(array, |v| v.into())?,
        DataType::UInt64 => numbers::<UInt64Type>(array, |v| v.into())?,
        DataType::Float16 => numbers::<Float16Type>(array, |v| float(v.to_f64()))?,
        DataType::Float32 => numbers::<Float32Type>(array, |v| float(v.into()))?,
        DataType::Float64 => numbers::<Float64Type>(array, float)?,
        DataType::Utf8 => strings(array.as_string_opt::<i32>().map(|a| a.iter()), array)?,
        DataType::LargeUtf8 => strings(array.as_string_opt::<i64>().map(|a| a.iter()), array)?,
        DataType::Utf8View => strings(array.as_string_view_opt().map(|a| a.iter()), array)?,
        DataType::Binary => binaries(array.as_binary_opt::<i32>().map(|a| a.iter()), array)?,
        DataType::LargeBinary => binaries(array.as_binary_opt::<i64>().map(|a| a.iter()), array)?,
        DataType::BinaryView => binaries(array.as_binary_view_opt().map(|a| a.iter()), array)?,
        DataType::FixedSizeBinary(_) => {
            binaries(array.as_fixed_size_binary_opt().map(|a| a.iter()), array)?
        }
        DataType::Date32 => dates::<Date32Type>(array)?,
        DataType::Date64 => dates::<Date64Type>(array)?,
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => timestamps::<TimestampSecondType>(array)?,
            TimeUnit::Millisecond => timestamps::<TimestampMillisecondType>(array)?,
            TimeUnit::Microsecond => timestamps::<TimestampMicrosecondType>(array)?,
            TimeUnit::Nanosecond => timestamps::<TimestampNanosecondType>(array)?,
        },
        DataType::Time32(TimeUnit::Second) => times::<Time32SecondType>(array)?,
        DataType::Time32(TimeUnit::Millisecond) => times::<Time32MillisecondType>(array)?,
        DataType::Time64(TimeUnit::Microsecond) => times::<Time64MicrosecondType>(array)?,
        DataType::Time64(TimeUnit::Nanosecond) => times::<Time64NanosecondType>(array)?,
        DataType::Decimal32(_, _) => decimals::<Decimal32Type>(array)?,
        DataType::Decimal64(_, _) => decimals::<Decimal64Type>(array)?,
        DataType::Decimal128(_, _) => decimals::<Decimal128Type>(array)?,
        DataType::Decimal256(_, _) => decimals::<Decimal256Type>(array)?,
        DataType::List(_) => lists::<i32>(array)?,
        DataType::LargeList(_) => lists::<i64>(array)?,
        DataType::FixedSizeList(_, size) => {
            let list = array
                .as_fixed_size_list_opt()
                .ok_or_else(|| mismatch(array))?;
            let items = column_json(list.values().as_ref())?;
            let size = (*size).max(0) as usize;
            (0..list.len())
                .map(|r| Value::Array(items[r * size..(r + 1) * size].to_vec()))
                .collect()
        }
        DataType::Struct(fields) => {
            let st = array.as_struct_opt().ok_or_else(|| mismatch(array))?;
            let mut children = Vec::with_capacity(fields.len());
            for (field, child) in fields.iter().zip(st.columns()) {
                children.push((field.name().clone(), column_json(child.as_ref())?));
            }
            (0..st.len())
                .map(|r| {
                    let mut obj = Map::new();
                    for (name, values) in children.iter_mut() {
                        obj.insert(name.clone(), std::mem::take(&mut values[r]));
                    }
                    Value::Object(obj)
                })
                .collect()
        }
        DataType::Map(_, _) => {
            let map = array.as_map_opt().ok_or_else(|| mismatch(array))?;
            let keys = column_json(map.keys().as_ref())?;
            let values = column_json(map.values().as_ref())?;
            let offsets = map.value_offsets();
            (0..map.len())
                .map(|r| {
                    let range = offsets[r] as usize..offsets[r + 1] as usize;
                    let mut obj = Map::new();
                    for i in range {
                        let key = match &keys[i] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        obj.insert(key, values[i].clone());
                    }
                    Value::Object(obj)
                })
                .collect()
        }
        DataType::Dictionary(_, _) => {
            let dict = array
                .as_any_dictionary_opt()
                .ok_or_else(|| mismatch(array))?;
            let values = column_json(dict.values().as_ref())?;
            dict.normalized_keys()
                .into_iter()
                .map(|k| values.get(k).cloned().unwrap_or(Value::Null))
                .collect()
        }
        other => return Err(format!("Arrow type {other} has no JSON form")),
    };
    if array.null_count() > 0 {
        for (i, v) in out.iter_mut().enumerate() {
            if array.is_null(i) {
                *v = Value::Null;
            }
        }
    }
    Ok(out)
}

fn mismatch(array: &dyn Array) -> String {
    format!(
        "array does not match its declared type {}",
        array.data_type()
    )
}

fn float(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("NaN".into()),
        None if v > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn primitive<T: ArrowPrimitiveType>(array: &dyn Array) -> Result<&PrimitiveArray<T>, String> {
    array.as_primitive_opt::<T>().ok_or_else(|| mismatch(array))
}

fn numbers<T: ArrowPrimitiveType>(
    array: &dyn Array,
    to_json: impl Fn(T::Native) -> Value,
) -> Result<Vec<Value>, String> {
    Ok(primitive::<T>(array)?
        .values()
        .iter()
        .map(|v| to_json(*v))
        .collect())
}

fn strings<'a>(
    values: Option<impl Iterator<Item = Option<&'a str>>>,
    array: &dyn Array,
) -> Result<Vec<Value>, String> {
    Ok(values
        .ok_or_else(|| mismatch(array))?
        .map(|v| {
            v.map(|s| Value::String(s.to_string()))
                .unwrap_or(Value::Null)
        })
        .collect())
}

fn binaries<'a>(
    values: Option<impl Iterator<Item = Option<&'a [u8]>>>,
    array: &dyn Array,
) -> Result<Vec<Value>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(values
        .ok_or_else(|| mismatch(array))?
        .map(|v| {
            v.map(|b| Value::String(b64.encode(b)))
                .unwrap_or(Value::Null)
        })
        .collect())
}

fn dates<T: ArrowTemporalType>(array: &dyn Array) -> Result<Vec<Value>, String>
where
    i64: From<T::Native>,
{
    let a = primitive::<T>(array)?;
    Ok((0..a.len())
        .map(|i| match a.value_as_date(i) {
            Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            None => Value::Null,
        })
        .collect())
}

fn timestamps<T: ArrowTemporalType>(array: &dyn Array) -> Result<Vec<Value>, String>
where
    i64: From<T::Native>,
{
    let a = primitive::<T>(array)?;
    (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                return Ok(Value::Null);
            }
            a.value_as_datetime(i)
                .map(|t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()))
                .ok_or_else(|| format!("row {i}: timestamp out of range"))
        })
        .collect()
}

fn times<T: ArrowTemporalType>(array: &dyn Array) -> Result<Vec<Value>, String>
where
    i64: From<T::Native>,
{
    let a = primitive::<T>(array)?;
    Ok((0..a.len())
        .map(|i| match a.value_as_time(i) {
            Some(t) => Value::String(t.format("%H:%M:%S%.6f").to_string()),
            None => Value::Null,
        })
        .collect())
}

fn decimals<T: DecimalType>(array: &dyn Array) -> Result<Vec<Value>, String> {
    let a = primitive::<T>(array)?;
    Ok((0..a.len())
        .map(|i| Value::String(a.value_as_string(i)))
        .collect())
}

fn lists<O: OffsetSizeTrait>(array: &dyn Array) -> Result<Vec<Value>, String> {
    let list = array.as_list_opt::<O>().ok_or_else(|| mismatch(array))?;
    let items = column_json(list.values().as_ref())?;
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|r| {
            let range = offsets[r].as_usize()..offsets[r + 1].as_usize();
            Value::Array(items[range].to_vec())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
    use arrow_array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array,
        Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use serde_json::json;
    use std::sync::Arc;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("test batch: {e}"))
    }

    #[test]
    fn every_common_type_has_its_json_form() -> Result<(), String> {
        let mut list = ListBuilder::new(arrow_array::builder::Int64Builder::new());
        list.values().append_value(1);
        list.values().append_value(2);
        list.append(true);
        list.append(false);
        let mut dict = StringDictionaryBuilder::<Int32Type>::new();
        dict.append_value("red");
        dict.append_null();
        let b = batch(vec![
            ("s", Arc::new(StringArray::from(vec![Some("a\"b"), None]))),
            ("i", Arc::new(Int64Array::from(vec![i64::MAX, -1]))),
            ("f", Arc::new(Float64Array::from(vec![0.5, f64::NAN]))),
            ("b", Arc::new(BooleanArray::from(vec![true, false]))),
            (
                "t",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_700_000_000_000_001, 0])
                        .with_timezone("UTC"),
                ),
            ),
            ("d", Arc::new(Date32Array::from(vec![19_000, 0]))),
            (
                "n",
                Arc::new(
                    Decimal128Array::from(vec![12_345, -5])
                        .with_precision_and_scale(10, 2)
                        .map_err(|e| e.to_string())?,
                ),
            ),
            (
                "bin",
                Arc::new(BinaryArray::from(vec![&b"hi"[..], &b""[..]])),
            ),
            ("l", Arc::new(list.finish())),
            ("dict", Arc::new(dict.finish())),
        ]);
        let rows = json_rows(&b)?;
        assert_eq!(
            Value::Object(rows[0].clone()),
            json!({
                "s": "a\"b", "i": i64::MAX, "f": 0.5, "b": true,
                "t": "2023-11-14T22:13:20.000001Z", "d": "2022-01-08",
                "n": "123.45", "bin": "aGk=", "l": [1, 2], "dict": "red"
            })
        );
        assert_eq!(
            Value::Object(rows[1].clone()),
            json!({
                "i": -1, "f": "NaN", "b": false, "t": "1970-01-01T00:00:00.000000Z",
                "d": "1970-01-01", "n": "-0.05", "bin": ""
            })
        );
        Ok(())
    }

    #[test]
    fn json_text_is_recognised_by_its_extension() {
        let plain = Field::new("value", DataType::Utf8, true);
        let tagged = plain
            .clone()
            .with_metadata(std::collections::HashMap::from([(
                EXTENSION_TYPE_NAME_KEY.to_string(),
                ARROW_JSON.to_string(),
            )]));
        assert!(!is_json_text(&plain));
        assert!(is_json_text(&tagged));
        assert_eq!(
            timestamp_text(1_700_000_000_000_001).as_deref(),
            Some("2023-11-14T22:13:20.000001Z")
        );
        assert_eq!(now_text().len(), 27);
    }

    #[test]
    fn types_without_a_json_form_are_named() {
        let b = batch(vec![(
            "dur",
            Arc::new(arrow_array::DurationSecondArray::from(vec![1])),
        )]);
        let err = json_rows(&b).err().unwrap_or_default();
        assert!(err.contains("\"dur\"") && err.contains("Duration"), "{err}");
    }

    #[test]
    fn keys_come_from_the_key_column_the_idempotency_key_or_the_row() -> Result<(), String> {
        let entry = |b: RecordBatch, key: Option<&str>| TableRows {
            table: "t".into(),
            batch: b,
            idempotency_key: key.map(str::to_string),
        };
        let with_ids = batch(vec![
            (
                "observation_id",
                Arc::new(StringArray::from(vec!["o1", "o2"])),
            ),
            ("operation_id", Arc::new(StringArray::from(vec!["x", "x"]))),
        ]);
        let e = entry(with_ids, Some("k"));
        assert_eq!(row_keys(&e, &json_rows(&e.batch)?)?, ["o1", "o2"]);

        let plain = batch(vec![("v", Arc::new(Int64Array::from(vec![7, 7])))]);
        let e = entry(plain.clone(), Some("msg-9"));
        assert_eq!(row_keys(&e, &json_rows(&e.batch)?)?, ["msg-9/0", "msg-9/1"]);
        let e = entry(plain, None);
        let hashed = row_keys(&e, &json_rows(&e.batch)?)?;
        assert_eq!(hashed[0], hashed[1], "same row, same key");
        assert_eq!(hashed[0].len(), 64);

        let missing = batch(vec![(
            "observation_id",
            Arc::new(StringArray::from(vec![Some("o1"), None])),
        )]);
        let e = entry(missing, Some("k"));
        let err = row_keys(&e, &json_rows(&e.batch)?)
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("row 1: observation_id is empty"), "{err}");
        Ok(())
    }
}
