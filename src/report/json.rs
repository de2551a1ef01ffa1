//! `plan --output json`. The schema is documented in docs/plan-json.md.

use serde::Serialize;
use serde::ser::Serializer;

use super::reason::because;
use crate::engine::{DirectionVerdict, Endpoint, Engine, Outcome, Verdict};
use crate::model::{Note, PolicyId};
use crate::plan::{Expected, Probe};

/// The schema identifier of this document.
pub const PLAN_SCHEMA: &str = "netpol-verify/plan/v1";

/// Writes the plan document: `{"schema", "probes": [...], "notes": [...]}`, streaming the
/// probes so a large plan is never held twice in memory.
pub fn write_plan<W: std::io::Write>(
    out: W,
    engine: &Engine<'_>,
    expected: &[Expected<'_, '_>],
    notes: &[Note],
) -> serde_json::Result<()> {
    let document = PlanDocument {
        schema: PLAN_SCHEMA,
        probes: Probes { engine, expected },
        notes: notes.iter().map(|n| n.0.as_str()).collect(),
    };
    let mut serializer = serde_json::Serializer::with_formatter(out, serde_json::ser::PrettyFormatter::new());
    document.serialize(&mut serializer)
}

#[derive(Serialize)]
struct PlanDocument<'a, 'e, 's> {
    schema: &'static str,
    probes: Probes<'a, 'e, 's>,
    notes: Vec<&'a str>,
}

struct Probes<'a, 'e, 's> {
    engine: &'a Engine<'s>,
    expected: &'a [Expected<'a, 'e>],
}

impl Serialize for Probes<'_, '_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.expected.iter().map(|e| probe_json(self.engine, e.probe, &e.verdict)))
    }
}

/// One probe with its expectation, in the documented shape.
#[derive(Debug, Serialize)]
pub struct ProbeJson {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: &'static str,
    pub expected: &'static str,
    pub because: Vec<String>,
    pub from_ip: Option<String>,
    pub to_ip: Option<String>,
    pub port_name: Option<String>,
    pub implementation_defined: Vec<&'static str>,
    pub egress: SideJson,
    pub ingress: SideJson,
}

/// One direction of a probe.
#[derive(Debug, Serialize)]
pub struct SideJson {
    /// `not-isolated`, `allowed`, `denied`, `host-network`, `local-node` or `external`.
    pub outcome: &'static str,
    pub isolated_by: Vec<String>,
    /// The rule that admitted the connection, when one did.
    pub rule: Option<RuleJson>,
}

/// A reference to a rule: `spec.<direction>[index]`, and the peer and port entries in it.
#[derive(Debug, Serialize)]
pub struct RuleJson {
    pub policy: String,
    pub direction: &'static str,
    pub index: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
    pub via_ip_block: bool,
}

pub fn probe_json(engine: &Engine<'_>, probe: &Probe, verdict: &Verdict<'_>) -> ProbeJson {
    let snapshot = engine.snapshot();
    let (from, to) = (Endpoint::Pod(probe.from), Endpoint::Pod(probe.to));
    ProbeJson {
        from: snapshot.pod_key(probe.from).to_string(),
        to: snapshot.pod_key(probe.to).to_string(),
        port: probe.port,
        protocol: probe.protocol.as_str(),
        expected: if verdict.allowed { "allow" } else { "deny" },
        because: because(engine, from, to, probe.port, probe.protocol, verdict),
        from_ip: engine.connection_addresses(from, to).0.map(|ip| ip.to_string()),
        to_ip: engine.pod_ip(probe.to).map(|ip| ip.to_string()),
        port_name: probe.port_name.clone(),
        implementation_defined: verdict.implementation_defined.names(),
        egress: side_json(engine, &verdict.egress),
        ingress: side_json(engine, &verdict.ingress),
    }
}

fn side_json(engine: &Engine<'_>, side: &DirectionVerdict<'_>) -> SideJson {
    let policy = |id: PolicyId| engine.snapshot().policy_key(id).to_string();
    let (outcome, rule) = match side.outcome {
        Outcome::NotIsolated => ("not-isolated", None),
        Outcome::HostNetwork => ("host-network", None),
        Outcome::External => ("external", None),
        Outcome::LocalNode => ("local-node", None),
        Outcome::Denied => ("denied", None),
        Outcome::Allowed(r) => (
            "allowed",
            Some(RuleJson {
                policy: policy(r.policy),
                direction: r.direction.field(),
                index: r.rule,
                peer: r.peer,
                port: r.port,
                via_ip_block: r.via_ip_block,
            }),
        ),
    };
    SideJson { outcome, isolated_by: side.isolated_by.iter().map(|p| policy(*p)).collect(), rule }
}
