//! Postgres connections for the writers whose store is Postgres (offline,
//! metrics, usage, vector): one pool per process, TLS when the server offers it.

pub mod row_sink;
pub mod rows;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URI itself is never echoed: it may carry a password.
    #[error("postgres URI is not valid: {0}")]
    Uri(String),
    #[error("postgres TLS setup: {0}")]
    Tls(String),
    #[error("postgres pool: {0}")]
    Pool(String),
}

/// A pool of at most `size` connections to `uri` (`postgres://` URL or
/// key=value form). `sslmode=disable` connects in clear; otherwise TLS is
/// tried with the system's roots (and required when the URI says so).
pub fn pool(uri: &str, size: usize) -> Result<Pool, PgError> {
    let config: tokio_postgres::Config = uri
        .trim()
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Uri(e.to_string()))?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if config.get_ssl_mode() == SslMode::Disable {
        Manager::from_config(config, NoTls, manager_config)
    } else {
        Manager::from_config(config, tls()?, manager_config)
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A broken system certificate should not stop the writer.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Whether a failed statement may succeed when retried as is: connection
/// loss, server shutdown, overload, serialization conflicts, deadlocks, and
/// what an operator fixes outside the writer (a missing privilege, a
/// read-only server during a failover, a table dropped under the writer).
/// Data and constraint errors are not: the rows are at fault, not the store.
pub fn is_retriable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "53" | "57" | "40" | "58")
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::UNDEFINED_TABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_uri_is_refused_without_echoing_it() {
        let err = pool("postgres://user:s3cret@host:notaport/db", 2)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not valid"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_well_formed_uri_builds_a_pool_without_connecting() {
        let pool = pool("postgres://postgres@127.0.0.1:1/db?sslmode=disable", 4);
        assert_eq!(pool.map(|p| p.status().max_size).ok(), Some(4));
    }
}
