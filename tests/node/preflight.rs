//! Preflight on the resource: what a writer pod says about its bus (wrong
//! credentials, a topic that does not exist) is on the resource's status
//! within seconds, classified, in the pod's own words, and stays quiet: the
//! status is not rewritten while nothing changes.

use crate::cluster::{self, writer};
use crate::support::{self, rig};
use bgpersist::crd::BackgroundPersistence;
use kube::Api;
use serde_json::json;
use std::time::{Duration, Instant};

/// Waits until the resource's Ready condition has `reason`; returns its
/// message and how long after `since` it appeared.
async fn ready_reason(
    api: &Api<BackgroundPersistence>,
    name: &str,
    reason: &str,
    since: Instant,
) -> anyhow::Result<(String, Duration)> {
    let deadline = since + Duration::from_secs(180);
    loop {
        let bp = api.get(name).await?;
        let ready = bp
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        if let Some(c) = &ready
            && c.reason == reason
        {
            return Ok((c.message.clone(), since.elapsed()));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Ready never had reason {reason}; now: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The status is not rewritten for `window` (two rechecks at least).
async fn stays_quiet(api: &Api<BackgroundPersistence>, name: &str) -> anyhow::Result<()> {
    let before = api.get(name).await?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = api.get(name).await?;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "the status was rewritten while nothing changed: {:?} -> {:?}",
        before.status, after.status
    );
    Ok(())
}

fn condition(bp: &BackgroundPersistence, ty: &str) -> Option<(String, String)> {
    bp.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_is_on_the_resource() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = support::unique("node-pw");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    let user = rig("kafka", "BGP_KAFKA_SCRAM_USER");
    let wrong = format!("{prefix}/kafka-sasl-wrong");
    let creds = json!({
        "username": user,
        "password": "not-the-password",
        "ssl_ca_pem": std::fs::read_to_string(rig("kafka", "BGP_RIG_CA"))?,
    });
    support::cloud::create_aws(&wrong, &creds.to_string()).await?;
    patch["kafka_sasl_secret"] = json!(wrong);
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let bp = cluster::seed("pw", patch)?;
    let (name, ns) = cluster::names(&bp);
    let since = Instant::now();
    cluster::apply_bp(&client, &bp).await?;
    let api: Api<BackgroundPersistence> = Api::all(client.clone());
    let (message, took) = ready_reason(&api, &name, "BusAuthenticationFailed", since).await?;
    println!("wrong password on the resource {took:?} after apply: {message}");
    let broker = rig("kafka", "BGP_KAFKA_SASL_SSL_FOR_PODS");
    for part in [
        "writer 'online': bus not reached: kafka: SASL authentication failed",
        &format!("for user '{user}'"),
        &format!("at broker {broker}"),
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    let live = api.get(&name).await?;
    assert_eq!(
        condition(&live, "Stalled"),
        Some(("True".into(), "BusAuthenticationFailed".into())),
        "credentials that can never work stall the resource (kstatus: Failed)"
    );
    stays_quiet(&api, &name).await?;
    cluster::cleanup(&client, &name, &ns).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_on_the_resource() -> anyhow::Result<()> {
    let client = cluster::operator().await?;
    let prefix = support::unique("node-topic");
    let mut patch = cluster::cloud_secrets(
        &prefix,
        &[("online_store", rig("redis", "BGP_REDIS_URL_FOR_PODS"))],
    )
    .await?;
    let absent = support::unique("absent-results");
    patch["common_persistence_specs"] = json!({"result_bus_online_store_subscription_id": absent});
    patch["writers"] = json!([writer("online", "ONLINE_WRITER", 1)]);
    let bp = cluster::seed("topic", patch)?;
    let (name, ns) = cluster::names(&bp);
    // The dead-letter topic exists; the writer's own topic is never created.
    crate::seed::ensure_topics(&[(
        bp["spec"]["common_persistence_specs"]["kafka_dlq_topic"]
            .as_str()
            .unwrap_or("dlq-1"),
        1,
    )])
    .await?;
    let since = Instant::now();
    cluster::apply_bp_as_is(&client, &bp).await?;
    let api: Api<BackgroundPersistence> = Api::all(client.clone());
    let (message, took) = ready_reason(&api, &name, "BusTopicNotFound", since).await?;
    println!("missing topic on the resource {took:?} after apply: {message}");
    assert!(
        message.contains(&format!(
            "writer 'online': bus not reached: topic '{absent}' does not exist"
        )),
        "{message}"
    );
    let live = api.get(&name).await?;
    let w = live
        .status
        .as_ref()
        .map(|s| s.writers.clone())
        .unwrap_or_default();
    assert!(
        w.iter().any(
            |w| w.name == "online" && w.message.as_deref().is_some_and(|m| m.contains(&absent))
        ),
        "the writer's own status names the topic: {w:?}"
    );
    stays_quiet(&api, &name).await?;
    cluster::cleanup(&client, &name, &ns).await;
    Ok(())
}
