//! The lab's kubelet: it watches the lab API for pods bound to the lab's node and runs them
//! as a node would — a sandbox per pod (network namespace, address, the CNI's rules, sysctls),
//! then each container as written ([`container`], run by [`shim`]), readiness from the node
//! ([`probe`]), restarts with back-off, termination messages, graceful deletion, and the
//! pod's status written back through the API ([`pod`]). Only the probe image runs
//! ([`image`]); the workload pods of the lab's input are emulated (the lab serves their ports).

pub mod container;
pub mod image;
pub mod pod;
pub mod probe;
pub mod shim;
pub mod supervise;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lab::api::catalog::KindId;
use crate::lab::api::status::ApiError;
use crate::lab::api::store::{Change, Key};
use crate::lab::api::{Api, LogSource, Logs};
use crate::lab::enforce::Network;
use container::Sandbox;

/// A container's log files: the current run's and the previous one's.
#[derive(Debug)]
struct LogFiles {
    current: PathBuf,
    previous: Option<PathBuf>,
    running: watch::Sender<bool>,
}

/// A pod the kubelet runs, and how it is told to stop.
#[derive(Debug)]
pub struct PodRun {
    pub key: Key,
    pub uid: String,
    /// A graceful deletion began (the grace period is in `grace`).
    pub stop: CancellationToken,
    /// The object is gone (or the grace period is over): stop now.
    pub kill: CancellationToken,
    grace: Mutex<Duration>,
    logs: Mutex<BTreeMap<String, LogFiles>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PodRun {
    /// Waits until the pod is deleted; `true` when gracefully (its object is then the
    /// kubelet's to remove), `false` when it is already gone.
    pub async fn ended(&self) -> bool {
        tokio::select! {
            biased;
            () = self.kill.cancelled() => false,
            () = self.stop.cancelled() => true,
        }
    }

    /// Removes the pod's object once a graceful deletion is done (not a new pod of its name).
    fn remove_object(&self, api: &Api) {
        let _ = api
            .store
            .delete_if(&self.key, "pods", |o| o["metadata"]["uid"].as_str() == Some(self.uid.as_str()));
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled() || self.kill.is_cancelled()
    }
}

/// What the kubelet needs of its lab.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The nodes it runs pods for (a lab's nodes share its one network).
    pub node_names: Vec<String>,
    pub host_ip: String,
    /// The lab's directory.
    pub dir: PathBuf,
    /// This program (`lab container` is the runtime).
    pub verify: PathBuf,
    pub node_netns: PathBuf,
}

/// The kubelet of the lab's node.
#[derive(Debug)]
pub struct Kubelet {
    pub api: Arc<Api>,
    network: Arc<Network>,
    image: image::Image,
    node: probe::NodeNet,
    config: NodeConfig,
    pub host_ip: String,
    runs: Mutex<HashMap<String, Arc<PodRun>>>,
}

impl Kubelet {
    pub fn new(
        api: Arc<Api>,
        network: Arc<Network>,
        image: image::Image,
        config: NodeConfig,
    ) -> Result<Arc<Kubelet>, String> {
        let node = probe::NodeNet::start(&config.node_netns)?;
        let kubelet = Arc::new(Kubelet {
            api: api.clone(),
            network,
            image,
            node,
            host_ip: config.host_ip.clone(),
            config,
            runs: Mutex::new(HashMap::new()),
        });
        api.attach_logs(kubelet.clone());
        Ok(kubelet)
    }

    /// Runs the pods bound to the node until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let (pods, _, mut events) = self.api.store.list_and_watch(KindId::PODS, None);
        for pod in pods {
            self.observe(&pod, Change::Added);
        }
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = events.recv() => event,
            };
            let Some(event) = event else { return };
            if event.key.kind == KindId::PODS {
                self.observe(&event.object, event.change);
            }
        }
    }

    fn observe(self: &Arc<Self>, pod: &Value, change: Change) {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if !self.config.node_names.iter().any(|n| n == node) {
            return;
        }
        let Some(uid) = pod["metadata"]["uid"].as_str().map(str::to_string) else { return };
        let known = lock(&self.runs).get(&uid).cloned();
        if change == Change::Deleted {
            if let Some(run) = known {
                run.kill.cancel();
            }
            return;
        }
        let run = match known {
            Some(run) => run,
            None => {
                let key = Key::new(
                    KindId::PODS,
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                );
                let run = Arc::new(PodRun {
                    key,
                    uid: uid.clone(),
                    stop: CancellationToken::new(),
                    kill: CancellationToken::new(),
                    grace: Mutex::new(Duration::from_secs(30)),
                    logs: Mutex::new(BTreeMap::new()),
                });
                lock(&self.runs).insert(uid.clone(), run.clone());
                let (kubelet, object, task_run) = (self.clone(), pod.clone(), run.clone());
                tokio::spawn(async move {
                    if pod::emulated(&object) {
                        kubelet.adopt(&object, &task_run).await;
                    } else {
                        pod::run(kubelet.clone(), object, task_run).await;
                    }
                    lock(&kubelet.runs).remove(&uid);
                });
                run
            }
        };
        if crate::lab::api::rest::terminating(pod) && !run.stop.is_cancelled() {
            let grace = pod["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(30);
            *lock(&run.grace) = Duration::from_secs(grace);
            run.stop.cancel();
        }
    }

    /// A workload pod of the lab's input: the lab serves its ports (started with the lab);
    /// the kubelet only removes it when it is deleted.
    async fn adopt(&self, object: &Value, run: &PodRun) {
        let key = crate::model::ObjectKey::new(&run.key.namespace, &run.key.name);
        let lab = self.network.lab();
        let log = lab.state.pods.iter().find(|p| p.key == key).map(|p| lab.serve_log(p));
        let (running, _) = watch::channel(true);
        if let (Some(log), Some(container)) = (log, object["spec"]["containers"][0]["name"].as_str()) {
            lock(&run.logs).insert(container.to_string(), LogFiles { current: log, previous: None, running });
        }
        let graceful = run.ended().await;
        self.remove_network(run).await;
        if graceful {
            run.remove_object(&self.api);
        }
    }

    /// The pod's sandbox: network namespace and address (the CNI's rules in place), sysctls,
    /// and its `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
    async fn sandbox(&self, pod: &Pod, run: &PodRun) -> Result<Sandbox, String> {
        let (api, key, uid) = (self.api.clone(), run.key.clone(), run.uid.clone());
        let current = move || {
            let pod = api
                .store
                .get(&key)
                .filter(|p| p["metadata"]["uid"].as_str() == Some(uid.as_str()))
                .and_then(|p| serde_json::from_value(p).ok());
            let namespace = api
                .store
                .get(&Key::new(KindId::NAMESPACES, "", &key.namespace))
                .and_then(|ns| serde_json::from_value(ns).ok());
            (pod, namespace)
        };
        let lab_pod = self.network.add_sandbox(current).await.map_err(|e| {
            format!("Failed to create pod sandbox: the lab could not make the pod's network namespace: {e}")
        })?;
        // Whatever fails from here on takes the network namespace with it (the retry makes
        // a new one).
        let made = self.finish_sandbox(pod, run, &lab_pod).await;
        if made.is_err() {
            self.remove_network(run).await;
        }
        made
    }

    /// The rest of a sandbox whose network namespace is made: sysctls and `/etc` files.
    async fn finish_sandbox(
        &self,
        pod: &Pod,
        run: &PodRun,
        lab_pod: &crate::lab::topology::LabPod,
    ) -> Result<Sandbox, String> {
        let lab = self.network.lab();
        let netns_name = crate::lab::state::pod_netns(&lab.state.name, lab_pod.index);
        let netns = PathBuf::from("/run/netns").join(&netns_name);
        // The network namespace's sysctls here; those of IPC (`kernel.*`) in each container's.
        let sysctls: Vec<(String, String)> = pod
            .spec
            .iter()
            .flat_map(|s| s.security_context.iter().flat_map(|c| c.sysctls.iter().flatten()))
            .filter(|s| !s.name.starts_with("kernel."))
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect();
        let applied = tokio::task::spawn_blocking(move || {
            sysctls
                .iter()
                .try_for_each(|(k, v)| crate::lab::host::sysctl(&netns_name, k, v).map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| e.to_string())?;
        applied.map_err(|e| format!("Failed to create pod sandbox: setting the pod's sysctls: {e}"))?;
        let dir = self.config.dir.join("pods").join(&run.uid);
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("cannot make {}: {e}", etc.display()))?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let hostname = container::hostname(pod);
        let write = |file: &str, text: String| {
            std::fs::write(etc.join(file), text)
                .map_err(|e| format!("cannot write the pod's /etc/{file}: {e}"))
        };
        write(
            "hosts",
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n",
                lab_pod.ip
            ),
        )?;
        write("resolv.conf", crate::lab::resolv_conf(&namespace, lab.state.dns_ip))?;
        write("hostname", format!("{hostname}\n"))?;
        Ok(Sandbox {
            pod: pod.clone(),
            uid: run.uid.clone(),
            ip: lab_pod.ip,
            host_ip: self.host_ip.clone(),
            netns,
            dir,
            volumes: BTreeMap::new(),
        })
    }

    /// Removes the pod's sandbox and its files.
    async fn teardown(&self, run: &PodRun, sandbox: &Sandbox) {
        self.remove_network(run).await;
        let _ = std::fs::remove_dir_all(&sandbox.dir);
    }

    /// Takes the pod out of the lab's network (its namespace, address and rules; for a pod
    /// the lab emulates, its server).
    async fn remove_network(&self, run: &PodRun) {
        let key = crate::model::ObjectKey::new(&run.key.namespace, &run.key.name);
        if let Err(e) = self.network.remove_pod(key).await {
            eprintln!("netpol-verify lab: removing pod {}/{}: {e}", run.key.namespace, run.key.name);
        }
    }

    fn event(&self, object: &Value, type_: &str, reason: &str, message: &str) {
        self.api.record(object, type_, reason, message, "kubelet");
    }
}

impl Logs for Kubelet {
    fn open(&self, pod: &Value, container: &str, previous: bool) -> Result<LogSource, ApiError> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let run = lock(&self.runs).get(uid).cloned();
        let logs = run.as_ref().map(|r| lock(&r.logs));
        let files = logs.as_ref().and_then(|l| l.get(container));
        match (files, previous) {
            (Some(files), false) => {
                Ok(LogSource { path: files.current.clone(), running: files.running.subscribe() })
            }
            (Some(LogFiles { previous: Some(path), .. }), true) => {
                let (_, running) = watch::channel(false);
                Ok(LogSource { path: path.clone(), running })
            }
            (_, true) => Err(ApiError::bad_request(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            ))),
            (None, false) => {
                let waiting = pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == container)
                    .and_then(|c| c["state"]["waiting"]["reason"].as_str())
                    .unwrap_or("ContainerCreating");
                let why = match waiting {
                    "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image",
                    other => other,
                };
                Err(ApiError::bad_request(format!(
                    "container {container:?} in pod {name:?} is waiting to start: {why}"
                )))
            }
        }
    }
}
