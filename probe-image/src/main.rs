//! The `netpol-probe` binary. Only `--version` and `--help` exist so far; every other
//! invocation is a usage error (exit 2), never a pretend success.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!(
                "netpol-probe {} (batch schema {})",
                env!("CARGO_PKG_VERSION"),
                netpol_probe::BATCH_SCHEMA_VERSION
            );
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!(
                "netpol-probe: no commands are implemented yet (serve, connect, dns and batch are planned)"
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("netpol-probe: no commands are implemented yet; try --version");
            ExitCode::from(2)
        }
    }
}
