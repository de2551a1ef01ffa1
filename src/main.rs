//! The `netpol-verify` binary: parses the command line, runs the command, maps the outcome to
//! a documented exit status (docs/cli.md).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use netpol_verify::cli::{Cli, Command, LabCommand};
use netpol_verify::commands;
use netpol_verify::error::{Error, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The lab's container runtime: single-threaded, as entering namespaces needs.
    if let Command::Lab(LabCommand::Container { spec }) = &cli.command {
        let code = netpol_verify::lab::kubelet::shim::run(spec);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr();
    let result = match &cli.command {
        Command::Plan(args) => commands::plan(args, cli.quiet, &mut out, &mut err).map(|()| Exit::Pass),
        Command::Run(args) => with_runtime(|cancel| commands::run(args, cli.quiet, &mut out, cancel)),
        Command::Lab(LabCommand::Run(args)) => {
            with_runtime(|cancel| commands::lab_run(args, cli.quiet, &mut out, &mut err, cancel))
        }
        Command::Lab(command) => commands::lab(command, cli.quiet, &mut out, &mut err).map(|()| Exit::Pass),
        Command::Cleanup { run, older_than, kube } => {
            with_runtime(|_| commands::cleanup(run.as_deref(), *older_than, kube, &mut out))
        }
        Command::Images { image } => commands::images(image.as_deref(), &mut out).map(|()| Exit::Pass),
    };
    let result = result.and_then(|exit| match out.flush() {
        // A reader that went away (`| head`) does not change the outcome.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::from(e)),
        _ => Ok(exit),
    });
    match result {
        Ok(exit) => exit.into(),
        // A reader that went away (`| head`) is not a failure worth a message.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Pass.into(),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            e.exit().into()
        }
    }
}

/// Runs an async command on a runtime of its own, with Ctrl-C and SIGTERM cancelling it (the
/// command then cleans up before it returns).
fn with_runtime<'a, F>(
    command: impl FnOnce(&'a tokio_util::sync::CancellationToken) -> F,
) -> Result<Exit, Error>
where
    F: std::future::Future<Output = Result<Exit, Error>> + 'a,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    // NB: leaked so the command may borrow it for the runtime's whole life; one per process.
    let cancel: &'static tokio_util::sync::CancellationToken =
        Box::leak(Box::new(tokio_util::sync::CancellationToken::new()));
    runtime.block_on(async {
        let signals = cancel.clone();
        tokio::spawn(async move {
            interrupted().await;
            eprintln!("interrupted: cleaning up (interrupt again to abandon the cleanup)");
            signals.cancel();
            interrupted().await;
            std::process::exit(130);
        });
        command(cancel).await
    })
}

/// Ctrl-C or SIGTERM, whichever comes first (Ctrl-C alone if SIGTERM cannot be watched).
async fn interrupted() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            if tokio::signal::ctrl_c().await.is_err() {
                // Neither signal can be watched: never report an interrupt that did not happen.
                std::future::pending::<()>().await;
            }
        }
    }
}
