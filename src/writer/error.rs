//! How a writer fails. One error type for the whole writer side; its
//! [`Class`] decides what happens next, and its [`label`](WriterError::label)
//! names it in the dead-letter headers, the `errors` metric and the exit log.

/// What the runtime does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// This message can never be written: it is dead-lettered with the
    /// reason and the stream goes on.
    Poison,
    /// The store is unavailable for now: consumption pauses and the write is
    /// retried with capped backoff; nothing is dropped or committed.
    Retriable,
    /// The writer cannot go on: it exits, leaving the batch in hand
    /// uncommitted (redelivered to the next consumer).
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterError {
    /// The bytes are not a valid message of the bus's format (poison).
    #[error("{0}")]
    Decode(String),
    /// The store refuses the message's records for good (poison).
    #[error("{0}")]
    Rejected(String),
    /// The store is unreachable, overloaded or refused our credentials for now.
    #[error("store unavailable: {0}")]
    Retriable(String),
    /// It can never work as configured (fatal, exit code 2, one line on stderr).
    #[error("{0}")]
    Config(String),
    /// It broke while running (fatal, exit code 1, logged).
    #[error("{0}")]
    Runtime(String),
}

impl WriterError {
    pub fn class(&self) -> Class {
        match self {
            WriterError::Decode(_) | WriterError::Rejected(_) => Class::Poison,
            WriterError::Retriable(_) => Class::Retriable,
            WriterError::Config(_) | WriterError::Runtime(_) => Class::Fatal,
        }
    }

    /// The name of the failure: the `bgp-dlq-error-class` header of a dead
    /// letter and the `class` label of `bgpersist_writer_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            WriterError::Decode(_) => "decode",
            WriterError::Rejected(_) => "rejected",
            WriterError::Retriable(_) => "retriable",
            WriterError::Config(_) => "config",
            WriterError::Runtime(_) => "runtime",
        }
    }

    /// The process exit code when this error ends the writer.
    pub fn exit_code(&self) -> u8 {
        match self {
            WriterError::Config(_) => 2,
            _ => 1,
        }
    }

    /// The reason without the class's prefix.
    pub fn reason(&self) -> &str {
        match self {
            WriterError::Decode(r)
            | WriterError::Rejected(r)
            | WriterError::Retriable(r)
            | WriterError::Config(r)
            | WriterError::Runtime(r) => r,
        }
    }

    /// A configuration error worded with what it is about (`online store: ...`).
    pub fn config(about: &str, e: impl std::fmt::Display) -> Self {
        WriterError::Config(format!("{about}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_decides_label_and_exit_code() {
        let cases = [
            (WriterError::Decode("x".into()), Class::Poison, "decode", 1),
            (
                WriterError::Rejected("x".into()),
                Class::Poison,
                "rejected",
                1,
            ),
            (
                WriterError::Retriable("x".into()),
                Class::Retriable,
                "retriable",
                1,
            ),
            (WriterError::Config("x".into()), Class::Fatal, "config", 2),
            (WriterError::Runtime("x".into()), Class::Fatal, "runtime", 1),
        ];
        for (e, class, label, code) in cases {
            assert_eq!((e.class(), e.label(), e.exit_code()), (class, label, code));
            assert_eq!(e.reason(), "x");
        }
        assert_eq!(
            WriterError::Retriable("down".into()).to_string(),
            "store unavailable: down"
        );
    }
}
