use crate::support::{rig, unique};
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};

fn secrets_client() -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(rig("moto", "BGP_AWS_ENDPOINT"))
        .region(Region::new(rig("moto", "BGP_AWS_REGION")))
        .credentials_provider(Credentials::new(
            rig("moto", "BGP_AWS_ACCESS_KEY_ID"),
            rig("moto", "BGP_AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "rig",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

#[tokio::test]
async fn secretsmanager_create_get_and_missing() -> anyhow::Result<()> {
    let client = secrets_client();
    let name = unique("smoke/kafka-sasl");
    let value = r#"{"username":"u","password":"p"}"#;
    client
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await?;
    let got = client.get_secret_value().secret_id(&name).send().await?;
    assert_eq!(got.secret_string(), Some(value));
    assert!(got.version_id().is_some());

    let missing = client
        .get_secret_value()
        .secret_id(unique("smoke/absent"))
        .send()
        .await;
    let err = missing.expect_err("a missing secret must be an error");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "expected ResourceNotFoundException, got {err:?}"
    );
    Ok(())
}
