//! Bus message decoders and parquet objects: arbitrary bytes, and valid
//! messages with bytes flipped, cut or appended, never panic; a refusal is a
//! non-empty reason (what the dead letter carries).

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use bgpersist::writer::stores::offline::parquet;
use bgpersist::writer::types::{
    metrics_bus_writer, metrics_writer, offline_store_bulk_insert_writer,
    offline_store_streaming_insert_writer, offline_writer, online_vector_store_writer,
    online_writer, query_mirror_consumer, usage_bus_writer,
};
use proptest::prelude::*;

/// A decoder as one function: Ok(()) or the reason it refused.
type Decode = fn(&[u8]) -> Result<(), String>;

/// Every decoder, by name.
fn decoders() -> Vec<(&'static str, Decode)> {
    vec![
        ("online", |b| online_writer::decode(b).map(drop)),
        ("vector", |b| {
            online_vector_store_writer::decode(b).map(drop)
        }),
        ("offline", |b| offline_writer::decode(b).map(drop)),
        ("metrics bus", |b| metrics_bus_writer::decode(b).map(drop)),
        ("metrics", |b| metrics_writer::parse(b).map(drop)),
        ("usage", |b| usage_bus_writer::decode(b).map(drop)),
        ("mirror", |b| query_mirror_consumer::decode(b).map(drop)),
        ("streaming insert", |b| {
            offline_store_streaming_insert_writer::decode(b).map(drop)
        }),
        ("bulk insert", |b| {
            offline_store_bulk_insert_writer::BulkDecoder::new(Some("s3://uploads"))
                .decode(b)
                .map(drop)
        }),
    ]
}

/// A valid result message with `n` values, the shape most buses carry.
fn result_message(n: usize) -> Vec<u8> {
    ResultMessage {
        operation_id: "op-1".into(),
        values: (0..n)
            .map(|i| FeatureValue {
                namespace: "user".into(),
                feature: format!("f{i}"),
                pkey: format!("k{i}"),
                value: Some(Value {
                    kind: Some(Kind::IntValue(i as i64)),
                }),
                observed_at_micros: 1_700_000_000_000_000 + i as i64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `base` with one of: a byte flipped, cut short, or bytes appended.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    (
        0..3u8,
        0..len,
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(how, at, byte, tail)| {
            let mut b = base.clone();
            match how {
                0 if !b.is_empty() => {
                    let i = at % b.len();
                    b[i] ^= byte | 1;
                }
                1 => b.truncate(at),
                _ => b.extend(tail),
            }
            b
        })
}

fn refusal_is_said(name: &str, result: Result<(), String>) {
    if let Err(reason) = result {
        assert!(!reason.trim().is_empty(), "{name}: an empty refusal");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for (name, decode) in decoders() {
            refusal_is_said(name, decode(&bytes));
        }
    }

    #[test]
    fn damaged_result_messages_never_panic_a_decoder(bytes in mutated(result_message(3))) {
        for (name, decode) in decoders() {
            refusal_is_said(name, decode(&bytes));
        }
    }
}

/// A small valid parquet object: two columns, `rows` rows.
fn parquet_object(rows: usize) -> Vec<u8> {
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..rows as i64)) as _,
        ),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("n{i}")),
            )) as _,
        ),
    ])
    .expect("a valid batch");
    let mut out = Vec::new();
    let mut writer = ::parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)
        .expect("a parquet writer");
    writer.write(&batch).expect("written");
    writer.close().expect("closed");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn damaged_parquet_objects_are_refused_not_panicked_on(bytes in mutated(parquet_object(20))) {
        if let Err(reason) = parquet::read(bytes::Bytes::from(bytes)) {
            prop_assert!(!reason.trim().is_empty());
        }
    }
}

#[test]
fn an_intact_parquet_object_is_read() {
    let batch = parquet::read(bytes::Bytes::from(parquet_object(20))).expect("readable");
    assert_eq!(batch.num_rows(), 20);
}
