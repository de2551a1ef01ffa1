//! Network namespaces for tests with real packets.
//!
//! Each test builds its own client and server namespaces joined by a veth pair, so tests run in
//! parallel and traffic never leaves them: no namespace gets a route to the host or beyond.
//! Everything is removed on drop, during a panic's unwinding too; namespaces a killed test run
//! left behind are swept by the next run. Needs root (CI runs as root); a test that cannot set
//! up fails, it is never skipped.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod dns;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace a test makes starts with this, then the creating process's pid.
const PREFIX: &str = "npt-";

/// The probe under test.
pub fn probe() -> &'static str {
    env!("CARGO_BIN_EXE_netpol-probe")
}

/// Runs a command; panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let output =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Removes namespaces whose creating test process is gone (a run that was killed).
fn sweep_leftovers() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().unwrap_or_default();
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                // Its servers outlived it: stop them before the namespace goes.
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).status();
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        // And the probe copies (`WorldRunnable`) such runs left in the temp directory.
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().unwrap_or_default();
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Waits for a child's output, killing it and failing the test after `limit`: a hung probe must
/// fail its test, not hang the suite.
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("the child's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("process {pid} did not finish within {limit:?}");
        }
    }
}

/// How long any single probe command may take before the test fails.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace of this test, with the processes started in it.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        sweep_leftovers();
        let name = format!("{PREFIX}{}-{}-{role}", std::process::id(), unique());
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name, children: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Loads an nftables ruleset into this namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), ruleset.as_bytes())
            .expect("write ruleset");
        let output = child.wait_with_output().expect("nft finishes");
        assert!(output.status.success(), "nft: {}\n{ruleset}", String::from_utf8_lossy(&output.stderr));
    }

    /// Sets a sysctl of this namespace (e.g. `net.ipv4.ip_unprivileged_port_start`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let output =
            self.command("sysctl").args(["-qw", &format!("{key}={value}")]).output().expect("sysctl runs");
        assert!(output.status.success(), "sysctl {key}={value}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts `netpol-probe serve ARGS` here and waits for its ready line.
    pub fn serve(&mut self, args: &[&str]) -> serde_json::Value {
        let mut child = self
            .command(probe())
            .arg("serve")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        self.children.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stderr).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("serve announces itself within 10 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve's ready line {line:?}: {e}"))
    }

    /// Runs `netpol-probe ARGS` here and returns its exit status and parsed output lines.
    pub fn probe(&self, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
        let child = self
            .command(probe())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the probe runs");
        let output = wait_output(child, COMMAND_LIMIT);
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        (output.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Runs `netpol-probe batch` here with `plan` on standard input.
    pub fn batch(&self, plan: &serde_json::Value, extra: &[&str]) -> (i32, Vec<serde_json::Value>, Duration) {
        let started = Instant::now();
        let mut child = self
            .command(probe())
            .arg("batch")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("batch starts");
        let text = plan.to_string();
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())
            .expect("plan written");
        drop(child.stdin.take());
        let output = wait_output(child, COMMAND_LIMIT);
        let elapsed = started.elapsed();
        assert!(output.stderr.is_empty(), "batch stderr: {}", String::from_utf8_lossy(&output.stderr));
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        (output.status.code().unwrap_or(-1), lines, elapsed)
    }

    /// Takes care of a process started here some other way: it is killed with the namespace.
    pub fn adopt(&mut self, child: Child) -> &mut Child {
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// Stops the processes started here (SIGTERM, then SIGKILL after 2 s); their exit codes.
    pub fn stop_all(&mut self) -> Vec<Option<i32>> {
        let mut codes = Vec::new();
        for mut child in self.children.drain(..) {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(2);
            let code = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status.code(),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            codes.push(code);
        }
        codes
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A client and a server namespace joined by a veth pair: client 10.200.0.1 and fd00:200::1,
/// server 10.200.0.2 and fd00:200::2. Nothing else is routed.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    client_if: String,
    server_if: String,
    server_mac: String,
}

pub const CLIENT_IP: &str = "10.200.0.1";
pub const SERVER_IP: &str = "10.200.0.2";
pub const SERVER_IP6: &str = "fd00:200::2";
/// An address in no namespace's routing table: connecting there fails locally, sending nothing.
pub const UNROUTED_IP: &str = "10.201.0.9";

impl Pair {
    pub fn new() -> Pair {
        let client = Netns::new("c");
        let server = Netns::new("s");
        let n = unique();
        let (c_if, s_if) = (
            format!("np{:x}c{n:x}", std::process::id() & 0xffff),
            format!("np{:x}s{n:x}", std::process::id() & 0xffff),
        );
        sh(
            "ip",
            &[
                "link",
                "add",
                &c_if,
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                &s_if,
                "netns",
                &server.name,
            ],
        );
        for (ns, dev, v4, v6) in
            [(&client, &c_if, CLIENT_IP, "fd00:200::1"), (&server, &s_if, SERVER_IP, SERVER_IP6)]
        {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // NB: static neighbours, as several CNIs install on pod veths. Right after a link comes
        // up the first IPv6 neighbour solicitation can go unanswered, costing the first SYN a
        // one-second retransmission; tests measure the probe, not neighbour discovery.
        let mac = |ns: &Netns, dev: &str| -> String {
            let json: serde_json::Value =
                serde_json::from_slice(&ns.ip(&["-j", "link", "show", "dev", dev]).stdout)
                    .expect("ip -j output");
            json[0]["address"].as_str().expect("a MAC address").to_string()
        };
        let (client_mac, server_mac) = (mac(&client, &c_if), mac(&server, &s_if));
        for (ns, dev, peer_mac, peers) in [
            (&client, &c_if, &server_mac, [SERVER_IP, SERVER_IP6]),
            (&server, &s_if, &client_mac, [CLIENT_IP, "fd00:200::1"]),
        ] {
            for peer in peers {
                ns.ip(&["neigh", "replace", peer, "lladdr", peer_mac, "dev", dev, "nud", "permanent"]);
            }
        }
        Pair { client, server, client_if: c_if, server_if: s_if, server_mac }
    }

    /// Gives the server one more address on its link (with the client's neighbour entry).
    pub fn add_server_address(&self, ip: &str, prefix: u8) {
        self.server.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", &self.server_if, "nodad"]);
        self.client.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &self.server_mac,
            "dev",
            &self.client_if,
            "nud",
            "permanent",
        ]);
    }
}

/// A copy of the probe that any user may run (the build tree may sit under a private home).
pub struct WorldRunnable {
    dir: std::path::PathBuf,
    pub path: String,
}

impl WorldRunnable {
    pub fn new() -> WorldRunnable {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let path = dir.join("netpol-probe");
        std::fs::copy(probe(), &path).expect("copy the probe");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod probe");
        WorldRunnable { path: path.to_string_lossy().into_owned(), dir }
    }
}

impl Drop for WorldRunnable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ADDRESS:PORT` on the server.
pub fn server(port: u16) -> String {
    format!("{SERVER_IP}:{port}")
}
