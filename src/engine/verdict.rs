//! What the engine answers for one connection, and why.

use std::fmt;

use crate::model::PolicyId;

/// A direction of traffic, seen from the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The spec field holding this direction's rules.
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The rule field holding this direction's peers.
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }

    /// The `policyTypes` value naming this direction.
    pub fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// The rule (and the entries within it) that admitted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub direction: Direction,
    /// Index in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    /// Index in the rule's `from` / `to`; `None` when the rule has no peers (matches all).
    pub peer: Option<usize>,
    /// Index in the rule's `ports`; `None` when the rule has no ports (matches all).
    pub port: Option<usize>,
    /// The peer that matched was an `ipBlock` and the other end is a pod.
    pub via_ip_block: bool,
}

/// How one direction (the source's egress, or the destination's ingress) treats a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No policy selects the pod for this direction, so it is not restricted.
    NotIsolated,
    /// The pod uses the host network. Most implementations cannot tell its traffic from the
    /// node's, so policies selecting it are ignored (the spec leaves this undefined).
    HostNetwork,
    /// This end of the connection is an address outside the cluster's pods: no policy of its
    /// own applies.
    External,
    /// "Traffic is allowed to a pod ... if the traffic source is the pod's local node": the
    /// source is a host-network pod on the destination's node.
    LocalNode,
    /// A rule admitted the connection.
    Allowed(RuleRef),
    /// The pod is isolated for this direction and no rule admits the connection.
    Denied,
}

impl Outcome {
    /// Whether this direction lets the connection through.
    pub fn permits(&self) -> bool {
        !matches!(self, Outcome::Denied)
    }
}

/// One direction's answer, with the policies that isolate the pod for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionVerdict<'e> {
    pub direction: Direction,
    /// Every policy selecting the pod whose `policyTypes` include this direction.
    pub isolated_by: &'e [PolicyId],
    pub outcome: Outcome,
}

/// Cells whose answer the spec leaves to the implementation. The engine answers as the
/// upstream e2e tests expect; reports show such cells as informational, never as failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImplementationDefined {
    /// The connection was allowed only because an `ipBlock` matched a pod's IP (upstream e2e
    /// expects a match; Cilium, for one, does not match pod IPs with ipBlock).
    pub ip_block_matches_pod_ip: bool,
    /// A pod connecting to its own IP (upstream e2e ignores loopback; CNIs differ).
    pub pod_to_itself: bool,
    /// An end of the connection uses the host network (undefined in the spec).
    pub host_network_pod: bool,
}

impl ImplementationDefined {
    /// The rules that apply, by their stable names (used in JSON output).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.ip_block_matches_pod_ip {
            names.push("ipblock-matches-pod-ip");
        }
        if self.pod_to_itself {
            names.push("pod-to-itself");
        }
        if self.host_network_pod {
            names.push("host-network-pod");
        }
        names
    }

    pub fn any(&self) -> bool {
        self.ip_block_matches_pod_ip || self.pod_to_itself || self.host_network_pod
    }
}

/// The engine's answer for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'e> {
    /// "For a connection from a source pod to a destination pod to be allowed, both the egress
    /// policy on the source pod and the ingress policy on the destination pod need to allow
    /// the connection."
    pub allowed: bool,
    /// The source's egress.
    pub egress: DirectionVerdict<'e>,
    /// The destination's ingress.
    pub ingress: DirectionVerdict<'e>,
    pub implementation_defined: ImplementationDefined,
}
