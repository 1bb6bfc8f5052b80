//! The runtime on an in-memory bus and sink: ordering of `done` with two
//! writes in flight, idle buses, shutdown. The real buses are tested in
//! tests/writers.

use super::*;
use crate::writer::bus::AckToken;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Hands out prepared batches, then stays idle (never returns) like a quiet topic.
struct ScriptedBus {
    batches: std::collections::VecDeque<Vec<Envelope>>,
    done: DoneLog,
    /// What each `reached` answers in turn (true: it answers); then true.
    answers: Arc<Mutex<std::collections::VecDeque<bool>>>,
    /// After the prepared batches: messages handed out `Batching::max` at a time.
    backlog: std::collections::VecDeque<Envelope>,
    /// The `Batching::max` of each receive.
    asked: Arc<Mutex<Vec<usize>>>,
}

/// The offsets of each batch marked done, in the order marked.
type DoneLog = Arc<Mutex<Vec<Vec<i64>>>>;

impl Bus for ScriptedBus {
    async fn reached(&self) -> Result<(), BusError> {
        let answers = self.answers.lock().ok().and_then(|mut a| a.pop_front());
        match answers {
            Some(false) => Err(BusError::NotFound {
                what: "topic",
                name: "results".into(),
            }),
            _ => Ok(()),
        }
    }
    async fn next_batch(&mut self, batching: Batching) -> Result<Vec<Envelope>, BusError> {
        if let Ok(mut a) = self.asked.lock() {
            a.push(batching.max);
        }
        if let Some(b) = self.batches.pop_front() {
            return Ok(b);
        }
        if self.backlog.is_empty() {
            return std::future::pending().await;
        }
        let n = batching.max.min(self.backlog.len());
        Ok(self.backlog.drain(..n).collect())
    }
    async fn done(&mut self, batch: &[Envelope]) -> Result<(), BusError> {
        let offsets = batch
            .iter()
            .filter_map(|e| match e.token {
                AckToken::Kafka { offset, .. } => Some(offset),
                AckToken::Pubsub { .. } => None,
            })
            .collect();
        if let Ok(mut d) = self.done.lock() {
            d.push(offsets);
        }
        Ok(())
    }
    async fn dead_letter(
        &self,
        _: &Envelope,
        _: &[(&'static str, String)],
    ) -> Result<(), BusError> {
        Ok(())
    }
    fn pause(&mut self) -> Result<(), BusError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), BusError> {
        Ok(())
    }
    async fn keep_alive(&mut self, for_: Duration) {
        tokio::time::sleep(for_).await
    }
    async fn close(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Each record is a delay in milliseconds; writing sleeps that long. Counts
/// how many writes overlap.
struct SlowSink<const OVERLAP: bool> {
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    finished: Mutex<Vec<u64>>,
}

impl<const OVERLAP: bool> SlowSink<OVERLAP> {
    fn new() -> Self {
        SlowSink {
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            finished: Mutex::new(Vec::new()),
        }
    }
}

impl<const OVERLAP: bool> Sink for Arc<SlowSink<OVERLAP>> {
    type Record = u64;
    const OVERLAPPING_WRITES: bool = OVERLAP;

    fn decode(&self, payload: &[u8]) -> Result<Vec<u64>, WriterError> {
        assert_ne!(payload, b"panic", "a decoder bug");
        let text = std::str::from_utf8(payload).map_err(|e| WriterError::Decode(e.to_string()))?;
        text.parse()
            .map(|n| vec![n])
            .map_err(|e| WriterError::Decode(format!("{e}")))
    }

    async fn write(&self, records: &[u64]) -> Result<Vec<Rejected>, WriterError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let ms = records.iter().copied().max().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut f) = self.finished.lock() {
            f.push(ms);
        }
        Ok(Vec::new())
    }
}

fn envelope(offset: i64, payload: &str) -> Envelope {
    Envelope::at_offset(offset, payload.as_bytes().to_vec())
}

fn runtime<S: Sink>(batches: Vec<Vec<Envelope>>, sink: S) -> (Runtime<ScriptedBus, S>, DoneLog) {
    let done = Arc::new(Mutex::new(Vec::new()));
    let bus = ScriptedBus {
        batches: batches.into(),
        done: done.clone(),
        answers: Arc::default(),
        backlog: Default::default(),
        asked: Arc::default(),
    };
    let settings = Settings {
        writer: "test".into(),
        max_batch_size: 10,
        batch_ceiling: 10,
        max_batch_bytes: 8 << 20,
        max_batch_wait: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        bus_recheck: Duration::from_secs(10),
    };
    let metrics = WriterMetrics::register(&mut Registry::default());
    (Runtime::new(bus, sink, metrics, settings), done)
}

fn done_offsets(done: &Mutex<Vec<Vec<i64>>>) -> Vec<Vec<i64>> {
    done.lock().map(|d| d.clone()).unwrap_or_default()
}

/// Waits (in paused virtual time) until `n` batches are done.
async fn until_done(done: &Mutex<Vec<Vec<i64>>>, n: usize) {
    for _ in 0..10_000 {
        if done_offsets(done).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn overlapping_writes_are_marked_done_in_batch_order() {
    let sink = Arc::new(SlowSink::<true>::new());
    // The first batch writes slowly, the second fast: the second finishes first.
    let batches = vec![vec![envelope(0, "300")], vec![envelope(1, "10")]];
    let (rt, done) = runtime(batches, sink.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 2).await;
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);

    assert_eq!(sink.most_at_once.load(Ordering::SeqCst), 2);
    assert_eq!(
        sink.finished.lock().map(|f| f.clone()).unwrap_or_default(),
        vec![10, 300]
    );
    assert_eq!(done_offsets(&done), vec![vec![0], vec![1]]);
    assert_eq!(totals.map(|t| t.written), Some(2));
}

#[tokio::test(start_paused = true)]
async fn sinks_that_do_not_opt_in_write_one_batch_at_a_time() {
    let sink = Arc::new(SlowSink::<false>::new());
    let batches = vec![
        vec![envelope(0, "300")],
        vec![envelope(1, "10")],
        vec![envelope(2, "5")],
    ];
    let (rt, done) = runtime(batches, sink.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 3).await;
    let _ = stop_tx.send(true);
    let _ = run.await;

    assert_eq!(sink.most_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(done_offsets(&done), vec![vec![0], vec![1], vec![2]]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_in_flight_is_finished_while_the_bus_is_idle() {
    let sink = Arc::new(SlowSink::<true>::new());
    // One batch, then the bus never delivers again.
    let (rt, done) = runtime(vec![vec![envelope(7, "50"), envelope(8, "x")]], sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 1).await;
    // Done before any shutdown: the idle receive did not hold it back.
    assert_eq!(done_offsets(&done), vec![vec![7, 8]]);
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| (t.written, t.dead_lettered)), Some((1, 1)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_write_already_in_flight() {
    let sink = Arc::new(SlowSink::<true>::new());
    let (rt, done) = runtime(vec![vec![envelope(3, "1000")]], sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(done_offsets(&done).is_empty(), "still writing");
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(done_offsets(&done), vec![vec![3]]);
    assert_eq!(totals.map(|t| t.written), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_decoder_panic_dead_letters_that_message_and_the_rest_flows() {
    let sink = Arc::new(SlowSink::<false>::new());
    let batch = vec![envelope(1, "5"), envelope(2, "panic"), envelope(3, "6")];
    let (rt, done) = runtime(vec![batch], sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 1).await;
    assert_eq!(done_offsets(&done), vec![vec![1, 2, 3]]);
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| (t.written, t.dead_lettered)), Some((2, 1)));
}

/// Fails each write with the next scripted error, then succeeds.
struct FailingSink {
    failures: Mutex<std::collections::VecDeque<WriterError>>,
}

impl Sink for Arc<FailingSink> {
    type Record = u64;

    fn decode(&self, payload: &[u8]) -> Result<Vec<u64>, WriterError> {
        Ok(vec![payload.len() as u64])
    }

    async fn write(&self, _: &[u64]) -> Result<Vec<Rejected>, WriterError> {
        let next = self.failures.lock().ok().and_then(|mut f| f.pop_front());
        next.map_or(Ok(Vec::new()), Err)
    }
}

fn failing(errors: Vec<WriterError>) -> Arc<FailingSink> {
    Arc::new(FailingSink {
        failures: Mutex::new(errors.into()),
    })
}

#[tokio::test(start_paused = true)]
async fn the_error_class_decides_retry_dead_letter_or_stop() {
    // Retriable: retried until it succeeds, then done; nothing dead-lettered.
    let sink = failing(vec![WriterError::Retriable("down".into()); 2]);
    let (rt, done) = runtime(vec![vec![envelope(1, "a")]], sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 1).await;
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| (t.written, t.dead_lettered)), Some((1, 0)));

    // Poison from a write: every message of the batch is dead-lettered, then done.
    let sink = failing(vec![WriterError::Rejected("never".into())]);
    let (rt, done) = runtime(vec![vec![envelope(1, "a"), envelope(2, "b")]], sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 1).await;
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| (t.written, t.dead_lettered)), Some((0, 2)));

    // Fatal: the runtime stops with the error and the batch is not done.
    let sink = failing(vec![WriterError::Config("bad password".into())]);
    let (rt, done) = runtime(vec![vec![envelope(1, "a")]], sink);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let result = rt.run(stop_rx).await;
    assert_eq!(result, Err(WriterError::Config("bad password".into())));
    assert!(done_offsets(&done).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_bus_that_stops_answering_turns_readiness_off_until_it_answers_again() {
    let (rt, done) = runtime(vec![vec![envelope(1, "a")]], failing(vec![]));
    rt.bus
        .answers
        .lock()
        .map(|mut a| a.extend([true, false, false, true]))
        .unwrap_or_default();
    let answers = rt.bus.answers.clone();
    let metrics = rt.metrics.clone();
    let ready = Arc::new(crate::http::Readiness::default());
    ready.set_ready(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.with_readiness(ready.clone()).run(stop_rx));
    until_done(&done, 1).await;
    let mut seen = Vec::new();
    // One recheck every 10 s (virtual time): answers, fails twice, answers.
    // Sampled halfway between rechecks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        seen.push((
            ready.is_ready(),
            ready.reason(),
            metrics.bus_reachable.get(),
        ));
    }
    let off = Some(
        "bus not reached: topic 'results' does not exist; create it or correct the resource"
            .to_string(),
    );
    assert_eq!(
        seen,
        vec![
            (true, None, 1),
            (false, off.clone(), 0),
            (false, off, 0),
            (true, None, 1),
        ]
    );
    assert!(answers.lock().map(|a| a.is_empty()).unwrap_or(false));
    let _ = stop_tx.send(true);
    assert!(run.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn failing_store_writes_turn_readiness_off_with_the_reason_until_one_succeeds() {
    let sink = failing(vec![WriterError::Retriable("tls: unknown CA".into()); 30]);
    let (rt, done) = runtime(vec![vec![envelope(1, "a")]], sink);
    let metrics = rt.metrics.clone();
    let ready = Arc::new(crate::http::Readiness::default());
    ready.set_ready(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.with_readiness(ready.clone()).run(stop_rx));
    for _ in 0..1000 {
        if metrics.retries.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!ready.is_ready());
    assert_eq!(
        ready.reason().as_deref(),
        Some("store not written: tls: unknown CA")
    );
    assert_eq!(metrics.store_writable.get(), 0);
    until_done(&done, 1).await;
    assert!(ready.is_ready(), "{:?}", ready.reason());
    assert_eq!(metrics.store_writable.get(), 1);
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| t.written), Some(1));
}

/// Each write takes 5 ms and fails while the store is down.
#[derive(Default)]
struct FlakyStore {
    up: std::sync::atomic::AtomicBool,
}

impl Sink for Arc<FlakyStore> {
    type Record = u64;
    const OVERLAPPING_WRITES: bool = true;

    fn decode(&self, _: &[u8]) -> Result<Vec<u64>, WriterError> {
        Ok(vec![1])
    }

    async fn write(&self, _: &[u64]) -> Result<Vec<Rejected>, WriterError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.up.load(Ordering::SeqCst) {
            Ok(Vec::new())
        } else {
            Err(WriterError::Retriable("connection refused".into()))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_failed_in_an_outage_already_waited_out_is_redone_at_once() {
    // Both batches' writes fail while the store is down; the first is
    // retried through the outage.
    let sink = Arc::new(FlakyStore::default());
    let batches = vec![vec![envelope(1, "a")], vec![envelope(2, "b")]];
    let (rt, done) = runtime(batches, sink.clone());
    let metrics = rt.metrics.clone();
    let ready = Arc::new(crate::http::Readiness::default());
    // Started: the bus was reached (start.rs); the store decides from here.
    ready.set_ready(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.with_readiness(ready.clone()).run(stop_rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retries = metrics.retries.get();
    assert!(retries > 0);
    sink.up.store(true, Ordering::SeqCst);
    until_done(&done, 2).await;
    // The second batch's failure is from the outage: written at once, no
    // further retry, readiness stays on.
    assert_eq!(done_offsets(&done), vec![vec![1], vec![2]]);
    assert_eq!(metrics.retries.get(), retries);
    assert!(ready.is_ready(), "{:?}", ready.reason());
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| t.written), Some(2));
}

#[test]
fn backoff_jitter_stays_within_the_cap() {
    let cap = Duration::from_millis(300);
    let delays: Vec<Duration> = retry_backoff(cap).take(200).collect();
    assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
    // It does reach the cap: a long outage is retried every `cap`, not faster.
    assert!(
        delays[20..].iter().any(|d| *d >= cap * 9 / 10),
        "{delays:?}"
    );
}

#[test]
fn batch_limits_double_when_full_and_halve_when_under_half() {
    // (limit, got) -> next, with base 10 and ceiling 80.
    for (limit, got, next) in [
        (10, 10, 20),
        (20, 20, 40),
        (80, 80, 80),
        (80, 50, 80),
        (80, 39, 40),
        (20, 3, 10),
        (10, 1, 10),
    ] {
        assert_eq!(next_limit(limit, got, 10, 80), next, "{limit} {got}");
    }
    // A ceiling under the base never shrinks the configured size.
    assert_eq!(next_limit(10, 10, 10, 1), 10);
}

#[tokio::test(start_paused = true)]
async fn batches_grow_under_a_backlog_up_to_the_ceiling_then_shrink() {
    let sink = Arc::new(SlowSink::<false>::new());
    let (mut rt, done) = runtime(Vec::new(), sink);
    rt.settings.batch_ceiling = 40;
    rt.bus.backlog = (0..200).map(|i| envelope(i, "0")).collect();
    let asked = rt.bus.asked.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(rt.run(stop_rx));
    until_done(&done, 7).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stop_tx.send(true);
    let totals = run.await.ok().and_then(Result::ok);
    assert_eq!(totals.map(|t| t.written), Some(200));
    let sizes: Vec<usize> = done_offsets(&done).iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 20, 40, 40, 40, 40, 10]);
    // The last, short batch halves the limit for what comes next.
    let asked = asked.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(asked, [10, 20, 40, 40, 40, 40, 40, 20]);
}
