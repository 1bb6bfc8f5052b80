//! OAUTHBEARER: the rig's OIDC endpoint issues tokens by the client
//! credentials grant and the broker checks them with Kafka's own JWT
//! validator against the endpoint's JWKS. AWS MSK IAM cannot be proved
//! without MSK: its token is checked against the signer's documented format
//! (a SigV4-presigned `kafka-cluster:Connect` URL), signature included, with
//! credentials from IRSA's web identity through the rig's STS (moto).

use crate::harness::*;
use crate::kafka_tls::{rig_file, secret_dir, tls_env, writes_through};
use crate::support::{rig, unique};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn oidc_security(token_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BGP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("BGP_KAFKA_SASL_MECHANISM", "OAUTHBEARER".into()),
        ("BGP_KAFKA_OAUTH_METHOD", "OIDC".into()),
        ("BGP_KAFKA_OAUTH_TOKEN_URL", token_url.into()),
        (
            "BGP_KAFKA_OAUTH_CLIENT_ID",
            rig("oidc", "BGP_OIDC_CLIENT_ID"),
        ),
        ("BGP_KAFKA_OAUTH_SCOPE", "kafka".into()),
    ]
}

fn oidc_env(
    topic: &str,
    dlq: &str,
    dir: &std::path::Path,
    token_url: &str,
) -> Vec<(&'static str, String)> {
    let mut env = tls_env(topic, dlq, &rig("kafka", "BGP_KAFKA_OAUTH"), &[], dir);
    env.extend(oidc_security(token_url));
    env
}

#[tokio::test]
async fn oidc_client_credentials_on_the_brokers_jwt_validated_listener() -> anyhow::Result<()> {
    let dir = secret_dir(&[
        ("client_secret", rig("oidc", "BGP_OIDC_CLIENT_SECRET")),
        ("ca.pem", rig_file("BGP_RIG_CA")?),
    ])?;
    let url = rig("oidc", "BGP_OIDC_TOKEN_URL");
    writes_through(|topic, dlq| oidc_env(topic, dlq, &dir, &url)).await
}

/// A refused client secret and an unreachable token endpoint are reported
/// on /readyz within seconds, with the endpoint's own reason.
#[tokio::test]
async fn a_refused_or_unreachable_token_endpoint_is_reported_on_readyz() -> anyhow::Result<()> {
    let ca = rig_file("BGP_RIG_CA")?;
    let wrong = secret_dir(&[("client_secret", "not-the-secret".into()), ("ca.pem", ca)])?;
    let closed = format!("http://127.0.0.1:{}/token", free_port()?);
    for (dir, url, reason) in [
        (&wrong, rig("oidc", "BGP_OIDC_TOKEN_URL"), "invalid_client"),
        (&wrong, closed, "unreachable"),
    ] {
        let (topic, dlq) = (unique("oauth"), unique("dlq"));
        create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
        let mut writer = Writer::start(&oidc_env(&topic, &dlq, dir, &url))?;
        let port = writer.http_port;
        let body = eventually(
            "/readyz to name the token failure",
            Duration::from_secs(20),
            || async move {
                let r = http_get(port, "/readyz").unwrap_or_default();
                Ok((r.contains(" 503 ") && r.contains(reason)).then_some(r))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{reason}: {e}\nwriter log:\n{}", writer.log_text()))?;
        assert!(body.contains("bus not reached"), "{body}");
        assert!(
            !writer.exited(),
            "an endpoint that may come back is not a crash"
        );
        writer.signal("TERM")?;
        assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    }
    Ok(())
}

/// `bgpersist-writer kafka-token` with `env` only; its JSON output.
fn kafka_token(env: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BGP_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
        .env("BGP_KAFKA_OAUTH_METHOD", "AWS_MSK_IAM")
        .args(["kafka-token", "--reveal"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "kafka-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The token's URL and its query parameters.
fn decode_msk_token(token: &str) -> anyhow::Result<(url::Url, BTreeMap<String, String>)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token)?;
    let url = url::Url::parse(std::str::from_utf8(&bytes)?)?;
    let params = url.query_pairs().into_owned().collect();
    Ok((url, params))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 percent-encoding, as SigV4's canonical query string wants it.
fn sigv4_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The presigned URL's signature, computed here from the SigV4 spec: what
/// MSK checks. `User-Agent` is appended after signing, as AWS's signers do.
fn expected_signature(url: &url::Url, params: &BTreeMap<String, String>, secret: &str) -> String {
    let signed: Vec<String> = params
        .iter()
        .filter(|(k, _)| *k != "X-Amz-Signature" && *k != "User-Agent")
        .map(|(k, v)| format!("{}={}", sigv4_encode(k), sigv4_encode(v)))
        .collect();
    let host = url.host_str().unwrap_or_default();
    let canonical = format!(
        "GET\n/\n{}\nhost:{host}\n\nhost\n{}",
        signed.join("&"),
        hex(&Sha256::digest(b""))
    );
    let credential = &params["X-Amz-Credential"];
    let scope = credential
        .split_once('/')
        .map(|(_, s)| s)
        .unwrap_or_default();
    let parts: Vec<&str> = scope.split('/').collect();
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        params["X-Amz-Date"],
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in &parts {
        key = hmac(&key, part.as_bytes());
    }
    hex(&hmac(&key, to_sign.as_bytes()))
}

#[test]
fn msk_iam_token_is_a_sigv4_presigned_connect_url() -> anyhow::Result<()> {
    let (akid, secret) = ("AKIDMSKTEST0000001", "msk-test-secret-key");
    let out = kafka_token(&[
        ("AWS_ACCESS_KEY_ID", akid.into()),
        ("AWS_SECRET_ACCESS_KEY", secret.into()),
        ("BGP_KAFKA_OAUTH_AWS_REGION", "eu-west-1".into()),
    ])?;
    let (url, params) = decode_msk_token(out["token"].as_str().unwrap_or_default())?;
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
    assert_eq!(params["Action"], "kafka-cluster:Connect");
    assert_eq!(params["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(params["X-Amz-Expires"], "900");
    assert_eq!(params["X-Amz-SignedHeaders"], "host");
    let credential: Vec<&str> = params["X-Amz-Credential"].split('/').collect();
    assert_eq!(credential[0], akid);
    assert_eq!(
        &credential[2..],
        ["eu-west-1", "kafka-cluster", "aws4_request"]
    );
    assert_eq!(credential[1], &params["X-Amz-Date"][..8]);
    assert!(params.contains_key("User-Agent"));
    assert!(
        !params.contains_key("X-Amz-Security-Token"),
        "static keys carry no session"
    );
    assert_eq!(
        params["X-Amz-Signature"],
        expected_signature(&url, &params, secret)
    );
    // Expiry: the signing time plus X-Amz-Expires, in milliseconds.
    let signed = amz_date_epoch(&params["X-Amz-Date"])?;
    assert_eq!(out["expires_ms"].as_i64(), Some((signed + 900) * 1000));
    assert_eq!(out["principal"], "msk-iam");
    Ok(())
}

/// IRSA: the pod's projected token and role, exchanged at STS (the rig's
/// moto) for session credentials, which sign the token.
#[test]
fn msk_iam_token_signed_with_irsa_web_identity_credentials() -> anyhow::Result<()> {
    let dir = secret_dir(&[(
        "token",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ3cml0ZXIifQ.".into(),
    )])?;
    let out = kafka_token(&[
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            dir.join("token").display().to_string(),
        ),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/msk-writer".into(),
        ),
        ("AWS_ENDPOINT_URL", rig("moto", "BGP_AWS_ENDPOINT")),
        ("AWS_REGION", "us-east-2".into()),
    ])?;
    let (url, params) = decode_msk_token(out["token"].as_str().unwrap_or_default())?;
    assert_eq!(
        url.host_str(),
        Some("kafka.us-east-2.amazonaws.com"),
        "the pod's AWS_REGION"
    );
    let akid = params["X-Amz-Credential"]
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        akid.starts_with("ASIA"),
        "temporary credentials from STS: {akid}"
    );
    assert!(params.contains_key("X-Amz-Security-Token"), "{params:?}");
    Ok(())
}

/// Seconds since the epoch of a SigV4 `YYYYMMDDTHHMMSSZ` time.
fn amz_date_epoch(amz_date: &str) -> anyhow::Result<i64> {
    use k8s_openapi::jiff;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", amz_date)?;
    Ok(civil
        .to_zoned(jiff::tz::TimeZone::UTC)?
        .timestamp()
        .as_second())
}
