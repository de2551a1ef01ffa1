//! The checks of a run and the vocabulary they are judged in (DESIGN.md: intent, policy,
//! observed, verdict).

use std::fmt;
use std::net::IpAddr;

use netpol_probe::wire::ProbeKind;
use serde::Serialize;

use crate::engine::Protocol;
use crate::model::ObjectKey;
use crate::scenario::Intent;

/// What the stored NetworkPolicies imply for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAnswer {
    Allow,
    Deny,
    /// Objects the engine does not model (CNI-specific policies) may apply, or the answer
    /// depends on which endpoint a Service picks.
    Unknown,
}

impl PolicyAnswer {
    pub fn from_allowed(allowed: bool) -> Self {
        if allowed { PolicyAnswer::Allow } else { PolicyAnswer::Deny }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAnswer::Allow => "allow",
            PolicyAnswer::Deny => "deny",
            PolicyAnswer::Unknown => "unknown",
        }
    }
}

/// What the probe saw, in the verdict vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Observed {
    Allow,
    /// Silence until the timeout: a dropping CNI (or a dead target).
    Dropped,
    /// Refused or unreachable: a rejecting CNI (or a closed port).
    Rejected,
    /// The probe ran but failed in itself (wrong peer, garbled reply, local failure).
    Error,
    /// No result came back.
    NotRun,
}

impl Observed {
    /// `allow`, `deny`, `error` or `not-run`: the JSON `observed` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Allow => "allow",
            Observed::Dropped | Observed::Rejected => "deny",
            Observed::Error => "error",
            Observed::NotRun => "not-run",
        }
    }

    pub fn is_deny(self) -> bool {
        matches!(self, Observed::Dropped | Observed::Rejected)
    }
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    NotEnforced,
    OverBlocked,
    IntentGap,
    Inconclusive,
    Informational,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Pass,
        Verdict::NotEnforced,
        Verdict::OverBlocked,
        Verdict::IntentGap,
        Verdict::Inconclusive,
        Verdict::Informational,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::NotEnforced => "not-enforced",
            Verdict::OverBlocked => "over-blocked",
            Verdict::IntentGap => "intent-gap",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Informational => "informational",
        }
    }

    /// `not-enforced`, `over-blocked` and `intent-gap` fail a run.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::NotEnforced | Verdict::OverBlocked | Verdict::IntentGap)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a probe goes: a target is alive when any probe to the same key got through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub dns: bool,
}

/// One probe a client makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Unique in the run; the batch echoes it.
    pub id: String,
    /// The probe pod that makes it.
    pub client: ObjectKey,
    pub target: TargetKey,
    /// For connect probes to the run's servers: the identity the server must answer with.
    pub expect_name: Option<String>,
    /// For DNS probes: the name looked up.
    pub query: Option<String>,
}

impl Probe {
    pub fn kind(&self) -> ProbeKind {
        if self.target.dns { ProbeKind::Dns } else { ProbeKind::Connect }
    }
}

/// One connection a scenario checks, with what the stored policies say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub scenario: String,
    pub group: String,
    pub probe: Probe,
    /// The source's namespace.
    pub from_namespace: String,
    /// The target for people: `ns/pod`, an address, `kube-system/kube-dns (10.96.0.10)`.
    pub to: String,
    /// For a Service: its endpoints as probed directly. The Service picks one per connection,
    /// so each must be shown alive before a denial proves anything.
    pub backends: Vec<TargetKey>,
    /// The target's namespace, when it is in one.
    pub to_namespace: Option<String>,
    /// `None`: the scenario only asks what the policies say.
    pub intent: Option<Intent>,
    pub policy: PolicyAnswer,
    /// What each direction says on its own: the source's egress, the destination's ingress
    /// (`None` when the destination is not a pod, or a Service's endpoints disagree).
    pub egress: Option<bool>,
    pub ingress: Option<bool>,
    /// The policies isolating either end.
    pub policies: Vec<String>,
    /// Why the policies say so, one line per direction.
    pub because: Vec<String>,
    /// The spec leaves this cell to the implementation (`pod-to-itself`, ...).
    pub implementation_defined: Vec<&'static str>,
}

/// A check with its observation and verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub check: Check,
    pub observed: Observed,
    pub verdict: Verdict,
    pub detail: String,
    /// How long the probe took.
    pub ms: Option<u64>,
}
