//! `netpol-verify run`: discover, plan, deploy, probe, judge, report, clean up.

pub mod check;
pub mod judge;
pub mod plan;
