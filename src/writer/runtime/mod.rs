//! The loop every writer runs: fetch a batch (by size or time), decode,
//! write with capped-backoff retry, dead-letter what cannot be written, then
//! mark the batch done so its offsets can be committed.

pub mod dlq;
pub mod metrics;
pub mod sink;
pub mod start;

use crate::http::{Check, Readiness};
use crate::telemetry::propagation;
use crate::writer::bus::{Batching, Bus, BusError, Envelope};
use crate::writer::error::Class;
use backon::{BackoffBuilder, ExponentialBuilder};
use metrics::WriterMetrics;
use sink::{Rejected, Sink, WriterError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

#[derive(Clone, Debug)]
pub struct Settings {
    pub writer: String,
    pub max_batch_size: usize,
    /// The largest a batch grows to under backlog (`Sink::BACKLOG_GROWTH`).
    pub batch_ceiling: usize,
    pub max_batch_bytes: usize,
    pub max_batch_wait: Duration,
    /// Longest pause between retries of a failing store.
    pub max_backoff: Duration,
    /// How often the running writer checks its bus again (`Bus::reached`):
    /// a bus that stops answering for the writer's topics or credentials
    /// turns readiness off with the reason, and back on when it answers.
    pub bus_recheck: Duration,
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
    /// `/readyz`: off, with the reason, while store writes fail.
    ready: Option<Arc<Readiness>>,
    /// When the store last answered a write.
    last_write_ok: Option<Instant>,
}

/// The batch limit after a batch of `got` under `limit`: doubled when it came
/// back full (a backlog), halved when under half full, within
/// `base..=ceiling`.
fn next_limit(limit: usize, got: usize, base: usize, ceiling: usize) -> usize {
    let ceiling = ceiling.max(base);
    if got >= limit {
        limit.saturating_mul(2).min(ceiling)
    } else if got < limit / 2 {
        (limit / 2).max(base)
    } else {
        limit
    }
}

/// How often a store failure that keeps its reason is logged again.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a batch was left unfinished (and uncommitted).
enum Unfinished {
    Shutdown,
    /// A fatal error: the writer stops; the batch is redelivered.
    Fatal(WriterError),
}

/// What the write task of a batch returned (or why it did not).
type Joined = Result<Result<Vec<Rejected>, WriterError>, tokio::task::JoinError>;

/// A batch whose write has started.
struct InFlight<R> {
    batch: Vec<Envelope>,
    records: Arc<Vec<R>>,
    /// For each record, the index of the message it came from.
    owner: Vec<usize>,
    /// Messages to dead-letter (by index in `batch`) with why.
    poison: Vec<(usize, WriterError)>,
    started: Instant,
    span: tracing::Span,
    write: JoinHandle<Result<Vec<Rejected>, WriterError>>,
}

impl<R> InFlight<R> {
    async fn join(&mut self) -> Joined {
        (&mut self.write).await
    }
}

enum Step {
    Written(Joined),
    Received(Result<Vec<Envelope>, BusError>),
    RecheckBus,
}

impl<B: Bus, S: Sink> Runtime<B, S> {
    pub fn new(bus: B, sink: S, metrics: WriterMetrics, settings: Settings) -> Self {
        Runtime {
            bus,
            sink: Arc::new(sink),
            metrics,
            settings,
            totals: Totals::default(),
            ready: None,
            last_write_ok: None,
        }
    }

    /// Store write failures turn `ready` off with their reason, and a
    /// successful write turns it back on.
    pub fn with_readiness(mut self, ready: Arc<Readiness>) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Runs until `shutdown` turns true, then finishes the batch in hand,
    /// commits and returns. A batch stuck on a store outage at shutdown is
    /// left uncommitted and is redelivered to the next consumer.
    ///
    /// With a sink that allows overlapping writes, the next batch is received,
    /// decoded and its write started while the previous write is still in
    /// flight; batches are still finished (dead-lettered, marked done) one by
    /// one in the order received, so offsets only ever cover written messages.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<Totals, WriterError> {
        let mut in_flight: Option<InFlight<S::Record>> = None;
        let every = self.settings.bus_recheck;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The bus's last failure while running, so each change is logged once.
        let mut bus_failure: Option<String> = None;
        let mut batching = Batching {
            max: self.settings.max_batch_size,
            max_bytes: self.settings.max_batch_bytes,
            wait: self.settings.max_batch_wait,
            until_drained: S::UNTIL_DRAINED,
        };
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = match in_flight.as_mut() {
                // Idle bus: finish the batch in flight rather than leaving it
                // uncommitted until the next message arrives. Both bus
                // receivers keep partial batches in the bus, so dropping the
                // receive here loses nothing.
                Some(flight) => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    joined = &mut flight.write => Step::Written(joined),
                    _ = recheck.tick() => Step::RecheckBus,
                    b = self.bus.next_batch(batching) => Step::Received(b),
                },
                None => tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = recheck.tick() => Step::RecheckBus,
                    b = self.bus.next_batch(batching) => Step::Received(b),
                },
            };
            let batch = match next {
                Step::RecheckBus => {
                    self.recheck_bus(&mut bus_failure).await;
                    continue;
                }
                Step::Written(joined) => {
                    if let Some(flight) = in_flight.take() {
                        match self.finish(flight, joined, &mut shutdown).await {
                            Ok(()) => continue,
                            Err(Unfinished::Shutdown) => break,
                            Err(Unfinished::Fatal(e)) => return self.stop_fatal(e).await,
                        }
                    }
                    continue;
                }
                Step::Received(Ok(b)) => b,
                Step::Received(Err(e)) => {
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
            batching.max = next_limit(
                batching.max,
                batch.len(),
                self.settings.max_batch_size,
                self.settings.batch_ceiling,
            );
            let mut flight = self.start(batch);
            // At most two batches in flight: finish the older one first.
            if let Some(mut older) = in_flight.take() {
                let joined = older.join().await;
                match self.finish(older, joined, &mut shutdown).await {
                    Ok(()) => {}
                    // The newer batch stays uncommitted: it is redelivered.
                    Err(Unfinished::Shutdown) => break,
                    Err(Unfinished::Fatal(e)) => return self.stop_fatal(e).await,
                }
            }
            if S::OVERLAPPING_WRITES {
                in_flight = Some(flight);
            } else {
                let joined = flight.join().await;
                match self.finish(flight, joined, &mut shutdown).await {
                    Ok(()) => {}
                    Err(Unfinished::Shutdown) => break,
                    Err(Unfinished::Fatal(e)) => return self.stop_fatal(e).await,
                }
            }
        }
        // Shutdown: the write in flight was already sent; finish it so its
        // offsets are committed with the rest.
        if let Some(mut flight) = in_flight.take() {
            let joined = flight.join().await;
            if let Err(Unfinished::Fatal(e)) = self.finish(flight, joined, &mut shutdown).await {
                return self.stop_fatal(e).await;
            }
        }
        self.bus
            .close()
            .await
            .map_err(|e| WriterError::Runtime(e.to_string()))?;
        info!(totals = ?self.totals, "writer stopped");
        Ok(self.totals)
    }

    /// Asks the bus again whether it answers for this writer; readiness and
    /// `bus_reachable` follow, and each change is logged once.
    async fn recheck_bus(&mut self, failure: &mut Option<String>) {
        match self.bus.reached().await {
            Ok(()) => {
                if let Some(reason) = failure.take() {
                    info!(was = %reason, "bus reached again; ready");
                }
                self.metrics.bus_reachable.set(1);
                if let Some(ready) = &self.ready {
                    ready.passing(Check::Bus);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                self.metrics.bus_reachable.set(0);
                if let Some(ready) = &self.ready {
                    ready.failing(Check::Bus, format!("bus not reached: {reason}"));
                }
                if failure.as_deref() != Some(reason.as_str()) {
                    warn!(%reason, "bus no longer reached; not ready");
                    *failure = Some(reason);
                }
            }
        }
    }

    /// Leaves the bus (committing what was done) and returns `e`.
    async fn stop_fatal(mut self, e: WriterError) -> Result<Totals, WriterError> {
        self.metrics.count_error(&e);
        if let Err(close) = self.bus.close().await {
            warn!(error = %close, "leaving the bus after a fatal error");
        }
        Err(e)
    }

    /// Decodes `batch` and starts writing its records in a task of its own.
    fn start(&mut self, batch: Vec<Envelope>) -> InFlight<S::Record> {
        let started = Instant::now();
        self.metrics.consumed.inc_by(batch.len() as u64);
        let bytes: usize = batch.iter().map(|e| e.payload.len()).sum();
        self.metrics.batch_bytes.observe(bytes as f64);
        self.totals.consumed += batch.len() as u64;
        let span = batch_span(&self.settings.writer, &batch);

        let mut records = Vec::new();
        let mut owner = Vec::new();
        let mut poison: Vec<(usize, WriterError)> = Vec::new();
        let mut fatal = None;
        for (i, env) in batch.iter().enumerate() {
            // A decoder bug on one odd message must not crash-loop the writer
            // on its redelivery: a panic dead-letters that message.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.sink.decode(&env.payload)
            }))
            .unwrap_or_else(|_| {
                Err(WriterError::Decode(
                    "the decoder panicked on this message".to_string(),
                ))
            });
            match decoded {
                Ok(rs) => {
                    owner.extend(std::iter::repeat_n(i, rs.len()));
                    records.extend(rs);
                }
                Err(e) if e.class() == Class::Poison => poison.push((i, e)),
                // Not about this message: nothing of the batch is written.
                Err(e) => fatal = Some(e),
            }
        }
        let records = Arc::new(records);
        let write = if let Some(e) = fatal {
            tokio::spawn(async move { Err(e) })
        } else if records.is_empty() {
            tokio::spawn(async { Ok(Vec::new()) })
        } else {
            let (sink, rs) = (self.sink.clone(), records.clone());
            let write = write_span(&span, 1);
            tokio::spawn(async move { sink.write(&rs).await }.instrument(write))
        };
        InFlight {
            batch,
            records,
            owner,
            poison,
            started,
            span,
            write,
        }
    }

    /// Waits out a failed write (retrying), dead-letters what cannot be
    /// written, then marks the batch done so its offsets can be committed.
    async fn finish(
        &mut self,
        flight: InFlight<S::Record>,
        joined: Joined,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        let span = flight.span.clone();
        self.finish_inner(flight, joined, shutdown)
            .instrument(span)
            .await
    }

    async fn finish_inner(
        &mut self,
        flight: InFlight<S::Record>,
        joined: Joined,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        let InFlight {
            batch,
            records,
            owner,
            mut poison,
            started,
            ..
        } = flight;
        let first = match joined {
            Ok(result) => result,
            // A panicking sink is treated like an outage: retried, never dropped.
            Err(e) => Err(WriterError::Retriable(format!("write task failed: {e}"))),
        };
        let first = match first {
            // With two batches in flight, this write may have failed in an
            // outage the other batch has since waited out: the store answered
            // after this write began, so the failure is stale. Write again at
            // once instead of counting a retry, going not ready and backing off.
            Err(failure)
                if failure.class() == Class::Retriable
                    && self.last_write_ok.is_some_and(|at| at >= started) =>
            {
                let again = write_span(&tracing::Span::current(), 2);
                self.sink.write(&records).instrument(again).await
            }
            other => other,
        };
        let rejected = match first {
            Ok(rejected) => rejected,
            Err(failure) => self.write_with_retry(&records, failure, shutdown).await?,
        };
        self.last_write_ok = Some(Instant::now());
        for Rejected { record, reason } in &rejected {
            let env = owner.get(*record).copied().unwrap_or(0);
            // One dead letter per message, however many of its records failed.
            if !poison.iter().any(|(i, _)| *i == env) {
                poison.push((env, WriterError::Rejected(reason.clone())));
            }
        }
        let traceparent = propagation::current();
        for (i, error) in &poison {
            self.dead_letter_with_retry(&batch[*i], error, traceparent.as_deref(), shutdown)
                .await?;
        }
        // Only now, with every message written or dead-lettered, may offsets move.
        loop {
            match self.bus.done(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "marking batch done failed; retrying");
                    self.wait(Duration::from_millis(500), shutdown).await?;
                }
            }
        }

        let written = (records.len() - rejected.len()) as u64;
        self.metrics.written.inc_by(written);
        if written > 0 {
            self.metrics.wrote();
        }
        self.metrics.dead_lettered.inc_by(poison.len() as u64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.totals.batches += 1;
        self.totals.written += written;
        self.totals.dead_lettered += poison.len() as u64;
        self.metrics
            .observe_written(batch.iter().filter_map(|e| e.published_ms));
        Ok(())
    }

    /// Retries a write that failed with `failure` until it succeeds, pausing
    /// consumption meanwhile.
    async fn write_with_retry(
        &mut self,
        records: &[S::Record],
        failure: WriterError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<Rejected>, Unfinished> {
        let mut backoff = self.backoff();
        let mut paused = false;
        let mut failure = failure;
        // (reason, when) of the last log line: a reason is logged when it
        // changes, and again only every REPEAT_LOG_EVERY.
        let mut logged: Option<(String, Instant)> = None;
        let mut retries = 0u64;
        loop {
            match failure.class() {
                Class::Retriable => {}
                Class::Poison => {
                    self.store_recovered(paused, retries);
                    return Ok(reject_all(records.len(), failure.reason()));
                }
                Class::Fatal => {
                    self.store_recovered(paused, retries);
                    return Err(Unfinished::Fatal(failure));
                }
            }
            let reason = failure.reason();
            self.metrics.count_error(&failure);
            self.metrics.retries.inc();
            self.metrics.store_writable.set(0);
            if let Some(ready) = &self.ready {
                ready.failing(Check::Store, format!("store not written: {reason}"));
            }
            retries += 1;
            let delay = backoff.next().unwrap_or(self.settings.max_backoff);
            let repeat = logged
                .as_ref()
                .is_some_and(|(r, at)| r == reason && at.elapsed() < REPEAT_LOG_EVERY);
            if !repeat {
                warn!(%reason, retries, retry_in_ms = delay.as_millis() as u64, "store write failed; pausing consumption and retrying; not ready");
                logged = Some((reason.to_string(), Instant::now()));
            }
            if !paused {
                paused = self.bus.pause().is_ok();
            }
            self.wait(delay, shutdown).await?;
            let attempt = write_span(&tracing::Span::current(), retries + 1);
            match self.sink.write(records).instrument(attempt).await {
                Ok(rejected) => {
                    self.store_recovered(paused, retries);
                    return Ok(rejected);
                }
                Err(e) => failure = e,
            }
        }
    }

    /// The store answered again (or failed for other than an outage):
    /// consumption and readiness resume.
    fn store_recovered(&mut self, paused: bool, retries: u64) {
        self.resume_if(paused);
        self.metrics.store_writable.set(1);
        if let Some(ready) = &self.ready {
            ready.passing(Check::Store);
        }
        if retries > 0 {
            info!(retries, "store written again; ready");
        }
    }

    fn resume_if(&mut self, paused: bool) {
        if paused && let Err(e) = self.bus.resume() {
            warn!(error = %e, "resume after outage");
        }
    }

    async fn dead_letter_with_retry(
        &mut self,
        env: &Envelope,
        error: &WriterError,
        traceparent: Option<&str>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Unfinished> {
        let mut backoff = self.backoff();
        let mut attempts = 1u32;
        let reason = error.reason();
        // Built once for every attempt and the log line.
        let origin = env.origin();
        loop {
            let mut headers = dlq::headers(&origin, error, &self.settings.writer, attempts);
            headers.extend(traceparent.map(|t| (propagation::TRACEPARENT, t.to_string())));
            match self.bus.dead_letter(env, &headers).await {
                Ok(()) => {
                    self.metrics.count_error(error);
                    self.metrics.count_dead_letter(error);
                    warn!(class = error.label(), %reason, ?origin, "message dead-lettered");
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
        retry_backoff(self.settings.max_backoff)
    }
}

/// The batch's span, after the OpenTelemetry messaging conventions for a
/// batch receive: a root span (a batch has no one parent) named
/// "<destination> process", linked to each message's `traceparent`.
fn batch_span(writer: &str, batch: &[Envelope]) -> tracing::Span {
    let destination = batch.first().map_or("", |e| e.token.source());
    let system = match batch.first().map(|e| &e.token) {
        Some(crate::writer::bus::AckToken::Pubsub { .. }) => "gcp_pubsub",
        _ => "kafka",
    };
    let span = info_span!(parent: None, "process_batch",
        otel.name = %format!("{destination} process"),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.destination.name = destination,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.batch.message_count = batch.len(),
        writer = %writer,
        // Kept for log lines: the first message's context.
        traceparent = batch.iter().find_map(|e| e.traceparent.as_deref()).unwrap_or(""));
    propagation::link_all(&span, batch.iter().filter_map(|e| e.traceparent.as_deref()));
    span
}

/// One `Sink::write` call of a batch, a child of the batch's span.
fn write_span(batch: &tracing::Span, attempt: u64) -> tracing::Span {
    info_span!(parent: batch, "store_write", otel.name = "store write", attempt)
}

/// Every record of a batch refused with `reason`.
fn reject_all(records: usize, reason: &str) -> Vec<Rejected> {
    (0..records)
        .map(|record| Rejected {
            record,
            reason: reason.to_string(),
        })
        .collect()
}

/// The longest wait between two retries of a failing store or transaction,
/// jitter included: a writer resumes within this long of its store coming
/// back, and a store that is down gets one write per writer this often.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Delays between retries of a failing write: from 100 ms, doubling with
/// jitter, never above `max` (the jitter is inside the cap), never giving up
/// (nothing is dropped). Every loop that retries a store or a transaction
/// uses this one.
pub fn retry_backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |delay| delay.min(max))
}

#[cfg(test)]
mod tests;
