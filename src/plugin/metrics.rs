//! A writer pod's `/metrics` (docs/metrics.md), read twice a window apart:
//! counters become per-second rates, gauges are read as they are. The text
//! is parsed by `prometheus-parse`; the writer serves OpenMetrics, whose
//! `_total` samples that parser leaves untyped, so values are read by
//! sample name whatever their type.

use prometheus_parse::{Scrape, Value};
use serde::Serialize;
use std::time::Duration;

pub const DEAD_LETTERED: &str = "bgpersist_writer_messages_dead_lettered_total";
pub const RETRIES: &str = "bgpersist_writer_write_retries_total";
pub const WRITTEN: &str = "bgpersist_writer_records_written_total";
pub const LAG_MESSAGES: &str = "bgpersist_writer_consumer_lag_messages";
pub const LAG_SECONDS: &str = "bgpersist_writer_consumer_lag_seconds";

/// The series `status` reads from one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub dead_lettered: f64,
    pub retries: f64,
    pub written: f64,
    pub lag_messages: f64,
    pub lag_seconds: f64,
}

/// Parses one `/metrics` text.
pub fn parse(text: &str) -> std::io::Result<Snapshot> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let value = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    Ok(Snapshot {
        dead_lettered: value(DEAD_LETTERED),
        retries: value(RETRIES),
        written: value(WRITTEN),
        lag_messages: value(LAG_MESSAGES),
        lag_seconds: value(LAG_SECONDS),
    })
}

/// Per-second rates of the counters between two scrapes of one pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub dead_letters_per_second: f64,
    pub retries_per_second: f64,
    pub written_per_second: f64,
}

/// The counters' increase over `elapsed`; a counter that went down was
/// reset (the pod restarted), so its new value is the increase, as in
/// Prometheus' `rate`.
pub fn rates(before: &Snapshot, after: &Snapshot, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64();
    let rate = |a: f64, b: f64| {
        if secs <= 0.0 {
            return 0.0;
        }
        let increase = if b >= a { b - a } else { b };
        increase / secs
    };
    Rates {
        dead_letters_per_second: rate(before.dead_lettered, after.dead_lettered),
        retries_per_second: rate(before.retries, after.retries),
        written_per_second: rate(before.written, after.written),
    }
}

impl std::ops::Add for Rates {
    type Output = Rates;
    fn add(self, o: Rates) -> Rates {
        Rates {
            dead_letters_per_second: self.dead_letters_per_second + o.dead_letters_per_second,
            retries_per_second: self.retries_per_second + o.retries_per_second,
            written_per_second: self.written_per_second + o.written_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As prometheus-client encodes it (OpenMetrics, writer labels on every series).
    const BEFORE: &str = r#"# HELP bgpersist_writer_messages_dead_lettered Messages sent to the dead-letter topic.
# TYPE bgpersist_writer_messages_dead_lettered counter
bgpersist_writer_messages_dead_lettered_total{resource="r",writer="w",type="ONLINE_WRITER"} 4
# TYPE bgpersist_writer_write_retries counter
bgpersist_writer_write_retries_total{resource="r",writer="w",type="ONLINE_WRITER"} 10
# TYPE bgpersist_writer_records_written counter
bgpersist_writer_records_written_total{resource="r",writer="w",type="ONLINE_WRITER"} 100
# TYPE bgpersist_writer_consumer_lag_messages gauge
bgpersist_writer_consumer_lag_messages{resource="r",writer="w",type="ONLINE_WRITER"} 7
# TYPE bgpersist_writer_consumer_lag_seconds gauge
bgpersist_writer_consumer_lag_seconds{resource="r",writer="w",type="ONLINE_WRITER"} 0.25
# TYPE bgpersist_writer_batch_duration_seconds histogram
bgpersist_writer_batch_duration_seconds_bucket{le="0.001",resource="r",writer="w",type="ONLINE_WRITER"} 1
bgpersist_writer_batch_duration_seconds_sum{resource="r",writer="w",type="ONLINE_WRITER"} 0.1
# EOF
"#;

    #[test]
    fn reads_the_series_from_openmetrics_text() -> std::io::Result<()> {
        let s = parse(BEFORE)?;
        assert_eq!(
            s,
            Snapshot {
                dead_lettered: 4.0,
                retries: 10.0,
                written: 100.0,
                lag_messages: 7.0,
                lag_seconds: 0.25
            }
        );
        Ok(())
    }

    #[test]
    fn rates_are_increases_per_second_and_survive_a_reset() {
        let before = Snapshot {
            dead_lettered: 4.0,
            retries: 10.0,
            written: 100.0,
            ..Default::default()
        };
        let after = Snapshot {
            dead_lettered: 10.0,
            retries: 3.0,
            written: 100.0,
            ..Default::default()
        };
        let r = rates(&before, &after, Duration::from_secs(2));
        assert_eq!(r.dead_letters_per_second, 3.0);
        assert_eq!(
            r.retries_per_second, 1.5,
            "reset: the new value is the increase"
        );
        assert_eq!(r.written_per_second, 0.0);
    }
}
