//! libpq's TLS settings on a Postgres URI, with libpq's meaning (which
//! tokio-postgres does not parse): `sslmode` disable, allow, prefer,
//! require (encrypt only), verify-ca (the server's chain), verify-full
//! (chain and host name), and `sslrootcert` (a PEM file of CAs, or `system`).
//! As in libpq, `require` with an `sslrootcert` behaves as `verify-ca`, and
//! without `sslmode` the writer prefers TLS without verifying.

use super::PgError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::SslMode;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, the certificate unchecked (libpq prefer / require).
    Nothing,
    /// Signed by a trusted CA, any host name (verify-ca).
    Chain,
    /// Signed by a trusted CA and naming the host (verify-full).
    Full,
}

/// Which CAs are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    System,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub verify: Verify,
    pub roots: Roots,
}

/// Takes libpq's `sslmode` and `sslrootcert` off `uri` (URL or key=value
/// form): the URI tokio-postgres can parse, and what they mean.
pub fn split(uri: &str) -> Result<(String, PgTls), PgError> {
    let uri = uri.trim();
    let mut sslmode = None;
    let mut rootcert = None;
    let mut take = |k: &str, v: &str| match k {
        "sslmode" => {
            sslmode = Some(v.to_string());
            true
        }
        "sslrootcert" => {
            rootcert = Some(v.to_string());
            true
        }
        _ => false,
    };
    let rest = if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        let mut url =
            url::Url::parse(uri).map_err(|_| PgError::Uri("not a postgres:// URL".into()))?;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, v)| !take(k, v))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url.to_string()
    } else {
        uri.split_whitespace()
            .filter(|kv| kv.split_once('=').is_none_or(|(k, v)| !take(k, v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let roots = match rootcert.as_deref() {
        None | Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let (mode, verify) = match sslmode.as_deref() {
        Some("disable") => (SslMode::Disable, Verify::Nothing),
        None | Some("allow" | "prefer") => (SslMode::Prefer, Verify::Nothing),
        Some("require") if rootcert.is_some() => (SslMode::Require, Verify::Chain),
        Some("require") => (SslMode::Require, Verify::Nothing),
        Some("verify-ca") => (SslMode::Require, Verify::Chain),
        Some("verify-full") => (SslMode::Require, Verify::Full),
        Some(_) => {
            return Err(PgError::Uri(
                "sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    .into(),
            ));
        }
    };
    Ok((
        rest,
        PgTls {
            mode,
            verify,
            roots,
        },
    ))
}

impl PgTls {
    /// The rustls client configuration these settings ask for.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PgError> {
        let builder = rustls::ClientConfig::builder();
        let verifier: Arc<dyn ServerCertVerifier> = match self.verify {
            Verify::Nothing => Arc::new(Lenient::new(None)?),
            Verify::Chain => Arc::new(Lenient::new(Some(self.webpki()?))?),
            Verify::Full => self.webpki()?,
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    fn webpki(&self) -> Result<Arc<WebPkiServerVerifier>, PgError> {
        let mut roots = RootCertStore::empty();
        match &self.roots {
            Roots::System => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A broken system certificate should not stop the writer.
                    let _ = roots.add(cert);
                }
            }
            Roots::File(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| PgError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        PgError::Tls(format!("sslrootcert {}: not PEM", path.display()))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(PgError::Tls(format!(
                        "sslrootcert {}: no CA certificate in it",
                        path.display()
                    )));
                }
            }
        }
        WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| PgError::Tls(e.to_string()))
    }
}

/// libpq's `require` (no `chain`: the certificate is not checked) and
/// `verify-ca` (the chain is checked, the host name is not). The handshake's
/// signatures are always checked.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Lenient {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>) -> Result<Self, PgError> {
        let algorithms = rustls::crypto::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms)
            .ok_or_else(|| PgError::Tls("no crypto provider installed".into()))?;
        Ok(Lenient { chain, algorithms })
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name: a name error means the
        // chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(uri: &str) -> (String, PgTls) {
        split(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    #[test]
    fn sslmode_means_what_it_means_in_libpq() {
        let base = "postgres://u:p@db:5432/x";
        let cases = [
            ("", SslMode::Prefer, Verify::Nothing),
            ("?sslmode=disable", SslMode::Disable, Verify::Nothing),
            ("?sslmode=prefer", SslMode::Prefer, Verify::Nothing),
            ("?sslmode=require", SslMode::Require, Verify::Nothing),
            (
                "?sslmode=require&sslrootcert=/ca.pem",
                SslMode::Require,
                Verify::Chain,
            ),
            ("?sslmode=verify-ca", SslMode::Require, Verify::Chain),
            ("?sslmode=verify-full", SslMode::Require, Verify::Full),
        ];
        for (query, mode, verify) in cases {
            let (rest, t) = tls(&format!("{base}{query}"));
            assert_eq!((t.mode, t.verify), (mode, verify), "{query}");
            assert_eq!(rest, base, "{query}");
        }
        assert!(split("postgres://db/x?sslmode=verify").is_err());
    }

    #[test]
    fn only_the_tls_parameters_are_taken_off() {
        let (rest, t) = tls(
            "postgres://db/x?application_name=w&sslrootcert=/etc/ca.pem&sslmode=verify-full&options=-csearch_path%3Ds",
        );
        assert_eq!(
            rest,
            "postgres://db/x?application_name=w&options=-csearch_path%3Ds"
        );
        assert_eq!(t.roots, Roots::File("/etc/ca.pem".into()));
        let (rest, t) = tls("host=db dbname=x sslmode=verify-ca sslrootcert=system");
        assert_eq!(rest, "host=db dbname=x");
        assert_eq!((t.verify, t.roots), (Verify::Chain, Roots::System));
    }
}
