use crate::support::unique;

#[tokio::test]
async fn secretsmanager_create_get_and_missing() -> anyhow::Result<()> {
    let client = crate::support::cloud::moto();
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
