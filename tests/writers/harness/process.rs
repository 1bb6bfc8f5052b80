//! The writer binary as a child process: its environment, its HTTP endpoints
//! and its metrics.

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

pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
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

/// A sample line: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// A sample line split into name, labels and value.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// The value of sample `name` in a Prometheus/OpenMetrics text, whatever
/// the writer's own labels (resource, writer, type); the first when several.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_sample)
        .find_map(|(n, _, v)| (n == name).then_some(v))
}

/// Whether `text` holds the sample `expected` (`name{labels} value` or
/// `name value`): same name and value, with at least its labels.
pub fn has_sample(text: &str, expected: &str) -> bool {
    let Some((name, labels, value)) = parse_sample(expected) else {
        return false;
    };
    text.lines()
        .filter_map(parse_sample)
        .any(|(n, ls, v)| n == name && v == value && labels.iter().all(|l| ls.contains(l)))
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
}
