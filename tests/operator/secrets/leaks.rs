//! Secret values never reach the operator's logs, its Events, the resource's
//! status, the Deployments (env vars) or its error messages: everything the
//! operator prints while syncing, rotating and failing is captured at TRACE
//! (every crate: kube, hyper, the AWS SDK) and searched for the values.

use super::{Fixture, create_aws, moto_settings, put_aws, wait_for};
use crate::support::unique;
use bgpersist::operator::controller::{Context, run_selected};
use bgpersist::operator::metrics::Metrics;
use k8s_openapi::ByteString;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Everything every thread of this test binary logs while `on`.
#[derive(Default)]
struct Capture {
    on: AtomicBool,
    buf: Mutex<Vec<u8>>,
}

struct CaptureWriter(&'static Capture);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.on.load(Ordering::SeqCst)
            && let Ok(mut b) = self.0.buf.lock()
        {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The process-wide TRACE subscriber writing into the capture. Global, not
    /// per thread: a thread-local subscriber misses events whose callsite
    /// interest another thread (another test's controller) cached first.
    fn install() -> anyhow::Result<&'static Capture> {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        if let Some(c) = CAPTURE.get() {
            return Ok(c);
        }
        let capture: &'static Capture = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CaptureWriter(capture))
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(CAPTURE.get_or_init(|| capture))
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    fn text(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// A value and its base64 form (how it travels inside a Secret).
fn forms(value: &str) -> Vec<String> {
    let b64 = serde_json::to_value(ByteString(value.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    vec![value.to_string(), b64]
}

fn assert_clean(what: &str, text: &str, values: &[String]) {
    for v in values {
        for form in forms(v) {
            assert!(
                !text.contains(&form),
                "{what} contains a secret value ({} chars)",
                form.len()
            );
        }
    }
}

#[tokio::test]
async fn secret_values_never_reach_logs_events_status_env_or_errors() -> anyhow::Result<()> {
    let user = unique("leak-user");
    let pass = unique("leak-pass");
    let uri = format!("postgres://store:{}@db:5432/metrics", unique("leakuri"));
    let rotated = unique("leak-rotated");
    let malformed = unique("leak-malformed");
    let values = vec![
        user.clone(),
        pass.clone(),
        uri.clone(),
        rotated.clone(),
        malformed.clone(),
    ];
    let sasl_cloud = unique("bgp/kafka-sasl");
    let uri_cloud = unique("bgp/metrics-uri");
    create_aws(
        &sasl_cloud,
        &json!({"username": user, "password": pass}).to_string(),
    )
    .await?;
    create_aws(&uri_cloud, &uri).await?;
    let f = Fixture::new(
        json!({"kafka_sasl_secret": sasl_cloud, "store_uri_secrets": {"metrics_store": uri_cloud}}),
        moto_settings(),
    )
    .await?;

    // The test's own calls to moto (which send the values) run with the capture off.
    let logs = Capture::install()?;
    let mut errors = Vec::new();
    logs.set(true);
    // Sync, resync.
    for _ in 0..2 {
        if let Err(e) = f.reconcile().await {
            errors.push(e.to_string());
        }
    }
    // Rotation through the watch-driven controller, which logs what it applies.
    logs.set(false);
    put_aws(
        &sasl_cloud,
        &json!({"username": user, "password": rotated}).to_string(),
    )
    .await?;
    logs.set(true);
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
    wait_for("the controller to sync the rotated password", || async {
        f.secret_value(&f.sasl_name(), "password")
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some(rotated.as_str())
    })
    .await?;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await??;

    // Malformed content that contains a value.
    logs.set(false);
    put_aws(&sasl_cloud, &format!("{{\"username\": \"{malformed}\"")).await?;
    logs.set(true);
    if let Err(e) = f.reconcile().await {
        errors.push(e.to_string());
    }
    logs.set(false);
    let text = logs.text();
    for seen in ["GetSecretValue", "reconciled"] {
        assert!(
            text.contains(seen),
            "the capture ({} bytes) lacks {seen:?}: it must see the operator and the AWS SDK at work",
            text.len()
        );
    }
    assert_clean("the operator's logs", &text, &values);
    assert_clean("reconcile errors", &errors.join("\n"), &values);

    // Positive control: the values did reach the Secrets.
    assert_eq!(
        f.secret_value(&f.sasl_name(), "password").await?,
        Some(rotated.clone()),
        "the last good value stays"
    );
    assert_eq!(
        f.secret_value(&f.stores_name(), "metrics_store_uri")
            .await?,
        Some(uri.clone())
    );

    let bp = f.bps.get(&f.name).await?;
    let (_, reason, _) = f.condition("Degraded").await?;
    assert_eq!(reason, "SecretMalformed");
    assert_clean(
        "the resource (spec and status)",
        &serde_json::to_string(&bp)?,
        &values,
    );
    let deployments = f.deployments().list(&ListParams::default()).await?;
    assert_eq!(deployments.items.len(), 2);
    assert_clean(
        "the Deployments",
        &serde_json::to_string(&deployments.items)?,
        &values,
    );
    let events: Vec<Event> = Api::<Event>::all(f.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(f.name.as_str()))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SecretMalformed")),
        "the Warning event was recorded: {:?}",
        events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
    );
    assert_clean("the Events", &serde_json::to_string(&events)?, &values);
    Ok(())
}
