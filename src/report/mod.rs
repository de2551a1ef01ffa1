//! Reports: pure functions from engine answers and judged runs to text.

pub mod explain;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod reason;
pub mod run_json;
pub mod run_text;
pub mod table;

#[cfg(test)]
mod run_tests;
