//! The writer side: one shared runtime (bus consumer, batching, commit
//! tracking, dead-lettering, retry, metrics, shutdown) and one small module
//! per writer type that plugs a sink into it.

pub mod bus;
pub mod config;
pub mod dlq;
pub mod feature_metrics;
pub mod launch;
pub mod metrics;
pub mod metrics_store;
pub mod mirror;
pub mod offline;
pub mod online;
pub mod pg;
pub mod pg_rows;
pub mod row_sink;
pub mod runtime;
pub mod sink;
pub mod store_uri;
pub mod usage;
pub mod vector;

pub use config::WriterConfig;
pub use runtime::Runtime;
