//! bgpersist: a Kubernetes operator for background persistence writers, and
//! the writer runtime those Deployments run.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod crd;
