//! Peer tools run on the same messages, broker and store as the writer, in
//! the same run: Benthos 4.27 (built by `hack/peers/build benthos`, cached
//! outside the repo). Each driver writes the peer's pipeline; this runs it
//! and measures it like the writer: rate from its first received message,
//! CPU and peak RSS from /proc.

use super::process::{Cpu, http_get, metric, peak_rss, terminate};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Benthos' counters (its Prometheus names).
const RECEIVED: &str = "input_received";
const SENT: &str = "output_sent";

/// Builds (once) or finds the Benthos binary; `None`, with the reason
/// printed, when it cannot be had (no Go, no module proxy).
pub fn benthos() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/peers/build");
    match Command::new(script).arg("benthos").output() {
        Ok(out) if out.status.success() => {
            Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
        Ok(out) => {
            println!(
                "  [peer]    benthos unavailable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("  [peer]    benthos unavailable: {e}");
            None
        }
    }
}

/// The start of a pipeline both Kafka benches share: every message of
/// `topic` from the oldest offset in a fresh group, decoded from protobuf
/// (`bgpersist.bus.v1.ResultMessage`, from `proto/`) to JSON; the caller
/// appends its own processors and output.
pub fn kafka_results_input(topic: &str) -> String {
    format!(
        r#"input:
  kafka_franz:
    seed_brokers: ["{brokers}"]
    topics: ["{topic}"]
    consumer_group: "{group}"
    start_from_oldest: true
pipeline:
  threads: {threads}
  processors:
    - protobuf:
        operator: to_json
        message: bgpersist.bus.v1.ResultMessage
        import_paths: ["{proto}"]
"#,
        brokers = super::kafka::bootstrap(),
        group = crate::support::unique("bench-peer"),
        threads = super::report::cores(),
        proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto"),
    )
}

/// A running Benthos pipeline.
pub struct Benthos {
    child: Child,
    http_port: u16,
}

/// A peer's measurement.
pub struct PeerRun {
    pub secs: f64,
    pub rate: f64,
    pub cores: f64,
    pub peak_rss: String,
}

impl Benthos {
    /// Starts `binary` on `pipeline` (input, pipeline and output sections of
    /// a Benthos config); the HTTP server and Prometheus metrics are added.
    pub fn start(binary: &PathBuf, name: &str, pipeline: &str) -> anyhow::Result<Benthos> {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let config = dir.join(format!("{name}.benthos.yaml"));
        std::fs::write(
            &config,
            format!(
                "http:\n  address: 127.0.0.1:{http_port}\nlogger:\n  level: WARN\n\
                 metrics:\n  prometheus: {{}}\n{pipeline}"
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("{name}.benthos.log")))?;
        let child = Command::new(binary)
            .args(["-c", &config.to_string_lossy()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        Ok(Benthos { child, http_port })
    }

    /// Times the pipeline from its first received message until it has sent
    /// `target` messages.
    pub async fn measure(&mut self, target: f64, within: Duration) -> anyhow::Result<PeerRun> {
        let pid = self.child.id();
        let deadline = Instant::now() + within;
        let (t0, before, sent0) = loop {
            let m = self.poll(deadline)?;
            if metric(&m, RECEIVED) > 0.0 {
                break (Instant::now(), Cpu::now(pid), metric(&m, SENT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            if metric(&self.poll(deadline)?, SENT) >= target {
                let secs = t0.elapsed().as_secs_f64();
                let after = Cpu::now(pid);
                return Ok(PeerRun {
                    secs,
                    rate: (target - sent0) / secs,
                    cores: (after.process - before.process) / secs,
                    peak_rss: peak_rss(pid)?,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn poll(&mut self, deadline: Instant) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "benthos exited; see its log under target/tmp"
        );
        anyhow::ensure!(Instant::now() < deadline, "benthos too slow");
        Ok(http_get(self.http_port, "/metrics").unwrap_or_default())
    }
}

impl Drop for Benthos {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}
