//! GCP Secret Manager through the official client against the in-process fake.

use super::Fixture;
use super::fake_gcp_secret_manager::FakeGcpSecretManager;
use crate::support::{secrets::InMemory, unique};
use bgpersist::operator::secrets::{GcpSecretManager, SecretSettings};
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn settings(fake: &FakeGcpSecretManager) -> anyhow::Result<SecretSettings> {
    let client = SecretManagerService::builder()
        .with_endpoint(&fake.endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    Ok(SecretSettings::new(
        Arc::new(InMemory),
        Arc::new(GcpSecretManager::from_client(client, None)),
    )
    .with_refresh(Duration::ZERO))
}

fn gcp_spec(secret: &str) -> serde_json::Value {
    json!({"common_persistence_specs": {"secret_client": "GCP"}, "kafka_sasl_secret": secret})
}

#[tokio::test]
async fn gcp_sasl_secret_is_synced_and_rotated_through_the_official_client() -> anyhow::Result<()> {
    let fake = FakeGcpSecretManager::start().await?;
    let secret = format!("projects/bgp-test/secrets/{}", unique("kafka-sasl"));
    fake.add_version(&secret, br#"{"username": "gina", "password": "gpw-1"}"#);
    let f = Fixture::new(gcp_spec(&secret), settings(&fake).await?).await?;

    f.reconcile().await?;
    assert_eq!(
        f.secret_value(&f.sasl_name(), "username").await?.as_deref(),
        Some("gina")
    );
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?.as_deref(),
        Some("gpw-1")
    );
    let status = f.status_secrets().await?;
    assert_eq!(
        (
            status[0].cloud_secret.as_str(),
            status[0].version.as_deref()
        ),
        (secret.as_str(), Some("1"))
    );
    assert_eq!(
        fake.requests().first().map(String::as_str),
        Some(format!("/v1/{secret}/versions/latest:access").as_str()),
        "the client asks for the latest version"
    );
    let hash = f.config_hash("go-metrics-bus-writer").await?;

    fake.add_version(&secret, br#"{"username": "gina", "password": "gpw-2"}"#);
    f.reconcile().await?;
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?.as_deref(),
        Some("gpw-2")
    );
    assert_eq!(f.status_secrets().await?[0].version.as_deref(), Some("2"));
    assert_ne!(f.config_hash("go-metrics-bus-writer").await?, hash);
    assert_eq!(f.condition("Degraded").await?.0, "False");
    Ok(())
}

#[tokio::test]
async fn gcp_not_found_denied_and_corrupt_payloads_degrade_with_their_reason() -> anyhow::Result<()>
{
    let fake = FakeGcpSecretManager::start().await?;
    let good = format!("projects/bgp-test/secrets/{}", unique("good"));
    fake.add_version(&good, br#"{"username": "gina", "password": "gpw-good"}"#);
    let f = Fixture::new(gcp_spec(&good), settings(&fake).await?).await?;
    f.reconcile().await?;
    let rv = f
        .secrets()
        .get(&f.sasl_name())
        .await?
        .metadata
        .resource_version;

    let missing = format!("projects/bgp-test/secrets/{}", unique("missing"));
    let denied = format!("projects/bgp-test/secrets/{}", unique("denied"));
    fake.add_version(&denied, br#"{"username": "x", "password": "y"}"#);
    fake.deny(&denied);
    let corrupt = format!("projects/bgp-test/secrets/{}", unique("corrupt"));
    fake.add_version(&corrupt, br#"{"username": "x", "password": "y"}"#);
    fake.corrupt_checksum(&corrupt);
    let not_json = format!("projects/bgp-test/secrets/{}", unique("notjson"));
    fake.add_version(&not_json, b"gpw-plain-text");

    for (secret, reason, says) in [
        (&missing, "SecretNotFound", "NOT_FOUND"),
        (&denied, "SecretAccessDenied", "PERMISSION_DENIED"),
        (&corrupt, "SecretMalformed", "dataCrc32c"),
        (&not_json, "SecretMalformed", "not valid JSON"),
    ] {
        f.edit_spec(json!({"kafka_sasl_secret": secret})).await?;
        f.reconcile().await?;
        let (degraded, got, message) = f.condition("Degraded").await?;
        assert_eq!(
            (degraded.as_str(), got.as_str()),
            ("True", reason),
            "{message}"
        );
        assert!(
            message.contains("spec.kafka_sasl_secret")
                && message.contains(secret.as_str())
                && message.contains(says),
            "{message}"
        );
        assert!(!message.contains("gpw-plain-text"), "{message}");
        assert_eq!(
            f.secrets()
                .get(&f.sasl_name())
                .await?
                .metadata
                .resource_version,
            rv,
            "the last good Secret stays as it was"
        );
        let status = f.status_secrets().await?;
        assert_eq!(
            (
                status[0].cloud_secret.as_str(),
                status[0].version.as_deref()
            ),
            (good.as_str(), Some("1")),
            "status shows what the writers still run with"
        );
    }

    // A bare secret ID with no default project is refused without a request.
    f.edit_spec(json!({"kafka_sasl_secret": "bare-id"})).await?;
    let before = fake.requests().len();
    f.reconcile().await?;
    assert_eq!(f.condition("Degraded").await?.1, "SecretNameInvalid");
    assert_eq!(fake.requests().len(), before);
    Ok(())
}
