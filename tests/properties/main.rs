//! Property tests (proptest) over everything that reads outside input: the
//! bus message decoders, parquet objects, store and object URIs, cloud secret
//! payloads, quantities, Kafka arguments, and the resource itself (the seed
//! example mutated field by field, through validation and render). The
//! properties: no panic, and every refusal says what and where.
//! No rig needed.

// A test crate: its helpers fail the test by panicking too.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod decoders;
mod inputs;
mod resource;
