//! Reports: pure functions from engine answers to text.

pub mod explain;
pub mod json;
pub mod reason;
pub mod table;
