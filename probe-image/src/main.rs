//! The `netpol-probe` binary. Exit status: 0 reached (or served, or the batch ran), 1 not
//! reached, 2 usage or setup errors (documented in docs/probe.md).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use netpol_probe::wire::{Outcome, ProbeResult, Transport};
use netpol_probe::{args, batch, connect, dns, net, serve};

/// The probe netpol-verify runs in every namespace: a server that says who it is, and clients
/// that report exactly what they saw.
#[derive(Debug, Parser)]
#[command(name = "netpol-probe", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Listen on every address on each port and answer with this pod's identity.
    Serve {
        /// TCP ports, e.g. 80,81,8000-8010.
        #[arg(long, value_name = "PORTS", value_parser = ports)]
        tcp: Option<Ports>,
        /// UDP ports.
        #[arg(long, value_name = "PORTS", value_parser = ports)]
        udp: Option<Ports>,
        /// The identity to answer with (default: $POD_NAMESPACE/$POD_NAME, else the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Probe one HOST:PORT over TCP (default) or UDP and print what happened.
    Connect {
        /// HOST:PORT, e.g. 10.0.0.5:80 or [fd00::5]:80.
        target: String,
        #[arg(long, conflicts_with = "udp")]
        tcp: bool,
        #[arg(long)]
        udp: bool,
        /// How long to wait: 500ms, 1s, 2m.
        #[arg(long, default_value = "1s", value_parser = args::parse_duration)]
        timeout: Duration,
        /// Fail (`error`, wrong-peer) unless the server answers with this name.
        #[arg(long, value_name = "NAME")]
        expect_name: Option<String>,
    },
    /// Send one DNS query; any response, NXDOMAIN included, counts as reached.
    Dns {
        /// The name to look up.
        name: String,
        /// The DNS server (default: the first nameserver in /etc/resolv.conf).
        #[arg(long, value_name = "IP:PORT")]
        server: Option<String>,
        /// Query over TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value = "2s", value_parser = args::parse_duration)]
        timeout: Duration,
    },
    /// Run a JSON plan of probes concurrently; one result line each, then a summary.
    Batch {
        /// The plan file, or - for standard input.
        #[arg(long, default_value = "-", value_name = "FILE")]
        plan: String,
        /// How many probes run at once.
        #[arg(long, default_value_t = batch::DEFAULT_CONCURRENCY, value_parser = concurrency)]
        concurrency: usize,
        /// Run the whole plan again every INTERVAL (e.g. 50ms): one round line each.
        #[arg(long, value_name = "INTERVAL", value_parser = args::parse_duration, requires = "repeat_for")]
        every: Option<Duration>,
        /// With --every: stop starting rounds this long after the start (at most 10m).
        #[arg(long = "for", value_name = "DURATION", value_parser = repeat_for, requires = "every")]
        repeat_for: Option<Duration>,
    },
}

/// A port list as one argument (clap would take a bare `Vec` for many arguments).
#[derive(Debug, Clone)]
struct Ports(Vec<u16>);

fn ports(text: &str) -> Result<Ports, String> {
    args::parse_ports(text).map(Ports)
}

fn concurrency(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=65_536).contains(n))
        .ok_or_else(|| format!("invalid concurrency {text:?}: use 1 to 65536"))
}

fn repeat_for(text: &str) -> Result<Duration, String> {
    netpol_probe::text::parse_duration_within(text, netpol_probe::wire::MAX_REPEAT_MS)
}

fn main() -> ExitCode {
    // Rounds of `batch --every` count from here: the pod's first moment, as near as it gets.
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return usage(&format!("cannot start: {e}")),
    };
    runtime.block_on(run(cli.command, started))
}

async fn run(command: Command, started: std::time::Instant) -> ExitCode {
    match command {
        Command::Serve { tcp, udp, name } => {
            let config = serve::Config {
                name: args::identity(name),
                tcp: tcp.map(|p| p.0).unwrap_or_default(),
                udp: udp.map(|p| p.0).unwrap_or_default(),
            };
            if config.tcp.is_empty() && config.udp.is_empty() {
                return usage("nothing to serve: pass --tcp PORTS and/or --udp PORTS");
            }
            let listeners = match serve::bind(&config) {
                Ok(listeners) => listeners,
                Err(message) => return usage(&message),
            };
            match serve::run(config, listeners).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => usage(&format!("serve failed: {e}")),
            }
        }
        Command::Connect { target, udp, timeout, expect_name, .. } => {
            let (host, port) = match net::split_host_port(&target) {
                Ok(parts) => parts,
                Err(message) => return usage(&message),
            };
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            let seen = match net::resolve_target(&host).await {
                Ok(ip) => {
                    let addr = std::net::SocketAddr::new(ip, port);
                    match transport {
                        Transport::Tcp => connect::tcp(addr, timeout, expect_name.as_deref()).await,
                        Transport::Udp => connect::udp(addr, timeout, expect_name.as_deref()).await,
                    }
                }
                // Not a usage error: the name is fine, the lookup failed. Same as in a batch.
                Err(message) => connect::Observation::failed(message),
            };
            report(&ProbeResult {
                id: None,
                target: host,
                port,
                protocol: transport,
                query: None,
                outcome: seen.outcome,
                name: seen.name,
                ms: seen.elapsed.as_millis() as u64,
                message: seen.message,
                attempts: seen.attempts,
                rcode: None,
            })
        }
        Command::Dns { name, server, tcp, timeout } => {
            let server = match server.map(|s| s.parse::<std::net::SocketAddr>()) {
                None => dns::system_server(),
                Some(Ok(addr)) => Ok(addr),
                Some(Err(_)) => {
                    Err("invalid --server: write IP:PORT, e.g. 10.96.0.10:53 or [fd00::a]:53".into())
                }
            };
            let server = match server {
                Ok(server) => server,
                Err(message) => return usage(&message),
            };
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            let seen = dns::query(server, &name, transport, timeout).await;
            report(&ProbeResult {
                id: None,
                target: server.ip().to_string(),
                port: server.port(),
                protocol: transport,
                query: Some(name),
                outcome: seen.observation.outcome,
                name: None,
                ms: seen.observation.elapsed.as_millis() as u64,
                message: seen.observation.message,
                attempts: seen.observation.attempts,
                rcode: seen.reply.map(|r| r.rcode),
            })
        }
        Command::Batch { plan, concurrency, every, repeat_for } => {
            let text = if plan == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&plan)
            };
            let text = match text {
                Ok(text) => text,
                Err(e) => return usage(&format!("cannot read the plan {plan}: {e}")),
            };
            let plan = match batch::parse_plan(&text) {
                Ok(plan) => plan,
                Err(message) => return usage(&message),
            };
            let stdout = std::io::stdout();
            if let (Some(every), Some(total)) = (every, repeat_for) {
                if every.is_zero() {
                    return usage("--every must be longer than 0");
                }
                return match batch::repeat(plan, concurrency, every, total, started, &mut stdout.lock()).await
                {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => usage(&format!("cannot write results: {e}")),
                };
            }
            match batch::run(plan, concurrency, &mut stdout.lock()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => usage(&format!("cannot write results: {e}")),
            }
        }
    }
}

/// Every probe in flight and every client being answered holds a socket; a soft limit of 1,024
/// open files would turn a large batch into spurious errors. Raise it to the hard limit, as Go
/// programs do at start-up. Failing to raise it is not fatal.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Prints the one JSON line and maps the outcome to the exit status.
fn report(result: &ProbeResult) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, result);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    if result.outcome == Outcome::Connected { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn usage(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "netpol-probe: {message}");
    ExitCode::from(2)
}
