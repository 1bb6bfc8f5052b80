//! Messages a bus has received but not yet handed out, and how a batch is
//! cut from them: at most `Batching::max` messages and `Batching::max_bytes`
//! of payload, but always at least one message, however large.

use super::{Batching, Envelope};
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct Pending {
    queue: VecDeque<Envelope>,
    /// Payload bytes of everything in `queue`.
    bytes: usize,
}

impl Pending {
    pub fn push(&mut self, env: Envelope) {
        self.bytes += env.payload.len();
        self.queue.push_back(env);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a batch would be cut short by a limit: gathering more is
    /// pointless.
    pub fn holds_a_batch(&self, batching: &Batching) -> bool {
        self.queue.len() >= batching.max.max(1) || self.bytes >= batching.max_bytes
    }

    /// The leading messages that fit both limits (at least one).
    pub fn take_batch(&mut self, batching: &Batching) -> Vec<Envelope> {
        let max = batching.max.max(1);
        let mut n = 0;
        let mut bytes = 0usize;
        for env in self.queue.iter().take(max) {
            let size = env.payload.len();
            if n > 0 && bytes.saturating_add(size) > batching.max_bytes {
                break;
            }
            bytes += size;
            n += 1;
        }
        self.bytes -= bytes;
        self.queue.drain(..n).collect()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::bus::AckToken;
    use std::time::Duration;

    fn message(offset: i64, size: usize) -> Envelope {
        Envelope::at_offset(offset, vec![b'x'; size])
    }

    fn batching(max: usize, max_bytes: usize) -> Batching {
        Batching {
            max,
            max_bytes,
            wait: Duration::ZERO,
            until_drained: false,
        }
    }

    fn offsets(batch: &[Envelope]) -> Vec<i64> {
        batch
            .iter()
            .map(|e| match e.token {
                AckToken::Kafka { offset, .. } => offset,
                AckToken::Pubsub { .. } => -1,
            })
            .collect()
    }

    fn pending(sizes: &[usize]) -> Pending {
        let mut p = Pending::default();
        for (i, size) in sizes.iter().enumerate() {
            p.push(message(i as i64, *size));
        }
        p
    }

    #[test]
    fn a_batch_stops_at_the_message_count_or_the_payload_bytes_whichever_comes_first() {
        let mut p = pending(&[100; 10]);
        assert!(p.holds_a_batch(&batching(4, 10_000)));
        assert_eq!(offsets(&p.take_batch(&batching(4, 10_000))), [0, 1, 2, 3]);
        assert!(p.holds_a_batch(&batching(100, 250)));
        assert_eq!(offsets(&p.take_batch(&batching(100, 250))), [4, 5]);
        assert_eq!(offsets(&p.take_batch(&batching(100, 300))), [6, 7, 8]);
        assert!(!p.holds_a_batch(&batching(100, 300)));
        assert_eq!(offsets(&p.take_batch(&batching(100, 300))), [9]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_message_larger_than_the_byte_limit_is_a_batch_of_its_own() {
        let mut p = pending(&[50, 5_000, 50]);
        let limit = batching(100, 1_000);
        assert_eq!(offsets(&p.take_batch(&limit)), [0]);
        assert_eq!(offsets(&p.take_batch(&limit)), [1]);
        assert_eq!(offsets(&p.take_batch(&limit)), [2]);
        assert!(p.is_empty());
        // Its bytes left with it.
        assert!(!p.holds_a_batch(&batching(1, 1)));
    }
}
