//! How a batch becomes script calls: records grouped by entity, each
//! entity's fields made distinct, entities grouped by hash slot on a cluster
//! (the keys of one call must share a slot) and cut into calls of bounded
//! size, each encoded as one MessagePack argument for `newer_wins.lua`.

use crate::writer::stores::online::OnlineRecord;
use redis::cluster_routing::Slot;
use rmp::encode::{self as mp, ByteBuf, ValueWriteError};
use std::collections::HashMap;
use std::convert::Infallible;

/// Most entities in one call: amortises the call's own cost (a few µs)
/// while one call still keeps Redis busy for well under a millisecond.
pub const MAX_ENTITIES: usize = 50;
/// Most feature values in one call, whatever the entities.
pub const MAX_VALUES: usize = 1000;

/// One entity's part of a call: distinct fields of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    /// The records written, one per field.
    pub written: Vec<usize>,
    /// Records of the entity that lose to `written` on time and are not
    /// sent; rejected with it when the key holds another type.
    pub moot: Vec<usize>,
    pub ttl: i64,
}

impl Entry {
    /// Every record this entry answers for.
    pub fn covers(&self) -> impl Iterator<Item = usize> + '_ {
        self.written.iter().chain(&self.moot).copied()
    }
}

/// One script call: entries whose keys share a hash slot.
pub type Call = Vec<Entry>;

/// Whether `a` (ts, value) beats `b` in the script: the larger time, read as
/// a double like Lua's `tonumber`; an equal time is left to the script,
/// which compares values.
fn strictly_newer(a: i64, b: i64) -> bool {
    (a as f64) > (b as f64)
}

/// The entries of one entity (its records by index). Records whose time is
/// below another's for the same field can never win and are dropped; records
/// tied on the newest time go to separate entries, since one entry's fields
/// are read before any is written.
fn entity_entries(key: String, idx: Vec<usize>, records: &[OnlineRecord]) -> Vec<Entry> {
    let ttl = idx
        .iter()
        .map(|&i| records[i].ttl_seconds)
        .max()
        .unwrap_or(0);
    // The common case, checked without allocating: distinct fields, few.
    let distinct = idx.len() <= 32
        && idx.iter().enumerate().all(|(n, &i)| {
            idx[..n]
                .iter()
                .all(|&j| records[j].field != records[i].field)
        });
    if distinct {
        return vec![Entry {
            key,
            written: idx,
            moot: Vec::new(),
            ttl,
        }];
    }
    // Per field, the records holding its newest time, in arrival order.
    let mut order: Vec<&str> = Vec::new();
    let mut newest: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &idx {
        let r = &records[i];
        match newest.get_mut(r.field.as_str()) {
            None => {
                order.push(&r.field);
                newest.insert(&r.field, vec![i]);
            }
            Some(best) => {
                let top = records[best[0]].observed_at_micros;
                if strictly_newer(r.observed_at_micros, top) {
                    *best = vec![i];
                } else if !strictly_newer(top, r.observed_at_micros) {
                    best.push(i);
                }
            }
        }
    }
    // Round r holds the r-th tied record of each field, cut to MAX_VALUES.
    let mut entries: Vec<Entry> = Vec::new();
    let mut round = 0;
    loop {
        let written: Vec<usize> = order
            .iter()
            .filter_map(|f| newest.get(f).and_then(|b| b.get(round)).copied())
            .collect();
        if written.is_empty() {
            break;
        }
        for part in written.chunks(MAX_VALUES) {
            entries.push(Entry {
                key: key.clone(),
                written: part.to_vec(),
                moot: Vec::new(),
                ttl,
            });
        }
        round += 1;
    }
    // The first entry answers for the records that were dropped.
    if let Some(first) = entries.first_mut() {
        first.moot = idx
            .iter()
            .copied()
            .filter(|i| {
                !newest
                    .get(records[*i].field.as_str())
                    .is_some_and(|b| b.contains(i))
            })
            .collect();
    }
    entries
}

/// The calls for `records`, each entity's hash named by `key`, which must
/// depend on the record's namespace and pkey only (it is asked once per
/// entity); on a cluster, only keys of one slot share a call.
pub fn plan(
    records: &[OnlineRecord],
    key: impl Fn(&OnlineRecord) -> String,
    clustered: bool,
) -> Vec<Call> {
    // Entities in arrival order, found by (namespace, pkey) without building keys.
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut entities: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match index.get(&(r.namespace.as_str(), r.pkey.as_str())) {
            Some(&e) => entities[e].1.push(i),
            None => {
                index.insert((&r.namespace, &r.pkey), entities.len());
                entities.push((i, vec![i]));
            }
        }
    }
    let mut groups: HashMap<Option<Slot>, Vec<Entry>> = HashMap::new();
    let mut slots: Vec<Option<Slot>> = Vec::new();
    for (first, idx) in entities {
        let k = key(&records[first]);
        let slot = clustered.then(|| slot(k.as_bytes()));
        let group = groups.entry(slot).or_insert_with(|| {
            slots.push(slot);
            Vec::new()
        });
        group.extend(entity_entries(k, idx, records));
    }
    let mut calls = Vec::new();
    for s in slots {
        let mut call: Call = Vec::new();
        let mut values = 0;
        for e in groups.remove(&s).unwrap_or_default() {
            if !call.is_empty()
                && (call.len() == MAX_ENTITIES || values + e.written.len() > MAX_VALUES)
            {
                calls.push(std::mem::take(&mut call));
                values = 0;
            }
            values += e.written.len();
            call.push(e);
        }
        if !call.is_empty() {
            calls.push(call);
        }
    }
    calls
}

/// A script argument MessagePack cannot hold (a string or array over
/// 4 GiB); bus messages are far smaller, so this is a broken batch.
#[derive(Debug, thiserror::Error)]
#[error("a write script argument over MessagePack's 4 GiB length")]
pub struct TooLong;

/// The script's argument for `call`: the MessagePack array it reads.
pub fn encode(call: &[Entry], records: &[OnlineRecord]) -> Result<Vec<u8>, TooLong> {
    let items: usize = call.iter().map(|e| 3 + 4 * e.written.len()).sum();
    let mut buf = ByteBuf::with_capacity(items * 24);
    mp::write_array_len(&mut buf, length(items)?).map_err(never)?;
    let mut ts = itoa::Buffer::new();
    for e in call {
        let first = &records[e.written[0]];
        string(&mut buf, &[first.pkey.as_bytes()])?;
        mp::write_uint(&mut buf, e.ttl.max(0) as u64).map_err(never)?;
        mp::write_uint(&mut buf, e.written.len() as u64).map_err(never)?;
        for &i in &e.written {
            let r = &records[i];
            string(&mut buf, &[r.field.as_bytes()])?;
            string(&mut buf, &[r.value_json.as_bytes()])?;
            string(&mut buf, &[r.field.as_bytes(), b"_ts"])?;
            string(&mut buf, &[ts.format(r.observed_at_micros).as_bytes()])?;
        }
    }
    Ok(buf.into_vec())
}

/// One MessagePack string made of `parts`, without joining them first.
fn string(buf: &mut ByteBuf, parts: &[&[u8]]) -> Result<(), TooLong> {
    let len = length(parts.iter().map(|p| p.len()).sum())?;
    mp::write_str_len(buf, len).map_err(never)?;
    for p in parts {
        buf.as_mut_vec().extend_from_slice(p);
    }
    Ok(())
}

fn length(n: usize) -> Result<u32, TooLong> {
    u32::try_from(n).map_err(|_| TooLong)
}

/// Writing into memory cannot fail.
fn never(e: ValueWriteError<Infallible>) -> TooLong {
    match e {
        ValueWriteError::InvalidMarkerWrite(n) | ValueWriteError::InvalidDataWrite(n) => match n {},
    }
}

/// The Redis Cluster hash slot of `key`, as the cluster client computes it.
pub fn slot(key: &[u8]) -> Slot {
    Slot::for_key(key)
}

#[cfg(test)]
mod tests;
