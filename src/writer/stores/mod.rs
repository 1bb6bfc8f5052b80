//! The stores writers write to, one folder per family; each family has one
//! trait its stores implement and one `Store` enum picked from the URI
//! scheme (`uri.rs`). Writer types (`writer::types`) plug a family into the
//! runtime.

pub mod objects;
pub mod offline;
pub mod online;
pub mod postgres;
pub mod uri;
pub mod vector;
