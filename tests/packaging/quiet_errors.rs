//! Error states are quiet: 20 resources whose cloud secret cannot be read
//! (Secrets Manager unreachable) under the real operator for 60 s. Each
//! status is written when its meaning changes, not on every reconcile, and
//! says what failed in words that do not change from one attempt to the next.

use crate::operator_process::{BIN, free_port};
use bgpersist::crd::BackgroundPersistence;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RESOURCES: usize = 20;
const WATCH_FOR: Duration = Duration::from_secs(60);
/// A first Degraded status, and at most a couple of changes of meaning.
const MAX_WRITES: usize = 4;

#[tokio::test]
async fn unreadable_secrets_write_status_only_when_its_meaning_changes() -> anyhow::Result<()> {
    let _one = crate::REAL_OPERATOR.lock().await;
    let client = crate::support::kubeclient::install_crd().await?;
    let api: Api<BackgroundPersistence> = Api::all(client.clone());
    let tag = crate::support::unique("quiet").replace('-', "");
    let tag = &tag[tag.len().saturating_sub(12)..];
    let mut names = Vec::new();
    for i in 0..RESOURCES {
        let mut v = crate::support::seed_value("q", serde_json::json!({}))?;
        v["metadata"]["labels"] = serde_json::json!({"bgpersist.dev/quiet-test": tag});
        let name = format!("quiet{tag}{i}");
        v["metadata"]["name"] = name.clone().into();
        v["spec"]["common_persistence_specs"]["namespace"] = format!("ns-{name}").into();
        api.create(&PostParams::default(), &serde_json::from_value(v)?)
            .await?;
        names.push(name);
    }

    // Secrets Manager on a closed port: every read fails the same way.
    let closed = free_port()?;
    let port = free_port()?;
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}.log"));
    let out = std::fs::File::create(&log)?;
    let mut operator = crate::support::without_cloud_metadata(&mut Command::new(BIN))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("BGP_WRITER_IMAGE", crate::support::OPERATOR_IMAGE)
        .env("KUBECONFIG", crate::support::rig("k8s", "BGP_KUBECONFIG"))
        .env("BGP_AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "info")
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--leader-elect=false",
        ])
        .args(["--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;

    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_message: BTreeMap<String, String> = BTreeMap::new();
    let params = WatchParams::default().labels(&format!("bgpersist.dev/quiet-test={tag}"));
    let mut stream = api.watch(&params, "0").await?.boxed();
    let deadline = Instant::now() + WATCH_FOR;
    loop {
        let event = match tokio::time::timeout_at(deadline.into(), stream.try_next()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(event))) => event,
            Ok(Err(e)) => return Err(e.into()),
        };
        if let WatchEvent::Modified(bp) = event {
            let name = bp.metadata.name.clone().unwrap_or_default();
            *writes.entry(name.clone()).or_default() += 1;
            if let Some(c) = bp
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.type_ == "Degraded")
            {
                last_message.insert(name, format!("{}: {}", c.reason, c.message));
            }
        }
    }
    let _ = operator.kill();
    let _ = operator.wait();
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();

    for name in &names {
        let n = writes.get(name).copied().unwrap_or(0);
        assert!(
            (1..=MAX_WRITES).contains(&n),
            "{name}: {n} status writes in {WATCH_FOR:?} (operator log:\n{})",
            text.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        let message = last_message.get(name).cloned().unwrap_or_default();
        assert!(
            message.starts_with("SecretUnavailable: ")
                && message.contains("could not connect to the endpoint"),
            "{name}: {message}"
        );
        for volatile in ["date", "x-amzn-requestid", "Response {", "connector"] {
            assert!(
                !message.to_lowercase().contains(&volatile.to_lowercase()),
                "{name}: {message}"
            );
        }
    }
    Ok(())
}
