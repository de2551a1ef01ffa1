//! The judge: intent, policy and observation in, one verdict per check out. Pure.
//!
//! A denied probe proves enforcement only if both ends were shown alive in the same run: some
//! probe to the same address, port and protocol got through (from a source the policies
//! allow, the tool's control pod, or the node) — for a Service, to each of its endpoints too —
//! and some probe from the same source got through to anywhere. Without that, a denial looks
//! like a dead target or a source with no network, and the verdict is `inconclusive`. A probe
//! without a result never passes.

use std::collections::{HashMap, HashSet};

use netpol_probe::wire::{Outcome, ProbeResult};

use super::check::{Check, Judged, Observed, PolicyAnswer, Probe, TargetKey, Verdict};
use crate::scenario::Intent;

/// Judges every check. `controls` are the extra probes made only to show targets alive;
/// `results` holds what came back, by probe id.
pub fn judge(checks: Vec<Check>, controls: &[Probe], results: &HashMap<String, ProbeResult>) -> Vec<Judged> {
    let probes = || checks.iter().map(|c| &c.probe).chain(controls);
    let evidence =
        Evidence { targets: alive_targets(probes(), results), sources: alive_sources(probes(), results) };
    checks
        .into_iter()
        .map(|check| {
            let result = results.get(&check.probe.id);
            judge_one(check, result, &evidence)
        })
        .collect()
}

/// What the run showed alive.
struct Evidence {
    /// Targets some probe reached, and who reached them.
    targets: HashMap<TargetKey, String>,
    /// Probe pods that reached something.
    sources: HashSet<crate::model::ObjectKey>,
}

/// The probe pods that got a probe through to anywhere.
pub fn alive_sources<'p>(
    probes: impl Iterator<Item = &'p Probe>,
    results: &HashMap<String, ProbeResult>,
) -> HashSet<crate::model::ObjectKey> {
    probes
        .filter(|p| results.get(&p.id).is_some_and(ProbeResult::reached))
        .map(|p| p.client.clone())
        .collect()
}

/// For each target some probe reached: who reached it.
pub fn alive_targets<'p>(
    probes: impl Iterator<Item = &'p Probe>,
    results: &HashMap<String, ProbeResult>,
) -> HashMap<TargetKey, String> {
    let mut alive = HashMap::new();
    for probe in probes {
        if results.get(&probe.id).is_some_and(ProbeResult::reached) {
            let who = if probe.client.namespace.is_empty() {
                format!("the {} (NetworkPolicy always allows it)", probe.client.name)
            } else {
                probe.client.to_string()
            };
            alive.entry(probe.target.clone()).or_insert(who);
        }
    }
    alive
}

/// What a result means in the verdict vocabulary.
pub fn observed(result: Option<&ProbeResult>) -> Observed {
    match result.map(|r| r.outcome) {
        None => Observed::NotRun,
        Some(Outcome::Connected) => Observed::Allow,
        Some(Outcome::Timeout) => Observed::Dropped,
        Some(Outcome::Refused | Outcome::Unreachable) => Observed::Rejected,
        Some(Outcome::Error) => Observed::Error,
    }
}

/// How the policy compares with the observation, before the intent is considered.
enum Consistency {
    Consistent(String),
    NotEnforced(String),
    OverBlocked(String),
    Unproven(String),
}

fn judge_one(check: Check, result: Option<&ProbeResult>, evidence: &Evidence) -> Judged {
    let observed = observed(result);
    let ms = result.map(|r| r.ms);
    let seen = match result {
        None => "the probe did not run (no result came back)".to_string(),
        Some(r) => outcome_text(r),
    };
    let done = |verdict, detail: String| Judged { check: check.clone(), observed, verdict, detail, ms };

    if !check.implementation_defined.is_empty() {
        let rules = check.implementation_defined.join(", ");
        return done(
            Verdict::Informational,
            format!("{seen}; the spec leaves this to the CNI ({rules}), so it is reported, not judged"),
        );
    }
    let dead_backend = check.backends.iter().find(|b| !evidence.targets.contains_key(b));
    let proof = evidence.targets.get(&check.probe.target).filter(|_| dead_backend.is_none());
    let source_alive = evidence.sources.contains(&check.probe.client);
    let alive_text = |who: &str| format!("target shown alive: reached from {who}");
    let consistency = match (check.policy, observed) {
        (PolicyAnswer::Unknown, _) => Consistency::Unproven(format!(
            "{seen}; the stored NetworkPolicies do not settle this connection ({})",
            check.because.first().map_or("objects the engine does not model may apply", String::as_str)
        )),
        (_, Observed::NotRun | Observed::Error) => Consistency::Unproven(seen.clone()),
        (PolicyAnswer::Allow, Observed::Allow) => Consistency::Consistent(seen.clone()),
        (PolicyAnswer::Deny, Observed::Allow) => Consistency::NotEnforced(format!(
            "the stored policies deny this, but it {seen}: the network does not enforce them"
        )),
        (PolicyAnswer::Allow, _) => match proof {
            Some(who) if *who != check.probe.client.to_string() => Consistency::OverBlocked(format!(
                "the stored policies allow this, but it {seen}; {}",
                alive_text(who)
            )),
            _ => Consistency::Unproven(format!(
                "{seen}, and no probe reached {} on {}/{}: a dead target looks the same",
                check.to, check.probe.target.port, check.probe.target.protocol
            )),
        },
        (PolicyAnswer::Deny, _) => match proof {
            Some(_) if !source_alive => Consistency::Unproven(format!(
                "{seen}, but nothing {} sent got through in this run: a denial cannot be told from a \
                 source with no network",
                check.probe.client
            )),
            Some(who) => Consistency::Consistent(format!("{seen}; {}", alive_text(who))),
            None if dead_backend.is_some() => Consistency::Unproven(format!(
                "{seen}, and no probe reached the Service's endpoint {}: a denial cannot be told from \
                 a dead endpoint",
                dead_backend.map_or(String::new(), |b| format!("{}:{}/{}", b.address, b.port, b.protocol))
            )),
            None => Consistency::Unproven(format!(
                "{seen}, but no probe reached {} on {}/{} (no allowed source or control could): \
                 a denial cannot be told from a dead target",
                check.to, check.probe.target.port, check.probe.target.protocol
            )),
        },
    };
    let gap = match check.intent {
        Some(Intent::Allow) if check.policy == PolicyAnswer::Deny => Some("allowed"),
        Some(Intent::Deny) if check.policy == PolicyAnswer::Allow => Some("denied"),
        _ => None,
    };
    let gap_text = |what: &str| {
        format!(
            "the scenario requires this {what}, but the stored policies {} it",
            if what == "allowed" { "deny" } else { "allow" }
        )
    };
    match (consistency, gap) {
        (Consistency::NotEnforced(detail), gap) => {
            done(Verdict::NotEnforced, with_gap(detail, gap.map(gap_text)))
        }
        (Consistency::OverBlocked(detail), gap) => {
            done(Verdict::OverBlocked, with_gap(detail, gap.map(gap_text)))
        }
        (Consistency::Consistent(detail) | Consistency::Unproven(detail), Some(what)) => {
            done(Verdict::IntentGap, format!("{}; observed: {detail}", gap_text(what)))
        }
        (Consistency::Consistent(detail), None) => done(Verdict::Pass, detail),
        (Consistency::Unproven(detail), None) => done(Verdict::Inconclusive, detail),
    }
}

fn with_gap(detail: String, gap: Option<String>) -> String {
    match gap {
        Some(gap) => format!("{detail}; also, {gap}"),
        None => detail,
    }
}

/// `connected in 3 ms`, `was dropped (timeout after 2000 ms)`, `was rejected (refused)`.
fn outcome_text(result: &ProbeResult) -> String {
    let message = result.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
    match result.outcome {
        Outcome::Connected => format!("connected in {} ms", result.ms),
        Outcome::Timeout => format!("was dropped (timeout after {} ms)", result.ms),
        Outcome::Refused => "was rejected (refused)".to_string(),
        Outcome::Unreachable => format!("was rejected (unreachable{message})"),
        Outcome::Error => format!("failed to run{message}"),
    }
}

#[cfg(test)]
mod tests;
