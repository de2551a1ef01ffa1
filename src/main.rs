//! The `netpol-verify` binary: parses the command line, runs the command, maps the outcome to
//! a documented exit status (docs/cli.md).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use netpol_verify::cli::{Cli, Command};
use netpol_verify::commands;
use netpol_verify::error::{Error, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr();
    let result = match &cli.command {
        Command::Plan(args) => commands::plan(args, cli.quiet, &mut out, &mut err),
        Command::Lab(command) => commands::lab(command, cli.quiet, &mut out, &mut err),
    };
    let result = result.and_then(|()| out.flush().map_err(Error::from));
    match result {
        Ok(()) => Exit::Pass.into(),
        // A reader that went away (`| head`) is not a failure worth a message.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Pass.into(),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            e.exit().into()
        }
    }
}
