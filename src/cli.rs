//! The command line (clap derive). Parsing only; [`crate::commands`] does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Proves whether a Kubernetes cluster's network enforces the NetworkPolicies its API server stores.
#[derive(Debug, Parser)]
#[command(name = "netpol-verify", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Print only results and errors, no notes.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Predict what every pod-to-pod connection should do, from stored objects (no cluster needed).
    ///
    /// Reads Namespaces, Pods and NetworkPolicies, plans one probe for every ordered pair of
    /// distinct pods on every port the destination declares, and prints what the stored
    /// policies say about each.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Objects as YAML or JSON, e.g. `kubectl get ns,pods,netpol -A -o yaml` (repeatable; `-` reads
    /// standard input; a directory reads its .yaml, .yml and .json files).
    #[arg(short = 'f', long = "from-file", value_name = "FILE", required = true)]
    pub from_file: Vec<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Explain one connection in plain words, e.g. `--explain x/a y/b 80/TCP`. PORT is a number
    /// with an optional /TCP, /UDP or /SCTP (TCP by default), or a port name the destination declares.
    #[arg(long, num_args = 3, value_names = ["FROM", "TO", "PORT"])]
    pub explain: Option<Vec<String>>,
}

/// How `plan` prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Truth tables, one per port and protocol (rows = from, columns = to).
    Table,
    /// One JSON document with every probe (schema: docs/plan-json.md).
    Json,
}
