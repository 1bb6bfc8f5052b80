//! The dead-letter format: the original message bytes, key and headers
//! (Kafka) or attributes and ordering key (Pub/Sub) unchanged, with the
//! reason in more headers / attributes, and `traceparent` set to the
//! writer's batch span when traces are exported. Documented in
//! docs/bus-formats.md. The class header is the error's label
//! (`decode`, `rejected`).

use crate::writer::bus::Envelope;
use crate::writer::error::WriterError;

pub const H_ORIGINAL_TOPIC: &str = "bgp-dlq-original-topic";
pub const H_ORIGINAL_PARTITION: &str = "bgp-dlq-original-partition";
pub const H_ORIGINAL_OFFSET: &str = "bgp-dlq-original-offset";
pub const H_ORIGINAL_MESSAGE_ID: &str = "bgp-dlq-original-message-id";
pub const H_ERROR_CLASS: &str = "bgp-dlq-error-class";
pub const H_ERROR_MESSAGE: &str = "bgp-dlq-error-message";
pub const H_WRITER: &str = "bgp-dlq-writer";
pub const H_ATTEMPTS: &str = "bgp-dlq-attempts";
pub const H_TIME: &str = "bgp-dlq-time";
pub const H_FORMAT_VERSION: &str = "bgp-dlq-version";

/// The headers of one dead letter, in order.
pub fn headers(
    origin: &[(&'static str, String)],
    error: &WriterError,
    writer: &str,
    attempts: u32,
) -> Vec<(&'static str, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut h: Vec<(&'static str, String)> = origin.to_vec();
    h.extend([
        (H_ERROR_CLASS, error.label().to_string()),
        // Bounded: a header is no place for a megabyte of error text.
        (H_ERROR_MESSAGE, error.reason().chars().take(1024).collect()),
        (H_WRITER, writer.to_string()),
        (H_ATTEMPTS, attempts.to_string()),
        (H_TIME, now.to_string()),
        (H_FORMAT_VERSION, "1".to_string()),
    ]);
    h
}

/// The original headers a dead letter keeps: all but those `added` (the
/// `bgp-dlq-*` ones, `traceparent`) sets anew, so a dead letter replayed and
/// dead-lettered again does not carry two of each.
pub fn kept_headers<'a>(
    env: &'a Envelope,
    added: &'a [(&'static str, String)],
) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    env.headers
        .iter()
        .filter(|(k, _)| !added.iter().any(|(a, _)| a == k))
        .map(|(k, v)| (k.as_str(), v.as_slice()))
}
