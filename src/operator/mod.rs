//! The operator: watches BackgroundPersistence resources and reconciles each
//! through read → validate → render (pure) → apply (server-side apply) → status.

pub mod applier;
pub mod apply;
pub mod cache;
pub mod controller;
pub mod error;
pub mod handover;
pub mod keda;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod network_policy;
pub mod plan;
pub mod reasons;
pub mod render;
pub mod secrets;
pub mod status;
pub mod validate;
pub mod watches;
pub mod writer_health;

/// The one field manager every server-side apply uses.
pub const FIELD_MANAGER: &str = "bgpersist-operator";

pub use controller::{Context, run};
pub use error::Error;
