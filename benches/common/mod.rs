//! Pieces shared by the writer benchmarks that measure a release
//! `bgpersist-writer` process beside a direct ceiling in the same run.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// "2 cores (model), memory, date" of this machine.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({model}), {mem} memory, {date}")
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

/// A sample (`name` with its labels, as written) from a metrics text; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The release writer binary with `env` (plus its HTTP address), logging to a file.
pub struct WriterProcess {
    pub child: Child,
    pub http_port: u16,
    pub log: std::path::PathBuf,
}

impl WriterProcess {
    pub fn start(name: &str, env: &[(&str, String)]) -> anyhow::Result<WriterProcess> {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bgpersist-writer"));
        cmd.env("RUST_LOG", "warn")
            .env("BGP_LOG_FORMAT", "text")
            .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BGP_STORES_DIR", "/nonexistent");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(WriterProcess {
            child,
            http_port,
            log,
        })
    }

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").unwrap_or_default()
    }

    /// Seconds from the first consumed message until `done(metrics)` holds,
    /// and the count `done` reported at the start (subtract it from totals).
    pub async fn time_until(
        &mut self,
        within: Duration,
        count: impl Fn(&str) -> f64,
        target: f64,
    ) -> anyhow::Result<(f64, f64)> {
        let deadline = Instant::now() + within;
        let mut start: Option<(Instant, f64)> = None;
        loop {
            anyhow::ensure!(
                self.child.try_wait()?.is_none(),
                "writer exited; log: {}",
                self.log.display()
            );
            anyhow::ensure!(Instant::now() < deadline, "writer too slow");
            let m = self.metrics();
            let consumed = metric(&m, "bgpersist_writer_messages_consumed_total");
            let n = count(&m);
            if start.is_none() && consumed > 0.0 {
                start = Some((Instant::now(), n));
            }
            if n >= target {
                let (t0, n0) = start.unwrap_or((Instant::now(), n));
                return Ok((t0.elapsed().as_secs_f64(), n0));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
