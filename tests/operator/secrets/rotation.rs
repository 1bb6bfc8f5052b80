//! Rotation end to end: the watch-driven controller, on its refresh interval,
//! picks up a new version in Secrets Manager and rolls the writers.

use super::{Fixture, create_aws, moto_settings, put_aws, wait_for};
use crate::support::unique;
use bgpersist::operator::controller::{Context, run_selected};
use bgpersist::operator::metrics::Metrics;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn controller_rotates_a_secret_on_its_refresh_interval() -> anyhow::Result<()> {
    let cloud = unique("bgp/kafka-sasl");
    let v1 = create_aws(&cloud, r#"{"username": "rot", "password": "rot-1"}"#).await?;
    let f = Fixture::new(json!({"kafka_sasl_secret": cloud}), moto_settings()).await?;
    let ctx = Arc::new(
        Context::new(f.client.clone(), Metrics::default())
            .with_defaults(crate::support::operator_defaults())
            .with_secrets(moto_settings().with_refresh(Duration::from_secs(1))),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let selection =
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={}", f.name));
    let task = tokio::spawn(run_selected(ctx, selection, async move {
        let _ = stopped.await;
    }));

    let password = || async {
        f.secret_value(&f.sasl_name(), "password")
            .await
            .ok()
            .flatten()
    };
    let version = || async {
        f.status_secrets()
            .await
            .ok()
            .and_then(|s| s.first().and_then(|s| s.version.clone()))
    };
    wait_for("the first sync", || async {
        password().await.as_deref() == Some("rot-1") && version().await.as_ref() == Some(&v1)
    })
    .await?;
    let writers = ["go-metrics-bus-writer", "go-result-bus-metrics-writer"];
    let mut before = Vec::new();
    for w in writers {
        before.push(f.config_hash(w).await?);
    }

    // No event at all: only the refresh interval brings the new version in.
    let v2 = put_aws(&cloud, r#"{"username": "rot", "password": "rot-2"}"#).await?;
    wait_for(
        "the rotated version to be synced and rolled out",
        || async {
            let mut rolled = true;
            for (w, old) in writers.iter().zip(&before) {
                rolled &= f
                    .config_hash(w)
                    .await
                    .ok()
                    .as_ref()
                    .is_some_and(|h| h != old);
            }
            rolled
                && password().await.as_deref() == Some("rot-2")
                && version().await.as_ref() == Some(&v2)
        },
    )
    .await?;
    assert_eq!(f.condition("Degraded").await?.0, "False");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}
