//! `run --output json`. The schema is documented in docs/run-json.md.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::run::RunReport;
use crate::run::check::{Judged, Observed};

/// The schema identifier of this document.
pub const RUN_SCHEMA: &str = "netpol-verify/run/v1";

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    run: Run<'a>,
    exit_code: u8,
    counts: BTreeMap<&'static str, usize>,
    cluster: Option<&'a crate::detect::Detection>,
    canary: Option<Canary<'a>>,
    checks: Vec<CheckJson<'a>>,
    control_policies: Vec<ControlJson<'a>>,
    incomplete: &'a [String],
    notes: Vec<&'a str>,
}

#[derive(Serialize)]
struct ControlJson<'a> {
    policy: String,
    selects: String,
    direction: &'static str,
    peer: String,
    ports: &'a [String],
    why: &'a str,
}

#[derive(Serialize)]
struct Run<'a> {
    id: &'a str,
    target: &'a str,
    scenarios: &'a [String],
    namespaces: &'a [String],
    phases: Vec<Phase<'a>>,
    cleaned: Cleaned,
}

#[derive(Serialize)]
struct Phase<'a> {
    name: &'a str,
    ms: u64,
}

#[derive(Serialize)]
struct Cleaned {
    pods: usize,
    policies: usize,
    namespaces: usize,
}

#[derive(Serialize)]
struct Canary<'a> {
    enforce_latency_ms: Option<u64>,
    pod_start_window_ms: Option<u64>,
    capabilities: Vec<Capability<'a>>,
}

#[derive(Serialize)]
struct Capability<'a> {
    name: &'a str,
    status: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    scenario: &'a str,
    group: &'a str,
    from: String,
    from_namespace: &'a str,
    to: &'a str,
    to_namespace: Option<&'a str>,
    address: String,
    port: u16,
    protocol: &'static str,
    kind: &'static str,
    intent: Option<&'static str>,
    policy: &'static str,
    egress: Option<&'static str>,
    ingress: Option<&'static str>,
    observed: &'static str,
    denied_by: Option<&'static str>,
    verdict: &'static str,
    detail: &'a str,
    ms: Option<u64>,
    policies: &'a [String],
    because: &'a [String],
    implementation_defined: &'a [&'static str],
}

fn check(judged: &Judged) -> CheckJson<'_> {
    let c = &judged.check;
    CheckJson {
        scenario: &c.scenario,
        group: &c.group,
        from: c.probe.client.to_string(),
        from_namespace: &c.from_namespace,
        to: &c.to,
        to_namespace: c.to_namespace.as_deref(),
        address: c.probe.target.address.to_string(),
        port: c.probe.target.port,
        protocol: c.probe.target.protocol.as_str(),
        kind: if c.probe.target.dns { "dns" } else { "connect" },
        intent: c.intent.map(|i| i.as_str()),
        policy: c.policy.as_str(),
        egress: c.egress.map(allow_or_deny),
        ingress: c.ingress.map(allow_or_deny),
        observed: judged.observed.as_str(),
        denied_by: match judged.observed {
            Observed::Dropped => Some("dropped"),
            Observed::Rejected => Some("rejected"),
            _ => None,
        },
        verdict: judged.verdict.as_str(),
        detail: &judged.detail,
        ms: judged.ms,
        policies: &c.policies,
        because: &c.because,
        implementation_defined: &c.implementation_defined,
    }
}

fn allow_or_deny(allows: bool) -> &'static str {
    if allows { "allow" } else { "deny" }
}

/// Writes the run document.
pub fn write<W: std::io::Write>(out: W, report: &RunReport) -> serde_json::Result<()> {
    let document = Document {
        schema: RUN_SCHEMA,
        run: Run {
            id: &report.run_id,
            target: &report.target,
            scenarios: &report.scenarios,
            namespaces: &report.namespaces,
            phases: report.phases.iter().map(|(n, d)| Phase { name: n, ms: d.as_millis() as u64 }).collect(),
            cleaned: Cleaned {
                pods: report.cleaned.pods,
                policies: report.cleaned.policies,
                namespaces: report.cleaned.namespaces,
            },
        },
        exit_code: report.exit() as u8,
        counts: report.counts().into_iter().map(|(v, n)| (v.as_str(), n)).collect(),
        cluster: report.detection.as_ref(),
        canary: report.canary.as_ref().map(|c| Canary {
            enforce_latency_ms: c.enforce_latency.map(|d| d.as_millis() as u64),
            pod_start_window_ms: c.pod_start_window.map(|d| d.as_millis() as u64),
            capabilities: c
                .capabilities
                .iter()
                .map(|k| Capability { name: k.name, status: k.status, detail: &k.detail })
                .collect(),
        }),
        checks: report.all_checks().map(check).collect(),
        control_policies: report
            .controls
            .iter()
            .map(|c| ControlJson {
                policy: c.key().to_string(),
                selects: c.selects.to_string(),
                direction: c.direction.field(),
                peer: c.peer.to_string(),
                ports: &c.ports,
                why: &c.why,
            })
            .collect(),
        incomplete: &report.incomplete,
        notes: report.notes.iter().map(|n| n.0.as_str()).collect(),
    };
    serde_json::to_writer_pretty(out, &document)
}
