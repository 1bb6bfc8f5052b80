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

mod update;
mod value;

pub use value::attribute_value;

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
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use tracing::{debug, warn};
use update::{Entity, Expr, Feature, expiry_covers, plan, superseded};

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
mod tests;
