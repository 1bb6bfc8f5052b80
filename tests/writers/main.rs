//! Writers end to end on the rig's real buses and stores.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod online_kafka;
