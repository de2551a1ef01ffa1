//! The run's planner: scenarios in, checks (with the engine's answer for each) and control
//! probes out, grouped into one batch per client pod. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::{Selector, SelectorExt};
use netpol_probe::wire::{self, Transport};

use super::check::{Check, PolicyAnswer, Probe, TargetKey};
use crate::engine::{ContainerPort, Endpoint, Engine, Protocol};
use crate::model::{Note, ObjectKey, PodId, key_of};
use crate::report::reason::{because, policy_list};
use crate::scenario::{Body, DnsVia, Group, Intent, Namespaces, Relation, Scenario, Target};

/// The name DNS probes look up. Any answer counts, NXDOMAIN included.
pub const DNS_QUERY: &str = "kubernetes.default.svc.cluster.local.";
/// Where NodeLocal DNSCache listens.
pub const NODE_LOCAL_DNS: &str = "169.254.20.10";

/// The probe pods of a run.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// Namespaces in scope, sorted.
    pub namespaces: Vec<String>,
    /// The clients by namespace: one per namespace in scope (two with `--spread`).
    pub clients: Vec<(String, ObjectKey)>,
    /// One server per namespace in scope.
    pub servers: BTreeMap<String, ObjectKey>,
    /// The tool's own vantage point, in its own namespace.
    pub control: Option<ObjectKey>,
    /// `--mimic-workloads`: probe servers wearing a workload's labels, by namespace; they are
    /// probed on their own (the workload's) ports.
    pub mimics: Vec<(String, ObjectKey)>,
}

/// What the planner made of the scenarios.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    pub checks: Vec<Check>,
    /// Probes from the control pod, made only to show targets alive.
    pub controls: Vec<Probe>,
    /// Probes from the pods' node (always allowed by NetworkPolicy), one per target.
    pub node_controls: Vec<Probe>,
    pub notes: Vec<Note>,
}

/// The ports probe servers (and the control pod) listen on: 80/TCP, named `http` so policies
/// naming that port select it, and every port a scenario probes them on.
pub fn server_ports(scenarios: &[Scenario]) -> Vec<ContainerPort> {
    let mut ports = BTreeSet::from([(80, Protocol::Tcp)]);
    for scenario in scenarios {
        let Body::Groups(groups) = &scenario.body else { continue };
        for group in groups {
            if matches!(group.to, Target::ProbeServers { .. }) {
                ports.extend(group.ports.iter().copied());
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, protocol)| ContainerPort {
            port,
            protocol,
            name: (port == 80 && protocol == Protocol::Tcp).then(|| "http".to_string()),
        })
        .collect()
}

/// One place a group's probes go, resolved against the snapshot.
#[derive(Clone)]
struct Destination {
    to: String,
    to_namespace: Option<String>,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
    dns: bool,
    expect_name: Option<String>,
    /// The pods (and their port) that answer: policies are evaluated against them. Empty: an
    /// address outside the pods.
    endpoints: Vec<(PodId, u16)>,
}

impl Destination {
    /// A Service's endpoints as targets of their own (empty when `self` is a pod or address).
    fn backends(&self, engine: &Engine<'_>) -> Vec<TargetKey> {
        let direct = self.endpoints.iter().any(|(pod, _)| engine.pod_ip(*pod) == Some(self.address));
        if direct {
            return Vec::new();
        }
        self.endpoints
            .iter()
            .filter_map(|&(pod, port)| {
                let address = engine.pod_ip(pod)?;
                Some(TargetKey { address, port, protocol: self.protocol, dns: self.dns })
            })
            .collect()
    }
}

/// Plans every group of every scenario.
pub fn plan(engine: &Engine<'_>, scenarios: &[Scenario], deployment: &Deployment) -> Planned {
    with_controls(engine, deployment, plan_checks(engine, scenarios, deployment))
}

/// The checks alone (with the notes on what was skipped), no controls yet.
pub fn plan_checks(engine: &Engine<'_>, scenarios: &[Scenario], deployment: &Deployment) -> Planned {
    let mut planned = Planned::default();
    for scenario in scenarios {
        let Body::Groups(groups) = &scenario.body else { continue };
        for group in groups {
            plan_group(engine, scenario, group, deployment, &mut planned);
        }
    }
    for (i, check) in planned.checks.iter_mut().enumerate() {
        check.probe.id = format!("c{}", i + 1);
    }
    planned
}

/// `planned`'s checks with their positive controls, as `engine`'s policies allow them (the
/// stored policies, or those and the run's control policies).
pub fn with_controls(engine: &Engine<'_>, deployment: &Deployment, mut planned: Planned) -> Planned {
    add_controls(engine, deployment, &mut planned);
    add_source_controls(engine, deployment, &mut planned);
    let mut seen = BTreeSet::new();
    planned.notes.retain(|note| seen.insert(note.0.clone()));
    planned
}

/// For each client none of whose checks the policies allow, one probe they do allow, so that
/// a denial from it is not mistaken for a source with no network: its own namespace's
/// server, another server, the control pod, or a cluster DNS pod, whichever the policies let
/// it reach.
fn add_source_controls(engine: &Engine<'_>, deployment: &Deployment, planned: &mut Planned) {
    let dns_pods = dns_pods(engine);
    for (namespace, client) in &deployment.clients {
        match source_control(engine, deployment, &planned.checks, &dns_pods, namespace, client) {
            SourceControl::NotNeeded => {}
            SourceControl::Probe(target, expect_name) => planned.controls.push(Probe {
                id: format!("s{}", planned.controls.len() + 1),
                client: client.clone(),
                query: target.dns.then(|| DNS_QUERY.to_string()),
                target,
                expect_name,
            }),
            SourceControl::Unreachable => planned.notes.push(Note(format!(
                "{client} may reach none of the run's pods or cluster DNS: its denied checks cannot \
                 show that it can send at all, and are inconclusive"
            ))),
        }
    }
}

/// The cluster DNS pods (and their UDP port), for source controls.
fn dns_pods(engine: &Engine<'_>) -> Vec<(PodId, u16)> {
    cluster_dns(engine, DnsVia::Pods, &mut Vec::new())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.protocol == Protocol::Udp)
        .flat_map(|d| d.endpoints)
        .collect()
}

/// What a client needs so that its denials count.
enum SourceControl {
    /// Some check of its own is allowed to a listener of the run (or it has no denied check).
    NotNeeded,
    /// This probe, which the policies allow.
    Probe(TargetKey, Option<String>),
    /// The policies let it reach none of the candidates.
    Unreachable,
}

fn source_control(
    engine: &Engine<'_>,
    deployment: &Deployment,
    checks: &[Check],
    dns_pods: &[(PodId, u16)],
    namespace: &str,
    client: &ObjectKey,
) -> SourceControl {
    let snapshot = engine.snapshot();
    let mine: Vec<&Check> = checks.iter().filter(|c| c.probe.client == *client).collect();
    // Only the run's own listeners are sure to answer: an allowed check to an address
    // (a metadata service that may not exist) shows nothing about the source.
    let answers = |c: &&Check| {
        c.policy == PolicyAnswer::Allow
            && c.implementation_defined.is_empty()
            && c.probe.expect_name.is_some()
    };
    if !mine.iter().any(|c| c.policy == PolicyAnswer::Deny) || mine.iter().any(answers) {
        return SourceControl::NotNeeded;
    }
    let Some(client_id) = snapshot.find_pod(client) else { return SourceControl::NotNeeded };
    let own = deployment.servers.get(namespace).into_iter();
    let others = deployment.servers.values().filter(|s| s.namespace != namespace);
    let pods = own.chain(others).chain(deployment.control.as_ref());
    let candidates = pods
        .filter_map(|key| Some((snapshot.find_pod(key)?, 80, Protocol::Tcp, Some(key.to_string()))))
        .chain(dns_pods.iter().map(|&(pod, port)| (pod, port, Protocol::Udp, None)));
    let found = candidates.into_iter().find(|&(pod, port, protocol, _)| {
        let verdict = engine.verdict(client_id, pod, port, protocol);
        verdict.allowed && !verdict.implementation_defined.any()
    });
    match found.and_then(|(pod, port, protocol, name)| Some((engine.pod_ip(pod)?, port, protocol, name))) {
        Some((address, port, protocol, expect_name)) => {
            let dns = expect_name.is_none();
            SourceControl::Probe(TargetKey { address, port, protocol, dns }, expect_name)
        }
        None => SourceControl::Unreachable,
    }
}

/// The clients whose denials nothing the policies allow can back (see
/// [`add_source_controls`]): those a control policy must let reach the control pod.
pub fn unbacked_clients<'d>(
    engine: &Engine<'_>,
    deployment: &'d Deployment,
    checks: &[Check],
) -> Vec<&'d ObjectKey> {
    let dns_pods = dns_pods(engine);
    deployment
        .clients
        .iter()
        .filter(|(namespace, client)| {
            matches!(
                source_control(engine, deployment, checks, &dns_pods, namespace, client),
                SourceControl::Unreachable
            )
        })
        .map(|(_, client)| client)
        .collect()
}

/// Labels the API server or controllers put on each pod of a workload; a double leaves them off.
const PER_POD_LABELS: [&str; 4] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
];

/// `--mimic-workloads`: for each distinct workload label set in `namespace` (pods of the
/// snapshot, not the tool's, not on the host network), its labels and its TCP/UDP ports.
pub fn workloads(
    snapshot: &crate::model::Snapshot,
    namespace: &str,
) -> Vec<(BTreeMap<String, String>, Vec<ContainerPort>)> {
    let mut found: Vec<(BTreeMap<String, String>, Vec<ContainerPort>)> = Vec::new();
    for id in snapshot.pod_ids() {
        let pod = snapshot.pod(id);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if pod.metadata.namespace.as_deref() != Some(namespace)
            || is_tool_pod(Some(&labels))
            || pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
        {
            continue;
        }
        let labels: BTreeMap<String, String> =
            labels.into_iter().filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str())).collect();
        if labels.is_empty() || found.iter().any(|(l, _)| *l == labels) {
            continue;
        }
        let mut ports: Vec<ContainerPort> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let protocol = Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?;
                let port = u16::try_from(p.container_port).ok()?;
                (protocol != Protocol::Sctp).then(|| ContainerPort { port, protocol, name: p.name.clone() })
            })
            .collect();
        ports.sort();
        ports.dedup_by(|a, b| a.port == b.port && a.protocol == b.protocol);
        if !ports.is_empty() {
            found.push((labels, ports));
        }
    }
    found
}

/// The client key of probes made from the node.
pub fn node_key() -> ObjectKey {
    ObjectKey::new("", "node")
}

fn plan_group(
    engine: &Engine<'_>,
    scenario: &Scenario,
    group: &Group,
    deployment: &Deployment,
    planned: &mut Planned,
) {
    let snapshot = engine.snapshot();
    let chosen = |namespaces: &Namespaces, name: &str| {
        let labels = snapshot
            .find_namespace(name)
            .and_then(|id| snapshot.namespaces()[id.0 as usize].metadata.labels.clone())
            .unwrap_or_default();
        namespaces.matches(name, &labels)
    };
    let label = format!("{}/{}", scenario.name, group.name);
    let sources: Vec<(&String, &ObjectKey)> =
        deployment.clients.iter().filter(|(ns, _)| chosen(&group.from, ns)).map(|(ns, c)| (ns, c)).collect();
    if sources.is_empty() {
        planned.notes.push(Note(format!("{label}: skipped: no namespace in scope matches its sources")));
        return;
    }
    let mut skipped_family = false;
    let before = planned.checks.len();
    let mut resolved: BTreeMap<&String, Vec<Destination>> = BTreeMap::new();
    for (namespace, client) in sources {
        let Some(client_id) = snapshot.find_pod(client) else {
            planned.notes.push(Note(format!("{label}: {client} is gone: its checks were not made")));
            continue;
        };
        // NB: once per namespace (with --spread it has two clients), so notes are said once.
        let destinations = match resolved.get(namespace) {
            Some(known) => known,
            None => match destinations(engine, group, namespace, deployment, &chosen, &mut planned.notes) {
                Ok(d) => resolved.entry(namespace).or_insert(d),
                Err(note) => {
                    planned.notes.push(Note(format!("{label}: skipped: {note}")));
                    return;
                }
            },
        };
        for d in destinations.clone() {
            if !speaks_family(engine, client_id, deployment, d.address) {
                skipped_family = true;
                continue;
            }
            let mut answer = answer(engine, client_id, &d);
            unsettle(snapshot, namespace, d.to_namespace.as_deref(), &mut answer);
            planned.checks.push(Check {
                scenario: scenario.name.clone(),
                group: group.name.clone(),
                probe: Probe {
                    id: String::new(),
                    client: client.clone(),
                    target: TargetKey { address: d.address, port: d.port, protocol: d.protocol, dns: d.dns },
                    expect_name: d.expect_name.clone(),
                    query: d.dns.then(|| DNS_QUERY.to_string()),
                },
                from_namespace: namespace.clone(),
                to: d.to.clone(),
                backends: d.backends(engine),
                to_namespace: d.to_namespace.clone(),
                intent: (group.intent != Intent::Policy).then_some(group.intent),
                policy: answer.policy,
                egress: answer.egress,
                ingress: answer.ingress,
                policies: answer.policies,
                because: answer.because,
                implementation_defined: answer.implementation_defined,
            });
        }
    }
    if skipped_family {
        planned.notes.push(Note(format!(
            "{label}: some targets were skipped: the source pods have no address of their IP family"
        )));
    }
    if planned.checks.len() == before && !skipped_family {
        planned.notes.push(Note(format!("{label}: skipped: it matches no target in scope")));
    }
}

/// What the stored policies say about a connection, and why.
struct Answer {
    policy: PolicyAnswer,
    egress: Option<bool>,
    ingress: Option<bool>,
    policies: Vec<String>,
    because: Vec<String>,
    implementation_defined: Vec<&'static str>,
}

/// Whether `client` can reach an address of `target`'s family: by its own address, or, before
/// it has one (clients start with their batch), by the run's servers' and control pod's.
fn speaks_family(engine: &Engine<'_>, client: PodId, deployment: &Deployment, target: IpAddr) -> bool {
    let (client_ip, _) = engine.connection_addresses(Endpoint::Pod(client), Endpoint::Ip(target));
    if let Some(ip) = client_ip {
        return ip.is_ipv4() == target.is_ipv4();
    }
    let snapshot = engine.snapshot();
    deployment
        .servers
        .values()
        .chain(deployment.control.as_ref())
        .filter_map(|key| snapshot.find_pod(key))
        .any(|pod| {
            let (ip, _) = engine.connection_addresses(Endpoint::Pod(pod), Endpoint::Ip(target));
            ip.is_some_and(|ip| ip.is_ipv4() == target.is_ipv4())
        })
}

/// Answers every check again against `engine` (the same cluster, with the clients' addresses
/// now known): only ipBlock rules matching a client's address can change an answer.
pub fn reanswer(engine: &Engine<'_>, checks: &mut [Check]) {
    let snapshot = engine.snapshot();
    for check in checks {
        let Some(client) = snapshot.find_pod(&check.probe.client) else { continue };
        let target = &check.probe.target;
        let d = Destination {
            to: check.to.clone(),
            to_namespace: check.to_namespace.clone(),
            address: target.address,
            port: target.port,
            protocol: target.protocol,
            dns: target.dns,
            expect_name: check.probe.expect_name.clone(),
            endpoints: endpoints_of(engine, check),
        };
        let mut answer = answer(engine, client, &d);
        unsettle(snapshot, &check.from_namespace, check.to_namespace.as_deref(), &mut answer);
        check.policy = answer.policy;
        check.egress = answer.egress;
        check.ingress = answer.ingress;
        check.policies = answer.policies;
        check.because = answer.because;
        check.implementation_defined = answer.implementation_defined;
    }
}

/// Policies the engine does not model may touch the connection: its answer is `unknown`.
fn unsettle(snapshot: &crate::model::Snapshot, from: &str, to: Option<&str>, answer: &mut Answer) {
    if let Some(why) = unmodelled_reason(snapshot, from, to, answer.policy) {
        answer.because.insert(0, why);
        answer.policy = PolicyAnswer::Unknown;
    }
}

/// Why a connection between pods of `from` and `to` is not settled by the stored
/// NetworkPolicies: the unmodelled policy objects that may touch it, if any.
pub(crate) fn unmodelled_reason(
    snapshot: &crate::model::Snapshot,
    from: &str,
    to: Option<&str>,
    stored: PolicyAnswer,
) -> Option<String> {
    let mut touching: Vec<String> = snapshot.unmodelled_touching(from).map(ToString::to_string).collect();
    if let Some(to) = to.filter(|to| *to != from) {
        touching.extend(
            snapshot.unmodelled_touching(to).filter(|u| u.namespace.is_some()).map(ToString::to_string),
        );
    }
    (!touching.is_empty()).then(|| {
        format!(
            "{} may apply, and the engine does not model it: the stored NetworkPolicies alone say {}",
            touching.join(", "),
            stored.as_str()
        )
    })
}

/// What the stored policies say about `client` reaching `d`: over every endpoint, when a
/// Service has several.
fn answer(engine: &Engine<'_>, client: PodId, d: &Destination) -> Answer {
    let from = Endpoint::Pod(client);
    if d.endpoints.is_empty() {
        let to = Endpoint::Ip(d.address);
        let verdict = engine.verdict(from, to, d.port, d.protocol);
        return Answer {
            policy: PolicyAnswer::from_allowed(verdict.allowed),
            egress: Some(verdict.egress.outcome.permits()),
            ingress: None,
            policies: policy_names(engine, &verdict),
            because: because(engine, from, to, d.port, d.protocol, &verdict),
            implementation_defined: verdict.implementation_defined.names(),
        };
    }
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    let mut answers = Vec::new();
    let mut policies = BTreeSet::new();
    let mut why = Vec::new();
    let mut defined = BTreeSet::new();
    for &(pod, port) in &d.endpoints {
        let to = Endpoint::Pod(pod);
        let verdict = engine.verdict(from, to, port, d.protocol);
        egress.push(verdict.egress.outcome.permits());
        ingress.push(verdict.ingress.outcome.permits());
        policies.extend(policy_names(engine, &verdict));
        defined.extend(verdict.implementation_defined.names());
        if why.is_empty() {
            why = because(engine, from, to, port, d.protocol, &verdict);
        }
        answers.push((engine.name(to), verdict.allowed));
    }
    let policy = if answers.iter().all(|(_, allowed)| *allowed) {
        PolicyAnswer::Allow
    } else if answers.iter().all(|(_, allowed)| !*allowed) {
        PolicyAnswer::Deny
    } else {
        let (allow, deny): (Vec<_>, Vec<_>) = answers.iter().partition(|(_, allowed)| *allowed);
        let names =
            |v: Vec<&(String, bool)>| v.into_iter().map(|(n, _)| n.clone()).collect::<Vec<_>>().join(", ");
        why.insert(
            0,
            format!(
                "the Service's endpoints differ: the policies allow {} but deny {}, and the Service picks one",
                names(allow),
                names(deny)
            ),
        );
        PolicyAnswer::Unknown
    };
    let agreed = |answers: Vec<bool>| answers.iter().all(|a| *a == answers[0]).then_some(answers[0]);
    Answer {
        policy,
        egress: agreed(egress),
        ingress: agreed(ingress),
        policies: policies.into_iter().collect(),
        because: why,
        implementation_defined: defined.into_iter().collect(),
    }
}

fn policy_names(engine: &Engine<'_>, verdict: &crate::engine::Verdict<'_>) -> Vec<String> {
    let mut ids = verdict.egress.isolated_by.to_vec();
    ids.extend_from_slice(verdict.ingress.isolated_by);
    let list = policy_list(engine, &ids);
    list.split(", ").filter(|s| !s.is_empty()).map(String::from).collect()
}

fn destinations(
    engine: &Engine<'_>,
    group: &Group,
    source_namespace: &str,
    deployment: &Deployment,
    chosen: &dyn Fn(&Namespaces, &str) -> bool,
    notes: &mut Vec<Note>,
) -> Result<Vec<Destination>, String> {
    let snapshot = engine.snapshot();
    let unaddressed = std::cell::RefCell::new(Vec::new());
    let pod_destinations = |pod: PodId, name: Option<String>| -> Vec<Destination> {
        let Some(address) = engine.pod_ip(pod) else {
            unaddressed.borrow_mut().push(snapshot.pod_key(pod).to_string());
            return Vec::new();
        };
        let key = snapshot.pod_key(pod);
        group
            .ports
            .iter()
            .map(|&(port, protocol)| Destination {
                to: key.to_string(),
                to_namespace: Some(key.namespace.clone()),
                address,
                port,
                protocol,
                dns: false,
                expect_name: name.clone(),
                endpoints: vec![(pod, port)],
            })
            .collect()
    };
    let destinations = match &group.to {
        Target::ProbeServers { namespaces, relation } => Ok(deployment
            .servers
            .iter()
            .map(|(ns, server)| (ns, server, false))
            .chain(deployment.mimics.iter().map(|(ns, server)| (ns, server, true)))
            .filter(|(ns, _, _)| chosen(namespaces, ns))
            .filter(|(ns, _, _)| match relation {
                Relation::Any => true,
                Relation::Same => *ns == source_namespace,
                Relation::Other => *ns != source_namespace,
            })
            .filter_map(|(_, server, mimic)| {
                let found = snapshot.find_pod(server).map(|id| (id, server, mimic));
                if found.is_none() {
                    unaddressed.borrow_mut().push(format!("{server} (gone)"));
                }
                found
            })
            .flat_map(|(id, server, mimic)| {
                if !mimic {
                    return pod_destinations(id, Some(server.to_string()));
                }
                // A workload's double answers on the workload's own ports.
                let Some(address) = engine.pod_ip(id) else { return Vec::new() };
                engine
                    .declared_ports(id)
                    .iter()
                    .filter(|p| p.protocol != Protocol::Sctp)
                    .map(|p| Destination {
                        to: server.to_string(),
                        to_namespace: Some(server.namespace.clone()),
                        address,
                        port: p.port,
                        protocol: p.protocol,
                        dns: false,
                        expect_name: Some(server.to_string()),
                        endpoints: vec![(id, p.port)],
                    })
                    .collect()
            })
            .collect()),
        Target::Pods { namespaces, selector, .. } => Ok(snapshot
            .pod_ids()
            .filter(|&id| {
                let pod = snapshot.pod(id);
                let key = snapshot.pod_key(id);
                deployment.namespaces.contains(&key.namespace)
                    && chosen(namespaces, &key.namespace)
                    && !is_tool_pod(pod.metadata.labels.as_ref())
                    && selector.matches(&pod.metadata.labels.clone().unwrap_or_default())
            })
            .flat_map(|id| pod_destinations(id, None))
            .collect()),
        Target::Ip(address) => Ok(group
            .ports
            .iter()
            .map(|&(port, protocol)| Destination {
                to: address.to_string(),
                to_namespace: None,
                address: *address,
                port,
                protocol,
                dns: false,
                expect_name: None,
                endpoints: Vec::new(),
            })
            .collect()),
        Target::ClusterDns(via) => cluster_dns(engine, *via, notes),
    };
    for pod in unaddressed.into_inner() {
        notes.push(Note(format!("{}: pod {pod} has no IP address: it is not probed", group.name)));
    }
    destinations
}

fn is_tool_pod(labels: Option<&BTreeMap<String, String>>) -> bool {
    crate::cluster::is_tools(labels)
}

/// The cluster's DNS Service: kube-system/kube-dns, or a kube-system Service labelled
/// `k8s-app=kube-dns` (some distributions name it coredns).
pub fn kube_dns(services: &[Service]) -> Option<&Service> {
    let in_kube_system = |s: &&Service| s.metadata.namespace.as_deref() == Some("kube-system");
    services.iter().filter(in_kube_system).find(|s| s.metadata.name.as_deref() == Some("kube-dns")).or_else(
        || {
            services.iter().filter(in_kube_system).find(|s| {
                s.metadata.labels.as_ref().and_then(|l| l.get("k8s-app")).is_some_and(|v| v == "kube-dns")
            })
        },
    )
}

fn cluster_dns(engine: &Engine<'_>, via: DnsVia, notes: &mut Vec<Note>) -> Result<Vec<Destination>, String> {
    let snapshot = engine.snapshot();
    if via == DnsVia::NodeLocal {
        let node_local = snapshot.pod_ids().any(|id| {
            let pod = snapshot.pod(id);
            pod.metadata.namespace.as_deref() == Some("kube-system")
                && pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("k8s-app"))
                    .is_some_and(|v| v == "node-local-dns")
        });
        if !node_local {
            return Err(
                "NodeLocal DNSCache does not run here (no kube-system pod labelled k8s-app=node-local-dns)"
                    .into(),
            );
        }
        let address: IpAddr = NODE_LOCAL_DNS.parse().map_err(|_| "bad NodeLocal address".to_string())?;
        return Ok([Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .map(|protocol| Destination {
                to: format!("NodeLocal DNSCache {NODE_LOCAL_DNS}"),
                to_namespace: None,
                address,
                port: 53,
                protocol,
                dns: true,
                expect_name: None,
                endpoints: Vec::new(),
            })
            .collect());
    }
    let Some(service) = kube_dns(snapshot.services()) else {
        return Err("no cluster DNS Service (kube-system/kube-dns) was found".into());
    };
    let spec = service.spec.clone().unwrap_or_default();
    let key = key_of(&service.metadata);
    // The Service's EndpointSlices, where known, say which pods take its traffic (only ready
    // ones); else its selector does.
    let slices = snapshot.endpoint_slices_of(&key);
    let selector: Selector = spec.selector.clone().unwrap_or_default().into_iter().collect();
    let pods: Vec<PodId> = if !slices.is_empty() || spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        Vec::new()
    } else {
        snapshot
            .pod_ids()
            .filter(|&id| {
                let pod = snapshot.pod(id);
                pod.metadata.namespace.as_deref() == Some("kube-system")
                    && selector.matches(&pod.metadata.labels.clone().unwrap_or_default())
            })
            .collect()
    };
    if pods.is_empty() && slices.is_empty() {
        return Err(format!("Service {key} selects no running pod"));
    }
    let mut destinations = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => Protocol::Udp,
            "TCP" => Protocol::Tcp,
            _ => continue,
        };
        let Ok(number) = u16::try_from(port.port) else { continue };
        let target_port = |pod: PodId| -> Option<u16> {
            match &port.target_port {
                None => Some(number),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(name)) => engine
                    .declared_ports(pod)
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                    .map(|p| p.port),
            }
        };
        let endpoints: Vec<(PodId, u16)> = if slices.is_empty() {
            pods.iter().filter_map(|&p| Some((p, target_port(p)?))).collect()
        } else {
            slice_endpoints(snapshot, &slices, port.name.as_deref(), protocol, notes)
        };
        if endpoints.is_empty() && !slices.is_empty() {
            notes.push(Note(format!(
                "Service {key} port {number}/{protocol}: its EndpointSlices list no ready pod"
            )));
            continue;
        }
        if endpoints.is_empty() {
            notes.push(Note(format!(
                "Service {key} port {number}/{protocol}: no pod declares its targetPort"
            )));
            continue;
        }
        match via {
            DnsVia::Service => {
                let Some(address) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok())
                else {
                    return Err(format!("Service {key} has no ClusterIP"));
                };
                destinations.push(Destination {
                    to: format!("{key} ({address})"),
                    to_namespace: Some(key.namespace.clone()),
                    address,
                    port: number,
                    protocol,
                    dns: true,
                    expect_name: None,
                    endpoints,
                });
            }
            _ => {
                for (pod, target) in endpoints {
                    let Some(address) = engine.pod_ip(pod) else { continue };
                    destinations.push(Destination {
                        to: snapshot.pod_key(pod).to_string(),
                        to_namespace: Some(key.namespace.clone()),
                        address,
                        port: target,
                        protocol,
                        dns: true,
                        expect_name: None,
                        endpoints: vec![(pod, target)],
                    });
                }
            }
        }
    }
    Ok(destinations)
}

/// The ready pod endpoints `slices` give a Service port (by name and protocol), with the port
/// each listens on. Endpoints that are no pod the run knows are noted and left out.
fn slice_endpoints(
    snapshot: &crate::model::Snapshot,
    slices: &[&k8s_openapi::api::discovery::v1::EndpointSlice],
    port_name: Option<&str>,
    protocol: Protocol,
    notes: &mut Vec<Note>,
) -> Vec<(PodId, u16)> {
    let mut endpoints = Vec::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name.unwrap_or_default()
                && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
        });
        let Some(number) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        // NB: a missing `ready` means ready (the API's own reading).
        for endpoint in slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        {
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some(ObjectKey::new(r.namespace.clone()?, r.name.clone()?)))
                .and_then(|key| snapshot.find_pod(&key));
            match pod {
                Some(pod) => {
                    if !endpoints.contains(&(pod, number)) {
                        endpoints.push((pod, number));
                    }
                }
                None => notes.push(Note(format!(
                    "EndpointSlice {}: endpoint {} is not a pod the run knows: it is not probed",
                    key_of(&slice.metadata),
                    endpoint.addresses.join(", ")
                ))),
            }
        }
    }
    endpoints
}

/// A control probe from the control pod to every target the policies let it reach.
fn add_controls(engine: &Engine<'_>, deployment: &Deployment, planned: &mut Planned) {
    let mut seen = BTreeSet::new();
    let mut controls = Vec::new();
    let control = deployment.control.as_ref().and_then(|c| Some((c, engine.snapshot().find_pod(c)?)));
    for check in &planned.checks {
        if !seen.insert(check.probe.target.clone()) {
            continue;
        }
        let Some((control, control_id)) = control else { continue };
        let d = Destination {
            to: check.to.clone(),
            to_namespace: None,
            address: check.probe.target.address,
            port: check.probe.target.port,
            protocol: check.probe.target.protocol,
            dns: check.probe.target.dns,
            expect_name: None,
            endpoints: endpoints_of(engine, check),
        };
        let answer = self::answer(engine, control_id, &d);
        if answer.policy == PolicyAnswer::Allow && answer.implementation_defined.is_empty() {
            controls.push(Probe {
                id: format!("k{}", controls.len() + 1),
                client: control.clone(),
                ..check.probe.clone()
            });
        }
    }
    planned.controls = controls;
    seen.extend(planned.checks.iter().flat_map(|c| c.backends.iter().cloned()));
    planned.node_controls = seen
        .into_iter()
        .enumerate()
        .map(|(i, target)| {
            let like = planned.checks.iter().find(|c| c.probe.target == target).map(|c| &c.probe);
            Probe {
                id: format!("n{}", i + 1),
                client: node_key(),
                expect_name: like.and_then(|p| p.expect_name.clone()),
                query: target.dns.then(|| DNS_QUERY.to_string()),
                target,
            }
        })
        .collect();
}

/// The pods behind a check's target (by address; a Service's through its DNS pods).
fn endpoints_of(engine: &Engine<'_>, check: &Check) -> Vec<(PodId, u16)> {
    let snapshot = engine.snapshot();
    let target = &check.probe.target;
    if let Some(pod) = snapshot.pod_ids().find(|&id| engine.pod_ip(id) == Some(target.address)) {
        return vec![(pod, target.port)];
    }
    if target.dns
        && let Ok(dns) = cluster_dns(engine, DnsVia::Service, &mut Vec::new())
    {
        return dns
            .into_iter()
            .filter(|d| d.address == target.address && d.port == target.port && d.protocol == target.protocol)
            .flat_map(|d| d.endpoints)
            .collect();
    }
    Vec::new()
}

/// One batch plan per client pod (the control pod included), every probe with `timeout_ms`.
/// The node's probes are not among them: see [`node_batch`].
pub fn batches(planned: &Planned, timeout_ms: u64) -> BTreeMap<ObjectKey, wire::Plan> {
    batches_of(planned.checks.iter().map(|c| &c.probe).chain(&planned.controls), timeout_ms)
}

/// `probes` grouped into one batch plan per client, every probe with `timeout_ms`.
pub fn batches_of<'p>(
    probes: impl Iterator<Item = &'p Probe>,
    timeout_ms: u64,
) -> BTreeMap<ObjectKey, wire::Plan> {
    let mut plans: BTreeMap<ObjectKey, wire::Plan> = BTreeMap::new();
    for probe in probes {
        plans
            .entry(probe.client.clone())
            .or_insert_with(|| wire::Plan { schema: wire::SCHEMA, probes: Vec::new() })
            .probes
            .push(spec(probe, timeout_ms));
    }
    plans
}

/// The node's batch.
pub fn node_batch(planned: &Planned, timeout_ms: u64) -> wire::Plan {
    wire::Plan {
        schema: wire::SCHEMA,
        probes: planned.node_controls.iter().map(|p| spec(p, timeout_ms)).collect(),
    }
}

/// A probe as the batch reads it.
pub fn spec(probe: &Probe, timeout_ms: u64) -> wire::ProbeSpec {
    wire::ProbeSpec {
        id: probe.id.clone(),
        kind: probe.kind(),
        target: probe.target.address.to_string(),
        port: probe.target.port,
        protocol: Some(match probe.target.protocol {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }),
        timeout_ms,
        expect_name: probe.expect_name.clone(),
        query: probe.query.clone(),
    }
}

#[cfg(test)]
mod tests;
