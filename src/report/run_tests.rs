//! Snapshots of the run reports, from a fixed judged run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::cluster::Cleaned;
use crate::engine::Protocol;
use crate::model::{Note, ObjectKey};
use crate::run::RunReport;
use crate::run::canary::{CanaryReport, Capability};
use crate::run::check::{Check, Judged, Observed, PolicyAnswer, Probe, TargetKey, Verdict};
use crate::scenario::Intent;

fn judged(
    from: &str,
    to: &str,
    policy: PolicyAnswer,
    observed: Observed,
    verdict: Verdict,
    detail: &str,
) -> Judged {
    let (address, to_namespace) = match to.split_once('/') {
        Some((ns, _)) => (IpAddr::V4(Ipv4Addr::new(10, 244, 1, to.len() as u8)), Some(ns.to_string())),
        None => (to.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), None),
    };
    let metadata = to_namespace.is_none();
    Judged {
        check: Check {
            scenario: if metadata { "metadata".into() } else { "matrix".into() },
            group: if metadata { "metadata-ipv4".into() } else { "pod-to-pod".into() },
            probe: Probe {
                id: String::new(),
                client: ObjectKey::new(from, "nv-client-r1"),
                target: TargetKey { address, port: 80, protocol: Protocol::Tcp, dns: false },
                expect_name: None,
                query: None,
            },
            from_namespace: from.into(),
            to: to.into(),
            backends: vec![],
            to_namespace,
            intent: metadata.then_some(Intent::Deny),
            policy,
            egress: Some(true),
            ingress: if metadata { None } else { Some(policy == PolicyAnswer::Allow) },
            policies: if policy == PolicyAnswer::Deny { vec!["b/deny-others".into()] } else { vec![] },
            because: vec!["ingress to b/nv-server-r1: isolated by b/deny-others; no ingress rule allows a/nv-client-r1 on 80/TCP".into()],
            implementation_defined: vec![],
        },
        observed,
        verdict,
        detail: detail.into(),
        ms: (observed != Observed::NotRun).then_some(3),
    }
}

fn report() -> RunReport {
    use Observed::{Dropped, NotRun};
    use PolicyAnswer::{Allow, Deny};
    let seen = Observed::Allow;
    RunReport {
        run_id: "r1".into(),
        target: "lab demo (CNI ingress-only)".into(),
        scenarios: vec!["canary".into(), "matrix".into(), "metadata".into()],
        namespaces: vec!["a".into(), "b".into()],
        judged: vec![
            judged("a", "a/nv-server-r1", Allow, seen, Verdict::Pass, "connected in 3 ms"),
            judged(
                "a",
                "b/nv-server-r1",
                Deny,
                seen,
                Verdict::NotEnforced,
                "the stored policies deny this, but it connected in 3 ms: the network does not enforce them",
            ),
            judged(
                "b",
                "a/nv-server-r1",
                Allow,
                NotRun,
                Verdict::Inconclusive,
                "the probe did not run (no result came back)",
            ),
            judged(
                "b",
                "b/nv-server-r1",
                Deny,
                Dropped,
                Verdict::Pass,
                "was dropped (timeout after 2000 ms); target shown alive: reached from the node (NetworkPolicy always allows it)",
            ),
            judged(
                "a",
                "169.254.169.254",
                Allow,
                seen,
                Verdict::IntentGap,
                "the scenario requires this denied, but the stored policies allow it; observed: connected in 0 ms",
            ),
        ],
        canary: Some(CanaryReport {
            capabilities: vec![
                Capability { name: "ingress deny", status: "enforced", detail: "was dropped".into() },
                Capability { name: "egress deny", status: "not enforced", detail: "connected".into() },
            ],
            enforce_latency: Some(Duration::from_millis(120)),
            pod_start_window: Some(Duration::ZERO),
            checks: vec![],
        }),
        notes: vec![Note("dns/nodelocal-dns: skipped: NodeLocal DNSCache does not run here".into())],
        phases: vec![
            ("discover".into(), Duration::from_millis(10)),
            ("probe".into(), Duration::from_millis(2000)),
            ("canary (alongside probe)".into(), Duration::from_millis(4000)),
            ("probe and canary".into(), Duration::from_millis(4000)),
            ("cleanup".into(), Duration::from_millis(500)),
        ],
        cleaned: Cleaned { pods: 5, policies: 0, namespaces: 1 },
        incomplete: vec![],
        controls: vec![crate::run::controls::ControlPolicy {
            policy: k8s_openapi::api::networking::v1::NetworkPolicy {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("nv-control-in-nv-server-r1".into()),
                    namespace: Some("b".into()),
                    ..Default::default()
                },
                spec: None,
            },
            selects: crate::model::ObjectKey::new("b", "nv-server-r1"),
            direction: crate::engine::Direction::Ingress,
            peer: crate::model::ObjectKey::new("netpol-verify-r1", "nv-control-r1"),
            ports: vec!["80/UDP".into()],
            why: "no stored policy lets any probe reach b/nv-server-r1 on 80/UDP".into(),
        }],
        detection: Some(crate::detect::Detection {
            provider: Some("EKS".into()),
            cni: vec!["AWS VPC CNI (network policy agent not enabled: does not enforce)".into()],
            enforcement: crate::detect::Enforcement::NotExpected,
            advice: vec!["EKS does not enforce NetworkPolicy by default: enable the agent".into()],
        }),
    }
}

#[test]
fn the_terminal_report_puts_the_summary_first_and_groups_failures_by_namespace() {
    let text = super::run_text::render(&report(), super::run_text::Style { color: false, verbose: true });
    insta::assert_snapshot!("run_text", text);
}

#[test]
fn colour_is_only_added_when_asked() {
    let plain = super::run_text::render(&report(), super::run_text::Style::default());
    assert!(!plain.contains('\x1b'));
    let coloured = super::run_text::render(&report(), super::run_text::Style { color: true, verbose: false });
    assert!(coloured.contains("\x1b[31;1m1 not-enforced\x1b[0m"), "{coloured}");
}

#[test]
fn the_markdown_summary_lists_counts_capabilities_and_findings() {
    insta::assert_snapshot!("run_markdown", super::markdown::render(&report()));
}

#[test]
fn the_json_document_keeps_its_schema() {
    let mut out = Vec::new();
    super::run_json::write(&mut out, &report()).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!("run_json", String::from_utf8_lossy(&out));
}

#[test]
fn exit_codes_follow_the_worst_verdict() {
    let mut report = report();
    assert_eq!(report.exit() as u8, 1);
    report.judged.retain(|j| !j.verdict.is_failure());
    assert_eq!(report.exit() as u8, 3);
    report.judged.retain(|j| j.verdict != Verdict::Inconclusive);
    assert_eq!(report.exit() as u8, 0);
    report.incomplete.push("the canary could not finish".into());
    assert_eq!(report.exit() as u8, 3, "a part that did not happen is never a pass");
}
