//! `netpol-probe`: the small static program netpol-verify runs inside every namespace it probes.
//!
//! This library will hold the orchestrator↔probe wire types (the `batch` plan and its results),
//! so that both sides compile against one definition of the contract. The probe's commands
//! (`serve`, `connect`, `dns`, `batch`) are not built yet.

/// Version of the orchestrator↔probe batch contract this crate speaks.
pub const BATCH_SCHEMA_VERSION: u32 = 1;
