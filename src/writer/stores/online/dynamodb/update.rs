//! What a batch becomes in DynamoDB: entities with each field's newest
//! observations, and the UpdateItem expressions that write them only when newer.

use super::value::{attribute_value, same_value};
use super::{EXP_ATTR, MAX_PARTITION_KEY_BYTES, MAX_SORT_KEY_BYTES, OnlineRecord, TS_SUFFIX};
use crate::writer::runtime::sink::Rejected;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};

/// One feature value ready to write.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Feature {
    /// Index in the batch.
    pub(super) record: usize,
    pub(super) field: String,
    pub(super) ts: i64,
    pub(super) value: AttributeValue,
}

/// Everything a batch holds for one item.
#[derive(Debug, Default)]
pub(super) struct Entity<'a> {
    pub(super) pkey: &'a str,
    pub(super) ns: &'a str,
    pub(super) ttl: i64,
    /// Per field: the newest observations, one per distinct value.
    pub(super) fields: BTreeMap<&'a str, Vec<Feature>>,
}

/// Groups a batch by item, keeps only each field's newest observations, and
/// rejects what DynamoDB could never store.
pub(super) fn plan(records: &[OnlineRecord]) -> (Vec<Entity<'_>>, Vec<Rejected>) {
    let mut entities: BTreeMap<(&str, &str), Entity<'_>> = BTreeMap::new();
    let mut rejected = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let checked = check_keys(r).and_then(|()| attribute_value(&r.value_json));
        let value = match checked {
            Ok(v) => v,
            Err(reason) => {
                rejected.push(Rejected { record: i, reason });
                continue;
            }
        };
        let e = entities
            .entry((r.pkey.as_str(), r.namespace.as_str()))
            .or_insert_with(|| Entity {
                pkey: &r.pkey,
                ns: &r.namespace,
                ..Default::default()
            });
        e.ttl = e.ttl.max(r.ttl_seconds);
        let candidates = e.fields.entry(r.field.as_str()).or_default();
        let newest = candidates.first().map(|f| f.ts);
        if newest.is_some_and(|ts| ts > r.observed_at_micros) {
            continue;
        }
        if newest.is_some_and(|ts| ts < r.observed_at_micros) {
            candidates.clear();
        }
        if !candidates.iter().any(|f| same_value(&f.value, &value)) {
            candidates.push(Feature {
                record: i,
                field: r.field.clone(),
                ts: r.observed_at_micros,
                value,
            });
        }
    }
    (entities.into_values().collect(), rejected)
}

pub(super) fn check_keys(r: &OnlineRecord) -> Result<(), String> {
    if r.pkey.len() > MAX_PARTITION_KEY_BYTES {
        return Err(format!(
            "pkey is {} bytes; DynamoDB partition keys hold at most {MAX_PARTITION_KEY_BYTES}",
            r.pkey.len()
        ));
    }
    if r.namespace.len() > MAX_SORT_KEY_BYTES {
        return Err(format!(
            "namespace is {} bytes; DynamoDB sort keys hold at most {MAX_SORT_KEY_BYTES}",
            r.namespace.len()
        ));
    }
    Ok(())
}

pub(super) fn stored_integer(old: &HashMap<String, AttributeValue>, attr: &str) -> Option<i64> {
    match old.get(attr)? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

/// The stored state provably beats `f`: a newer observation, or the same
/// observation time and the same value. Anything else is left to DynamoDB.
pub(super) fn superseded(old: &HashMap<String, AttributeValue>, f: &Feature) -> bool {
    match stored_integer(old, &format!("{}{TS_SUFFIX}", f.field)) {
        Some(ts) if ts > f.ts => true,
        Some(ts) if ts == f.ts => old.get(&f.field).is_some_and(|v| same_value(v, &f.value)),
        _ => false,
    }
}

pub(super) fn expiry_covers(old: &HashMap<String, AttributeValue>, exp: i64) -> bool {
    stored_integer(old, EXP_ATTR).is_some_and(|stored| stored >= exp)
}

/// An UpdateItem's expressions, with placeholders for every name (feature
/// names contain dots) and only the values they use (DynamoDB refuses
/// unused ones).
#[derive(Default, Debug)]
pub(super) struct Expr {
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
    pub(super) set: Vec<String>,
    pub(super) conditions: Vec<String>,
}

/// Value types in tie-break order.
pub(super) const TYPE_ORDER: [&str; 4] = ["NULL", "BOOL", "N", "S"];

impl Expr {
    pub(super) fn feature(&mut self, i: usize, f: &Feature) {
        let (fa, ta, va, tv) = (
            format!("#f{i}"),
            format!("#t{i}"),
            format!(":v{i}"),
            format!(":t{i}"),
        );
        self.names.insert(fa.clone(), f.field.clone());
        self.names
            .insert(ta.clone(), format!("{}{TS_SUFFIX}", f.field));
        self.values.insert(va.clone(), f.value.clone());
        self.values
            .insert(tv.clone(), AttributeValue::N(f.ts.to_string()));
        self.set.push(format!("{fa} = {va}, {ta} = {tv}"));
        let tie = self.tie(&fa, &va, &f.value);
        self.conditions.push(format!(
            "(attribute_not_exists({ta}) OR {ta} < {tv} OR ({ta} = {tv} AND ({tie})))"
        ));
    }

    /// On equal observation times the greater value wins: values order by
    /// type (NULL < BOOL < N < S), then false < true, numbers by value,
    /// strings by their UTF-8 bytes. Comparisons are guarded by
    /// `attribute_type` so two types are never compared directly.
    pub(super) fn tie(&mut self, fa: &str, va: &str, value: &AttributeValue) -> String {
        let rank = match value {
            AttributeValue::Null(_) => 0,
            AttributeValue::Bool(_) => 1,
            AttributeValue::N(_) => 2,
            _ => 3,
        };
        let mut terms = vec![format!("attribute_not_exists({fa})")];
        for ty in &TYPE_ORDER[..rank] {
            terms.push(self.type_is(fa, ty));
        }
        match value {
            AttributeValue::Bool(true) => {
                let same = self.type_is(fa, "BOOL");
                terms.push(format!("({same} AND {fa} <> {va})"));
            }
            AttributeValue::N(_) | AttributeValue::S(_) => {
                let same = self.type_is(fa, TYPE_ORDER[rank]);
                terms.push(format!("({same} AND {fa} < {va})"));
            }
            _ => {}
        }
        terms.join(" OR ")
    }

    pub(super) fn type_is(&mut self, attr: &str, ty: &str) -> String {
        let placeholder = format!(":ty{ty}");
        self.values
            .insert(placeholder.clone(), AttributeValue::S(ty.to_string()));
        format!("attribute_type({attr}, {placeholder})")
    }

    /// `__exp__` only ever moves later.
    pub(super) fn expiry(&mut self, exp: i64) {
        self.names.insert("#e".into(), EXP_ATTR.into());
        self.values
            .insert(":e".into(), AttributeValue::N(exp.to_string()));
        self.set.push("#e = :e".into());
        self.conditions
            .push("(attribute_not_exists(#e) OR #e <= :e)".into());
    }

    pub(super) fn update_expression(&self) -> String {
        format!("SET {}", self.set.join(", "))
    }

    pub(super) fn condition_expression(&self) -> String {
        self.conditions.join(" AND ")
    }
}
