//! OFFLINE_STORE_STREAMING_INSERT_WRITER: `StreamingInsertMessage`s (parquet
//! bytes, a table and an idempotency key) into that table.

use crate::formats::Message;
use crate::formats::v1::StreamingInsertMessage;
use crate::writer::runtime::sink::WriterError;
use crate::writer::stores::offline::sink::{Decoder, Load, Origin, Prepared};
use crate::writer::stores::offline::{TableRows, ident, parquet};
use bytes::Bytes;
use sha2::{Digest, Sha256};

#[derive(Debug, Default, Clone, Copy)]
pub struct StreamingDecoder;

/// The key of a message sent without one: a hash of its table and bytes, so
/// the same message replayed is recognised.
pub fn derived_key(table: &str, parquet: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(table.as_bytes());
    h.update([0u8]);
    h.update(parquet);
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

pub fn decode(payload: &[u8]) -> Result<Vec<TableRows>, String> {
    let msg = StreamingInsertMessage::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.StreamingInsertMessage: {e}"))?;
    ident::check_table(&msg.table)?;
    let key = if msg.idempotency_key.is_empty() {
        derived_key(&msg.table, &msg.parquet)
    } else {
        msg.idempotency_key
    };
    let batch =
        parquet::read(Bytes::from(msg.parquet)).map_err(|e| format!("{}: {e}", msg.table))?;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![TableRows {
        table: msg.table,
        batch,
        idempotency_key: Some(key),
    }])
}

impl Decoder for StreamingDecoder {
    type Item = TableRows;

    fn decode(&self, payload: &[u8]) -> Result<Vec<TableRows>, String> {
        decode(payload)
    }

    async fn prepare(&self, items: &[TableRows]) -> Result<Prepared, WriterError> {
        Ok(Prepared {
            loads: items
                .iter()
                .enumerate()
                .map(|(i, rows)| Load {
                    rows: rows.clone(),
                    origin: Origin::Item(i),
                })
                .collect(),
            ..Prepared::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::stores::offline::parquet::tests::to_parquet;
    use arrow_array::{Int64Array, RecordBatch};
    use std::sync::Arc;

    fn message(table: &str, parquet: Vec<u8>, key: &str) -> Vec<u8> {
        StreamingInsertMessage {
            table: table.into(),
            parquet,
            idempotency_key: key.into(),
        }
        .encode_to_vec()
    }

    fn body() -> Result<Vec<u8>, arrow_schema::ArrowError> {
        let batch =
            RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as _)])?;
        Ok(to_parquet(&batch))
    }

    #[test]
    fn decodes_rows_table_and_key() -> Result<(), Box<dyn std::error::Error>> {
        let rows = decode(&message("events", body()?, "k-1"))?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].table, "events");
        assert_eq!(rows[0].batch.num_rows(), 2);
        assert_eq!(rows[0].idempotency_key.as_deref(), Some("k-1"));
        let unkeyed = decode(&message("events", body()?, ""))?;
        let again = decode(&message("events", body()?, ""))?;
        assert_eq!(unkeyed[0].idempotency_key, again[0].idempotency_key);
        assert!(
            unkeyed[0]
                .idempotency_key
                .as_deref()
                .is_some_and(|k| k.starts_with("sha256:"))
        );
        Ok(())
    }

    #[test]
    fn refuses_malformed_bodies_and_hostile_tables() -> Result<(), Box<dyn std::error::Error>> {
        let err = decode(&message("events", b"garbage".to_vec(), "k"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("events: not a readable parquet file"), "{err}");
        let err = decode(&message("events\"; DROP TABLE x", body()?, "k"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("table name"), "{err}");
        assert!(decode(b"\xff\xff").is_err());
        Ok(())
    }
}
