//! Preflight: a writer is ready only once its bus has answered for its own
//! topic (or subscription) and dead-letter topic with its own credentials.
//! Each misconfiguration that can never work is on /readyz within seconds,
//! in words a person can act on, logged once, and the writer stays up (a
//! topic may yet be created) until it is stopped.

use crate::harness::*;
use crate::kafka_tls::{rig_file, secret_dir, tls_env};
use crate::support::scrape::http_get;
use crate::support::{rig, unique};
use std::time::Duration;

/// Starts a writer with `env`, waits until /readyz is 503 and contains every
/// one of `expected`, checks the reason is logged once and the writer keeps
/// running, then stops it. Returns the /readyz body.
async fn reported(env: &[(&'static str, String)], expected: &[&str]) -> anyhow::Result<String> {
    let mut writer = Writer::start(env)?;
    let port = writer.http_port;
    let wanted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let body = eventually(
        "/readyz to give the reason",
        Duration::from_secs(20),
        || {
            let wanted = wanted.clone();
            async move {
                let r = http_get(port, "/readyz").unwrap_or_default();
                Ok(
                    (r.contains(" 503 ") && wanted.iter().all(|w| r.contains(w.as_str())))
                        .then_some(r),
                )
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{expected:?}: {e}\nwriter log:\n{}", writer.log_text()))?;
    // Several more attempts pass; the reason stays the same and is logged once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = http_get(port, "/readyz")?;
    let reason = |r: &str| {
        r.split_once("not ready: ")
            .map(|(_, b)| b.trim().to_string())
    };
    assert_eq!(reason(&again), reason(&body), "the reason is stable");
    let log = writer.log_text();
    let logged = log
        .lines()
        .filter(|l| l.contains("bus not reached yet") && l.contains(expected[0]))
        .count();
    assert_eq!(logged, 1, "the reason is logged once:\n{log}");
    assert!(!writer.exited(), "the writer waits for the bus to be fixed");
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    Ok(body)
}

fn plain_env(topic: &str, dlq: &str) -> Vec<(&'static str, String)> {
    online_writer_env(topic, dlq, &unique("grp"), &rig("redis", "BGP_REDIS_URL"))
}

#[tokio::test]
async fn a_missing_topic_is_named() -> anyhow::Result<()> {
    let (topic, dlq) = (unique("absent"), unique("dlq"));
    create_topics(&[(&dlq, 1)]).await?;
    let body = reported(
        &plain_env(&topic, &dlq),
        &[&format!("topic '{topic}' does not exist")],
    )
    .await?;
    assert!(!body.contains("dead-letter"), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_missing_dead_letter_topic_is_named() -> anyhow::Result<()> {
    let (topic, dlq) = (unique("present"), unique("absent-dlq"));
    create_topics(&[(&topic, 1)]).await?;
    reported(
        &plain_env(&topic, &dlq),
        &[&format!("dead-letter topic '{dlq}' does not exist")],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_sasl_password_names_the_user_and_the_broker() -> anyhow::Result<()> {
    let user = rig("kafka", "BGP_KAFKA_SCRAM_USER");
    let dir = secret_dir(&[
        ("username", user.clone()),
        ("password", "not-the-password".into()),
        ("ca.pem", rig_file("BGP_RIG_CA")?),
    ])?;
    let (topic, dlq) = (unique("sasl"), unique("dlq"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let bootstrap = rig("kafka", "BGP_KAFKA_SASL_SSL");
    let env = tls_env(
        &topic,
        &dlq,
        &bootstrap,
        &[
            ("BGP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("BGP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ],
        &dir,
    );
    let broker = bootstrap.split(',').next().unwrap_or_default().to_string();
    let body = reported(
        &env,
        &[
            "SASL authentication failed",
            &format!("for user '{user}'"),
            &format!("at broker {broker}"),
        ],
    )
    .await?;
    assert!(!body.contains("after "), "no per-attempt timings: {body}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_broker_is_named() -> anyhow::Result<()> {
    let (topic, dlq) = (unique("nowhere"), unique("dlq"));
    let closed = format!("127.0.0.1:{}", free_port()?);
    let mut env = plain_env(&topic, &dlq);
    env.retain(|(k, _)| *k != "BGP_KAFKA_BOOTSTRAP_SERVERS");
    env.push(("BGP_KAFKA_BOOTSTRAP_SERVERS", closed.clone()));
    reported(
        &env,
        &[
            &format!("broker {closed} unreachable"),
            "Connection refused",
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_pubsub_subscription_or_dead_letter_topic_is_named() -> anyhow::Result<()> {
    let mut resources = PubsubResources::new().await?;
    let project = pubsub_project();
    let redis = rig("redis", "BGP_REDIS_URL");
    let absent = unique("absent-sub");
    let dlq = resources.topic(&unique("dlq")).await?;
    let env = online_pubsub_writer_env(&absent, Some(&dlq), &redis, Duration::from_secs(10));
    let missing_subscription = reported(
        &env,
        &[&format!(
            "subscription 'projects/{project}/subscriptions/{absent}' does not exist"
        )],
    )
    .await;

    let topic = resources.topic(&unique("in")).await?;
    let subscription = resources
        .subscription(&unique("sub"), &topic, Duration::from_secs(10))
        .await?;
    let absent_dlq = unique("absent-dlq");
    let env = online_pubsub_writer_env(
        &subscription,
        Some(&absent_dlq),
        &redis,
        Duration::from_secs(10),
    );
    let missing_dlq = reported(
        &env,
        &[&format!(
            "dead-letter topic 'projects/{project}/topics/{absent_dlq}' does not exist"
        )],
    )
    .await;
    resources.cleanup().await;
    missing_subscription?;
    missing_dlq?;
    Ok(())
}

/// After it started: the dead-letter topic deleted under a running writer
/// turns /readyz off with the reason within a recheck or two, logged once;
/// created again, the writer is ready again.
#[tokio::test]
async fn a_dead_letter_topic_deleted_while_running_turns_readiness_off_until_it_is_back()
-> anyhow::Result<()> {
    let (topic, dlq) = (unique("running"), unique("dlq-gone"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let mut writer = Writer::start(&plain_env(&topic, &dlq))?;
    let port = writer.http_port;
    let readyz = move || http_get(port, "/readyz").unwrap_or_default();
    eventually("ready", Duration::from_secs(20), || async move {
        Ok(readyz().contains(" 200 ").then_some(()))
    })
    .await?;

    delete_topics(&[&dlq]).await?;
    let gone = format!("dead-letter topic '{dlq}' does not exist");
    let body = eventually(
        "/readyz off with the reason",
        Duration::from_secs(40),
        || {
            let gone = gone.clone();
            async move {
                let r = readyz();
                Ok((r.contains(" 503 ") && r.contains(&gone)).then_some(r))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    assert!(body.contains("not ready: bus not reached: "), "{body}");

    create_topics(&[(&dlq, 1)]).await?;
    eventually("ready again", Duration::from_secs(40), || async move {
        Ok(readyz().contains(" 200 ").then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let log = writer.log_text();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("bus no longer reached"), 1, "logged once:\n{log}");
    assert_eq!(count("bus reached again"), 1, "logged once:\n{log}");
    writer.signal("TERM")?;
    assert_eq!(writer.wait_exit(Duration::from_secs(15))?, Some(0));
    delete_topics(&[&topic, &dlq]).await?;
    Ok(())
}
