//! ONLINE_WRITER on Redis over TLS (`rediss://`) with the rig's private CA,
//! named on the URI as redis-py spells it (`ssl_ca_certs`).

use crate::harness::*;
use crate::support::{rig, unique};
use std::time::Duration;

#[tokio::test]
async fn rediss_with_a_private_ca() -> anyhow::Result<()> {
    let (topic, dlq, group) = (unique("result"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let keys = pkeys(&unique("tls"), 5);
    let (payloads, expected) = dataset(&keys);
    produce(&topic, &payloads).await?;

    let store = format!(
        "{}?ssl_ca_certs={}",
        rig("redis", "BGP_REDIS_TLS_URL"),
        rig("redis", "BGP_REDIS_TLS_CA")
    );
    let mut writer = Writer::start(&online_writer_env(&topic, &dlq, &group, &store))?;
    let client = redis::Client::build_with_tls(
        rig("redis", "BGP_REDIS_TLS_URL").as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(rig("redis", "BGP_REDIS_TLS_CA"))?),
        },
    )?;
    let conn = client.get_multiplexed_async_connection().await?;
    eventually("Redis over TLS to hold the values", Duration::from_secs(60), || {
        let (keys, expected, mut conn) = (keys.clone(), expected.clone(), conn.clone());
        async move { Ok((redis_entities(&mut conn, "", &keys).await? == expected).then_some(())) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));

    // A CA file that is not there can never work: one line, exit 2.
    let missing = format!(
        "{}?ssl_ca_certs=/nonexistent/ca.pem",
        rig("redis", "BGP_REDIS_TLS_URL")
    );
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
