//! The generated data's common parts: a fixed mixer (the same messages every
//! run, no RNG dependency) and the five-feature `user` result the Kafka
//! benches send.

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};

/// Entities the results are spread over.
pub const ENTITIES: u64 = 100_000;
/// Observation times are drawn from the second after this (micros).
pub const TS_BASE: i64 = 1_700_000_000_000_000;
/// The features of every result, in message order.
pub const FEATURES: [&str; 5] = ["age", "score", "country", "vip", "visits"];

/// splitmix64: a cheap, well-spread function of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `BGP_BENCH_VALUE_BYTES`: pads every `country` value to at least this many
/// bytes, for runs with large messages (unset: no padding).
fn value_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("BGP_BENCH_VALUE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// The five values of draw `r`, of mixed kinds, named as in [`FEATURES`].
pub fn user_kinds(r: u64) -> [(&'static str, Kind); 5] {
    let country = format!("c{}", r % 200);
    let pad = value_bytes().saturating_sub(country.len());
    [
        ("age", Kind::IntValue((r % 90) as i64)),
        ("score", Kind::DoubleValue((r % 10_000) as f64 / 7.0)),
        ("country", Kind::StringValue(country + &"x".repeat(pad))),
        ("vip", Kind::BoolValue(r.is_multiple_of(2))),
        ("visits", Kind::IntValue((r % 100_000) as i64)),
    ]
}

/// Message `i`'s values: one entity of [`ENTITIES`], five values of mixed
/// kinds at random observation times (out of order, like a real result bus).
pub fn user_values(i: u64) -> impl Iterator<Item = FeatureValue> {
    let r = mix(i);
    let pkey = (r % ENTITIES).to_string();
    user_kinds(r)
        .into_iter()
        .enumerate()
        .map(move |(f, (name, kind))| FeatureValue {
            namespace: "user".into(),
            feature: name.into(),
            pkey: pkey.clone(),
            value: Some(Value { kind: Some(kind) }),
            observed_at_micros: TS_BASE + (mix(r ^ f as u64) % 1_000_000) as i64,
            resolver_fqn: format!("user.{name}"),
            ..Default::default()
        })
}

/// Mean size in bytes of the first 1000 payloads.
pub fn mean_size(payload: impl Fn(u64) -> Vec<u8>) -> f64 {
    (0..1000).map(|i| payload(i).len()).sum::<usize>() as f64 / 1000.0
}

/// Message `i` for the offline writer: [`user_values`], each row with its own
/// observation id (`<i>-<feature index>`), so a redelivered message cannot
/// add a row twice.
pub fn offline_payload(i: u64) -> Vec<u8> {
    ResultMessage {
        operation_id: format!("op-{i}"),
        deployment_id: "bench".into(),
        values: user_values(i)
            .enumerate()
            .map(|(f, v)| FeatureValue {
                observation_id: format!("{i}-{f}"),
                ..v
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}
