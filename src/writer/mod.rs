//! The writer side: one shared runtime (`runtime/`: batching, commit
//! tracking, dead-lettering, retry, metrics, shutdown) over a bus (`bus/`),
//! the stores (`stores/`, one folder per family) and one small module per
//! writer type (`types/`, named after the type) that plugs a store into the
//! runtime.

pub mod bus;
pub mod config;
pub mod error;
pub mod runtime;
pub mod stores;
pub mod types;

pub use config::WriterConfig;
pub use runtime::Runtime;
