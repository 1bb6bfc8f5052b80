//! `secret_client: KUBERNETES`: credentials from existing Secrets (here a
//! Strimzi KafkaUser's mTLS Secret, in another namespace, and a store URI
//! in the writers' namespace), synced and mounted like cloud secrets; a change
//! to one rolls only the writers that mount it; a missing one is reported.

use super::Fixture;
use crate::support::unique;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

async fn put_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name}, "stringData": data});
    api.patch(
        name,
        &PatchParams::apply("bgpersist-tests").force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn kubernetes_secrets_are_synced_and_a_change_rolls_only_their_writers() -> anyhow::Result<()>
{
    let client = crate::support::kubeclient::client().await?;
    let strimzi_ns = unique("kafka");
    let user = unique("bgpersist-user");
    put_secret(
        &client,
        &strimzi_ns,
        &user,
        json!({"ca.crt": PEM, "user.crt": PEM, "user.key": PEM, "user.p12": "p12", "user.password": "x"}),
    )
    .await?;
    let store = unique("metrics-store");
    let f = Fixture::new(
        json!({
            "common_persistence_specs": {"secret_client": "KUBERNETES"},
            "kafka_security_protocol": "SSL",
            "kafka_sasl_mechanism": null,
            "kafka_sasl_secret": format!("{strimzi_ns}/{user}"),
            "store_uri_secrets": {"metrics_store": store},
        }),
        super::moto_settings(),
    )
    .await?;
    // The store URI Secret lives in the writers' namespace.
    put_secret(
        &client,
        &f.ns,
        &store,
        json!({"uri": "postgres://m:one@db:5432/metrics"}),
    )
    .await?;
    f.reconcile().await?;
    assert_eq!(
        f.condition("Degraded").await?.0,
        "False",
        "{:?}",
        f.condition("Degraded").await?
    );
    for (key, want) in [("ca.pem", PEM), ("cert.pem", PEM), ("key.pem", PEM)] {
        assert_eq!(
            f.secret_value(&f.sasl_name(), key).await?.as_deref(),
            Some(want),
            "{key}"
        );
    }
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?
            .as_deref(),
        Some("postgres://m:one@db:5432/metrics")
    );
    let (store_w, bus_w) = ("go-metrics-bus-writer", "go-result-bus-metrics-writer");
    let (h_store, h_bus) = (f.config_hash(store_w).await?, f.config_hash(bus_w).await?);

    // A change to the store's Secret rolls only the writer that mounts it.
    put_secret(
        &client,
        &f.ns,
        &store,
        json!({"uri": "postgres://m:two@db:5432/metrics"}),
    )
    .await?;
    f.reconcile().await?;
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?
            .as_deref(),
        Some("postgres://m:two@db:5432/metrics")
    );
    assert_ne!(f.config_hash(store_w).await?, h_store);
    assert_eq!(f.config_hash(bus_w).await?, h_bus);

    // A Secret that is not there: reported, the last synced value kept.
    f.edit_spec(json!({"store_uri_secrets": {"metrics_store": "absent"}}))
        .await?;
    f.reconcile().await?;
    let (status, reason, message) = f.condition("Degraded").await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "SecretNotFound"),
        "{message}"
    );
    assert!(
        message.contains("\"absent\" in Kubernetes: not found (Secret ")
            && message.contains("/absent)"),
        "{message}"
    );
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?
            .as_deref(),
        Some("postgres://m:two@db:5432/metrics")
    );
    Ok(())
}
