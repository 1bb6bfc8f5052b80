//! AWS Secrets Manager (moto): sync, rotation, missing and malformed secrets.

use super::{Fixture, create_aws, moto, moto_settings, put_aws};
use crate::support::unique;
use bgpersist::crd::SecretStatus;
use kube::ResourceExt;
use serde_json::json;

/// What only a write by the operator changes: the spec's generation and the
/// time of the operator's managed-fields entry (the rig's Deployment
/// controller writes status, so the resourceVersion moves without us).
fn operator_write(d: &k8s_openapi::api::apps::v1::Deployment) -> (Option<i64>, Option<String>) {
    let ours = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some(bgpersist::operator::FIELD_MANAGER))
        .and_then(|m| m.time.as_ref())
        .map(|t| t.0.to_string());
    (d.metadata.generation, ours)
}

fn sasl(user: &str, password: &str) -> String {
    json!({"username": user, "password": password}).to_string()
}

#[tokio::test]
async fn aws_sasl_secret_is_synced_into_an_owned_secret_with_its_version_in_status()
-> anyhow::Result<()> {
    let cloud = unique("bgp/kafka-sasl");
    let password = unique("pw");
    let v1 = create_aws(&cloud, &sasl("alice", &password)).await?;
    let f = Fixture::new(json!({"kafka_sasl_secret": cloud}), moto_settings()).await?;

    let report = f.reconcile().await?;
    assert!(
        report
            .applied
            .contains(&format!("Secret/{}", f.sasl_name())),
        "{report:?}"
    );
    let s = f.secrets().get(&f.sasl_name()).await?;
    assert_eq!(
        f.secret_value(&f.sasl_name(), "username").await?.as_deref(),
        Some("alice")
    );
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?,
        Some(password)
    );
    assert_eq!(s.labels().get("bgpersist.dev/resource"), Some(&f.name));
    let bp = f.bps.get(&f.name).await?;
    let owner = s.owner_references().first().cloned();
    assert_eq!(
        owner.map(|o| (o.kind, o.uid)),
        Some(("BackgroundPersistence".into(), bp.uid().unwrap_or_default()))
    );
    assert_eq!(
        f.status_secrets().await?,
        vec![SecretStatus {
            name: "kafka_sasl_secret".into(),
            cloud_secret: cloud.clone(),
            secret: f.sasl_name(),
            version: Some(v1),
        }]
    );
    assert_eq!(f.condition("Degraded").await?.0, "False");

    // A resync with the same version writes nothing.
    let again = f.reconcile().await?;
    assert_eq!(again, Default::default(), "nothing applied or written");
    Ok(())
}

#[tokio::test]
async fn aws_rotation_updates_the_secret_and_rolls_only_writers_that_mount_it() -> anyhow::Result<()>
{
    let sasl_cloud = unique("bgp/kafka-sasl");
    let uri_cloud = unique("bgp/metrics-uri");
    create_aws(&sasl_cloud, &sasl("alice", "pw-1")).await?;
    create_aws(&uri_cloud, "postgres://m:one@db:5432/metrics").await?;
    let f = Fixture::new(
        json!({"kafka_sasl_secret": sasl_cloud, "store_uri_secrets": {"metrics_store": uri_cloud}}),
        moto_settings(),
    )
    .await?;
    f.reconcile().await?;
    // GO_METRICS_BUS_WRITER writes the metrics store (mounts SASL and the
    // store URI); GO_RESULT_BUS_METRICS_WRITER republishes to the metrics bus
    // (mounts SASL only).
    let (store_w, bus_w) = ("go-metrics-bus-writer", "go-result-bus-metrics-writer");
    let h_store = f.config_hash(store_w).await?;
    let h_bus = f.config_hash(bus_w).await?;
    let bus_rv = operator_write(&f.deployments().get(&f.dep_name(bus_w)).await?);
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?
            .as_deref(),
        Some("postgres://m:one@db:5432/metrics")
    );

    // Rotate the store URI: the Secret changes and only its writer rolls.
    let m2 = put_aws(&uri_cloud, "postgres://m:two@db:5432/metrics").await?;
    let mut report = f.reconcile().await?;
    report.applied.sort();
    assert_eq!(
        report.applied,
        vec![
            format!("Deployment/{}", f.dep_name(store_w)),
            format!("Secret/{}", f.stores_name()),
        ]
    );
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?
            .as_deref(),
        Some("postgres://m:two@db:5432/metrics")
    );
    let h_store2 = f.config_hash(store_w).await?;
    assert_ne!(h_store2, h_store, "the writer mounting the store URI rolls");
    assert_eq!(f.config_hash(bus_w).await?, h_bus, "the other does not");
    assert_eq!(
        operator_write(&f.deployments().get(&f.dep_name(bus_w)).await?),
        bus_rv,
        "its Deployment is not even written"
    );
    let versions: Vec<(String, Option<String>)> = f
        .status_secrets()
        .await?
        .into_iter()
        .map(|s| (s.name, s.version))
        .collect();
    assert_eq!(
        versions[1],
        ("store_uri_secrets.metrics_store".into(), Some(m2))
    );

    // Rotate the SASL credentials: every writer on the Kafka bus mounts them.
    let v2 = put_aws(&sasl_cloud, &sasl("alice", "pw-2")).await?;
    let mut report = f.reconcile().await?;
    report.applied.sort();
    assert_eq!(
        report.applied,
        vec![
            format!("Deployment/{}", f.dep_name(store_w)),
            format!("Deployment/{}", f.dep_name(bus_w)),
            format!("Secret/{}", f.sasl_name()),
        ]
    );
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?.as_deref(),
        Some("pw-2")
    );
    assert_ne!(f.config_hash(store_w).await?, h_store2);
    assert_ne!(f.config_hash(bus_w).await?, h_bus);
    assert_eq!(f.status_secrets().await?[0].version, Some(v2));
    // The writers' status shows the hash they now run with.
    let status = f.bps.get(&f.name).await?.status.unwrap_or_default();
    assert_eq!(
        status.writers[1].config_hash,
        Some(f.config_hash(bus_w).await?)
    );
    Ok(())
}

#[tokio::test]
async fn aws_missing_secret_degrades_and_the_last_good_secret_is_kept() -> anyhow::Result<()> {
    let cloud = unique("bgp/kafka-sasl");
    let v1 = create_aws(&cloud, &sasl("alice", "pw-good")).await?;
    let f = Fixture::new(json!({"kafka_sasl_secret": cloud}), moto_settings()).await?;
    f.reconcile().await?;
    let before = f.secrets().get(&f.sasl_name()).await?;
    let hash = f.config_hash("go-metrics-bus-writer").await?;

    moto()
        .delete_secret()
        .secret_id(&cloud)
        .force_delete_without_recovery(true)
        .send()
        .await?;
    let report = f.reconcile().await?;
    assert!(report.pruned.is_empty(), "nothing deleted: {report:?}");
    let (degraded, reason, message) = f.condition("Degraded").await?;
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(
        message.contains("spec.kafka_sasl_secret")
            && message.contains(&cloud)
            && message.contains(&format!("keep the last synced version {v1}")),
        "{message}"
    );
    assert!(!message.contains("pw-good"), "{message}");
    assert_eq!(f.condition("Ready").await?.1, "SecretNotFound");
    let after = f.secrets().get(&f.sasl_name()).await?;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the last good Secret is neither deleted nor blanked"
    );
    assert_eq!(
        f.config_hash("go-metrics-bus-writer").await?,
        hash,
        "no roll"
    );
    assert_eq!(f.status_secrets().await?[0].version, Some(v1));

    // The secret comes back: synced again, no longer degraded.
    let v2 = create_aws(&cloud, &sasl("alice", "pw-back")).await?;
    f.reconcile().await?;
    assert_eq!(f.condition("Degraded").await?.0, "False");
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?.as_deref(),
        Some("pw-back")
    );
    assert_eq!(f.status_secrets().await?[0].version, Some(v2));
    Ok(())
}

#[tokio::test]
async fn aws_malformed_secret_is_secret_malformed_and_never_quoted() -> anyhow::Result<()> {
    let cloud = unique("bgp/kafka-sasl");
    let sentinel = unique("do-not-print");
    create_aws(
        &cloud,
        &json!({"user": "alice", "pass": sentinel}).to_string(),
    )
    .await?;
    let f = Fixture::new(json!({"kafka_sasl_secret": cloud}), moto_settings()).await?;

    let report = f.reconcile().await?;
    let (degraded, reason, message) = f.condition("Degraded").await?;
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "SecretMalformed")
    );
    assert!(
        message.contains("spec.kafka_sasl_secret")
            && message.contains(&cloud)
            && message.contains("no \"username\" field"),
        "{message}"
    );
    assert!(!message.contains(&sentinel), "{message}");
    assert!(
        f.secrets().get_opt(&f.sasl_name()).await?.is_none(),
        "nothing to sync"
    );
    assert!(
        report.applied.iter().any(|a| a.starts_with("Deployment/")),
        "the writers are still applied: {report:?}"
    );
    assert_eq!(f.status_secrets().await?[0].version, None);

    // Fixed, then broken again (not JSON at all): the good value stays.
    put_aws(&cloud, &sasl("alice", "pw-fixed")).await?;
    f.reconcile().await?;
    assert_eq!(f.condition("Degraded").await?.0, "False");
    put_aws(&cloud, &format!("password={sentinel}")).await?;
    f.reconcile().await?;
    let (_, reason, message) = f.condition("Degraded").await?;
    assert_eq!(reason, "SecretMalformed");
    assert!(
        message.contains("not valid JSON") && !message.contains(&sentinel),
        "{message}"
    );
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?.as_deref(),
        Some("pw-fixed")
    );
    Ok(())
}
