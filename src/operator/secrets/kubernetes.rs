//! `secret_client: KUBERNETES`: credentials from an existing Secret, for users
//! of External Secrets, Vault's injector, Sealed Secrets or Strimzi's
//! KafkaUser Secrets. A name is a Secret in the writers' namespace, or
//! `<namespace>/<name>`. Its keys become the same value a cloud secret holds,
//! so one parser serves both (`parse.rs`):
//!
//! - Kafka: a JSON object of the Secret's keys, Strimzi's names mapped
//!   (`ca.crt` → `ssl_ca_pem`, `user.crt` → `ssl_certificate_pem`,
//!   `user.key` → `ssl_key_pem`; a SCRAM user's name from `sasl.jaas.config`).
//! - A store URI: the key `uri`, or the Secret's only key.
//!
//! The version is a digest of the data, not the resourceVersion, so a label
//! or annotation change does not roll the writers. The operator already reads
//! Secrets cluster-wide (it syncs and prunes its own), so this needs no new
//! RBAC; docs/secrets.md says what that grant means.

use super::{SecretError, SecretValue};
use crate::operator::render::{SecretBytes, Slot};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const PROVIDER: &str = "Kubernetes";

/// Strimzi's key names, as the Kafka secret's fields.
const STRIMZI_KEYS: [(&str, &str); 3] = [
    ("ca.crt", "ssl_ca_pem"),
    ("user.crt", "ssl_certificate_pem"),
    ("user.key", "ssl_key_pem"),
];

/// `(namespace, name)` of `reference` (`name` or `namespace/name`).
pub fn locate<'a>(reference: &'a str, default_namespace: &'a str) -> (&'a str, &'a str) {
    reference
        .split_once('/')
        .unwrap_or((default_namespace, reference))
}

/// The value `slot` takes from the Secret `reference`.
pub async fn fetch(
    client: &Client,
    default_namespace: &str,
    reference: &str,
    slot: Slot,
) -> Result<SecretValue, SecretError> {
    let (namespace, name) = locate(reference, default_namespace);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 403 => {
            SecretError::AccessDenied(format!("Secret {namespace}/{name}: {}", s.message))
        }
        other => SecretError::Unavailable(format!("Secret {namespace}/{name}: {other}")),
    })?;
    let secret =
        secret.ok_or_else(|| SecretError::NotFound(format!("Secret {namespace}/{name}")))?;
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    let version = digest(&data);
    let bytes = match slot {
        Slot::KafkaSasl => kafka_json(&data)?,
        Slot::StoreUri(_) => store_uri(&data)?,
    };
    Ok(SecretValue {
        bytes: SecretBytes::new(bytes),
        version,
    })
}

/// The Kafka secret's fields from the Secret's keys.
fn kafka_json(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, SecretError> {
    let text = |k: &str, v: &[u8]| {
        String::from_utf8(v.to_vec())
            .map_err(|_| SecretError::Malformed(format!("key {k:?} is not UTF-8 text")))
    };
    let mut object = serde_json::Map::new();
    for (k, v) in data {
        let field = STRIMZI_KEYS
            .iter()
            .find(|(strimzi, _)| strimzi == k)
            .map_or(k.as_str(), |(_, field)| field);
        object.insert(field.to_string(), text(k, v)?.into());
    }
    // A Strimzi SCRAM user's Secret holds the password and a JAAS line naming the user.
    if !object.contains_key("username")
        && let Some(jaas) = data.get("sasl.jaas.config")
        && let Some(user) = jaas_username(&text("sasl.jaas.config", jaas)?)
    {
        object.insert("username".into(), user.into());
    }
    serde_json::to_vec(&object).map_err(|_| SecretError::Malformed("not encodable".into()))
}

/// `username="..."` of a JAAS configuration line.
fn jaas_username(jaas: &str) -> Option<String> {
    let rest = jaas.split_once("username=\"")?.1;
    Some(rest.split_once('"')?.0.to_string())
}

fn store_uri(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, SecretError> {
    match (data.get("uri"), data.len()) {
        (Some(uri), _) => Ok(uri.clone()),
        (None, 1) => Ok(data.values().next().cloned().unwrap_or_default()),
        (None, n) => Err(SecretError::Malformed(format!(
            "{n} keys and none named \"uri\"; expected the connection URI under the key uri"
        ))),
    }
}

/// A digest of the data: the version shown in status and hashed into the
/// writers' pod template.
fn digest(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", &hex[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn strimzi_user_secrets_become_the_kafka_fields() -> Result<(), SecretError> {
        let tls = kafka_json(&data(&[
            ("ca.crt", "CA"),
            ("user.crt", "CRT"),
            ("user.key", "KEY"),
            ("user.p12", "P12"),
        ]))?;
        let v: serde_json::Value = serde_json::from_slice(&tls).unwrap_or_default();
        assert_eq!(v["ssl_ca_pem"], "CA");
        assert_eq!(v["ssl_certificate_pem"], "CRT");
        assert_eq!(v["ssl_key_pem"], "KEY");
        let scram = kafka_json(&data(&[
            ("password", "pw"),
            (
                "sasl.jaas.config",
                r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" password="pw";"#,
            ),
        ]))?;
        let v: serde_json::Value = serde_json::from_slice(&scram).unwrap_or_default();
        assert_eq!(
            (v["username"].as_str(), v["password"].as_str()),
            (Some("alice"), Some("pw"))
        );
        Ok(())
    }

    #[test]
    fn store_uris_and_versions() {
        assert_eq!(
            store_uri(&data(&[("uri", "redis://a"), ("x", "y")])).ok(),
            Some(b"redis://a".to_vec())
        );
        assert_eq!(
            store_uri(&data(&[("connection", "redis://b")])).ok(),
            Some(b"redis://b".to_vec())
        );
        assert!(store_uri(&data(&[("a", "1"), ("b", "2")])).is_err());
        let a = digest(&data(&[("uri", "redis://a")]));
        assert_eq!(a, digest(&data(&[("uri", "redis://a")])));
        assert_ne!(a, digest(&data(&[("uri", "redis://b")])));
        assert_eq!(locate("ns/name", "d"), ("ns", "name"));
        assert_eq!(locate("name", "d"), ("d", "name"));
    }
}
