//! OFFLINE_WRITER: result-bus `ResultMessage`s into one table per feature.
//!
//! Table `<namespace>__<feature>`, columns `observation_id` (unique),
//! `pkey`, `value` (typed by the value's kind), `observed_at`,
//! `resolver_fqn`, `deployment_id` (the store adds `inserted_at`). A batch's
//! rows are merged into one load per (table, value kind).

use crate::formats::Message;
use crate::formats::v1::{FeatureValue, ResultMessage, value::Kind};
use crate::writer::runtime::sink::WriterError;
use crate::writer::stores::offline::TableRows;
use crate::writer::stores::offline::ident;
use crate::writer::stores::offline::sink::{Decoder, Load, Origin, Prepared};
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::extension::EXTENSION_TYPE_NAME_KEY;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

mod rows;
pub use rows::{FeatureCell, FeatureRow, ResultItem};

/// Earliest and latest timestamps every offline store holds:
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z, in microseconds.
pub const MIN_MICROS: i64 = -62_135_596_800_000_000;
pub const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// Canonical Arrow extension name for JSON text.
pub const ARROW_JSON: &str = "arrow.json";

/// Decodes `ResultMessage`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResultDecoder;

/// The table of a feature.
pub fn feature_table(namespace: &str, feature: &str) -> String {
    let mut name = String::new();
    push_feature_table(&mut name, namespace, feature);
    name
}

fn push_feature_table(name: &mut String, namespace: &str, feature: &str) {
    name.push_str(namespace);
    name.push_str("__");
    name.push_str(feature);
}

/// "derived:" and 16 bytes in hex.
const DERIVED_ID_LEN: usize = "derived:".len() + 32;

/// An observation id for values sent without one: a hash of what identifies
/// the observation, so a replay derives the same id.
pub fn derived_observation_id(
    operation_id: &str,
    namespace: &str,
    feature: &str,
    pkey: &str,
    observed_at_micros: i64,
) -> String {
    let mut h = Sha256::new();
    for part in [operation_id, namespace, feature, pkey] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(observed_at_micros.to_be_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(DERIVED_ID_LEN);
    id.push_str("derived:");
    for b in &digest[..16] {
        // Writing into a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The feature tables met so far. Rows share their table's name instead of
/// each allocating one (allocation was a third of the writer's CPU in a
/// profile, docs/benchmarks.md), and a name is checked once. Cleared when it
/// holds [`TABLES_KEPT`] names, so a stream of ever new features cannot grow
/// it without bound.
static TABLES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Mutex::default);
const TABLES_KEPT: usize = 10_000;

/// The checked, shared name of the table `name` (`<namespace>__<feature>`).
fn shared_table(tables: &mut HashSet<Arc<str>>, name: &str) -> Result<Arc<str>, String> {
    if let Some(table) = tables.get(name) {
        return Ok(table.clone());
    }
    ident::check_table(name)?;
    if tables.len() >= TABLES_KEPT {
        tables.clear();
    }
    let table: Arc<str> = Arc::from(name);
    tables.insert(table.clone());
    Ok(table)
}

fn no_nul(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        Err(format!("{what} contains a NUL character"))
    } else {
        Ok(())
    }
}

fn optional(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Decodes one message; any malformed value makes the whole message poison.
pub fn decode(payload: &[u8]) -> Result<Vec<ResultItem>, String> {
    let msg = ResultMessage::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.ResultMessage: {e}"))?;
    no_nul("operation_id", &msg.operation_id)?;
    no_nul("deployment_id", &msg.deployment_id)?;
    let deployment_id: Option<Arc<str>> = optional(msg.deployment_id).map(Arc::from);
    // One allocation for the strings of all rows (see `rows`).
    let text_bytes: usize = msg.values.iter().map(text_bytes).sum();
    let mut item = ResultItem::with_capacity(deployment_id.clone(), msg.values.len(), text_bytes);
    let mut tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    let mut name = String::new();
    for (i, v) in msg.values.into_iter().enumerate() {
        let at = |e: String| format!("values[{i}]: {e}");
        if v.namespace.is_empty() || v.feature.is_empty() || v.pkey.is_empty() {
            return Err(at("namespace, feature and pkey must all be set".into()));
        }
        name.clear();
        push_feature_table(&mut name, &v.namespace, &v.feature);
        let table = shared_table(&mut tables, &name).map_err(at)?;
        for (what, s) in [
            ("pkey", &v.pkey),
            ("observation_id", &v.observation_id),
            ("resolver_fqn", &v.resolver_fqn),
        ] {
            no_nul(what, s).map_err(at)?;
        }
        let text: String;
        let value = match v.value.and_then(|v| v.kind) {
            None => return Err(at(format!("{table}: no value"))),
            Some(Kind::DoubleValue(d)) if !d.is_finite() => {
                return Err(at(format!("{table}: {d} is not a finite number")));
            }
            Some(Kind::DoubleValue(d)) => FeatureCell::Double(d),
            Some(Kind::IntValue(n)) => FeatureCell::Int(n),
            Some(Kind::StringValue(s)) => {
                no_nul("string_value", &s).map_err(at)?;
                text = s;
                FeatureCell::Text(&text)
            }
            Some(Kind::BoolValue(b)) => FeatureCell::Bool(b),
            Some(Kind::JsonValue(j)) => {
                let parsed: serde_json::Value = serde_json::from_str(&j)
                    .map_err(|e| at(format!("json_value is not JSON: {e}")))?;
                text = parsed.to_string();
                // jsonb cannot hold U+0000.
                if text.contains("\\u0000") {
                    return Err(at("json_value contains a NUL character".into()));
                }
                FeatureCell::Json(&text)
            }
        };
        // Unset (0) falls back to when the message was produced.
        let observed = [v.observed_at_micros, msg.produced_at_micros]
            .into_iter()
            .find(|t| *t != 0);
        if let Some(t) = observed
            && !(MIN_MICROS..=MAX_MICROS).contains(&t)
        {
            return Err(at(format!(
                "observed_at_micros {t} is outside years 1 to 9999"
            )));
        }
        let derived;
        let observation_id = if v.observation_id.is_empty() {
            derived = derived_observation_id(
                &msg.operation_id,
                &v.namespace,
                &v.feature,
                &v.pkey,
                // The time stored, so values that fall back to the message's
                // time still get ids of their own.
                observed.unwrap_or(0),
            );
            &derived
        } else {
            &v.observation_id
        };
        item.push(FeatureRow {
            table: &table,
            observation_id,
            pkey: &v.pkey,
            value,
            observed_at_micros: observed,
            resolver_fqn: (!v.resolver_fqn.is_empty()).then_some(v.resolver_fqn.as_str()),
            deployment_id: deployment_id.as_ref(),
        })
        .map_err(at)?;
    }
    if item.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![item])
}

/// About how many bytes a value's strings take in its row: exact but for
/// JSON, which is stored re-serialised.
fn text_bytes(v: &FeatureValue) -> usize {
    let id = if v.observation_id.is_empty() {
        DERIVED_ID_LEN
    } else {
        v.observation_id.len()
    };
    let value = match v.value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s) | Kind::JsonValue(s)) => s.len(),
        _ => 0,
    };
    id + v.pkey.len() + v.resolver_fqn.len() + value
}

/// Builds one load per (table, value kind), rows in item order.
pub fn loads(items: &[ResultItem]) -> Result<Vec<Load>, String> {
    let mut order: Vec<(&str, u8)> = Vec::new();
    // (item, row) indexes: a batch's rows are grouped before any is read.
    let mut groups: HashMap<(&str, u8), Vec<(usize, usize)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        for (j, row) in item.rows().enumerate() {
            let key = (&**row.table, row.value.kind());
            groups
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push((i, j));
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let at = groups.remove(&key).unwrap_or_default();
        // One group's rows read at a time.
        let rows: Vec<(usize, FeatureRow)> = at
            .iter()
            .filter_map(|&(i, j)| Some((i, items.get(i)?.row(j)?)))
            .collect();
        let batch = feature_batch(&rows).map_err(|e| format!("{}: {e}", key.0))?;
        out.push(Load {
            rows: TableRows {
                table: key.0.to_string(),
                batch,
                idempotency_key: None,
            },
            origin: Origin::Rows(at.iter().map(|(i, _)| *i).collect()),
        });
    }
    Ok(out)
}

/// The Arrow batch of rows that share a table and a value kind.
fn feature_batch(rows: &[(usize, FeatureRow)]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = rows.len();
    let text = |f: &dyn for<'r> Fn(&FeatureRow<'r>) -> Option<&'r str>| -> ArrayRef {
        // Sized exactly: growing the buffer while appending was 5 % of the
        // writer's CPU in memmove (docs/benchmarks.md).
        let bytes = rows.iter().filter_map(|(_, r)| f(r)).map(str::len).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        for (_, r) in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let (value_field, value): (Field, ArrayRef) = match rows.first().map(|(_, r)| &r.value) {
        Some(FeatureCell::Int(_)) => {
            let mut b = Int64Builder::with_capacity(n);
            for (_, r) in rows {
                b.append_option(match r.value {
                    FeatureCell::Int(v) => Some(v),
                    _ => None,
                });
            }
            (
                Field::new("value", DataType::Int64, true),
                Arc::new(b.finish()),
            )
        }
        Some(FeatureCell::Double(_)) => {
            let mut b = Float64Builder::with_capacity(n);
            for (_, r) in rows {
                b.append_option(match r.value {
                    FeatureCell::Double(v) => Some(v),
                    _ => None,
                });
            }
            (
                Field::new("value", DataType::Float64, true),
                Arc::new(b.finish()),
            )
        }
        Some(FeatureCell::Bool(_)) => {
            let mut b = BooleanBuilder::with_capacity(n);
            for (_, r) in rows {
                b.append_option(match r.value {
                    FeatureCell::Bool(v) => Some(v),
                    _ => None,
                });
            }
            (
                Field::new("value", DataType::Boolean, true),
                Arc::new(b.finish()),
            )
        }
        Some(FeatureCell::Json(_)) => (
            Field::new("value", DataType::Utf8, true).with_metadata(HashMap::from([(
                EXTENSION_TYPE_NAME_KEY.to_string(),
                ARROW_JSON.to_string(),
            )])),
            text(&|r| match r.value {
                FeatureCell::Json(s) => Some(s),
                _ => None,
            }),
        ),
        Some(FeatureCell::Text(_)) | None => (
            Field::new("value", DataType::Utf8, true),
            text(&|r| match r.value {
                FeatureCell::Text(s) => Some(s),
                _ => None,
            }),
        ),
    };
    let observed: TimestampMicrosecondArray = rows
        .iter()
        .map(|(_, r)| r.observed_at_micros)
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("observation_id", DataType::Utf8, false),
        Field::new("pkey", DataType::Utf8, false),
        value_field,
        Field::new("observed_at", utc, true),
        Field::new("resolver_fqn", DataType::Utf8, true),
        Field::new("deployment_id", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            text(&|r| Some(r.observation_id)),
            text(&|r| Some(r.pkey)),
            value,
            Arc::new(observed),
            text(&|r| r.resolver_fqn),
            text(&|r| r.deployment_id.map(|d| &**d)),
        ],
    )
}

impl Decoder for ResultDecoder {
    type Item = ResultItem;

    fn decode(&self, payload: &[u8]) -> Result<Vec<ResultItem>, String> {
        decode(payload)
    }

    async fn prepare(&self, items: &[ResultItem]) -> Result<Prepared, WriterError> {
        // Decoded rows always fit their schema; a failure here is a bug, not
        // bad input, so it must not dead-letter the batch: retry and report.
        let loads = loads(items).map_err(WriterError::Retriable)?;
        Ok(Prepared {
            loads,
            ..Prepared::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::fixtures::feature_value as fv;
    use crate::formats::v1::FeatureValue;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    fn message(values: Vec<FeatureValue>) -> Vec<u8> {
        ResultMessage {
            operation_id: "op-1".into(),
            deployment_id: "dep-1".into(),
            values,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn values_become_typed_rows_of_their_feature_table() -> Result<(), String> {
        let items = decode(&message(vec![
            fv("user", "age", "1", Some(Kind::IntValue(42))),
            fv("user", "score", "1", Some(Kind::DoubleValue(0.5))),
            fv("user", "tags", "1", Some(Kind::JsonValue("[1, 2]".into()))),
        ]))?;
        let rows: Vec<FeatureRow> = items[0].rows().collect();
        assert_eq!(&**rows[0].table, "user__age");
        assert_eq!(rows[0].value, FeatureCell::Int(42));
        assert_eq!(rows[2].value, FeatureCell::Json("[1,2]"));
        assert_eq!(rows[0].deployment_id.map(|d| &**d), Some("dep-1"));
        assert_eq!(rows[0].resolver_fqn, None);
        Ok(())
    }

    #[test]
    fn a_batch_merges_into_one_load_per_table_and_kind() -> Result<(), String> {
        let a = decode(&message(vec![
            fv("user", "age", "1", Some(Kind::IntValue(1))),
            fv("user", "score", "1", Some(Kind::DoubleValue(1.5))),
        ]))?;
        let b = decode(&message(vec![
            fv("user", "age", "2", Some(Kind::IntValue(2))),
            fv("user", "age", "3", Some(Kind::DoubleValue(3.0))),
        ]))?;
        let items: Vec<ResultItem> = a.into_iter().chain(b).collect();
        let loads = loads(&items)?;
        let shape: Vec<(&str, usize, &Origin)> = loads
            .iter()
            .map(|l| (l.rows.table.as_str(), l.rows.batch.num_rows(), &l.origin))
            .collect();
        assert_eq!(
            shape,
            [
                ("user__age", 2, &Origin::Rows(vec![0, 1])),
                ("user__score", 1, &Origin::Rows(vec![0])),
                ("user__age", 1, &Origin::Rows(vec![1])),
            ]
        );
        let ages = loads[0].rows.batch.column(2).as_primitive::<Int64Type>();
        assert_eq!(ages.values().to_vec(), [1, 2]);
        let doubles = loads[2].rows.batch.column(2).as_primitive::<Float64Type>();
        assert_eq!(doubles.values().to_vec(), [3.0]);
        let schema = loads[0].rows.batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "observation_id",
                "pkey",
                "value",
                "observed_at",
                "resolver_fqn",
                "deployment_id"
            ]
        );
        Ok(())
    }

    #[test]
    fn json_values_carry_the_arrow_json_extension() -> Result<(), String> {
        let items = decode(&message(vec![fv(
            "user",
            "tags",
            "1",
            Some(Kind::JsonValue("{\"a\": 1}".into())),
        )]))?;
        let loads = loads(&items)?;
        let schema = loads[0].rows.batch.schema();
        assert_eq!(schema.field(2).extension_type_name(), Some(ARROW_JSON));
        Ok(())
    }

    #[test]
    fn missing_observation_ids_are_derived_deterministically() -> Result<(), String> {
        let mut v = fv("user", "age", "1", Some(Kind::IntValue(1)));
        v.observation_id.clear();
        let first = decode(&message(vec![v.clone()]))?;
        let again = decode(&message(vec![v]))?;
        assert_eq!(first, again);
        let row = first[0].row(0).ok_or("no row")?;
        assert!(row.observation_id.starts_with("derived:"));
        Ok(())
    }

    #[test]
    fn derived_observation_ids_stay_the_same_across_versions() {
        // A replay after an upgrade must derive the ids already stored:
        // sha256("op-1\0user\0age\01\0" + the time, big-endian), 16 bytes
        // in hex, as computed outside this code.
        assert_eq!(
            derived_observation_id("op-1", "user", "age", "1", 1_700_000_000_000_000),
            "derived:53e513a558bd5a9acb29fba53fd39d88"
        );
    }

    #[test]
    fn rows_share_their_tables_name_and_their_messages_deployment() -> Result<(), String> {
        let a = decode(&message(vec![
            fv("user", "age", "1", Some(Kind::IntValue(1))),
            fv("user", "score", "1", Some(Kind::DoubleValue(1.5))),
        ]))?;
        let b = decode(&message(vec![fv(
            "user",
            "age",
            "2",
            Some(Kind::IntValue(2)),
        )]))?;
        let a: Vec<FeatureRow> = a[0].rows().collect();
        let b: Vec<FeatureRow> = b[0].rows().collect();
        assert!(Arc::ptr_eq(a[0].table, b[0].table));
        assert!(!Arc::ptr_eq(a[0].table, a[1].table));
        match (a[0].deployment_id, a[1].deployment_id) {
            (Some(x), Some(y)) => assert!(Arc::ptr_eq(x, y)),
            other => panic!("deployment ids {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn refuses_garbage_hostile_names_and_bad_values() {
        assert!(decode(b"\xff\xff\xff not protobuf").is_err());
        let far = {
            let mut v = fv("user", "x", "1", Some(Kind::IntValue(1)));
            v.observed_at_micros = i64::MAX;
            v
        };
        for (bad, why) in [
            (
                fv("", "age", "1", Some(Kind::IntValue(1))),
                "must all be set",
            ),
            (fv("user", "age", "1", None), "no value"),
            (
                fv("user", "x", "1", Some(Kind::DoubleValue(f64::NAN))),
                "finite",
            ),
            (
                fv("user", "x", "1", Some(Kind::JsonValue("{no".into()))),
                "not JSON",
            ),
            (
                fv(
                    "user",
                    "x",
                    "1",
                    Some(Kind::JsonValue("\"\\u0000\"".into())),
                ),
                "NUL",
            ),
            (
                fv("user", "x", "1", Some(Kind::StringValue("a\0".into()))),
                "NUL",
            ),
            (fv("us\"er", "x", "1", Some(Kind::IntValue(1))), "refused"),
            (
                fv("user", "x; DROP TABLE y", "1", Some(Kind::IntValue(1))),
                "refused",
            ),
            (
                fv("bgpersist", "loads", "1", Some(Kind::IntValue(1))),
                "reserved",
            ),
            (far, "outside years"),
        ] {
            let err = decode(&message(vec![bad.clone()]))
                .err()
                .unwrap_or_default();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
