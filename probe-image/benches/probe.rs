//! Probe benchmarks (`cargo bench -p netpol-probe --bench probe`; root, like the tests).
//! Figures and their machine: docs/PERFORMANCE.md.
//!
//! 1. `batch` of 10,000 TCP probes against 100 listeners across a veth: wall time and the
//!    batch process's peak RSS (targets: 2 s, 32 MiB).
//! 2. 1,000 probes to a port that drops everything, 1 s timeout (target: 1.5 s wall).
//! 3. The same 1,000 allowed probes as one `connect` process per probe, against one batch.
//!
//! Every process is started from a thread that entered the client namespace, so neither way
//! pays for `ip netns exec`. Traffic stays in the benchmark's own namespaces.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::dns::in_netns;
use support::{Pair, SERVER_IP};

fn main() {
    let mut pair = Pair::new();
    pair.server.nft(
        "table inet bench {\n chain input {\n  type filter hook input priority 0;\n  tcp dport 7001 drop\n }\n}\n",
    );
    pair.server.serve(&["--tcp", "10000-10099,7001", "--name", "bench/server"]);
    let client = pair.client.name.clone();

    // 1. 10,000 TCP probes, 100 per listener.
    let probes: Vec<Value> = (0..10_000)
        .map(|i| json!({"id": format!("p{i}"), "target": SERVER_IP, "port": 10_000 + i % 100, "timeout_ms": 2000, "expect_name": "bench/server"}))
        .collect();
    let (wall, summary) = batch(&client, &probes, &[]);
    let rss = peak_child_rss_kib();
    println!(
        "batch, 10,000 TCP probes to 100 listeners: {:.3} s wall, {} reached, batch peak RSS {:.1} MiB",
        wall.as_secs_f64(),
        summary["reached"],
        rss as f64 / 1024.0
    );
    assert_eq!(summary["reached"], 10_000, "every probe must connect: {summary}");

    // 2. 1,000 probes into a dropping port, 1 s timeout.
    let dropped: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("d{i}"), "target": SERVER_IP, "port": 7001, "timeout_ms": 1000}))
        .collect();
    for concurrency in ["1000", "256"] {
        let (wall, summary) = batch(&client, &dropped, &["--concurrency", concurrency]);
        println!(
            "batch, 1,000 probes to a dropping port, 1 s timeout, concurrency {concurrency}: {:.3} s wall ({} timeouts)",
            wall.as_secs_f64(),
            summary["timeout"]
        );
        assert_eq!(summary["timeout"], 1000);
    }

    // 3. 1,000 allowed probes: one batch against one process each.
    let allowed: Vec<Value> = probes.iter().take(1000).cloned().collect();
    let (batch_wall, summary) = batch(&client, &allowed, &[]);
    assert_eq!(summary["reached"], 1000);
    let started = Instant::now();
    let reached = in_netns(&client, || {
        (0..1000)
            .filter(|i| {
                let target = format!("{SERVER_IP}:{}", 10_000 + i % 100);
                Command::new(support::probe())
                    .args(["connect", &target, "--expect-name", "bench/server", "--timeout", "2s"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .count()
    });
    let per_process = started.elapsed();
    assert_eq!(reached, 1000);
    println!(
        "1,000 allowed probes: one batch {:.3} s, one connect process per probe {:.3} s: {:.0}x",
        batch_wall.as_secs_f64(),
        per_process.as_secs_f64(),
        per_process.as_secs_f64() / batch_wall.as_secs_f64()
    );
}

/// Runs `batch` from inside `namespace`; wall time from spawn to exit, and the summary.
fn batch(namespace: &str, probes: &[Value], extra: &[&str]) -> (Duration, Value) {
    let plan = json!({"schema": 1, "probes": probes}).to_string();
    let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
    in_netns(namespace, move || {
        let started = Instant::now();
        let mut child = Command::new(support::probe())
            .arg("batch")
            .args(&extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("batch starts");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, plan.as_bytes()));
        let output = child.wait_with_output().expect("batch ends");
        let wall = started.elapsed();
        writer.join().expect("writer").expect("plan written");
        let text = String::from_utf8_lossy(&output.stdout);
        let last = text.lines().last().expect("a summary line");
        let summary: Value = serde_json::from_str(last).expect("summary JSON");
        (wall, summary["summary"].clone())
    })
}

/// The largest peak RSS of the children waited for so far (the batch processes; the setup
/// commands before them are far smaller).
fn peak_child_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|usage| usage.max_rss())
        .unwrap_or(-1)
}
