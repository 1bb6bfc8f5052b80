//! Postgres connections for the writers whose store is Postgres (offline,
//! metrics, usage, vector): one pool per process, TLS as libpq's `sslmode`
//! and `sslrootcert` say (`tls.rs`).

pub mod row_sink;
pub mod rows;
pub mod tls;

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
/// key=value form), with libpq's TLS settings (`tls::split`).
pub fn pool(uri: &str, size: usize) -> Result<Pool, PgError> {
    let (uri, tls) = tls::split(uri)?;
    let mut config: tokio_postgres::Config = uri
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Uri(e.to_string()))?;
    config.ssl_mode(tls.mode);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if tls.mode == SslMode::Disable {
        Manager::from_config(config, NoTls, manager_config)
    } else {
        let connect = tokio_postgres_rustls::MakeRustlsConnect::new(tls.client_config()?);
        Manager::from_config(config, connect, manager_config)
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
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
