//! Writers end to end on the rig's real buses and stores.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod online_dynamodb;
mod online_kafka;
mod online_pubsub;
mod robustness;
