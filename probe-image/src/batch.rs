//! `batch`: a plan in, every probe run concurrently, one result line per probe out.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::connect::{self, Observation};
use crate::dns;
use crate::net::resolve_target;
use crate::wire::{
    MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, Outcome, Plan, ProbeKind, ProbeResult, ProbeSpec, RoundLine, SCHEMA,
    Summary, SummaryLine, Transport,
};

/// Default number of probes in flight.
pub const DEFAULT_CONCURRENCY: usize = 256;

/// Parses and checks a plan: schema version, unique ids, timeouts in range, a query for each
/// DNS probe. The error names the probe (index and id) and the field.
pub fn parse_plan(text: &str) -> Result<Plan, String> {
    let plan: Plan = serde_json::from_str(text).map_err(|e| format!("invalid plan: {e}"))?;
    if plan.schema != SCHEMA {
        return Err(format!(
            "plan schema {} is not supported: this probe speaks schema {SCHEMA}",
            plan.schema
        ));
    }
    let mut ids = HashSet::new();
    for (i, probe) in plan.probes.iter().enumerate() {
        let at = format!("probes[{i}] (id {:?})", probe.id);
        if !ids.insert(probe.id.as_str()) {
            return Err(format!("invalid plan: {at}.id: used twice"));
        }
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&probe.timeout_ms) {
            return Err(format!(
                "invalid plan: {at}.timeout_ms: {} is not within 1-300000",
                probe.timeout_ms
            ));
        }
        if probe.port == 0 {
            return Err(format!("invalid plan: {at}.port: 0 is not a port"));
        }
        match (probe.kind, &probe.query, &probe.expect_name) {
            (ProbeKind::Dns, None, _) => {
                return Err(format!("invalid plan: {at}.query: a dns probe needs a name to look up"));
            }
            (ProbeKind::Dns, _, Some(_)) => {
                return Err(format!("invalid plan: {at}.expect_name: only connect probes check a name"));
            }
            (ProbeKind::Connect, Some(_), _) => {
                return Err(format!("invalid plan: {at}.query: only dns probes take a query"));
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// Runs every probe, at most `concurrency` at once, writing each result as it completes and
/// the summary last. Every probe gets a line, even one whose task failed.
pub async fn run(plan: Plan, concurrency: usize, out: &mut impl Write) -> std::io::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary { schema: SCHEMA, ..Summary::default() };
    let mut waiting = plan.probes.into_iter();
    let mut running = Running::default();
    for spec in waiting.by_ref().take(concurrency.max(1)) {
        running.start(spec);
    }
    while let Some(result) = running.next().await {
        summary.count(result.outcome);
        serde_json::to_writer(&mut *out, &result)?;
        out.write_all(b"\n")?;
        out.flush()?;
        if let Some(spec) = waiting.next() {
            running.start(spec);
        }
    }
    summary.ms = started.elapsed().as_millis() as u64;
    serde_json::to_writer(&mut *out, &SummaryLine { summary: summary.clone() })?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(summary)
}

/// Runs the whole plan in rounds, a round beginning every `every` (or as soon as the last one
/// ends, when it took longer) until `total` has passed since the start: one [`RoundLine`] per
/// round. Time counts from the process's first moment, so a fresh pod's rounds say how soon
/// after it started each one ran. Returns the number of rounds.
pub async fn repeat(
    plan: Plan,
    concurrency: usize,
    every: Duration,
    total: Duration,
    started: Instant,
    out: &mut impl Write,
) -> std::io::Result<u32> {
    let mut round = 0;
    while started.elapsed() < total {
        let begun = Instant::now();
        let at_ms = begun.saturating_duration_since(started).as_millis() as u64;
        let mut results = Vec::with_capacity(plan.probes.len());
        let mut waiting = plan.probes.iter().cloned();
        let mut running = Running::default();
        for spec in waiting.by_ref().take(concurrency.max(1)) {
            running.start(spec);
        }
        while let Some(result) = running.next().await {
            results.push(result);
            if let Some(spec) = waiting.next() {
                running.start(spec);
            }
        }
        // In the plan's order, so that rounds read alike.
        results.sort_by_key(|r| plan.probes.iter().position(|p| Some(&p.id) == r.id.as_ref()));
        serde_json::to_writer(&mut *out, &RoundLine { round, at_ms, results })?;
        out.write_all(b"\n")?;
        out.flush()?;
        round += 1;
        tokio::time::sleep_until((begun + every).into()).await;
    }
    Ok(round)
}

/// The probes in flight, remembered by task so that one whose task fails still gets its line.
#[derive(Default)]
struct Running {
    tasks: JoinSet<ProbeResult>,
    specs: HashMap<tokio::task::Id, ProbeSpec>,
}

impl Running {
    fn start(&mut self, spec: ProbeSpec) {
        let handle = self.tasks.spawn(probe(spec.clone()));
        self.specs.insert(handle.id(), spec);
    }

    async fn next(&mut self) -> Option<ProbeResult> {
        Some(match self.tasks.join_next_with_id().await? {
            Ok((id, result)) => {
                self.specs.remove(&id);
                result
            }
            Err(e) => {
                let mut result = failed_task(self.specs.remove(&e.id()));
                result.message = Some(format!("the probe did not complete: {e}"));
                result
            }
        })
    }
}

fn failed_task(spec: Option<ProbeSpec>) -> ProbeResult {
    let spec = spec.unwrap_or_else(|| ProbeSpec {
        id: "(unknown)".into(),
        kind: ProbeKind::Connect,
        target: String::new(),
        port: 0,
        protocol: None,
        timeout_ms: 0,
        expect_name: None,
        query: None,
    });
    let observation = Observation {
        outcome: Outcome::Error,
        name: None,
        message: None,
        elapsed: Duration::ZERO,
        attempts: None,
    };
    result(&spec, observation, None)
}

/// Runs one probe of a plan.
pub async fn probe(spec: ProbeSpec) -> ProbeResult {
    let limit = Duration::from_millis(spec.timeout_ms);
    let ip = match resolve_target(&spec.target).await {
        Ok(ip) => ip,
        Err(message) => {
            let observation = Observation {
                outcome: Outcome::Error,
                name: None,
                message: Some(message),
                elapsed: Duration::ZERO,
                attempts: None,
            };
            return result(&spec, observation, None);
        }
    };
    let addr = SocketAddr::new(ip, spec.port);
    match (spec.kind, spec.transport()) {
        (ProbeKind::Connect, Transport::Tcp) => {
            result(&spec, connect::tcp(addr, limit, spec.expect_name.as_deref()).await, None)
        }
        (ProbeKind::Connect, Transport::Udp) => {
            result(&spec, connect::udp(addr, limit, spec.expect_name.as_deref()).await, None)
        }
        (ProbeKind::Dns, transport) => {
            let query = spec.query.as_deref().unwrap_or_default();
            let seen = dns::query(addr, query, transport, limit).await;
            let rcode = seen.reply.map(|r| r.rcode);
            result(&spec, seen.observation, rcode)
        }
    }
}

/// A result line for `spec`.
pub fn result(spec: &ProbeSpec, observation: Observation, rcode: Option<String>) -> ProbeResult {
    ProbeResult {
        id: Some(spec.id.clone()),
        target: spec.target.clone(),
        port: spec.port,
        protocol: spec.transport(),
        query: spec.query.clone(),
        outcome: observation.outcome,
        name: observation.name,
        ms: observation.elapsed.as_millis() as u64,
        message: observation.message,
        attempts: observation.attempts,
        rcode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(probes: &str) -> String {
        format!(r#"{{"schema": 1, "probes": [{probes}]}}"#)
    }

    #[tokio::test]
    async fn a_repeating_batch_writes_a_round_per_interval_in_plan_order() {
        let text = plan(
            r#"{"id": "b", "target": "not an address", "port": 80, "timeout_ms": 5},
               {"id": "a", "target": "also not", "port": 81, "timeout_ms": 5}"#,
        );
        let plan = parse_plan(&text).expect("valid");
        let mut out = Vec::new();
        let started = Instant::now();
        let every = Duration::from_millis(20);
        let rounds =
            repeat(plan, 8, every, Duration::from_millis(100), started, &mut out).await.expect("written");
        assert!((4..=6).contains(&rounds), "{rounds} rounds in 100 ms every 20 ms");
        let lines: Vec<RoundLine> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a round line"))
            .collect();
        assert_eq!(lines.len(), rounds as usize);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.round, i as u32);
            let ids: Vec<_> = line.results.iter().map(|r| r.id.as_deref().unwrap_or_default()).collect();
            assert_eq!(ids, ["b", "a"]);
            assert!(line.results.iter().all(|r| r.outcome == Outcome::Error));
        }
        let at: Vec<u64> = lines.iter().map(|l| l.at_ms).collect();
        assert!(at.windows(2).all(|w| w[1] >= w[0] + 19), "{at:?}");
        assert!(at.last().is_some_and(|&t| t < 100), "{at:?}");
    }

    #[test]
    fn plans_are_checked_probe_by_probe() {
        let ok = r#"{"id": "a", "target": "10.0.0.1", "port": 80, "timeout_ms": 1000}"#;
        assert!(parse_plan(&plan(ok)).is_ok());
        let cases = [
            (r#"{"schema": 2, "probes": []}"#.to_string(), "plan schema 2 is not supported"),
            (plan(&format!("{ok}, {ok}")), "probes[1] (id \"a\").id: used twice"),
            (
                plan(r#"{"id": "a", "target": "x", "port": 80, "timeout_ms": 0}"#),
                "probes[0] (id \"a\").timeout_ms",
            ),
            (plan(r#"{"id": "a", "target": "x", "port": 0, "timeout_ms": 5}"#), ".port: 0 is not a port"),
            (
                plan(r#"{"id": "a", "kind": "dns", "target": "x", "port": 53, "timeout_ms": 5}"#),
                "needs a name",
            ),
            (
                plan(r#"{"id": "a", "target": "x", "port": 80, "timeout_ms": 5, "query": "q"}"#),
                "only dns probes",
            ),
            ("not json".to_string(), "invalid plan"),
        ];
        for (text, expected) in cases {
            let err = parse_plan(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
