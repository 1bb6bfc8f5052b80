//! The resource, as a user may get it wrong: the seed example with one field
//! (any field, at any depth, writers included) replaced by a wrong value,
//! then read with the CRD's types, validated and rendered as the operator
//! does. Properties: no panic; every validation refusal names a field of the
//! spec and a reason; nothing half-applied (a refused writer is never
//! rendered, every accepted one is).

use bgpersist::crd::BackgroundPersistence;
use bgpersist::operator::render;
use bgpersist::operator::validate::validate_with;
use proptest::prelude::*;
use serde_json::{Value, json};

fn seed() -> Value {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/seed-example.yaml"
    ))
    .expect("the seed example");
    serde_yaml::from_str(&yaml).expect("the seed example is YAML")
}

/// One step into a JSON document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every path under `v` (objects and arrays too, so whole blocks can be
/// replaced).
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Wrong values people write: missing, empty, blank, negative, zero, huge,
/// of another type, with spaces, or anything at all.
fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("")),
        Just(json!("   ")),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(i64::MAX)),
        Just(json!("-5")),
        Just(json!("0")),
        Just(json!(["x"])),
        Just(json!({"x": 1})),
        Just(json!(true)),
        Just(json!("with space")),
        Just(json!("-1Gi")),
        ".{0,24}".prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_seed_with_one_wrong_field_is_refused_by_field_or_rendered(
        pick in any::<prop::sample::Index>(),
        wrong in wrong_value(),
    ) {
        let mut bp = seed();
        let mut all = Vec::new();
        paths(&bp["spec"], &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        let spec_keys: Vec<String> = bp["spec"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(slot) = at(&mut bp["spec"], &path) {
            *slot = wrong;
        }
        let typed: BackgroundPersistence = match serde_json::from_value(bp) {
            // The schema's types refuse it (the API server does, by schema).
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
            Ok(t) => t,
        };
        let checked = validate_with(&typed, &chart_defaults());
        for p in &checked.problems {
            prop_assert!(!p.reason.trim().is_empty(), "{p:?} has no reason");
            let top = p.field.split(['.', '[']).next().unwrap_or_default();
            prop_assert!(
                spec_keys.iter().any(|k| k == top) || typed_field(top),
                "{p:?} does not name a spec field (path {path:?})"
            );
        }
        let refused: Vec<&str> = checked
            .problems
            .iter()
            .filter_map(|p| p.writer.as_deref())
            .collect();
        for w in &checked.writers {
            prop_assert!(!refused.contains(&w.spec.name.as_str()), "{} refused and resolved", w.spec.name);
        }
        if let Ok(rendered) = render::render(&typed, &checked.writers) {
            let names: Vec<&str> = rendered.writers.iter().map(|w| w.name.as_str()).collect();
            let accepted: Vec<&str> = checked.writers.iter().map(|w| w.spec.name.as_str()).collect();
            prop_assert_eq!(names, accepted, "every accepted writer is rendered, no other");
        }
    }
}

/// Spec fields a problem may name that the seed leaves out.
fn typed_field(top: &str) -> bool {
    let schema = serde_json::to_value(schemars::schema_for!(
        bgpersist::crd::BackgroundPersistenceSpec
    ))
    .unwrap_or_default();
    schema["properties"].get(top).is_some()
}

#[test]
fn the_seed_itself_is_accepted_whole() {
    let typed: BackgroundPersistence = serde_json::from_value(seed()).expect("the seed's types");
    let checked = validate_with(&typed, &chart_defaults());
    let fatal: Vec<_> = checked.fatal().collect();
    assert!(fatal.is_empty(), "{fatal:?}");
    assert_eq!(checked.writers.len(), typed.spec.writers.len());
}

/// The operator as the chart installs it: its own image runs the seed's
/// writers, whose other image fields are placeholders.
fn chart_defaults() -> bgpersist::operator::model::Defaults {
    bgpersist::operator::model::Defaults {
        writer_image: Some("bgpersist:0.1.0".into()),
        ..Default::default()
    }
}
