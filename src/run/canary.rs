//! The enforcement canary: in scratch namespaces of its own, does the network enforce
//! NetworkPolicy at all, how fast, and which features of it?
//!
//! 1. baseline — a client reaches a server (else nothing below means anything);
//! 2. ingress deny — a policy admitting only the canary's control pod is applied, and the
//!    client probes until it is denied: the enforcement latency;
//! 3. capabilities — policies for UDP, named ports, `endPort`, SCTP-is-not-TCP,
//!    namespaceSelector, egress deny and ipBlock `except`, each on pods of its own, probed
//!    until they all behave or the bound runs out;
//! 4. pod-start window — a fresh pod the egress policy selects probes from its first moment:
//!    how long traffic the policy denies still got out.
//!
//! Every expectation is the engine's answer for the canary's own objects, and every denial is
//! backed by a control probe that shows the target alive. The probes run in pollers (probers
//! repeating their plan every 50 ms, [`crate::cluster::poll`]), so the timings hold on
//! Kubernetes too, where a batch is a pod.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_probe::wire::ProbeResult;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::check::{Check, Judged, Observed, PolicyAnswer, Probe, TargetKey, Verdict};
use super::judge;
use crate::cluster::{Cluster, ClusterError, ProbePod, Role, Round, Running};
use crate::engine::{ContainerPort, Endpoint, Engine, Protocol};
use crate::model::ObjectKey;
use crate::report::reason::because;
use crate::scenario::CanaryOptions;

/// The label that tells the canary's pods apart.
const CANARY_LABEL: &str = "netpol-verify.io/canary";
/// Timeout of each canary probe: short, so polls are quick (the cluster network is local).
const POLL_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the canary polls: fine enough to time enforcement, coarse enough to stay cheap.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the baseline may take once every prober polls.
const BASELINE_BOUND: Duration = Duration::from_secs(5);

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
        .map(|p| super::pod_object(p, &[]))
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

/// What the canary of run `run_id` creates, for `--dry-run`: its namespaces, its pods (the
/// fresh pod-start prober last) and its policies. The ipBlock policy's `except` names a pod's
/// address, known only at run time: `target` stands in.
pub fn objects(run_id: &str, target: IpAddr) -> (Vec<String>, Vec<ProbePod>, Vec<NetworkPolicy>) {
    let names = Names::new(run_id);
    let ips = HashMap::from([(names.pod("target"), target)]);
    let mut policies = vec![ingress_policy(&names)];
    policies.extend(capability_policies(&names, &ips));
    let mut pods = pods(&names);
    pods.push(late_pod(&names));
    (vec![names.namespace.clone(), names.peer_namespace.clone()], pods, policies)
}

/// The canary's probers, for `--dry-run`: the pods that poll (its clients, the control pod,
/// and the fresh pod of the pod-start window). Each runs a poller pod per step it takes part
/// in, `NAME-p0`, `NAME-p1`, ...
pub fn probers(run_id: &str) -> Vec<ProbePod> {
    let names = Names::new(run_id);
    let polls = |p: &ProbePod| matches!(p.role, Role::Client | Role::Control);
    pods(&names).into_iter().filter(polls).chain([late_pod(&names)]).collect()
}

/// How long the pollers of the canary's first step (the baseline, then the deny until it is
/// enforced) run: the longest step.
pub fn first_step(options: &CanaryOptions, pod_timeout: Duration) -> Duration {
    // NB: each poller counts from its own start, and they may start far apart: generous.
    pod_timeout + BASELINE_BOUND + options.enforce_timeout + Duration::from_secs(5)
}

/// The fresh prober of the pod-start window: the egress policy selects it.
fn late_pod(names: &Names) -> ProbePod {
    let key = ObjectKey::new(&names.namespace, format!("nv-canary-late-{}", names.run_id));
    let mut late = super::probe_pod(&key, Role::Client, &names.run_id, &[]);
    late.labels.insert(CANARY_LABEL.into(), "egress-client".into());
    late
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
    let serving: Vec<ProbePod> = pods(&names).into_iter().filter(|p| p.role != Role::Client).collect();
    super::create_all(cluster, &serving, |_| {}).await.map_err(|(_, e)| e)?;
    let keys: Vec<ObjectKey> = serving.iter().map(|p| p.key.clone()).collect();
    let running = cluster.wait_running(&keys, pod_timeout).await?;
    let ips: HashMap<ObjectKey, IpAddr> = running.into_iter().map(|Running { key, ip }| (key, ip)).collect();
    let mut report = CanaryReport::default();

    // 1. Baseline: with no policy, the client reaches the ingress server. The pollers that
    // time the deny run from before it is stored; their first rounds are the baseline.
    let engine_checks = checks(cluster, scenario, &names, &ips).await?;
    let baseline: Vec<Check> = engine_checks.iter().filter(|c| c.group == "ingress deny").cloned().collect();
    let controls = controls_for(&baseline, &names);
    let total = first_step(options, pod_timeout);
    let since = Instant::now();
    let mut watch =
        Watch::start(cluster, &names, &probes_of(&baseline, &controls), total, pod_timeout).await?;
    let reached = |watch: &Watch| {
        baseline.iter().all(|c| watch.since(since).get(&c.probe.id).is_some_and(ProbeResult::reached))
    };
    watch.until(pod_timeout, |w| w.all_started()).await;
    let deadline = Instant::now() + BASELINE_BOUND;
    while !reached(&watch) && watch.next(deadline).await.is_some() {}
    if !reached(&watch) {
        let silent = watch.silent();
        let detail = if silent.is_empty() {
            format!(
                "{} could not reach {} with no policy in place: nothing the canary sees would mean anything",
                names.pod("client"),
                names.pod("ingress")
            )
        } else {
            format!(
                "the pollers of {} ended without a single round: their probe did not run (a netpol-probe older than `batch --every`, or a pod that exited), so the canary saw nothing",
                silent.join(", ")
            )
        };
        report.capabilities.push(Capability { name: "connectivity", status: "inconclusive", detail });
        report.checks = judge::judge(baseline, &[], &watch.since(since));
        return Ok(report);
    }

    // 2. Ingress deny, and how long until it is enforced.
    // NB: timed from the request, so the latency includes storing the policy.
    let stored = Instant::now();
    cluster.create_policy(&ingress_policy(&names), run_id).await?;
    let checks_now = checks(cluster, scenario, &names, &ips).await?;
    let deny: Vec<Check> = checks_now.iter().filter(|c| c.group == "ingress deny").cloned().collect();
    let deadline = stored + options.enforce_timeout;
    // Enforced: two rounds of the client in a row denied (not failed in themselves), begun
    // after the policy was stored, while the control shows the server alive. NB: two, because
    // a relayed round's start is an estimate that may put a round begun just before the policy
    // after it; the latency counts from the first of them.
    let client = names.pod("client");
    let mut streak: Option<(Instant, u32)> = None;
    while let Some((key, round)) = watch.next(deadline).await {
        if key != client || round.sent < stored {
            continue;
        }
        let in_round = |id: &str| round.results.iter().find(|r| r.id.as_deref() == Some(id));
        let denied = deny.iter().all(|c| judge::observed(in_round(&c.probe.id)).is_deny());
        streak = denied.then(|| streak.map_or((round.sent, 1), |(first, n)| (first, n + 1)));
        let alive = controls.iter().all(|k| watch.since(stored).get(&k.id).is_some_and(ProbeResult::reached));
        if let Some((first, n)) = streak
            && n >= 2
            && alive
        {
            report.enforce_latency = Some(first.saturating_duration_since(stored));
            break;
        }
    }
    drop(watch);

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
    let mut watch = Watch::start(
        cluster,
        &names,
        &probes_of(&all, &controls),
        pod_timeout + bound + Duration::from_secs(5),
        pod_timeout,
    )
    .await?;
    watch.until(pod_timeout, |w| w.all_started()).await;
    let deadline = Instant::now().max(applied) + bound;
    let behaving = |watch: &Watch| {
        let results = watch.since(applied);
        all.iter().filter(|c| c.implementation_defined.is_empty()).all(|c| {
            results.get(&c.probe.id).is_some_and(|r| r.reached() == (c.policy == PolicyAnswer::Allow))
        }) && controls.iter().all(|k| results.contains_key(&k.id))
    };
    while !behaving(&watch) && watch.next(deadline).await.is_some() {}
    let results = watch.since(applied);
    drop(watch);
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
    let (window, check) = pod_start(cluster, scenario, &names, &ips, options, pod_timeout).await?;
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

/// The probes of `checks`, then the controls.
fn probes_of(checks: &[Check], controls: &[Probe]) -> Vec<Probe> {
    checks.iter().map(|c| c.probe.clone()).chain(controls.iter().cloned()).collect()
}

/// Pollers for a set of probes, a prober each, and what every probe saw last.
struct Watch {
    /// Rounds by prober; `None` when that prober's poller ended.
    rounds: mpsc::Receiver<(ObjectKey, Option<Round>)>,
    /// Probers whose poller ended.
    ended: HashSet<ObjectKey>,
    probers: usize,
    started: HashSet<ObjectKey>,
    /// By probe id: the latest result and when its round began.
    latest: HashMap<String, (Instant, ProbeResult)>,
}

impl Watch {
    /// Starts a poller per prober of `probes` (all at once: on Kubernetes each is a pod), each
    /// running for `total` from its first moment; starting is bounded by `limit`.
    async fn start<C: Cluster + Clone + Send + Sync + 'static>(
        cluster: &C,
        names: &Names,
        probes: &[Probe],
        total: Duration,
        limit: Duration,
    ) -> Result<Watch, ClusterError> {
        let probers: Vec<ProbePod> = pods(names);
        Watch::start_with(cluster, &probers, probes, total, limit).await
    }

    async fn start_with<C: Cluster + Clone + Send + Sync + 'static>(
        cluster: &C,
        probers: &[ProbePod],
        probes: &[Probe],
        total: Duration,
        limit: Duration,
    ) -> Result<Watch, ClusterError> {
        let timeout_ms = POLL_TIMEOUT.as_millis() as u64;
        let plans = super::plan::batches_of(probes.iter(), timeout_ms);
        // A prober runs at most this long; dropping the watch stops it sooner.
        let total = total.min(Duration::from_millis(netpol_probe::wire::MAX_REPEAT_MS));
        let mut starting = tokio::task::JoinSet::new();
        for (client, plan) in plans {
            let Some(prober) = probers.iter().find(|p| p.key == client).cloned() else {
                return Err(ClusterError::NotFound { what: format!("canary prober {client}") });
            };
            let cluster = cluster.clone();
            starting.spawn(async move {
                let poller = cluster.start_poll(&prober, &plan, POLL_INTERVAL, total, limit).await;
                (prober.key, poller)
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let mut count = 0;
        let mut failed = None;
        while let Some(joined) = starting.join_next().await {
            let (key, poller) = match joined {
                Ok((key, Ok(poller))) => (key, poller),
                Ok((_, Err(e))) => {
                    failed.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    failed
                        .get_or_insert(ClusterError::Invalid(format!("a canary prober did not start: {e}")));
                    continue;
                }
            };
            count += 1;
            let tx = tx.clone();
            // Owns the poller: it stops once the watch is dropped.
            tokio::spawn(async move {
                let mut poller = poller;
                loop {
                    let round = tokio::select! {
                        () = tx.closed() => return,
                        round = poller.rounds.recv() => round,
                    };
                    let done = round.is_none();
                    if tx.send((key.clone(), round)).await.is_err() || done {
                        return;
                    }
                }
            });
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Watch {
            rounds: rx,
            ended: HashSet::new(),
            probers: count,
            started: HashSet::new(),
            latest: HashMap::new(),
        })
    }

    /// Takes in the next round from any prober, at the latest by `deadline`; `None` when the
    /// deadline passed or every poller ended.
    async fn next(&mut self, deadline: Instant) -> Option<(ObjectKey, Round)> {
        let (key, round) = loop {
            match tokio::time::timeout_at(deadline, self.rounds.recv()).await.ok()?? {
                (key, Some(round)) => break (key, round),
                (key, None) => {
                    self.ended.insert(key);
                }
            }
        };
        self.started.insert(key.clone());
        for result in &round.results {
            if let Some(id) = &result.id {
                self.latest.insert(id.clone(), (round.sent, result.clone()));
            }
        }
        Some((key, round))
    }

    /// Takes in rounds until `done` holds, at most `limit`.
    async fn until(&mut self, limit: Duration, done: impl Fn(&Watch) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) && self.next(deadline).await.is_some() {}
    }

    /// Whether every prober reported a round or ended.
    fn all_started(&self) -> bool {
        self.started.union(&self.ended).count() >= self.probers
    }

    /// Probers whose poller ended without a single round: their probe never ran.
    fn silent(&self) -> Vec<String> {
        let mut silent: Vec<String> =
            self.ended.iter().filter(|k| !self.started.contains(*k)).map(ToString::to_string).collect();
        silent.sort();
        silent
    }

    /// The latest result of each probe from rounds begun at `from` or later.
    fn since(&self, from: Instant) -> HashMap<String, ProbeResult> {
        self.latest
            .iter()
            .filter(|(_, (sent, _))| *sent >= from)
            .map(|(id, (_, r))| (id.clone(), r.clone()))
            .collect()
    }
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

/// Starts a fresh pod that the egress policy selects, probing from its first moment.
///
/// The pod itself is the prober, so each round's time counts from the pod's own start (no
/// clocks to line up). Its probe to `target` on 81 is one the policy denies; each round also
/// shows the pod can send (`target` on 80, which the policy allows), and the unrestricted
/// client polls `target` on 81 alongside: the target is alive.
async fn pod_start<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    scenario: &str,
    names: &Names,
    ips: &HashMap<ObjectKey, IpAddr>,
    options: &CanaryOptions,
    pod_timeout: Duration,
) -> Result<(Option<Duration>, Judged), ClusterError> {
    let target_key = names.pod("target");
    let address =
        *ips.get(&target_key).ok_or_else(|| ClusterError::NotFound { what: format!("pod {target_key}") })?;
    let late = late_pod(names);
    let key = late.key.clone();
    let target = TargetKey { address, port: 81, protocol: Protocol::Tcp, dns: false };
    let expect_name = Some(target_key.to_string());
    let probe = Probe { id: "canary-late".into(), client: key.clone(), target, expect_name, query: None };
    let source = Probe {
        id: "canary-late-source".into(),
        target: TargetKey { port: 80, ..probe.target.clone() },
        ..probe.clone()
    };
    let control = Probe { id: "canary-late-control".into(), client: names.pod("client"), ..probe.clone() };

    // The control first, so that it polls before the fresh pod's first moment.
    let window = options.pod_start_window;
    let probers: Vec<ProbePod> = pods(names).into_iter().chain([late.clone()]).collect();
    let total = pod_timeout + window + Duration::from_secs(5);
    let mut controls =
        Watch::start_with(cluster, &probers, std::slice::from_ref(&control), total, pod_timeout).await?;
    controls.until(pod_timeout, Watch::all_started).await;
    let mut fresh =
        Watch::start_with(cluster, &probers, &[probe.clone(), source], window, pod_timeout).await?;

    // Rounds in which a denial is proven: the fresh pod's probe denied (not failed, not
    // lost), its allowed probe through, and a control round from the last second reaching the
    // target. Both watches are read as their rounds come, so no control result goes stale.
    let mut through: Vec<(Duration, u64)> = Vec::new();
    let mut proven: Vec<Duration> = Vec::new();
    let mut rounds = 0;
    let mut last = None;
    let deadline = Instant::now() + pod_timeout + window + Duration::from_secs(5);
    let mut controls_open = true;
    loop {
        tokio::select! {
            next = fresh.next(deadline) => {
                let Some((_, round)) = next else { break };
                rounds += 1;
                let result = |id: &str| round.results.iter().find(|r| r.id.as_deref() == Some(id));
                let alive = controls.latest.get("canary-late-control").is_some_and(|(sent, r)| {
                    r.reached() && *sent + Duration::from_secs(1) >= round.sent
                });
                match result("canary-late") {
                    Some(r) if r.reached() => through.push((round.at, r.ms)),
                    r if judge::observed(r).is_deny()
                        && result("canary-late-source").is_some_and(ProbeResult::reached)
                        && alive =>
                    {
                        proven.push(round.at);
                    }
                    _ => {}
                }
                last = result("canary-late").cloned();
            }
            next = controls.next(deadline), if controls_open => controls_open = next.is_some(),
        }
    }
    drop((fresh, controls));

    let snapshot = with_clients(cluster.discover().await?.snapshot, names);
    let snapshot = match snapshot.find_pod(&key) {
        Some(_) => snapshot,
        None => snapshot.with_pods(vec![super::pod_object(&late, &[])]),
    };
    let engine = Engine::new(&snapshot).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let (Some(from), Some(to)) = (snapshot.find_pod(&key), snapshot.find_pod(&target_key)) else {
        return Err(ClusterError::NotFound { what: format!("pod {key} or {target_key}") });
    };
    let mut check = pod_check(
        &engine,
        scenario,
        "pod-start window",
        (from, &key),
        (to, &target_key, address),
        81,
        Protocol::Tcp,
        100,
    );
    check.probe.id = "canary-late".into();
    let window_ms = window.as_millis();
    let (verdict, observed, measured, detail) = if check.policy != PolicyAnswer::Deny {
        let detail = "the stored policies do not deny this, so there is no window to measure".to_string();
        (Verdict::Inconclusive, judge::observed(last.as_ref()), None, detail)
    } else if let Some(&(leaked, ms)) = through.last() {
        // The window lasts until the first proven denial after the last leak; with none, at
        // least until the last leak connected. Never 0: that means denied from the start.
        let (measured, until) = match proven.iter().find(|&&at| at > leaked) {
            Some(&denied) => (denied, format!("denied from {} ms on", denied.as_millis())),
            None => (
                leaked + Duration::from_millis(ms),
                "still getting out when the watch ended: the window is at least that long".to_string(),
            ),
        };
        let measured = measured.max(Duration::from_millis(1));
        let detail = format!(
            "traffic the policy denies left the fresh pod in {} of {rounds} probe rounds, the last begun {} ms after the pod started; {until} (watched for {window_ms} ms)",
            through.len(),
            leaked.as_millis()
        );
        (Verdict::NotEnforced, Observed::Allow, Some(measured), detail)
    } else if proven.len() == rounds && rounds > 0 {
        let detail = format!(
            "denied in all {rounds} probe rounds over {window_ms} ms from the pod's start, each with the pod reaching another port and the control reaching the target"
        );
        (Verdict::Pass, judge::observed(last.as_ref()), Some(Duration::ZERO), detail)
    } else {
        let detail = format!(
            "never got out, but only {} of {rounds} rounds proved a denial (the others were lost, failed, or had no live control)",
            proven.len()
        );
        (Verdict::Inconclusive, judge::observed(last.as_ref()), None, detail)
    };
    let ms = last.map(|r| r.ms);
    Ok((measured, Judged { check, observed, verdict, detail, ms }))
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
