//! A lab's record on disk, and the names of everything it creates.
//!
//! `/run/netpol-verify/labs/NAME/` holds `state.json` (what the lab is), `records.json` (its
//! DNS names), `logs/` (each process's output) and `lock`. Creating the directory claims the
//! name; every change to a lab holds the lock, rereads the record and writes it back, so two
//! processes driving one lab do not lose each other's changes. Kernel objects are named from
//! the lab's name, so a lab whose record is lost can still be found and removed.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use super::cni::CniMode;
use super::topology::{LabPod, ServiceNat};
use crate::model::{Note, Snapshot};

/// Where labs keep their records (tmpfs: nothing survives a reboot, like the namespaces).
pub const LABS_DIR: &str = "/run/netpol-verify/labs";

pub fn node_netns(name: &str) -> String {
    format!("npl-{name}-node")
}

pub fn metadata_netns(name: &str) -> String {
    format!("npl-{name}-meta")
}

pub fn pod_netns(name: &str, index: usize) -> String {
    format!("npl-{name}-p{index}")
}

/// The lab a network namespace belongs to: `npl-NAME-node`, `npl-NAME-meta` or
/// `npl-NAME-pN` → `NAME`. Nothing else matches, so lab `a` never claims lab `a-b`'s
/// namespaces (`npl-a-b-p0` is lab `a-b`'s pod 0), nor another tool's.
pub fn lab_of_netns(netns: &str) -> Option<&str> {
    let rest = netns.strip_prefix("npl-")?;
    let (name, role) = rest.rsplit_once('-')?;
    let pod = role.strip_prefix('p').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let known = role == "node" || role == "meta" || pod;
    (known && validate_name(name).is_ok()).then_some(name)
}

/// The node end of pod `index`'s link (the pod end is `eth0`).
pub fn pod_interface(index: usize) -> String {
    format!("p{index}")
}

/// The node end of the metadata service's link.
pub const METADATA_INTERFACE: &str = "meta";

/// Fixed MAC addresses, so neighbour entries can be written before links exist: the node end
/// of link `index` and the far end. Locally administered unicast.
pub fn macs(index: usize) -> (String, String) {
    let i = index & 0x00ff_ffff;
    let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    (format!("02:4e:00:{a:02x}:{b:02x}:{c:02x}"), format!("02:4e:01:{a:02x}:{b:02x}:{c:02x}"))
}

/// The link index the metadata namespace uses.
pub const METADATA_INDEX: usize = 0x00ff_ffff;

/// A lab name: lowercase letters, digits and `-`, 1 to 20 characters, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = (1..=20).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid lab name {name:?}: use 1 to 20 lowercase letters, digits and '-', starting with a letter"
        ))
    }
}

/// Where a lab is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `lab up` is building it (or died doing so).
    Creating,
    Up,
}

/// Claims lab `name`: creates its directory, which fails if another lab (or another `lab up`
/// racing this one) has it. `Ok(false)` when taken.
pub fn claim(name: &str) -> std::io::Result<bool> {
    std::fs::create_dir_all(LABS_DIR)?;
    match std::fs::create_dir(lab_dir(name)) {
        Ok(()) => {
            std::fs::create_dir(lab_dir(name).join("logs"))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Holds lab `name`'s lock until dropped (waiting for another holder). Fails when the lab's
/// directory is gone, or was removed (and perhaps made again) while this waited: a removed lab
/// is not brought back, nor another lab's record changed by mistake.
pub fn lock(name: &str) -> std::io::Result<File> {
    let path = lab_dir(name).join("lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    file.lock()?;
    let inode = |m: std::io::Result<std::fs::Metadata>| m.ok().map(|m| (m.dev(), m.ino()));
    if inode(file.metadata()) != inode(std::fs::metadata(&path)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the lab was removed while this change waited for it",
        ));
    }
    Ok(file)
}

/// Lab `name`'s lock, waiting at most `limit`; `None` when another process still holds it
/// then, or there is no lock file.
pub fn lock_within(name: &str, limit: std::time::Duration) -> Option<File> {
    let file = File::open(lab_dir(name).join("lock")).ok()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match file.try_lock() {
            Ok(()) => return Some(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    }
}

/// Whether some process holds lab `name`'s lock now (a lab without a lock file yet has just
/// been claimed, so counts as held).
pub fn lock_held(name: &str) -> bool {
    let Ok(file) = File::open(lab_dir(name).join("lock")) else { return true };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// Everything the lab is, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub status: Status,
    pub cni: CniMode,
    pub enforce_delay_ms: u64,
    /// How many nodes the lab's API shows (they share one network).
    #[serde(default = "one")]
    pub nodes: usize,
    pub created_unix: u64,
    pub creator_pid: u32,
    /// The process the lab lives for: `lab run`'s own, or the lab's API process (`lab up`).
    /// Once it is gone the lab serves no one, and the next `lab up` or `lab run` removes it.
    /// `None` in records written before owners were kept: such labs are never swept.
    #[serde(default)]
    pub owner: Option<Owner>,
    pub probe: PathBuf,
    pub verify: PathBuf,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub service_cidrs: Vec<Ipv4Net>,
    pub dns_ip: Ipv4Addr,
    pub pods: Vec<LabPod>,
    /// The index the next pod gets. Indexes are never reused: a new pod must not inherit a
    /// removed one's namespace name, log or (under a slow CNI) rules.
    pub next_index: usize,
    pub nat: Vec<ServiceNat>,
    pub namespaces: Vec<Namespace>,
    pub pod_objects: Vec<Pod>,
    pub services: Vec<Service>,
    pub policies: Vec<NetworkPolicy>,
    /// Policy objects of kinds the engine does not model (the lab does not enforce them either).
    #[serde(default)]
    pub unmodelled: Vec<crate::model::Unmodelled>,
    /// What `lab up` noticed about the input.
    pub notes: Vec<String>,
    /// The kubeconfig of the API server the lab is attached to (`lab up --api-server`), or
    /// none: the lab serves its own API.
    #[serde(default)]
    pub api_server: Option<PathBuf>,
}

/// A process, told apart from a later one that got its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/PID/stat`, field 22).
    pub started: u64,
}

impl Owner {
    /// Process `pid`, if it runs.
    pub fn of(pid: u32) -> Option<Owner> {
        Some(Owner { pid, started: super::host::started(pid)? })
    }

    /// This process.
    pub fn me() -> Option<Owner> {
        Owner::of(std::process::id())
    }

    /// Whether the process still runs (not a zombie, not another with its pid).
    pub fn alive(&self) -> bool {
        super::host::started(self.pid) == Some(self.started) && !super::host::zombie(self.pid)
    }
}

fn one() -> usize {
    1
}

impl LabState {
    /// The names of the lab's nodes: the lab's own name, then `NAME-2`, `NAME-3`, ...
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes.max(1))
            .map(|i| if i == 1 { self.name.clone() } else { format!("{}-{i}", self.name) })
            .collect()
    }

    pub fn dir(&self) -> PathBuf {
        lab_dir(&self.name)
    }

    /// The cluster as the lab runs it.
    pub fn snapshot(&self) -> (Snapshot, Vec<Note>) {
        let (snapshot, notes) =
            Snapshot::new(self.namespaces.clone(), self.pod_objects.clone(), self.policies.clone());
        (snapshot.with_services(self.services.clone()).with_unmodelled(self.unmodelled.clone()), notes)
    }

    /// Writes the record into the lab's directory, which must exist (see [`claim`]).
    pub fn save(&self) -> std::io::Result<()> {
        let dir = self.dir();
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        // Write then rename: a reader never sees half a record.
        let partial = dir.join("state.json.partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(partial, dir.join("state.json"))
    }

    pub fn load(name: &str) -> Result<LabState, String> {
        let path = lab_dir(name).join("state.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
    }
}

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// Names of the labs with a record.
pub fn recorded_labs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(LABS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_stable_and_short() {
        assert_eq!(pod_netns("demo", 3), "npl-demo-p3");
        assert_eq!(lab_of_netns(&pod_netns("demo", 3)), Some("demo"));
        assert_eq!(lab_of_netns(&node_netns("my-lab")), Some("my-lab"));
        assert_eq!(lab_of_netns(&metadata_netns("a-b")), Some("a-b"));
        assert_eq!(lab_of_netns("npl-a-b-p0"), Some("a-b"), "lab a-b's pod, never lab a's");
        for other in ["other", "npl-a-b", "npl-a-p", "npl-a-p1x", "npl-a-nodes", "npl--p0", "npl-A-p0"] {
            assert_eq!(lab_of_netns(other), None, "{other}");
        }
        assert!(pod_interface(99_999).len() <= 15, "interface names are limited to 15 characters");
        assert_eq!(macs(0x010203), ("02:4e:00:01:02:03".to_string(), "02:4e:01:01:02:03".to_string()));
        assert_ne!(macs(1).0, macs(2).0);
    }

    #[test]
    fn lab_names_are_checked() {
        for good in ["demo", "lab-1", "a"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Demo", "1lab", "a b", "a/b", "a-very-long-lab-name-here"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
