//! ONLINE_VECTOR_STORE_WRITER: vector-bus embeddings into pgvector or Qdrant.
//!
//! Both stores get the same treatment: per collection, the collection is
//! created on first use with the dimension of the first vector seen; a
//! vector of another dimension is refused (dead-lettered); within a batch
//! only the newest observation of an id is sent, and the store keeps a
//! stored point unless the incoming observation is newer, so replays and
//! reordering never roll a point back. Layouts: docs/mirror-and-vector.md.

pub mod pgvector;
pub mod qdrant;

use crate::formats::Message;
use crate::formats::v1::VectorBatch;
use crate::writer::config::WriterConfig;
use crate::writer::sink::{Rejected, Sink, SinkError};
use crate::writer::store_uri::split_scheme;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;

/// Payload keys (Qdrant) the writer owns; metadata may not use the prefix.
pub const RESERVED_PREFIX: &str = "_bgp_";
/// pgvector's limit for the `vector` type.
pub const MAX_DIMENSIONS: usize = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The URI itself is never echoed: it may carry a password or API key.
    #[error("vector store URI: {0}")]
    Uri(String),
    #[error(transparent)]
    Pg(#[from] crate::writer::pg::PgError),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// One embedding bound for the vector store.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    pub collection: String,
    pub id: String,
    pub embedding: Vec<f32>,
    /// The metadata object (empty when the message had none).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub observed_at_micros: i64,
    /// SHA-256 of the embedding and metadata: breaks ties between equal
    /// observation times the same way in every store and every order.
    pub content_sha256: [u8; 32],
}

impl VectorPoint {
    /// Ordering of observations of one id: time, then content.
    pub fn version(&self) -> (i64, [u8; 32]) {
        (self.observed_at_micros, self.content_sha256)
    }
}

/// Collection names become table names and URL path segments.
pub fn valid_collection(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

/// Why a store did not take a write.
#[derive(Debug)]
pub enum StoreError {
    /// Unreachable, overloaded, credentials refused: retry later.
    Retriable(String),
    /// The store refuses these points for good.
    Refused(String),
}

/// What the shared write logic needs from pgvector and Qdrant.
pub trait VectorStore: Send + Sync {
    /// The collection's dimension; creates it with `wanted` when missing.
    fn dimension(
        &self,
        collection: &str,
        wanted: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// Drops what is cached about the collection (it may have changed).
    fn forget(&self, collection: &str);
    /// Writes each point unless the store holds a newer observation of its
    /// id. `points` have distinct ids and the collection's dimension.
    fn upsert(
        &self,
        collection: &str,
        points: &[&VectorPoint],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The vector store of this run, picked from the URI scheme.
pub enum VectorSink {
    Pg(pgvector::PgVectorStore),
    Qdrant(qdrant::QdrantStore),
}

impl VectorSink {
    /// `postgres://` / `postgresql://` → pgvector; `qdrant://`, `qdrants://`,
    /// `http://`, `https://` → Qdrant's REST API. Connects lazily.
    pub fn open(uri: &str, cfg: &WriterConfig) -> Result<Self, VectorError> {
        let (scheme, _) = split_scheme(uri);
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(VectorSink::Pg(pgvector::PgVectorStore::open(
                uri,
                cfg.concurrency,
            )?)),
            "qdrant" | "qdrants" | "http" | "https" => Ok(VectorSink::Qdrant(
                qdrant::QdrantStore::open(uri, cfg.concurrency)?,
            )),
            _ => Err(VectorError::Uri(format!(
                "scheme {scheme:?} is not postgres, postgresql, qdrant, qdrants, http or https"
            ))),
        }
    }

    fn concurrency(&self) -> usize {
        match self {
            VectorSink::Pg(s) => s.concurrency(),
            VectorSink::Qdrant(s) => s.concurrency(),
        }
    }
}

impl Sink for VectorSink {
    type Record = VectorPoint;

    fn decode(&self, payload: &[u8]) -> Result<Vec<VectorPoint>, String> {
        decode(payload)
    }

    async fn write(&self, records: &[VectorPoint]) -> Result<Vec<Rejected>, SinkError> {
        let mut by_collection: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_collection
                .entry(r.collection.clone())
                .or_default()
                .push(i);
        }
        // Boxed: the generic per-store futures are otherwise not provably Send.
        let writes: Vec<futures::future::BoxFuture<'_, Result<Vec<Rejected>, SinkError>>> =
            by_collection
                .into_iter()
                .map(|(c, idx)| match self {
                    VectorSink::Pg(s) => {
                        Box::pin(async move { write_collection(s, &c, records, idx).await }) as _
                    }
                    VectorSink::Qdrant(s) => {
                        Box::pin(async move { write_collection(s, &c, records, idx).await }) as _
                    }
                })
                .collect();
        let mut results = futures::stream::iter(writes).buffer_unordered(self.concurrency());
        let mut rejected = Vec::new();
        while let Some(r) = results.next().await {
            rejected.extend(r?);
        }
        Ok(rejected)
    }
}

fn retriable(e: StoreError) -> Result<String, SinkError> {
    match e {
        StoreError::Retriable(reason) => Err(SinkError::Retriable(reason)),
        StoreError::Refused(reason) => Ok(reason),
    }
}

/// Writes one collection's records: dimension check, newest per id, then
/// upserts; a refused upsert is split in halves until the refused points are
/// isolated, so one bad point does not take its neighbours to the DLQ.
pub async fn write_collection<S: VectorStore>(
    store: &S,
    collection: &str,
    records: &[VectorPoint],
    idx: Vec<usize>,
) -> Result<Vec<Rejected>, SinkError> {
    let wanted = records[idx[0]].embedding.len();
    let mut dim = match store.dimension(collection, wanted).await {
        Ok(d) => d,
        // The collection itself is refused (e.g. named vectors): all of it.
        Err(e) => return Ok(reject_all(&idx, &retriable(e)?)),
    };
    // The cached dimension is re-read once before anything is refused on
    // its account: the collection may have been recreated meanwhile.
    let mut refreshed = false;
    let mut rejected: Vec<Rejected> = Vec::new();
    'fit: loop {
        rejected.clear();
        let (fit, misfit): (Vec<usize>, Vec<usize>) = idx
            .iter()
            .partition(|&&i| records[i].embedding.len() == dim);
        if !misfit.is_empty() && !refreshed {
            refreshed = true;
            match refresh(store, collection, wanted, dim).await? {
                Refreshed::Changed(d) => {
                    dim = d;
                    continue 'fit;
                }
                Refreshed::Same => {}
                Refreshed::Refused(reason) => return Ok(reject_all(&idx, &reason)),
            }
        }
        for i in misfit {
            rejected.push(Rejected {
                record: i,
                reason: format!(
                    "collection {collection} holds vectors of dimension {dim}; this one has {}",
                    records[i].embedding.len()
                ),
            });
        }
        let (winners, losers) = newest_per_id(records, &fit);
        let mut parts: Vec<Vec<usize>> = vec![winners];
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            let points: Vec<&VectorPoint> = part.iter().map(|&i| &records[i]).collect();
            let Err(e) = store.upsert(collection, &points).await else {
                continue;
            };
            let reason = retriable(e)?;
            if !refreshed {
                refreshed = true;
                match refresh(store, collection, wanted, dim).await? {
                    Refreshed::Changed(d) => {
                        dim = d;
                        continue 'fit;
                    }
                    // Same dimension (a dropped table is back, say): try the part again whole.
                    Refreshed::Same => {
                        parts.push(part);
                        continue;
                    }
                    Refreshed::Refused(reason) => return Ok(reject_all(&idx, &reason)),
                }
            }
            if part.len() == 1 {
                let winner = &records[part[0]];
                rejected.push(Rejected {
                    record: part[0],
                    reason: reason.clone(),
                });
                // Older observations of the refused id share its fate.
                for &l in &losers {
                    if records[l].id == winner.id {
                        rejected.push(Rejected {
                            record: l,
                            reason: format!("a newer observation of this id was refused: {reason}"),
                        });
                    }
                }
            } else {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(a.to_vec());
                parts.push(b.to_vec());
            }
        }
        return Ok(rejected);
    }
}

enum Refreshed {
    Same,
    Changed(usize),
    Refused(String),
}

/// Forgets and re-reads the collection's dimension.
async fn refresh<S: VectorStore>(
    store: &S,
    collection: &str,
    wanted: usize,
    cached: usize,
) -> Result<Refreshed, SinkError> {
    store.forget(collection);
    Ok(match store.dimension(collection, wanted).await {
        Ok(d) if d == cached => Refreshed::Same,
        Ok(d) => Refreshed::Changed(d),
        Err(e) => Refreshed::Refused(retriable(e)?),
    })
}

fn reject_all(idx: &[usize], reason: &str) -> Vec<Rejected> {
    idx.iter()
        .map(|&record| Rejected {
            record,
            reason: reason.to_string(),
        })
        .collect()
}

/// Splits `idx` into the newest observation of each id (first) and the
/// older ones it supersedes (second). Same order of winners whatever the
/// order of `idx`.
pub fn newest_per_id(records: &[VectorPoint], idx: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut best: HashMap<&str, usize> = HashMap::with_capacity(idx.len());
    let mut losers = Vec::new();
    for &i in idx {
        let r = &records[i];
        match best.get_mut(r.id.as_str()) {
            None => {
                best.insert(&r.id, i);
            }
            Some(cur) if records[*cur].version() < r.version() => {
                losers.push(*cur);
                *cur = i;
            }
            Some(_) => losers.push(i),
        }
    }
    let mut winners: Vec<usize> = best.into_values().collect();
    winners.sort_unstable();
    (winners, losers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::v1::VectorRecord;

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
