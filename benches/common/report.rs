//! What several drivers print alike: the machine a run is on, the writer's
//! batches and the machine's CPU while it wrote.

use crate::common::process::{Cpu, metric};
use std::process::Command;

/// The machine a run is on (figures move with it, so each run names it).
pub struct Machine {
    pub cores: usize,
    pub model: String,
    pub memory: String,
    /// Now, UTC.
    pub date: String,
}

impl Machine {
    pub fn now() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
            .unwrap_or("?")
            .trim()
            .to_string();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cores: cores(),
            model,
            memory,
            date,
        }
    }
}

/// "2 cores (model), memory, date" of this machine.
pub fn machine() -> String {
    let m = Machine::now();
    format!(
        "{} cores ({}), {} memory, {}",
        m.cores, m.model, m.memory, m.date
    )
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The `[batches]` line: the writer's batches over `messages` in `secs`,
/// from its batch-duration histogram in `metrics`.
pub fn batches(metrics: &str, messages: f64, secs: f64) {
    let batches = metric(metrics, "bgpersist_writer_batch_duration_seconds_count");
    let in_batches = metric(metrics, "bgpersist_writer_batch_duration_seconds_sum");
    println!(
        "  [batches] {batches} of {:.0} messages on average, {:.1} ms each in decode + write + commit; {:.0}% of the time",
        messages / batches.max(1.0),
        1000.0 * in_batches / batches.max(1.0),
        100.0 * in_batches / secs
    );
}

/// "whole machine N% busy (C of M cores)" between two snapshots `secs` apart.
pub fn whole_machine(before: &Cpu, after: &Cpu, secs: f64) -> String {
    let busy = after.busy - before.busy;
    format!(
        "whole machine {:.0}% busy ({:.1} of {} cores)",
        100.0 * busy / (after.total - before.total),
        busy / secs,
        cores()
    )
}
