//! ONLINE_WRITER on Redis over TLS (`rediss://`) with the rig's private CA,
//! named on the URI as redis-py spells it (`ssl_ca_certs`).

use crate::harness::*;
use crate::kafka_tls::writes_through_to;
use crate::support::{rig, unique};
use std::time::Duration;

/// Produces `n` entities, runs an ONLINE_WRITER on `store` until `conn`
/// reads them all back, and stops it cleanly.
async fn writes_through<C>(store: &str, conn: C, n: usize, what: &str) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let env = |topic: &str, dlq: &str| online_writer_env(topic, dlq, &unique("grp"), store);
    writes_through_to(env, conn, n, what).await
}

#[tokio::test]
async fn rediss_with_a_private_ca() -> anyhow::Result<()> {
    let store = format!(
        "{}?ssl_ca_certs={}",
        rig("redis", "BGP_REDIS_TLS_URL"),
        rig("redis", "BGP_REDIS_TLS_CA")
    );
    let client = redis::Client::build_with_tls(
        rig("redis", "BGP_REDIS_TLS_URL").as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(rig("redis", "BGP_REDIS_TLS_CA"))?),
        },
    )?;
    let conn = client.get_multiplexed_async_connection().await?;
    writes_through(&store, conn, 5, "Redis over TLS to hold the values").await?;

    // A CA file that is not there can never work: one line, exit 2.
    let missing = format!(
        "{}?ssl_ca_certs=/nonexistent/ca.pem",
        rig("redis", "BGP_REDIS_TLS_URL")
    );
    let (topic, dlq) = (unique("result"), unique("dlq"));
    let mut writer = Writer::start(&online_writer_env(&topic, &dlq, &unique("grp"), &missing))?;
    assert_eq!(writer.wait_exit(Duration::from_secs(10))?, Some(2));
    assert!(
        writer
            .log_text()
            .contains("ssl_ca_certs /nonexistent/ca.pem"),
        "{}",
        writer.log_text()
    );
    Ok(())
}

/// A CA that did not sign the server can never work: the writer stays up,
/// turns /readyz off naming the TLS failure, logs it once, and says so on
/// `bgpersist_writer_store_writable`.
#[tokio::test]
async fn a_store_ca_that_does_not_match_is_reported_on_readyz() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let (payloads, _) = dataset(&pkeys(&unique("tls"), 2));
    produce(&topic, &payloads).await?;
    let store = format!(
        "{}?ssl_ca_certs={}",
        rig("redis", "BGP_REDIS_TLS_URL"),
        rig("kafka", "BGP_RIG_OTHER_CA")
    );
    let mut writer = Writer::start(&online_writer_env(&topic, &dlq, &group, &store))?;
    let port = writer.http_port;
    let body = eventually(
        "/readyz to name the store's TLS failure",
        Duration::from_secs(30),
        || async move {
            let r = http_get(port, "/readyz").unwrap_or_default();
            Ok((r.contains(" 503 ") && r.contains("store not written")).then_some(r))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert!(body.to_lowercase().contains("certificate"), "{body}");
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(
        has_sample(&metrics, "bgpersist_writer_store_writable 0"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("store write failed"))
        .count();
    assert_eq!(lines, 1, "the same reason is logged once a minute:\n{log}");
    assert!(!writer.exited());
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

/// A TLS-only Redis Cluster (ElastiCache with in-transit encryption, cluster
/// mode on): the seeds and every node the cluster redirects to over TLS,
/// verified against the rig's CA.
#[tokio::test]
async fn rediss_cluster_with_a_private_ca() -> anyhow::Result<()> {
    let nodes = rig("redistls", "BGP_REDIS_TLS_CLUSTER_NODES");
    let ca = rig("redis", "BGP_REDIS_TLS_CA");
    let store = format!("{nodes}?clustered=true&ssl_ca_certs={ca}");
    let client = redis::cluster::ClusterClient::builder(nodes.split(',').collect::<Vec<_>>())
        .certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca)?),
        })
        .build()?;
    let conn = client.get_async_connection().await?;
    writes_through(&store, conn, 12, "the TLS cluster to hold the values").await
}
