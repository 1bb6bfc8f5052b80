//! The vector stores (pgvector, Qdrant) and what they share.
//!
//! Both stores get the same treatment: per collection, the collection is
//! created on first use with the dimension of the first vector seen; a
//! vector of another dimension is refused (dead-lettered); within a batch
//! only the newest observation of an id is sent, and the store keeps a
//! stored point unless the incoming observation is newer, so replays and
//! reordering never roll a point back. Layouts: docs/mirror-and-vector.md.

pub mod pgvector;
pub mod qdrant;

use crate::writer::config::WriterConfig;
use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::uri::split_scheme;
use futures::StreamExt;
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
    Pg(#[from] crate::writer::stores::postgres::PgError),
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
pub enum Store {
    Pg(pgvector::PgVectorStore),
    Qdrant(qdrant::QdrantStore),
}

impl Store {
    /// `postgres://` / `postgresql://` → pgvector; `qdrant://`, `qdrants://`,
    /// `http://`, `https://` → Qdrant's REST API. Connects lazily.
    pub fn open(uri: &str, cfg: &WriterConfig) -> Result<Self, VectorError> {
        let (scheme, _) = split_scheme(uri);
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Store::Pg(pgvector::PgVectorStore::open(
                uri,
                cfg.concurrency,
            )?)),
            "qdrant" | "qdrants" | "http" | "https" => Ok(Store::Qdrant(
                qdrant::QdrantStore::open(uri, cfg.concurrency)?,
            )),
            _ => Err(VectorError::Uri(format!(
                "scheme {scheme:?} is not postgres, postgresql, qdrant, qdrants, http or https"
            ))),
        }
    }

    /// Writes a batch: one task per collection, up to the store's concurrency.
    pub async fn write(&self, records: &[VectorPoint]) -> Result<Vec<Rejected>, WriterError> {
        let mut by_collection: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_collection
                .entry(r.collection.clone())
                .or_default()
                .push(i);
        }
        // Boxed: the generic per-store futures are otherwise not provably Send.
        let writes: Vec<futures::future::BoxFuture<'_, Result<Vec<Rejected>, WriterError>>> =
            by_collection
                .into_iter()
                .map(|(c, idx)| match self {
                    Store::Pg(s) => {
                        Box::pin(async move { write_collection(s, &c, records, idx).await }) as _
                    }
                    Store::Qdrant(s) => {
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

    fn concurrency(&self) -> usize {
        match self {
            Store::Pg(s) => s.concurrency(),
            Store::Qdrant(s) => s.concurrency(),
        }
    }
}

fn retriable(e: StoreError) -> Result<String, WriterError> {
    match e {
        StoreError::Retriable(reason) => Err(WriterError::Retriable(reason)),
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
) -> Result<Vec<Rejected>, WriterError> {
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
) -> Result<Refreshed, WriterError> {
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
