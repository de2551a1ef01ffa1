//! The orchestrator↔probe contract: the `batch` plan going in, the result lines coming out.
//! One definition, compiled into both sides. Documented in docs/probe.md; bump [`SCHEMA`] on
//! any change an older reader would misread.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of this contract. A plan carries it; a probe refuses a plan of another version.
pub const SCHEMA: u32 = 1;

/// Shortest and longest timeout a probe accepts.
pub const MIN_TIMEOUT_MS: u64 = 1;
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// What `netpol-probe batch` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Must equal [`SCHEMA`].
    pub schema: u32,
    pub probes: Vec<ProbeSpec>,
}

/// One probe of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Chosen by the orchestrator; echoed in the result so it can match them up.
    pub id: String,
    #[serde(default)]
    pub kind: ProbeKind,
    /// An IP address (or a name the probe resolves through its DNS server).
    pub target: String,
    pub port: u16,
    /// Default: TCP for `connect`, UDP for `dns` (as on the command line). See [`Self::transport`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Transport>,
    pub timeout_ms: u64,
    /// For `connect`: the identity the server must answer with, or the probe is an `error`
    /// (`wrong-peer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_name: Option<String>,
    /// For `dns`: the name to look up (the server is `target:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl ProbeSpec {
    /// The transport this probe uses, defaults applied.
    pub fn transport(&self) -> Transport {
        match (self.protocol, self.kind) {
            (Some(transport), _) => transport,
            (None, ProbeKind::Connect) => Transport::Tcp,
            (None, ProbeKind::Dns) => Transport::Udp,
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// Open a TCP connection, or exchange a UDP datagram, with a `netpol-probe serve`.
    #[default]
    Connect,
    /// Send one DNS query.
    Dns,
}

/// The transport a probe uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        })
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// TCP handshake completed; or a UDP reply, or a DNS response (NXDOMAIN included), arrived.
    Connected,
    /// TCP RST, or ICMP port unreachable.
    Refused,
    /// No route, or ICMP host/network unreachable.
    Unreachable,
    /// Silence until the timeout.
    Timeout,
    /// Anything else, with a message (a wrong peer, a garbled reply, a local failure).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Connected, Outcome::Refused, Outcome::Unreachable, Outcome::Timeout, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// One result line (also what `connect` and `dns` print).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The plan's id (batch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub target: String,
    pub port: u16,
    pub protocol: Transport,
    /// For DNS probes: the name looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub outcome: Outcome,
    /// The identity the server answered with (connect), if any.
    pub name: Option<String>,
    /// Milliseconds from the first packet to the outcome.
    pub ms: u64,
    /// Why, for `error` (and any outcome worth a word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// UDP: datagrams sent (up to 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// DNS: the response code (`NoError`, `NXDomain`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
}

impl ProbeResult {
    /// Whether the probe reached its target (and, when asked, the right one).
    pub fn reached(&self) -> bool {
        self.outcome == Outcome::Connected
    }
}

/// The last line of a batch: `{"summary": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryLine {
    pub summary: Summary,
}

/// Counts over a whole batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub schema: u32,
    pub total: usize,
    pub reached: usize,
    pub not_reached: usize,
    pub connected: usize,
    pub refused: usize,
    pub unreachable: usize,
    pub timeout: usize,
    pub error: usize,
    /// Wall time of the whole batch.
    pub ms: u64,
}

impl Summary {
    pub fn count(&mut self, outcome: Outcome) {
        self.total += 1;
        match outcome {
            Outcome::Connected => self.connected += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Unreachable => self.unreachable += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Error => self.error += 1,
        }
        if outcome == Outcome::Connected {
            self.reached += 1;
        } else {
            self.not_reached += 1;
        }
    }
}

/// A line of batch output, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchLine {
    Summary(SummaryLine),
    Result(ProbeResult),
}

/// A round of a repeating batch (`batch --every`): every probe's result, in the plan's order,
/// and when the round began, in ms from the prober's first moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundLine {
    pub round: u32,
    pub at_ms: u64,
    pub results: Vec<ProbeResult>,
}

/// The longest a repeating batch may run: a prober always ends by itself.
pub const MAX_REPEAT_MS: u64 = 600_000;

/// What `serve` answers: over TCP on accept, and over UDP with the datagram's payload echoed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_parses_with_defaults_and_rejects_unknown_fields() {
        let plan: Plan = serde_json::from_str(
            r#"{"schema": 1, "probes": [{"id": "p1", "target": "10.0.0.1", "port": 80, "timeout_ms": 1000}]}"#,
        )
        .expect("valid plan");
        assert_eq!(plan.probes[0].kind, ProbeKind::Connect);
        assert_eq!(plan.probes[0].transport(), Transport::Tcp);
        let dns: ProbeSpec = serde_json::from_str(
            r#"{"id": "d", "kind": "dns", "target": "10.96.0.10", "port": 53, "timeout_ms": 1000, "query": "a"}"#,
        )
        .expect("valid probe");
        assert_eq!(dns.transport(), Transport::Udp, "DNS defaults to UDP, as on the command line");
        let err = serde_json::from_str::<Plan>(
            r#"{"schema": 1, "probes": [{"id": "p1", "target": "x", "port": 80, "timeout_ms": 1, "tiemout": 2}]}"#,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("tiemout"), "{err}");
    }

    #[test]
    fn results_and_the_summary_tell_themselves_apart() {
        let result = r#"{"id":"p1","target":"10.0.0.1","port":80,"protocol":"TCP","outcome":"connected","name":"x/a","ms":2}"#;
        assert!(matches!(serde_json::from_str::<BatchLine>(result), Ok(BatchLine::Result(r)) if r.reached()));
        let mut summary = Summary { schema: SCHEMA, ..Summary::default() };
        summary.count(Outcome::Timeout);
        let line = serde_json::to_string(&SummaryLine { summary }).expect("serializes");
        assert!(
            matches!(serde_json::from_str::<BatchLine>(&line), Ok(BatchLine::Summary(s)) if s.summary.timeout == 1)
        );
    }

    #[test]
    fn outcomes_are_lowercase_words() {
        for outcome in Outcome::ALL {
            assert_eq!(serde_json::to_string(&outcome).expect("ser"), format!("\"{}\"", outcome.as_str()));
        }
    }
}
