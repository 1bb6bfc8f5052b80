//! The writers' Postgres connections against the rig's TLS-only Postgres
//! (its certificate from the rig's private CA), with libpq's sslmode meaning:
//! require encrypts without checking, verify-ca checks the chain, verify-full
//! the chain and the host name, and sslrootcert names the CAs.

use crate::support::rig;
use bgpersist::writer::stores::postgres::pool;

/// Whether a pool on `uri` gets a connection, and that it is encrypted.
async fn encrypted(uri: &str) -> anyhow::Result<bool> {
    let pool = pool(uri, 1)?;
    let client = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get::<_, bool>(0))
}

#[tokio::test]
async fn sslmode_and_sslrootcert_mean_what_libpq_says() -> anyhow::Result<()> {
    let url = rig("pgtls", "BGP_PGTLS_URL");
    let other_name = rig("pgtls", "BGP_PGTLS_URL_OTHER_NAME");
    let ca = rig("pgtls", "BGP_PGTLS_CA");
    let wrong_ca = rig("pgtls", "BGP_PGTLS_OTHER_CA");

    // Accepted: each connection is encrypted.
    for uri in [
        format!("{url}?sslmode=require"),
        url.clone(),
        format!("{url}?sslmode=prefer"),
        format!("{url}?sslmode=verify-ca&sslrootcert={ca}"),
        format!("{other_name}?sslmode=verify-ca&sslrootcert={ca}"),
        format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        format!("{other_name}?sslmode=require"),
    ] {
        assert!(
            encrypted(&uri)
                .await
                .map_err(|e| anyhow::anyhow!("{uri}: {e}"))?,
            "{uri}"
        );
    }

    // Refused: cleartext against a TLS-only server, a name the certificate
    // does not hold, a CA that did not sign it (also through require, which
    // checks the chain once sslrootcert is given), the system's CAs.
    for uri in [
        format!("{url}?sslmode=disable"),
        format!("{other_name}?sslmode=verify-full&sslrootcert={ca}"),
        format!("{url}?sslmode=verify-ca&sslrootcert={wrong_ca}"),
        format!("{url}?sslmode=require&sslrootcert={wrong_ca}"),
        format!("{url}?sslmode=verify-full"),
    ] {
        assert!(encrypted(&uri).await.is_err(), "{uri} was accepted");
    }
    let missing = format!("{url}?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
    let err = pool(&missing, 1).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("sslrootcert /nonexistent/ca.pem")),
        "{err:?}"
    );
    Ok(())
}
