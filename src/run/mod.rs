//! `netpol-verify run`: discover → engine → plan → deploy probe pods → one batch per client
//! pod → judge → report, and clean up on every path.
//!
//! The orchestration here is the only async, I/O-doing part of a run besides the backend; the
//! planner ([`plan`]), the judge ([`judge`]) and the reports are pure.

pub mod canary;
pub mod check;
pub mod controls;
pub mod dry_run;
pub mod judge;
pub mod layout;
pub mod plan;
pub mod progress;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube_core::{Selector, SelectorExt};
use netpol_probe::wire::ProbeResult;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cleaned, Cluster, ClusterError, ProbePod, RUN_LABEL, Role};
use crate::engine::Engine;
use crate::model::{Note, ObjectKey, name_of};
use crate::scenario::{Body, Scenario};
use check::{Judged, Verdict};
use plan::Deployment;
use progress::Progress;

/// Namespaces left out unless asked for: the control plane's own.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Which namespaces a run probes.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only these (empty: all).
    pub namespaces: Vec<String>,
    /// Never these.
    pub exclude: Vec<String>,
    /// Only namespaces whose labels match.
    pub selector: Option<Selector>,
    /// Include kube-system, kube-public and kube-node-lease.
    pub include_system: bool,
}

impl Scope {
    /// The namespaces in scope, sorted; the tool's own are never in it.
    pub fn apply(&self, namespaces: &[Namespace]) -> Vec<String> {
        namespaces
            .iter()
            .filter(|ns| {
                let name = name_of(&ns.metadata);
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                let tools = crate::cluster::is_tools(Some(&labels));
                let system = SYSTEM_NAMESPACES.contains(&name);
                let named = self.namespaces.iter().any(|n| n == name);
                !tools
                    && (self.namespaces.is_empty() || named)
                    && (!system || self.include_system || named)
                    && !self.exclude.iter().any(|n| n == name)
                    && self.selector.as_ref().is_none_or(|s| s.matches(&labels))
            })
            .map(|ns| name_of(&ns.metadata).to_string())
            .collect()
    }
}

/// How a run is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_id: String,
    pub scenarios: Vec<Scenario>,
    pub scope: Scope,
    /// Each probe's timeout.
    pub probe_timeout: Duration,
    /// How long probe pods may take to start.
    pub pod_timeout: Duration,
    /// Objects of earlier runs older than this are removed first (a crashed run's).
    pub sweep_after: Duration,
    /// Also deploy, per distinct workload label set, a probe server wearing those labels.
    pub mimic_workloads: bool,
    /// `--spread`: servers on one node, each namespace's clients on that node and another.
    /// `Some(true)`: nodes with NoSchedule/NoExecute taints may be chosen (the pods tolerate
    /// every taint).
    pub spread: Option<bool>,
    /// Add control policies where a check would lack a positive control (`--no-control-policies`
    /// turns them off).
    pub control_policies: bool,
    /// How long the run waits after storing its control policies before it probes: the CNI
    /// enforces them asynchronously.
    pub control_settle: Duration,
}

/// Everything a run found: the input of every report.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub run_id: String,
    /// Where it ran, e.g. `lab shop (CNI none)`.
    pub target: String,
    pub scenarios: Vec<String>,
    pub namespaces: Vec<String>,
    pub judged: Vec<Judged>,
    pub canary: Option<canary::CanaryReport>,
    pub notes: Vec<Note>,
    /// Wall time per phase, in order. `probe` and `canary (alongside probe)` overlap and are
    /// both inside `probe and canary`; the others follow one another.
    pub phases: Vec<(String, Duration)>,
    pub cleaned: Cleaned,
    /// Parts of the run that did not happen (a failed canary, no check at all): the run is
    /// at best inconclusive.
    pub incomplete: Vec<String>,
    /// The cluster's CNI and provider, as far as they can be recognised.
    pub detection: Option<crate::detect::Detection>,
    /// The NetworkPolicies the run added for its own positive controls (removed with it).
    pub controls: Vec<controls::ControlPolicy>,
}

impl RunReport {
    /// How many checks got each verdict.
    pub fn counts(&self) -> BTreeMap<check::Verdict, usize> {
        let mut counts: BTreeMap<check::Verdict, usize> =
            check::Verdict::ALL.iter().map(|v| (*v, 0)).collect();
        for judged in self.all_checks() {
            *counts.entry(judged.verdict).or_default() += 1;
        }
        counts
    }

    /// Scenario checks and the canary's, in report order.
    pub fn all_checks(&self) -> impl Iterator<Item = &Judged> {
        self.canary.iter().flat_map(|c| c.checks.iter()).chain(&self.judged)
    }

    /// The exit status the run deserves (docs/cli.md).
    pub fn exit(&self) -> crate::error::Exit {
        let counts = self.counts();
        let count = |v| counts.get(&v).copied().unwrap_or(0);
        if check::Verdict::ALL.iter().any(|v| v.is_failure() && count(*v) > 0) {
            crate::error::Exit::Findings
        } else if count(check::Verdict::Inconclusive) > 0 || !self.incomplete.is_empty() {
            crate::error::Exit::Inconclusive
        } else {
            crate::error::Exit::Pass
        }
    }
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cluster refused or failed a step.
    #[error("{step}: {source}")]
    Cluster { step: String, source: ClusterError },
    /// A stored policy is invalid.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; removed {} pods, {} policies and {} namespaces of run {run_id}", cleaned.pods, cleaned.policies, cleaned.namespaces)]
    Interrupted { run_id: String, cleaned: Cleaned },
    /// `--spread` has no two nodes to spread over.
    #[error("{0}")]
    Spread(String),
    /// `--namespace` names a namespace the cluster does not have.
    #[error("namespace {0} does not exist (namespaces: {1})")]
    NoSuchNamespace(String, String),
    /// The run's probes were made, but it may not remove what it created.
    #[error("{0}")]
    LeftBehind(String),
    /// The run failed, and so did its cleanup.
    #[error("{error}; also, {cleanup}")]
    CleanupFailed { error: Box<RunError>, cleanup: String },
    /// The run failed after noting things a user needs to read with the error (a permission
    /// it went on without, say): the notes of the report the failure lost.
    #[error("{error}")]
    Noted { error: Box<RunError>, notes: Vec<Note> },
}

fn step(step: &str) -> impl FnOnce(ClusterError) -> RunError + '_ {
    move |source| RunError::Cluster { step: step.to_string(), source }
}

/// A fresh run id: six lowercase letters and digits.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut seed = nanos ^ (u128::from(std::process::id()) << 64);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::new();
    for _ in 0..6 {
        // The first character is a letter, so names built from it are valid everywhere.
        let range = if id.is_empty() { 26 } else { alphabet.len() as u128 };
        id.push(alphabet[(seed % range) as usize] as char);
        seed = (seed / range) ^ (seed >> 17);
    }
    id
}

/// The namespace of the tool's own pods in run `run_id`.
pub fn tool_namespace(run_id: &str) -> String {
    format!("netpol-verify-{run_id}")
}

/// Runs everything, then cleans up whatever happened (also when `cancel` fires).
pub async fn run<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    options: &RunOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<RunReport, RunError> {
    let mut report = RunReport {
        run_id: options.run_id.clone(),
        scenarios: options.scenarios.iter().map(|s| s.name.clone()).collect(),
        ..RunReport::default()
    };
    let outcome = tokio::select! {
        // NB: cancellation first, so a run cancelled before it starts creates nothing.
        biased;
        () = cancel.cancelled() => None,
        outcome = run_steps(cluster, options, progress, &mut report) => Some(outcome),
    };
    // What the backend noted on the way (how admission sized the pods, say), however it ended.
    report.notes.extend(cluster.notes());
    let started = Instant::now();
    progress.phase("cleaning up", 0);
    let cleaned = tokio::time::timeout(Duration::from_secs(60), cluster.cleanup(&options.run_id)).await;
    progress.finish();
    report.phases.push(("cleanup".into(), started.elapsed()));
    let left_behind = |why: String| {
        format!(
            "cleanup of run {id} {why}: remove what is left (everything labelled {RUN_LABEL}={id}) \
             with `netpol-verify cleanup --run {id}`, or on a lab with `netpol-verify lab down`",
            id = options.run_id
        )
    };
    let (cleaned, cleanup_failure, refused) = match cleaned {
        Ok(Ok(cleaned)) => (cleaned, None, false),
        Ok(Err(e)) => {
            (Cleaned::default(), Some(left_behind(format!("failed ({e})"))), e.refused_permission())
        }
        Err(_) => (Cleaned::default(), Some(left_behind("took over 60 s".into())), false),
    };
    report.cleaned = cleaned.clone();
    let error = match outcome {
        None => RunError::Interrupted { run_id: options.run_id.clone(), cleaned },
        Some(Err(e)) => e,
        // A run that may not remove what it made fails, whatever it found: the next one would
        // fail the same way and leave as much.
        Some(Ok(())) if refused => RunError::LeftBehind(cleanup_failure.clone().unwrap_or_default()),
        Some(Ok(())) => {
            report.notes.extend(cleanup_failure.map(Note));
            if report.all_checks().next().is_none() {
                report.incomplete.push("no check was made".into());
            }
            return Ok(report);
        }
    };
    // A failed run's report is lost, so a failed cleanup and the notes travel with its error.
    let error = match cleanup_failure {
        Some(_) if matches!(error, RunError::LeftBehind(_)) => error,
        Some(cleanup) => RunError::CleanupFailed { error: Box::new(error), cleanup },
        None => error,
    };
    if report.notes.is_empty() {
        Err(error)
    } else {
        Err(RunError::Noted { error: Box::new(error), notes: std::mem::take(&mut report.notes) })
    }
}

async fn run_steps<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    options: &RunOptions,
    progress: &dyn Progress,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let mut clock = Instant::now();
    let mut lap = |report: &mut RunReport, name: &str| {
        report.phases.push((name.to_string(), clock.elapsed()));
        clock = Instant::now();
    };

    progress.phase("discovering", 0);
    let discovery = cluster.discover().await.map_err(step("discovering the cluster"))?;
    report.notes.extend(discovery.notes);
    report.detection = Some(
        discovery
            .detection
            .unwrap_or_else(|| crate::detect::detect(discovery.snapshot.pods(), discovery.snapshot.nodes())),
    );
    // Invalid stored policies stop the run before anything is created.
    Engine::new(&discovery.snapshot)?;
    match cluster.sweep(options.sweep_after).await {
        Ok(swept) if swept.pods + swept.policies + swept.namespaces > 0 => report.notes.push(Note(format!(
            "removed what earlier runs left ({} pods, {} policies, {} namespaces older than {} s)",
            swept.pods,
            swept.policies,
            swept.namespaces,
            options.sweep_after.as_secs()
        ))),
        Ok(_) => {}
        Err(e) => report.notes.push(Note(format!("could not sweep earlier runs' leftovers: {e}"))),
    }
    let existing: Vec<&str> = discovery.snapshot.namespaces().iter().map(|n| name_of(&n.metadata)).collect();
    if let Some(missing) = options.scope.namespaces.iter().find(|n| !existing.contains(&n.as_str())) {
        return Err(RunError::NoSuchNamespace(missing.clone(), existing.join(", ")));
    }
    let namespaces = options.scope.apply(discovery.snapshot.namespaces());
    report.namespaces = namespaces.clone();
    let has_groups = options.scenarios.iter().any(|s| matches!(s.body, Body::Groups(_)));
    if namespaces.is_empty() && has_groups {
        report.incomplete.push("no namespace is in scope: the scenarios' groups checked nothing".into());
    }
    lap(report, "discover");

    // Deploy: a server per namespace in scope and the control pod. Clients are started by
    // their first batch (on Kubernetes a client pod is created with its plan).
    let run_id = &options.run_id;
    let layout::Layout { deployment, pods, clients, spread } =
        layout::layout(&discovery.snapshot, &namespaces, options).map_err(RunError::Spread)?;
    if let Some((same, other)) = &spread {
        report.notes.push(Note(format!(
            "--spread: the servers and the control pod run on node {same}; each namespace probes from a client there (nv-client-samenode) and one on node {other} (nv-client-othernode)"
        )));
    }
    if deployment.control.is_some() {
        let tool_ns = tool_namespace(run_id);
        cluster.create_namespace(&tool_ns, run_id).await.map_err(step("creating the tool's namespace"))?;
    }
    progress.phase("starting probe pods", pods.len() as u64);
    create_all(cluster, &pods, |_| progress.advance(1))
        .await
        .map_err(|(pod, e)| step(&format!("creating pod {pod}"))(e))?;
    let keys: Vec<ObjectKey> = pods.iter().map(|p| p.key.clone()).collect();
    if !keys.is_empty() {
        cluster.wait_running(&keys, options.pod_timeout).await.map_err(step("waiting for the probe pods"))?;
    }
    // The control pod also runs batches (its control probes).
    let probers: Vec<ProbePod> =
        clients.into_iter().chain(pods.into_iter().filter(|p| p.role == Role::Control)).collect();
    lap(report, "deploy");

    let canary = options.scenarios.iter().find_map(|s| match &s.body {
        Body::Canary(o) => Some((s.name.clone(), o.clone())),
        Body::Groups(_) => None,
    });
    // The canary works in namespaces of its own, so it runs alongside the scenarios' probes.
    let probing = async {
        let started = Instant::now();
        let label = if canary.is_some() { "probing (and canary)" } else { "probing" };
        (probe(cluster, options, &deployment, &probers, progress, label).await, started.elapsed())
    };
    let canary_run = async {
        let started = Instant::now();
        match &canary {
            Some((name, o)) => {
                Some((canary::run(cluster, name, o, run_id, options.pod_timeout).await, started.elapsed()))
            }
            None => None,
        }
    };
    let ((probed, probe_time), canary_report) = tokio::join!(probing, canary_run);
    let Probed { judged, notes, controls } = probed?;
    report.notes.extend(notes);
    if let Some((same, other)) = &spread {
        report.notes.extend(node_differences(&judged, same, other));
    }
    report.judged = judged;
    report.controls = controls;
    report.phases.push(("probe".into(), probe_time));
    if let Some((canary_report, canary_time)) = canary_report {
        report.phases.push(("canary (alongside probe)".into(), canary_time));
        match canary_report {
            Ok(canary_report) => report.canary = Some(canary_report),
            Err(e) if e.refused_permission() => return Err(step("running the canary")(e)),
            // The scenarios' results stand; the run is at best inconclusive.
            Err(e) => report.incomplete.push(format!("the canary could not finish: {e}")),
        }
    }
    lap(report, "probe and canary");
    Ok(())
}

/// `--spread`: where a namespace's two clients, one on each node, got different verdicts for
/// the same probe — enforced from one node, not from the other — a note naming the node that
/// does not enforce (a node pool whose policy agent does not run, say).
fn node_differences(judged: &[Judged], same: &str, other: &str) -> Vec<Note> {
    let on = |j: &Judged, node: &str| j.check.probe.client.name.starts_with(&format!("nv-client-{node}-"));
    let key = |j: &Judged| {
        (
            j.check.from_namespace.clone(),
            j.check.scenario.clone(),
            j.check.group.clone(),
            j.check.probe.target.clone(),
        )
    };
    let mut notes = Vec::new();
    for (node, here, there) in [(other, "othernode", "samenode"), (same, "samenode", "othernode")] {
        let failing: Vec<&Judged> = judged
            .iter()
            .filter(|j| on(j, here) && j.verdict == Verdict::NotEnforced)
            .filter(|j| judged.iter().any(|k| on(k, there) && key(k) == key(j) && k.verdict == Verdict::Pass))
            .collect();
        if let Some(first) = failing.first() {
            notes.push(Note(format!(
                "enforcement differs between nodes: {} checks not enforced from node {node} pass from the other node (e.g. {} → {} {}/{}); is NetworkPolicy enforced on node {node} (its CNI's policy agent)?",
                failing.len(),
                first.check.probe.client,
                first.check.to,
                first.check.probe.target.port,
                first.check.probe.target.protocol
            )));
        }
    }
    notes
}

/// How many probe pods are created at once: a few requests in flight, not a burst.
const CREATING_AT_ONCE: usize = 8;

/// Creates `pods`, a few at a time (the first failure stops the rest, with the pod it was
/// for); `created` is told of each.
pub async fn create_all<C: Cluster>(
    cluster: &C,
    pods: &[ProbePod],
    created: impl Fn(&ProbePod),
) -> Result<(), (ObjectKey, ClusterError)> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(pods.iter().map(|pod| async {
        cluster.create_probe_pod(pod).await.map_err(|e| (pod.key.clone(), e))?;
        created(pod);
        Ok::<(), (ObjectKey, ClusterError)>(())
    }))
    .buffered(CREATING_AT_ONCE)
    .try_collect::<Vec<()>>()
    .await
    .map(|_| ())
}

/// The Pod object a probe pod is, for the engine: its labels and ports, and its addresses
/// once known.
pub fn pod_object(pod: &ProbePod, ips: &[std::net::IpAddr]) -> k8s_openapi::api::core::v1::Pod {
    let options = crate::manifest::PodOptions::default();
    let mut object = crate::manifest::probe_pod(pod, &options, crate::manifest::Work::of(pod.role), false);
    object.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Running".into()),
        pod_ip: ips.first().map(ToString::to_string),
        pod_ips: (!ips.is_empty())
            .then(|| ips.iter().map(|ip| k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() }).collect()),
        ..Default::default()
    });
    object
}

/// What the probing found.
#[derive(Default)]
struct Probed {
    judged: Vec<Judged>,
    notes: Vec<Note>,
    controls: Vec<controls::ControlPolicy>,
}

/// Plans against the cluster as it is now (servers and the control pod included, clients as
/// they will be), adds the control policies the plan needs, runs one batch per prober,
/// answers again with the clients' addresses, and judges.
async fn probe<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    options: &RunOptions,
    deployment: &Deployment,
    probers: &[ProbePod],
    progress: &dyn Progress,
    label: &str,
) -> Result<Probed, RunError> {
    if deployment.clients.is_empty() {
        return Ok(Probed::default());
    }
    let discovery = cluster.discover().await.map_err(step("reading the cluster with the probe pods"))?;
    let absent: Vec<_> = probers
        .iter()
        .filter(|p| discovery.snapshot.find_pod(&p.key).is_none())
        .map(|p| pod_object(p, &[]))
        .collect();
    let snapshot = discovery.snapshot.with_pods(absent);
    let engine = Engine::new(&snapshot)?;
    let checks = plan::plan_checks(&engine, &options.scenarios, deployment);
    let mut planned = plan::with_controls(&engine, deployment, checks.clone());
    let needed = if options.control_policies {
        controls::needed(&engine, &planned, deployment, &options.run_id)
    } else {
        Vec::new()
    };
    let timeout_ms = options.probe_timeout.as_millis().clamp(1, 300_000) as u64;
    let batches = plan::batches(&planned, timeout_ms);
    // A client may first have to start (on Kubernetes, a pod created with its plan).
    let limit = options.probe_timeout + options.pod_timeout + Duration::from_secs(15);
    let total: usize = batches.values().map(|b| b.probes.len()).sum();
    progress.phase(label, total as u64);

    let mut notes = planned.notes.clone();
    let mut got = Batches::default();
    let mut node = tokio::task::JoinSet::new();
    {
        let cluster = cluster.clone();
        let plan = plan::node_batch(&planned, timeout_ms);
        node.spawn(async move { cluster.run_node_batch(&plan, limit).await });
    }
    run_batches(cluster, probers, batches, limit, progress, &mut got, &mut notes).await?;
    match node.join_next().await {
        Some(Ok(Ok(output))) => {
            got.results.extend(output.results.into_iter().filter_map(|r| Some((r.id.clone()?, r))))
        }
        Some(Ok(Err(e))) if e.refused_permission() => {
            return Err(step("running the node's control probes")(e));
        }
        Some(Ok(Err(e))) => notes.push(Note(format!("the node's control probes failed ({e})"))),
        _ => notes.push(Note("the node's control probes did not run".into())),
    }
    // Only now, every check made, the control policies and the controls they allow: while a
    // check runs, no policy of the tool's selects any pod (one that isolated a pod the network
    // leaves a stored policy unenforced on would make its denials look enforced).
    let mut late = Vec::new();
    let mut added = Vec::new();
    if !needed.is_empty() {
        let phase = ControlPhase {
            options,
            deployment,
            probers,
            snapshot: &snapshot,
            checks: &checks,
            planned: &planned,
            timeout_ms,
            limit,
        };
        let phased = control_phase(cluster, progress, &phase, &needed, &mut got, &mut notes);
        match phased.await {
            Ok(probes) => {
                late = probes;
                added = needed;
            }
            Err(ControlFailure::Fatal(e)) => return Err(e),
            Err(ControlFailure::LeftOut(why)) => notes.push(Note(format!(
                "control policies left out ({why}): the checks that needed them stay inconclusive"
            ))),
        }
    }
    let Batches { results, addresses } = got;
    // With the clients' addresses known, ipBlock rules see them as the network did.
    let placed: Vec<_> = probers
        .iter()
        .filter_map(|p| addresses.iter().find(|(key, _)| *key == p.key).map(|(_, ips)| pod_object(p, ips)))
        .collect();
    if !placed.is_empty() {
        let snapshot = snapshot.with_pods(placed);
        let engine = Engine::new(&snapshot)?;
        plan::reanswer(&engine, &mut planned.checks);
    }
    let controls: Vec<_> =
        planned.controls.iter().chain(&late).chain(&planned.node_controls).cloned().collect();
    Ok(Probed { judged: judge::judge(planned.checks, &controls, &results), notes, controls: added })
}

/// What batches brought back: results by probe id, and each client's addresses.
#[derive(Default)]
struct Batches {
    results: HashMap<String, ProbeResult>,
    addresses: Vec<(ObjectKey, Vec<std::net::IpAddr>)>,
}

/// Runs one batch per client, all at once; what each brought back goes into `got`, what went
/// wrong into `notes`. Only a permission the tool lacks stops the run.
async fn run_batches<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    probers: &[ProbePod],
    batches: BTreeMap<ObjectKey, netpol_probe::wire::Plan>,
    limit: Duration,
    progress: &dyn Progress,
    got: &mut Batches,
    notes: &mut Vec<Note>,
) -> Result<(), RunError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (client, batch) in batches {
        let Some(prober) = probers.iter().find(|p| p.key == client).cloned() else {
            notes.push(Note(format!("{client} is not one of the run's probe pods: its probes did not run")));
            continue;
        };
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let output = cluster.run_batch(&prober, &batch, limit).await;
            (client, batch.probes.len(), output)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((client, count, output)) = joined else {
            notes.push(Note("a probe batch task failed; its probes did not run".into()));
            continue;
        };
        progress.advance(count as u64);
        match output {
            Ok(output) => {
                if output.summary.is_none() {
                    notes.push(Note(format!(
                        "the batch in {client} did not finish: {} of {count} probes reported",
                        output.results.len()
                    )));
                }
                if !output.client_ips.is_empty() && !got.addresses.iter().any(|(k, _)| *k == client) {
                    got.addresses.push((client.clone(), output.client_ips));
                }
                for result in output.results {
                    if let Some(id) = result.id.clone() {
                        got.results.insert(id, result);
                    }
                }
            }
            // A permission the tool lacks fails every batch alike: the run cannot be made.
            Err(e) if e.refused_permission() => {
                return Err(step(&format!("running the batch in {client}"))(e));
            }
            Err(e) => notes.push(Note(format!("the batch in {client} failed ({e}): its probes did not run"))),
        }
    }
    Ok(())
}

/// Why the control phase did not happen: the run cannot go on, or it goes on without them.
enum ControlFailure {
    Fatal(RunError),
    LeftOut(String),
}

/// What the control phase works from.
struct ControlPhase<'a> {
    options: &'a RunOptions,
    deployment: &'a Deployment,
    probers: &'a [ProbePod],
    snapshot: &'a crate::model::Snapshot,
    checks: &'a plan::Planned,
    planned: &'a plan::Planned,
    timeout_ms: u64,
    limit: Duration,
}

/// After the checks: stores the control policies, waits `--control-settle`, runs the controls
/// they allow that the first batches did not make (ids `q1`, `q2`, ...), and removes them
/// again (cleanup would too). The controls made.
async fn control_phase<C: Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    progress: &dyn Progress,
    phase: &ControlPhase<'_>,
    needed: &[controls::ControlPolicy],
    got: &mut Batches,
    notes: &mut Vec<Note>,
) -> Result<Vec<check::Probe>, ControlFailure> {
    let ControlPhase { options, deployment, probers, .. } = *phase;
    let with = phase.snapshot.with_policies(needed.iter().map(|c| c.policy.clone()).collect());
    let engine = Engine::new(&with).map_err(|e| ControlFailure::Fatal(e.into()))?;
    let mut again = phase.checks.checks.clone();
    plan::reanswer(&engine, &mut again);
    // NB: by construction they change no check's answer (and no check runs while they exist);
    // should one ever, they are left out rather than judged on.
    controls::unchanged(&phase.checks.checks, &again).map_err(|change| {
        ControlFailure::LeftOut(format!("they would change a check: {change}; please report this"))
    })?;
    let mut created = Vec::new();
    let mut outcome = Ok(());
    for control in needed {
        match cluster.create_policy(&control.policy, &options.run_id).await {
            Ok(()) => created.push(control.key()),
            // A quota or an admission webhook may refuse them: the run goes on without. A
            // permission the tool lacks stops it, as everywhere.
            Err(e) if e.refused_permission() => {
                outcome = Err(ControlFailure::Fatal(step(&format!(
                    "creating control policy {}",
                    control.key()
                ))(e)));
                break;
            }
            Err(e) => {
                outcome = Err(ControlFailure::LeftOut(format!("creating {}: {e}", control.key())));
                break;
            }
        }
    }
    let mut late = Vec::new();
    if outcome.is_ok() {
        tokio::time::sleep(options.control_settle).await;
        let replanned = plan::with_controls(&engine, deployment, phase.checks.clone());
        let made = |p: &check::Probe| {
            phase.planned.controls.iter().any(|c| c.client == p.client && c.target == p.target)
        };
        late = replanned
            .controls
            .into_iter()
            .filter(|p| !made(p))
            .enumerate()
            .map(|(i, p)| check::Probe { id: format!("q{}", i + 1), ..p })
            .collect();
        let batches = plan::batches_of(late.iter(), phase.timeout_ms);
        progress.phase("probing (controls)", late.len() as u64);
        outcome = run_batches(cluster, probers, batches, phase.limit, progress, got, notes)
            .await
            .map_err(ControlFailure::Fatal);
    }
    for key in created {
        // NB: what cannot be removed now, the run's cleanup removes (it is labelled with the run).
        let _ = cluster.delete_policy(&key).await;
    }
    outcome.map(|()| late)
}

/// `--mimic-workloads`: a probe server per distinct workload label set of `namespace`, wearing
/// those labels and listening on the workload's ports, so the workload's own policies select
/// it. (On Kubernetes it never becomes Ready: no Service sends it real traffic.)
pub fn mimics(
    snapshot: &crate::model::Snapshot,
    namespace: &str,
    run_id: &str,
    deployment: &mut Deployment,
) -> Vec<ProbePod> {
    plan::workloads(snapshot, namespace)
        .into_iter()
        .enumerate()
        .map(|(i, (labels, ports))| {
            let key = ObjectKey::new(namespace, format!("nv-mimic-{i}-{run_id}"));
            deployment.mimics.push((namespace.to_string(), key.clone()));
            ProbePod { key, role: Role::Server, run_id: run_id.to_string(), labels, ports, node: None }
        })
        .collect()
}

/// A probe pod of this run.
pub fn probe_pod(
    key: &ObjectKey,
    role: Role,
    run_id: &str,
    ports: &[crate::engine::ContainerPort],
) -> ProbePod {
    ProbePod {
        node: None,
        key: key.clone(),
        role,
        run_id: run_id.to_string(),
        labels: BTreeMap::new(),
        ports: ports.to_vec(),
    }
}

#[cfg(test)]
mod tests;
