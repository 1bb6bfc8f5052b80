//! An in-memory `SecretSource` for tests that are not about cloud secrets:
//! every name resolves to the same SASL credentials at version "v1".

use bgpersist::operator::render::SecretBytes;
use bgpersist::operator::secrets::{
    BoxFuture, SecretError, SecretSettings, SecretSource, SecretValue,
};
use std::sync::Arc;

pub const USERNAME: &str = "in-memory-user";
pub const PASSWORD: &str = "in-memory-password";

pub struct InMemory;

impl SecretSource for InMemory {
    fn provider(&self) -> &'static str {
        "in-memory test secrets"
    }

    fn fetch<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<SecretValue, SecretError>> {
        Box::pin(async {
            Ok(SecretValue {
                bytes: SecretBytes::new(
                    format!(r#"{{"username": "{USERNAME}", "password": "{PASSWORD}"}}"#)
                        .into_bytes(),
                ),
                version: "v1".into(),
            })
        })
    }
}

/// Settings whose AWS and GCP sources are both `InMemory`.
pub fn in_memory() -> SecretSettings {
    SecretSettings::new(Arc::new(InMemory), Arc::new(InMemory))
}
