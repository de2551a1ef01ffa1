//! The enforcement canary: in scratch namespaces of its own, does the network enforce
//! NetworkPolicy at all, how fast, and which features of it?
//!
//! 1. baseline — a client reaches a server (else nothing below means anything);
//! 2. ingress deny — a policy admitting only the canary's control pod is applied, and the
//!    client probes until it is denied: the enforcement latency;
//! 3. capabilities — policies for UDP, named ports, `endPort`, SCTP-is-not-TCP,
//!    namespaceSelector, egress deny and ipBlock `except`, each on pods of its own, probed
//!    until they all behave or the bound runs out;
//! 4. pod-start window — a fresh pod the deny policy selects is probed from its first moment:
//!    how long traffic the policy denies still got through.
//!
//! Every expectation is the engine's answer for the canary's own objects, and every denial is
//! backed by a control probe that shows the target alive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_probe::wire::ProbeResult;

use super::check::{Check, Judged, Observed, PolicyAnswer, Probe, TargetKey, Verdict};
use super::judge;
use crate::cluster::{Cluster, ClusterError, ProbePod, Role, Running};
use crate::engine::{ContainerPort, Endpoint, Engine, Protocol};
use crate::model::ObjectKey;
use crate::report::reason::because;
use crate::scenario::CanaryOptions;

/// The label that tells the canary's pods apart.
const CANARY_LABEL: &str = "netpol-verify.io/canary";
/// Timeout of each canary probe: short, so polls are quick (the cluster network is local).
const POLL_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the canary polls: fine enough to time enforcement, coarse enough to stay cheap.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What one capability came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// `enforced`, `not enforced`, `over-blocked`, `inconclusive`, `informational`.
    pub status: &'static str,
    pub detail: String,
}

/// The canary's findings.
#[derive(Debug, Clone, Default)]
pub struct CanaryReport {
    pub capabilities: Vec<Capability>,
    /// From storing the deny policy to the first denied probe; `None` when never enforced.
    pub enforce_latency: Option<Duration>,
    /// How long a fresh pod accepted traffic the policy denies; `None` when not measured.
    pub pod_start_window: Option<Duration>,
    pub checks: Vec<Judged>,
}

/// A canary pod: name, role, ports, and whether it lives in the peer namespace.
type CanaryPod = (&'static str, Role, &'static [(u16, Protocol)], bool);

/// The canary's pods.
const PODS: [CanaryPod; 11] = [
    ("client", Role::Client, &[], false),
    ("control", Role::Control, &[(80, Protocol::Tcp)], false),
    ("ingress", Role::Server, &[(80, Protocol::Tcp), (80, Protocol::Udp)], false),
    ("named", Role::Server, &[(80, Protocol::Tcp), (81, Protocol::Tcp)], false),
    ("range", Role::Server, &[(82, Protocol::Tcp), (83, Protocol::Tcp), (84, Protocol::Tcp)], false),
    ("sctp", Role::Server, &[(80, Protocol::Tcp)], false),
    ("nsel", Role::Server, &[(80, Protocol::Tcp)], false),
    ("target", Role::Server, &[(80, Protocol::Tcp), (81, Protocol::Tcp)], false),
    ("egress-client", Role::Client, &[], false),
    ("except-client", Role::Client, &[], false),
    ("outside", Role::Client, &[], true),
];

/// The canary's capability probes: (capability, from, to, port, protocol).
const PROBES: [(&str, &str, &str, u16, Protocol); 14] = [
    ("ingress deny", "client", "ingress", 80, Protocol::Tcp),
    ("UDP", "client", "ingress", 80, Protocol::Udp),
    ("named port", "client", "named", 80, Protocol::Tcp),
    ("named port", "client", "named", 81, Protocol::Tcp),
    ("endPort", "client", "range", 82, Protocol::Tcp),
    ("endPort", "client", "range", 83, Protocol::Tcp),
    ("endPort", "client", "range", 84, Protocol::Tcp),
    ("SCTP is not TCP", "client", "sctp", 80, Protocol::Tcp),
    ("namespaceSelector", "outside", "nsel", 80, Protocol::Tcp),
    ("namespaceSelector", "client", "nsel", 80, Protocol::Tcp),
    ("egress deny", "egress-client", "target", 80, Protocol::Tcp),
    ("egress deny", "egress-client", "target", 81, Protocol::Tcp),
    ("ipBlock except", "except-client", "target", 80, Protocol::Tcp),
    ("ipBlock except", "except-client", "control", 80, Protocol::Tcp),
];

struct Names {
    namespace: String,
    peer_namespace: String,
    run_id: String,
}

impl Names {
    fn new(run_id: &str) -> Names {
        Names {
            namespace: format!("nv-canary-{run_id}"),
            peer_namespace: format!("nv-canary-peer-{run_id}"),
            run_id: run_id.to_string(),
        }
    }

    fn pod(&self, name: &str) -> ObjectKey {
        let peer = PODS.iter().any(|(n, _, _, peer)| *n == name && *peer);
        let namespace = if peer { &self.peer_namespace } else { &self.namespace };
        ObjectKey::new(namespace, format!("nv-canary-{name}-{}", self.run_id))
    }
}

/// The cluster with the canary's clients in it, as they are or will be once they run.
fn with_clients(snapshot: crate::model::Snapshot, names: &Names) -> crate::model::Snapshot {
    let absent: Vec<_> = pods(names)
        .iter()
        .filter(|p| p.role == Role::Client && snapshot.find_pod(&p.key).is_none())
        .map(|p| super::pod_object(p, None))
        .collect();
    if absent.is_empty() { snapshot } else { snapshot.with_pods(absent) }
}

/// The canary's probe pods.
fn pods(names: &Names) -> Vec<ProbePod> {
    PODS.iter()
        .map(|&(name, role, ports, _)| {
            let ports: Vec<ContainerPort> = ports
                .iter()
                .map(|&(port, protocol)| ContainerPort {
                    port,
                    protocol,
                    name: (port == 80 && protocol == Protocol::Tcp).then(|| "http".to_string()),
                })
                .collect();
            let mut pod = super::probe_pod(&names.pod(name), role, &names.run_id, &ports);
            pod.labels.insert(CANARY_LABEL.into(), name.into());
            pod
        })
        .collect()
}

/// What the canary of run `run_id` creates, for `--dry-run`: its namespaces, its first pods
/// and its policies (the fresh pod-start pod is one more server like `ingress`). The ipBlock
/// policy's `except` names a pod's address, known only at run time: `target` stands in.
pub fn objects(run_id: &str, target: IpAddr) -> (Vec<String>, Vec<ProbePod>, Vec<NetworkPolicy>) {
    let names = Names::new(run_id);
    let ips = HashMap::from([(names.pod("target"), target)]);
    let mut policies = vec![ingress_policy(&names)];
    policies.extend(capability_policies(&names, &ips));
    (vec![names.namespace.clone(), names.peer_namespace.clone()], pods(&names), policies)
}

/// Runs the canary; its namespaces carry the run id, so the run's cleanup removes them.
pub async fn run<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    scenario: &str,
    options: &CanaryOptions,
    run_id: &str,
    pod_timeout: Duration,
) -> Result<CanaryReport, ClusterError> {
    let names = Names::new(run_id);
    cluster.create_namespace(&names.namespace, run_id).await?;
    cluster.create_namespace(&names.peer_namespace, run_id).await?;
    // Servers and the control pod now; clients start with their first batch.
    let mut keys = Vec::new();
    for pod in pods(&names).into_iter().filter(|p| p.role != Role::Client) {
        cluster.create_probe_pod(&pod).await?;
        keys.push(pod.key);
    }
    let running = cluster.wait_running(&keys, pod_timeout).await?;
    let ips: HashMap<ObjectKey, IpAddr> = running.into_iter().map(|Running { key, ip }| (key, ip)).collect();
    let mut report = CanaryReport::default();

    // 1. Baseline: with no policy, the client reaches the ingress server.
    let engine_checks = checks(cluster, scenario, &names, &ips).await?;
    let baseline: Vec<Check> = engine_checks.iter().filter(|c| c.group == "ingress deny").cloned().collect();
    let results = round(cluster, &names, &baseline, &[]).await;
    if !results.values().any(ProbeResult::reached) {
        report.capabilities.push(Capability {
            name: "connectivity",
            status: "inconclusive",
            detail: format!(
                "{} could not reach {} with no policy in place: nothing the canary sees would mean anything",
                names.pod("client"),
                names.pod("ingress")
            ),
        });
        report.checks = judge::judge(baseline, &[], &results);
        return Ok(report);
    }

    // 2. Ingress deny, and how long until it is enforced.
    // NB: timed from the request, so the latency includes storing the policy.
    let stored = Instant::now();
    cluster.create_policy(&ingress_policy(&names), run_id).await?;
    let checks_now = checks(cluster, scenario, &names, &ips).await?;
    let deny: Vec<Check> = checks_now.iter().filter(|c| c.group == "ingress deny").cloned().collect();
    let controls = controls_for(&deny, &names);
    let deadline = stored + options.enforce_timeout;
    let mut results;
    loop {
        let sent = Instant::now();
        results = round(cluster, &names, &deny, &controls).await;
        // A denial, not a probe that failed in itself, while the control shows the server alive.
        let denied =
            deny.iter().all(|c| results.get(&c.probe.id).is_some_and(|r| judge::observed(Some(r)).is_deny()));
        let alive = controls.iter().all(|k| results.get(&k.id).is_some_and(ProbeResult::reached));
        if denied && alive {
            report.enforce_latency = Some(sent.saturating_duration_since(stored));
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        pause(sent).await;
    }

    // 3. Every other capability, on pods of its own.
    for policy in capability_policies(&names, &ips) {
        cluster.create_policy(&policy, run_id).await?;
    }
    let applied = Instant::now();
    let all = checks(cluster, scenario, &names, &ips).await?;
    let controls = controls_for(&all, &names);
    let bound = match report.enforce_latency {
        Some(latency) => (latency * 3).max(Duration::from_secs(1)) + Duration::from_secs(1),
        None => Duration::from_secs(2),
    }
    .min(options.enforce_timeout);
    loop {
        let sent = Instant::now();
        results = round(cluster, &names, &all, &controls).await;
        let behaving = all.iter().filter(|c| c.implementation_defined.is_empty()).all(|c| {
            results.get(&c.probe.id).is_some_and(|r| r.reached() == (c.policy == PolicyAnswer::Allow))
        });
        if behaving || applied.elapsed() >= bound {
            break;
        }
        pause(sent).await;
    }
    let mut judged = judge::judge(all, &controls, &results);
    if let Some(first) = judged.first_mut() {
        first.detail = match report.enforce_latency {
            Some(latency) => {
                format!("{}; enforced {} ms after the policy was stored", first.detail, latency.as_millis())
            }
            None => format!(
                "{}; still not enforced {} s after the policy was stored",
                first.detail,
                options.enforce_timeout.as_secs()
            ),
        };
    }
    report.capabilities = capabilities(&judged);

    // 4. The pod-start window.
    let (window, check) = pod_start(cluster, scenario, &names, options, pod_timeout).await?;
    report.pod_start_window = window;
    report.capabilities.push(Capability {
        name: "pod-start window",
        status: status(&[check.verdict]),
        detail: check.detail.clone(),
    });
    judged.push(check);
    report.checks = judged;
    Ok(report)
}

/// The engine's answer for every capability probe, against the cluster as it is now.
async fn checks<C: Cluster>(
    cluster: &C,
    scenario: &str,
    names: &Names,
    ips: &HashMap<ObjectKey, IpAddr>,
) -> Result<Vec<Check>, ClusterError> {
    let snapshot = with_clients(cluster.discover().await?.snapshot, names);
    let engine = Engine::new(&snapshot).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let mut checks = Vec::new();
    for (i, (capability, from, to, port, protocol)) in PROBES.iter().enumerate() {
        let (from, to) = (names.pod(from), names.pod(to));
        let (Some(&address), Some(f), Some(t)) =
            (ips.get(&to), snapshot.find_pod(&from), snapshot.find_pod(&to))
        else {
            return Err(ClusterError::NotFound { what: format!("canary pod {from} or {to}") });
        };
        checks.push(pod_check(
            &engine,
            scenario,
            capability,
            (f, &from),
            (t, &to, address),
            *port,
            *protocol,
            i,
        ));
    }
    Ok(checks)
}

#[allow(clippy::too_many_arguments)]
fn pod_check(
    engine: &Engine<'_>,
    scenario: &str,
    group: &str,
    (from_id, from): (crate::model::PodId, &ObjectKey),
    (to_id, to, address): (crate::model::PodId, &ObjectKey, IpAddr),
    port: u16,
    protocol: Protocol,
    index: usize,
) -> Check {
    let verdict = engine.verdict(from_id, to_id, port, protocol);
    let mut ids = verdict.egress.isolated_by.to_vec();
    ids.extend_from_slice(verdict.ingress.isolated_by);
    let stored = PolicyAnswer::from_allowed(verdict.allowed);
    let unmodelled =
        super::plan::unmodelled_reason(engine.snapshot(), &from.namespace, Some(&to.namespace), stored);
    let mut because = because(engine, Endpoint::Pod(from_id), Endpoint::Pod(to_id), port, protocol, &verdict);
    if let Some(why) = &unmodelled {
        because.insert(0, why.clone());
    }
    Check {
        scenario: scenario.to_string(),
        group: group.to_string(),
        probe: Probe {
            id: format!("canary{}", index + 1),
            client: from.clone(),
            target: TargetKey { address, port, protocol, dns: false },
            expect_name: Some(to.to_string()),
            query: None,
        },
        from_namespace: from.namespace.clone(),
        to: to.to_string(),
        backends: Vec::new(),
        to_namespace: Some(to.namespace.clone()),
        intent: None,
        policy: if unmodelled.is_some() { PolicyAnswer::Unknown } else { stored },
        egress: Some(verdict.egress.outcome.permits()),
        ingress: Some(verdict.ingress.outcome.permits()),
        policies: ids.iter().map(|p| engine.snapshot().policy_key(*p).to_string()).collect(),
        because,
        implementation_defined: verdict.implementation_defined.names(),
    }
}

/// Control probes for every target of `checks`: from the canary's control pod (which every
/// ingress policy admits) and, for the egress tests' target, from the unrestricted client.
fn controls_for(checks: &[Check], names: &Names) -> Vec<Probe> {
    let mut controls: Vec<Probe> = Vec::new();
    let control = names.pod("control");
    for check in checks {
        if controls.iter().any(|c| c.target == check.probe.target) || check.to == control.to_string() {
            continue;
        }
        let client =
            if check.to == names.pod("target").to_string() { names.pod("client") } else { control.clone() };
        controls.push(Probe { id: format!("canary-k{}", controls.len() + 1), client, ..check.probe.clone() });
    }
    controls
}

/// Polls start at most every [`POLL_INTERVAL`], however fast a round comes back.
async fn pause(round_started: Instant) {
    tokio::time::sleep_until((round_started + POLL_INTERVAL).into()).await;
}

/// One concurrent round of the checks' probes and the controls, a batch per client.
async fn round<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    names: &Names,
    checks: &[Check],
    controls: &[Probe],
) -> HashMap<String, ProbeResult> {
    let probes: Vec<Probe> = checks.iter().map(|c| c.probe.clone()).chain(controls.iter().cloned()).collect();
    round_of(cluster, names, &probes).await
}

/// One concurrent round of probes, a batch per client; results by id.
async fn round_of<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    names: &Names,
    probes: &[Probe],
) -> HashMap<String, ProbeResult> {
    let timeout_ms = POLL_TIMEOUT.as_millis() as u64;
    let plans = super::plan::batches_of(probes.iter(), timeout_ms);
    let mut tasks = tokio::task::JoinSet::new();
    let probers = pods(names);
    for (client, plan) in plans {
        let Some(prober) = probers.iter().find(|p| p.key == client).cloned() else { continue };
        let cluster = cluster.clone();
        tasks.spawn(async move {
            cluster.run_batch(&prober, &plan, POLL_TIMEOUT + Duration::from_secs(10)).await
        });
    }
    let mut results = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Ok(output)) = joined {
            results.extend(output.results.into_iter().filter_map(|r| Some((r.id.clone()?, r))));
        }
    }
    results
}

/// Admits only the canary's control pod into the `ingress` server.
fn ingress_policy(names: &Names) -> NetworkPolicy {
    policy(
        &names.namespace,
        "nv-canary-deny-ingress",
        serde_json::json!({
            "podSelector": {"matchLabels": {CANARY_LABEL: "ingress"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {CANARY_LABEL: "control"}}}]}],
        }),
    )
}

fn capability_policies(names: &Names, ips: &HashMap<ObjectKey, IpAddr>) -> Vec<NetworkPolicy> {
    let pods = |name: &str| serde_json::json!({"podSelector": {"matchLabels": {CANARY_LABEL: name}}});
    let from_control = serde_json::json!({"from": [pods("control")]});
    let ingress = |server: &str, rule: serde_json::Value| {
        policy(
            &names.namespace,
            &format!("nv-canary-{server}"),
            serde_json::json!({
                "podSelector": {"matchLabels": {CANARY_LABEL: server}},
                "policyTypes": ["Ingress"],
                "ingress": [from_control.clone(), rule],
            }),
        )
    };
    let target = ips.get(&names.pod("target")).copied();
    let (all, except) = match target {
        Some(IpAddr::V6(ip)) => ("::/0".to_string(), format!("{ip}/128")),
        Some(IpAddr::V4(ip)) => ("0.0.0.0/0".to_string(), format!("{ip}/32")),
        None => ("0.0.0.0/0".to_string(), "255.255.255.255/32".to_string()),
    };
    vec![
        ingress("named", serde_json::json!({"from": [pods("client")], "ports": [{"port": "http"}]})),
        ingress(
            "range",
            serde_json::json!({"from": [pods("client")], "ports": [{"port": 82, "endPort": 83, "protocol": "TCP"}]}),
        ),
        ingress(
            "sctp",
            serde_json::json!({"from": [pods("client")], "ports": [{"port": 80, "protocol": "SCTP"}]}),
        ),
        ingress(
            "nsel",
            serde_json::json!({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": names.peer_namespace}}}]}),
        ),
        policy(
            &names.namespace,
            "nv-canary-egress",
            serde_json::json!({
                "podSelector": {"matchLabels": {CANARY_LABEL: "egress-client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [pods("target")], "ports": [{"port": 80, "protocol": "TCP"}]}],
            }),
        ),
        policy(
            &names.namespace,
            "nv-canary-except",
            serde_json::json!({
                "podSelector": {"matchLabels": {CANARY_LABEL: "except-client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": all, "except": [except]}}]}],
            }),
        ),
    ]
}

fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    let object = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    // The objects above are fixed and valid; a failure here is a bug, caught by the tests.
    serde_json::from_value(object).unwrap_or_default()
}

/// A capability's status from its checks' verdicts.
fn status(verdicts: &[Verdict]) -> &'static str {
    if verdicts.contains(&Verdict::NotEnforced) {
        "not enforced"
    } else if verdicts.contains(&Verdict::OverBlocked) {
        "over-blocked"
    } else if verdicts.contains(&Verdict::Inconclusive) {
        "inconclusive"
    } else if verdicts.iter().all(|v| *v == Verdict::Informational) {
        "informational"
    } else {
        "enforced"
    }
}

fn capabilities(judged: &[Judged]) -> Vec<Capability> {
    let mut capabilities: Vec<Capability> = Vec::new();
    for (name, ..) in PROBES {
        if capabilities.iter().any(|c| c.name == name) {
            continue;
        }
        let mine: Vec<&Judged> = judged.iter().filter(|j| j.check.group == name).collect();
        let verdicts: Vec<Verdict> = mine.iter().map(|j| j.verdict).collect();
        let mut status = status(&verdicts);
        // NB: `except` is only tested if this CNI applies ipBlock to pod IPs at all (the spec
        // leaves it open; Cilium does not): the allowed, informational sibling must connect.
        let untestable =
            mine.iter().any(|j| !j.check.implementation_defined.is_empty() && j.observed != Observed::Allow);
        if name == "ipBlock except" && untestable && !matches!(status, "not enforced" | "over-blocked") {
            status = "inconclusive";
            capabilities.push(Capability {
                name,
                status,
                detail: "this CNI does not apply ipBlock to pod IPs (the spec leaves that open), so except cannot be tested with pods".into(),
            });
            continue;
        }
        let detail = mine
            .iter()
            .find(|j| j.verdict != Verdict::Pass && j.verdict != Verdict::Informational)
            .or(mine.first())
            .map(|j| {
                let from = short(&j.check.probe.client.name);
                let to = short(j.check.to.rsplit('/').next().unwrap_or_default());
                let target = &j.check.probe.target;
                format!("{from} → {to} {}/{}: {}", target.port, target.protocol, j.detail)
            })
            .unwrap_or_default();
        capabilities.push(Capability { name, status, detail });
    }
    capabilities
}

/// `client` for `nv-canary-client-RUN`: the pod's part in the canary.
fn short(name: &str) -> &str {
    let name = name.strip_prefix("nv-canary-").unwrap_or(name);
    name.rsplit_once('-').map_or(name, |(head, _)| head)
}

/// Starts a fresh pod that the deny policy selects and probes it from its first moment.
async fn pod_start<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    scenario: &str,
    names: &Names,
    options: &CanaryOptions,
    pod_timeout: Duration,
) -> Result<(Option<Duration>, Judged), ClusterError> {
    // Looked up first: once the fresh pod runs, every moment counts.
    let target_ip = cluster
        .wait_running(std::slice::from_ref(&names.pod("target")), pod_timeout)
        .await?
        .first()
        .map(|r| r.ip)
        .ok_or_else(|| ClusterError::NotFound { what: format!("pod {}", names.pod("target")) })?;
    let key = ObjectKey::new(&names.namespace, format!("nv-canary-late-{}", names.run_id));
    let ports = [ContainerPort { port: 80, protocol: Protocol::Tcp, name: Some("http".into()) }];
    let mut pod = super::probe_pod(&key, Role::Server, &names.run_id, &ports);
    pod.labels.insert(CANARY_LABEL.into(), "ingress".into());
    cluster.create_probe_pod(&pod).await?;
    let running = cluster.wait_running(std::slice::from_ref(&key), pod_timeout).await?;
    let started = Instant::now();
    let address =
        running.first().map(|r| r.ip).ok_or_else(|| ClusterError::NotFound { what: format!("pod {key}") })?;
    // Probe first: the engine's answer is worked out after the window, not inside it.
    let client = names.pod("client");
    let target = TargetKey { address, port: 80, protocol: Protocol::Tcp, dns: false };
    let probe = Probe {
        id: "canary-late".into(),
        client: client.clone(),
        target,
        expect_name: Some(key.to_string()),
        query: None,
    };
    let control = Probe { id: "canary-late-control".into(), client: names.pod("control"), ..probe.clone() };
    // The client must show it can send: the egress tests' target admits it.
    let source = Probe {
        id: "canary-late-source".into(),
        client: client.clone(),
        target: TargetKey { port: 80, ..probe.target.clone() },
        expect_name: Some(names.pod("target").to_string()),
        query: None,
    };
    let source = Probe { target: TargetKey { address: target_ip, ..source.target.clone() }, ..source };
    let probes = [probe, control, source];

    // Rounds in which a denial is proven: the client's probe denied (not failed, not lost),
    // the control reached the pod and the client reached something else.
    let mut through: Vec<Duration> = Vec::new();
    let mut proven = 0;
    let mut rounds = 0;
    let mut last = None;
    while started.elapsed() < options.pod_start_window {
        let at = started.elapsed();
        let results = round_of(cluster, names, &probes).await;
        rounds += 1;
        let reached = |id: &str| results.get(id).is_some_and(ProbeResult::reached);
        if reached("canary-late") {
            through.push(at);
        } else if judge::observed(results.get("canary-late")).is_deny()
            && reached("canary-late-control")
            && reached("canary-late-source")
        {
            proven += 1;
        }
        last = results.get("canary-late").cloned();
        pause(started + at).await;
    }

    let snapshot = with_clients(cluster.discover().await?.snapshot, names);
    let engine = Engine::new(&snapshot).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let (Some(from), Some(to)) = (snapshot.find_pod(&client), snapshot.find_pod(&key)) else {
        return Err(ClusterError::NotFound { what: format!("pod {client} or {key}") });
    };
    let mut check = pod_check(
        &engine,
        scenario,
        "pod-start window",
        (from, &client),
        (to, &key, address),
        80,
        Protocol::Tcp,
        100,
    );
    check.probe.id = "canary-late".into();
    let window_ms = options.pod_start_window.as_millis();
    let (verdict, observed, window, detail) = if check.policy != PolicyAnswer::Deny {
        let detail = "the stored policies do not deny this, so there is no window to measure".to_string();
        (Verdict::Inconclusive, judge::observed(last.as_ref()), None, detail)
    } else if let Some(&latest) = through.last() {
        let detail = format!(
            "traffic the policy denies reached the fresh pod in {} of {rounds} probe rounds, the last {} ms after it was seen running (watched for {window_ms} ms)",
            through.len(),
            latest.as_millis()
        );
        (Verdict::NotEnforced, Observed::Allow, Some(latest), detail)
    } else if proven == rounds && rounds > 0 {
        let detail = format!(
            "denied in all {rounds} probe rounds over {window_ms} ms, each with the control reaching the pod and the client reaching another"
        );
        (Verdict::Pass, judge::observed(last.as_ref()), Some(Duration::ZERO), detail)
    } else {
        let detail = format!(
            "never got through, but only {proven} of {rounds} rounds proved a denial (the others were lost, failed, or had no live control)"
        );
        (Verdict::Inconclusive, judge::observed(last.as_ref()), None, detail)
    };
    let ms = last.map(|r| r.ms);
    Ok((window, Judged { check, observed, verdict, detail, ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canarys_policies_are_valid_networkpolicies() {
        let names = Names::new("r1");
        let ips = HashMap::from([(
            names.pod("target"),
            "10.244.0.7".parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0])),
        )]);
        let mut policies = capability_policies(&names, &ips);
        policies.push(ingress_policy(&names));
        assert_eq!(policies.len(), 7);
        for policy in &policies {
            assert!(policy.metadata.name.is_some(), "{policy:?}");
            crate::engine::validate_policy(policy).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn capability_details_name_pods_by_their_part() {
        assert_eq!(short("nv-canary-egress-client-ab12cd"), "egress-client");
        assert_eq!(short("nv-canary-client-ab12cd"), "client");
    }

    #[test]
    fn capability_status_takes_the_worst_verdict() {
        assert_eq!(status(&[Verdict::Pass, Verdict::NotEnforced, Verdict::Inconclusive]), "not enforced");
        assert_eq!(status(&[Verdict::Pass, Verdict::Inconclusive]), "inconclusive");
        assert_eq!(status(&[Verdict::Pass, Verdict::Informational]), "enforced");
        assert_eq!(status(&[Verdict::Informational]), "informational");
    }
}
