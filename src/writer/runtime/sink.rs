//! What a writer type plugs into the runtime.

use std::future::Future;

pub use crate::writer::error::WriterError;

/// A record the store refused for good (wrong type, too large): it goes to the
/// dead-letter topic with the reason and the stream goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index of the record in the slice passed to `write`.
    pub record: usize,
    pub reason: String,
}

/// A destination store. One instance per writer process; `write` is called
/// with one decoded batch at a time.
pub trait Sink: Send + Sync + 'static {
    type Record: Send + Sync + 'static;

    /// Whether `write` may be called for the next batch before the previous
    /// call returned. Sinks whose writes commute (newer-wins upserts) opt in
    /// so the store never idles between batches; offsets are still marked
    /// done strictly in batch order.
    const OVERLAPPING_WRITES: bool = false;

    /// Whether a batch is handed over as soon as the bus has nothing more
    /// received, instead of after the batch window: for stores whose small
    /// writes cost little more per record than large ones, so latency need
    /// not wait for the window (see `Batching::until_drained`).
    const UNTIL_DRAINED: bool = false;

    /// How many times the configured batch size a batch may grow to while
    /// the bus has a backlog: for stores whose cost per write (a
    /// transaction) dwarfs its cost per record. Batches double while they
    /// come back full and halve when under half full, so a short burst or
    /// an idle bus keeps them small.
    const BACKLOG_GROWTH: usize = 1;

    /// Decodes one bus message into records. A poison error
    /// (`WriterError::Decode`) dead-letters the message, never retried; a
    /// fatal one stops the writer.
    fn decode(&self, payload: &[u8]) -> Result<Vec<Self::Record>, WriterError>;

    /// Writes durably (or reports why not). Idempotent: the runtime may
    /// replay a batch after a crash. A retriable error is retried until it
    /// succeeds; a poison one dead-letters every message of the batch; a
    /// fatal one stops the writer with the batch uncommitted.
    fn write(
        &self,
        records: &[Self::Record],
    ) -> impl Future<Output = Result<Vec<Rejected>, WriterError>> + Send;
}
