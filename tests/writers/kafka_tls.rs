//! Writers on the rig's TLS listeners, signed by the rig's private CA: the
//! seed's own settings (SASL_SSL + SCRAM-SHA-512), PLAIN as the default
//! mechanism, mTLS with a client certificate and no SASL, and a CA that does
//! not match, reported on /readyz instead of retried in silence.

use crate::harness::*;
use crate::support::{rig, unique};
use std::path::PathBuf;
use std::time::Duration;

/// The files the operator mounts from the Kafka secret, as `(file, content)`.
pub(crate) fn secret_dir(files: &[(&str, String)]) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("kafka-secret"));
    std::fs::create_dir_all(&dir)?;
    for (name, content) in files {
        std::fs::write(dir.join(name), content)?;
    }
    Ok(dir)
}

pub(crate) fn rig_file(key: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(rig("kafka", key))?)
}

fn scram_files() -> Vec<(&'static str, String)> {
    vec![
        ("username", rig("kafka", "BGP_KAFKA_SCRAM_USER")),
        ("password", rig("kafka", "BGP_KAFKA_SCRAM_PASSWORD")),
    ]
}

/// An online writer on `bootstrap` with `security` settings and the secret dir.
pub(crate) fn tls_env(
    topic: &str,
    dlq: &str,
    bootstrap: &str,
    security: &[(&'static str, &str)],
    dir: &std::path::Path,
) -> Vec<(&'static str, String)> {
    let mut env = online_writer_env(topic, dlq, &unique("grp"), &rig("redis", "BGP_REDIS_URL"));
    env.retain(|(k, _)| *k != "BGP_KAFKA_BOOTSTRAP_SERVERS");
    env.push(("BGP_KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_string()));
    env.push(("BGP_KAFKA_SASL_DIR", dir.display().to_string()));
    env.extend(security.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

/// Produces a small dataset and waits until the writer wrote it to Redis.
pub(crate) async fn writes_through(
    env_for: impl Fn(&str, &str) -> Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    let conn = standalone().await?;
    writes_through_to(env_for, conn, 5, "Redis to hold the values").await
}

/// Produces `n` entities, runs the writer `env_for(topic, dlq)` describes
/// until `conn` reads them all back, and stops it cleanly.
pub(crate) async fn writes_through_to<C>(
    env_for: impl Fn(&str, &str) -> Vec<(&'static str, String)>,
    conn: C,
    n: usize,
    what: &str,
) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let (topic, dlq) = (unique("tls"), unique("dlq"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let keys = pkeys(&unique("t"), n);
    let (payloads, expected) = dataset(&keys);
    produce(&topic, &payloads).await?;
    let mut writer = Writer::start(&env_for(&topic, &dlq))?;
    eventually(what, Duration::from_secs(60), || {
        let (keys, expected, mut conn) = (keys.clone(), expected.clone(), conn.clone());
        async move { Ok((redis_entities(&mut conn, "", &keys).await? == expected).then_some(())) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}

#[tokio::test]
async fn the_seeds_sasl_ssl_scram_sha_512_with_a_private_ca() -> anyhow::Result<()> {
    let mut files = scram_files();
    files.push(("ca.pem", rig_file("BGP_RIG_CA")?));
    let dir = secret_dir(&files)?;
    let bootstrap = rig("kafka", "BGP_KAFKA_SASL_SSL");
    writes_through(|topic, dlq| {
        tls_env(
            topic,
            dlq,
            &bootstrap,
            &[
                ("BGP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("BGP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ],
            &dir,
        )
    })
    .await
}

#[tokio::test]
async fn sasl_ssl_plain_and_scram_sha_256() -> anyhow::Result<()> {
    let mut files = scram_files();
    files.push(("ca.pem", rig_file("BGP_RIG_CA")?));
    let dir = secret_dir(&files)?;
    let bootstrap = rig("kafka", "BGP_KAFKA_SASL_SSL");
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        writes_through(|topic, dlq| {
            tls_env(
                topic,
                dlq,
                &bootstrap,
                &[
                    ("BGP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("BGP_KAFKA_SASL_MECHANISM", mechanism),
                ],
                &dir,
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("{mechanism}: {e}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn mtls_with_a_client_certificate_and_no_sasl() -> anyhow::Result<()> {
    let dir = secret_dir(&[
        ("ca.pem", rig_file("BGP_RIG_CA")?),
        ("cert.pem", rig_file("BGP_RIG_CLIENT_CERT")?),
        ("key.pem", rig_file("BGP_RIG_CLIENT_KEY")?),
    ])?;
    let bootstrap = rig("kafka", "BGP_KAFKA_MTLS");
    writes_through(|topic, dlq| {
        tls_env(
            topic,
            dlq,
            &bootstrap,
            &[("BGP_KAFKA_SECURITY_PROTOCOL", "SSL")],
            &dir,
        )
    })
    .await
}

/// A CA that did not sign the broker: the writer is not ready, /readyz says
/// why within seconds, and the log says it once.
#[tokio::test]
async fn a_ca_that_does_not_match_is_reported_on_readyz() -> anyhow::Result<()> {
    let dir = secret_dir(&[("ca.pem", rig_file("BGP_RIG_OTHER_CA")?)])?;
    let (topic, dlq) = (unique("tls"), unique("dlq"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let env = tls_env(
        &topic,
        &dlq,
        &rig("kafka", "BGP_KAFKA_SSL"),
        &[("BGP_KAFKA_SECURITY_PROTOCOL", "SSL")],
        &dir,
    );
    let mut writer = Writer::start(&env)?;
    let port = writer.http_port;
    let body = eventually(
        "/readyz to name the TLS failure",
        Duration::from_secs(20),
        || async move {
            let r = http_get(port, "/readyz").unwrap_or_default();
            Ok((r.contains(" 503 ") && r.to_lowercase().contains("certificate")).then_some(r))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert!(body.contains("bus not reached"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.log_text();
    let reports = log
        .lines()
        .filter(|l| l.contains("bus not reached yet") && l.contains("certificate"))
        .count();
    assert_eq!(reports, 1, "the same reason is logged once:\n{log}");
    assert!(!writer.exited(), "a bus that may come back is not a crash");
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(())
}
