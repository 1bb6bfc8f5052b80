//! Bus message formats (generated from proto/bgpersist/bus/v1/bus.proto).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/bgpersist.bus.v1.rs"));
}

pub use prost::Message;
