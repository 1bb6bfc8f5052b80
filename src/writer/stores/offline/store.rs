//! The offline store of this run, picked from the URI scheme of
//! `offline_store` (mounted file or `BGP_OFFLINE_STORE_URI`). One arm per
//! store in [`open_uri`] and in [`Store`]'s `load`.

use super::bigquery::BigQueryStore;
use super::object::ObjectLoad;
use super::postgres::PostgresStore;
use super::snowflake::SnowflakeStore;
use super::warehouse::WarehouseError;
use super::{OfflineStore, TableRows};
use crate::writer::config::{ConfigError, WriterConfig};
use crate::writer::runtime::sink::{Rejected, WriterError};
use crate::writer::stores::postgres::PgError;
use crate::writer::stores::uri::split_scheme;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("offline store URI: {0}")]
    Uri(#[from] ConfigError),
    #[error(
        "offline store URI: scheme {0:?} is not supported (postgres, postgresql, bigquery, snowflake)"
    )]
    Scheme(String),
    #[error("offline store: {0}")]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

pub enum Store {
    Postgres(PostgresStore),
    BigQuery(BigQueryStore),
    Snowflake(SnowflakeStore),
}

/// Opens the store the configuration names.
pub async fn open_store(cfg: &WriterConfig) -> Result<Store, OfflineError> {
    let uri = cfg.store_uri("offline_store")?;
    open_uri(&uri, cfg).await
}

/// Opens the store `uri` names, by scheme.
pub async fn open_uri(uri: &str, cfg: &WriterConfig) -> Result<Store, OfflineError> {
    let (scheme, rest) = split_scheme(uri);
    let store = match scheme.as_str() {
        "postgres" | "postgresql" => {
            Store::Postgres(PostgresStore::open(&format!("{scheme}://{rest}"))?)
        }
        "bigquery" => {
            Store::BigQuery(BigQueryStore::open(uri, cfg.bigquery_endpoint.as_deref()).await?)
        }
        "snowflake" => Store::Snowflake(
            SnowflakeStore::open(uri, cfg.snowflake_endpoint.as_deref())?
                .with_storage_integration(cfg.snowflake_storage_integration.clone()),
        ),
        _ => return Err(OfflineError::Scheme(scheme)),
    };
    if let Some(flavour) = &cfg.offline_store_db_type
        && !flavour
            .to_ascii_lowercase()
            .starts_with(&scheme[..scheme.len().min(6)])
    {
        tracing::warn!(%flavour, %scheme, "offline_store_inserter_db_type does not match the store URI; the URI wins");
    }
    Ok(store)
}

impl OfflineStore for Store {
    async fn load(&self, rows: &[TableRows]) -> Result<Vec<Rejected>, WriterError> {
        match self {
            Store::Postgres(s) => s.load(rows).await,
            Store::BigQuery(s) => s.load(rows).await,
            Store::Snowflake(s) => s.load(rows).await,
        }
    }

    async fn load_object(&self, object: &ObjectLoad) -> Result<Option<String>, WriterError> {
        match self {
            Store::Postgres(s) => s.load_object(object).await,
            Store::BigQuery(s) => s.load_object(object).await,
            Store::Snowflake(s) => s.load_object(object).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Result<WriterConfig, ConfigError> {
        crate::writer::config::fixtures::kafka_writer("OFFLINE_WRITER", "offline")
    }

    #[tokio::test]
    async fn the_uri_scheme_picks_the_store() -> Result<(), Box<dyn std::error::Error>> {
        crate::install_crypto_provider();
        let cfg = cfg()?;
        for ok in [
            "postgres://u@h:5432/db",
            "POSTGRESQL://u@h/db?sslmode=disable",
        ] {
            assert!(
                matches!(open_uri(ok, &cfg).await?, Store::Postgres(_)),
                "{ok}"
            );
        }
        // Snowflake opens without a round trip (BigQuery checks its dataset).
        assert!(matches!(
            open_uri("snowflake://u@acct/DB/SCH?token=t", &cfg).await?,
            Store::Snowflake(_)
        ));
        for bad in ["mysql://h/db", "", "h:5432"] {
            let err = open_uri(bad, &cfg)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("is not supported"), "{bad}: {err}");
        }
        Ok(())
    }
}
