//! netpol-verify: proves whether a cluster's network enforces the NetworkPolicies its API
//! server stores.
//!
//! ```text
//!  discover ──► snapshot ──► engine ──► planner ──► backend ──► judge ──► reports
//!  (Cluster)    (model)      (engine)   (plan)      (Cluster)   (judge)   (report)
//!              └──────────── pure: no I/O, deterministic ────────────┘
//! ```
//!
//! [`input`] reads objects from files into a [`model::Snapshot`]; the [`engine`] answers what
//! the stored policies say about any connection; [`plan`] lists what `plan` shows. A run
//! ([`run::run`]) discovers a cluster through the [`cluster::Cluster`] trait, deploys probe
//! pods, plans the [`scenario`]s' checks ([`run::plan`]), probes, judges ([`run::judge`]) and
//! hands the result to [`report`]. Behind the trait: the [`lab`], a cluster in network
//! namespaces, and [`kubernetes`], a real cluster through kube-rs.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod detect;
pub mod engine;
pub mod error;
pub mod fixtures;
pub mod input;
pub mod kubernetes;
pub mod lab;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod scenario;
pub mod selector;
pub mod validate;
