//! The `Cluster` trait: the one seam between the pure core and the world.
//!
//! Everything netpol-verify does to a cluster goes through it: read what is there, create its
//! own short-lived namespaces, probe pods and policies (all labelled with the run's id), wait
//! for pods with a bound, run one probe batch per client pod, and remove everything of a run.
//! One backend talks to clusters: Kubernetes ([`crate::kubernetes::KubeCluster`]), against any
//! API server, the lab's included. The trait stays as the seam for the in-memory test double
//! of `run`'s own tests (failures no API server can be made to give).
//! Methods return futures that are `Send`, so a backend may do its work on any runtime thread.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_probe::wire::{Plan, ProbeResult, Summary};

use crate::model::{Note, ObjectKey, Snapshot};

pub mod poll;
pub use poll::{Poller, Round};

/// Every object the tool creates carries this label...
pub const APP_LABEL: &str = "app.kubernetes.io/name";
pub const APP_VALUE: &str = "netpol-verify";
/// ...and the id of the run that created it...
pub const RUN_LABEL: &str = "netpol-verify.io/run";
/// ...and, for pods, what the pod is for...
pub const ROLE_LABEL: &str = "netpol-verify.io/role";
/// ...and its name, so a control policy of the run can select exactly that pod.
pub const POD_LABEL: &str = "netpol-verify.io/pod";

/// What a probe pod is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Listens (`netpol-probe serve`) on its ports under its own name.
    Server,
    /// Runs probe batches.
    Client,
    /// The tool's own vantage point for positive controls.
    Control,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Control => "control",
        }
    }
}

/// A probe pod to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePod {
    pub key: ObjectKey,
    pub role: Role,
    pub run_id: String,
    /// Labels besides the tool's own (e.g. a workload's, so its policies select the pod).
    pub labels: BTreeMap<String, String>,
    /// Container ports (number, protocol, optional name). Servers and controls listen on the
    /// TCP and UDP ones; named ports let policies name them.
    pub ports: Vec<crate::engine::ContainerPort>,
    /// The node it must run on (`--spread`); `None`: wherever the scheduler puts it.
    pub node: Option<String>,
}

/// Whether an object's labels mark it as one a run of the tool created: the app label *and* a
/// run id. NB: the app label alone is a common label a user may put on their own objects (the
/// tool's own CronJob, say); those are never the tool's to skip or delete.
pub fn is_tools(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.get(APP_LABEL).is_some_and(|v| v == APP_VALUE) && l.contains_key(RUN_LABEL))
}

impl ProbePod {
    /// Every label the pod carries: the caller's, then the tool's (which win).
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(APP_LABEL.into(), APP_VALUE.into());
        labels.insert(RUN_LABEL.into(), self.run_id.clone());
        labels.insert(ROLE_LABEL.into(), self.role.as_str().into());
        labels.insert(POD_LABEL.into(), self.key.name.clone());
        labels
    }
}

/// What discovery found.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub snapshot: Snapshot,
    pub notes: Vec<Note>,
    /// The backend's own word on its CNI (the lab knows its mode); `None`: recognise it from
    /// the snapshot's pods and nodes.
    pub detection: Option<crate::detect::Detection>,
}

/// A pod that is running, and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub key: ObjectKey,
    pub ip: IpAddr,
}

/// What a batch printed. `summary` is `None` when the batch did not complete (killed, cut off
/// at the limit): probes without a result did not run, and are never passes.
#[derive(Debug, Clone, Default)]
pub struct BatchOutput {
    pub results: Vec<ProbeResult>,
    pub summary: Option<Summary>,
    /// The addresses the client probed from (both families on a dual-stack cluster), when the
    /// backend knows them.
    pub client_ips: Vec<IpAddr>,
}

/// What `cleanup` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The lab backend failed.
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    /// Something did not happen within its bound.
    #[error("{what} did not happen within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// An object the call names does not exist.
    #[error("{what} does not exist")]
    NotFound { what: String },
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The API server refused a call.
    #[error("{what}: {message} (HTTP {code}): {fix}")]
    Api { what: String, code: u16, message: String, fix: String },
}

impl ClusterError {
    /// The API server's authorizer refused the call (RBAC: `User "x" cannot VERB resource`),
    /// not admission: the same call fails every time until someone grants it.
    pub fn refused_permission(&self) -> bool {
        matches!(self, ClusterError::Api { code: 403, message, .. } if message.contains(" cannot "))
    }
}

/// A cluster netpol-verify can read, change (only its own objects) and probe from.
pub trait Cluster {
    /// Reads the cluster's Namespaces, Pods, NetworkPolicies and Services.
    fn discover(&self) -> impl Future<Output = Result<Discovery, ClusterError>> + Send;

    /// Creates a namespace of the tool's own, labelled with the run id.
    fn create_namespace(
        &self,
        name: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Deletes a namespace the tool created, with everything in it.
    fn delete_namespace(&self, name: &str) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Creates a probe pod (it starts listening if it is a server).
    fn create_probe_pod(&self, pod: &ProbePod) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Deletes a pod the tool created.
    fn delete_pod(&self, key: &ObjectKey) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Stores a NetworkPolicy (the canary's). The network enforces it when its CNI does.
    fn create_policy(
        &self,
        policy: &NetworkPolicy,
        run_id: &str,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Deletes a NetworkPolicy the tool created.
    fn delete_policy(&self, key: &ObjectKey) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Waits until every pod runs (servers: listen), at most `limit`; their addresses.
    fn wait_running(
        &self,
        pods: &[ObjectKey],
        limit: Duration,
    ) -> impl Future<Output = Result<Vec<Running>, ClusterError>> + Send;

    /// Runs `plan` as one `netpol-probe batch` from probe pod `client`, at most `limit`, and
    /// returns what it printed and the client's address. The backend starts the client if it
    /// does not run yet: on Kubernetes a client is a pod created with its plan (it runs it once
    /// and exits; its log is the output), so clients are not created beforehand; in the lab it
    /// is a network namespace that stays until cleanup.
    fn run_batch(
        &self,
        client: &ProbePod,
        plan: &Plan,
        limit: Duration,
    ) -> impl Future<Output = Result<BatchOutput, ClusterError>> + Send;

    /// Runs `plan` from the pods' node, at most `limit`. NetworkPolicy always allows traffic
    /// from a pod's own node (the kubelet's health checks rely on it), so what the node
    /// reaches is alive: the positive control for targets no pod may reach. Results only for
    /// the probes the backend can make from there (the lab: all; Kubernetes: what readiness
    /// probes show); the rest are absent, never failed.
    fn run_node_batch(
        &self,
        plan: &Plan,
        limit: Duration,
    ) -> impl Future<Output = Result<BatchOutput, ClusterError>> + Send;

    /// Starts `prober` running `plan` in rounds, one every `every`, until `total` has passed
    /// from its first moment; its rounds arrive as they complete (see [`poll`]). The backend
    /// creates the prober for this (a fresh pod on Kubernetes, with the prober's labels; in the
    /// lab the prober itself, if it does not run yet), so a new prober's first round is as
    /// near its pod's first moment as the backend gets. Starting is bounded by `limit`.
    fn start_poll(
        &self,
        prober: &ProbePod,
        plan: &Plan,
        every: Duration,
        total: Duration,
        limit: Duration,
    ) -> impl Future<Output = Result<Poller, ClusterError>> + Send;

    /// What the backend had to do differently from what it was asked, for the report (e.g. a
    /// fallback it took when the cluster refused something).
    fn notes(&self) -> Vec<Note> {
        Vec::new()
    }

    /// Removes what earlier runs left (a crashed run's objects) once they are older than
    /// `older_than`. Backends whose leftovers go another way (the lab: `lab down`) do nothing.
    fn sweep(&self, older_than: Duration) -> impl Future<Output = Result<Cleaned, ClusterError>> + Send {
        let _ = older_than;
        async { Ok(Cleaned::default()) }
    }

    /// Removes every pod, policy and namespace labelled with `run_id`.
    fn cleanup(&self, run_id: &str) -> impl Future<Output = Result<Cleaned, ClusterError>> + Send;
}

/// Reads a batch's output: result lines and the summary line; anything else is skipped.
pub fn parse_batch_output(text: &str) -> BatchOutput {
    let mut output = BatchOutput::default();
    for line in text.lines() {
        match serde_json::from_str::<netpol_probe::wire::BatchLine>(line) {
            Ok(netpol_probe::wire::BatchLine::Result(result)) => output.results.push(result),
            Ok(netpol_probe::wire::BatchLine::Summary(line)) => output.summary = Some(line.summary),
            Err(_) => {}
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_batch_has_no_summary() {
        let complete = "{\"id\":\"a\",\"target\":\"10.0.0.1\",\"port\":80,\"protocol\":\"TCP\",\"outcome\":\"connected\",\"name\":\"x/a\",\"ms\":1}\n\
                        {\"summary\":{\"schema\":1,\"total\":1,\"reached\":1,\"not_reached\":0,\"connected\":1,\"refused\":0,\"unreachable\":0,\"timeout\":0,\"error\":0,\"ms\":1}}\n";
        let output = parse_batch_output(complete);
        assert_eq!(output.results.len(), 1);
        assert_eq!(output.summary.map(|s| s.total), Some(1));
        let cut = parse_batch_output(complete.lines().next().unwrap_or_default());
        assert!(cut.summary.is_none());
    }

    #[test]
    fn the_tools_labels_win_over_the_callers() {
        let pod = ProbePod {
            node: None,
            key: ObjectKey::new("x", "probe"),
            role: Role::Server,
            run_id: "r1".into(),
            labels: BTreeMap::from([(RUN_LABEL.into(), "forged".into()), ("app".into(), "web".into())]),
            ports: vec![],
        };
        let labels = pod.all_labels();
        assert_eq!(labels.get(RUN_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get(ROLE_LABEL).map(String::as_str), Some("server"));
    }
}
