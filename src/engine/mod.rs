//! The NetworkPolicy engine: what the stored policies say about a connection.
//!
//! Pure: no I/O. [`Engine::new`] validates and compiles every policy, works out which pods each
//! policy isolates and precomputes every pod-selecting peer as a bitset of pods, so that
//! [`Engine::verdict`] is a handful of bit tests per rule and a full matrix stays cheap.

mod explain;
mod peer;
mod policy;
mod port;
mod verdict;

use std::collections::HashMap;
use std::net::IpAddr;

use fixedbitset::FixedBitSet;
use k8s_openapi::api::core::v1::Pod;

use crate::model::{NamespaceId, ObjectKey, PodId, PolicyId, Snapshot, key_of};
use peer::{NamespaceScope, Peer, selects};
use policy::{CompiledPolicy, Rule};

pub use explain::{Explanation, PeerCheck, PolicyCheck, RuleCheck, SideExplanation};
pub use port::{ContainerPort, Protocol};
pub use verdict::{Direction, DirectionVerdict, ImplementationDefined, Outcome, RuleRef, Verdict};

/// A field of an object the API server would reject, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// Validates one NetworkPolicy as the API server would, without needing a cluster.
pub fn validate_policy(policy: &k8s_openapi::api::networking::v1::NetworkPolicy) -> Result<(), FieldError> {
    CompiledPolicy::compile(policy).map(|_| ())
}

/// Validates the Pod fields the engine reads (IPs, container ports) as the API server would.
pub fn validate_pod(pod: &Pod) -> Result<(), FieldError> {
    if let Some(status) = &pod.status {
        if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
            parse_ip(ip, "status.podIP")?;
        }
        for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
            parse_ip(&ip.ip, &format!("status.podIPs[{i}].ip"))?;
        }
    }
    let Some(spec) = &pod.spec else { return Ok(()) };
    let mut names = std::collections::HashSet::new();
    let containers = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    for (field, container) in containers.chain(init) {
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let here = format!("{field}.ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                return Err(FieldError::new(
                    format!("{here}.containerPort"),
                    format!("{} must be between 1 and 65535, inclusive", port.container_port),
                ));
            }
            if let Some(protocol) = port.protocol.as_deref()
                && Protocol::from_api(protocol).is_none()
            {
                return Err(FieldError::new(
                    format!("{here}.protocol"),
                    format!("unsupported value {protocol:?}: must be \"TCP\", \"UDP\" or \"SCTP\""),
                ));
            }
            if let Some(name) = port.name.as_deref() {
                port::validate_port_name(name, &format!("{here}.name"))?;
                if !names.insert(name) {
                    return Err(FieldError::new(
                        format!("{here}.name"),
                        format!("duplicate port name {name:?} in this pod"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr, FieldError> {
    text.parse().map_err(|_| FieldError::new(field, format!("{text:?} is not an IP address")))
}

/// Why an [`Engine`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A stored policy fails the API server's validation.
    #[error("NetworkPolicy {policy}: {error}")]
    InvalidPolicy { policy: ObjectKey, error: FieldError },
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Pod(PodId),
    /// An address that is not a pod of the snapshot (a cloud metadata service, the internet).
    Ip(IpAddr),
}

impl From<PodId> for Endpoint {
    fn from(id: PodId) -> Self {
        Endpoint::Pod(id)
    }
}

impl From<IpAddr> for Endpoint {
    fn from(ip: IpAddr) -> Self {
        Endpoint::Ip(ip)
    }
}

/// What the engine needs to know about a pod.
#[derive(Debug, Clone)]
struct PodFacts {
    namespace: NamespaceId,
    /// `status.podIPs` (or `status.podIP`), primary first.
    ips: Vec<IpAddr>,
    host_network: bool,
    node: Option<String>,
    ports: Vec<ContainerPort>,
}

impl PodFacts {
    /// The pod's address in `family` (v4 or v6, as `like`), else its primary one.
    fn ip_like(&self, like: Option<IpAddr>) -> Option<IpAddr> {
        like.and_then(|like| self.ips.iter().copied().find(|ip| ip.is_ipv4() == like.is_ipv4()))
            .or_else(|| self.ips.first().copied())
    }
}

/// A peer resolved against the snapshot.
#[derive(Debug, Clone)]
enum Resolved {
    /// Index into [`Engine::pod_sets`].
    Pods(usize),
    IpBlock,
}

/// A rule with its peers resolved.
#[derive(Debug, Clone)]
struct RuleEntry {
    policy: PolicyId,
    direction: Direction,
    index: usize,
    /// Parallel to `rule.peers`.
    resolved: Option<Vec<Resolved>>,
}

/// Per pod and direction: the policies isolating it and their rules, in policy order.
#[derive(Debug, Clone, Default)]
struct Side {
    isolated_by: Vec<PolicyId>,
    rules: Vec<u32>,
}

/// The compiled policies of a [`Snapshot`], ready to answer connection questions.
#[derive(Debug)]
pub struct Engine<'s> {
    snapshot: &'s Snapshot,
    pods: Vec<PodFacts>,
    policies: Vec<CompiledPolicy>,
    rules: Vec<RuleEntry>,
    pod_sets: Vec<FixedBitSet>,
    ingress: Vec<Side>,
    egress: Vec<Side>,
}

impl<'s> Engine<'s> {
    /// Compiles every policy of `snapshot`; fails on the first one the API server would reject.
    pub fn new(snapshot: &'s Snapshot) -> Result<Engine<'s>, EngineError> {
        let policies = snapshot
            .policies()
            .iter()
            .map(|p| {
                CompiledPolicy::compile(p)
                    .map_err(|error| EngineError::InvalidPolicy { policy: key_of(&p.metadata), error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pods: Vec<PodFacts> = snapshot.pods().iter().map(|p| pod_facts(snapshot, p)).collect();
        let mut engine = Engine {
            snapshot,
            pods,
            policies,
            rules: Vec::new(),
            pod_sets: Vec::new(),
            ingress: vec![Side::default(); snapshot.pods().len()],
            egress: vec![Side::default(); snapshot.pods().len()],
        };
        engine.resolve();
        Ok(engine)
    }

    /// Works out which pods each policy isolates and which pods each peer selects.
    fn resolve(&mut self) {
        let snapshot = self.snapshot;
        let mut pods_by_namespace: Vec<Vec<PodId>> = vec![Vec::new(); snapshot.namespaces().len()];
        for id in snapshot.pod_ids() {
            // NB: host-network pods are not matched by pod or namespace selectors (the most
            // common implementation, per the NetworkPolicy docs); they neither get isolated
            // nor count as peers, except through ipBlock on their (node) IP.
            if !self.pods[id.0 as usize].host_network {
                pods_by_namespace[self.pods[id.0 as usize].namespace.0 as usize].push(id);
            }
        }
        let namespace_labels: Vec<_> =
            snapshot.namespaces().iter().map(|ns| ns.metadata.labels.as_ref()).collect();
        let mut namespaces_by_selector: HashMap<String, Vec<NamespaceId>> = HashMap::new();
        let mut set_by_peer: HashMap<(String, String), usize> = HashMap::new();

        for (p, policy) in self.policies.iter().enumerate() {
            let policy_id = PolicyId(p as u32);
            let meta = &snapshot.policies()[p].metadata;
            let Some(own) = meta.namespace.as_deref().and_then(|ns| snapshot.find_namespace(ns)) else {
                continue;
            };
            for direction in [Direction::Ingress, Direction::Egress] {
                let Some(rules) = policy.rules(direction) else { continue };
                let first_rule = self.rules.len() as u32;
                for (index, rule) in rules.iter().enumerate() {
                    let resolved = rule.peers.as_ref().map(|peers| {
                        peers
                            .iter()
                            .map(|peer| match peer {
                                Peer::IpBlock(_) => Resolved::IpBlock,
                                Peer::Pods { namespaces, pods } => {
                                    let scope = match namespaces {
                                        NamespaceScope::Own => format!("own:{}", own.0),
                                        NamespaceScope::Selected(s) => format!("sel:{s}"),
                                    };
                                    let key = (scope, pods.to_string());
                                    if let Some(set) = set_by_peer.get(&key) {
                                        return Resolved::Pods(*set);
                                    }
                                    let in_scope: Vec<NamespaceId> = match namespaces {
                                        NamespaceScope::Own => vec![own],
                                        NamespaceScope::Selected(selector) => namespaces_by_selector
                                            .entry(selector.to_string())
                                            .or_insert_with(|| {
                                                (0..namespace_labels.len())
                                                    .filter(|i| selects(selector, namespace_labels[*i]))
                                                    .map(|i| NamespaceId(i as u32))
                                                    .collect()
                                            })
                                            .clone(),
                                    };
                                    let mut set = FixedBitSet::with_capacity(self.pods.len());
                                    for ns in in_scope {
                                        for &pod in &pods_by_namespace[ns.0 as usize] {
                                            if selects(pods, snapshot.pod(pod).metadata.labels.as_ref()) {
                                                set.insert(pod.0 as usize);
                                            }
                                        }
                                    }
                                    self.pod_sets.push(set);
                                    set_by_peer.insert(key, self.pod_sets.len() - 1);
                                    Resolved::Pods(self.pod_sets.len() - 1)
                                }
                            })
                            .collect()
                    });
                    self.rules.push(RuleEntry { policy: policy_id, direction, index, resolved });
                }
                let rule_ids = first_rule..self.rules.len() as u32;
                for &pod in &pods_by_namespace[own.0 as usize] {
                    if !selects(&policy.pod_selector, snapshot.pod(pod).metadata.labels.as_ref()) {
                        continue;
                    }
                    let side = match direction {
                        Direction::Ingress => &mut self.ingress[pod.0 as usize],
                        Direction::Egress => &mut self.egress[pod.0 as usize],
                    };
                    side.isolated_by.push(policy_id);
                    side.rules.extend(rule_ids.clone());
                }
            }
        }
    }

    pub fn snapshot(&self) -> &'s Snapshot {
        self.snapshot
    }

    /// The answer for a connection from `from` to `to` on `port`/`protocol`.
    pub fn verdict(
        &self,
        from: impl Into<Endpoint>,
        to: impl Into<Endpoint>,
        port: u16,
        protocol: Protocol,
    ) -> Verdict<'_> {
        let (from, to) = (from.into(), to.into());
        let (src_ip, dst_ip) = self.connection_addresses(from, to);
        let dest_ports = match to {
            Endpoint::Pod(d) => Some(self.pods[d.0 as usize].ports.as_slice()),
            Endpoint::Ip(_) => None,
        };
        let egress = match from {
            Endpoint::Pod(s) => self.side(Direction::Egress, s, to, dst_ip, port, protocol, dest_ports),
            Endpoint::Ip(_) => DirectionVerdict {
                direction: Direction::Egress,
                isolated_by: &[],
                outcome: Outcome::External,
            },
        };
        let ingress = match to {
            Endpoint::Pod(d) => self.side(Direction::Ingress, d, from, src_ip, port, protocol, dest_ports),
            Endpoint::Ip(_) => DirectionVerdict {
                direction: Direction::Ingress,
                isolated_by: &[],
                outcome: Outcome::External,
            },
        };
        let pod_to_itself = matches!((from, to), (Endpoint::Pod(a), Endpoint::Pod(b)) if a == b);
        let host_network_pod =
            [from, to].iter().any(|e| matches!(e, Endpoint::Pod(p) if self.pods[p.0 as usize].host_network));
        // NB: upstream e2e treats a pod reaching its own IP as allowed (loopback is ignored).
        let allowed = pod_to_itself || (egress.outcome.permits() && ingress.outcome.permits());
        let via_ip_block =
            |side: &DirectionVerdict| matches!(side.outcome, Outcome::Allowed(r) if r.via_ip_block);
        let implementation_defined = ImplementationDefined {
            // Only an allowed verdict hinges on it: an implementation that never matches pod
            // IPs with ipBlock denies at least as much.
            ip_block_matches_pod_ip: allowed
                && !pod_to_itself
                && (via_ip_block(&egress) || via_ip_block(&ingress)),
            pod_to_itself,
            host_network_pod,
        };
        Verdict { allowed, egress, ingress, implementation_defined }
    }

    /// The addresses a connection uses: the destination's primary IP, and the source's IP of
    /// the same family.
    pub fn connection_addresses(&self, from: Endpoint, to: Endpoint) -> (Option<IpAddr>, Option<IpAddr>) {
        let dst = match to {
            Endpoint::Pod(d) => self.pods[d.0 as usize].ips.first().copied(),
            Endpoint::Ip(ip) => Some(ip),
        };
        let src = match from {
            Endpoint::Pod(s) => self.pods[s.0 as usize].ip_like(dst),
            Endpoint::Ip(ip) => Some(ip),
        };
        (src, dst)
    }

    /// Evaluates `subject`'s policies for `direction` against the other end, `peer`.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &self,
        direction: Direction,
        subject: PodId,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
        dest_ports: Option<&[ContainerPort]>,
    ) -> DirectionVerdict<'_> {
        let facts = &self.pods[subject.0 as usize];
        let side = match direction {
            Direction::Ingress => &self.ingress[subject.0 as usize],
            Direction::Egress => &self.egress[subject.0 as usize],
        };
        let verdict = |outcome| DirectionVerdict { direction, isolated_by: &side.isolated_by, outcome };
        if facts.host_network {
            return verdict(Outcome::HostNetwork);
        }
        if side.isolated_by.is_empty() {
            return verdict(Outcome::NotIsolated);
        }
        if direction == Direction::Ingress && self.is_from_local_node(peer, facts) {
            return verdict(Outcome::LocalNode);
        }
        let mut by_ip_block = None;
        for &rule_id in &side.rules {
            let entry = &self.rules[rule_id as usize];
            let rule = self.rule(entry);
            let port_index = match &rule.ports {
                None => None,
                Some(ports) => match ports.iter().position(|p| p.matches(port, protocol, dest_ports)) {
                    Some(i) => Some(i),
                    None => continue,
                },
            };
            let matched = |peer: Option<usize>, via_ip_block| RuleRef {
                policy: entry.policy,
                direction,
                rule: entry.index,
                peer,
                port: port_index,
                via_ip_block,
            };
            let Some(resolved) = &entry.resolved else {
                return verdict(Outcome::Allowed(matched(None, false)));
            };
            for (i, r) in resolved.iter().enumerate() {
                match (r, peer) {
                    (Resolved::Pods(set), Endpoint::Pod(p)) if self.pod_sets[*set].contains(p.0 as usize) => {
                        return verdict(Outcome::Allowed(matched(Some(i), false)));
                    }
                    (Resolved::IpBlock, _) => {
                        let Some(Peer::IpBlock(block)) = rule.peers.as_ref().and_then(|p| p.get(i)) else {
                            continue;
                        };
                        if !peer_ip.is_some_and(|ip| block.contains(ip)) {
                            continue;
                        }
                        match peer {
                            // An ipBlock naming an outside address is exactly what it is for.
                            Endpoint::Ip(_) => return verdict(Outcome::Allowed(matched(Some(i), false))),
                            // Matching a pod's IP is implementation-defined: keep looking for a
                            // selector that admits it, and fall back to this one.
                            Endpoint::Pod(_) => {
                                by_ip_block.get_or_insert(matched(Some(i), true));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        verdict(by_ip_block.map_or(Outcome::Denied, Outcome::Allowed))
    }

    /// "Traffic is allowed to a pod ... if the traffic source is the pod's local node": a
    /// host-network pod on the same node is node traffic.
    fn is_from_local_node(&self, peer: Endpoint, subject: &PodFacts) -> bool {
        match peer {
            Endpoint::Pod(p) => {
                let source = &self.pods[p.0 as usize];
                source.host_network && source.node.is_some() && source.node == subject.node
            }
            Endpoint::Ip(_) => false,
        }
    }

    fn rule(&self, entry: &RuleEntry) -> &Rule {
        let rules = self.policies[entry.policy.0 as usize].rules(entry.direction).unwrap_or_default();
        &rules[entry.index]
    }

    /// The container ports `pod` declares (containers and restartable init containers).
    pub fn declared_ports(&self, pod: PodId) -> &[ContainerPort] {
        &self.pods[pod.0 as usize].ports
    }

    /// The pod's primary IP, if it has one.
    pub fn pod_ip(&self, pod: PodId) -> Option<IpAddr> {
        self.pods[pod.0 as usize].ips.first().copied()
    }

    pub fn is_host_network(&self, pod: PodId) -> bool {
        self.pods[pod.0 as usize].host_network
    }

    /// The policies isolating `pod` for `direction`.
    pub fn isolated_by(&self, pod: PodId, direction: Direction) -> &[PolicyId] {
        match direction {
            Direction::Ingress => &self.ingress[pod.0 as usize].isolated_by,
            Direction::Egress => &self.egress[pod.0 as usize].isolated_by,
        }
    }
}

/// Reads what the engine needs from a pod. Unparsable IPs and out-of-range ports are skipped
/// here; the input layer rejects them with a proper error before this point.
fn pod_facts(snapshot: &Snapshot, pod: &Pod) -> PodFacts {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .and_then(|ns| snapshot.find_namespace(ns))
        .unwrap_or(NamespaceId(0));
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if let Some(primary) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
        ips.retain(|ip| *ip != primary);
        ips.insert(0, primary);
    }
    let spec = pod.spec.as_ref();
    let mut ports: Vec<ContainerPort> = spec
        .into_iter()
        .flat_map(|s| {
            let sidecars =
                s.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            s.containers.iter().chain(sidecars)
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(ContainerPort {
                port: u16::try_from(p.container_port).ok().filter(|p| *p > 0)?,
                protocol: Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?,
                name: p.name.clone(),
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    PodFacts {
        namespace,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        node: spec.and_then(|s| s.node_name.clone()),
        ports,
    }
}

#[cfg(test)]
mod tests;
