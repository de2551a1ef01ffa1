//! The lab: a cluster emulated in Linux network namespaces.

pub mod cni;
pub mod topology;
