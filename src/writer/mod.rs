//! The writer side: one shared runtime (bus consumer, batching, commit
//! tracking, dead-lettering, retry, metrics, shutdown) and one small module
//! per writer type that plugs a sink into it.

pub mod bus;
pub mod config;
pub mod dlq;
pub mod metrics;
pub mod offline;
pub mod online;
pub mod pg;
pub mod runtime;
pub mod sink;

pub use config::WriterConfig;
pub use runtime::Runtime;
