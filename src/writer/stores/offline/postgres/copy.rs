//! Arrow columns into a binary COPY stream (tokio-postgres'
//! `BinaryCopyInWriter`): one reader per column yields one [`Cell`] per row.
//! Values a Postgres column cannot hold (a u64 above i64::MAX, a timestamp
//! whose microseconds overflow) are found when the readers are built, before
//! any SQL, so a COPY never fails half-way on our side.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, OffsetSizeTrait, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::BytesMut;
use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// 2000-01-01 (Postgres' epoch) in microseconds and days since 1970-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// One value in the wire format of its column.
#[derive(Debug)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(&'a str),
    /// Decimals as text, cast to numeric on insert.
    OwnedText(String),
    Json(&'a str),
    Bytes(&'a [u8]),
    /// Days since 2000-01-01.
    Date(i32),
    /// Microseconds since 2000-01-01 (timestamp) or since midnight (time).
    Micros(i64),
    Array(Vec<Cell<'a>>),
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::I16(v) => v.to_sql(ty, out),
            Cell::I32(v) => v.to_sql(ty, out),
            Cell::I64(v) => v.to_sql(ty, out),
            Cell::F32(v) => v.to_sql(ty, out),
            Cell::F64(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::OwnedText(v) => v.as_str().to_sql(ty, out),
            Cell::Bytes(v) => v.to_sql(ty, out),
            // jsonb's binary form: format version 1, then the JSON text.
            Cell::Json(v) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            // date, timestamp[tz] and time share the int4 / int8 encodings.
            Cell::Date(v) => v.to_sql(&Type::INT4, out),
            Cell::Micros(v) => v.to_sql(&Type::INT8, out),
            Cell::Array(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // The column plan picked the type; readers only make matching cells.
        true
    }

    to_sql_checked!();
}

/// Reads one Arrow column as cells.
enum Reader<'a> {
    Bool(&'a arrow_array::BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Utf8View(&'a arrow_array::StringViewArray),
    Json(Box<Reader<'a>>),
    Bin(&'a arrow_array::BinaryArray),
    LargeBin(&'a arrow_array::LargeBinaryArray),
    BinView(&'a arrow_array::BinaryViewArray),
    FixedBin(&'a arrow_array::FixedSizeBinaryArray),
    Dec128(&'a PrimitiveArray<Decimal128Type>),
    Dec256(&'a PrimitiveArray<Decimal256Type>),
    Days(Vec<Option<i32>>),
    Micros(Vec<Option<i64>>),
    List(&'a [i32], &'a dyn Array, Box<Reader<'a>>),
    LargeList(&'a [i64], &'a dyn Array, Box<Reader<'a>>),
}

fn wrong(name: &str, dt: &DataType) -> String {
    format!("column {name:?}: Arrow type {dt} does not match its data")
}

fn convert<T: ArrowPrimitiveType, O>(
    array: &dyn Array,
    name: &str,
    f: impl Fn(T::Native) -> Option<O>,
) -> Result<Vec<Option<O>>, String> {
    let a = array
        .as_primitive_opt::<T>()
        .ok_or_else(|| wrong(name, array.data_type()))?;
    a.iter()
        .enumerate()
        .map(|(row, v)| match v {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .ok_or_else(|| format!("column {name:?} row {row}: value is out of range")),
        })
        .collect()
}

fn since_pg_epoch(micros: Option<i64>) -> Option<i64> {
    micros?.checked_sub(PG_EPOCH_MICROS)
}

impl<'a> Reader<'a> {
    fn new(array: &'a dyn Array, field: &Field) -> Result<Reader<'a>, String> {
        let name = field.name();
        let dt = array.data_type();
        let bad = || wrong(name, dt);
        Ok(match dt {
            DataType::Boolean => Reader::Bool(array.as_boolean_opt().ok_or_else(bad)?),
            DataType::Int8 => Reader::I8(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Int16 => Reader::I16(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Int32 => Reader::I32(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Int64 => Reader::I64(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::UInt8 => Reader::U8(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::UInt16 => Reader::U16(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::UInt32 => Reader::U32(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::UInt64 => {
                let a: &PrimitiveArray<UInt64Type> = array.as_primitive_opt().ok_or_else(bad)?;
                if let Some(row) = a
                    .iter()
                    .position(|v| v.is_some_and(|v| v > i64::MAX as u64))
                {
                    return Err(format!(
                        "column {name:?} row {row}: unsigned value does not fit bigint"
                    ));
                }
                Reader::U64(a)
            }
            DataType::Float32 => Reader::F32(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Float64 => Reader::F64(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                if field.extension_type_name()
                    == Some(crate::writer::types::offline_writer::ARROW_JSON) =>
            {
                let plain = Field::new(name, dt.clone(), true);
                Reader::Json(Box::new(Reader::new(array, &plain)?))
            }
            DataType::Utf8 => Reader::Utf8(array.as_string_opt().ok_or_else(bad)?),
            DataType::LargeUtf8 => Reader::LargeUtf8(array.as_string_opt().ok_or_else(bad)?),
            DataType::Utf8View => Reader::Utf8View(array.as_string_view_opt().ok_or_else(bad)?),
            DataType::Binary => Reader::Bin(array.as_binary_opt().ok_or_else(bad)?),
            DataType::LargeBinary => Reader::LargeBin(array.as_binary_opt().ok_or_else(bad)?),
            DataType::BinaryView => Reader::BinView(array.as_binary_view_opt().ok_or_else(bad)?),
            DataType::FixedSizeBinary(_) => {
                Reader::FixedBin(array.as_fixed_size_binary_opt().ok_or_else(bad)?)
            }
            DataType::Decimal128(..) => Reader::Dec128(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Decimal256(..) => Reader::Dec256(array.as_primitive_opt().ok_or_else(bad)?),
            DataType::Date32 => Reader::Days(convert::<Date32Type, _>(array, name, |d| {
                d.checked_sub(PG_EPOCH_DAYS)
            })?),
            DataType::Date64 => Reader::Days(convert::<Date64Type, _>(array, name, |ms| {
                i32::try_from(ms.div_euclid(86_400_000))
                    .ok()?
                    .checked_sub(PG_EPOCH_DAYS)
            })?),
            DataType::Timestamp(unit, _) => Reader::Micros(match unit {
                TimeUnit::Second => convert::<TimestampSecondType, _>(array, name, |v| {
                    since_pg_epoch(v.checked_mul(1_000_000))
                })?,
                TimeUnit::Millisecond => {
                    convert::<TimestampMillisecondType, _>(array, name, |v| {
                        since_pg_epoch(v.checked_mul(1_000))
                    })?
                }
                TimeUnit::Microsecond => {
                    convert::<TimestampMicrosecondType, _>(array, name, |v| {
                        since_pg_epoch(Some(v))
                    })?
                }
                TimeUnit::Nanosecond => convert::<TimestampNanosecondType, _>(array, name, |v| {
                    since_pg_epoch(Some(v.div_euclid(1_000)))
                })?,
            }),
            DataType::Time32(TimeUnit::Second) => {
                Reader::Micros(convert::<Time32SecondType, _>(array, name, |v| {
                    i64::from(v).checked_mul(1_000_000)
                })?)
            }
            DataType::Time32(_) => {
                Reader::Micros(convert::<Time32MillisecondType, _>(array, name, |v| {
                    i64::from(v).checked_mul(1_000)
                })?)
            }
            DataType::Time64(TimeUnit::Nanosecond) => {
                Reader::Micros(convert::<Time64NanosecondType, _>(array, name, |v| {
                    Some(v.div_euclid(1_000))
                })?)
            }
            DataType::Time64(_) => {
                Reader::Micros(convert::<Time64MicrosecondType, _>(array, name, Some)?)
            }
            DataType::List(item) => {
                let list = array.as_list_opt::<i32>().ok_or_else(bad)?;
                let values = list.values().as_ref();
                Reader::List(
                    list.value_offsets(),
                    array,
                    Box::new(Reader::new(values, item)?),
                )
            }
            DataType::LargeList(item) => {
                let list = array.as_list_opt::<i64>().ok_or_else(bad)?;
                let values = list.values().as_ref();
                Reader::LargeList(
                    list.value_offsets(),
                    array,
                    Box::new(Reader::new(values, item)?),
                )
            }
            other => {
                return Err(format!(
                    "column {name:?} has Arrow type {other}, which the Postgres offline store does not map"
                ));
            }
        })
    }

    fn cell(&self, row: usize) -> Cell<'_> {
        fn get<'x, A: Array, T>(a: &'x A, row: usize, f: impl Fn(&'x A) -> T) -> Option<T> {
            (!a.is_null(row)).then(|| f(a))
        }
        let cell = match self {
            Reader::Bool(a) => get(*a, row, |a| Cell::Bool(a.value(row))),
            Reader::I8(a) => get(*a, row, |a| Cell::I16(a.value(row).into())),
            Reader::I16(a) => get(*a, row, |a| Cell::I16(a.value(row))),
            Reader::I32(a) => get(*a, row, |a| Cell::I32(a.value(row))),
            Reader::I64(a) => get(*a, row, |a| Cell::I64(a.value(row))),
            Reader::U8(a) => get(*a, row, |a| Cell::I16(a.value(row).into())),
            Reader::U16(a) => get(*a, row, |a| Cell::I32(a.value(row).into())),
            Reader::U32(a) => get(*a, row, |a| Cell::I64(a.value(row).into())),
            // Checked in `new`: every value fits.
            Reader::U64(a) => get(*a, row, |a| {
                Cell::I64(i64::try_from(a.value(row)).unwrap_or(i64::MAX))
            }),
            Reader::F32(a) => get(*a, row, |a| Cell::F32(a.value(row))),
            Reader::F64(a) => get(*a, row, |a| Cell::F64(a.value(row))),
            Reader::Utf8(a) => get(*a, row, |a| Cell::Text(a.value(row))),
            Reader::LargeUtf8(a) => get(*a, row, |a| Cell::Text(a.value(row))),
            Reader::Utf8View(a) => get(*a, row, |a| Cell::Text(a.value(row))),
            Reader::Json(inner) => match inner.cell(row) {
                Cell::Text(s) => Some(Cell::Json(s)),
                _ => None,
            },
            Reader::Bin(a) => get(*a, row, |a| Cell::Bytes(a.value(row))),
            Reader::LargeBin(a) => get(*a, row, |a| Cell::Bytes(a.value(row))),
            Reader::BinView(a) => get(*a, row, |a| Cell::Bytes(a.value(row))),
            Reader::FixedBin(a) => get(*a, row, |a| Cell::Bytes(a.value(row))),
            Reader::Dec128(a) => get(*a, row, |a| Cell::OwnedText(a.value_as_string(row))),
            Reader::Dec256(a) => get(*a, row, |a| Cell::OwnedText(a.value_as_string(row))),
            Reader::Days(v) => v.get(row).copied().flatten().map(Cell::Date),
            Reader::Micros(v) => v.get(row).copied().flatten().map(Cell::Micros),
            Reader::List(offsets, list, items) => list_cell(offsets, *list, items, row),
            Reader::LargeList(offsets, list, items) => list_cell(offsets, *list, items, row),
        };
        cell.unwrap_or(Cell::Null)
    }
}

fn list_cell<'s, O: OffsetSizeTrait>(
    offsets: &[O],
    list: &dyn Array,
    items: &'s Reader<'_>,
    row: usize,
) -> Option<Cell<'s>> {
    if list.is_null(row) {
        return None;
    }
    let start = offsets.get(row)?.as_usize();
    let end = offsets.get(row + 1)?.as_usize();
    Some(Cell::Array((start..end).map(|i| items.cell(i)).collect()))
}

/// Dictionary-encoded columns (pandas categoricals) as plain columns.
pub fn normalize(batch: &RecordBatch) -> Result<RecordBatch, String> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match column.as_any_dictionary_opt() {
            Some(dict) => {
                let plain = arrow_select::take::take(dict.values().as_ref(), dict.keys(), None)
                    .map_err(|e| format!("column {:?}: {e}", field.name()))?;
                fields.push(
                    field
                        .as_ref()
                        .clone()
                        .with_data_type(plain.data_type().clone()),
                );
                columns.push(plain);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// The rows of one batch, ready to stream: `columns` are (index in the
/// batch, field) pairs in COPY column order.
pub struct Rows<'a> {
    readers: Vec<Reader<'a>>,
    len: usize,
}

impl<'a> Rows<'a> {
    pub fn new(batch: &'a RecordBatch, columns: &[usize]) -> Result<Rows<'a>, String> {
        let schema = batch.schema_ref();
        let readers = columns
            .iter()
            .map(|i| Reader::new(batch.column(*i).as_ref(), schema.field(*i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rows {
            readers,
            len: batch.num_rows(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes every row to `writer`.
    pub async fn copy(
        &self,
        mut writer: Pin<&mut BinaryCopyInWriter>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut cells = Vec::with_capacity(self.readers.len());
        for row in 0..self.len {
            cells.clear();
            cells.extend(self.readers.iter().map(|r| r.cell(row)));
            writer.as_mut().write_raw(cells.iter()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{
        DictionaryArray, Int64Array, StringArray, TimestampMicrosecondArray, UInt64Array,
    };

    fn encode(cell: &Cell<'_>, ty: &Type) -> Vec<u8> {
        let mut out = BytesMut::new();
        match cell.to_sql_checked(ty, &mut out) {
            Ok(IsNull::No) => out.to_vec(),
            _ => b"NULL".to_vec(),
        }
    }

    #[test]
    fn cells_use_postgres_binary_encodings() {
        assert_eq!(encode(&Cell::I64(1), &Type::INT8), 1i64.to_be_bytes());
        // 2000-01-02 is day 1 of Postgres' epoch.
        assert_eq!(encode(&Cell::Date(1), &Type::DATE), 1i32.to_be_bytes());
        assert_eq!(encode(&Cell::Json("{}"), &Type::JSONB), b"\x01{}");
        assert_eq!(encode(&Cell::Null, &Type::TEXT), b"NULL");
        let arr = encode(
            &Cell::Array(vec![Cell::Text("a"), Cell::Null]),
            &Type::TEXT_ARRAY,
        );
        // ndim 1, has nulls, element oid 25 (text), 2 elements from 1, then "a" and NULL.
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 25, 0, 0, 0, 2, 0, 0, 0, 1];
        want.extend([0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(arr, want);
    }

    #[test]
    fn readers_convert_times_to_postgres_epoch_and_keep_nulls() -> Result<(), String> {
        let ts = TimestampMicrosecondArray::from(vec![Some(PG_EPOCH_MICROS + 5), None]);
        let field = Field::new("t", ts.data_type().clone(), true);
        let r = Reader::new(&ts, &field)?;
        assert!(matches!(r.cell(0), Cell::Micros(5)));
        assert!(matches!(r.cell(1), Cell::Null));
        Ok(())
    }

    #[test]
    fn out_of_range_values_are_found_before_any_sql() {
        let big = UInt64Array::from(vec![1, u64::MAX]);
        let err = Reader::new(&big, &Field::new("n", DataType::UInt64, true))
            .err()
            .unwrap_or_default();
        assert!(err.contains("row 1"), "{err}");
        let far = arrow_array::TimestampSecondArray::from(vec![i64::MAX]);
        let field = Field::new("t", far.data_type().clone(), true);
        assert!(Reader::new(&far, &field).is_err());
    }

    #[test]
    fn lists_and_dictionaries() -> Result<(), Box<dyn std::error::Error>> {
        let mut b = ListBuilder::new(StringBuilder::new());
        b.values().append_value("t1");
        b.values().append_value("t2");
        b.append(true);
        b.append(false);
        let list = b.finish();
        let field = Field::new("tables", list.data_type().clone(), true);
        let r = Reader::new(&list, &field)?;
        match r.cell(0) {
            Cell::Array(items) => assert!(matches!(
                items.as_slice(),
                [Cell::Text("t1"), Cell::Text("t2")]
            )),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.cell(1), Cell::Null));

        let dict: DictionaryArray<Int32Type> =
            vec![Some("x"), None, Some("x")].into_iter().collect();
        let batch = RecordBatch::try_from_iter([
            ("d", Arc::new(dict) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ])?;
        let plain = normalize(&batch)?;
        let col = plain.column(0).as_string_opt::<i32>().ok_or("not utf8")?;
        assert_eq!(col, &StringArray::from(vec![Some("x"), None, Some("x")]));
        Ok(())
    }
}
