//! Every reason the operator writes: condition reasons on the status, event
//! reasons and the `reason` label of its error metrics. One place, so a
//! dashboard or alert written against them has one list to read.

// Status conditions.
pub const APPLY_FAILED: &str = "ApplyFailed";
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const INVALID_WRITERS: &str = "InvalidWriters";
pub const AS_EXPECTED: &str = "AsExpected";
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
pub const ROLLING_OUT: &str = "RollingOut";
pub const ALL_WRITERS_READY: &str = "AllWritersReady";
pub const WRITERS_NOT_READY: &str = "WritersNotReady";
pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";

// What writer pods report (`writer_health.rs`).
pub const BUS_AUTHENTICATION_FAILED: &str = "BusAuthenticationFailed";
pub const BUS_TOPIC_NOT_FOUND: &str = "BusTopicNotFound";
pub const BUS_UNREACHABLE: &str = "BusUnreachable";
pub const STORE_NOT_WRITABLE: &str = "StoreNotWritable";
pub const WRITER_MISCONFIGURED: &str = "WriterMisconfigured";
pub const WRITER_CRASHING: &str = "WriterCrashing";

// Cloud secrets.
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
pub const SECRET_ACCESS_DENIED: &str = "SecretAccessDenied";
pub const SECRET_MALFORMED: &str = "SecretMalformed";
pub const SECRET_NAME_INVALID: &str = "SecretNameInvalid";
pub const SECRET_UNAVAILABLE: &str = "SecretUnavailable";

// Reconcile errors (events and the error metric's label).
pub const CONFLICT: &str = "Conflict";
pub const FORBIDDEN: &str = "Forbidden";
pub const INVALID: &str = "Invalid";
pub const API_ERROR: &str = "ApiError";
pub const MISSING_METADATA: &str = "MissingMetadata";
pub const RENDER_FAILED: &str = "RenderFailed";

// Events.
pub const APPLIED: &str = "Applied";

/// Every reason above, for the test that keeps them distinct and well formed.
pub const ALL: &[&str] = &[
    APPLY_FAILED,
    INVALID_SPEC,
    INVALID_WRITERS,
    AS_EXPECTED,
    ROLLOUT_COMPLETE,
    ROLLING_OUT,
    ALL_WRITERS_READY,
    WRITERS_NOT_READY,
    KEDA_NOT_INSTALLED,
    BUS_AUTHENTICATION_FAILED,
    BUS_TOPIC_NOT_FOUND,
    BUS_UNREACHABLE,
    STORE_NOT_WRITABLE,
    WRITER_MISCONFIGURED,
    WRITER_CRASHING,
    SECRET_NOT_FOUND,
    SECRET_ACCESS_DENIED,
    SECRET_MALFORMED,
    SECRET_NAME_INVALID,
    SECRET_UNAVAILABLE,
    CONFLICT,
    FORBIDDEN,
    INVALID,
    API_ERROR,
    MISSING_METADATA,
    RENDER_FAILED,
    APPLIED,
];

#[cfg(test)]
mod tests {
    use super::ALL;
    use std::collections::BTreeSet;

    #[test]
    fn reasons_are_distinct_upper_camel_case() {
        let distinct: BTreeSet<&str> = ALL.iter().copied().collect();
        assert_eq!(distinct.len(), ALL.len(), "a reason is listed twice");
        for r in ALL {
            // Kubernetes requires condition reasons to match this (CamelCase).
            let ok = r.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && r.chars().all(|c| c.is_ascii_alphanumeric());
            assert!(ok, "{r} is not UpperCamelCase");
        }
    }
}
