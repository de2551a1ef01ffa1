//! Verdict reasons in words: the `because` lines of every output.

use crate::engine::{Direction, DirectionVerdict, Endpoint, Engine, Outcome, Protocol, RuleRef, Verdict};
use crate::model::PolicyId;

/// One line per direction, then one per implementation-defined rule that applies.
pub fn because(
    engine: &Engine<'_>,
    from: Endpoint,
    to: Endpoint,
    port: u16,
    protocol: Protocol,
    verdict: &Verdict<'_>,
) -> Vec<String> {
    let mut lines = vec![
        side_line(engine, from, to, port, protocol, &verdict.egress),
        side_line(engine, to, from, port, protocol, &verdict.ingress),
    ];
    let d = verdict.implementation_defined;
    if d.pod_to_itself {
        lines.push(
            "implementation-defined (pod-to-itself): a pod reaching its own IP; shown as allowed, as upstream e2e treats it"
                .into(),
        );
    }
    if d.ip_block_matches_pod_ip {
        lines.push(
            "implementation-defined (ipblock-matches-pod-ip): allowed only because an ipBlock matches a pod IP; \
             some CNIs (Cilium) never match pod IPs with ipBlock"
                .into(),
        );
    }
    if d.host_network_pod {
        lines.push(
            "implementation-defined (host-network-pod): a host-network pod's traffic is treated as its node's, \
             as most CNIs do"
                .into(),
        );
    }
    lines
}

/// `egress from x/a: ...` or `ingress to y/b: ...`.
fn side_line(
    engine: &Engine<'_>,
    subject: Endpoint,
    other: Endpoint,
    port: u16,
    protocol: Protocol,
    side: &DirectionVerdict<'_>,
) -> String {
    let head = match side.direction {
        Direction::Egress => format!("egress from {}", engine.name(subject)),
        Direction::Ingress => format!("ingress to {}", engine.name(subject)),
    };
    let isolated = || format!("isolated by {}", policy_list(engine, side.isolated_by));
    let body = match side.outcome {
        Outcome::NotIsolated => format!(
            "not isolated (no NetworkPolicy with policyType {} selects it)",
            side.direction.policy_type()
        ),
        Outcome::External => "not a pod: no NetworkPolicy applies on this side".to_string(),
        Outcome::HostNetwork => "host-network pod: NetworkPolicy does not isolate it".to_string(),
        Outcome::LocalNode => format!(
            "{}; allowed: the source is a host-network pod on the same node, and traffic from a pod's own node is always allowed",
            isolated()
        ),
        Outcome::Allowed(rule) => format!("{}; allowed by {}", isolated(), rule_text(engine, &rule)),
        Outcome::Denied => format!(
            "{}; no {} rule allows {} on {port}/{protocol}",
            isolated(),
            side.direction,
            engine.name(other)
        ),
    };
    format!("{head}: {body}")
}

/// `x/p1, x/p2`.
pub fn policy_list(engine: &Engine<'_>, policies: &[PolicyId]) -> String {
    let names: Vec<String> = policies.iter().map(|p| engine.snapshot().policy_key(*p).to_string()).collect();
    names.join(", ")
}

/// `x/p egress rule 0 (to[1], ports[0])`.
pub fn rule_text(engine: &Engine<'_>, rule: &RuleRef) -> String {
    let mut parts = Vec::new();
    match rule.peer {
        Some(i) => parts.push(format!("{}[{i}]", rule.direction.peers_field())),
        None => parts.push(format!("any {}", rule.direction.peers_field())),
    }
    match rule.port {
        Some(i) => parts.push(format!("ports[{i}]")),
        None => parts.push("any port".into()),
    }
    format!(
        "{} {} rule {} ({})",
        engine.snapshot().policy_key(rule.policy),
        rule.direction,
        rule.rule,
        parts.join(", ")
    )
}
