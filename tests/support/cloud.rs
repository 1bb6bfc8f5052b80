//! The rig's moto as AWS Secrets Manager: a client and the two writes tests
//! make (create a secret, put a new current version).

use super::rig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};

/// The rig's static AWS credentials (moto accepts any).
pub fn credentials() -> Credentials {
    Credentials::new(
        rig("moto", "BGP_AWS_ACCESS_KEY_ID"),
        rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"),
        None,
        None,
        "rig",
    )
}

/// What a writer needs to reach the rig's S3 (moto), as a pod would have it.
pub fn moto_s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", rig("moto", "BGP_AWS_ENDPOINT")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", rig("moto", "BGP_AWS_REGION")),
        ("AWS_ACCESS_KEY_ID", rig("moto", "BGP_AWS_ACCESS_KEY_ID")),
        (
            "AWS_SECRET_ACCESS_KEY",
            rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"),
        ),
    ]
}

/// A new bucket `<prefix>-<unique>` in the rig's S3 (moto) and a client
/// for it: (its name, the client).
pub async fn moto_bucket(prefix: &str) -> anyhow::Result<(String, object_store::aws::AmazonS3)> {
    let name = super::unique(prefix).replace('_', "-").to_lowercase();
    let endpoint = rig("moto", "BGP_AWS_ENDPOINT");
    // moto accepts an unsigned CreateBucket; object_store cannot create buckets.
    let status = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await?
        .status();
    anyhow::ensure!(status.is_success(), "create bucket {name}: {status}");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&name)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region(rig("moto", "BGP_AWS_REGION"))
        .with_access_key_id(rig("moto", "BGP_AWS_ACCESS_KEY_ID"))
        .with_secret_access_key(rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"))
        .build()?;
    Ok((name, store))
}

/// A Secrets Manager client for the rig's moto.
pub fn moto() -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(rig("moto", "BGP_AWS_ENDPOINT"))
        .region(Region::new(rig("moto", "BGP_AWS_REGION")))
        .credentials_provider(credentials())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// Creates a cloud secret in moto; returns its VersionId.
pub async fn create_aws(name: &str, value: &str) -> anyhow::Result<String> {
    let out = moto()
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await?;
    Ok(out.version_id().unwrap_or_default().to_string())
}

/// Puts a new current version of a cloud secret in moto; returns its VersionId.
pub async fn put_aws(name: &str, value: &str) -> anyhow::Result<String> {
    let out = moto()
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .send()
        .await?;
    Ok(out.version_id().unwrap_or_default().to_string())
}
