//! ONLINE_VECTOR_STORE_WRITER: vector-bus embeddings into pgvector or Qdrant
//! (`stores::vector`, which holds what both stores share).

use crate::formats::Message;
use crate::formats::v1::VectorBatch;
use crate::writer::config::WriterConfig;
use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use crate::writer::stores::vector::{
    MAX_DIMENSIONS, RESERVED_PREFIX, Store, VectorError, VectorPoint, valid_collection,
};
use sha2::{Digest, Sha256};

/// The vector-bus writer: decodes [`VectorBatch`]es, writes them to [`Store`].
pub struct VectorSink(Store);

impl VectorSink {
    /// The store named by `uri` (see [`Store::open`]).
    pub fn open(uri: &str, cfg: &WriterConfig) -> Result<Self, VectorError> {
        Store::open(uri, cfg).map(VectorSink)
    }
}

impl Sink for VectorSink {
    type Record = VectorPoint;

    fn decode(&self, payload: &[u8]) -> Result<Vec<VectorPoint>, WriterError> {
        decode(payload).map_err(WriterError::Decode)
    }

    async fn write(&self, records: &[VectorPoint]) -> Result<Vec<Rejected>, WriterError> {
        self.0.write(records).await
    }
}

/// Decodes a vector-bus message; any malformed record makes the whole message poison.
pub fn decode(payload: &[u8]) -> Result<Vec<VectorPoint>, String> {
    let batch = VectorBatch::decode(payload)
        .map_err(|e| format!("not a bgpersist.bus.v1.VectorBatch: {e}"))?;
    let mut out = Vec::with_capacity(batch.records.len());
    for (i, r) in batch.records.into_iter().enumerate() {
        let at = |what: String| format!("records[{i}] ({}/{}): {what}", r.collection, r.id);
        if !valid_collection(&r.collection) {
            return Err(at(
                "collection must be 1-63 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
            ));
        }
        if r.id.is_empty() || r.id.len() > 1024 {
            return Err(at("id must be 1-1024 bytes".into()));
        }
        if r.embedding.is_empty() || r.embedding.len() > MAX_DIMENSIONS {
            return Err(at(format!(
                "embedding must have 1-{MAX_DIMENSIONS} values, has {}",
                r.embedding.len()
            )));
        }
        if let Some(pos) = r.embedding.iter().position(|v| !v.is_finite()) {
            return Err(at(format!("embedding[{pos}] is not a finite number")));
        }
        let metadata = if r.metadata_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str(&r.metadata_json) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => return Err(at("metadata_json is not a JSON object".into())),
                Err(e) => return Err(at(format!("metadata_json is not JSON: {e}"))),
            }
        };
        if let Some(k) = metadata.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            return Err(at(format!(
                "metadata key {k:?} uses the reserved prefix {RESERVED_PREFIX}"
            )));
        }
        let mut hash = Sha256::new();
        for v in &r.embedding {
            hash.update(v.to_le_bytes());
        }
        hash.update(serde_json::Value::Object(metadata.clone()).to_string());
        out.push(VectorPoint {
            content_sha256: hash.finalize().into(),
            collection: r.collection,
            id: r.id,
            embedding: r.embedding,
            metadata,
            observed_at_micros: r.observed_at_micros,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::VectorRecord;
    use crate::writer::stores::vector::newest_per_id;

    pub fn record(collection: &str, id: &str, embedding: &[f32], ts: i64) -> VectorRecord {
        VectorRecord {
            collection: collection.into(),
            id: id.into(),
            embedding: embedding.to_vec(),
            metadata_json: format!(r#"{{"ts": {ts}}}"#),
            observed_at_micros: ts,
        }
    }

    fn encode(records: Vec<VectorRecord>) -> Vec<u8> {
        VectorBatch { records }.encode_to_vec()
    }

    #[test]
    fn decodes_and_hashes_content() -> Result<(), String> {
        let pts = decode(&encode(vec![
            record("docs", "a", &[1.0, 2.0], 5),
            record("docs", "b", &[1.0, 2.0], 5),
            VectorRecord {
                metadata_json: String::new(),
                ..record("docs", "c", &[1.0, 2.0], 5)
            },
        ]))?;
        assert_eq!(pts.len(), 3);
        assert_eq!(pts[0].metadata.get("ts"), Some(&serde_json::json!(5)));
        // Same embedding and metadata: same hash, whatever the id.
        assert_eq!(pts[0].content_sha256, pts[1].content_sha256);
        assert_ne!(pts[0].content_sha256, pts[2].content_sha256);
        assert!(pts[2].metadata.is_empty());
        Ok(())
    }

    #[test]
    fn refuses_malformed_records() {
        assert!(decode(b"\xff\xff garbage").is_err());
        let bad = [
            record("", "a", &[1.0], 1),
            record("a/b", "a", &[1.0], 1),
            record("docs", "", &[1.0], 1),
            record("docs", "a", &[], 1),
            record("docs", "a", &[f32::NAN], 1),
            VectorRecord {
                metadata_json: "[1]".into(),
                ..record("docs", "a", &[1.0], 1)
            },
            VectorRecord {
                metadata_json: "{oops".into(),
                ..record("docs", "a", &[1.0], 1)
            },
            VectorRecord {
                metadata_json: r#"{"_bgp_id": 1}"#.into(),
                ..record("docs", "a", &[1.0], 1)
            },
        ];
        for r in bad {
            let payload = encode(vec![record("docs", "ok", &[1.0], 1), r.clone()]);
            assert!(decode(&payload).is_err(), "{r:?}");
        }
    }

    #[test]
    fn newest_per_id_does_not_depend_on_order() -> Result<(), String> {
        let pts = decode(&encode(vec![
            record("c", "x", &[1.0], 3),
            record("c", "x", &[2.0], 7),
            record("c", "y", &[1.0], 1),
            record("c", "x", &[3.0], 7),
            record("c", "x", &[4.0], 2),
        ]))?;
        let tie_winner = if pts[1].content_sha256 > pts[3].content_sha256 {
            1
        } else {
            3
        };
        for order in [
            vec![0, 1, 2, 3, 4],
            vec![4, 3, 2, 1, 0],
            vec![2, 3, 0, 4, 1],
        ] {
            let (mut winners, mut losers) = newest_per_id(&pts, &order);
            winners.sort_unstable();
            losers.sort_unstable();
            assert_eq!(winners, {
                let mut w = vec![tie_winner, 2];
                w.sort_unstable();
                w
            });
            assert_eq!(losers.len(), 3);
        }
        Ok(())
    }
}
