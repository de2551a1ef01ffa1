//! netpol-verify: proves whether a cluster's network enforces the NetworkPolicies its API
//! server stores.
//!
//! ```text
//!  discover ──► snapshot ──► engine ──► planner ──► backend ──► judge ──► reports
//!  (Cluster)    (model)      (engine)   (plan)      (Cluster)   (judge)   (report)
//!              └──────────── pure: no I/O, deterministic ────────────┘
//! ```
//!
//! Today: [`input`] reads objects from files into a [`model::Snapshot`], the [`engine`]
//! answers what the stored policies say about any connection, the [`plan`] lists the probes a
//! run would make, and [`report`] prints them. The [`lab`] is a cluster in network namespaces
//! behind the [`cluster::Cluster`] trait. The run, the judge and the Kubernetes backend come next.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod engine;
pub mod error;
pub mod fixtures;
pub mod input;
pub mod lab;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod scenario;
pub mod validate;
