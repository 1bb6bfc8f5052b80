//! `ssl_keystore_location` / `ssl_truststore_location`: the client
//! certificate as a PKCS#12 keystore and the CA as PEM, kept in S3 (the rig's
//! moto), fetched by the writer at start, on the broker's mTLS listener. A
//! Java KeyStore and a missing object stop the writer with one line.

use crate::harness::*;
use crate::kafka_tls::{rig_file, secret_dir, tls_env, writes_through};
use crate::offline_harness::S3Bucket;
use crate::support::{rig, unique};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "keystore-pass";

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The rig's client certificate as PKCS#12 and as a JKS, made with openssl
/// and keytool as a Java shop would.
fn keystores() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("keystores"));
    std::fs::create_dir_all(&dir)?;
    let (p12, jks) = (dir.join("client.p12"), dir.join("client.jks"));
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-name", "client"])
        .args([
            "-in".as_ref(),
            Path::new(&rig("kafka", "BGP_RIG_CLIENT_CERT")).as_os_str(),
            "-inkey".as_ref(),
            Path::new(&rig("kafka", "BGP_RIG_CLIENT_KEY")).as_os_str(),
            "-out".as_ref(),
            p12.as_os_str(),
        ])
        .arg("-passout")
        .arg(format!("pass:{PASSWORD}")))?;
    run(Command::new("keytool")
        .args([
            "-importkeystore",
            "-noprompt",
            "-srcstoretype",
            "PKCS12",
            "-deststoretype",
            "JKS",
        ])
        .arg("-srckeystore")
        .arg(&p12)
        .arg("-destkeystore")
        .arg(&jks)
        .args(["-srcstorepass", PASSWORD, "-deststorepass", PASSWORD]))?;
    Ok((p12, jks))
}

fn keystore_env(
    topic: &str,
    dlq: &str,
    dir: &Path,
    bucket: &S3Bucket,
    keystore: &str,
    truststore: &str,
) -> Vec<(&'static str, String)> {
    let mut env = tls_env(
        topic,
        dlq,
        &rig("kafka", "BGP_KAFKA_MTLS"),
        &[("BGP_KAFKA_SECURITY_PROTOCOL", "SSL")],
        dir,
    );
    env.extend(bucket.writer_env());
    env.push(("BGP_KAFKA_SSL_KEYSTORE_LOCATION", keystore.into()));
    env.push(("BGP_KAFKA_SSL_TRUSTSTORE_LOCATION", truststore.into()));
    env
}

#[tokio::test]
async fn a_pkcs12_keystore_and_a_ca_from_s3_on_the_mtls_listener() -> anyhow::Result<()> {
    let (p12, jks) = keystores()?;
    let bucket = S3Bucket::create().await?;
    let keystore = bucket.put("kafka/client.p12", std::fs::read(&p12)?).await?;
    let truststore = bucket
        .put("kafka/ca.pem", rig_file("BGP_RIG_CA")?.into_bytes())
        .await?;
    let dir = secret_dir(&[("keystore_password", PASSWORD.into())])?;
    writes_through(|topic, dlq| keystore_env(topic, dlq, &dir, &bucket, &keystore, &truststore))
        .await?;

    // What can never work stops the writer at start: one line, exit 2.
    let java = bucket.put("kafka/client.jks", std::fs::read(&jks)?).await?;
    let missing = format!("s3://{}/kafka/nope.p12", bucket.name);
    for (store, says) in [
        (&java, "Java KeyStore (JKS)"),
        (&missing, "ssl_keystore_location"),
    ] {
        let env = keystore_env(
            &unique("t"),
            &unique("d"),
            &dir,
            &bucket,
            store,
            &truststore,
        );
        let mut writer = Writer::start(&env)?;
        assert_eq!(
            writer.wait_exit(Duration::from_secs(20))?,
            Some(2),
            "{}",
            writer.log_text()
        );
        let log = writer.log_text();
        assert!(log.contains(says) && log.contains(store.as_str()), "{log}");
    }
    Ok(())
}
