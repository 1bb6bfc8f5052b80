//! The rig's Postgres: connections and the benches' own schemas.

use crate::support::rig;

pub fn url() -> String {
    rig("postgres", "BGP_POSTGRES_URL")
}

/// A client on `uri`, its connection driven by a task of its own.
pub async fn connect(uri: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(uri, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

pub async fn drop_schema(client: &tokio_postgres::Client, name: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
        .await?;
    Ok(())
}
