//! The errors that stop a command, and the exit codes every command shares.

use std::process::ExitCode;

use crate::engine::EngineError;
use crate::input::InputError;

/// Exit statuses, documented in docs/cli.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything passed (or is informational).
    Pass = 0,
    /// A `not-enforced`, `over-blocked` or `intent-gap` finding.
    Findings = 1,
    /// Could not run: bad input, bad usage, no access.
    CouldNotRun = 2,
    /// Only `inconclusive` checks besides passes.
    Inconclusive = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Why a command could not do its job. Every variant means exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file is unreadable or invalid.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A stored policy fails validation.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A lab could not be built, found or removed.
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    /// A scenario file is unreadable or invalid.
    #[error(transparent)]
    Scenario(Box<crate::scenario::ScenarioError>),
    /// A run could not finish.
    #[error(transparent)]
    Run(Box<crate::run::RunError>),
    /// The command line names something that does not exist or cannot work.
    #[error("{0}")]
    Usage(String),
    /// Writing the result failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<crate::scenario::ScenarioError> for Error {
    fn from(error: crate::scenario::ScenarioError) -> Self {
        Error::Scenario(Box::new(error))
    }
}

impl From<crate::run::RunError> for Error {
    fn from(error: crate::run::RunError) -> Self {
        Error::Run(Box::new(error))
    }
}

impl Error {
    pub fn exit(&self) -> Exit {
        Exit::CouldNotRun
    }
}
