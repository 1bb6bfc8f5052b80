//! W3C trace context (`traceparent`) in and out of bus messages and HTTP
//! requests: what a writer links its batch span to, and what it puts on
//! everything it produces. Both directions are no-ops while export is off.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header / attribute name.
pub const TRACEPARENT: &str = "traceparent";

/// The span context a `traceparent` value names, if it is a valid one.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    // The SDK's parser takes ids of any length ("00-abc-def-01"); the W3C
    // format fixes them (32 and 16 hex digits), and a malformed value must
    // be ignored, not padded into a context.
    let lengths: Vec<usize> = traceparent.trim().split('-').map(str::len).collect();
    if lengths.get(..4) != Some(&[2, 32, 16, 2]) {
        return None;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to each message's context (invalid or absent ones skipped).
/// Call it before the span is entered: links are set at its start.
pub fn link_all<'a>(span: &tracing::Span, traceparents: impl Iterator<Item = &'a str>) {
    for sc in traceparents.filter_map(span_context) {
        span.add_link(sc);
    }
}

/// `span`'s context as a `traceparent` value; None while spans are not
/// exported (the span then has no OpenTelemetry context).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The current span's context as a `traceparent` value (see [`traceparent`]).
pub fn current() -> Option<String> {
    traceparent(&tracing::Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read() {
        let sc = span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sc = sc.map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string()));
        assert_eq!(
            sc,
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
                "00f067aa0ba902b7".to_string()
            ))
        );
    }

    #[test]
    fn an_invalid_traceparent_is_skipped() {
        assert!(span_context("00-abc-def-01").is_none());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("").is_none());
    }

    #[test]
    fn no_context_without_export() {
        // No OpenTelemetry layer in unit tests: nothing to propagate.
        let span = tracing::info_span!("batch");
        assert_eq!(traceparent(&span), None);
    }
}
