//! Credentials for the Snowflake SQL API, as the documented
//! `Authorization: Bearer <token>` plus `X-Snowflake-Authorization-Token-Type`.
//!
//! - Key-pair: the user's unencrypted RSA private key (PKCS#8 or PKCS#1). A
//!   JWT is minted here (RS256; `iss` = `ACCOUNT.USER.SHA256:<fingerprint of
//!   the public key>`, `sub` = `ACCOUNT.USER`, one hour at most) and renewed
//!   five minutes before it expires.
//! - A token issued elsewhere (OAuth access token, programmatic access
//!   token), inline or in a file that is re-read on every request, so a file
//!   rotated in place takes effect at once.
//! - None: only with the endpoint override (local fakes).

use super::warehouse::WarehouseError;
use crate::writer::runtime::sink::WriterError;
use base64::Engine;
use rustls::SignatureScheme;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest JWT lifetime Snowflake accepts is one hour; stay under it.
const JWT_LIFETIME_SECS: u64 = 59 * 60;
/// A cached JWT is replaced when it has less than this left.
const JWT_RENEW_BEFORE_SECS: u64 = 5 * 60;

/// `X-Snowflake-Authorization-Token-Type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    OAuth,
    KeyPairJwt,
    ProgrammaticAccessToken,
}

impl TokenKind {
    pub fn header_value(self) -> &'static str {
        match self {
            TokenKind::OAuth => "OAUTH",
            TokenKind::KeyPairJwt => "KEYPAIR_JWT",
            TokenKind::ProgrammaticAccessToken => "PROGRAMMATIC_ACCESS_TOKEN",
        }
    }

    pub fn parse(s: &str) -> Result<Self, WarehouseError> {
        match s.to_ascii_uppercase().as_str() {
            "OAUTH" => Ok(TokenKind::OAuth),
            "KEYPAIR_JWT" => Ok(TokenKind::KeyPairJwt),
            "PROGRAMMATIC_ACCESS_TOKEN" | "PAT" => Ok(TokenKind::ProgrammaticAccessToken),
            other => Err(WarehouseError::Uri(format!(
                "token_type {other:?} is not OAUTH, KEYPAIR_JWT or PROGRAMMATIC_ACCESS_TOKEN"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TokenSource {
    Inline(String),
    /// Read on every request (a mounted secret updated in place).
    File(PathBuf),
}

pub enum SnowflakeAuth {
    KeyPair(KeyPairJwt),
    Token {
        source: TokenSource,
        kind: TokenKind,
    },
    /// No Authorization header.
    Anonymous,
}

impl SnowflakeAuth {
    /// The bearer token and its type for the next request, if any.
    pub fn bearer(&self) -> Result<Option<(String, TokenKind)>, WriterError> {
        match self {
            SnowflakeAuth::Anonymous => Ok(None),
            SnowflakeAuth::KeyPair(jwt) => jwt
                .token(SystemTime::now())
                .map(|t| Some((t, TokenKind::KeyPairJwt)))
                .map_err(WriterError::Retriable),
            SnowflakeAuth::Token { source, kind } => {
                let token = match source {
                    TokenSource::Inline(t) => t.clone(),
                    // A missing file may be a secret being rotated: retry, never drop.
                    TokenSource::File(path) => std::fs::read_to_string(path)
                        .map_err(|e| {
                            WriterError::Retriable(format!(
                                "Snowflake token file {}: {e}",
                                path.display()
                            ))
                        })?
                        .trim()
                        .to_string(),
                };
                Ok(Some((token, *kind)))
            }
        }
    }
}

/// Mints key-pair JWTs for one user.
pub struct KeyPairJwt {
    /// `ACCOUNT.USER`, upper case, the account without region or cloud parts.
    subject: String,
    /// `SHA256:` + base64 of the SHA-256 of the public key (SubjectPublicKeyInfo DER).
    fingerprint: String,
    key: Arc<dyn SigningKey>,
    /// The current token and when it expires (Unix seconds).
    cached: Mutex<Option<(String, u64)>>,
}

impl KeyPairJwt {
    /// `key` is PEM (`PRIVATE KEY` or `RSA PRIVATE KEY`) or PKCS#8 DER.
    pub fn new(account: &str, user: &str, key: &[u8]) -> Result<Self, WarehouseError> {
        let der = match PrivateKeyDer::from_pem_slice(key) {
            Ok(der) => der,
            Err(_) if !key.starts_with(b"-----") => {
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()))
            }
            Err(e) => {
                return Err(WarehouseError::Credentials(format!(
                    "the Snowflake private key is not an unencrypted PEM key: {e}"
                )));
            }
        };
        let key = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
            WarehouseError::Credentials(format!("the Snowflake private key cannot be used: {e}"))
        })?;
        if key.algorithm() != rustls::SignatureAlgorithm::RSA {
            return Err(WarehouseError::Credentials(
                "the Snowflake private key must be an RSA key".into(),
            ));
        }
        let spki = key.public_key().ok_or_else(|| {
            WarehouseError::Credentials("the Snowflake private key has no public key".into())
        })?;
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref()))
        );
        // Snowflake wants the account locator without ".region.cloud", upper case.
        let account = account.split('.').next().unwrap_or(account).to_uppercase();
        Ok(KeyPairJwt {
            subject: format!("{account}.{}", user.to_uppercase()),
            fingerprint,
            key,
            cached: Mutex::new(None),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A token valid for at least five more minutes at `now`.
    pub fn token(&self, now: SystemTime) -> Result<String, String> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| "the Snowflake token cache is poisoned".to_string())?;
        if let Some((token, exp)) = cached.as_ref()
            && *exp > now + JWT_RENEW_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        let exp = now + JWT_LIFETIME_SECS;
        let token = self.sign(now, exp)?;
        *cached = Some((token.clone(), exp));
        Ok(token)
    }

    fn sign(&self, iat: u64, exp: u64) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": format!("{}.{}", self.subject, self.fingerprint),
            "sub": self.subject,
            "iat": iat,
            "exp": exp,
        });
        let signing_input = format!("{header}.{}", b64.encode(claims.to_string()));
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .ok_or("the Snowflake private key cannot sign RS256")?;
        let signature = signer
            .sign(signing_input.as_bytes())
            .map_err(|e| format!("signing the Snowflake JWT failed: {e}"))?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kinds_parse_case_insensitively() -> Result<(), WarehouseError> {
        assert_eq!(TokenKind::parse("oauth")?, TokenKind::OAuth);
        assert_eq!(
            TokenKind::parse("PAT")?.header_value(),
            "PROGRAMMATIC_ACCESS_TOKEN"
        );
        assert!(TokenKind::parse("password").is_err());
        Ok(())
    }

    #[test]
    fn garbage_keys_are_refused_clearly() {
        let err = KeyPairJwt::new("acct", "u", b"-----BEGIN PRIVATE KEY-----\nnope\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("private key"), "{err}");
        assert!(KeyPairJwt::new("acct", "u", b"\x30\x03\x02\x01\x00").is_err());
    }
}
