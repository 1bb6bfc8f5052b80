//! Starting writer processes and talking to the bus and stores around them,
//! one module per part; everything is re-exported here.

mod dataset;
mod kafka;
mod owned_kafka;
mod owned_postgres;
mod process;
mod pubsub;
mod redis_store;
mod wait;

pub use dataset::*;
pub use kafka::*;
pub use owned_kafka::*;
pub use owned_postgres::*;
pub use process::*;
pub use pubsub::*;
pub use redis_store::*;
pub use wait::*;
