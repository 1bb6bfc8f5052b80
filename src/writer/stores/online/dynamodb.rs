//! The DynamoDB online store.
//!
//! Layout (docs/online-store.md): one table; one item per entity with
//! partition key `__id__` = pkey (S) and sort key `__ns__` = namespace (S).
//! Each feature is an attribute `<ns>.<feature>` holding the value as a
//! native DynamoDB type (N, S, BOOL, NULL; JSON lists and objects as S
//! holding compact JSON text) beside `<ns>.<feature>_ts` (N, observation
//! time in microseconds). `__exp__` (N, epoch seconds) is the TTL attribute,
//! set from `max_staleness_seconds` and only ever moved later.
//!
//! Every write is an UpdateItem whose condition lets a feature change only
//! when the incoming observation is newer than the stored one (ties broken by
//! value, see `Expr::tie`), so replays and out-of-order delivery converge.
//! The common case, all of an entity's features newer, is one UpdateItem per
//! entity (per [`MAX_FEATURES_PER_UPDATE`] features). When its combined
//! condition fails, the item as it was (returned with the failure) prunes
//! what is already superseded, one more combined attempt is made, and what
//! is still undecided goes one conditional UpdateItem per feature, where a
//! failed condition simply means "older". Pruning only ever skips writes
//! that the stored state provably beats (strictly newer timestamp, or the
//! same timestamp and an equal value); everything else is decided by
//! DynamoDB itself, atomically.

use super::{OnlineRecord, OnlineStore};
use crate::writer::runtime::sink::{Rejected, WriterError};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeyType, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TableDescription,
};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

/// Partition key: the entity's primary key.
pub const ID_ATTR: &str = "__id__";
/// Sort key: the feature namespace.
pub const NS_ATTR: &str = "__ns__";
/// TTL attribute, epoch seconds.
pub const EXP_ATTR: &str = "__exp__";
/// Suffix of a feature's observation-time attribute.
pub const TS_SUFFIX: &str = "_ts";
/// Features per combined UpdateItem: keeps the condition expression well
/// under DynamoDB's 4 KB limit for any mix of value types.
pub const MAX_FEATURES_PER_UPDATE: usize = 10;
/// DynamoDB's key size limits, in UTF-8 bytes.
const MAX_PARTITION_KEY_BYTES: usize = 2048;
const MAX_SORT_KEY_BYTES: usize = 1024;
/// Combined attempts before falling back to one UpdateItem per feature.
const COMBINED_ATTEMPTS: usize = 2;

/// Where the table is.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamoTarget {
    pub table: String,
    /// None: the default region chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint override, for tests and DynamoDB Local only.
    pub endpoint: Option<String>,
    pub concurrency: usize,
}

impl DynamoTarget {
    /// Parses `dynamodb://<table>?region=<region>&endpoint=<url>`. Credentials
    /// never go in the URI: they come from the default chain (IRSA, env, ...).
    pub fn parse(uri: &str, concurrency: usize) -> Result<Self, String> {
        let uri = uri.trim();
        let rest = match uri.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("dynamodb") => rest,
            _ => {
                return Err(
                    "online store URI: expected dynamodb://<table>?region=<region>".to_string(),
                );
            }
        };
        let (table, query) = rest.split_once('?').unwrap_or((rest, ""));
        let table = table.trim_end_matches('/');
        let valid_name = (3..=255).contains(&table.len())
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(format!(
                "online store URI: {table:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)"
            ));
        }
        let mut target = DynamoTarget {
            table: table.to_string(),
            region: None,
            endpoint: None,
            concurrency: concurrency.max(1),
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim();
            match k.as_ref() {
                _ if v.is_empty() => {}
                "region" => target.region = Some(v.to_string()),
                "endpoint" => {
                    let u = url::Url::parse(v)
                        .map_err(|e| format!("online store URI: endpoint {v:?}: {e}"))?;
                    if !matches!(u.scheme(), "http" | "https") {
                        return Err(format!(
                            "online store URI: endpoint {v:?} is not an http(s) URL"
                        ));
                    }
                    target.endpoint = Some(v.to_string());
                }
                other => {
                    return Err(format!(
                        "online store URI: unknown parameter {other:?} (known: region, endpoint)"
                    ));
                }
            }
        }
        Ok(target)
    }
}

pub struct DynamoStore {
    target: DynamoTarget,
    client: Client,
    /// Set once the table has been seen with the expected key schema.
    verified: OnceCell<()>,
}

impl DynamoStore {
    /// Builds the client from the default credential chain. The table itself
    /// is checked on first write, so a store that is not there yet at
    /// start-up is retried like any outage.
    pub async fn connect(target: DynamoTarget) -> Result<Self, String> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(r) = &target.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &target.endpoint {
            loader = loader.endpoint_url(e);
        }
        let conf = loader.load().await;
        if conf.region().is_none() {
            return Err(
                "online store: no AWS region: add ?region=... to the dynamodb:// URI or set AWS_REGION"
                    .into(),
            );
        }
        Ok(DynamoStore {
            client: Client::new(&conf),
            target,
            verified: OnceCell::new(),
        })
    }

    /// Fails (retriably) until the table exists with `__id__`/`__ns__` string
    /// keys: writing to a table of another shape would turn every record into
    /// a validation error and dead-letter the whole stream.
    async fn verify_table(&self) -> Result<(), WriterError> {
        self.verified
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .describe_table()
                    .table_name(&self.target.table)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(DescribeTableError::ResourceNotFoundException(_)) => format!(
                            "DynamoDB table {:?} does not exist (or is not visible to these credentials in this region)",
                            self.target.table
                        ),
                        _ => format!("DescribeTable: {}", DisplayErrorContext(&e)),
                    })?;
                let table = out
                    .table()
                    .ok_or_else(|| "DescribeTable returned no table".to_string())?;
                check_key_schema(&self.target.table, table)
            })
            .await
            .map(|_| ())
            .map_err(WriterError::Retriable)
    }

    /// One conditional UpdateItem setting `features` (and `exp`) together.
    async fn update(
        &self,
        pkey: &str,
        ns: &str,
        features: &[&Feature],
        exp: Option<i64>,
    ) -> Result<(), Failure> {
        let mut x = Expr::default();
        for (i, f) in features.iter().enumerate() {
            x.feature(i, f);
        }
        if let Some(e) = exp {
            x.expiry(e);
        }
        self.client
            .update_item()
            .table_name(&self.target.table)
            .key(ID_ATTR, AttributeValue::S(pkey.to_string()))
            .key(NS_ATTR, AttributeValue::S(ns.to_string()))
            .update_expression(x.update_expression())
            .condition_expression(x.condition_expression())
            .set_expression_attribute_names(Some(x.names))
            .set_expression_attribute_values(Some(x.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Combined attempts for one chunk of an entity's features. Returns what
    /// is still undecided (to be written one by one) and any rejection.
    async fn write_combined<'f>(
        &self,
        pkey: &str,
        ns: &str,
        mut pending: Vec<&'f Feature>,
        mut exp: Option<i64>,
    ) -> Result<(Vec<&'f Feature>, Option<i64>, Vec<Rejected>), WriterError> {
        for _ in 0..COMBINED_ATTEMPTS {
            if pending.is_empty() && exp.is_none() {
                break;
            }
            match self.update(pkey, ns, &pending, exp).await {
                Ok(()) => return Ok((Vec::new(), None, Vec::new())),
                Err(Failure::Older(old)) => {
                    // A single condition that failed is the answer itself.
                    if pending.len() + usize::from(exp.is_some()) == 1 {
                        return Ok((Vec::new(), None, Vec::new()));
                    }
                    let Some(old) = old else { break };
                    let before = (pending.len(), exp);
                    pending.retain(|f| !superseded(&old, f));
                    if exp.is_some_and(|e| expiry_covers(&old, e)) {
                        exp = None;
                    }
                    // Nothing provably superseded (a tie, or a concurrent
                    // writer): the same request would fail the same way.
                    if (pending.len(), exp) == before {
                        break;
                    }
                }
                Err(Failure::Rejected(reason)) => {
                    if let ([f], None) = (pending.as_slice(), exp) {
                        let record = f.record;
                        return Ok((Vec::new(), None, vec![Rejected { record, reason }]));
                    }
                    debug!(pkey, ns, %reason, "combined update refused; writing features one by one");
                    break;
                }
                Err(Failure::Unavailable(e)) => return Err(WriterError::Retriable(e)),
            }
        }
        Ok((pending, exp, Vec::new()))
    }

    async fn write_entity(
        &self,
        entity: Entity<'_>,
        now: i64,
    ) -> Result<Vec<Rejected>, WriterError> {
        let exp = (entity.ttl > 0).then(|| now.saturating_add(entity.ttl));
        let mut first = Vec::new();
        let mut one_by_one = Vec::new();
        for (_, candidates) in entity.fields.iter() {
            let mut it = candidates.iter();
            if let Some(f) = it.next() {
                first.push(f);
            }
            // Other values observed at the same (newest) time: DynamoDB's
            // tie-break decides between them, one conditional write each.
            one_by_one.extend(it);
        }
        let mut rejected = Vec::new();
        let mut exp_left = None;
        for (n, chunk) in first.chunks(MAX_FEATURES_PER_UPDATE).enumerate() {
            let chunk_exp = if n == 0 { exp } else { None };
            let (left, e, r) = self
                .write_combined(entity.pkey, entity.ns, chunk.to_vec(), chunk_exp)
                .await?;
            one_by_one.extend(left);
            exp_left = exp_left.or(e);
            rejected.extend(r);
        }
        let singles: Vec<_> = one_by_one
            .iter()
            .map(|f| async move {
                let result = self
                    .update(entity.pkey, entity.ns, std::slice::from_ref(f), None)
                    .await;
                (f, result)
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(singles)
            .buffer_unordered(MAX_FEATURES_PER_UPDATE)
            .collect()
            .await;
        for (f, result) in results {
            match result {
                Ok(()) | Err(Failure::Older(_)) => {}
                Err(Failure::Rejected(reason)) => rejected.push(Rejected {
                    record: f.record,
                    reason,
                }),
                Err(Failure::Unavailable(e)) => return Err(WriterError::Retriable(e)),
            }
        }
        if let Some(e) = exp_left {
            match self.update(entity.pkey, entity.ns, &[], Some(e)).await {
                Ok(()) | Err(Failure::Older(_)) => {}
                // Only a full item refuses a TTL update; its values stand.
                Err(Failure::Rejected(reason)) => {
                    warn!(pkey = entity.pkey, ns = entity.ns, %reason, "could not extend __exp__")
                }
                Err(Failure::Unavailable(e)) => return Err(WriterError::Retriable(e)),
            }
        }
        Ok(rejected)
    }
}

fn check_key_schema(name: &str, t: &TableDescription) -> Result<(), String> {
    let key = |kt: KeyType| {
        t.key_schema()
            .iter()
            .find(|k| *k.key_type() == kt)
            .map(|k| k.attribute_name())
    };
    let string_typed = |attr: &str| {
        t.attribute_definitions()
            .iter()
            .any(|a| a.attribute_name() == attr && *a.attribute_type() == ScalarAttributeType::S)
    };
    match (key(KeyType::Hash), key(KeyType::Range)) {
        (Some(ID_ATTR), Some(NS_ATTR)) if string_typed(ID_ATTR) && string_typed(NS_ATTR) => Ok(()),
        (hash, range) => Err(format!(
            "DynamoDB table {name:?} must have partition key {ID_ATTR} (S) and sort key {NS_ATTR} (S); it has partition key {hash:?}, sort key {range:?}"
        )),
    }
}

/// How one UpdateItem ended, short of success.
#[derive(Debug)]
enum Failure {
    /// The condition failed: something at least as new is stored. Carries
    /// the item as it was.
    Older(Option<HashMap<String, AttributeValue>>),
    /// DynamoDB refused the request for good (item too large, bad number...).
    Rejected(String),
    /// Throttling, 5xx, timeouts, connection or credential trouble, a missing
    /// table: retry the batch.
    Unavailable(String),
}

fn classify<R: std::fmt::Debug>(err: SdkError<UpdateItemError, R>) -> Failure {
    match err.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(e)) => {
            Failure::Older(e.item().cloned())
        }
        Some(e) if e.code() == Some("ValidationException") => Failure::Rejected(format!(
            "DynamoDB refused the update: {}",
            e.message().unwrap_or("ValidationException")
        )),
        _ => Failure::Unavailable(format!("UpdateItem: {}", DisplayErrorContext(&err))),
    }
}

/// One feature value ready to write.
#[derive(Debug, Clone, PartialEq)]
struct Feature {
    /// Index in the batch.
    record: usize,
    field: String,
    ts: i64,
    value: AttributeValue,
}

/// Everything a batch holds for one item.
#[derive(Debug, Default)]
struct Entity<'a> {
    pkey: &'a str,
    ns: &'a str,
    ttl: i64,
    /// Per field: the newest observations, one per distinct value.
    fields: BTreeMap<&'a str, Vec<Feature>>,
}

/// Groups a batch by item, keeps only each field's newest observations, and
/// rejects what DynamoDB could never store.
fn plan(records: &[OnlineRecord]) -> (Vec<Entity<'_>>, Vec<Rejected>) {
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

fn check_keys(r: &OnlineRecord) -> Result<(), String> {
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

/// The DynamoDB attribute for a value given as JSON text: numbers as N (in
/// plain decimal form), strings as S, booleans as BOOL, null as NULL, and
/// lists and objects as S holding their compact JSON text.
pub fn attribute_value(value_json: &str) -> Result<AttributeValue, String> {
    let v: serde_json::Value =
        serde_json::from_str(value_json).map_err(|e| format!("value is not JSON: {e}"))?;
    Ok(match v {
        serde_json::Value::Null => AttributeValue::Null(true),
        serde_json::Value::Bool(b) => AttributeValue::Bool(b),
        serde_json::Value::Number(n) => AttributeValue::N(dynamo_number(&n.to_string())?),
        serde_json::Value::String(s) => AttributeValue::S(s),
        v @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
            AttributeValue::S(v.to_string())
        }
    })
}

/// A number as DynamoDB holds it: the sign, the significant digits without
/// leading or trailing zeros (empty for zero), and the power of ten of the
/// last digit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    scale: i64,
}

impl Decimal {
    /// Parses JSON numbers and DynamoDB's own renderings (`1E+2`, `.5`, `+3`).
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all = format!("{int}{frac}");
        let lead_trimmed = all.trim_start_matches('0');
        let digits = lead_trimmed.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: String::new(),
                scale: 0,
            });
        }
        let trailing = i64::try_from(lead_trimmed.len() - digits.len()).ok()?;
        let frac_len = i64::try_from(frac.len()).ok()?;
        Some(Decimal {
            negative,
            digits: digits.to_string(),
            scale: exponent.checked_sub(frac_len)?.checked_add(trailing)?,
        })
    }

    /// Power of ten of the most significant digit.
    fn magnitude(&self) -> i64 {
        self.scale + self.digits.len() as i64 - 1
    }

    /// Plain decimal text, no exponent: `0.5`, `-120`, `0`.
    fn render(&self) -> String {
        if self.digits.is_empty() {
            return "0".into();
        }
        let sign = if self.negative { "-" } else { "" };
        let n = self.digits.len();
        if self.scale >= 0 {
            return format!("{sign}{}{}", self.digits, "0".repeat(self.scale as usize));
        }
        let frac = self.scale.unsigned_abs() as usize;
        if n > frac {
            format!(
                "{sign}{}.{}",
                &self.digits[..n - frac],
                &self.digits[n - frac..]
            )
        } else {
            format!("{sign}0.{}{}", "0".repeat(frac - n), self.digits)
        }
    }
}

/// DynamoDB numbers: at most 38 significant digits, magnitude 1E-130 to
/// 9.99...E+125. Anything else is refused here rather than by the service.
fn dynamo_number(text: &str) -> Result<String, String> {
    let d = Decimal::parse(text).ok_or_else(|| format!("{text} is not a number"))?;
    if d.digits.len() > 38 {
        return Err(format!(
            "{text} has {} significant digits; DynamoDB numbers hold at most 38",
            d.digits.len()
        ));
    }
    if !d.digits.is_empty() && !(-130..=125).contains(&d.magnitude()) {
        return Err(format!(
            "{text} is outside DynamoDB's number range (1E-130 to 1E+126 in magnitude)"
        ));
    }
    Ok(d.render())
}

/// Equal as DynamoDB compares them (numbers by value).
fn same_value(a: &AttributeValue, b: &AttributeValue) -> bool {
    match (a, b) {
        (AttributeValue::N(x), AttributeValue::N(y)) => {
            x == y || Decimal::parse(x).is_some_and(|x| Decimal::parse(y) == Some(x))
        }
        _ => a == b,
    }
}

fn stored_integer(old: &HashMap<String, AttributeValue>, attr: &str) -> Option<i64> {
    match old.get(attr)? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

/// The stored state provably beats `f`: a newer observation, or the same
/// observation time and the same value. Anything else is left to DynamoDB.
fn superseded(old: &HashMap<String, AttributeValue>, f: &Feature) -> bool {
    match stored_integer(old, &format!("{}{TS_SUFFIX}", f.field)) {
        Some(ts) if ts > f.ts => true,
        Some(ts) if ts == f.ts => old.get(&f.field).is_some_and(|v| same_value(v, &f.value)),
        _ => false,
    }
}

fn expiry_covers(old: &HashMap<String, AttributeValue>, exp: i64) -> bool {
    stored_integer(old, EXP_ATTR).is_some_and(|stored| stored >= exp)
}

/// An UpdateItem's expressions, with placeholders for every name (feature
/// names contain dots) and only the values they use (DynamoDB refuses
/// unused ones).
#[derive(Default, Debug)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    set: Vec<String>,
    conditions: Vec<String>,
}

/// Value types in tie-break order.
const TYPE_ORDER: [&str; 4] = ["NULL", "BOOL", "N", "S"];

impl Expr {
    fn feature(&mut self, i: usize, f: &Feature) {
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
    fn tie(&mut self, fa: &str, va: &str, value: &AttributeValue) -> String {
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

    fn type_is(&mut self, attr: &str, ty: &str) -> String {
        let placeholder = format!(":ty{ty}");
        self.values
            .insert(placeholder.clone(), AttributeValue::S(ty.to_string()));
        format!("attribute_type({attr}, {placeholder})")
    }

    /// `__exp__` only ever moves later.
    fn expiry(&mut self, exp: i64) {
        self.names.insert("#e".into(), EXP_ATTR.into());
        self.values
            .insert(":e".into(), AttributeValue::N(exp.to_string()));
        self.set.push("#e = :e".into());
        self.conditions
            .push("(attribute_not_exists(#e) OR #e <= :e)".into());
    }

    fn update_expression(&self) -> String {
        format!("SET {}", self.set.join(", "))
    }

    fn condition_expression(&self) -> String {
        self.conditions.join(" AND ")
    }
}

impl OnlineStore for DynamoStore {
    async fn write(&self, records: &[OnlineRecord]) -> Result<Vec<Rejected>, WriterError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.verify_table().await?;
        let (entities, mut rejected) = plan(records);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Entities concurrently; every write is idempotent, so on an outage
        // the whole batch is simply retried.
        let writes: Vec<_> = entities
            .into_iter()
            .map(|e| self.write_entity(e, now))
            .collect();
        let per_entity: Vec<Vec<Rejected>> = futures::stream::iter(writes)
            .buffer_unordered(self.target.concurrency)
            .try_collect()
            .await?;
        rejected.extend(per_entity.into_iter().flatten());
        rejected.sort_by_key(|r| r.record);
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pkey: &str, feature: &str, ts: i64, value_json: &str, ttl: i64) -> OnlineRecord {
        OnlineRecord {
            namespace: "user".into(),
            pkey: pkey.into(),
            field: format!("user.{feature}"),
            observed_at_micros: ts,
            value_json: value_json.into(),
            ttl_seconds: ttl,
        }
    }

    #[test]
    fn values_map_to_native_types() -> Result<(), String> {
        use AttributeValue as A;
        let cases = [
            ("42", A::N("42".into())),
            ("-7", A::N("-7".into())),
            ("0.5", A::N("0.5".into())),
            ("2.0", A::N("2".into())),
            ("-0.0", A::N("0".into())),
            ("1e16", A::N("10000000000000000".into())),
            ("1.5e-7", A::N("0.00000015".into())),
            ("9223372036854775807", A::N("9223372036854775807".into())),
            ("18446744073709551615", A::N("18446744073709551615".into())),
            (r#""A \"q\"""#, A::S("A \"q\"".into())),
            (r#""""#, A::S(String::new())),
            ("true", A::Bool(true)),
            ("false", A::Bool(false)),
            ("null", A::Null(true)),
            ("[1, 2, {\"a\": null}]", A::S("[1,2,{\"a\":null}]".into())),
            ("{\"k\": [true]}", A::S("{\"k\":[true]}".into())),
        ];
        for (json, want) in cases {
            assert_eq!(attribute_value(json)?, want, "{json}");
        }
        Ok(())
    }

    #[test]
    fn numbers_outside_dynamodb_are_refused() {
        for bad in [
            "1e200",
            "-1e126",
            "1e-131",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            let err = attribute_value(bad).map(|_| ()).unwrap_err();
            assert!(err.contains("range"), "{bad}: {err}");
        }
        // Within range, near the extremes DynamoDB documents (serde_json's
        // float parsing may land 1e-130 just below it).
        for ok in ["2e-130", "9.99e125", "-1e125", "0"] {
            assert!(
                attribute_value(ok).is_ok(),
                "{ok}: {:?}",
                attribute_value(ok)
            );
        }
        assert!(dynamo_number("1e-130").is_ok());
        assert!(dynamo_number("9.9999999999999999999999999999999999999E+125").is_ok());
        // Digits beyond 38 only come from text JSON numbers serde keeps exactly.
        assert!(dynamo_number("123456789012345678901234567890123456789").is_err());
        assert!(dynamo_number("12345678901234567890123456789012345678").is_ok());
        assert!(dynamo_number("1000000000000000000000000000000000000000000").is_ok());
        assert!(attribute_value("{not json").is_err());
    }

    #[test]
    fn decimals_compare_by_value() {
        let same = |a: &str, b: &str| {
            same_value(&AttributeValue::N(a.into()), &AttributeValue::N(b.into()))
        };
        assert!(same("2", "2.0"));
        assert!(same("100", "1E+2"));
        assert!(same("0.5", ".50"));
        assert!(same("0", "-0.000"));
        assert!(!same("2", "-2"));
        assert!(!same("0.1", "1"));
        assert!(!same("x", "1"));
        assert!(!same_value(
            &AttributeValue::N("1".into()),
            &AttributeValue::S("1".into())
        ));
        assert_eq!(Decimal::parse("1."), Decimal::parse("1"));
        assert_eq!(Decimal::parse(""), None);
        assert_eq!(Decimal::parse("-"), None);
        assert_eq!(Decimal::parse("1e"), None);
        assert_eq!(Decimal::parse("0x10"), None);
    }

    #[test]
    fn plan_keeps_the_newest_per_field_and_ties_apart() {
        let records = vec![
            rec("1", "age", 3, "30", 0),
            rec("1", "age", 5, "50", 60),
            rec("1", "age", 4, "40", 0),
            rec("1", "age", 5, "50.0", 0), // the same value: dropped
            rec("1", "age", 5, "7", 0),    // a tie: kept for DynamoDB to decide
            rec("2", "age", 1, "1e300", 0),
            rec("2", "name", 1, "\"x\"", 10),
        ];
        let (entities, rejected) = plan(&records);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].record, 5);
        assert_eq!(entities.len(), 2);
        let one = &entities[0];
        assert_eq!((one.pkey, one.ns, one.ttl), ("1", "user", 60));
        let age: Vec<(usize, i64)> = one.fields["user.age"]
            .iter()
            .map(|f| (f.record, f.ts))
            .collect();
        assert_eq!(age, [(1, 5), (4, 5)]);
        let two = &entities[1];
        assert_eq!(two.ttl, 10);
        assert_eq!(two.fields.len(), 1);
    }

    #[test]
    fn oversized_keys_are_rejected_up_front() {
        let mut r = rec(&"k".repeat(2049), "age", 1, "1", 0);
        let (_, rejected) = plan(std::slice::from_ref(&r));
        assert!(rejected[0].reason.contains("partition key"));
        r.pkey = "k".repeat(2048);
        r.namespace = "n".repeat(1025);
        let (_, rejected) = plan(&[r]);
        assert!(rejected[0].reason.contains("sort key"));
    }

    #[test]
    fn pruning_only_skips_what_the_stored_item_beats() {
        let old: HashMap<String, AttributeValue> = [
            ("user.a", AttributeValue::N("5".into())),
            ("user.a_ts", AttributeValue::N("10".into())),
            (EXP_ATTR, AttributeValue::N("1000".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let f = |ts, v: &str| Feature {
            record: 0,
            field: "user.a".into(),
            ts,
            value: AttributeValue::N(v.into()),
        };
        assert!(superseded(&old, &f(9, "99")));
        assert!(superseded(&old, &f(10, "5.0")));
        assert!(
            !superseded(&old, &f(10, "6")),
            "a tie is DynamoDB's to decide"
        );
        assert!(!superseded(&old, &f(11, "1")));
        let mut g = f(1, "1");
        g.field = "user.b".into();
        assert!(!superseded(&old, &g));
        assert!(expiry_covers(&old, 1000));
        assert!(!expiry_covers(&old, 1001));
    }

    #[test]
    fn expressions_use_every_placeholder_and_fit_the_limit() {
        let mut x = Expr::default();
        let values = [
            AttributeValue::S("s".into()),
            AttributeValue::N("1".into()),
            AttributeValue::Bool(true),
            AttributeValue::Bool(false),
            AttributeValue::Null(true),
        ];
        for i in 0..MAX_FEATURES_PER_UPDATE {
            x.feature(
                i,
                &Feature {
                    record: i,
                    field: format!("user.feature_{i}"),
                    ts: 1,
                    value: values[i % values.len()].clone(),
                },
            );
        }
        x.expiry(99);
        let (update, cond) = (x.update_expression(), x.condition_expression());
        let both = format!("{update} {cond}");
        for placeholder in x.names.keys().chain(x.values.keys()) {
            assert!(both.contains(placeholder.as_str()), "{placeholder} unused");
        }
        // Worst case: every feature a string.
        let mut worst = Expr::default();
        for i in 0..MAX_FEATURES_PER_UPDATE {
            worst.feature(
                i,
                &Feature {
                    record: i,
                    field: "f".into(),
                    ts: 1,
                    value: AttributeValue::S("s".into()),
                },
            );
        }
        worst.expiry(1);
        assert!(worst.condition_expression().len() < 4096);
        assert!(worst.update_expression().len() < 4096);
        assert!(
            cond.contains("(attribute_not_exists(#t0) OR #t0 < :t0 OR (#t0 = :t0 AND (attribute_not_exists(#f0) OR attribute_type(#f0, :tyNULL) OR attribute_type(#f0, :tyBOOL) OR attribute_type(#f0, :tyN) OR (attribute_type(#f0, :tyS) AND #f0 < :v0))))"),
            "{cond}"
        );
        assert!(cond.ends_with("(attribute_not_exists(#e) OR #e <= :e)"));
    }

    #[test]
    fn uri_table_region_and_endpoint() -> Result<(), String> {
        let t = DynamoTarget::parse(
            "dynamodb://Features.prod-1?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A8000",
            0,
        )?;
        assert_eq!(
            t,
            DynamoTarget {
                table: "Features.prod-1".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:8000".into()),
                concurrency: 1,
            }
        );
        let t = DynamoTarget::parse(" DynamoDB://features/ ", 8)?;
        assert_eq!((t.region, t.endpoint), (None, None));
        for bad in [
            "redis://h",
            "dynamodb://",
            "dynamodb://ab",
            "dynamodb://a/b",
            "dynamodb://tbl?regoin=x",
            "dynamodb://tbl?endpoint=ftp://x",
        ] {
            assert!(DynamoTarget::parse(bad, 1).is_err(), "{bad}");
        }
        Ok(())
    }
}
