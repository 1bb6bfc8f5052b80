//! The loop every writer runs: fetch a batch (by size or time), decode,
//! write with capped-backoff retry, dead-letter what cannot be written, then
//! mark the batch done so its offsets can be committed.

use super::bus::{Bus, BusError, Envelope};
use super::dlq::{self, ErrorClass};
use super::metrics::WriterMetrics;
use super::sink::{Rejected, Sink, SinkError};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub writer: String,
    pub max_batch_size: usize,
    pub max_batch_wait: Duration,
    /// Longest pause between retries of a failing store.
    pub max_backoff: Duration,
}

/// Totals of one run, for tests and the exit log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub batches: u64,
    pub consumed: u64,
    pub written: u64,
    pub dead_lettered: u64,
}

pub struct Runtime<B: Bus, S: Sink> {
    bus: B,
    sink: Arc<S>,
    metrics: WriterMetrics,
    settings: Settings,
    totals: Totals,
}

/// Why a batch was left unfinished (and uncommitted).
enum Unfinished {
    Shutdown,
}

impl<B: Bus, S: Sink> Runtime<B, S> {
    pub fn new(bus: B, sink: S, metrics: WriterMetrics, settings: Settings) -> Self {
        Runtime {
            bus,
            sink: Arc::new(sink),
            metrics,
            settings,
            totals: Totals::default(),
        }
    }

    /// Runs until `shutdown` turns true, then finishes the batch in hand,
    /// commits and returns. A batch stuck on a store outage at shutdown is
    /// left uncommitted and is redelivered to the next consumer.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Totals, RuntimeError> {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                b = self.bus.next_batch(self.settings.max_batch_size, self.settings.max_batch_wait) => b,
            };
            let batch = match next {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "bus receive failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            let span = info_span!("write_batch", writer = %self.settings.writer, messages = batch.len(),
                traceparent = batch.iter().find_map(|e| e.traceparent.as_deref()).unwrap_or(""));
            match self.handle(&batch, &mut shutdown).instrument(span).await {
                Ok(()) => {}
                Err(Unfinished::Shutdown) => break,
            }
        }
        self.bus.close().await?;
        info!(totals = ?self.totals, "writer stopped");
        Ok(self.totals)
    }

    async fn handle(
        &mut self,
        batch: &[Envelope],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        let started = Instant::now();
        self.metrics.consumed.inc_by(batch.len() as u64);
        self.totals.consumed += batch.len() as u64;

        let mut records = Vec::new();
        let mut owner = Vec::new();
        let mut poison: Vec<(usize, ErrorClass, String)> = Vec::new();
        for (i, env) in batch.iter().enumerate() {
            match self.sink.decode(&env.payload) {
                Ok(rs) => {
                    owner.extend(std::iter::repeat_n(i, rs.len()));
                    records.extend(rs);
                }
                Err(reason) => poison.push((i, ErrorClass::Decode, reason)),
            }
        }

        let rejected = self.write_with_retry(&records, shutdown).await?;
        for Rejected { record, reason } in &rejected {
            let env = owner.get(*record).copied().unwrap_or(0);
            // One dead letter per message, however many of its records failed.
            if !poison.iter().any(|(i, _, _)| *i == env) {
                poison.push((env, ErrorClass::Rejected, reason.clone()));
            }
        }
        for (i, class, reason) in &poison {
            self.dead_letter_with_retry(&batch[*i], *class, reason, shutdown)
                .await?;
        }
        // Only now, with every message written or dead-lettered, may offsets move.
        loop {
            match self.bus.done(batch).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "marking batch done failed; retrying");
                    self.wait(Duration::from_millis(500), shutdown).await?;
                }
            }
        }

        let written = (records.len() - rejected.len()) as u64;
        self.metrics.written.inc_by(written);
        self.metrics.dead_lettered.inc_by(poison.len() as u64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.totals.batches += 1;
        self.totals.written += written;
        self.totals.dead_lettered += poison.len() as u64;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut newest = None;
        for ms in batch.iter().filter_map(|e| e.published_ms) {
            self.metrics
                .bus_to_store_seconds
                .observe((now_ms - ms).max(0) as f64 / 1000.0);
            newest = newest.max(Some(ms));
        }
        if let Some(ms) = newest {
            self.metrics
                .lag_seconds
                .set((now_ms - ms).max(0) as f64 / 1000.0);
        }
        Ok(())
    }

    async fn write_with_retry(
        &mut self,
        records: &[S::Record],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<Rejected>, Unfinished> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut backoff = self.backoff();
        let mut paused = false;
        loop {
            match self.sink.write(records).await {
                Ok(rejected) => {
                    if paused && let Err(e) = self.bus.resume() {
                        warn!(error = %e, "resume after outage");
                    }
                    return Ok(rejected);
                }
                Err(SinkError::Retriable(reason)) => {
                    self.metrics.retries.inc();
                    let delay = backoff.next().unwrap_or(self.settings.max_backoff);
                    warn!(%reason, retry_in_ms = delay.as_millis() as u64, "store write failed; pausing consumption");
                    if !paused {
                        paused = self.bus.pause().is_ok();
                    }
                    self.wait(delay, shutdown).await?;
                }
            }
        }
    }

    async fn dead_letter_with_retry(
        &mut self,
        env: &Envelope,
        class: ErrorClass,
        reason: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        let mut backoff = self.backoff();
        let mut attempts = 1u32;
        loop {
            let headers = dlq::headers(&env.origin, class, reason, &self.settings.writer, attempts);
            match self.bus.dead_letter(env, &headers).await {
                Ok(()) => {
                    warn!(class = class.as_str(), %reason, origin = ?env.origin, "message dead-lettered");
                    return Ok(());
                }
                // Never drop: without a dead letter the message stays uncommitted.
                Err(e) => {
                    let delay = backoff.next().unwrap_or(self.settings.max_backoff);
                    warn!(error = %e, "dead-letter publish failed; retrying");
                    attempts += 1;
                    self.wait(delay, shutdown).await?;
                }
            }
        }
    }

    /// Waits `delay` while keeping the bus session alive; stops early on shutdown.
    async fn wait(
        &mut self,
        delay: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => Err(Unfinished::Shutdown),
            _ = self.bus.keep_alive(delay) => Ok(()),
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<B, S> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.settings.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }
}
