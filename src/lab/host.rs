//! What the lab does to the machine: network namespaces, links, routes and nftables through
//! iproute2 and nft, and processes started inside namespaces. Every command's failure names
//! the command and what it printed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::LabError;

/// Checks what the lab needs before touching anything: root, and the two programs.
pub fn require_tools() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let missing: Vec<&str> = [("ip", "iproute2"), ("nft", "nftables")]
        .iter()
        .filter(|(p, _)| find_in_path(p).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        return Err(LabError::MissingPackages { packages: missing.join(" ") });
    }
    Ok(())
}

/// `program` in `$PATH`, or in the sbin directories sudo does not always put there.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn run(mut command: Command, input: Option<&str>) -> Result<(), LabError> {
    let shown = format!("{command:?}");
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        command.spawn().map_err(|e| LabError::Command { command: shown.clone(), output: e.to_string() })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| LabError::Command { command: shown.clone(), output: e.to_string() })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(LabError::Command { command: shown, output: text })
}

/// Runs iproute2 commands in one process (`ip -batch -`), in `netns` when given.
pub fn ip_batch(netns: Option<&str>, commands: &[String]) -> Result<(), LabError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    command.args(["-batch", "-"]);
    run(command, Some(&(commands.join("\n") + "\n")))
}

/// Loads an nftables ruleset into `netns`, atomically.
pub fn nft(netns: &str, ruleset: &str) -> Result<(), LabError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, "nft", "-f", "-"]);
    run(command, Some(ruleset))
}

pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")]);
    run(command, None)
}

/// Starts `program ARGS` inside `netns`, detached from our process group (it outlives us; a
/// Ctrl-C aimed at `lab up` does not reach it), its output written to `log` (emptied first:
/// readiness is read from it). Returns its pid.
/// Each process carries `NETPOL_LAB=LAB` in its environment, so a lab's processes can be found
/// even after their namespace is gone.
pub fn spawn_in(
    lab: &str,
    netns: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<u32, LabError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program).args(args);
    spawn_logged(command, lab, log)
}

/// Starts `program ARGS` in this network namespace, detached as [`spawn_in`] detaches; its pid.
pub fn spawn_detached(lab: &str, program: &Path, args: &[String], log: &Path) -> Result<u32, LabError> {
    let mut command = Command::new(program);
    command.args(args);
    spawn_logged(command, lab, log)
}

/// Starts `command` in a process group of its own, tagged with lab `lab`, its output written to
/// `log` (emptied first); its pid.
fn spawn_logged(mut command: Command, lab: &str, log: &Path) -> Result<u32, LabError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(log)
        .map_err(|e| LabError::Io { what: format!("open {}", log.display()), error: e.to_string() })?;
    let err = file
        .try_clone()
        .map_err(|e| LabError::Io { what: "duplicate a log handle".into(), error: e.to_string() })?;
    command.env(LAB_ENV, lab).stdin(Stdio::null()).stdout(file).stderr(err).process_group(0);
    let child = command
        .spawn()
        .map_err(|e| LabError::Command { command: format!("{command:?}"), output: e.to_string() })?;
    Ok(child.id())
}

/// Whether process `pid` has exited and waits to be reaped (a child of ours that died).
pub fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/PID/stat`), if it
/// exists.
pub fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's `)`: field 3 (state) onwards, so field 22 is the 20th.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every network namespace, by name.
pub fn namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Directories under `/etc/netns` (per-namespace files such as resolv.conf), by name.
pub fn netns_config_dirs() -> Vec<String> {
    std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Kills every process inside `netns`, then deletes it and its `/etc/netns` directory (which
/// may outlive the namespace; this removes it either way).
pub fn remove_namespace(netns: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", netns]).stderr(Stdio::null()).status();
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(netns));
}

/// Gives `netns` its own resolv.conf: `ip netns exec` mounts `/etc/netns/NAME/resolv.conf`
/// over `/etc/resolv.conf` for the programs it starts.
pub fn write_resolv_conf(netns: &str, text: &str) -> Result<(), LabError> {
    let dir = Path::new("/etc/netns").join(netns);
    let io = |e: std::io::Error| LabError::Io {
        what: format!("write {}/resolv.conf", dir.display()),
        error: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(dir.join("resolv.conf"), text).map_err(io)
}

/// Whether process `pid` still exists (one we may not signal, without root, exists too).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| {
        matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Ok(()) | Err(nix::errno::Errno::EPERM)
        )
    })
}

/// The environment variable naming the lab a process belongs to.
pub const LAB_ENV: &str = "NETPOL_LAB";

/// Processes of lab `lab`: started for it (by their `NETPOL_LAB`), wherever they are, or
/// in one of its network namespaces `netns` (a container's process has only the environment
/// its pod gives it).
pub fn lab_processes(lab: &str, netns: &[String]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let tag = format!("{LAB_ENV}={lab}");
    let identity = |m: std::fs::Metadata| (m.dev(), m.ino());
    let inodes: std::collections::HashSet<(u64, u64)> = netns
        .iter()
        .filter_map(|name| std::fs::metadata(Path::new("/run/netns").join(name)).ok())
        .map(identity)
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let tagged = std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == tag.as_bytes()));
            tagged
                || std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| inodes.contains(&identity(m)))
        })
        .collect()
}

/// Kills every process of lab `lab` (see [`lab_processes`]).
pub fn kill_lab_processes(lab: &str, netns: &[String]) {
    for pid in lab_processes(lab, netns) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}
