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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lab::api::catalog::KindId;
use crate::lab::api::status::ApiError;
use crate::lab::api::store::{Change, Key, now};
use crate::lab::api::{Api, LogSource, Logs};
use crate::lab::enforce::Network;
use container::{Sandbox, Waiting};
use pod::{ContainerState, Containers, State, Terminated};

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
        if let Err(e) = self.network.remove_pod(key).await {
            eprintln!("netpol-verify lab: removing pod {}/{}: {e}", run.key.namespace, run.key.name);
        }
        if graceful {
            let _ = self
                .api
                .store
                .delete_if(&run.key, "pods", |o| o["metadata"]["uid"].as_str() == Some(run.uid.as_str()));
        }
    }

    /// The pod's sandbox: network namespace and address (the CNI's rules in place), sysctls,
    /// and its `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
    async fn sandbox(&self, pod: &Pod, run: &PodRun) -> Result<Sandbox, String> {
        let namespace = self
            .api
            .store
            .get(&Key::new(KindId::NAMESPACES, "", &run.key.namespace))
            .and_then(|ns| serde_json::from_value(ns).ok());
        let lab_pod = self.network.add_sandbox(pod.clone(), namespace).await.map_err(|e| {
            format!("Failed to create pod sandbox: the lab could not make the pod's network namespace: {e}")
        })?;
        let lab = self.network.lab();
        let netns_name = crate::lab::state::pod_netns(&lab.state.name, lab_pod.index);
        let netns = PathBuf::from("/run/netns").join(&netns_name);
        let sysctls: Vec<(String, String)> = pod
            .spec
            .iter()
            .flat_map(|s| s.security_context.iter().flat_map(|c| c.sysctls.iter().flatten()))
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
        let key = crate::model::ObjectKey::new(&run.key.namespace, &run.key.name);
        if let Err(e) = self.network.remove_pod(key).await {
            eprintln!("netpol-verify lab: removing pod {}/{}: {e}", run.key.namespace, run.key.name);
        }
        let _ = std::fs::remove_dir_all(&sandbox.dir);
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

/// The exit code of a process ended by a signal, as containerd reports it (128 + signal).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

fn signal(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// The most a container waits before its next restart.
const MAX_BACK_OFF: Duration = Duration::from_secs(300);

/// Runs one container of a pod, restarting it as `restart_policy` says, until the pod ends.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    kubelet: &Arc<Kubelet>,
    sandbox: &Arc<Sandbox>,
    run: &Arc<PodRun>,
    containers: &Arc<Containers>,
    index: usize,
    spec: &Container,
    restart_policy: &str,
    object: &Value,
) {
    let name = spec.name.clone();
    let image = spec.image.clone().unwrap_or_default();
    let label = container::pod_label(&sandbox.pod, &sandbox.uid);
    if !kubelet.image.is(&image) {
        let why = format!(
            "the netpol-verify lab runs only the probe image (ghcr.io/netpol-verify/netpol-probe, any tag, or the image `lab up --image` names): {image:?} is not it"
        );
        kubelet.event(object, "Normal", "Pulling", &format!("Pulling image {image:?}"));
        kubelet.event(object, "Warning", "Failed", &format!("Failed to pull image {image:?}: {why}"));
        kubelet.event(object, "Warning", "Failed", "Error: ErrImagePull");
        containers.update(index, |c| c.state = State::Waiting(Waiting::new("ErrImagePull", why.clone())));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = run.ended() => return,
        }
        kubelet.event(object, "Normal", "BackOff", &format!("Back-off pulling image {image:?}"));
        let message = format!("Back-off pulling image {image:?}: ErrImagePull: {why}");
        containers.update(index, |c| c.state = State::Waiting(Waiting::new("ImagePullBackOff", message)));
        run.ended().await;
        return;
    }
    kubelet.event(
        object,
        "Normal",
        "Pulled",
        &format!("Container image {image:?} already present on machine"),
    );
    for (probe, set) in
        [("liveness", spec.liveness_probe.is_some()), ("startup", spec.startup_probe.is_some())]
    {
        if set {
            let message = format!(
                "the netpol-verify lab's kubelet does not run {probe} probes: container {name}'s is ignored"
            );
            kubelet.event(object, "Warning", "Unsupported", &message);
        }
    }
    let mut restart: u32 = 0;
    let mut back_off: Option<Duration> = None;
    loop {
        if run.stopping() {
            return;
        }
        let runtime = match container::spec(&kubelet.api, sandbox, spec, &kubelet.image, restart) {
            Ok(runtime) => runtime,
            Err(waiting) => {
                kubelet.event(object, "Warning", "Failed", &format!("Error: {}", waiting.reason));
                containers.update(index, |c| c.state = State::Waiting(waiting.clone()));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = run.ended() => return,
                }
            }
        };
        let log = container::log_path(&sandbox.dir, &name, restart);
        let started_at = now();
        let child = start(kubelet, &runtime, &log, restart);
        let previous = lock(&run.logs).get(&name).map(|f| f.current.clone());
        let (running, _) = watch::channel(true);
        lock(&run.logs)
            .insert(name.clone(), LogFiles { current: log.clone(), previous, running: running.clone() });
        let mut child = match child {
            Ok(child) => child,
            Err(message) => {
                let _ = running.send(false);
                let finished = Terminated {
                    exit_code: shim::START_ERROR,
                    reason: "StartError".into(),
                    message: Some(message),
                    started_at: started_at.clone(),
                    finished_at: now(),
                };
                containers.update(index, |c| c.state = State::Terminated(finished));
                return;
            }
        };
        let id = format!("netpol-verify-lab://{}-{name}-{restart}", sandbox.uid);
        kubelet.event(object, "Normal", "Created", &format!("Created container: {name}"));
        kubelet.event(object, "Normal", "Started", &format!("Started container {name}"));
        containers.update(index, |c| {
            c.state = State::Running { started_at: started_at.clone() };
            c.id = Some(id.clone());
            c.ready = spec.readiness_probe.is_none();
        });
        let ended = CancellationToken::new();
        if let Some(readiness) = spec.readiness_probe.clone() {
            let (kubelet, sandbox, containers, ended, object, runtime) = (
                kubelet.clone(),
                sandbox.clone(),
                containers.clone(),
                ended.clone(),
                object.clone(),
                runtime.clone(),
            );
            tokio::spawn(async move {
                readiness_loop(&kubelet, &sandbox, &containers, index, &readiness, &runtime, &ended, &object)
                    .await;
            });
        }
        let pid = child.id();
        let status = tokio::select! {
            status = child.wait() => status,
            () = run.stop.cancelled() => {
                kubelet.event(object, "Normal", "Killing", &format!("Stopping container {name}"));
                signal(pid, nix::sys::signal::Signal::SIGTERM);
                let grace = *lock(&run.grace);
                tokio::select! {
                    status = child.wait() => status,
                    () = tokio::time::sleep(grace) => { signal(pid, nix::sys::signal::Signal::SIGKILL); child.wait().await }
                    () = run.kill.cancelled() => { signal(pid, nix::sys::signal::Signal::SIGKILL); child.wait().await }
                }
            }
            () = run.kill.cancelled() => { signal(pid, nix::sys::signal::Signal::SIGKILL); child.wait().await }
        };
        ended.cancel();
        let _ = running.send(false);
        let code = status.map(exit_code).unwrap_or(137);
        let start_error = std::fs::read_to_string(&runtime.start_error).ok().filter(|t| !t.is_empty());
        let (reason, message) = match start_error {
            Some(why) => ("StartError".to_string(), Some(why)),
            None => (
                if code == 0 { "Completed" } else { "Error" }.to_string(),
                container::termination_message(&runtime, spec, &log, code),
            ),
        };
        let finished = Terminated { exit_code: code, reason, message, started_at, finished_at: now() };
        containers.update(index, |c| {
            c.state = State::Terminated(finished.clone());
            c.ready = false;
        });
        if run.stopping() {
            return;
        }
        let again = match restart_policy {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if !again {
            return;
        }
        // The first restart is at once; each later one waits twice as long (10 s to 5 min).
        let wait = back_off.unwrap_or(Duration::ZERO);
        back_off = Some(back_off.map_or(Duration::from_secs(10), |b| (b * 2).min(MAX_BACK_OFF)));
        if !wait.is_zero() {
            kubelet.event(
                object,
                "Warning",
                "BackOff",
                &format!("Back-off restarting failed container {name} in pod {label}"),
            );
            let message =
                format!("back-off {}s restarting failed container={name} pod={label}", wait.as_secs());
            containers.update(index, |c| {
                c.last = Some(finished.clone());
                c.state = State::Waiting(Waiting::new("CrashLoopBackOff", message));
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = run.ended() => return,
            }
        }
        restart += 1;
        containers.update(index, |c: &mut ContainerState| {
            c.last = Some(finished.clone());
            c.restarts = restart;
        });
    }
}

/// Starts the runtime for `runtime`, its output appended to `log`.
fn start(
    kubelet: &Kubelet,
    runtime: &shim::ContainerSpec,
    log: &std::path::Path,
    restart: u32,
) -> Result<tokio::process::Child, String> {
    let dir = log.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let spec_file = dir.join(format!("{restart}-spec.json"));
    let text = serde_json::to_vec(runtime).map_err(|e| e.to_string())?;
    std::fs::write(&spec_file, text).map_err(|e| format!("cannot write {}: {e}", spec_file.display()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    tokio::process::Command::new(&kubelet.config.verify)
        .args(["lab", "container", "--spec"])
        .arg(&spec_file)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the lab's container runtime: {e}"))
}

/// Probes a container's readiness every period until it ends, as the kubelet's prober does.
#[allow(clippy::too_many_arguments)]
async fn readiness_loop(
    kubelet: &Arc<Kubelet>,
    sandbox: &Sandbox,
    containers: &Containers,
    index: usize,
    readiness: &k8s_openapi::api::core::v1::Probe,
    runtime: &shim::ContainerSpec,
    ended: &CancellationToken,
    object: &Value,
) {
    let seconds = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    let period = seconds(readiness.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(readiness.timeout_seconds, 1).max(Duration::from_secs(1));
    let (success, failure) =
        (readiness.success_threshold.unwrap_or(1).max(1), readiness.failure_threshold.unwrap_or(3).max(1));
    // NB: the kubelet's prober ticks every period from the pod's start, so its first probe of
    // a container lands within a period of the container starting; the lab's lands 100 ms in
    // (after any initialDelaySeconds), once a server has had the time to listen.
    let first = seconds(readiness.initial_delay_seconds, 0).max(Duration::from_millis(100));
    tokio::select! {
        () = tokio::time::sleep(first) => {}
        () = ended.cancelled() => return,
    }
    let (mut ready, mut streak, mut last_ok, mut failures) = (false, 0, None, 0u32);
    let mut execs = 0u32;
    loop {
        let result = if let Some(tcp) = &readiness.tcp_socket {
            match probe_port(&tcp.port, sandbox, index) {
                Some(port) => {
                    kubelet.node.dial(std::net::SocketAddr::new(sandbox.ip.into(), port), timeout).await
                }
                None => Err(format!("port {:?} is not a port of the container", tcp.port)),
            }
        } else if let Some(exec) = &readiness.exec {
            execs += 1;
            exec_probe(kubelet, runtime, exec.command.clone().unwrap_or_default(), timeout, execs).await
        } else {
            Err("the lab's kubelet runs tcpSocket and exec probes only".to_string())
        };
        let ok = result.is_ok();
        streak = if last_ok == Some(ok) { streak + 1 } else { 1 };
        last_ok = Some(ok);
        if let Err(why) = &result {
            failures += 1;
            if failures == 1 || failures % 10 == 0 {
                kubelet.event(object, "Warning", "Unhealthy", &format!("Readiness probe failed: {why}"));
            }
        }
        let flip = (ok && !ready && streak >= success) || (!ok && ready && streak >= failure);
        if flip {
            ready = ok;
            containers.update(index, |c| c.ready = ok);
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = ended.cancelled() => return,
        }
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    sandbox: &Sandbox,
    index: usize,
) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => sandbox
            .pod
            .spec
            .as_ref()?
            .containers
            .get(index)?
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// An exec probe: the command in a container process of its own, built as the container was.
async fn exec_probe(
    kubelet: &Kubelet,
    runtime: &shim::ContainerSpec,
    command: Vec<String>,
    timeout: Duration,
    n: u32,
) -> Result<(), String> {
    if command.is_empty() {
        return Err("exec probe with no command".into());
    }
    let dir =
        runtime.root.parent().map(std::path::Path::to_path_buf).unwrap_or_default().join(format!("exec-{n}"));
    std::fs::create_dir_all(dir.join("root")).map_err(|e| e.to_string())?;
    let mut spec = runtime.clone();
    spec.argv = command.clone();
    spec.root = dir.join("root");
    spec.start_error = dir.join("start-error");
    let log = dir.join("output");
    let child = start(kubelet, &spec, &log, n);
    let result = match child {
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                Err(format!("command {command:?} exited with {}: {}", exit_code(status), output.trim()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                signal(child.id(), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
                Err(format!("command {command:?} timed out"))
            }
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}
