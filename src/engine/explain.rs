//! The long form of a verdict: every policy, rule, peer and port the engine looked at.
//!
//! [`Engine::verdict`] stops at the first rule that admits a connection; an explanation walks
//! all of them so a person can see why each did or did not match. Every match decision here is
//! made by the same primitives the verdict uses (the peer bitsets, `PortRule::matches`,
//! `CidrBlock::contains`); only the wording is computed separately.

use std::net::IpAddr;

use super::peer::{NamespaceScope, Peer, describe_selector, selects};
use super::{Direction, Endpoint, Engine, Protocol, Resolved, Traffic, Verdict};
use crate::model::{PolicyId, key_of};

/// Everything the engine considered for one connection.
#[derive(Debug, Clone)]
pub struct Explanation<'e> {
    pub from: Endpoint,
    pub to: Endpoint,
    pub port: u16,
    pub protocol: Protocol,
    pub from_ip: Option<IpAddr>,
    pub to_ip: Option<IpAddr>,
    pub verdict: Verdict<'e>,
    /// The source's egress policies.
    pub egress: SideExplanation,
    /// The destination's ingress policies.
    pub ingress: SideExplanation,
}

/// The policies isolating one side, rule by rule (empty when nothing isolates it).
#[derive(Debug, Clone, Default)]
pub struct SideExplanation {
    pub policies: Vec<PolicyCheck>,
}

/// One isolating policy and how each of its rules fared.
#[derive(Debug, Clone)]
pub struct PolicyCheck {
    pub policy: PolicyId,
    /// The policy's `podSelector`, as a label query.
    pub pod_selector: String,
    pub rules: Vec<RuleCheck>,
}

/// One rule: its peers and ports, each with whether it matched.
#[derive(Debug, Clone)]
pub struct RuleCheck {
    pub index: usize,
    /// Empty: the rule has no `from`/`to`, so it matches every peer.
    pub peers: Vec<PeerCheck>,
    /// Empty: the rule has no `ports`, so it matches every port.
    pub ports: Vec<PeerCheck>,
    pub admits: bool,
}

/// One peer or port entry, whether it matched, and why in words.
#[derive(Debug, Clone)]
pub struct PeerCheck {
    pub description: String,
    pub matches: bool,
    pub why: String,
}

impl<'s> Engine<'s> {
    /// Explains the connection `from` → `to` on `port`/`protocol`.
    pub fn explain(
        &self,
        from: impl Into<Endpoint>,
        to: impl Into<Endpoint>,
        port: u16,
        protocol: Protocol,
    ) -> Explanation<'_> {
        let (from, to) = (from.into(), to.into());
        let verdict = self.verdict(from, to, port, protocol);
        let (from_ip, to_ip) = self.connection_addresses(from, to);
        let traffic = self.traffic(to, port, protocol);
        let egress = match from {
            Endpoint::Pod(s) => self.explain_side(Direction::Egress, s, to, to_ip, &traffic),
            Endpoint::Ip(_) => SideExplanation::default(),
        };
        let ingress = match to {
            Endpoint::Pod(d) => self.explain_side(Direction::Ingress, d, from, from_ip, &traffic),
            Endpoint::Ip(_) => SideExplanation::default(),
        };
        Explanation { from, to, port, protocol, from_ip, to_ip, verdict, egress, ingress }
    }

    fn explain_side(
        &self,
        direction: Direction,
        subject: crate::model::PodId,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        traffic: &Traffic<'_>,
    ) -> SideExplanation {
        let side = match direction {
            Direction::Ingress => &self.ingress[subject.0 as usize],
            Direction::Egress => &self.egress[subject.0 as usize],
        };
        let mut policies: Vec<PolicyCheck> = side
            .isolated_by
            .iter()
            .map(|&policy| PolicyCheck {
                policy,
                pod_selector: describe_selector(&self.policies[policy.0 as usize].pod_selector),
                rules: Vec::new(),
            })
            .collect();
        for &rule_id in &side.rules {
            let entry = &self.rules[rule_id as usize];
            let rule = self.rule(entry);
            let ports: Vec<PeerCheck> = rule
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let matches = traffic.matches(p);
                    PeerCheck { description: p.describe(), matches, why: port_why(matches, traffic) }
                })
                .collect();
            let peers: Vec<PeerCheck> = rule
                .peers
                .iter()
                .flatten()
                .zip(entry.resolved.iter().flatten())
                .map(|(p, r)| self.check_peer(entry.policy, p, r, peer, peer_ip))
                .collect();
            let admits = (ports.is_empty() || ports.iter().any(|c| c.matches))
                && (peers.is_empty() || peers.iter().any(|c| c.matches));
            if let Some(check) = policies.iter_mut().find(|c| c.policy == entry.policy) {
                check.rules.push(RuleCheck { index: entry.index, peers, ports, admits });
            }
        }
        SideExplanation { policies }
    }

    fn check_peer(
        &self,
        policy: PolicyId,
        peer: &Peer,
        resolved: &Resolved,
        other: Endpoint,
        other_ip: Option<IpAddr>,
    ) -> PeerCheck {
        let description = peer.describe();
        let (matches, why) = match (peer, resolved, other) {
            (Peer::IpBlock(block), _, _) => match other_ip {
                None => (false, format!("{} has no IP, so no ipBlock can match it", self.name(other))),
                Some(ip) if block.contains(ip) => {
                    let note = match other {
                        Endpoint::Pod(p) if self.pods[p.0 as usize].host_network => " (the node's IP)",
                        Endpoint::Pod(_) => " (an ipBlock matching a pod IP is implementation-defined)",
                        Endpoint::Ip(_) => "",
                    };
                    (true, format!("{ip} is inside {}{note}", block.cidr))
                }
                Some(ip) => match block.except.iter().find(|e| e.contains(&ip)) {
                    Some(except) => (false, format!("{ip} is excluded by except {except}")),
                    None => (false, format!("{ip} is outside {}", block.cidr)),
                },
            },
            (Peer::Pods { .. }, _, Endpoint::Ip(ip)) => {
                (false, format!("{ip} is not a pod, and pod and namespace selectors match only pods"))
            }
            (Peer::Pods { namespaces, pods }, Resolved::Pods(set), Endpoint::Pod(p)) => {
                let matches = self.pod_sets[*set].contains(p.0 as usize);
                let pod = self.snapshot.pod(p);
                let key = key_of(&pod.metadata);
                let why = if self.pods[p.0 as usize].host_network {
                    format!("{key} uses the host network; selectors do not match host-network pods")
                } else {
                    let own_namespace =
                        self.snapshot.policies()[policy.0 as usize].metadata.namespace.as_deref();
                    let namespace =
                        self.snapshot.namespaces().get(self.pods[p.0 as usize].namespace.0 as usize);
                    let namespace_labels = namespace.and_then(|ns| ns.metadata.labels.as_ref());
                    let namespace_ok = match namespaces {
                        NamespaceScope::Own => own_namespace == Some(key.namespace.as_str()),
                        NamespaceScope::Selected(selector) => selects(selector, namespace_labels),
                    };
                    if !namespace_ok {
                        match namespaces {
                            NamespaceScope::Own => format!(
                                "{key} is not in the policy's namespace {}",
                                own_namespace.unwrap_or_default()
                            ),
                            NamespaceScope::Selected(_) => format!(
                                "namespace {} (labels {}) is not selected",
                                key.namespace,
                                labels_text(namespace_labels)
                            ),
                        }
                    } else if !selects(pods, pod.metadata.labels.as_ref()) {
                        format!(
                            "{key} (labels {}) does not match the podSelector",
                            labels_text(pod.metadata.labels.as_ref())
                        )
                    } else {
                        format!("{key} is selected")
                    }
                };
                (matches, why)
            }
            (Peer::Pods { .. }, Resolved::IpBlock, _) => (false, "internal mismatch".to_string()),
        };
        PeerCheck { description, matches, why }
    }

    /// `namespace/name` of a pod endpoint, or the address.
    pub fn name(&self, endpoint: Endpoint) -> String {
        match endpoint {
            Endpoint::Pod(p) => self.snapshot.pod_key(p).to_string(),
            Endpoint::Ip(ip) => ip.to_string(),
        }
    }
}

fn port_why(matches: bool, traffic: &Traffic<'_>) -> String {
    let target = format!("{}/{}", traffic.port, traffic.protocol);
    if matches { format!("{target} matches") } else { format!("{target} does not match") }
}

fn labels_text(labels: Option<&std::collections::BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels.into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(","))
}
