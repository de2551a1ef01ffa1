//! The Kubernetes backend over kube-rs: the `Cluster` trait against a real API server.
//!
//! Connects like kubectl (KUBECONFIG, `--kubeconfig`, `--context`, in-cluster config); discovers
//! Namespaces, Pods, NetworkPolicies, Services, cluster DNS's EndpointSlices, Nodes, and through
//! API discovery the policy
//! kinds the engine does not model; creates and deletes the tool's own namespaces, pods and
//! policies, every API error turned into a message that says what to do; waits with bounds that
//! name why a pod does not start; runs each batch as a pod created with its plan (a ConfigMap),
//! whose log is the output, and each poller (the canary's) as a pod running `batch --every`
//! whose followed log brings its rounds; shows the node's view through readiness; cleans up by
//! the run's label. `run` uses it without `--lab` (docs/kubernetes.md).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use netpol_probe::wire::Plan;

use crate::cluster::{
    APP_LABEL, APP_VALUE, BatchOutput, Cleaned, Cluster, ClusterError, Discovery, Poller, ProbePod,
    RUN_LABEL, Running,
};
use crate::manifest::{LowPorts, PodOptions, Turn, Work, namespace, policy, probe_pod};
use crate::model::{Note, ObjectKey, SERVICE_NAME_LABEL, Snapshot, Unmodelled, key_of};

/// A Kubernetes cluster, reached through its API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    pods: PodOptions,
    /// Batch pods (`false`) and pollers (`true`) made so far, per prober: each gets a name of
    /// its own.
    batches: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(ObjectKey, bool), usize>>>,
    /// Admission refused the low-port sysctl once: servers use NET_BIND_SERVICE from then on.
    sysctl_refused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Each namespace's LimitRanges, read before its first probe pod; and what fitting them
    /// changed (or that they could not be read), for the report.
    limit_ranges: std::sync::Arc<std::sync::Mutex<LimitRanges>>,
    /// The run of each probe pod made here, so that waits list only that run's pods.
    runs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<ObjectKey, String>>>,
}

/// LimitRanges by namespace, and notes on fitting probe pods to them.
#[derive(Debug, Default)]
struct LimitRanges {
    by_namespace: std::collections::HashMap<String, Vec<LimitRange>>,
    notes: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").field("pods", &self.pods).finish_non_exhaustive()
    }
}

/// Where the connection comes from, as kubectl takes it.
#[derive(Debug, Clone, Default)]
pub struct Connection<'a> {
    /// `--kubeconfig` (else `KUBECONFIG`, else ~/.kube/config, else in-cluster).
    pub kubeconfig: Option<&'a Path>,
    /// `--context` (else the kubeconfig's current context).
    pub context: Option<&'a str>,
}

impl KubeCluster {
    /// A backend over an existing client (tests pass a mocked API server).
    pub fn new(client: Client, pods: PodOptions) -> KubeCluster {
        KubeCluster {
            client,
            pods,
            batches: Default::default(),
            sysctl_refused: Default::default(),
            limit_ranges: Default::default(),
            runs: Default::default(),
        }
    }

    /// Connects like kubectl: an explicit kubeconfig and context, or `KUBECONFIG` / the
    /// default kubeconfig, or the pod's service account when running in a cluster.
    pub async fn connect(connection: &Connection<'_>, pods: PodOptions) -> Result<KubeCluster, ClusterError> {
        Ok(KubeCluster::new(client(connection).await?, pods))
    }
}

/// A client as kubectl would connect ([`KubeCluster::connect`]), every request bounded.
pub async fn client(connection: &Connection<'_>) -> Result<Client, ClusterError> {
    let options =
        KubeConfigOptions { context: connection.context.map(String::from), ..KubeConfigOptions::default() };
    let config = match (connection.kubeconfig, connection.context) {
        (Some(path), _) => match Kubeconfig::read_from(path) {
            Ok(kubeconfig) => {
                Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        },
        (None, Some(_)) => Config::from_kubeconfig(&options).await.map_err(|e| e.to_string()),
        (None, None) => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| {
        ClusterError::Invalid(format!(
            "cannot configure a connection to the cluster ({e}): pass --kubeconfig FILE and --context NAME, \
             as for kubectl"
        ))
    })?;
    // Bounded waits everywhere: no API call may hang the run.
    let mut config = config;
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    config.connect_timeout = Some(Duration::from_secs(10));
    Client::try_from(config)
        .map_err(|e| ClusterError::Invalid(format!("cannot create a Kubernetes client: {e}")))
}

/// A failed API call, as something to do about it.
fn api_error(verb: &str, resource: &str, object: &str, error: kube::Error) -> ClusterError {
    let kube::Error::Api(response) = &error else {
        let fix = match &error {
            kube::Error::SerdeError(_) => {
                "that is not what a Kubernetes API server answers: is the kubeconfig's server a Kubernetes API server, and not a proxy or a web page?"
            }
            _ => "is the API server reachable? check the kubeconfig's context",
        };
        return ClusterError::Invalid(format!("{verb} {resource} {object}: {error} ({fix})"));
    };
    let fix = match response.code {
        401 => {
            "the credentials were refused: log in again (kubectl auth whoami tells who you are)".to_string()
        }
        403 if response.message.contains("cannot") => {
            let (base, subresource) =
                resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
            let can_i = match subresource {
                Some(sub) => format!("kubectl auth can-i {verb} {base} --subresource={sub}"),
                None => format!("kubectl auth can-i {verb} {base}"),
            };
            format!("grant the tool `{verb}` on `{resource}` ({can_i}; the role it needs is docs/rbac.yaml)")
        }
        403 => "refused by admission (Pod Security, a policy webhook such as Kyverno or Gatekeeper, a \
                quota, or a namespace being deleted): the message names the rule"
            .to_string(),
        404 if verb == "create" => {
            "its namespace does not exist (any more): was it deleted while the run went on? \
                                     Run again"
                .to_string()
        }
        404 => "it does not exist (any more)".to_string(),
        409 => "it already exists: a run with this id is still there, or another tool owns the name; \
                `netpol-verify cleanup --run ID` (or `--older-than 0s`) removes what crashed runs left"
            .to_string(),
        422 => "the API server or an admission policy rejected a field: the message names it".to_string(),
        _ => "the API server refused it".to_string(),
    };
    ClusterError::Api {
        what: format!("{verb} {resource} {object}"),
        code: response.code,
        message: response.message.clone(),
        fix,
    }
}

/// Every page of a list call, as kubectl would print them.
async fn list_all<K>(api: Api<K>, resource: &str) -> Result<Vec<K>, ClusterError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(|e| api_error("list", resource, "(all namespaces)", e))?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// The policy objects of kinds the engine does not model, found through API discovery.
async fn unmodelled(client: &Client, notes: &mut Vec<Note>) -> Vec<Unmodelled> {
    // What could not be read may hold anything: it stands in as a cluster-wide unknown, so no
    // verdict is confident for want of a permission.
    let unreadable = |api_version: &str, kind: &str, why: String, notes: &mut Vec<Note>| {
        notes.push(Note(format!(
            "{kind} ({api_version}) could not be listed ({why}): every check is `unknown` until the tool may \
             list it (docs/rbac.yaml)"
        )));
        Unmodelled {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: None,
            name: "(could not be listed)".into(),
        }
    };
    let groups = match client.list_api_groups().await {
        Ok(groups) => groups.groups,
        Err(e) => return vec![unreadable("apis", "API discovery", e.to_string(), notes)],
    };
    let mut found = Vec::new();
    let mut resources: Vec<(String, k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList)> =
        Vec::new();
    for (group, kind, cluster_wide) in Unmodelled::KINDS {
        let Some(served) = groups.iter().find(|g| g.name == group) else { continue };
        // Every version the group serves, the preferred first: a kind may live in only one.
        let preferred = served.preferred_version.clone();
        let others = served.versions.iter().filter(|v| Some(*v) != preferred.as_ref()).cloned();
        let versions: Vec<_> = preferred.clone().into_iter().chain(others).collect();
        let mut located = None;
        for version in versions {
            // The group's own resource list names the kind's plural (and whether it is served).
            if !resources.iter().any(|(gv, _)| *gv == version.group_version) {
                match client.list_api_group_resources(&version.group_version).await {
                    Ok(list) => resources.push((version.group_version.clone(), list)),
                    Err(e) => {
                        found.push(unreadable(&version.group_version, kind, e.to_string(), notes));
                        continue;
                    }
                }
            }
            let plural = resources
                .iter()
                .find(|(gv, _)| *gv == version.group_version)
                .and_then(|(_, list)| list.resources.iter().find(|r| r.kind == kind && !r.name.contains('/')))
                .map(|r| r.name.clone());
            if let Some(plural) = plural {
                located = Some((version, plural));
                break;
            }
        }
        let Some((version, plural)) = located else { continue };
        let resource = ApiResource {
            group: group.to_string(),
            version: version.version.clone(),
            api_version: version.group_version.clone(),
            kind: kind.to_string(),
            plural,
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => found.extend(list.items.into_iter().map(|object| Unmodelled {
                api_version: version.group_version.clone(),
                kind: kind.to_string(),
                namespace: if cluster_wide { None } else { object.metadata.namespace.clone() },
                name: object.metadata.name.clone().unwrap_or_default(),
            })),
            Err(e) => {
                let why = api_error("list", &format!("{}.{group}", resource.plural), "(all namespaces)", e);
                found.push(unreadable(&version.group_version, kind, why.to_string(), notes));
            }
        }
    }
    found
}

fn selector(run_id: &str) -> String {
    format!("{APP_LABEL}={APP_VALUE},{RUN_LABEL}={run_id}")
}

/// What to do about a pod the scheduler cannot place, from the scheduler's own words
/// (`0/3 nodes are available: 3 node(s) had untolerated taint ...`, `no nodes available to
/// schedule pods`, `Insufficient cpu`).
fn unschedulable_fix(message: &str) -> &'static str {
    if message.contains("taint") {
        " (--tolerate-all-taints lets probes run on tainted nodes)"
    } else if message.contains("no nodes available") {
        " (the cluster has no node that takes pods: kubectl get nodes shows whether any registered and is Ready)"
    } else if message.contains("Insufficient") || message.contains("Too many pods") {
        " (the nodes have no room for the probe pods, which request little: kubectl describe nodes shows what is allocated)"
    } else {
        ""
    }
}

/// Why a pod is not running yet, and what to do, from its status.
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let key = key_of(&pod.metadata);
    if status.reason.as_deref() == Some("SysctlForbidden") {
        let message = status.message.clone().unwrap_or_default();
        return Some(format!(
            "pod {key}: SysctlForbidden: {message} — the kubelet does not allow the low-port sysctl: pass --low-ports capability"
        ));
    }
    for condition in status.conditions.iter().flatten() {
        if condition.type_ == "PodScheduled" && condition.status == "False" {
            let message = condition.message.clone().unwrap_or_default();
            return Some(format!("pod {key} cannot be scheduled: {message}{}", unschedulable_fix(&message)));
        }
    }
    for container in status.container_statuses.iter().flatten() {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let reason = waiting.reason.clone().unwrap_or_default();
        let message = waiting.message.clone().unwrap_or_default();
        let fix = match reason.as_str() {
            "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" => {
                " — pass --image to use a mirrored probe image (netpol-verify images lists it), and \
                 --image-pull-secret if the registry needs credentials"
            }
            "CreateContainerConfigError" => " — the pod's configuration is refused: see the message",
            "CrashLoopBackOff" => " — the probe exits: kubectl logs shows why",
            _ => "",
        };
        if !reason.is_empty() && reason != "ContainerCreating" && reason != "PodInitializing" {
            return Some(format!("pod {key}: {reason}: {message}{fix}"));
        }
    }
    None
}

impl Cluster for KubeCluster {
    async fn discover(&self) -> Result<Discovery, ClusterError> {
        let client = &self.client;
        let namespaces = list_all(Api::<Namespace>::all(client.clone()), "namespaces").await?;
        let pods = list_all(Api::<Pod>::all(client.clone()), "pods").await?;
        let policies = list_all(Api::<NetworkPolicy>::all(client.clone()), "networkpolicies").await?;
        let services = list_all(Api::<Service>::all(client.clone()), "services").await?;
        let mut notes = Vec::new();
        // Nodes only name the provider: without the right, the run goes on.
        let nodes = match list_all(Api::<Node>::all(client.clone()), "nodes").await {
            Ok(nodes) => nodes,
            Err(e) => {
                notes.push(Note(format!("{e}; the cloud provider is not recognised")));
                Vec::new()
            }
        };
        // Cluster DNS's ready endpoints; without the right, its Service's selector stands in.
        let slices = match crate::run::plan::kube_dns(&services).map(|s| key_of(&s.metadata)) {
            Some(dns) => {
                let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &dns.namespace);
                let params = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", dns.name));
                match api.list(&params).await {
                    Ok(list) => list.items,
                    Err(e) => {
                        let e = api_error("list", "endpointslices", &format!("of Service {dns}"), e);
                        notes.push(Note(format!(
                            "{e}; cluster DNS endpoints come from the Service's selector"
                        )));
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let unmodelled = unmodelled(client, &mut notes).await;
        let (snapshot, snapshot_notes) = Snapshot::new(namespaces, pods, policies);
        notes.extend(snapshot_notes);
        let snapshot = snapshot
            .with_services(services)
            .with_endpoint_slices(slices)
            .with_nodes(nodes)
            .with_unmodelled(unmodelled);
        Ok(Discovery { snapshot, notes, detection: None })
    }

    async fn create_namespace(&self, name: &str, run_id: &str) -> Result<(), ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &namespace(name, run_id))
            .await
            .map(|_| ())
            .map_err(|e| api_error("create", "namespaces", name, e))
    }

    async fn delete_namespace(&self, name: &str) -> Result<(), ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(name, &DeleteParams::background())
            .await
            .map(|_| ())
            .map_err(|e| api_error("delete", "namespaces", name, e))
    }

    async fn create_probe_pod(&self, pod: &ProbePod) -> Result<(), ClusterError> {
        use std::sync::atomic::Ordering;
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pod.key.clone(), pod.run_id.clone());
        let low_ports = if self.sysctl_refused.load(Ordering::Relaxed) {
            LowPorts::Capability
        } else {
            self.pods.low_ports
        };
        let (refusal, used_sysctl) = match self.post_probe_pod(pod, low_ports).await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        // Where admission forbids the sysctl (a webhook, an older Pod Security), fall back to
        // NET_BIND_SERVICE, the one capability "restricted" lets a pod add.
        let about_sysctl = matches!(&refusal, kube::Error::Api(r) if matches!(r.code, 400 | 403 | 422)
            && r.message.to_lowercase().contains("sysctl"));
        if !(used_sysctl && about_sysctl) {
            return Err(api_error("create", "pods", &pod.key.to_string(), refusal));
        }
        self.sysctl_refused.store(true, Ordering::Relaxed);
        self.post_probe_pod(pod, LowPorts::Capability)
            .await
            .map_err(|(e, _)| refused_both(api_error("create", "pods", &pod.key.to_string(), e), &refusal))
    }

    async fn delete_pod(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        api.delete(&key.name, &DeleteParams::default().grace_period(1))
            .await
            .map(|_| ())
            .map_err(|e| api_error("delete", "pods", &key.to_string(), e))
    }

    async fn create_policy(&self, object: &NetworkPolicy, run_id: &str) -> Result<(), ClusterError> {
        let key = key_of(&object.metadata);
        crate::engine::validate_policy(object)
            .map_err(|e| ClusterError::Invalid(format!("NetworkPolicy {key}: {e}")))?;
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        api.create(&PostParams::default(), &policy(object, run_id))
            .await
            .map(|_| ())
            .map_err(|e| api_error("create", "networkpolicies", &key.to_string(), e))
    }

    async fn delete_policy(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        api.delete(&key.name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| api_error("delete", "networkpolicies", &key.to_string(), e))
    }

    async fn wait_running(&self, pods: &[ObjectKey], limit: Duration) -> Result<Vec<Running>, ClusterError> {
        // One labelled list per poll, however many pods: the run's pods (the tool's, when
        // they were not made here), all namespaces.
        let api: Api<Pod> = Api::all(self.client.clone());
        let run = {
            let runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let ids: std::collections::BTreeSet<Option<&String>> = pods.iter().map(|k| runs.get(k)).collect();
            match ids.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(id)] => format!("={id}"),
                _ => String::new(),
            }
        };
        let selection = follow::Selection {
            labels: Some(format!("{APP_LABEL}={APP_VALUE},{RUN_LABEL}{run}")),
            fields: None,
        };
        follow::follow(&api, &selection, limit, |listed| running_or_why(pods, listed)).await
    }

    async fn run_batch(
        &self,
        client: &ProbePod,
        plan: &Plan,
        limit: Duration,
    ) -> Result<BatchOutput, ClusterError> {
        // A pod per batch, created with its plan: it runs it once and exits, and its log is
        // the output (a channel no NetworkPolicy can block).
        let work = Work::Batch { probes: plan.probes.len() };
        let prober = self.create_prober(client, plan, work).await?;
        let watched = prober.started(limit, true, "running its batch").await?;
        let log = prober
            .pods
            .logs(&prober.key.name, &kube::api::LogParams::default())
            .await
            .map_err(|e| api_error("get", "pods/log", &prober.key.to_string(), e));
        // Done with: the run's cleanup would remove them too.
        prober.remove().await;
        let mut output = crate::cluster::parse_batch_output(&log?);
        if !watched.finished {
            // Out of time: what it printed so far stands, the rest did not run.
            output.summary = None;
        }
        output.client_ips = watched.ips;
        Ok(output)
    }

    async fn start_poll(
        &self,
        prober: &ProbePod,
        plan: &Plan,
        every: Duration,
        total: Duration,
        limit: Duration,
    ) -> Result<Poller, ClusterError> {
        // A pod of its own running `batch --every`; its log, followed, brings the rounds.
        let work = Work::Rounds { probes: plan.probes.len(), every, total };
        let pod = self.create_prober(prober, plan, work).await?;
        pod.started(limit, false, "polling").await?;
        let params = kube::api::LogParams { follow: true, ..kube::api::LogParams::default() };
        let stream = match pod.pods.log_stream(&pod.key.name, &params).await {
            Ok(stream) => stream,
            Err(e) => {
                pod.remove().await;
                return Err(api_error("get", "pods/log", &pod.key.to_string(), e));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            use tokio_util::compat::FuturesAsyncReadCompatExt;
            let lines = tokio::io::BufReader::new(stream.compat());
            crate::cluster::poll::relay(lines, tx, token).await;
            pod.remove().await;
        });
        Ok(Poller::new(rx, stop))
    }

    async fn run_node_batch(&self, plan: &Plan, _: Duration) -> Result<BatchOutput, ClusterError> {
        // The node's view is the kubelet's: a probe server is Ready once its readiness probe
        // (TCP, from the node) got through. Only those probes get a result; the rest are
        // absent, never failed.
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{APP_LABEL}={APP_VALUE}"));
        let list = pods.list(&params).await.map_err(|e| api_error("list", "pods", "(the tool's)", e))?;
        Ok(BatchOutput { results: node_results(&list.items, plan), summary: None, client_ips: Vec::new() })
    }

    async fn cleanup(&self, run_id: &str) -> Result<Cleaned, ClusterError> {
        // NB: a create already on its way when the run was cancelled can land after a pass has
        // listed; passes go on (a few seconds apart) until one finds nothing, three at most.
        let mut cleaned = Cleaned::default();
        for pass in 0..3 {
            if pass > 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let removed = self.remove_labelled(&selector(run_id)).await?;
            let found = removed.pods + removed.policies + removed.namespaces;
            cleaned.pods += removed.pods;
            cleaned.policies += removed.policies;
            cleaned.namespaces += removed.namespaces;
            if found == 0 {
                break;
            }
        }
        Ok(cleaned)
    }

    fn notes(&self) -> Vec<Note> {
        let refused = self.sysctl_refused.load(std::sync::atomic::Ordering::Relaxed);
        let mut notes: Vec<Note> = refused
            .then(|| {
                Note(
                    "admission refused the sysctl net.ipv4.ip_unprivileged_port_start, so probe servers listened on low ports with NET_BIND_SERVICE (--low-ports capability) instead"
                        .into(),
                )
            })
            .into_iter()
            .collect();
        let limits = self.limit_ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        notes.extend(limits.notes.values().cloned().map(Note));
        notes
    }

    async fn sweep(&self, older_than: Duration) -> Result<Cleaned, ClusterError> {
        let cutoff = k8s_openapi::jiff::Timestamp::now()
            .checked_sub(
                k8s_openapi::jiff::SignedDuration::try_from(older_than)
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX),
            )
            // NB: older than the calendar reaches: nothing is that old.
            .unwrap_or(k8s_openapi::jiff::Timestamp::MIN);
        let old =
            |meta: &kube::api::ObjectMeta| meta.creation_timestamp.as_ref().is_some_and(|t| t.0 < cutoff);
        self.remove_where(&format!("{APP_LABEL}={APP_VALUE},{RUN_LABEL}"), old).await
    }
}

/// The error of a probe server refused with NET_BIND_SERVICE, after `sysctl` refused it with
/// the low-port sysctl: both refusals, and what the namespace must allow.
fn refused_both(error: ClusterError, sysctl: &kube::Error) -> ClusterError {
    let ClusterError::Api { what, code, message, fix } = error else { return error };
    let earlier = match sysctl {
        kube::Error::Api(r) => r.message.clone(),
        other => other.to_string(),
    };
    ClusterError::Api {
        what,
        code,
        message: format!(
            "{message} (and before, with the sysctl net.ipv4.ip_unprivileged_port_start: {earlier})"
        ),
        fix: format!(
            "{fix}. Servers listen on the ports the policies name, some below 1024: this namespace must allow either the sysctl or NET_BIND_SERVICE (netpol-verify does not move probes to other ports)"
        ),
    }
}

/// A pod's addresses: `status.podIPs` (both families on a dual-stack cluster), else `podIP`.
fn pod_ips(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> Vec<IpAddr> {
    let Some(status) = status else { return Vec::new() };
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    ips
}

/// A pod running a plan of its own (a batch or a poller), with its ConfigMap.
struct Prober {
    key: ObjectKey,
    pods: Api<Pod>,
    maps: Api<ConfigMap>,
    /// Why it is not running yet, if the pod says.
    stuck: std::sync::Mutex<Option<String>>,
}

/// What watching a prober showed.
struct Watched {
    started: bool,
    finished: bool,
    /// `status.podIPs` (both families on a dual-stack cluster), else `status.podIP`.
    ips: Vec<IpAddr>,
}

impl Prober {
    /// Watches the pod until it has started (`until_finished`: until it has ended) or `limit`
    /// passes. A pod that never started, or that the API server would not show, is removed
    /// and the error says why (`doing`: what it was for).
    async fn started(
        &self,
        limit: Duration,
        until_finished: bool,
        doing: &str,
    ) -> Result<Watched, ClusterError> {
        let watched = self.watch(limit, until_finished).await;
        let failure = match watched {
            Ok(watched) if watched.started => return Ok(watched),
            // It never ran: there is no log to read, and why is the pod's status.
            Ok(_) => {
                let stuck = self.stuck.lock().map(|s| s.clone()).unwrap_or_default();
                ClusterError::Timeout {
                    what: stuck.unwrap_or_else(|| format!("pod {} {doing}", self.key)),
                    limit,
                }
            }
            Err(e) => e,
        };
        self.remove().await;
        Err(failure)
    }

    /// Follows the pod until it has started (`until_finished`: until it has ended) or `limit`
    /// passes.
    async fn watch(&self, limit: Duration, until_finished: bool) -> Result<Watched, ClusterError> {
        let selection =
            follow::Selection { labels: None, fields: Some(format!("metadata.name={}", self.key.name)) };
        let mut watched = Watched { started: false, finished: false, ips: Vec::new() };
        let followed = follow::follow(&self.pods, &selection, limit, |listed| {
            let Some(current) = listed.get(&self.key) else {
                return follow::Step::Failed(ClusterError::NotFound {
                    what: format!("pod {} (deleted while it ran; by a controller or a person?)", self.key),
                });
            };
            let status = current.status.as_ref();
            if watched.ips.is_empty() {
                watched.ips = pod_ips(status);
            }
            let phase = status.and_then(|s| s.phase.as_deref());
            watched.started |= matches!(phase, Some("Running" | "Succeeded" | "Failed"));
            watched.finished = matches!(phase, Some("Succeeded" | "Failed"));
            let stuck = waiting_reason(current);
            if let Ok(mut shown) = self.stuck.lock() {
                shown.clone_from(&stuck);
            }
            if watched.finished || (watched.started && !until_finished) {
                follow::Step::Done(())
            } else {
                follow::Step::Waiting(stuck.unwrap_or_default())
            }
        })
        .await;
        match followed {
            Ok(()) | Err(ClusterError::Timeout { .. }) => Ok(watched),
            Err(e) => Err(e),
        }
    }

    /// Deletes the pod and its plan (the run's cleanup would, too).
    async fn remove(&self) {
        let _ = self.pods.delete(&self.key.name, &DeleteParams::default().grace_period(0)).await;
        let _ = self.maps.delete(&crate::manifest::plan_name(&self.key.name), &DeleteParams::default()).await;
    }
}

impl KubeCluster {
    /// Creates the pod that runs `plan` for `prober` (once, or in rounds: `work`), reading it
    /// from a ConfigMap: the prober's own first batch, or a pod of its own for each later
    /// batch and every poller ([`crate::manifest::prober_pod`]). It wears the prober's labels,
    /// role included, so the prober's policies select it.
    async fn create_prober(
        &self,
        prober: &ProbePod,
        plan: &Plan,
        work: Work,
    ) -> Result<Prober, ClusterError> {
        let polls = matches!(work, Work::Rounds { .. });
        let n = {
            let mut counts = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = counts.entry((prober.key.clone(), polls)).or_insert(0);
            *count += 1;
            *count - 1
        };
        let pod = crate::manifest::prober_pod(prober, if polls { Turn::Poll(n) } else { Turn::Batch(n) });
        let key = pod.key.clone();
        let text = serde_json::to_string(plan)
            .map_err(|e| ClusterError::Invalid(format!("cannot encode the plan: {e}")))?;
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        let map = crate::manifest::plan_config_map(&pod, &text);
        maps.create(&PostParams::default(), &map).await.map_err(|e| {
            api_error(
                "create",
                "configmaps",
                &format!("{}/{}", key.namespace, crate::manifest::plan_name(&key.name)),
                e,
            )
        })?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut object = probe_pod(&pod, &self.pods, work, false);
        self.fit_resources(&mut object).await;
        let prober = Prober { key: key.clone(), pods, maps, stuck: std::sync::Mutex::new(None) };
        if let Err(e) = prober.pods.create(&PostParams::default(), &object).await {
            prober.remove().await;
            return Err(api_error("create", "pods", &key.to_string(), e));
        }
        Ok(prober)
    }

    /// Creates probe pod `pod`, listening low through `low_ports` and fitted to its namespace's
    /// LimitRanges; on failure, the API's error and whether the pod asked for the sysctl.
    async fn post_probe_pod(&self, pod: &ProbePod, low_ports: LowPorts) -> Result<(), (kube::Error, bool)> {
        let options = PodOptions { low_ports, ..self.pods.clone() };
        let mut object = probe_pod(pod, &options, Work::Serve, !pod.labels.is_empty());
        self.fit_resources(&mut object).await;
        let used_sysctl = object
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .is_some_and(|c| c.sysctls.is_some());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.key.namespace);
        api.create(&PostParams::default(), &object).await.map(|_| ()).map_err(|e| (e, used_sysctl))
    }

    /// Moves `object`'s requests and limits inside its namespace's LimitRanges (read once per
    /// namespace), so that admission accepts the pod. Unreadable LimitRanges leave the
    /// defaults, with a note.
    async fn fit_resources(&self, object: &mut Pod) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let lock = || self.limit_ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cached = lock().by_namespace.get(&namespace).cloned();
        let ranges = match cached {
            Some(ranges) => ranges,
            None => {
                let api: Api<LimitRange> = Api::namespaced(self.client.clone(), &namespace);
                let ranges = match api.list(&ListParams::default()).await {
                    Ok(list) => list.items,
                    Err(e) => {
                        let e = api_error("list", "limitranges", &format!("in {namespace}"), e);
                        lock().notes.insert(
                            namespace.clone(),
                            format!("{e}; probe pods in {namespace} keep their default requests and limits"),
                        );
                        Vec::new()
                    }
                };
                lock().by_namespace.insert(namespace.clone(), ranges.clone());
                ranges
            }
        };
        if ranges.is_empty() {
            return;
        }
        for container in object.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
            let Some(resources) = &container.resources else { continue };
            let (fitted, changed) = crate::manifest::limits::fit(resources, &ranges);
            if !changed.is_empty() {
                container.resources = Some(fitted);
                lock().notes.entry(namespace.clone()).or_insert_with(|| {
                    format!(
                        "probe pods in {namespace} were fitted to its LimitRanges: {}",
                        changed.join(", ")
                    )
                });
            }
        }
    }

    /// Removes what every run left behind (crashed runs included): everything labelled
    /// `app.kubernetes.io/name=netpol-verify` *with* a run id (the app label alone may be the
    /// user's own), and of namespaces only those with the tool's own names.
    pub async fn cleanup_all(&self) -> Result<Cleaned, ClusterError> {
        self.remove_labelled(&format!("{APP_LABEL}={APP_VALUE},{RUN_LABEL}")).await
    }

    /// Deletes the pods, ConfigMaps, NetworkPolicies and namespaces `selector` matches.
    async fn remove_labelled(&self, selector: &str) -> Result<Cleaned, ClusterError> {
        self.remove_where(selector, |_| true).await
    }

    /// Deletes the pods, ConfigMaps, NetworkPolicies and namespaces `selector` matches and
    /// `keep` accepts. NB: what is already being deleted (a pod in its grace period, a
    /// terminating namespace) is neither deleted nor counted again.
    async fn remove_where(
        &self,
        selector: &str,
        keep: impl Fn(&kube::api::ObjectMeta) -> bool,
    ) -> Result<Cleaned, ClusterError> {
        let params = ListParams::default().labels(selector);
        let mut cleaned = Cleaned::default();
        let keep = |meta: &kube::api::ObjectMeta| meta.deletion_timestamp.is_none() && keep(meta);
        let pods: Api<Pod> = Api::all(self.client.clone());
        for pod in pods
            .list(&params)
            .await
            .map_err(|e| api_error("list", "pods", "(the run's)", e))?
            .into_iter()
            .filter(|p| keep(&p.metadata))
        {
            self.delete_pod(&key_of(&pod.metadata)).await.or_else(gone)?;
            cleaned.pods += 1;
        }
        let maps: Api<ConfigMap> = Api::all(self.client.clone());
        for map in maps
            .list(&params)
            .await
            .map_err(|e| api_error("list", "configmaps", "(the run's)", e))?
            .into_iter()
            .filter(|m| keep(&m.metadata))
        {
            let key = key_of(&map.metadata);
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
            api.delete(&key.name, &DeleteParams::default())
                .await
                .map(|_| ())
                .map_err(|e| api_error("delete", "configmaps", &key.to_string(), e))
                .or_else(gone)?;
        }
        let policies: Api<NetworkPolicy> = Api::all(self.client.clone());
        for object in policies
            .list(&params)
            .await
            .map_err(|e| api_error("list", "networkpolicies", "(the run's)", e))?
            .into_iter()
            .filter(|p| keep(&p.metadata))
        {
            self.delete_policy(&key_of(&object.metadata)).await.or_else(gone)?;
            cleaned.policies += 1;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for object in
            namespaces.list(&params).await.map_err(|e| api_error("list", "namespaces", "(the run's)", e))?
        {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            if !keep(&object.metadata)
                || !["netpol-verify-", "nv-canary-"].iter().any(|prefix| name.starts_with(prefix))
            {
                continue;
            }
            self.delete_namespace(name).await.or_else(gone)?;
            cleaned.namespaces += 1;
        }
        Ok(cleaned)
    }
}

/// Whether every pod of `keys` runs (servers: are Ready) among `listed`, with their addresses;
/// why not, with the fix; or a failure that ends the wait: a pod deleted meanwhile, or one the
/// kubelet refused.
fn running_or_why(
    keys: &[ObjectKey],
    listed: &std::collections::BTreeMap<ObjectKey, Pod>,
) -> follow::Step<Vec<Running>> {
    let mut running = Vec::new();
    let mut waiting = Vec::new();
    for key in keys {
        // NB: a list without a resourceVersion is a consistent read: a pod created before the
        // wait is in it (and a watch sees its deletion), so one that is not was deleted.
        let Some(pod) = listed.get(key) else {
            return follow::Step::Failed(ClusterError::NotFound {
                what: format!(
                    "pod {key} (it was deleted while the run waited for it; by a controller or a person?)"
                ),
            });
        };
        // A probe server never ends by itself: Failed is the kubelet refusing it.
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
            let why = waiting_reason(pod).unwrap_or_else(|| {
                let said = |f: Option<&String>| f.cloned().unwrap_or_default();
                format!(
                    "pod {key} failed: {}: {}",
                    said(status.and_then(|s| s.reason.as_ref())),
                    said(status.and_then(|s| s.message.as_ref()))
                )
            });
            return follow::Step::Failed(ClusterError::Invalid(why));
        }
        // Why it waits, with the fix; said when the bound runs out.
        if let Some(reason) = waiting_reason(pod) {
            waiting.push(reason);
            continue;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = pod_ips(status).first().copied();
        let started = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        // Servers are Ready when the kubelet reached them; clients and pods that must never be
        // Ready count once they run.
        let has_probe =
            pod.spec.as_ref().is_some_and(|s| s.containers.iter().any(|c| c.readiness_probe.is_some()));
        match ip {
            Some(ip) if started && (ready || !has_probe) => running.push(Running { key: key.clone(), ip }),
            Some(_) if started => waiting.push(format!(
                "pod {key} runs but is not Ready: the kubelet's readiness probe from its node does not get through (`kubectl describe pod -n {} {}` shows the probe's failures; a host firewall or a CNI dropping the node's traffic does this)",
                key.namespace, key.name
            )),
            _ => waiting.push(format!("pod {key} is not running yet")),
        }
    }
    if waiting.is_empty() { follow::Step::Done(running) } else { follow::Step::Waiting(waiting.join("; ")) }
}

/// What Ready pods show of `plan`: a `connected` result for each TCP probe to a Ready pod's
/// address on the port its readiness probe checks.
pub fn node_results(pods: &[Pod], plan: &Plan) -> Vec<netpol_probe::wire::ProbeResult> {
    use netpol_probe::wire::{Outcome, ProbeKind, ProbeResult, Transport};
    let mut ready = Vec::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let is_ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|_| is_ready) else { continue };
        let ports = pod.spec.iter().flat_map(|s| &s.containers).filter_map(|c| {
            match c.readiness_probe.as_ref()?.tcp_socket.as_ref()?.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => {
                    u16::try_from(port).ok()
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(_) => None,
            }
        });
        for port in ports {
            ready.push((ip.clone(), port, key_of(&pod.metadata).to_string()));
        }
    }
    plan.probes
        .iter()
        .filter(|p| p.kind == ProbeKind::Connect && p.transport() == Transport::Tcp)
        .filter_map(|p| {
            let (_, _, name) = ready.iter().find(|(ip, port, name)| {
                *ip == p.target && *port == p.port && p.expect_name.as_ref().is_none_or(|e| e == name)
            })?;
            Some(ProbeResult {
                id: Some(p.id.clone()),
                target: p.target.clone(),
                port: p.port,
                protocol: Transport::Tcp,
                query: None,
                outcome: Outcome::Connected,
                name: Some(name.clone()),
                ms: 0,
                message: Some("Ready: the kubelet's readiness probe, from the node, got through".into()),
                attempts: None,
                rcode: None,
            })
        })
        .collect()
}

/// An answer worth asking again: too many requests, a server error, no answer at all.
pub(crate) fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(response) => response.code == 429 || response.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Something already gone is cleaned up.
fn gone(error: ClusterError) -> Result<(), ClusterError> {
    match error {
        ClusterError::Api { code: 404, .. } => Ok(()),
        other => Err(other),
    }
}

mod follow;

#[cfg(test)]
mod tests;
