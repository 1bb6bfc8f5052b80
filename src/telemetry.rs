//! Logging and traces for the binaries: `RUST_LOG` filtering, JSON lines or
//! plain text on stdout, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OTLP trace export through a
//! `tracing-opentelemetry` layer (docs/tracing.md).

mod otlp;
pub mod propagation;

use std::io::IsTerminal;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

pub use otlp::OtlpError;

/// What `init` installed; `shutdown` flushes the spans not yet exported.
/// Dropping it without `shutdown` loses them.
#[must_use = "call shutdown() on exit so the last spans are exported"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter. Call it once the
    /// work is over, outside the async runtime's tasks: the HTTP exporter's
    /// client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces on exit");
        }
    }
}

/// Installs the global subscriber; logs go to stdout so stderr stays free for
/// the one-line startup error. A second call installs nothing, never panics.
/// Call it inside the async runtime (`Runtime::enter`): the gRPC exporter
/// spawns its connection there. `service` is `service.name` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.
pub fn init(json: bool, service: &'static str) -> Telemetry {
    let env = |k: &str| std::env::var(k).ok();
    let (provider, failure) = match otlp::provider(service, env) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    // An unparsable RUST_LOG falls back to "info" rather than silencing logs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .boxed()
    };
    // Spans are exported whatever RUST_LOG says, but only this crate's: the
    // exporter's own HTTP client must not trace itself.
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("bgpersist"))
            .with_filter(Targets::new().with_target("bgpersist", tracing::Level::INFO))
    });
    // Err only means a subscriber is already installed.
    let _ = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(traces)
        .try_init();
    if let Some(e) = failure {
        // Traces are a diagnosis aid: a bad setting is reported, not fatal.
        tracing::warn!(error = %e, "OTLP trace export is off");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    Telemetry { provider }
}

/// `bgpersist_build_info{version, component} 1`: which build runs where.
pub fn register_build_info(registry: &mut prometheus_client::registry::Registry, component: &str) {
    let info = prometheus_client::metrics::info::Info::new(vec![
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("component".to_string(), component.to_string()),
    ]);
    registry.register(
        "bgpersist_build",
        "The running build's version, per component",
        info,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_twice_does_not_panic() {
        let first = super::init(false, "test");
        let second = super::init(true, "test");
        // No endpoint in the test environment: nothing is exported.
        assert!(!first.exporting() && !second.exporting());
        first.shutdown();
        second.shutdown();
    }
}
