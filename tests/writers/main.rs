//! Writers end to end on the rig's real buses and stores.

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod kafka_client;
mod kafka_keystore;
mod kafka_oauth;
mod kafka_tls;
mod metrics_exactly_once;
mod metrics_kafka;
mod metrics_pubsub;
mod mirror_kafka;
mod mirror_pubsub;
mod mirror_target;
mod offline_bulk;
mod offline_harness;
mod offline_kafka;
mod offline_objects;
mod offline_streaming;
mod offline_warehouse_fakes;
mod online_dynamodb;
mod online_kafka;
mod online_pubsub;
mod online_tls;
mod pg_store;
mod pg_tls;
mod preflight;
mod pubsub_backlog;
mod robustness;
mod traces;
mod usage_kafka;
mod vector_common;
mod vector_fake_qdrant;
mod vector_pgvector;
mod vector_pubsub;
mod vector_qdrant;
