//! `plan --explain FROM TO PORT/PROTOCOL`: one connection's reasoning in plain words.

use std::fmt::Write as _;

use super::reason::{policy_list, rule_text};
use crate::engine::{Direction, Endpoint, Engine, Explanation, Outcome, SideExplanation};

pub fn render(engine: &Engine<'_>, e: &Explanation<'_>) -> String {
    let (from, to) = (engine.name(e.from), engine.name(e.to));
    let mut out = String::new();
    let verdict = if e.verdict.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(out, "{from} -> {to} on {}/{}: {verdict}", e.port, e.protocol);
    let ip = |ip: Option<std::net::IpAddr>| ip.map_or_else(|| "(no IP)".to_string(), |ip| ip.to_string());
    let _ = writeln!(out, "  from {} to {}", ip(e.from_ip), ip(e.to_ip));

    out.push('\n');
    side(&mut out, engine, Direction::Egress, e.from, &e.egress, e.verdict.egress.outcome, e);
    out.push('\n');
    side(&mut out, engine, Direction::Ingress, e.to, &e.ingress, e.verdict.ingress.outcome, e);
    out.push('\n');

    let defined = e.verdict.implementation_defined;
    if defined.pod_to_itself {
        out.push_str(
            "A pod reaching its own IP is implementation-defined: upstream e2e ignores these cells and CNIs \
             differ. netpol-verify treats it as allowed and reports it as informational.\n",
        );
    }
    if defined.ip_block_matches_pod_ip {
        out.push_str(
            "Implementation-defined: only an ipBlock matching a pod IP admits this connection. Upstream e2e \
             expects the match; some CNIs (Cilium) never match pod IPs with ipBlock and would deny it.\n",
        );
    }
    if defined.host_network_pod {
        out.push_str(
            "Implementation-defined: a host-network pod is involved. Most CNIs treat its traffic as the node's: \
             policies do not isolate it, and pod and namespace selectors do not match it.\n",
        );
    }
    if !defined.pod_to_itself {
        let _ = writeln!(
            out,
            "A connection needs both {from}'s egress and {to}'s ingress to allow it: {}.",
            if e.verdict.allowed { "allowed" } else { "denied" }
        );
    }
    out
}

fn side(
    out: &mut String,
    engine: &Engine<'_>,
    direction: Direction,
    subject: Endpoint,
    explanation: &SideExplanation,
    outcome: Outcome,
    e: &Explanation<'_>,
) {
    let name = engine.name(subject);
    let title = match direction {
        Direction::Egress => format!("Egress from {name}"),
        Direction::Ingress => format!("Ingress to {name}"),
    };
    let _ = writeln!(out, "{title}: {}", if outcome.permits() { "allowed" } else { "denied" });
    match outcome {
        Outcome::External => {
            let _ =
                writeln!(out, "  {name} is not a pod of this cluster: no NetworkPolicy applies on its side.");
            return;
        }
        Outcome::HostNetwork => {
            let _ = writeln!(
                out,
                "  {name} uses the host network. NetworkPolicies selecting it are ignored (implementation-defined)."
            );
            return;
        }
        Outcome::NotIsolated => {
            let _ = writeln!(
                out,
                "  No NetworkPolicy with policyType {} selects {name}, so its {direction} is not restricted.",
                direction.policy_type()
            );
            return;
        }
        _ => {}
    }
    let isolating = &explanation.policies;
    let _ = writeln!(
        out,
        "  {name} is isolated for {direction} by {} {}: {}",
        isolating.len(),
        if isolating.len() == 1 { "NetworkPolicy" } else { "NetworkPolicies" },
        policy_list(engine, &isolating.iter().map(|p| p.policy).collect::<Vec<_>>())
    );
    for policy in isolating {
        let _ = writeln!(
            out,
            "  - {} (podSelector {})",
            engine.snapshot().policy_key(policy.policy),
            policy.pod_selector
        );
        if policy.rules.is_empty() {
            let _ = writeln!(out, "      has no {direction} rules: on its own it allows nothing");
        }
        for rule in &policy.rules {
            let _ = writeln!(
                out,
                "      rule {}: {}",
                rule.index,
                if rule.admits { "admits the connection" } else { "does not admit it" }
            );
            if rule.peers.is_empty() {
                let _ =
                    writeln!(out, "        {}: none listed, so every peer matches", direction.peers_field());
            }
            for peer in &rule.peers {
                let _ = writeln!(
                    out,
                    "        {} {}: {} ({})",
                    direction.peers_field(),
                    peer.description,
                    yes_no(peer.matches),
                    peer.why
                );
            }
            if rule.ports.is_empty() {
                let _ = writeln!(out, "        ports: none listed, so every port matches");
            }
            for port in &rule.ports {
                let _ = writeln!(
                    out,
                    "        port {}: {} ({})",
                    port.description,
                    yes_no(port.matches),
                    port.why
                );
            }
        }
    }
    match outcome {
        Outcome::Allowed(rule) => {
            let _ = writeln!(out, "  First admitting rule: {}.", rule_text(engine, &rule));
        }
        Outcome::LocalNode => {
            let _ = writeln!(
                out,
                "  The source is a host-network pod on {name}'s node; traffic from a pod's own node is always allowed."
            );
        }
        _ => {
            let other = match direction {
                Direction::Egress => engine.name(e.to),
                Direction::Ingress => engine.name(e.from),
            };
            let _ = writeln!(out, "  No {direction} rule admits {other} on {}/{}.", e.port, e.protocol);
        }
    }
}

fn yes_no(matches: bool) -> &'static str {
    if matches { "matches" } else { "no match" }
}
