//! The lab as a [`Cluster`]: what a run does to a lab, done to the lab's namespaces and its
//! CNI, which applies policy and pod changes the way a CNI does — at once, or after the lab's
//! enforcement delay, in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use netpol_probe::wire::Plan;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Lab, LabError};
use crate::cluster::{
    APP_LABEL, APP_VALUE, BatchOutput, Cleaned, Cluster, ClusterError, Discovery, Poller, ProbePod,
    RUN_LABEL, Running, parse_batch_output,
};
use crate::model::{NAMESPACE_NAME_LABEL, ObjectKey, key_of};

/// A running lab, driven through the [`Cluster`] trait.
#[derive(Debug, Clone)]
pub struct LabCluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lab: Mutex<Lab>,
    delay: Duration,
    applier: Option<mpsc::UnboundedSender<(Instant, Lab)>>,
    pending: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// How long after each delayed change its enforcement began.
    lags: Mutex<Vec<Duration>>,
}

impl LabCluster {
    /// Drives `lab`. With an enforcement delay it needs a tokio runtime: changes are applied
    /// by a task of its own.
    pub fn new(lab: Lab) -> Result<LabCluster, ClusterError> {
        let delay = lab.enforce_delay();
        let mut receiver = None;
        let applier = (!delay.is_zero()).then(|| {
            let (tx, rx) = mpsc::unbounded_channel::<(Instant, Lab)>();
            receiver = Some(rx);
            tx
        });
        let inner = Arc::new(Inner {
            lab: Mutex::new(lab),
            delay,
            applier,
            pending: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            lags: Mutex::new(Vec::new()),
        });
        if let Some(mut rx) = receiver {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                ClusterError::Invalid(
                    "a lab with an enforcement delay must be driven from a tokio runtime".into(),
                )
            })?;
            // NB: the task holds only a weak reference: it ends with the last LabCluster.
            let weak = Arc::downgrade(&inner);
            runtime.spawn(async move {
                // In order: every change waits the same delay, so due times only grow.
                while let Some((due, lab)) = rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    // The state as it was when the change was made, applied under the lab's lock.
                    let applied = tokio::task::spawn_blocking(move || {
                        let _lock = super::state::lock(&lab.state.name).map_err(|e| {
                            LabError::State(format!("cannot lock lab {}: {e}", lab.state.name))
                        })?;
                        let started = Instant::now();
                        lab.apply_policies(&lab.state.policies).map(|()| started)
                    })
                    .await;
                    let Some(inner) = weak.upgrade() else { break };
                    match applied {
                        Ok(Ok(started)) => {
                            lock(&inner.lags).push(started.saturating_duration_since(due - delay));
                        }
                        Ok(Err(e)) => lock(&inner.failures).push(e.to_string()),
                        Err(e) => lock(&inner.failures).push(e.to_string()),
                    }
                    inner.pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
        Ok(LabCluster { inner })
    }

    /// The lab as it is now.
    pub fn lab(&self) -> Lab {
        lock(&self.inner.lab).clone()
    }

    /// With an enforcement delay: how long after each change so far its enforcement began.
    pub fn enforcement_lags(&self) -> Vec<Duration> {
        lock(&self.inner.lags).clone()
    }

    /// Waits until every change so far is enforced; the failures of delayed applies, if any.
    pub async fn settled(&self) -> Result<(), ClusterError> {
        while self.inner.pending.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failures = std::mem::take(&mut *lock(&self.inner.failures));
        match failures.first() {
            Some(first) => Err(ClusterError::Invalid(format!("a delayed policy change failed: {first}"))),
            None => Ok(()),
        }
    }

    /// Makes `change` to the lab on a blocking thread (it runs `ip` and `nft`), then has the
    /// result enforced — at once, or queued for after the delay — before letting go of the
    /// lab (this handle's mutex, and the lab's lock that other processes take too): changes
    /// are enforced in the order they were made, the last one last.
    async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Lab) -> Result<T, ClusterError> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut lab = lock(&inner.lab);
            lab.locked(|lab| {
                let out = change(lab)?;
                inner.enforce(lab)?;
                Ok(out)
            })
        })
        .await
        .map_err(|e| ClusterError::Invalid(format!("a change to the lab failed: {e}")))?
    }
}

impl Inner {
    /// Enforces `lab`'s state: at once, or after the delay.
    fn enforce(&self, lab: &Lab) -> Result<(), ClusterError> {
        match &self.applier {
            None => Ok(lab.apply_policies(&lab.state.policies)?),
            Some(applier) => {
                self.pending.fetch_add(1, Ordering::SeqCst);
                applier.send((Instant::now() + self.delay, lab.clone())).map_err(|_| {
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    ClusterError::Invalid("the lab's policy applier has stopped".into())
                })
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Pod object of a probe pod: the one a Kubernetes backend would create (labels, and
/// container ports when it serves), which the lab plumbs and serves.
fn probe_pod_object(pod: &ProbePod) -> Pod {
    let work = crate::manifest::Work::of(pod.role);
    crate::manifest::probe_pod(pod, &crate::manifest::PodOptions::default(), work, false)
}

fn run_label(meta: &ObjectMeta) -> Option<&str> {
    meta.labels.as_ref()?.get(RUN_LABEL).map(String::as_str)
}

impl Cluster for LabCluster {
    async fn discover(&self) -> Result<Discovery, ClusterError> {
        let lab = self.lab();
        let (snapshot, notes) = lab.state.snapshot();
        use crate::detect::{Detection, Enforcement};
        let cni = lab.state.cni;
        let enforcement = match cni {
            crate::lab::cni::CniMode::Enforcing | crate::lab::cni::CniMode::Reject => Enforcement::Expected,
            crate::lab::cni::CniMode::None => Enforcement::NotExpected,
            _ => Enforcement::Unknown,
        };
        let detection = Detection {
            provider: Some("netpol-verify lab".into()),
            cni: vec![format!("the lab's emulated CNI, mode {}", cni.as_str())],
            enforcement,
            advice: Vec::new(),
        };
        Ok(Discovery { snapshot, notes, detection: Some(detection) })
    }

    async fn create_namespace(&self, name: &str, run_id: &str) -> Result<(), ClusterError> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (NAMESPACE_NAME_LABEL.into(), name.into()),
                    (APP_LABEL.into(), APP_VALUE.into()),
                    (RUN_LABEL.into(), run_id.into()),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        checked("Namespace", &namespace.metadata)?;
        self.change(move |lab| Ok(lab.add_namespace(namespace)?)).await
    }

    async fn delete_namespace(&self, name: &str) -> Result<(), ClusterError> {
        let name = name.to_string();
        self.change(move |lab| match lab.remove_namespace(&name)? {
            true => Ok(()),
            false => Err(ClusterError::NotFound { what: format!("namespace {name}") }),
        })
        .await
    }

    async fn create_probe_pod(&self, pod: &ProbePod) -> Result<(), ClusterError> {
        let object = probe_pod_object(pod);
        checked("Pod", &object.metadata)?;
        self.change(move |lab| {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            if !lab.state.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(namespace.as_str())) {
                return Err(ClusterError::NotFound { what: format!("namespace {namespace}") });
            }
            lab.add_pod(object)?;
            Ok(())
        })
        .await
    }

    async fn delete_pod(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let key = key.clone();
        self.change(move |lab| match lab.remove_pod(&key)? {
            true => Ok(()),
            false => Err(ClusterError::NotFound { what: format!("pod {key}") }),
        })
        .await
    }

    async fn create_policy(&self, policy: &NetworkPolicy, run_id: &str) -> Result<(), ClusterError> {
        let key = key_of(&policy.metadata);
        checked("NetworkPolicy", &policy.metadata)?;
        crate::engine::validate_policy(policy)
            .map_err(|e| ClusterError::Invalid(format!("NetworkPolicy {key}: {e}")))?;
        let mut policy = policy.clone();
        let labels = policy.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(APP_LABEL.into(), APP_VALUE.into());
        labels.insert(RUN_LABEL.into(), run_id.into());
        self.change(move |lab| Ok(lab.add_policy(policy)?)).await
    }

    async fn delete_policy(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let key = key.clone();
        self.change(move |lab| match lab.remove_policy(&key)? {
            true => Ok(()),
            false => Err(ClusterError::NotFound { what: format!("NetworkPolicy {key}") }),
        })
        .await
    }

    async fn wait_running(&self, pods: &[ObjectKey], limit: Duration) -> Result<Vec<Running>, ClusterError> {
        let deadline = Instant::now() + limit;
        loop {
            let lab = self.lab();
            if let Some(missing) = pods.iter().find(|k| !lab.state.pods.iter().any(|p| p.key == **k)) {
                return Err(ClusterError::NotFound { what: format!("pod {missing}") });
            }
            let waiting: Vec<&ObjectKey> = pods.iter().filter(|k| !lab.pod_ready(k)).collect();
            if waiting.is_empty() {
                return Ok(pods
                    .iter()
                    .filter_map(|k| lab.state.pods.iter().find(|p| p.key == *k))
                    .map(|p| Running { key: p.key.clone(), ip: p.ip.into() })
                    .collect());
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = waiting.iter().map(ToString::to_string).collect();
                return Err(ClusterError::Timeout {
                    what: format!("pods {} running", names.join(", ")),
                    limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run_batch(
        &self,
        client: &ProbePod,
        plan: &Plan,
        limit: Duration,
    ) -> Result<BatchOutput, ClusterError> {
        let key = &client.key;
        if self.lab().pod_netns(key).is_none() {
            self.create_probe_pod(client).await?;
            self.wait_running(std::slice::from_ref(key), Duration::from_secs(10)).await?;
        }
        let (netns, probe, ip) = {
            let lab = self.lab();
            let netns =
                lab.pod_netns(key).ok_or_else(|| ClusterError::NotFound { what: format!("pod {key}") })?;
            let ip = lab.state.pods.iter().find(|p| p.key == *key).map(|p| std::net::IpAddr::V4(p.ip));
            (netns, lab.state.probe.clone(), ip)
        };
        let mut output = batch_in(&netns, &probe, plan, limit).await?;
        output.client_ips = ip.into_iter().collect();
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
        let key = &prober.key;
        if self.lab().pod_netns(key).is_none() {
            self.create_probe_pod(prober).await?;
            self.wait_running(std::slice::from_ref(key), limit).await?;
        }
        let (netns, probe) = {
            let lab = self.lab();
            let netns =
                lab.pod_netns(key).ok_or_else(|| ClusterError::NotFound { what: format!("pod {key}") })?;
            (netns, lab.state.probe.clone())
        };
        // The real prober, as on Kubernetes: `batch --every` in the pod's network namespace.
        let every = format!("{}ms", every.as_millis());
        let total = format!("{}ms", total.as_millis());
        let (child, stdout, writer) = probe_in(&netns, &probe, plan, &["--every", &every, "--for", &total])?;
        let _ = writer.await;
        let (tx, rx) = mpsc::channel(64);
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            crate::cluster::poll::relay(tokio::io::BufReader::new(stdout), tx, token).await;
            // Stopped or done: the prober goes with the relay (kill on drop).
            drop(child);
        });
        Ok(Poller::new(rx, stop))
    }

    async fn run_node_batch(&self, plan: &Plan, limit: Duration) -> Result<BatchOutput, ClusterError> {
        let lab = self.lab();
        let netns = super::state::node_netns(&lab.state.name);
        batch_in(&netns, &lab.state.probe, plan, limit).await
    }

    async fn cleanup(&self, run_id: &str) -> Result<Cleaned, ClusterError> {
        let run_id = run_id.to_string();
        self.change(move |lab| {
            let ours = |meta: &ObjectMeta| run_label(meta) == Some(run_id.as_str());
            let mut cleaned = Cleaned::default();
            for pod in keys_where(&lab.state.pod_objects, ours) {
                cleaned.pods += usize::from(lab.remove_pod(&pod)?);
            }
            for policy in keys_where(&lab.state.policies, ours) {
                cleaned.policies += usize::from(lab.remove_policy(&policy)?);
            }
            for namespace in keys_where(&lab.state.namespaces, ours) {
                cleaned.namespaces += usize::from(lab.remove_namespace(&namespace.name)?);
            }
            Ok(cleaned)
        })
        .await
    }
}

/// Starts `netpol-probe batch` (with `extra` arguments) in network namespace `netns`, every
/// probe at once, killed when dropped; its output, and the task handing it `plan` on its
/// standard input.
fn probe_in(
    netns: &str,
    probe: &std::path::Path,
    plan: &Plan,
    extra: &[&str],
) -> Result<(tokio::process::Child, tokio::process::ChildStdout, tokio::task::JoinHandle<()>), ClusterError> {
    let text = serde_json::to_vec(plan)
        .map_err(|e| ClusterError::Invalid(format!("cannot encode the plan: {e}")))?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(probe)
        .args(["batch", "--concurrency", &plan.probes.len().clamp(1, 4096).to_string()])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LabError::Command {
            command: format!("netpol-probe batch in {netns}"),
            output: e.to_string(),
        })?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ClusterError::Invalid(format!(
            "netpol-probe batch in {netns} has no standard input or output"
        )));
    };
    // NB: written by a task of its own, so a plan larger than the pipe never blocks the caller.
    let writer = tokio::spawn(async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, &text).await;
    });
    Ok((child, stdout, writer))
}

/// Runs `plan` as one `netpol-probe batch` in network namespace `netns`, at most `limit`.
async fn batch_in(
    netns: &str,
    probe: &std::path::Path,
    plan: &Plan,
    limit: Duration,
) -> Result<BatchOutput, ClusterError> {
    let (mut child, mut stdout, writer) = probe_in(netns, probe, plan, &[])?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        // Out of time: what it printed so far stands, the rest did not run.
        let _ = child.kill().await;
    }
    let _ = writer.await;
    let out = reader.await.unwrap_or_default();
    Ok(parse_batch_output(&String::from_utf8_lossy(&out)))
}

/// The keys of the `objects` whose metadata passes `keep`.
fn keys_where<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    objects: &[T],
    keep: impl Fn(&ObjectMeta) -> bool,
) -> Vec<ObjectKey> {
    objects.iter().map(k8s_openapi::Metadata::metadata).filter(|m| keep(m)).map(key_of).collect()
}

/// `meta` as the API server would accept it for a `kind`.
fn checked(kind: &str, meta: &ObjectMeta) -> Result<(), ClusterError> {
    crate::validate::validate_meta(kind, meta)
        .map(|_| ())
        .map_err(|e| ClusterError::Invalid(format!("{kind} {}: {e}", key_of(meta))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;
    use crate::engine::{ContainerPort, Protocol};

    #[test]
    fn probe_pods_carry_the_tools_labels_and_serve_only_as_servers() {
        let mut pod = ProbePod {
            node: None,
            key: ObjectKey::new("x", "probe-server"),
            role: Role::Server,
            run_id: "r1".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ports: vec![ContainerPort { port: 80, protocol: Protocol::Tcp, name: Some("http".into()) }],
        };
        let object = probe_pod_object(&pod);
        let labels = object.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(RUN_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let ports = object.spec.as_ref().and_then(|s| s.containers[0].ports.clone()).unwrap_or_default();
        assert_eq!((ports[0].container_port, ports[0].name.as_deref()), (80, Some("http")));
        pod.role = Role::Client;
        assert!(probe_pod_object(&pod).spec.and_then(|s| s.containers[0].ports.clone()).is_none());
    }
}
