//! Parsing a cloud secret's value into the keys of its Kubernetes Secret.
//! Every error message is fixed text naming a field or a key, never a value
//! (serde's messages can quote the input, so none of them is passed on).

use super::{SecretError, SecretValue};
use crate::contract as c;
use crate::operator::render::secret::store_uri_file;
use crate::operator::render::{SecretBytes, SecretEntry, Slot};
use std::collections::BTreeMap;

/// The accepted Kafka secret form, for messages.
pub const SASL_FORM: &str = r#"a JSON object {"username": "...", "password": "..."} (for OAUTHBEARER with OIDC, {"client_secret": "..."}), optionally with PEM "ssl_ca_pem", "ssl_certificate_pem", "ssl_key_pem" (and "ssl_key_password") or "ssl_keystore_password", or with those alone for SSL"#;

/// Fields of the Kafka secret, each with the file it becomes; the seed's
/// `sasl_username` / `sasl_password` spellings are taken too.
const KAFKA_FIELDS: [(&[&str], &str, bool); 8] = [
    (
        &["username", "sasl_username"],
        c::KAFKA_SASL_USERNAME_FILE,
        false,
    ),
    (
        &["password", "sasl_password"],
        c::KAFKA_SASL_PASSWORD_FILE,
        false,
    ),
    (&["ssl_ca_pem"], c::KAFKA_CA_FILE, true),
    (&["ssl_certificate_pem"], c::KAFKA_CERT_FILE, true),
    (&["ssl_key_pem"], c::KAFKA_KEY_FILE, true),
    (&["ssl_key_password"], c::KAFKA_KEY_PASSWORD_FILE, false),
    (&["client_secret"], c::KAFKA_CLIENT_SECRET_FILE, false),
    (
        &["ssl_keystore_password"],
        c::KAFKA_KEYSTORE_PASSWORD_FILE,
        false,
    ),
];

/// Turns a fetched value into the entry render writes for `slot`.
pub fn entry(
    slot: Slot,
    cloud_secret: &str,
    value: &SecretValue,
) -> Result<SecretEntry, SecretError> {
    let data = match slot {
        Slot::KafkaSasl => sasl(value.bytes.expose())?,
        Slot::StoreUri(kind) => {
            let file = store_uri_file(kind)
                .ok_or_else(|| SecretError::Malformed("this store takes no URI".into()))?;
            BTreeMap::from([(file.to_string(), store_uri(value.bytes.expose())?)])
        }
    };
    Ok(SecretEntry {
        cloud_secret: cloud_secret.to_string(),
        version: value.version.clone(),
        data,
    })
}

/// The Kafka secret (`SASL_FORM`; other keys are ignored) as the files the
/// writers read: credentials, and TLS material as PEM. Credentials come in
/// pairs, as do a client certificate and its key.
pub fn sasl(bytes: &[u8]) -> Result<BTreeMap<String, SecretBytes>, SecretError> {
    let malformed = |what: &str| SecretError::Malformed(format!("{what}; expected {SASL_FORM}"));
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8 text"))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|_| malformed("not valid JSON"))?;
    let object = json
        .as_object()
        .ok_or_else(|| malformed("JSON but not an object"))?;
    let mut out = BTreeMap::new();
    for (names, file, pem) in KAFKA_FIELDS {
        let Some((key, value)) = names.iter().find_map(|k| object.get(*k).map(|v| (*k, v))) else {
            continue;
        };
        let v = match value {
            serde_json::Value::String(s) if s.trim().is_empty() => {
                return Err(malformed(&format!("\"{key}\" is empty")));
            }
            serde_json::Value::String(s) => s,
            _ => return Err(malformed(&format!("\"{key}\" is not a string"))),
        };
        if pem && !v.contains("-----BEGIN ") {
            return Err(malformed(&format!(
                "\"{key}\" is not PEM (no -----BEGIN line)"
            )));
        }
        out.insert(file.to_string(), SecretBytes::new(v.as_bytes().to_vec()));
    }
    let field = |file: &str| {
        KAFKA_FIELDS
            .iter()
            .find(|(_, f, _)| *f == file)
            .map_or("", |(names, _, _)| names[0])
    };
    for (a, b) in c::KAFKA_SECRET_PAIRS {
        if out.contains_key(a) != out.contains_key(b) {
            let missing = if out.contains_key(a) { b } else { a };
            return Err(malformed(&format!(
                "no \"{}\" field (\"{}\" and \"{}\" go together)",
                field(missing),
                field(a),
                field(b)
            )));
        }
    }
    if out.is_empty() {
        return Err(malformed("no \"username\" field"));
    }
    Ok(out)
}

/// A store URI: the whole value, surrounding whitespace trimmed, of the form
/// `scheme://...` with no whitespace or control characters inside.
pub fn store_uri(bytes: &[u8]) -> Result<SecretBytes, SecretError> {
    let malformed = |what: &str| {
        SecretError::Malformed(format!(
            "{what}; expected the connection URI as plain text, scheme://..."
        ))
    };
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8 text"))?;
    let uri = text.trim();
    if uri.is_empty() {
        return Err(malformed("empty"));
    }
    if uri.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(malformed("contains whitespace or control characters"));
    }
    let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'))
    });
    if !scheme_ok {
        return Err(malformed("not of the form scheme://..."));
    }
    Ok(SecretBytes::new(uri.as_bytes().to_vec()))
}

/// CRC32C (Castagnoli), as Secret Manager reports in `dataCrc32c`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<impl std::fmt::Debug, SecretError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn sasl_json_gives_username_and_password() {
        let d = sasl(br#"{"username": "alice", "password": "s3cr3t", "engine": "x"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("username").map(|b| b.expose()), Some(&b"alice"[..]));
        assert_eq!(d.get("password").map(|b| b.expose()), Some(&b"s3cr3t"[..]));
    }

    #[test]
    fn an_oidc_client_secret_alone_is_a_kafka_secret() {
        let d = sasl(br#"{"client_secret": "cs"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.keys().collect::<Vec<_>>(), [c::KAFKA_CLIENT_SECRET_FILE]);
        assert_eq!(d[c::KAFKA_CLIENT_SECRET_FILE].expose(), b"cs");
    }

    #[test]
    fn kafka_secret_carries_tls_material_as_pem_files() {
        let pem = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----";
        let both = format!(
            r#"{{"sasl_username": "alice", "sasl_password": "pw", "ssl_ca_pem": "{pem}"}}"#
        );
        let d = sasl(both.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let files: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(files, ["ca.pem", "password", "username"]);
        let mtls = format!(
            r#"{{"ssl_ca_pem": "{pem}", "ssl_certificate_pem": "{pem}", "ssl_key_pem": "{pem}"}}"#
        );
        let d = sasl(mtls.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let files: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(files, ["ca.pem", "cert.pem", "key.pem"]);
        let half = format!(r#"{{"ssl_certificate_pem": "{pem}"}}"#);
        assert!(msg(sasl(half.as_bytes())).contains("no \"ssl_key_pem\" field"));
        let not_pem = r#"{"ssl_ca_pem": "hunter2"}"#;
        let m = msg(sasl(not_pem.as_bytes()));
        assert!(
            m.contains("\"ssl_ca_pem\" is not PEM") && !m.contains("hunter2"),
            "{m}"
        );
    }

    #[test]
    fn malformed_sasl_names_the_problem_never_the_value() {
        let cases: [(&[u8], &str); 7] = [
            (b"hunter2-not-json", "not valid JSON"),
            (b"\xff\xfehunter2", "not UTF-8"),
            (br#"["hunter2"]"#, "not an object"),
            (
                br#"{"user": "u", "pass": "hunter2"}"#,
                "no \"username\" field",
            ),
            (
                br#"{"username": "u", "pass": "hunter2"}"#,
                "no \"password\" field",
            ),
            (
                br#"{"username": "u", "password": 12345678}"#,
                "\"password\" is not a string",
            ),
            (
                br#"{"username": "", "password": "hunter2"}"#,
                "\"username\" is empty",
            ),
        ];
        for (input, want) in cases {
            let m = msg(sasl(input));
            assert!(m.contains(want), "{m}");
            assert!(!m.contains("hunter2") && !m.contains("12345678"), "{m}");
        }
    }

    #[test]
    fn store_uri_is_trimmed_and_checked() {
        let u = store_uri(b"  postgres://u:p@db:5432/x?sslmode=require\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.expose(), b"postgres://u:p@db:5432/x?sslmode=require");
        for bad in [
            &b""[..],
            b"   ",
            b"hunter2",
            b"redis://a b",
            b"://x",
            b"1x://y",
        ] {
            let m = msg(store_uri(bad));
            assert!(m.contains("scheme://") && !m.contains("hunter2"), "{m}");
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn debug_of_an_entry_hides_values() {
        let v = SecretValue {
            bytes: SecretBytes::new(br#"{"username": "alice", "password": "hunter2"}"#.to_vec()),
            version: "v1".into(),
        };
        let e = entry(Slot::KafkaSasl, "kafka/creds", &v).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{e:?} {v:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(
            shown.contains("kafka/creds") && shown.contains("v1"),
            "{shown}"
        );
    }
}
