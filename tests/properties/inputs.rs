//! What people type or store: cloud secret payloads, store and object URIs,
//! Kubernetes quantities, Kafka arguments. Never a panic; a refusal says what
//! was expected.

use bgpersist::operator::secrets::{SecretError, parse};
use bgpersist::writer::stores::objects::parse_uri;
use bgpersist::writer::stores::postgres;
use bgpersist::{crd::kafka_args, quantity};
use proptest::prelude::*;
use serde_json::json;

/// Keys the Kafka secret knows, and some it does not.
const SECRET_KEYS: &[&str] = &[
    "username",
    "password",
    "client_secret",
    "ssl_ca_pem",
    "ssl_certificate_pem",
    "ssl_key_pem",
    "ssl_key_password",
    "ssl_keystore_password",
    "other",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(|s| json!(s)),
        Just(json!(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        )),
        Just(json!(["a"])),
        Just(json!({"nested": 1})),
    ]
}

/// A JSON object with some of the known keys, each any JSON value.
fn secret_object() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::btree_map(prop::sample::select(SECRET_KEYS), json_value(), 0..6)
        .prop_map(|m| serde_json::to_vec(&m).unwrap_or_default())
}

fn malformed_says_expected(e: SecretError) -> Result<(), TestCaseError> {
    match e {
        SecretError::Malformed(m) => {
            prop_assert!(m.contains("expected"), "{m}");
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "a payload is malformed, not {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kafka_secret_payloads(bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), secret_object()]) {
        if let Err(e) = parse::sasl(&bytes) {
            malformed_says_expected(e)?;
        }
    }

    #[test]
    fn store_uri_payloads(text in prop_oneof![".{0,80}", "[a-z+]{1,10}://[ -~]{0,60}"]) {
        match parse::store_uri(text.as_bytes()) {
            Ok(uri) => {
                let uri = String::from_utf8_lossy(uri.expose()).to_string();
                prop_assert!(uri.contains("://"));
                prop_assert!(!uri.chars().any(char::is_whitespace));
            }
            Err(e) => malformed_says_expected(e)?,
        }
    }

    #[test]
    fn object_uris(text in prop_oneof![".{0,80}", "(s3|gs|S3|http)://[ -~]{0,40}"]) {
        if let Err(reason) = parse_uri(&text) {
            prop_assert!(!reason.trim().is_empty());
        }
    }

    #[test]
    fn postgres_uris_build_a_pool_or_say_why(text in prop_oneof![".{0,80}", "postgres(ql)?://[ -~]{0,60}"]) {
        // As every binary does first (TLS pools pick the provider).
        bgpersist::install_crypto_provider();
        if let Err(e) = postgres::pool(&text, 2) {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }

    #[test]
    fn quantities(text in prop_oneof![".{0,12}", "[+-]?[0-9.]{0,6}(m|k|Mi|Gi|e[0-9]{1,3}|E-?[0-9]{1,6}|[a-z]{0,2})"]) {
        if let Some(v) = quantity::parse(&text) {
            prop_assert!(!v.is_nan(), "{text} parsed as NaN");
            if v.is_finite() {
                prop_assert!(quantity::same(&text, &text), "{text} is not itself");
            }
        }
    }

    #[test]
    fn kafka_arguments(key in "[a-z.]{0,30}", value in ".{0,30}") {
        if let Some(reason) = kafka_args::refusal(&key) {
            prop_assert!(reason.contains(key.trim()), "{reason} names the key");
        }
        if let Some(reason) = kafka_args::value_refusal(&key, &value) {
            prop_assert!(reason.contains(&key), "{reason} names the key");
        }
        let _ = kafka_args::translate(&key, &value);
    }
}
