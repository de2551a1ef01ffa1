//! Scenarios: what a run probes, and what the user requires of it (docs/scenarios.md).
//!
//! A scenario is a YAML document: a name, a description, and probe groups — sources (the run's
//! probe clients in chosen namespaces), a target (the run's probe servers, existing pods, an IP
//! address, cluster DNS), ports, and an intent (`allow`, `deny`, or `policy`). The `canary` is
//! a scenario of its own kind: steps in code, options in YAML. Built-ins ship in scenarios/ and
//! are compiled in. Pure: [`load`] works on text; [`read`] is the only I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};
use serde::Deserialize;

use crate::engine::Protocol;
use crate::input::tree::{self, FieldPath};

/// The scenario API version this build reads.
pub const API_VERSION: &str = "netpol-verify.io/v1alpha1";

/// The scenarios shipped in scenarios/, by name.
pub const BUILT_IN: [(&str, &str); 6] = [
    ("canary", include_str!("../../scenarios/canary.yaml")),
    ("matrix", include_str!("../../scenarios/matrix.yaml")),
    ("dns", include_str!("../../scenarios/dns.yaml")),
    ("metadata", include_str!("../../scenarios/metadata.yaml")),
    ("default-deny", include_str!("../../scenarios/default-deny.yaml")),
    ("gitops", include_str!("../../scenarios/gitops.yaml")),
];

/// What `run` does without `--scenario`.
pub const DEFAULT_SET: [&str; 4] = ["canary", "matrix", "dns", "metadata"];

/// A scenario file that cannot be used. One line each; the CLI exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {message}")]
    Read { path: String, message: String },
    /// The text is not YAML, or a field is missing, unknown or wrong.
    #[error("{file}:{line}: {field}{message}")]
    Invalid {
        file: String,
        line: u64,
        /// `field: ` (with the separator) or empty when the whole document is to blame.
        field: String,
        message: String,
    },
    /// `--scenario NAME` names neither a built-in nor a file.
    #[error("no scenario {0:?}: built-ins are {built_in}; or give a path to a scenario file", built_in = built_in_names())]
    Unknown(String),
    /// Two scenarios share a name.
    #[error("two scenarios are named {0:?}: scenario names must be unique in a run")]
    Duplicate(String),
}

fn built_in_names() -> String {
    BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A scenario, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub body: Body,
}

/// What a scenario does.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Groups(Vec<Group>),
    Canary(CanaryOptions),
}

/// The canary's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryOptions {
    /// How long to wait for a policy to be enforced.
    pub enforce_timeout: Duration,
    /// How long a fresh pod behind an egress policy probes from its start.
    pub pod_start_window: Duration,
}

/// One probe group: these sources to this target on these ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub from: Namespaces,
    pub to: Target,
    /// Empty for cluster DNS (its ports come from the kube-dns Service).
    pub ports: Vec<(u16, Protocol)>,
    pub intent: Intent,
}

/// What a scenario requires of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Allow,
    Deny,
    /// Whatever the stored policies say: no requirement of its own.
    Policy,
}

impl Intent {
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Allow => "allow",
            Intent::Deny => "deny",
            Intent::Policy => "policy",
        }
    }
}

/// A choice of namespaces among those in the run's scope. Both parts optional; both given
/// means both must match; neither means every namespace in scope.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    pub names: Option<Vec<String>>,
    pub selector: Option<Selector>,
    /// The selector as written, for equality and display.
    selector_text: Option<String>,
}

impl PartialEq for Namespaces {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.selector_text == other.selector_text
    }
}

impl Namespaces {
    /// Whether a namespace with this name and these labels is chosen.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.as_ref().is_none_or(|names| names.iter().any(|n| n == name))
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// Where a group's probes go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The run's probe servers in these namespaces.
    ProbeServers { namespaces: Namespaces, relation: Relation },
    /// Existing pods, at their IPs (they may not listen: controls decide).
    Pods { namespaces: Namespaces, selector: Selector, selector_text: String },
    /// An address outside the pods (a metadata service, a node-local cache).
    Ip(IpAddr),
    /// Cluster DNS, with DNS queries.
    ClusterDns(DnsVia),
}

/// Which probe servers, relative to the source's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    Any,
    Same,
    Other,
}

/// How cluster DNS is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DnsVia {
    /// The kube-dns Service's ClusterIP.
    Service,
    /// Each DNS pod at its own address and target port.
    Pods,
    /// NodeLocal DNSCache at 169.254.20.10, where it runs.
    NodeLocal,
}

// ---- the file format (serde), turned into the types above by `validate` ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScenario {
    api_version: String,
    kind: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    groups: Option<Vec<RawGroup>>,
    #[serde(default)]
    canary: Option<RawCanary>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCanary {
    #[serde(default)]
    enforce_timeout: Option<String>,
    #[serde(default)]
    pod_start_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGroup {
    name: String,
    #[serde(default)]
    from: Option<RawNamespaces>,
    to: RawTarget,
    #[serde(default)]
    ports: Vec<PortText>,
    intent: Intent,
}

/// `80` or `"80/TCP"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortText {
    Number(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNamespaces {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    selector: Option<LabelSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTarget {
    #[serde(default)]
    probe_servers: Option<RawProbeServers>,
    #[serde(default)]
    pods: Option<RawPods>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    cluster_dns: Option<RawClusterDns>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbeServers {
    #[serde(default)]
    namespaces: Option<RawNamespaces>,
    #[serde(default)]
    relation: Option<Relation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPods {
    #[serde(default)]
    namespaces: Option<RawNamespaces>,
    selector: LabelSelector,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClusterDns {
    via: DnsVia,
}

/// Reads scenarios named on the command line: a built-in's name, or a file.
pub fn resolve(names: &[String]) -> Result<Vec<Scenario>, ScenarioError> {
    let mut scenarios: Vec<Scenario> = Vec::new();
    let defaults: Vec<String> = DEFAULT_SET.iter().map(|s| s.to_string()).collect();
    let names = if names.is_empty() { &defaults } else { names };
    for name in names {
        let scenario = match BUILT_IN.iter().find(|(n, _)| n == name) {
            Some((n, text)) => load(&format!("<built-in {n}>"), text)?,
            None if Path::new(name).exists() => read(Path::new(name))?,
            None => return Err(ScenarioError::Unknown(name.clone())),
        };
        if scenarios.iter().any(|s| s.name == scenario.name) {
            return Err(ScenarioError::Duplicate(scenario.name));
        }
        scenarios.push(scenario);
    }
    Ok(scenarios)
}

/// Reads one scenario file.
pub fn read(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScenarioError::Read { path: path.display().to_string(), message: e.to_string() })?;
    load(&path.display().to_string(), &text)
}

/// Parses and validates one scenario document; `file` names it in errors.
pub fn load(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let invalid = |line: u64, field: &str, message: String| ScenarioError::Invalid {
        file: file.into(),
        line,
        field: if field.is_empty() { String::new() } else { format!("{field}: ") },
        message,
    };
    let documents = tree::parse_documents(text).map_err(|e| invalid(e.line, "", e.message))?;
    let [document] = documents.as_slice() else {
        return Err(invalid(1, "", format!("a scenario file holds one document, not {}", documents.len())));
    };
    let raw: RawScenario = serde_path_to_error::deserialize(document.to_json()).map_err(|err| {
        let path = FieldPath::from_serde(err.path());
        invalid(document.locate(&path).line, &path.to_string(), err.into_inner().to_string())
    })?;
    let at = |field: &str| document.locate(&FieldPath::parse(field)).line;
    let fail = |field: &str, message: String| invalid(at(field), field, message);

    if raw.api_version != API_VERSION {
        return Err(fail("apiVersion", format!("must be {API_VERSION}, not {:?}", raw.api_version)));
    }
    if raw.kind != "Scenario" {
        return Err(fail("kind", format!("must be Scenario, not {:?}", raw.kind)));
    }
    if crate::validate::NameRule::Label.check(&raw.name).is_err() {
        return Err(fail("name", "lowercase letters, digits and '-', at most 63 characters".into()));
    }
    let body = match (raw.groups, raw.canary) {
        (Some(_), Some(_)) => {
            return Err(fail("canary", "a scenario has either groups or canary, not both".into()));
        }
        (None, None) => return Err(fail("", "a scenario needs groups (or canary)".into())),
        (None, Some(canary)) => Body::Canary(CanaryOptions {
            enforce_timeout: duration(canary.enforce_timeout.as_deref(), Duration::from_secs(20))
                .map_err(|m| fail("canary.enforceTimeout", m))?,
            pod_start_window: duration(canary.pod_start_window.as_deref(), Duration::from_secs(3))
                .map_err(|m| fail("canary.podStartWindow", m))?,
        }),
        (Some(groups), None) => {
            if groups.is_empty() {
                return Err(fail("groups", "needs at least one group".into()));
            }
            let mut valid: Vec<Group> = Vec::new();
            for (i, group) in groups.into_iter().enumerate() {
                let field = format!("groups[{i}]");
                let group = validate_group(group, &field).map_err(|(f, m)| fail(&f, m))?;
                if valid.iter().any(|g| g.name == group.name) {
                    return Err(fail(
                        &format!("{field}.name"),
                        format!("another group is named {:?}", group.name),
                    ));
                }
                valid.push(group);
            }
            Body::Groups(valid)
        }
    };
    Ok(Scenario { name: raw.name, description: raw.description, body })
}

fn duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let Some(text) = text else { return Ok(default) };
    let value = netpol_probe::text::parse_duration(text)?;
    if value.is_zero() || value > Duration::from_secs(600) {
        return Err("must be more than 0 and at most 10m".into());
    }
    Ok(value)
}

type FieldFailure = (String, String);

fn validate_group(raw: RawGroup, field: &str) -> Result<Group, FieldFailure> {
    let fail = |sub: &str, message: &str| (format!("{field}.{sub}"), message.to_string());
    if raw.name.is_empty() {
        return Err(fail("name", "must not be empty"));
    }
    let from = namespaces(raw.from, &format!("{field}.from"))?;
    let t = raw.to;
    let given = [t.probe_servers.is_some(), t.pods.is_some(), t.ip.is_some(), t.cluster_dns.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(fail("to", "needs exactly one of probeServers, pods, ip, clusterDns"));
    }
    let to = if let Some(servers) = t.probe_servers {
        Target::ProbeServers {
            namespaces: namespaces(servers.namespaces, &format!("{field}.to.probeServers.namespaces"))?,
            relation: servers.relation.unwrap_or(Relation::Any),
        }
    } else if let Some(pods) = t.pods {
        let selector_text = serde_json::to_string(&pods.selector).unwrap_or_default();
        Target::Pods {
            namespaces: namespaces(pods.namespaces, &format!("{field}.to.pods.namespaces"))?,
            selector: Selector::try_from(pods.selector)
                .map_err(|e| fail("to.pods.selector", &e.to_string()))?,
            selector_text,
        }
    } else if let Some(ip) = t.ip {
        Target::Ip(ip.parse().map_err(|_| fail("to.ip", &format!("{ip:?} is not an IP address")))?)
    } else if let Some(dns) = t.cluster_dns {
        Target::ClusterDns(dns.via)
    } else {
        return Err(fail("to", "needs a target"));
    };
    let mut ports = Vec::new();
    for (i, text) in raw.ports.iter().enumerate() {
        let text = match text {
            PortText::Number(n) => n.to_string(),
            PortText::Text(t) => t.clone(),
        };
        let port = parse_port(&text).map_err(|m| fail(&format!("ports[{i}]"), &m))?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    match (&to, ports.is_empty()) {
        (Target::ClusterDns(_), false) => {
            return Err(fail("ports", "cluster DNS ports come from the kube-dns Service: leave ports out"));
        }
        (Target::ClusterDns(_), true) => {}
        (_, true) => return Err(fail("ports", "needs at least one port, e.g. [80/TCP]")),
        (_, false) => {}
    }
    if ports.iter().any(|(_, protocol)| *protocol == Protocol::Sctp) {
        return Err(fail("ports", "SCTP cannot be probed (the probe speaks TCP and UDP)"));
    }
    Ok(Group { name: raw.name, from, to, ports, intent: raw.intent })
}

fn namespaces(raw: Option<RawNamespaces>, field: &str) -> Result<Namespaces, FieldFailure> {
    let raw = raw.unwrap_or_default();
    if raw.names.as_ref().is_some_and(Vec::is_empty) {
        return Err((format!("{field}.names"), "an empty list chooses nothing: leave it out for all".into()));
    }
    let selector_text = raw.selector.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default());
    let selector = raw
        .selector
        .map(Selector::try_from)
        .transpose()
        .map_err(|e| (format!("{field}.selector"), e.to_string()))?;
    Ok(Namespaces { names: raw.names, selector, selector_text })
}

/// `80`, `80/TCP`, `53/udp`.
pub fn parse_port(text: &str) -> Result<(u16, Protocol), String> {
    let (number, protocol) = match text.split_once('/') {
        Some((number, protocol)) => (number, protocol.parse::<Protocol>()?),
        None => (text, Protocol::Tcp),
    };
    match number.parse::<u16>() {
        Ok(0) | Err(_) => {
            Err(format!("{text:?} is not a port: write 1-65535 with /TCP or /UDP, e.g. 80/TCP"))
        }
        Ok(port) => Ok((port, protocol)),
    }
}

#[cfg(test)]
mod tests;
