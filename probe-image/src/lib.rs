//! `netpol-probe`: the small static program netpol-verify runs inside every namespace it
//! probes, and the orchestrator↔probe contract.
//!
//! - [`wire`] — the `batch` plan and result lines, and [`text`] — shared parsers (always built;
//!   the orchestrator uses only these).
//! - the rest (feature `runtime`, on by default): `serve`, `connect`, `dns`, `batch`.

pub mod text;
pub mod wire;

#[cfg(feature = "runtime")]
pub mod args;
#[cfg(feature = "runtime")]
pub mod batch;
#[cfg(feature = "runtime")]
pub mod connect;
#[cfg(feature = "runtime")]
pub mod dns;
#[cfg(feature = "runtime")]
pub mod net;
#[cfg(feature = "runtime")]
pub mod serve;

/// Version of the orchestrator↔probe batch contract this crate speaks.
pub const BATCH_SCHEMA_VERSION: u32 = wire::SCHEMA;
