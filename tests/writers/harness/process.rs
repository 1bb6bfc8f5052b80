//! The writer binary as a child process: its environment, its HTTP endpoints
//! and its metrics.

pub use crate::support::scrape::{has_sample, http_get, metric_value};
use crate::support::{rig, unique};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The writer binary as a child process with its own log file.
pub struct Writer {
    pub child: Child,
    pub log: PathBuf,
    pub http_port: u16,
}

/// Sends `sig` to a server process the test started and reaps it; one that
/// has not exited within `within` is SIGKILLed and reported as an error.
pub fn stop_server(mut child: Child, sig: &str, within: Duration) -> anyhow::Result<()> {
    let sent = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()?;
    let deadline = Instant::now() + within;
    while sent.success() && Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    anyhow::bail!(
        "pid {} did not stop on SIG{sig} within {within:?}",
        child.id()
    )
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Writer {
    pub fn start(env: &[(&str, String)]) -> anyhow::Result<Writer> {
        let http_port = free_port()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}.log", unique("writer")));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"));
        cmd.env_clear();
        crate::support::without_cloud_metadata(&mut cmd);
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("BGP_LOG_FORMAT", "text")
            .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BGP_MAX_BATCH_WAIT_MS", "20");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?;
        Ok(Writer {
            child,
            log,
            http_port,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{sig} failed");
        Ok(())
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "writer did not exit within {within:?}; log:\n{}",
            self.log_text()
        )
    }

    pub fn metrics(&self) -> String {
        crate::harness::http_get(self.http_port, "/metrics").unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A writer of `writer_type` named `name` on the rig's plaintext Kafka, its
/// store URI in `store_var`, as the operator renders them.
pub fn kafka_writer_env(
    (writer_type, name): (&str, &str),
    topic: &str,
    dlq: &str,
    group: &str,
    (store_var, store_uri): (&'static str, &str),
) -> Vec<(&'static str, String)> {
    vec![
        ("BGP_WRITER_TYPE", writer_type.into()),
        ("BGP_WRITER_NAME", name.into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "KAFKA".into()),
        ("BGP_SUBSCRIPTION", topic.into()),
        ("BGP_DLQ_TOPIC", dlq.into()),
        (
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ),
        ("BGP_KAFKA_CONSUMER_GROUP", group.into()),
        (store_var, store_uri.into()),
        ("BGP_STORES_DIR", "/nonexistent".into()),
    ]
}

/// Base environment of a Kafka → Redis online writer.
pub fn online_writer_env(
    topic: &str,
    dlq: &str,
    group: &str,
    redis_uri: &str,
) -> Vec<(&'static str, String)> {
    kafka_writer_env(
        ("ONLINE_WRITER", "online"),
        topic,
        dlq,
        group,
        ("BGP_ONLINE_STORE_URI", redis_uri),
    )
}

impl Writer {
    /// An unlabelled sample from the writer's /metrics (None while it is not serving).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics();
        metric_value(&text, name)
    }

    /// True once the process has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until the writer writes records again (its written total grows
    /// past what it is now) and returns how long that took: the recovery
    /// time after a fault ended. Fails after `within` or if it exits.
    pub async fn next_write(&mut self, within: Duration) -> anyhow::Result<Duration> {
        const WRITTEN: &str = "bgpersist_writer_records_written_total";
        let start = Instant::now();
        let before = self.metric(WRITTEN).unwrap_or(0.0);
        loop {
            if self.metric(WRITTEN).unwrap_or(0.0) > before {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                !self.exited(),
                "writer exited before writing again; log:\n{}",
                self.log_text()
            );
            anyhow::ensure!(
                start.elapsed() < within,
                "writer did not write again within {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
