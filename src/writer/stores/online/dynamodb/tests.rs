//! DynamoDB store tests without a server: planning, values, expressions.

use super::value::{Decimal, dynamo_number, same_value};
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
    let same =
        |a: &str, b: &str| same_value(&AttributeValue::N(a.into()), &AttributeValue::N(b.into()));
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
