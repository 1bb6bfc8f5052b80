//! ONLINE_WRITER: Kafka → DynamoDB, on the rig's moto server.
//!
//! What this shows and what it does not: moto implements DynamoDB's API
//! shapes (UpdateItem with condition expressions, `attribute_type`,
//! ReturnValuesOnConditionCheckFailure, DescribeTable, item-size validation)
//! in Python, on one process with no partitions, throttling, eventual
//! consistency or TTL deletion. These tests prove the writer's requests are
//! well formed, its conditions give the newest-wins/tie-break results, and
//! its error paths (validation → dead letter, missing table → retry) work
//! against a real implementation of the wire protocol. They say nothing
//! about DynamoDB's capacity, latency, throttling behaviour or the exact
//! wording of its errors.

use crate::harness::*;
use crate::support::{rig, unique};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use bgpersist::formats::v1::{FeatureValue, Value, value::Kind};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Item = HashMap<String, AttributeValue>;
/// (pkey, namespace) → item.
type Table = BTreeMap<(String, String), Item>;

fn client() -> Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(rig("moto", "BGP_AWS_REGION")))
        .endpoint_url(rig("moto", "BGP_AWS_ENDPOINT"))
        .credentials_provider(crate::support::cloud::credentials())
        .build();
    Client::from_conf(conf)
}

/// The documented layout: `__id__` (S) partition key, `__ns__` (S) sort key,
/// TTL on `__exp__`.
async fn create_table(c: &Client, name: &str) -> anyhow::Result<()> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
    };
    c.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("__id__")?)
        .attribute_definitions(attr("__ns__")?)
        .key_schema(key("__id__", KeyType::Hash)?)
        .key_schema(key("__ns__", KeyType::Range)?)
        .send()
        .await?;
    c.update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("__exp__")
                .enabled(true)
                .build()?,
        )
        .send()
        .await?;
    Ok(())
}

async fn scan(c: &Client, table: &str) -> anyhow::Result<Table> {
    let mut out = Table::new();
    let mut start = None;
    loop {
        let page = c
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .consistent_read(true)
            .send()
            .await?;
        for item in page.items() {
            let s = |k: &str| match item.get(k) {
                Some(AttributeValue::S(s)) => s.clone(),
                _ => String::new(),
            };
            out.insert((s("__id__"), s("__ns__")), item.clone());
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(out);
        }
    }
}

fn dynamo_writer_env(
    topic: &str,
    dlq: &str,
    group: &str,
    table: &str,
) -> Vec<(&'static str, String)> {
    let uri = format!(
        "dynamodb://{table}?region={}&endpoint={}",
        rig("moto", "BGP_AWS_REGION"),
        rig("moto", "BGP_AWS_ENDPOINT")
    );
    let mut env = online_writer_env(topic, dlq, group, &uri);
    // The default credential chain, as in a pod: here from the environment.
    env.extend([
        ("AWS_ACCESS_KEY_ID", rig("moto", "BGP_AWS_ACCESS_KEY_ID")),
        (
            "AWS_SECRET_ACCESS_KEY",
            rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"),
        ),
    ]);
    env
}

fn fv(ns: &str, pkey: &str, feature: &str, ts: i64, kind: Kind, staleness: i64) -> FeatureValue {
    FeatureValue {
        namespace: ns.into(),
        feature: feature.into(),
        pkey: pkey.into(),
        value: Some(Value { kind: Some(kind) }),
        observed_at_micros: ts,
        max_staleness_seconds: staleness,
        ..Default::default()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Every feature kind observed at ts 1..=5 out of order, ties at ts 7, and
/// staleness on the "card" namespace; plus the expected items, `__exp__`
/// left out (it depends on the clock).
fn dataset(pkeys: &[String]) -> (Vec<Vec<u8>>, Table) {
    let mut payloads = Vec::new();
    for ts in [2, 5, 1, 4, 3] {
        for p in pkeys {
            let user = vec![
                fv("user", p, "age", ts, Kind::IntValue(ts * 10), 0),
                fv(
                    "user",
                    p,
                    "score",
                    ts,
                    Kind::DoubleValue(ts as f64 + 0.25),
                    0,
                ),
                fv(
                    "user",
                    p,
                    "name",
                    ts,
                    Kind::StringValue(format!("n{ts}")),
                    0,
                ),
                fv("user", p, "vip", ts, Kind::BoolValue(ts % 2 == 1), 0),
                fv(
                    "user",
                    p,
                    "tags",
                    ts,
                    Kind::JsonValue(format!("[{ts}, \"t\"]")),
                    0,
                ),
                fv(
                    "user",
                    p,
                    "prefs",
                    ts,
                    Kind::JsonValue(format!("{{\"ts\": {ts}}}")),
                    0,
                ),
            ];
            payloads.push(result_message(user));
            // The shorter staleness comes with the newest value: the TTL
            // must still not shrink.
            let staleness = if ts == 5 { 60 } else { 3600 };
            payloads.push(result_message(vec![fv(
                "card",
                p,
                "limit",
                ts,
                Kind::IntValue(ts * 100),
                staleness,
            )]));
        }
    }
    // Equal observation times, different values, one message each: the
    // winner is neither the first nor the last produced, and must not depend
    // on which arrives last.
    for p in pkeys {
        for kind in [Kind::IntValue(7), Kind::IntValue(42), Kind::IntValue(-100)] {
            payloads.push(result_message(vec![fv("user", p, "tie_n", 7, kind, 0)]));
        }
        for word in ["a", "b", "ab"] {
            payloads.push(result_message(vec![fv(
                "user",
                p,
                "tie_s",
                7,
                Kind::StringValue(word.into()),
                0,
            )]));
        }
        for kind in [
            Kind::IntValue(5),
            Kind::StringValue("x".into()),
            Kind::BoolValue(true),
        ] {
            payloads.push(result_message(vec![fv("user", p, "tie_t", 7, kind, 0)]));
        }
    }
    let mut expected = Table::new();
    for p in pkeys {
        let mut user = Item::from([
            ("__id__".to_string(), s(p)),
            ("__ns__".to_string(), s("user")),
        ]);
        for (f, v) in [
            ("age", n("50")),
            ("score", n("5.25")),
            ("name", s("n5")),
            ("vip", AttributeValue::Bool(true)),
            ("tags", s("[5,\"t\"]")),
            ("prefs", s("{\"ts\":5}")),
        ] {
            user.insert(format!("user.{f}"), v);
            user.insert(format!("user.{f}_ts"), n("5"));
        }
        // Ties: numbers by value (not by text, unlike Redis), strings by
        // bytes, and across types S > N > BOOL.
        for (f, v) in [("tie_n", n("42")), ("tie_s", s("b")), ("tie_t", s("x"))] {
            user.insert(format!("user.{f}"), v);
            user.insert(format!("user.{f}_ts"), n("7"));
        }
        expected.insert((p.clone(), "user".into()), user);
        let card = Item::from([
            ("__id__".to_string(), s(p)),
            ("__ns__".to_string(), s("card")),
            ("card.limit".to_string(), n("500")),
            ("card.limit_ts".to_string(), n("5")),
        ]);
        expected.insert((p.clone(), "card".into()), card);
    }
    (payloads, expected)
}

/// The items without `__exp__`, and `__exp__` per item that has one.
fn split_exp(table: &Table) -> (Table, BTreeMap<(String, String), i64>) {
    let mut exps = BTreeMap::new();
    let mut rest = Table::new();
    for (k, item) in table {
        let mut item = item.clone();
        if let Some(AttributeValue::N(e)) = item.remove("__exp__") {
            exps.insert(k.clone(), e.parse().unwrap_or(-1));
        }
        rest.insert(k.clone(), item);
    }
    (rest, exps)
}

#[tokio::test]
async fn newest_typed_values_win_ties_are_stable_and_replays_change_nothing() -> anyhow::Result<()>
{
    let c = client();
    let table = unique("online");
    create_table(&c, &table).await?;
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let run = unique("e");
    let pkeys: Vec<String> = (0..12).map(|i| format!("{run}-{i}")).collect();
    let (payloads, expected) = dataset(&pkeys);
    let started = now_secs();
    produce(&topic, &payloads).await?;

    // Small batches, so out-of-order observations of an item meet in
    // DynamoDB's conditions rather than only in the writer's own batching.
    let mut env = dynamo_writer_env(&topic, &dlq, &group, &table);
    env.push(("BGP_MAX_BATCH_SIZE", "7".into()));
    let writer = Writer::start(&env)?;
    let got = eventually(
        "DynamoDB to hold the newest values",
        Duration::from_secs(90),
        || {
            let (c, table, expected) = (c.clone(), table.clone(), expected.clone());
            async move {
                let state = scan(&c, &table).await?;
                Ok((split_exp(&state).0 == expected).then_some(state))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let (_, exps) = split_exp(&got);
    // `__exp__` only where a staleness was given, from the largest one.
    let card_keys: Vec<_> = expected.keys().filter(|(_, ns)| ns == "card").collect();
    assert_eq!(exps.len(), card_keys.len(), "{exps:?}");
    let before = now_secs();
    for k in card_keys {
        let e = exps[k];
        assert!(
            (started + 3600..=before + 3600).contains(&e),
            "{k:?}: __exp__ {e} not within [{}, {}]",
            started + 3600,
            before + 3600
        );
    }

    // The same messages again (a replay after a crash), then one new value as
    // a marker that the writer got past them.
    produce(&topic, &payloads).await?;
    let marker = &pkeys[0];
    produce(
        &topic,
        &[result_message(vec![fv(
            "user",
            marker,
            "age",
            9,
            Kind::IntValue(90),
            0,
        )])],
    )
    .await?;
    let total = 2 * payloads.len() as i64 + 1;
    eventually(
        "the replay and the marker to be committed",
        Duration::from_secs(60),
        || async {
            let (committed, end) = committed_and_end(&topic, &group, 3)?;
            Ok((committed == end && end == total).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let after = scan(&c, &table).await?;
    let (mut after_items, after_exps) = split_exp(&after);
    let mut want = expected.clone();
    if let Some(item) = want.get_mut(&(marker.clone(), "user".into())) {
        item.insert("user.age".into(), n("90"));
        item.insert("user.age_ts".into(), n("9"));
    }
    assert_eq!(after_items.len(), want.len());
    for (k, item) in &want {
        assert_eq!(after_items.remove(k).as_ref(), Some(item), "{k:?}");
    }
    for (k, e) in &after_exps {
        assert!(*e >= exps[k], "{k:?}: __exp__ went from {} to {e}", exps[k]);
    }
    let metrics = writer.metrics();
    assert_eq!(
        metric_value(&metrics, "bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0),
        "{metrics}"
    );
    c.delete_table().table_name(&table).send().await.ok();
    Ok(())
}

#[tokio::test]
async fn unstorable_values_are_dead_lettered_and_the_rest_written() -> anyhow::Result<()> {
    let c = client();
    let table = unique("online");
    create_table(&c, &table).await?;
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let p = unique("e");
    let payloads = vec![
        // Outside DynamoDB's number range: refused before any request.
        result_message(vec![fv("user", &p, "huge", 1, Kind::DoubleValue(1e200), 0)]),
        // Over the 400 KB item limit: refused by the service (moto checks
        // the size too), beside a value that fits and must still be written.
        result_message(vec![
            fv("user", &p, "ok", 1, Kind::IntValue(1), 0),
            fv(
                "user",
                &p,
                "blob",
                1,
                Kind::StringValue("x".repeat(450_000)),
                0,
            ),
        ]),
        result_message(vec![fv("user", &p, "after", 2, Kind::BoolValue(false), 0)]),
    ];
    produce(&topic, &payloads).await?;
    let writer = Writer::start(&dynamo_writer_env(&topic, &dlq, &group, &table))?;

    let consumer: StreamConsumer = kafka_plain()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&dlq])?;
    let mut letters = Vec::new();
    while letters.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no dead letter; writer log:\n{}", writer.log_text()))??;
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            })
        };
        letters.push((
            m.payload().unwrap_or_default().to_vec(),
            header("bgp-dlq-error-class"),
            header("bgp-dlq-error-message").unwrap_or_default(),
        ));
    }
    letters.sort_by_key(|(payload, _, _)| payload.len());
    assert_eq!(letters[0].0, payloads[0]);
    assert_eq!(letters[1].0, payloads[1]);
    for (_, class, _) in &letters {
        assert_eq!(class.as_deref(), Some("rejected"));
    }
    assert!(letters[0].2.contains("range"), "{}", letters[0].2);
    assert!(
        letters[1].2.contains("DynamoDB refused"),
        "{}",
        letters[1].2
    );

    let item = eventually("the storable values", Duration::from_secs(30), || {
        let (c, table, p) = (c.clone(), table.clone(), p.clone());
        async move {
            let t = scan(&c, &table).await?;
            let item = t.get(&(p, "user".into())).cloned();
            Ok(item.filter(|i| i.contains_key("user.after")))
        }
    })
    .await?;
    assert_eq!(item.get("user.ok"), Some(&n("1")));
    assert_eq!(item.get("user.after"), Some(&AttributeValue::Bool(false)));
    assert!(!item.contains_key("user.blob") && !item.contains_key("user.huge"));
    c.delete_table().table_name(&table).send().await.ok();
    Ok(())
}

#[tokio::test]
async fn a_missing_table_pauses_the_writer_until_it_exists() -> anyhow::Result<()> {
    let c = client();
    let table = unique("later");
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let p = unique("e");
    produce(
        &topic,
        &[result_message(vec![fv(
            "user",
            &p,
            "age",
            1,
            Kind::IntValue(3),
            0,
        )])],
    )
    .await?;
    let writer = Writer::start(&dynamo_writer_env(&topic, &dlq, &group, &table))?;
    eventually(
        "the writer to report the missing table",
        Duration::from_secs(30),
        || {
            let log = writer.log_text();
            async move { Ok(log.contains("does not exist").then_some(())) }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let (committed, _) = committed_and_end(&topic, &group, 1)?;
    assert_eq!(
        committed, 0,
        "nothing may be committed while the store is missing"
    );

    create_table(&c, &table).await?;
    eventually(
        "the value once the table exists",
        Duration::from_secs(60),
        || {
            let (c, table, p) = (c.clone(), table.clone(), p.clone());
            async move {
                let t = scan(&c, &table).await?;
                Ok(t.get(&(p, "user".into()))
                    .and_then(|i| i.get("user.age").cloned())
                    .filter(|v| *v == n("3")))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let metrics = writer.metrics();
    assert_eq!(
        metric_value(&metrics, "bgpersist_writer_messages_dead_lettered_total"),
        Some(0.0),
        "{metrics}"
    );
    c.delete_table().table_name(&table).send().await.ok();
    Ok(())
}

#[tokio::test]
async fn a_bad_dynamodb_uri_exits_2_with_one_line() -> anyhow::Result<()> {
    let mut env = dynamo_writer_env("t", "d", "g", "x");
    env.retain(|(k, _)| *k != "BGP_ONLINE_STORE_URI");
    env.push((
        "BGP_ONLINE_STORE_URI",
        "dynamodb://features?regoin=us-east-1".into(),
    ));
    let mut w = Writer::start(&env)?;
    assert_eq!(w.wait_exit(Duration::from_secs(10))?, Some(2));
    let log = w.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bgpersist-writer:"))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    assert!(lines[0].contains("unknown parameter \"regoin\""), "{log}");
    Ok(())
}
