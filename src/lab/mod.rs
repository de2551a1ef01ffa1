//! The lab: a cluster emulated in Linux network namespaces, whose CNI we control.
//!
//! ```text
//!   pod netns (eth0: 10.244.1.1/32) ──veth── p0 ┐
//!   pod netns (eth0: 10.244.1.2/32) ──veth── p1 ├─ node netns: routes each pod /32 to its link,
//!   ...                                         │  nftables: policies (forward), Services (DNAT)
//!   metadata netns (169.254.169.254) ──veth─ meta┘
//! ```
//!
//! Every pod routes the pod ranges, the Service ranges and the metadata address through
//! 169.254.1.1, the node end of its link (as Calico does); nothing routes anywhere else, and
//! the node has no link to the host. Policies are enforced on the node side of each pod's
//! link, so a denied packet vanishes as on a real CNI. Pods run `netpol-probe serve` with their
//! own identity; kube-dns pods run the lab's DNS server; the metadata namespace answers on
//! 169.254.169.254:80.

pub mod api;
pub mod attach;
pub mod cni;
pub mod daemon;
pub mod dns;
pub mod enforce;
pub mod host;
pub mod kubelet;
pub mod state;
pub mod topology;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::engine::Engine;
use crate::model::{Note, ObjectKey, Snapshot, key_of};
use cni::{CniMode, Link};
use state::{LabState, Status};
use topology::{GATEWAY_IP, LabPod, METADATA_IP, Topology};

/// The annotation the lab's API puts on the pods of its input: the lab emulates them (serves
/// their ports under their names), its kubelet does not run their containers.
pub const EMULATED: &str = "lab.netpol-verify.io/emulated";

/// How long the lab's API may take to start.
const API_LIMIT: Duration = Duration::from_secs(30);

/// How long `lab up` waits for a lab attached to an API server to become its node: a little
/// longer than the daemon's own bound, so a slow attach ends with the daemon's words.
const ATTACH_LIMIT: Duration = attach::ATTACH_LIMIT.saturating_add(Duration::from_secs(15));

/// How long processes get to say they are listening.
const READY_LIMIT: Duration = Duration::from_secs(15);

/// Why a lab operation failed. All mean exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces need root.
    #[error(
        "the lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces: run it with sudo"
    )]
    NotRoot,
    /// iproute2 or nftables is missing.
    #[error("the lab needs these packages: {packages} (e.g. apt-get install {packages})")]
    MissingPackages { packages: String },
    /// The name is taken.
    #[error(
        "a lab named {name} already exists: pick another --name, or remove it with `netpol-verify lab down {name}`"
    )]
    Exists { name: String },
    /// No such lab.
    #[error("no lab named {name} (labs: {known}); `netpol-verify lab list` shows them")]
    NotFound { name: String, known: String },
    /// The name is not usable.
    #[error("{0}")]
    Name(String),
    /// The objects cannot be laid out as a lab.
    #[error("{0}")]
    Topology(#[from] topology::TopologyError),
    /// The objects' policies are invalid.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A program the lab needs was not found.
    #[error("cannot find {what}: {hint}")]
    Binary { what: String, hint: String },
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    /// A file operation failed.
    #[error("cannot {what}: {error}")]
    Io { what: String, error: String },
    /// A lab process did not come up.
    #[error("{what} did not start within {limit:?}: {log}")]
    NotReady { what: String, limit: Duration, log: String },
    /// The lab's record is unreadable.
    #[error("{0}")]
    State(String),
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// `None`: a generated name.
    pub name: Option<String>,
    pub cni: CniMode,
    pub enforce_delay: Duration,
    /// How many nodes the lab's API shows (1 to 10). They share one network: which node a
    /// pod runs on changes no packet's path.
    pub nodes: usize,
    /// The `netpol-probe` binary every pod runs.
    pub probe: PathBuf,
    /// The `netpol-verify` binary (its hidden `lab serve-dns` is the lab's DNS server).
    pub verify: PathBuf,
    /// Attach to the API server of this kubeconfig instead of serving an API ([`attach`]).
    pub api_server: Option<PathBuf>,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub state: LabState,
    /// Set while [`Lab::locked`] holds the lab's lock: changes made inside need not take it.
    held: bool,
}

impl Clone for Lab {
    /// A copy does not hold the original's lock.
    fn clone(&self) -> Lab {
        Lab { state: self.state.clone(), held: false }
    }
}

/// A lab as `lab list` shows it.
#[derive(Debug, Clone)]
pub struct LabSummary {
    pub name: String,
    /// `up`, `creating`, `creating (abandoned)` or `leftover` (namespaces without a record).
    pub status: String,
    pub cni: Option<CniMode>,
    pub pods: usize,
    pub age: Option<Duration>,
}

/// Finds the two binaries next to `exe` (how `cargo build` and an install lay them out), or
/// where `NETPOL_PROBE` points.
pub fn binaries_next_to(exe: PathBuf) -> Result<(PathBuf, PathBuf), LabError> {
    let probe = match std::env::var_os("NETPOL_PROBE") {
        Some(path) => PathBuf::from(path),
        None => exe.with_file_name("netpol-probe"),
    };
    if !probe.is_file() {
        return Err(LabError::Binary {
            what: format!("netpol-probe (looked at {})", probe.display()),
            hint: "build it with `cargo build -p netpol-probe`, or point NETPOL_PROBE at it".into(),
        });
    }
    Ok((probe, exe))
}

impl Lab {
    /// Builds a lab from `snapshot`. On any failure, everything created so far is removed.
    pub fn up(spec: &LabSpec, snapshot: &Snapshot) -> Result<(Lab, Vec<Note>), LabError> {
        host::require_tools()?;
        let name = match &spec.name {
            Some(name) => {
                state::validate_name(name).map_err(LabError::Name)?;
                name.clone()
            }
            None => generated_name(),
        };
        let topology = Topology::plan(snapshot)?;
        let mut notes = topology.notes.clone();
        let lab = Lab {
            held: false,
            state: LabState {
                name: name.clone(),
                status: Status::Creating,
                cni: spec.cni,
                enforce_delay_ms: spec.enforce_delay.as_millis() as u64,
                nodes: spec.nodes.clamp(1, 10),
                created_unix: now_unix(),
                creator_pid: std::process::id(),
                owner: state::Owner::me(),
                probe: spec.probe.clone(),
                verify: spec.verify.clone(),
                pod_cidrs: topology.pod_cidrs.clone(),
                service_cidrs: topology.service_cidrs.clone(),
                dns_ip: topology.dns_ip,
                pods: topology.pods.clone(),
                next_index: topology.pods.len(),
                nat: topology.nat.clone(),
                namespaces: topology.namespaces.clone(),
                pod_objects: topology.pod_objects.clone(),
                services: topology.services.clone(),
                policies: snapshot.policies().to_vec(),
                unmodelled: snapshot.unmodelled().to_vec(),
                notes: notes.iter().map(|n| n.0.clone()).collect(),
                api_server: spec.api_server.clone(),
            },
        };
        // The policies must compile before anything is built.
        let (lab_snapshot, snapshot_notes) = lab.state.snapshot();
        notes.extend(snapshot_notes);
        Engine::new(&lab_snapshot)?;

        // Claim the name (atomically: of two racing `lab up`s, one gets it), and from here on
        // remove everything on any failure.
        let taken = |name: &str| host::namespaces().iter().any(|n| state::lab_of_netns(n) == Some(name));
        if taken(&name) {
            return Err(LabError::Exists { name });
        }
        match state::claim(&name) {
            Ok(true) => {}
            Ok(false) => return Err(LabError::Exists { name }),
            Err(e) => {
                return Err(LabError::Io {
                    what: format!("create the record of lab {name}"),
                    error: e.to_string(),
                });
            }
        }
        let built = lab.lock().and_then(|_lock| {
            lab.save()?;
            notes.extend(lab.build(&topology)?);
            let mut lab = lab;
            lab.state.status = Status::Up;
            lab.save()?;
            Ok(lab)
        });
        match built {
            Ok(lab) => Ok((lab, notes)),
            Err(e) => {
                Lab::down(&name).ok();
                Err(e)
            }
        }
    }

    /// Starts the lab's API, kubelet and CNI (`netpol-verify lab serve`, detached like the
    /// lab's other processes) and waits until it serves; the kubeconfig it wrote (attached to
    /// an API server: that server's kubeconfig, once the lab is its node). `images`: images
    /// besides the project's that the kubelet runs as the probe (`--image`).
    pub fn start_api(&self, images: &[String]) -> Result<PathBuf, LabError> {
        let name = &self.state.name;
        let (ready, kubeconfig, limit, what) = match &self.state.api_server {
            Some(kubeconfig) => (
                attach::ready_path(name),
                kubeconfig.clone(),
                ATTACH_LIMIT,
                format!("lab {name}, as a node of the API server of {},", kubeconfig.display()),
            ),
            None => (
                daemon::kubeconfig_path(name),
                daemon::kubeconfig_path(name),
                API_LIMIT,
                format!("the API of lab {name}"),
            ),
        };
        let log = self.state.dir().join("logs").join("api.log");
        let mut args = vec!["lab".to_string(), "serve".to_string(), name.clone()];
        for image in images {
            args.extend(["--image".to_string(), image.clone()]);
        }
        let pid = host::spawn_detached(name, &self.state.verify, &args, &log)?;
        let _ = std::fs::write(daemon::pid_path(name), pid.to_string());
        let deadline = Instant::now() + limit;
        while !ready.exists() {
            let tail = || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.trim().is_empty() { "(no output)".to_string() } else { text.trim().to_string() }
            };
            if !host::alive(pid) || host::zombie(pid) || Instant::now() > deadline {
                return Err(LabError::NotReady { what, limit, log: tail() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(kubeconfig)
    }

    /// Holds the lab's lock until the guard drops. Fails when the lab has been removed.
    fn lock(&self) -> Result<std::fs::File, LabError> {
        state::lock(&self.state.name).map_err(|e| {
            LabError::State(format!(
                "cannot lock lab {}: {e} (was it removed? `netpol-verify lab list` shows the labs)",
                self.state.name
            ))
        })
    }

    /// [`Lab::lock`], then the record as it is on disk now: another process may have changed
    /// it. `None` inside [`Lab::locked`], which holds the lock already.
    fn lock_fresh(&mut self) -> Result<Option<std::fs::File>, LabError> {
        if self.held {
            return Ok(None);
        }
        let lock = self.lock()?;
        self.state = LabState::load(&self.state.name).map_err(LabError::State)?;
        Ok(Some(lock))
    }

    /// Runs `work` with the lab's lock held and its record fresh from disk: several changes
    /// (and enforcing their result) as one step no other process interleaves with.
    pub fn locked<T, E: From<LabError>>(
        &mut self,
        work: impl FnOnce(&mut Lab) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = self.lock_fresh()?;
        let outer = std::mem::replace(&mut self.held, true);
        let result = work(self);
        self.held = outer;
        result
    }

    pub(crate) fn save(&self) -> Result<(), LabError> {
        self.state.save().map_err(|e| LabError::Io {
            what: format!("write the record of lab {}", self.state.name),
            error: e.to_string(),
        })
    }

    /// Builds what the record describes; what it noticed on the way.
    fn build(&self, topology: &Topology) -> Result<Vec<Note>, LabError> {
        let mut notes = Vec::new();
        let name = &self.state.name;
        let node = state::node_netns(name);
        let meta = state::metadata_netns(name);

        // Namespaces and links, created straight into their namespaces.
        let mut root = vec![format!("netns add {node}"), format!("netns add {meta}")];
        for pod in &self.state.pods {
            root.extend(self.root_commands(pod));
        }
        root.push(veth(&node, state::METADATA_INTERFACE, &meta, state::METADATA_INDEX));
        host::ip_batch(None, &root)?;

        // The node: an address to send ICMP errors from; the Service ranges as its own, so what
        // kube-proxy does not translate (a port without endpoints, an unused address) is
        // answered by the node, not routed on; the pod ranges unreachable, so an address no pod
        // has is answered "host unreachable" as a CNI's node does; then a route and a neighbour
        // entry for every pod and for the metadata service.
        let mut node_commands =
            vec!["link set lo up".to_string(), format!("addr add {GATEWAY_IP}/32 dev lo")];
        for net in &self.state.service_cidrs {
            node_commands.push(format!("route add local {net} dev lo"));
        }
        for net in &self.state.pod_cidrs {
            node_commands.push(format!("route add unreachable {net}"));
        }
        for pod in &self.state.pods {
            node_commands.extend(node_commands_for(pod));
        }
        let (_, meta_mac) = state::macs(state::METADATA_INDEX);
        node_commands.push(format!("link set {} up", state::METADATA_INTERFACE));
        node_commands.push(format!("route add {METADATA_IP}/32 dev {}", state::METADATA_INTERFACE));
        node_commands.push(format!(
            "neigh replace {METADATA_IP} lladdr {meta_mac} dev {} nud permanent",
            state::METADATA_INTERFACE
        ));
        host::ip_batch(Some(&node), &node_commands)?;
        host::sysctl(&node, "net.ipv4.ip_forward", "1")?;
        // NB: the kernel rate-limits the ICMP errors it sends (a small burst per destination,
        // then one a second). The `reject` mode answers every denied UDP datagram with one;
        // rate-limited, many would pass for silence.
        host::sysctl(&node, "net.ipv4.icmp_ratelimit", "0")?;
        // NB: older kernels keep this one host-wide: not settable inside a namespace.
        if host::sysctl(&node, "net.ipv4.icmp_msgs_per_sec", "1000000").is_err() {
            notes.push(Note(
                "lab: this kernel does not let a namespace lift the host-wide ICMP limit \
                 (net.ipv4.icmp_msgs_per_sec): with --cni reject, some denied UDP probes may time out \
                 instead of being refused"
                    .into(),
            ));
        }

        for pod in &self.state.pods {
            self.plumb_pod(pod)?;
        }
        let (meta_node_mac, _) = state::macs(state::METADATA_INDEX);
        let mut commands = endpoint_commands(&format!("{METADATA_IP}/32"), &meta_node_mac);
        for net in &self.state.pod_cidrs {
            commands.push(format!("route add {net} via {GATEWAY_IP} dev eth0 onlink"));
        }
        host::ip_batch(Some(&meta), &commands)?;

        host::nft(&node, &cni::service_ruleset(&self.state.nat))?;
        self.apply_policies(&self.state.policies)?;

        // Processes, then wait until every one listens.
        let dir = self.state.dir();
        let records = dir.join("records.json");
        let text = serde_json::to_vec_pretty(&topology.records)
            .map_err(|e| LabError::Io { what: "encode DNS records".into(), error: e.to_string() })?;
        std::fs::write(&records, text).map_err(|e| LabError::Io {
            what: format!("write {}", records.display()),
            error: e.to_string(),
        })?;
        let mut started = Vec::new();
        for pod in &self.state.pods {
            started.extend(self.start_serving(pod)?);
            if pod.dns {
                let netns = state::pod_netns(name, pod.index);
                let log = dir.join("logs").join(format!("{netns}-dns.log"));
                let list =
                    |ports: &[u16]| ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                let mut args =
                    vec!["lab".into(), "serve-dns".into(), "--records".into(), records.display().to_string()];
                if !pod.dns_tcp.is_empty() {
                    args.extend(["--tcp".into(), list(&pod.dns_tcp)]);
                }
                if !pod.dns_udp.is_empty() {
                    args.extend(["--udp".into(), list(&pod.dns_udp)]);
                }
                host::spawn_in(name, &netns, &self.state.verify, &args, &log)?;
                started.push((format!("the DNS server of {}", pod.key), log));
            }
        }
        let log = dir.join("logs").join(format!("{meta}.log"));
        let args = crate::manifest::serve_args("metadata", &[80], &[]);
        host::spawn_in(name, &meta, &self.state.probe, &args, &log)?;
        started.push(("the metadata service".into(), log));
        wait_ready(&started)?;
        Ok(notes)
    }

    /// Root-namespace commands for a pod: its namespace and its link.
    fn root_commands(&self, pod: &LabPod) -> Vec<String> {
        let name = &self.state.name;
        let netns = state::pod_netns(name, pod.index);
        vec![
            format!("netns add {netns}"),
            veth(&state::node_netns(name), &state::pod_interface(pod.index), &netns, pod.index),
        ]
    }

    /// Addresses and routes inside a pod's namespace, and its resolv.conf.
    fn plumb_pod(&self, pod: &LabPod) -> Result<(), LabError> {
        let netns = state::pod_netns(&self.state.name, pod.index);
        let (node_mac, _) = state::macs(pod.index);
        let mut commands = endpoint_commands(&format!("{}/32", pod.ip), &node_mac);
        let metadata = format!("{METADATA_IP}/32");
        let nets = self.state.pod_cidrs.iter().chain(&self.state.service_cidrs).map(ToString::to_string);
        for net in nets.chain([metadata]) {
            commands.push(format!("route add {net} via {GATEWAY_IP} dev eth0 onlink"));
        }
        host::ip_batch(Some(&netns), &commands)?;
        host::write_resolv_conf(&netns, &resolv_conf(&pod.key.namespace, self.state.dns_ip))
    }

    /// Starts `netpol-probe serve` for a pod with ports; what to wait for, and its log.
    fn start_serving(&self, pod: &LabPod) -> Result<Option<(String, PathBuf)>, LabError> {
        let Some(args) = serve_args(pod) else { return Ok(None) };
        let netns = state::pod_netns(&self.state.name, pod.index);
        let log = self.serve_log(pod);
        host::spawn_in(&self.state.name, &netns, &self.state.probe, &args, &log)?;
        Ok(Some((format!("pod {}", pod.key), log)))
    }

    pub(crate) fn serve_log(&self, pod: &LabPod) -> PathBuf {
        self.state.dir().join("logs").join(format!("{}.log", state::pod_netns(&self.state.name, pod.index)))
    }

    /// Whether pod `key` runs: its namespace exists and, if it serves ports, it listens.
    pub fn pod_ready(&self, key: &ObjectKey) -> bool {
        let Some(pod) = self.state.pods.iter().find(|p| p.key == *key) else { return false };
        let netns_ok =
            std::path::Path::new("/run/netns").join(state::pod_netns(&self.state.name, pod.index)).exists();
        let listening = serve_args(pod).is_none()
            || std::fs::read_to_string(self.serve_log(pod))
                .unwrap_or_default()
                .contains("\"event\":\"ready\"");
        netns_ok && listening
    }

    /// Adds a pod the lab emulates to the running lab: its sandbox, and a server on its
    /// ports. The policies are not re-applied here (the caller decides when: a slow CNI waits).
    pub fn add_pod(&mut self, object: Pod) -> Result<LabPod, LabError> {
        let pod = self.add_sandbox_served(object, true)?;
        self.start_serving(&pod)?;
        Ok(pod)
    }

    /// Adds a pod's sandbox to the running lab: its network namespace, address and link
    /// (what the kubelet's containers then run in). The policies are not re-applied here.
    pub fn add_sandbox(&mut self, object: Pod) -> Result<LabPod, LabError> {
        self.add_sandbox_served(object, false)
    }

    fn add_sandbox_served(&mut self, object: Pod, served: bool) -> Result<LabPod, LabError> {
        let _lock = self.lock_fresh()?;
        let key = key_of(&object.metadata);
        if self.state.pods.iter().any(|p| p.key == key) {
            return Err(LabError::State(format!("lab {} already has a pod {key}", self.state.name)));
        }
        let used: std::collections::BTreeSet<std::net::Ipv4Addr> =
            self.state.pods.iter().map(|p| p.ip).collect();
        let ip = topology::allocation_range()
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| LabError::State(format!("no free address for pod {key}")))?;
        let mut object = object;
        topology::set_running(&mut object, ip);
        let (tcp, udp, _) =
            if served { topology::served_ports(&object, &[], &[]) } else { (Vec::new(), Vec::new(), false) };
        let index = self.state.next_index;
        self.state.next_index += 1;
        let pod = LabPod { key, index, ip, tcp, udp, dns: false, dns_tcp: Vec::new(), dns_udp: Vec::new() };
        // Record first: a failure half-way leaves a pod `remove_pod` (or `down`) can find.
        self.state.pods.push(pod.clone());
        self.state.pod_objects.push(object);
        self.save()?;
        host::ip_batch(None, &self.root_commands(&pod))?;
        host::ip_batch(Some(&state::node_netns(&self.state.name)), &node_commands_for(&pod))?;
        self.plumb_pod(&pod)?;
        Ok(pod)
    }

    /// Removes a pod: its processes, namespace and link. `false` when there was no such pod.
    pub fn remove_pod(&mut self, key: &ObjectKey) -> Result<bool, LabError> {
        let _lock = self.lock_fresh()?;
        self.remove_pod_locked(key)
    }

    fn remove_pod_locked(&mut self, key: &ObjectKey) -> Result<bool, LabError> {
        let Some(position) = self.state.pods.iter().position(|p| p.key == *key) else { return Ok(false) };
        let pod = self.state.pods.remove(position);
        host::remove_namespace(&state::pod_netns(&self.state.name, pod.index));
        // NB: a namespace outlives `ip netns del` until its killed processes have exited, and
        // with it the link and the node's route to the pod's address, which a new pod may get
        // at once. Deleting the node end removes both ends and the route now.
        let node = state::node_netns(&self.state.name);
        let _ = host::ip_batch(Some(&node), &[format!("link del {}", state::pod_interface(pod.index))]);
        self.state.pod_objects.retain(|p| key_of(&p.metadata) != *key);
        self.save()?;
        Ok(true)
    }

    /// Adds a Namespace object (the lab's namespaces are only names and labels).
    pub fn add_namespace(&mut self, namespace: Namespace) -> Result<(), LabError> {
        let _lock = self.lock_fresh()?;
        let name = namespace.metadata.name.clone().unwrap_or_default();
        if self.state.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(&name)) {
            return Err(LabError::State(format!("lab {} already has a namespace {name}", self.state.name)));
        }
        self.state.namespaces.push(namespace);
        self.save()
    }

    /// Removes a namespace with its pods and policies; `false` when there was none.
    pub fn remove_namespace(&mut self, name: &str) -> Result<bool, LabError> {
        let _lock = self.lock_fresh()?;
        let Some(position) =
            self.state.namespaces.iter().position(|n| n.metadata.name.as_deref() == Some(name))
        else {
            return Ok(false);
        };
        self.state.namespaces.remove(position);
        let pods: Vec<ObjectKey> =
            self.state.pods.iter().filter(|p| p.key.namespace == name).map(|p| p.key.clone()).collect();
        for pod in pods {
            self.remove_pod_locked(&pod)?;
        }
        self.state.policies.retain(|p| p.metadata.namespace.as_deref() != Some(name));
        self.save()?;
        Ok(true)
    }

    /// Opens a running lab by name.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        state::validate_name(name).map_err(LabError::Name)?;
        match LabState::load(name) {
            Ok(state) => Ok(Lab { state, held: false }),
            Err(_) if !state::lab_dir(name).exists() => {
                Err(LabError::NotFound { name: name.into(), known: state::recorded_labs().join(", ") })
            }
            Err(e) => Err(LabError::State(e)),
        }
    }

    /// Removes lab `name`: its processes, namespaces and record. Works from the namespaces'
    /// names alone, so a lab whose creator was killed is removed too.
    pub fn down(name: &str) -> Result<usize, LabError> {
        Lab::down_holding(name, None)
    }

    /// [`Lab::down`], with the lab's lock already held (`None`: taken here, for at most 10 s).
    fn down_holding(name: &str, held: Option<std::fs::File>) -> Result<usize, LabError> {
        state::validate_name(name).map_err(LabError::Name)?;
        host::require_tools()?;
        let of_lab = |names: Vec<String>| -> Vec<String> {
            names.into_iter().filter(|n| state::lab_of_netns(n) == Some(name)).collect()
        };
        let recorded = state::lab_dir(name).exists();
        let attached = LabState::load(name).ok().and_then(|s| s.api_server);
        // A change in progress finishes first (its namespaces would appear after our sweep);
        // bounded: a hung holder does not keep a lab from going.
        let _lock = held.or_else(|| state::lock_within(name, Duration::from_secs(10)));
        let mut namespaces = of_lab(host::namespaces());
        let configs = of_lab(host::netns_config_dirs());
        if namespaces.is_empty() && configs.is_empty() && !recorded {
            return Err(LabError::NotFound { name: name.into(), known: state::recorded_labs().join(", ") });
        }
        // NB: a killed `lab up` leaves its `ip -batch` running, still adding namespaces (and
        // their processes) after a first look. Remove until the lab's namespaces stay gone.
        let mut removed = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            host::kill_lab_processes(name, &namespaces);
            for netns in &namespaces {
                host::remove_namespace(netns);
            }
            removed += namespaces.len();
            std::thread::sleep(Duration::from_millis(if namespaces.is_empty() { 0 } else { 100 }));
            namespaces = of_lab(host::namespaces());
            if namespaces.is_empty() || Instant::now() > deadline {
                break;
            }
        }
        // Processes whose namespace went first, resolv.conf directories whose namespace is
        // already gone, then the record.
        host::kill_lab_processes(name, &[]);
        for config in of_lab(host::netns_config_dirs()) {
            host::remove_namespace(&config);
        }
        // With its kubelet gone, what the lab made in the API server it was attached to. What
        // cannot be removed keeps the record, so `lab down` can try again.
        if let Some(kubeconfig) = attached {
            let problems = attach::detach(name, &kubeconfig);
            if !problems.is_empty() {
                return Err(LabError::Command {
                    command: format!("removing lab {name} from the API server of {}", kubeconfig.display()),
                    output: format!(
                        "{}; its network namespaces and processes are gone; run `netpol-verify lab down {name}` \
                         again to retry (or remove {} to forget what it made there)",
                        problems.join("; "),
                        state::lab_dir(name).display()
                    ),
                });
            }
        }
        let _ = std::fs::remove_dir_all(state::lab_dir(name));
        if !namespaces.is_empty() {
            return Err(LabError::Command {
                command: format!("removing lab {name}"),
                output: format!("namespaces keep appearing: {}", namespaces.join(", ")),
            });
        }
        Ok(removed)
    }

    /// Removes the labs no one uses any more: those whose owner (the `lab run` they were made
    /// for, or the API process of a `lab up`) is gone, those whose creator died before
    /// recording them, and namespaces left without a record. What each was, and why it went;
    /// a lab that fails to go is said too, and does not stop the others.
    pub fn sweep_abandoned() -> Vec<String> {
        // Without root nothing can be removed; `Lab::up` says so.
        if host::require_tools().is_err() {
            return Vec::new();
        }
        let recorded = state::recorded_labs();
        let mut said = Vec::new();
        let mut dead: Vec<(String, String)> =
            recorded.iter().filter_map(|name| Some((name.clone(), abandoned(name, false)?))).collect();
        for name in every_lab(Vec::new(), host::namespaces().into_iter().chain(host::netns_config_dirs())) {
            if !recorded.contains(&name) && !state::lab_dir(&name).exists() {
                dead.push((name, "its network namespaces were left without a record".into()));
            }
        }
        for (name, why) in dead {
            // Decided, then looked at again under the lab's lock: meanwhile another process may
            // have removed it and made a new lab of the same name, which is not to be touched.
            // NB: a dead owner's lab may still have its API process, which takes the lock for
            // each change it makes: wait for a moment between them.
            let lock = state::lock_within(&name, Duration::from_secs(5));
            let recorded = state::lab_dir(&name).exists();
            if recorded && lock.is_none() {
                said.push(format!("lab {name} looks abandoned ({why}) but is busy: left for now"));
                continue;
            }
            if recorded && abandoned(&name, true).is_none() {
                continue;
            }
            match Lab::down_holding(&name, lock) {
                Ok(removed) => {
                    said.push(format!("removed abandoned lab {name} ({removed} network namespaces): {why}"))
                }
                // NB: another sweep (or `lab down`) may have removed it first.
                Err(LabError::NotFound { .. }) => {}
                Err(e) => said.push(format!("could not remove abandoned lab {name} ({why}): {e}")),
            }
        }
        said
    }

    /// Hands the lab to its API process: once `lab up` returns, the lab lives as long as that
    /// process does.
    pub fn hand_over_to_api(&mut self) -> Result<(), LabError> {
        let pid = std::fs::read_to_string(daemon::pid_path(&self.state.name))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let owner = pid.and_then(state::Owner::of).ok_or_else(|| {
            LabError::State(format!(
                "the API process of lab {} is not running (see {})",
                self.state.name,
                self.state.dir().join("logs").join("api.log").display()
            ))
        })?;
        let _lock = self.lock_fresh()?;
        self.state.owner = Some(owner);
        self.save()
    }

    /// Removes every lab, and whatever any lab left behind. One lab failing to go does not
    /// stop the others; the error names every one that failed.
    pub fn down_all() -> Result<Vec<String>, LabError> {
        host::require_tools()?;
        let names = every_lab(
            state::recorded_labs(),
            host::namespaces().into_iter().chain(host::netns_config_dirs()),
        );
        let failures: Vec<String> =
            names.iter().filter_map(|name| Lab::down(name).err().map(|e| e.to_string())).collect();
        if failures.is_empty() {
            Ok(names)
        } else {
            Err(LabError::Command { command: "removing every lab".into(), output: failures.join("; ") })
        }
    }

    /// Every lab with a record, and leftovers without one.
    pub fn list() -> Vec<LabSummary> {
        let mut summaries = Vec::new();
        for name in state::recorded_labs() {
            let summary = match LabState::load(&name) {
                Ok(state) => LabSummary {
                    status: match state.status {
                        Status::Up => "up".into(),
                        Status::Creating if host::alive(state.creator_pid) => "creating".into(),
                        Status::Creating => "creating (abandoned)".into(),
                    },
                    cni: Some(state.cni),
                    pods: state.pods.len(),
                    age: Some(Duration::from_secs(now_unix().saturating_sub(state.created_unix))),
                    name,
                },
                // Claimed, not yet recorded: `lab up` holds the lock until it has written it.
                Err(_) if !state::lab_dir(&name).join("state.json").exists() => LabSummary {
                    status: if state::lock_held(&name) { "creating" } else { "creating (abandoned)" }.into(),
                    name,
                    cni: None,
                    pods: 0,
                    age: None,
                },
                Err(_) => LabSummary { name, status: "damaged".into(), cni: None, pods: 0, age: None },
            };
            summaries.push(summary);
        }
        for netns in host::namespaces().into_iter().chain(host::netns_config_dirs()) {
            if let Some(name) = state::lab_of_netns(&netns)
                && !summaries.iter().any(|s| s.name == name)
            {
                let name = name.to_string();
                summaries.push(LabSummary { name, status: "leftover".into(), cni: None, pods: 0, age: None });
            }
        }
        summaries
    }

    /// The cluster as this lab runs it.
    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot().0
    }

    /// The network namespace of pod `key`.
    pub fn pod_netns(&self, key: &ObjectKey) -> Option<String> {
        self.state.pods.iter().find(|p| p.key == *key).map(|p| state::pod_netns(&self.state.name, p.index))
    }

    /// Enforces `policies` (with the lab's pods and CNI mode), replacing what was enforced.
    pub fn apply_policies(&self, policies: &[NetworkPolicy]) -> Result<(), LabError> {
        let enforced = policies
            .iter()
            .filter(|p| {
                self.state.cni != CniMode::OnlyToolPolicies
                    || crate::cluster::is_tools(p.metadata.labels.as_ref())
            })
            .cloned()
            .collect();
        let (snapshot, _) =
            Snapshot::new(self.state.namespaces.clone(), self.state.pod_objects.clone(), enforced);
        let engine = Engine::new(&snapshot)?;
        let others: Vec<String> = self.state.node_names().into_iter().skip(1).collect();
        let links: Vec<Link> = self
            .state
            .pods
            .iter()
            .filter_map(|pod| {
                let id = snapshot.find_pod(&pod.key)?;
                let node = snapshot.pod(id).spec.as_ref().and_then(|s| s.node_name.clone());
                Some(Link {
                    pod: id,
                    interface: state::pod_interface(pod.index),
                    ip: pod.ip,
                    // A pod bound to none of the others (or to a node the lab does not
                    // have, as the input may say) runs on the first.
                    first_node: node.is_none_or(|n| !others.contains(&n)),
                })
            })
            .collect();
        host::nft(&state::node_netns(&self.state.name), &cni::policy_ruleset(&engine, &links, self.state.cni))
    }

    /// Stores `policy` and enforces the new set (the caller decides when: a slow CNI waits).
    pub fn add_policy(&mut self, policy: NetworkPolicy) -> Result<(), LabError> {
        let _lock = self.lock_fresh()?;
        let key = key_of(&policy.metadata);
        self.state.policies.retain(|p| key_of(&p.metadata) != key);
        self.state.policies.push(policy);
        self.save()
    }

    /// Removes a stored policy; `false` when there was none by that name.
    pub fn remove_policy(&mut self, key: &ObjectKey) -> Result<bool, LabError> {
        let _lock = self.lock_fresh()?;
        let before = self.state.policies.len();
        self.state.policies.retain(|p| key_of(&p.metadata) != *key);
        let removed = self.state.policies.len() != before;
        self.save()?;
        Ok(removed)
    }

    /// How late policy changes take effect.
    pub fn enforce_delay(&self) -> Duration {
        Duration::from_millis(self.state.enforce_delay_ms)
    }
}

/// Node-namespace commands for a pod: its link up, its route and its neighbour entry.
fn node_commands_for(pod: &LabPod) -> Vec<String> {
    let interface = state::pod_interface(pod.index);
    let (_, pod_mac) = state::macs(pod.index);
    vec![
        format!("link set {interface} up"),
        format!("route add {}/32 dev {interface}", pod.ip),
        format!("neigh replace {} lladdr {pod_mac} dev {interface} nud permanent", pod.ip),
    ]
}

/// `ip link add` for a veth pair: `node_end` in the node, `eth0` in `far`, fixed MACs.
fn veth(node: &str, node_end: &str, far: &str, index: usize) -> String {
    let (node_mac, far_mac) = state::macs(index);
    format!(
        "link add {node_end} address {node_mac} netns {node} type veth peer name eth0 address {far_mac} netns {far}"
    )
}

/// The far end of a link: its address and the gateway (the node end's MAC).
fn endpoint_commands(address: &str, node_mac: &str) -> Vec<String> {
    vec![
        "link set lo up".into(),
        "link set eth0 up".into(),
        format!("addr add {address} dev eth0"),
        format!("route add {GATEWAY_IP} dev eth0 scope link"),
        format!("neigh replace {GATEWAY_IP} lladdr {node_mac} dev eth0 nud permanent"),
    ]
}

pub(crate) fn resolv_conf(namespace: &str, dns: std::net::Ipv4Addr) -> String {
    let domain = topology::CLUSTER_DOMAIN;
    format!("search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n")
}

/// `netpol-probe serve` arguments for a pod the lab emulates, `None` when it serves no port.
fn serve_args(pod: &LabPod) -> Option<Vec<String>> {
    let serves = !pod.tcp.is_empty() || !pod.udp.is_empty();
    serves.then(|| crate::manifest::serve_args(&pod.key.to_string(), &pod.tcp, &pod.udp))
}

fn wait_ready(started: &[(String, PathBuf)]) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_LIMIT;
    let mut waiting: Vec<&(String, PathBuf)> = started.iter().collect();
    while !waiting.is_empty() {
        waiting.retain(|(_, log)| {
            !std::fs::read_to_string(log).unwrap_or_default().contains("\"event\":\"ready\"")
        });
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let (what, log) = waiting[0];
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(LabError::NotReady {
                what: what.clone(),
                limit: READY_LIMIT,
                log: if text.trim().is_empty() { "(no output)".into() } else { text.trim().to_string() },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The labs with a record, and those whose namespaces or resolv.conf directories remain.
/// How long a claimed lab without a record may be on its way to one: `lab up` writes it
/// moments after the claim, under the lock it takes right after.
const CLAIM_GRACE: Duration = Duration::from_secs(60);

/// Why recorded lab `name` serves no one any more; `None` while it may (a lab whose record
/// predates owners, or is damaged, is left to `lab down`). `locked`: the caller holds the
/// lab's lock.
fn abandoned(name: &str, locked: bool) -> Option<String> {
    match LabState::load(name) {
        Ok(state) => {
            let owner = state.owner?;
            (!owner.alive()).then(|| format!("the process it was for (pid {}) is gone", owner.pid))
        }
        // Claimed, not yet recorded: `lab up` holds the lock until it has written it (and a
        // fresh claim may not have taken it yet).
        Err(_) if !state::lab_dir(name).join("state.json").exists() => {
            let age =
                std::fs::metadata(state::lab_dir(name)).and_then(|m| m.modified()).ok()?.elapsed().ok()?;
            (age > CLAIM_GRACE && (locked || !state::lock_held(name)))
                .then(|| "the `lab up` that claimed it died before recording it".into())
        }
        Err(_) => None,
    }
}

fn every_lab(recorded: Vec<String>, netns: impl Iterator<Item = String>) -> Vec<String> {
    let mut names = recorded;
    for netns in netns {
        if let Some(name) = state::lab_of_netns(&netns)
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    names
}

fn generated_name() -> String {
    let seed = now_unix() ^ u64::from(std::process::id()).rotate_left(17);
    format!("lab-{:04x}", seed & 0xffff)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_is_found_from_records_namespaces_and_leftover_directories() {
        let found = every_lab(
            vec!["b".into()],
            ["npl-b-node", "npl-a-b-p3", "npl-c-meta", "cni-1234", "npl-x", "npl-b-p0"]
                .map(String::from)
                .into_iter(),
        );
        assert_eq!(found, ["a-b", "b", "c"]);
    }

    #[test]
    fn pods_serve_their_ports_under_their_own_name() {
        let pod = LabPod {
            key: ObjectKey::new("x", "a"),
            index: 0,
            ip: std::net::Ipv4Addr::new(10, 244, 1, 1),
            tcp: vec![80, 81],
            udp: vec![53],
            dns: false,
            dns_tcp: vec![],
            dns_udp: vec![],
        };
        assert_eq!(serve_args(&pod).expect("ports").join(" "), "serve --name x/a --tcp 80,81 --udp 53");
        assert_eq!(serve_args(&LabPod { tcp: vec![], udp: vec![], ..pod }), None);
    }
}
