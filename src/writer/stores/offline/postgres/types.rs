//! Arrow column types → Postgres column types (docs/offline-store.md has the
//! table), and which existing column types accept which incoming ones.

use crate::writer::types::offline_writer::ARROW_JSON;
use arrow_schema::{DataType, Field};
use tokio_postgres::types::Type;

/// How one Arrow column is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    /// Type of the staging column and of the binary COPY stream.
    pub wire: Type,
    /// SQL type of a column created for these rows.
    pub sql: String,
    /// Type of a created column (differs from `wire` for decimals, which
    /// travel as text and are cast on insert).
    pub target: Type,
}

impl ColumnPlan {
    fn same(name: &str, wire: Type, sql: &str) -> ColumnPlan {
        ColumnPlan {
            name: name.to_string(),
            target: wire.clone(),
            wire,
            sql: sql.to_string(),
        }
    }

    /// Whether the staging value needs an explicit cast into the table.
    pub fn cast(&self) -> Option<&'static str> {
        (self.wire != self.target && self.target == Type::NUMERIC).then_some("numeric")
    }
}

/// The plan of `field`, `None` for an all-null (`Null`) column, which adds
/// nothing and is skipped.
pub fn plan(field: &Field) -> Result<Option<ColumnPlan>, String> {
    let name = field.name();
    let unsupported = || {
        format!(
            "column {name:?} has Arrow type {}, which the Postgres offline store does not map",
            field.data_type()
        )
    };
    let (wire, sql) = match field.data_type() {
        DataType::Null => return Ok(None),
        DataType::Boolean => (Type::BOOL, "boolean"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (Type::INT2, "smallint"),
        DataType::Int32 | DataType::UInt16 => (Type::INT4, "integer"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => (Type::INT8, "bigint"),
        DataType::Float32 => (Type::FLOAT4, "real"),
        DataType::Float64 => (Type::FLOAT8, "double precision"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            if field.extension_type_name() == Some(ARROW_JSON) {
                (Type::JSONB, "jsonb")
            } else {
                (Type::TEXT, "text")
            }
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => (Type::BYTEA, "bytea"),
        DataType::Date32 | DataType::Date64 => (Type::DATE, "date"),
        DataType::Timestamp(_, None) => (Type::TIMESTAMP, "timestamp"),
        DataType::Timestamp(_, Some(_)) => (Type::TIMESTAMPTZ, "timestamptz"),
        DataType::Time32(_) | DataType::Time64(_) => (Type::TIME, "time"),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            if *s < 0 {
                return Err(unsupported());
            }
            return Ok(Some(ColumnPlan {
                name: name.clone(),
                wire: Type::TEXT,
                sql: format!("numeric({p},{s})"),
                target: Type::NUMERIC,
            }));
        }
        DataType::List(item) | DataType::LargeList(item) => {
            let Some(elem) = plan(item).ok().flatten() else {
                return Err(unsupported());
            };
            let Some(array) = array_of(&elem.wire).filter(|_| elem.wire == elem.target) else {
                return Err(unsupported());
            };
            return Ok(Some(ColumnPlan {
                name: name.clone(),
                target: array.clone(),
                wire: array,
                sql: format!("{}[]", elem.sql),
            }));
        }
        _ => return Err(unsupported()),
    };
    Ok(Some(ColumnPlan::same(name, wire, sql)))
}

fn array_of(elem: &Type) -> Option<Type> {
    [
        (Type::BOOL, Type::BOOL_ARRAY),
        (Type::INT2, Type::INT2_ARRAY),
        (Type::INT4, Type::INT4_ARRAY),
        (Type::INT8, Type::INT8_ARRAY),
        (Type::FLOAT4, Type::FLOAT4_ARRAY),
        (Type::FLOAT8, Type::FLOAT8_ARRAY),
        (Type::TEXT, Type::TEXT_ARRAY),
        (Type::JSONB, Type::JSONB_ARRAY),
        (Type::BYTEA, Type::BYTEA_ARRAY),
        (Type::DATE, Type::DATE_ARRAY),
        (Type::TIME, Type::TIME_ARRAY),
        (Type::TIMESTAMP, Type::TIMESTAMP_ARRAY),
        (Type::TIMESTAMPTZ, Type::TIMESTAMPTZ_ARRAY),
    ]
    .into_iter()
    .find(|(e, _)| e == elem)
    .map(|(_, a)| a)
}

/// Whether an existing column of type `existing` (by OID) takes values of
/// `incoming` without loss of meaning: the same type, or a widening
/// (smaller integers into larger ones or into numeric / double precision,
/// real into double precision, text into varchar).
pub fn accepts(existing: u32, incoming: &ColumnPlan) -> bool {
    if existing == incoming.target.oid() {
        return true;
    }
    let from = &incoming.target;
    let to = |types: &[Type]| types.iter().any(|t| t.oid() == existing);
    if *from == Type::INT2 {
        to(&[
            Type::INT4,
            Type::INT8,
            Type::NUMERIC,
            Type::FLOAT4,
            Type::FLOAT8,
        ])
    } else if *from == Type::INT4 {
        to(&[Type::INT8, Type::NUMERIC, Type::FLOAT8])
    } else if *from == Type::INT8 {
        to(&[Type::NUMERIC, Type::FLOAT8])
    } else if *from == Type::FLOAT4 {
        to(&[Type::FLOAT8])
    } else if *from == Type::TEXT {
        to(&[Type::VARCHAR])
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::TimeUnit;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn sql_of(dt: DataType) -> Result<Option<String>, String> {
        plan(&Field::new("c", dt, true)).map(|p| p.map(|p| p.sql))
    }

    #[test]
    fn arrow_types_map_to_postgres_types() -> Result<(), String> {
        let cases = [
            (DataType::Boolean, "boolean"),
            (DataType::Int8, "smallint"),
            (DataType::UInt16, "integer"),
            (DataType::Int64, "bigint"),
            (DataType::UInt64, "bigint"),
            (DataType::Float32, "real"),
            (DataType::Float64, "double precision"),
            (DataType::LargeUtf8, "text"),
            (DataType::Utf8View, "text"),
            (DataType::FixedSizeBinary(16), "bytea"),
            (DataType::Date32, "date"),
            (DataType::Timestamp(TimeUnit::Nanosecond, None), "timestamp"),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "timestamptz",
            ),
            (DataType::Time64(TimeUnit::Microsecond), "time"),
            (DataType::Decimal128(12, 2), "numeric(12,2)"),
            (
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                "text[]",
            ),
            (
                DataType::LargeList(Arc::new(Field::new("item", DataType::Int64, true))),
                "bigint[]",
            ),
        ];
        for (dt, want) in cases {
            assert_eq!(sql_of(dt.clone())?.as_deref(), Some(want), "{dt}");
        }
        assert_eq!(sql_of(DataType::Null)?, None);
        let json = Field::new("v", DataType::Utf8, true).with_metadata(HashMap::from([(
            "ARROW:extension:name".to_string(),
            ARROW_JSON.to_string(),
        )]));
        assert_eq!(plan(&json)?.map(|p| p.wire), Some(Type::JSONB));
        Ok(())
    }

    #[test]
    fn unmapped_types_are_refused_with_the_column_name() {
        for dt in [
            DataType::Struct(vec![Field::new("a", DataType::Int64, true)].into()),
            DataType::Float16,
            DataType::Decimal128(10, -2),
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::List(Arc::new(Field::new("x", DataType::Int64, true))),
                true,
            ))),
        ] {
            let err = sql_of(dt.clone()).err().unwrap_or_default();
            assert!(err.contains("column \"c\""), "{dt}: {err}");
        }
    }

    #[test]
    fn existing_columns_accept_the_same_type_or_a_widening() -> Result<(), String> {
        let p = |dt| plan(&Field::new("c", dt, true)).map(|p| p.ok_or("skipped".to_string()));
        let int = p(DataType::Int32)??;
        assert!(accepts(Type::INT4.oid(), &int));
        assert!(accepts(Type::INT8.oid(), &int));
        assert!(accepts(Type::FLOAT8.oid(), &int));
        assert!(!accepts(Type::INT2.oid(), &int));
        assert!(!accepts(Type::TEXT.oid(), &int));
        let double = p(DataType::Float64)??;
        assert!(!accepts(Type::INT8.oid(), &double));
        let dec = p(DataType::Decimal128(10, 2))??;
        assert!(accepts(Type::NUMERIC.oid(), &dec));
        assert_eq!(dec.cast(), Some("numeric"));
        let text = p(DataType::Utf8)??;
        assert!(accepts(Type::VARCHAR.oid(), &text));
        assert!(!accepts(Type::JSONB.oid(), &text));
        Ok(())
    }
}
