//! One [`Sink`] for the three offline writer types: a [`Decoder`] (what the
//! bus message is) combined with an [`OfflineStore`] (where rows go).
//!
//! `decode` runs per message and is synchronous; `prepare` runs per batch and
//! may do I/O (the bulk writer fetches its parquet objects there). The sink
//! then applies the query-log drop ratio and loads. When the store refuses a
//! load merged from several messages, each message's part is loaded on its
//! own so only the faulty messages are dead-lettered.

use super::drop_ratio::{self, QUERY_LOG};
use super::object::ObjectLoad;
use super::{OfflineStore, TableRows};
use crate::writer::runtime::sink::{Rejected, Sink, WriterError};
use arrow_select::filter::filter_record_batch;
use std::future::Future;

/// Turns bus messages into loads for an offline store.
pub trait Decoder: Send + Sync + 'static {
    /// What one message decodes to (kept until the batch is written).
    type Item: Send + Sync + 'static;

    /// Decodes one message; an error makes it poison (dead-lettered as is).
    fn decode(&self, payload: &[u8]) -> Result<Vec<Self::Item>, String>;

    /// Turns one batch of items into loads. Items refused for good (a missing
    /// object) are returned as rejected; an unreachable dependency fails the
    /// whole batch with [`WriterError::Retriable`].
    fn prepare(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Prepared, WriterError>> + Send;
}

/// The loads of one batch, and the items that cannot be loaded at all.
#[derive(Debug, Default)]
pub struct Prepared {
    pub loads: Vec<Load>,
    /// Whole objects, each loaded on its own, with the item it came from.
    pub objects: Vec<(usize, ObjectLoad)>,
    /// `record` indexes the items passed to `prepare`.
    pub rejected: Vec<Rejected>,
}

/// Rows for one table and the items they came from.
#[derive(Debug, Clone)]
pub struct Load {
    pub rows: TableRows,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Every row came from this item.
    Item(usize),
    /// Row `i` came from item `rows[i]`; items never decrease, so each item's
    /// rows are contiguous. Merged loads carry no idempotency key: their rows
    /// have their own unique keys.
    Rows(Vec<usize>),
}

/// The offline writer: `decoder` in front of `store`.
pub struct OfflineSink<D, S> {
    decoder: D,
    store: S,
    /// `query_table_write_drop_ratio`, 0.0..=1.0.
    drop_ratio: f64,
}

impl<D: Decoder, S: OfflineStore> OfflineSink<D, S> {
    pub fn new(decoder: D, store: S, drop_ratio: f64) -> Self {
        OfflineSink {
            decoder,
            store,
            drop_ratio: drop_ratio.clamp(0.0, 1.0),
        }
    }

    /// Drops the sampled-out rows of a `query_log` load; `None` when none remain.
    fn sample(&self, load: Load) -> Option<Load> {
        if load.rows.table != QUERY_LOG {
            return Some(load);
        }
        let Some(mask) = drop_ratio::mask(&load.rows.batch, self.drop_ratio) else {
            return Some(load);
        };
        // The mask is built from this batch, so its length always matches.
        let batch = filter_record_batch(&load.rows.batch, &mask).ok()?;
        if batch.num_rows() == 0 {
            return None;
        }
        let origin = match load.origin {
            Origin::Item(i) => Origin::Item(i),
            Origin::Rows(items) => Origin::Rows(
                items
                    .into_iter()
                    .zip(mask.iter())
                    .filter(|(_, keep)| keep.unwrap_or(true))
                    .map(|(item, _)| item)
                    .collect(),
            ),
        };
        Some(Load {
            rows: TableRows { batch, ..load.rows },
            origin,
        })
    }

    /// Loads everything; returns the refused items.
    async fn load(&self, loads: Vec<Load>) -> Result<Vec<Rejected>, WriterError> {
        let mut refused = Vec::new();
        let mut retry = Vec::new();
        for (load, reason) in self.load_once(&loads).await? {
            match &load.origin {
                Origin::Item(i) => refused.push(Rejected { record: *i, reason }),
                Origin::Rows(_) => {
                    let parts = split_by_item(load);
                    if let [only] = parts.as_slice()
                        && let Origin::Item(i) = only.origin
                    {
                        refused.push(Rejected { record: i, reason });
                    } else {
                        retry.extend(parts);
                    }
                }
            }
        }
        if !retry.is_empty() {
            for (load, reason) in self.load_once(&retry).await? {
                if let Origin::Item(i) = load.origin {
                    refused.push(Rejected { record: i, reason });
                }
            }
        }
        Ok(refused)
    }

    async fn load_once<'a>(
        &self,
        loads: &'a [Load],
    ) -> Result<Vec<(&'a Load, String)>, WriterError> {
        if loads.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<TableRows> = loads.iter().map(|l| l.rows.clone()).collect();
        Ok(self
            .store
            .load(&rows)
            .await?
            .into_iter()
            .filter_map(|r| loads.get(r.record).map(|l| (l, r.reason)))
            .collect())
    }
}

/// One load per item of a merged load (zero-copy slices of its batch).
fn split_by_item(load: &Load) -> Vec<Load> {
    let Origin::Rows(items) = &load.origin else {
        return vec![load.clone()];
    };
    let mut parts = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let item = items[start];
        let end = start + items[start..].iter().take_while(|i| **i == item).count();
        parts.push(Load {
            rows: TableRows {
                table: load.rows.table.clone(),
                batch: load.rows.batch.slice(start, end - start),
                idempotency_key: None,
            },
            origin: Origin::Item(item),
        });
        start = end;
    }
    parts
}

impl<D: Decoder, S: OfflineStore> Sink for OfflineSink<D, S> {
    type Record = D::Item;

    // Every offline store inserts only keys it does not hold yet (observation
    // ids, idempotency keys), so two batches' loads commute: the next batch is
    // prepared and loaded while the previous transaction commits.
    const OVERLAPPING_WRITES: bool = true;

    // A load is a transaction (Postgres) or a job (BigQuery, Snowflake):
    // under backlog, batches of up to 8 × BGP_MAX_BATCH_SIZE amortise it
    // (docs/benchmarks.md, "Kafka → Postgres").
    const BACKLOG_GROWTH: usize = 8;

    fn decode(&self, payload: &[u8]) -> Result<Vec<D::Item>, WriterError> {
        self.decoder.decode(payload).map_err(WriterError::Decode)
    }

    async fn write(&self, records: &[D::Item]) -> Result<Vec<Rejected>, WriterError> {
        let Prepared {
            loads,
            objects,
            mut rejected,
        } = self.decoder.prepare(records).await?;
        let loads: Vec<Load> = loads.into_iter().filter_map(|l| self.sample(l)).collect();
        rejected.extend(self.load(loads).await?);
        for (record, object) in objects {
            let object = object.sampled(self.drop_ratio);
            if let Some(reason) = self.store.load_object(&object).await? {
                rejected.push(Rejected { record, reason });
            }
        }
        // One reason per item is enough: the runtime dead-letters messages.
        let mut seen = std::collections::HashSet::new();
        rejected.retain(|r| seen.insert(r.record));
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use std::sync::{Arc, Mutex};

    /// Refuses any entry holding a negative `n`, records what it was given.
    #[derive(Default)]
    struct PickyStore {
        calls: Mutex<Vec<Vec<usize>>>,
    }

    impl OfflineStore for PickyStore {
        async fn load(&self, rows: &[TableRows]) -> Result<Vec<Rejected>, WriterError> {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(rows.iter().map(|r| r.batch.num_rows()).collect());
            }
            Ok(rows
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .is_some_and(|a| a.values().iter().any(|v| *v < 0))
                })
                .map(|(i, _)| Rejected {
                    record: i,
                    reason: "negative".into(),
                })
                .collect())
        }
    }

    /// Items are lists of numbers, all merged into one load.
    struct Numbers;

    impl Decoder for Numbers {
        type Item = Vec<i64>;
        fn decode(&self, _: &[u8]) -> Result<Vec<Vec<i64>>, String> {
            Ok(vec![])
        }
        async fn prepare(&self, items: &[Vec<i64>]) -> Result<Prepared, WriterError> {
            let values: Vec<i64> = items.iter().flatten().copied().collect();
            let owners = items
                .iter()
                .enumerate()
                .flat_map(|(i, v)| std::iter::repeat_n(i, v.len()))
                .collect();
            let batch =
                RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(values)) as _)])
                    .map_err(|e| WriterError::Retriable(e.to_string()))?;
            Ok(Prepared {
                loads: vec![Load {
                    rows: TableRows {
                        table: "numbers".into(),
                        batch,
                        idempotency_key: None,
                    },
                    origin: Origin::Rows(owners),
                }],
                ..Prepared::default()
            })
        }
    }

    #[tokio::test]
    async fn a_refused_merged_load_is_retried_per_item() -> Result<(), WriterError> {
        let sink = OfflineSink::new(Numbers, PickyStore::default(), 0.0);
        let items = vec![vec![1, 2], vec![3, -4, 5], vec![6], vec![-7]];
        let rejected = sink.write(&items).await?;
        let refused: Vec<usize> = rejected.iter().map(|r| r.record).collect();
        assert_eq!(refused, [1, 3]);
        let calls = sink
            .store
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        assert_eq!(calls, [vec![7], vec![2, 3, 1, 1]]);
        Ok(())
    }

    #[tokio::test]
    async fn query_log_rows_are_sampled_and_others_untouched() -> Result<(), WriterError> {
        let batch = |table: &str| -> Result<Load, WriterError> {
            let ids = StringArray::from(vec!["a", "b", "c"]);
            Ok(Load {
                rows: TableRows {
                    table: table.into(),
                    batch: RecordBatch::try_from_iter([("operation_id", Arc::new(ids) as _)])
                        .map_err(|e| WriterError::Retriable(e.to_string()))?,
                    idempotency_key: None,
                },
                origin: Origin::Rows(vec![0, 1, 1]),
            })
        };
        let all = OfflineSink::new(Numbers, PickyStore::default(), 1.0);
        assert!(all.sample(batch(QUERY_LOG)?).is_none());
        assert_eq!(
            all.sample(batch("user__age")?)
                .map(|l| l.rows.batch.num_rows()),
            Some(3)
        );
        let none = OfflineSink::new(Numbers, PickyStore::default(), 0.0);
        let kept = none.sample(batch(QUERY_LOG)?).map(|l| l.origin);
        assert_eq!(kept, Some(Origin::Rows(vec![0, 1, 1])));
        Ok(())
    }
}
