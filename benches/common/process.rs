//! The processes under measurement: the release writer binary, any
//! process's `/metrics` and its `/proc` figures (CPU, peak RSS).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The writer's count of messages taken from the bus: its clock starts at
/// the first.
pub const CONSUMED: &str = "bgpersist_writer_messages_consumed_total";
/// The writer's count of records in the store.
pub const WRITTEN: &str = "bgpersist_writer_records_written_total";

pub use crate::support::scrape::http_get;

/// A sample from a metrics text, whatever the writer's own labels; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    crate::support::scrape::metric_value(text, name).unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used so far; 0 when it is gone.
pub fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// (busy, total) CPU seconds of the whole machine so far.
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// CPU seconds used so far by one process and by the whole machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub process: f64,
    pub busy: f64,
    pub total: f64,
}

impl Cpu {
    pub fn now(pid: u32) -> Cpu {
        let process = process_cpu(pid);
        let (busy, total) = machine_cpu();
        Cpu {
            process,
            busy,
            total,
        }
    }
}

/// A process's peak resident set (`VmHWM`, as the kernel writes it, e.g. "90112 kB").
pub fn peak_rss(pid: u32) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default())
}

/// `var` ("K=V K=V", split on whitespace, e.g. `BGP_BENCH_WRITER_ENV`):
/// variables for the measured process only, not the bench, e.g. a heap
/// profiler's `LD_PRELOAD` (docs/benchmarks.md shows how).
pub fn profiling_env(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Stops `child` the way Kubernetes does (SIGTERM, so it drains and commits)
/// and reaps it.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The release writer binary with `env` (plus its HTTP address), logging to
/// `<target tmp>/<name>.log`. Dropped without [`WriterProcess::stop`] (a
/// failed bench, or on purpose), it is killed, so no writer outlives its run.
pub struct WriterProcess {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

/// A [`WriterProcess::measure`]ment.
pub struct Measured<S> {
    /// From the first consumed message until the count reached its target.
    pub secs: f64,
    /// The writer's metrics when the clock started: what it had already
    /// done then, to subtract from the totals.
    pub start: String,
    /// The snapshot taken when the clock started, and when it stopped.
    pub before: S,
    pub after: S,
}

impl WriterProcess {
    /// Started with its stderr on the bench's.
    pub fn start(name: &str, env: &[(&str, String)]) -> anyhow::Result<WriterProcess> {
        Self::spawn(name, env, Stdio::inherit())
    }

    /// Started with its stderr in `<name>.err` beside the log, out of the
    /// bench's output.
    pub fn start_quiet(name: &str, env: &[(&str, String)]) -> anyhow::Result<WriterProcess> {
        let err = std::fs::File::create(Self::tmp(&format!("{name}.err")))?;
        Self::spawn(name, env, Stdio::from(err))
    }

    fn tmp(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file)
    }

    fn spawn(name: &str, env: &[(&str, String)], stderr: Stdio) -> anyhow::Result<WriterProcess> {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = Self::tmp(&format!("{name}.log"));
        // Another build of the writer (a profile being tried) may stand in.
        let binary = std::env::var("BGP_BENCH_WRITER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bgpersist-writer").to_string());
        let mut cmd = Command::new(binary);
        crate::support::without_cloud_metadata(&mut cmd);
        cmd.env("RUST_LOG", "warn")
            .env("BGP_LOG_FORMAT", "text")
            .env("BGP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("BGP_STORES_DIR", "/nonexistent");
        // What the operator puts in every writer pod's environment.
        for (k, v) in bgpersist::operator::render::DEFAULT_WRITER_ENV {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in profiling_env("BGP_BENCH_WRITER_ENV") {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(stderr)
            .spawn()?;
        Ok(WriterProcess {
            child,
            http_port,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The writer's metrics; empty when it does not answer.
    pub fn metrics(&self) -> String {
        self.try_metrics().unwrap_or_default()
    }

    pub fn try_metrics(&self) -> anyhow::Result<String> {
        http_get(self.http_port, "/metrics")
    }

    pub fn peak_rss(&self) -> anyhow::Result<String> {
        peak_rss(self.pid())
    }

    /// Times the writer from its first consumed message until
    /// `count(metrics)` reaches `target`, polling every 10 ms for at most
    /// `within`, and takes `snapshot(pid)` (CPU counters, say) when the
    /// clock starts and when it stops.
    pub async fn measure<S>(
        &mut self,
        within: Duration,
        count: impl Fn(&str) -> f64,
        target: f64,
        mut snapshot: impl AsyncFnMut(u32) -> anyhow::Result<S>,
    ) -> anyhow::Result<Measured<S>> {
        let pid = self.pid();
        let deadline = Instant::now() + within;
        let (t0, start, before) = loop {
            let m = self.poll(deadline)?;
            if metric(&m, CONSUMED) > 0.0 || count(&m) >= target {
                break (Instant::now(), m, snapshot(pid).await?);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            if count(&self.poll(deadline)?) >= target {
                let secs = t0.elapsed().as_secs_f64();
                return Ok(Measured {
                    secs,
                    start,
                    before,
                    after: snapshot(pid).await?,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The writer's metrics, once it is known to be still running and in time.
    fn poll(&mut self, deadline: Instant) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "writer exited; log: {}",
            self.log.display()
        );
        anyhow::ensure!(Instant::now() < deadline, "writer too slow");
        Ok(self.metrics())
    }

    /// Seconds from the first consumed message until `count(metrics)`
    /// reaches `target`, and the count when the clock started (subtract it
    /// from totals).
    pub async fn time_until(
        &mut self,
        within: Duration,
        count: impl Fn(&str) -> f64,
        target: f64,
    ) -> anyhow::Result<(f64, f64)> {
        let m = self
            .measure(within, &count, target, async |_| Ok(()))
            .await?;
        Ok((m.secs, count(&m.start)))
    }

    /// Stops the writer gracefully (see [`terminate`]).
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        // A no-op after `stop`: the child is reaped already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
