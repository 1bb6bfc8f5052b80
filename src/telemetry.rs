//! Logging for the binaries: `RUST_LOG` filtering, JSON lines or plain text.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; logs go to stdout so stderr stays free for
/// the one-line startup error. A second call is a no-op, never a panic.
pub fn init(json: bool) {
    // An unparsable RUST_LOG falls back to "info" rather than silencing logs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // Err only means a subscriber is already installed.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
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
        super::init(false);
        super::init(true);
    }
}
