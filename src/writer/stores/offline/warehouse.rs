//! What the BigQuery and Snowflake stores share: their error type, the HTTP
//! client, which HTTP answers are worth retrying, and how a load is cut into
//! requests (by table, then into chunks that keep each entry whole).

use super::TableRows;
use crate::writer::runtime::sink::{Rejected, WriterError};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Why a warehouse store could not be opened. Load-time failures are
/// [`crate::writer::runtime::sink::WriterError`]s or rejections instead.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The URI is never echoed whole: it may carry a token or a key.
    #[error("offline store URI: {0}")]
    Uri(String),
    #[error("offline store credentials: {0}")]
    Credentials(String),
    #[error("offline store HTTP client: {0}")]
    Client(String),
    /// The destination (dataset, database) does not exist: a configuration error.
    #[error("offline store: {0}")]
    Missing(String),
}

/// How long one request may take; a statement that needs longer is polled.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// One client per store: connection reuse, bounded waits, our user agent
/// (the Snowflake SQL API requires one).
pub fn http_client() -> Result<reqwest::Client, WarehouseError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("bgpersist/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WarehouseError::Client(e.to_string()))
}

/// Answers that say "not now" rather than "not this": credentials that
/// expired or are not yet authorised (401/403: a rotated key, a grant being
/// propagated), timeouts, rate limits and server errors.
pub fn worth_retrying(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 408 | 429) || status.is_server_error()
}

/// The entries of `rows` grouped by destination table, in first-seen order.
/// Encodes each of `members` (indexes into a load's rows) with `encode`; a
/// row it refuses is rejected with the reason, the others come back paired
/// with their index.
pub fn encode_members<T>(
    members: &[usize],
    rejected: &mut Vec<Rejected>,
    mut encode: impl FnMut(usize) -> Result<T, String>,
) -> Vec<(usize, T)> {
    let mut encoded = Vec::with_capacity(members.len());
    for &i in members {
        match encode(i) {
            Ok(e) => encoded.push((i, e)),
            Err(reason) => rejected.push(Rejected { record: i, reason }),
        }
    }
    encoded
}

pub fn by_table(rows: &[TableRows]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, entry) in rows.iter().enumerate() {
        match groups.iter_mut().find(|(t, _)| *t == entry.table) {
            Some((_, members)) => members.push(i),
            None => groups.push((entry.table.clone(), vec![i])),
        }
    }
    groups
}

/// Cuts rows (each with its entry index and encoded size) into chunks of at
/// most `max_rows` rows and about `max_bytes`, cutting between entries when
/// possible so an entry is loaded or refused as a whole; only an entry larger
/// than a chunk is split. Returns index ranges into `rows`.
pub fn chunks(
    rows: &[(usize, usize)],
    max_rows: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        // Where the last whole entry ends inside the chunk being built.
        let mut entry_end = None;
        while end < rows.len() && end - start < max_rows.max(1) {
            let (entry, size) = rows[end];
            if end > start && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            end += 1;
            if rows.get(end).is_none_or(|(next, _)| *next != entry) {
                entry_end = Some(end);
            }
        }
        let cut = match entry_end {
            Some(e) if end < rows.len() => e,
            _ => end,
        };
        out.push(start..cut);
        start = cut;
    }
    out
}

/// Sends `req` to `service` and reads its answer: JSON when it parses, else
/// the first 300 characters as a string (for the error message). Transport
/// failures are retriable.
pub async fn send_json(
    service: &str,
    req: reqwest::RequestBuilder,
) -> Result<(StatusCode, Value), WriterError> {
    let resp = req
        .send()
        .await
        .map_err(|e| WriterError::Retriable(format!("{service} unreachable: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| WriterError::Retriable(format!("{service} answer cut short: {e}")))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes).chars().take(300).collect())
        })
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::RecordBatch;

    #[test]
    fn entries_are_grouped_by_table_in_order() {
        let entry = |t: &str| TableRows {
            table: t.into(),
            batch: RecordBatch::new_empty(std::sync::Arc::new(arrow_schema::Schema::empty())),
            idempotency_key: None,
        };
        let rows = [entry("b"), entry("a"), entry("b")];
        assert_eq!(
            by_table(&rows),
            vec![("b".to_string(), vec![0, 2]), ("a".to_string(), vec![1])]
        );
    }

    #[test]
    fn chunks_cut_between_entries() {
        // entry 0: 3 rows, entry 1: 2 rows, entry 2: 4 rows; 10 bytes each.
        let rows: Vec<(usize, usize)> = [0, 0, 0, 1, 1, 2, 2, 2, 2]
            .into_iter()
            .map(|e| (e, 10))
            .collect();
        assert_eq!(chunks(&rows, 4, 1000), vec![0..3, 3..5, 5..9]);
        assert_eq!(chunks(&rows, 100, 1000), vec![0..9]);
        // By bytes: 50 bytes fit entries 0 and 1 whole.
        assert_eq!(chunks(&rows, 100, 50), vec![0..5, 5..9]);
        // An entry larger than a chunk is split.
        assert_eq!(chunks(&rows[5..], 3, 1000), vec![0..3, 3..4]);
        assert!(chunks(&[], 3, 10).is_empty());
        // A single row larger than max_bytes still goes, alone.
        assert_eq!(chunks(&[(0, 99), (1, 1)], 10, 10), vec![0..1, 1..2]);
    }

    #[test]
    fn retry_follows_the_status() {
        for s in [401, 403, 408, 429, 500, 502, 503, 504] {
            assert!(
                worth_retrying(StatusCode::from_u16(s).unwrap_or_default()),
                "{s}"
            );
        }
        for s in [400, 404, 409, 413, 422] {
            assert!(
                !worth_retrying(StatusCode::from_u16(s).unwrap_or_default()),
                "{s}"
            );
        }
    }
}
