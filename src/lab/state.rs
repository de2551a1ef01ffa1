//! A lab's record on disk, and the names of everything it creates.
//!
//! `/run/netpol-verify/labs/NAME/` holds `state.json` (what the lab is), `records.json` (its
//! DNS names) and `logs/` (each process's output). Kernel objects are named from the lab's
//! name, so a lab whose record is lost can still be found and removed.

use std::net::Ipv4Addr;
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

/// Every network namespace of lab `name` starts with this.
pub fn netns_prefix(name: &str) -> String {
    format!("npl-{name}-")
}

pub fn node_netns(name: &str) -> String {
    format!("npl-{name}-node")
}

pub fn metadata_netns(name: &str) -> String {
    format!("npl-{name}-meta")
}

pub fn pod_netns(name: &str, index: usize) -> String {
    format!("npl-{name}-p{index}")
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

/// Everything the lab is, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub status: Status,
    pub cni: CniMode,
    pub enforce_delay_ms: u64,
    pub created_unix: u64,
    pub creator_pid: u32,
    pub probe: PathBuf,
    pub verify: PathBuf,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub service_cidrs: Vec<Ipv4Net>,
    pub dns_ip: Ipv4Addr,
    pub pods: Vec<LabPod>,
    pub nat: Vec<ServiceNat>,
    pub namespaces: Vec<Namespace>,
    pub pod_objects: Vec<Pod>,
    pub services: Vec<Service>,
    pub policies: Vec<NetworkPolicy>,
    /// What `lab up` noticed about the input.
    pub notes: Vec<String>,
}

impl LabState {
    pub fn dir(&self) -> PathBuf {
        lab_dir(&self.name)
    }

    /// The cluster as the lab runs it.
    pub fn snapshot(&self) -> (Snapshot, Vec<Note>) {
        let (snapshot, notes) =
            Snapshot::new(self.namespaces.clone(), self.pod_objects.clone(), self.policies.clone());
        (snapshot.with_services(self.services.clone()), notes)
    }

    pub fn save(&self) -> std::io::Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(dir.join("logs"))?;
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
