use std::net::{IpAddr, Ipv4Addr};

use netpol_probe::wire::Transport;

use super::*;
use crate::engine::Protocol;
use crate::model::ObjectKey;

fn probe(id: &str, client: &str, port: u16) -> Probe {
    Probe {
        id: id.into(),
        client: ObjectKey::new(client, "client"),
        target: TargetKey {
            address: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9)),
            port,
            protocol: Protocol::Tcp,
            dns: false,
        },
        expect_name: None,
        query: None,
    }
}

fn check(id: &str, client: &str, policy: PolicyAnswer, intent: Option<Intent>) -> Check {
    Check {
        scenario: "s".into(),
        group: "g".into(),
        probe: probe(id, client, 80),
        from_namespace: client.into(),
        to: "y/server".into(),
        backends: vec![],
        to_namespace: Some("y".into()),
        intent,
        policy,
        egress: None,
        ingress: None,
        policies: vec![],
        because: vec![],
        implementation_defined: vec![],
    }
}

fn result(id: &str, outcome: Outcome) -> (String, ProbeResult) {
    let result = ProbeResult {
        id: Some(id.into()),
        target: "10.244.0.9".into(),
        port: 80,
        protocol: Transport::Tcp,
        query: None,
        outcome,
        name: None,
        ms: 5,
        message: None,
        attempts: None,
        rcode: None,
    };
    (id.into(), result)
}

fn verdicts(checks: Vec<Check>, controls: &[Probe], results: &[(String, ProbeResult)]) -> Vec<Verdict> {
    let results: HashMap<String, ProbeResult> = results.iter().cloned().collect();
    judge(checks, controls, &results).into_iter().map(|j| j.verdict).collect()
}

use PolicyAnswer::{Allow, Deny};

#[test]
fn a_denied_probe_passes_only_when_the_target_was_shown_alive() {
    let checks = || vec![check("a", "x", Deny, None), check("b", "z", Allow, None)];
    // x reached something else in the run: its own network works.
    let source = [probe("sx", "x", 81)];
    let denied_and_alive =
        [result("a", Outcome::Timeout), result("b", Outcome::Connected), result("sx", Outcome::Connected)];
    assert_eq!(verdicts(checks(), &source, &denied_and_alive), [Verdict::Pass, Verdict::Pass]);
    let nothing_alive =
        [result("a", Outcome::Timeout), result("b", Outcome::Timeout), result("sx", Outcome::Connected)];
    assert_eq!(verdicts(checks(), &source, &nothing_alive), [Verdict::Inconclusive, Verdict::Inconclusive]);
    // The tool's control pod proves it alive just as well.
    let controls = [probe("k", "netpol-verify-r1", 80), probe("sx", "x", 81)];
    let with_control = [
        result("a", Outcome::Refused),
        result("b", Outcome::Timeout),
        result("k", Outcome::Connected),
        result("sx", Outcome::Connected),
    ];
    assert_eq!(verdicts(checks(), &controls, &with_control), [Verdict::Pass, Verdict::OverBlocked]);
}

#[test]
fn a_denial_from_a_source_that_reached_nothing_proves_nothing() {
    let checks = vec![check("a", "x", Deny, None), check("b", "z", Allow, None)];
    let results: HashMap<String, ProbeResult> =
        [result("a", Outcome::Unreachable), result("b", Outcome::Connected)].into_iter().collect();
    let judged = judge(checks, &[], &results);
    assert_eq!(judged[0].verdict, Verdict::Inconclusive);
    assert!(judged[0].detail.contains("nothing x/client sent got through"), "{}", judged[0].detail);
}

#[test]
fn a_denial_through_a_service_needs_every_endpoint_alive() {
    let mut service = check("a", "x", Deny, None);
    service.backends = vec![probe("e1", "-", 53).target, probe("e2", "-", 5353).target];
    let controls = [probe("e1", "z", 53), probe("e2", "z", 5353), probe("sx", "x", 81), probe("k", "z", 80)];
    let all_alive = [
        result("a", Outcome::Timeout),
        result("e1", Outcome::Connected),
        result("e2", Outcome::Connected),
        result("sx", Outcome::Connected),
        result("k", Outcome::Connected),
    ];
    assert_eq!(verdicts(vec![service.clone()], &controls, &all_alive), [Verdict::Pass]);
    let one_dead: HashMap<String, ProbeResult> =
        all_alive.iter().filter(|(id, _)| id != "e2").cloned().collect();
    let judged = judge(vec![service], &controls, &one_dead);
    assert_eq!(judged[0].verdict, Verdict::Inconclusive);
    assert!(judged[0].detail.contains("endpoint 10.244.0.9:5353/TCP"), "{}", judged[0].detail);
}

#[test]
fn traffic_the_policies_deny_that_gets_through_is_not_enforced() {
    let judged = judge(
        vec![check("a", "x", Deny, None)],
        &[],
        &[result("a", Outcome::Connected)].into_iter().collect(),
    );
    assert_eq!(judged[0].verdict, Verdict::NotEnforced);
    assert_eq!(judged[0].observed, Observed::Allow);
    assert!(judged[0].detail.contains("does not enforce"), "{}", judged[0].detail);
}

#[test]
fn a_probe_that_did_not_run_or_failed_is_never_a_pass() {
    let checks = vec![check("a", "x", Allow, None), check("b", "x", Deny, None), check("c", "z", Deny, None)];
    let results = [result("b", Outcome::Error), result("k", Outcome::Connected)];
    let control = [probe("k", "netpol-verify-r1", 80)];
    assert_eq!(
        verdicts(checks, &control, &results),
        [Verdict::Inconclusive, Verdict::Inconclusive, Verdict::Inconclusive]
    );
}

#[test]
fn an_intent_the_policies_do_not_implement_is_an_intent_gap() {
    let checks = vec![
        check("a", "x", Allow, Some(Intent::Deny)),
        check("b", "x", Deny, Some(Intent::Deny)),
        check("c", "z", Allow, Some(Intent::Allow)),
    ];
    let results =
        [result("a", Outcome::Connected), result("b", Outcome::Timeout), result("c", Outcome::Connected)];
    assert_eq!(verdicts(checks, &[], &results), [Verdict::IntentGap, Verdict::Pass, Verdict::Pass]);
    // Even when the observation proves nothing, the gap is in the policies themselves.
    let checks = vec![check("a", "x", Deny, Some(Intent::Allow))];
    assert_eq!(verdicts(checks, &[], &[]), [Verdict::IntentGap]);
}

#[test]
fn not_enforced_outranks_an_intent_gap_and_says_both() {
    let judged = judge(
        vec![check("a", "x", Deny, Some(Intent::Allow))],
        &[],
        &[result("a", Outcome::Connected)].into_iter().collect(),
    );
    assert_eq!(judged[0].verdict, Verdict::NotEnforced);
    assert!(judged[0].detail.contains("the scenario requires this allowed"), "{}", judged[0].detail);
}

#[test]
fn implementation_defined_cells_are_informational_whatever_happened() {
    let mut cell = check("a", "x", Allow, Some(Intent::Deny));
    cell.implementation_defined = vec!["pod-to-itself"];
    assert_eq!(verdicts(vec![cell.clone()], &[], &[]), [Verdict::Informational]);
    assert_eq!(verdicts(vec![cell], &[], &[result("a", Outcome::Timeout)]), [Verdict::Informational]);
}

#[test]
fn an_unknown_policy_answer_is_never_confident() {
    let checks = vec![check("a", "x", PolicyAnswer::Unknown, None)];
    let results = [result("a", Outcome::Connected)];
    assert_eq!(verdicts(checks, &[], &results), [Verdict::Inconclusive]);
}

#[test]
fn rejections_and_drops_are_both_denials_with_their_kind() {
    let checks = vec![check("a", "x", Deny, None), check("b", "z", Deny, None)];
    let control = [probe("k", "netpol-verify-r1", 80), probe("sx", "x", 81), probe("sz", "z", 81)];
    let results: HashMap<String, ProbeResult> = [
        result("a", Outcome::Refused),
        result("b", Outcome::Timeout),
        result("k", Outcome::Connected),
        result("sx", Outcome::Connected),
        result("sz", Outcome::Connected),
    ]
    .into_iter()
    .collect();
    let judged = judge(checks, &control, &results);
    assert_eq!((judged[0].observed, judged[1].observed), (Observed::Rejected, Observed::Dropped));
    assert!(judged[0].detail.starts_with("was rejected (refused)"), "{}", judged[0].detail);
    assert!(judged[1].detail.contains("target shown alive: reached from netpol-verify-r1/client"));
}
