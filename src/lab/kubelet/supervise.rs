//! One container of a pod, as the kubelet runs it: the image check, each run through the
//! runtime ([`super::shim`]), readiness probes while it runs, its end in the pod's status
//! (exit code, reason, termination message), and restarts with back-off as the pod's
//! `restartPolicy` says.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::container::{self, Sandbox, Waiting};
use super::pod::{Containers, State, Terminated};
use super::{Kubelet, LogFiles, PodRun, lock, shim};
use crate::lab::api::store::now;

/// The most a container waits before its next restart.
const MAX_BACK_OFF: Duration = Duration::from_secs(300);

/// What the supervisors of one pod's containers share.
#[derive(Debug)]
pub struct PodContext {
    pub kubelet: Arc<Kubelet>,
    pub sandbox: Arc<Sandbox>,
    pub run: Arc<PodRun>,
    pub containers: Arc<Containers>,
    /// The Pod object, as the kubelet first saw it (events name it).
    pub object: Value,
    pub restart_policy: String,
}

impl PodContext {
    fn event(&self, type_: &str, reason: &str, message: &str) {
        self.kubelet.event(&self.object, type_, reason, message);
    }

    fn set(&self, index: usize, state: State) {
        self.containers.update(index, |c| c.state = state);
    }
}

/// Runs container `index` of the pod, restarting it as the pod's `restartPolicy` says, until
/// the pod ends.
pub async fn supervise(pod: Arc<PodContext>, index: usize, spec: Container) {
    let image = spec.image.clone().unwrap_or_default();
    if !pod.kubelet.image.is(&image) {
        refuse_image(&pod, index, &image).await;
        return;
    }
    pod.event("Normal", "Pulled", &format!("Container image {image:?} already present on machine"));
    for (probe, set) in
        [("liveness", spec.liveness_probe.is_some()), ("startup", spec.startup_probe.is_some())]
    {
        if set {
            let message = format!(
                "the netpol-verify lab's kubelet does not run {probe} probes: container {}'s is ignored",
                spec.name
            );
            pod.event("Warning", "Unsupported", &message);
        }
    }
    let (mut restart, mut back_off) = (0u32, None::<Duration>);
    let mut config_error: Option<Waiting> = None;
    loop {
        if pod.run.stopping() {
            return;
        }
        let runtime =
            match container::spec(&pod.kubelet.api, &pod.sandbox, &spec, &pod.kubelet.image, restart) {
                Ok(runtime) => runtime,
                Err(waiting) => {
                    // Said once per distinct error, as the kubelet's event recorder aggregates.
                    if config_error.as_ref() != Some(&waiting) {
                        pod.event("Warning", "Failed", &format!("Error: {}", waiting.reason));
                        config_error = Some(waiting.clone());
                    }
                    pod.set(index, State::Waiting(waiting));
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = pod.run.ended() => return,
                    }
                }
            };
        config_error = None;
        let finished = run_once(&pod, index, &spec, &runtime, restart).await;
        let code = finished.exit_code;
        pod.containers.update(index, |c| {
            c.state = State::Terminated(finished.clone());
            c.ready = false;
        });
        let again = match pod.restart_policy.as_str() {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if pod.run.stopping() || !again {
            return;
        }
        // The first restart is at once; each later one waits twice as long (10 s to 5 min).
        let wait = back_off.unwrap_or(Duration::ZERO);
        back_off = Some(back_off.map_or(Duration::from_secs(10), |b| (b * 2).min(MAX_BACK_OFF)));
        if !wait.is_zero() {
            let name = &spec.name;
            let label = container::pod_label(&pod.sandbox.pod, &pod.sandbox.uid);
            pod.event(
                "Warning",
                "BackOff",
                &format!("Back-off restarting failed container {name} in pod {label}"),
            );
            let message =
                format!("back-off {}s restarting failed container={name} pod={label}", wait.as_secs());
            pod.containers.update(index, |c| {
                c.last = Some(finished.clone());
                c.state = State::Waiting(Waiting::new("CrashLoopBackOff", message));
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = pod.run.ended() => return,
            }
        }
        restart += 1;
        pod.containers.update(index, |c| {
            c.last = Some(finished.clone());
            c.restarts = restart;
        });
    }
}

/// An image other than the probe's: `ErrImagePull`, then `ImagePullBackOff` until the pod ends.
async fn refuse_image(pod: &PodContext, index: usize, image: &str) {
    let why = format!(
        "the netpol-verify lab runs only the probe image (ghcr.io/netpol-verify/netpol-probe, any tag, or the image `lab up --image` names): {image:?} is not it"
    );
    pod.event("Normal", "Pulling", &format!("Pulling image {image:?}"));
    pod.event("Warning", "Failed", &format!("Failed to pull image {image:?}: {why}"));
    pod.event("Warning", "Failed", "Error: ErrImagePull");
    pod.set(index, State::Waiting(Waiting::new("ErrImagePull", why.clone())));
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = pod.run.ended() => return,
    }
    pod.event("Normal", "BackOff", &format!("Back-off pulling image {image:?}"));
    let message = format!("Back-off pulling image {image:?}: ErrImagePull: {why}");
    pod.set(index, State::Waiting(Waiting::new("ImagePullBackOff", message)));
    pod.run.ended().await;
}

/// One run of the container, from its start to its end (by itself, or stopped as the pod is
/// deleted): how it ended.
async fn run_once(
    pod: &Arc<PodContext>,
    index: usize,
    spec: &Container,
    runtime: &shim::ContainerSpec,
    restart: u32,
) -> Terminated {
    let name = &spec.name;
    let log = container::log_path(&pod.sandbox.dir, name, restart);
    let started_at = now();
    let previous = lock(&pod.run.logs).get(name).map(|f| f.current.clone());
    let (running, _) = watch::channel(true);
    lock(&pod.run.logs)
        .insert(name.clone(), LogFiles { current: log.clone(), previous, running: running.clone() });
    let start_error = |message: String| Terminated {
        exit_code: shim::START_ERROR,
        reason: "StartError".into(),
        message: Some(message),
        started_at: started_at.clone(),
        finished_at: now(),
    };
    let (mut child, made) = match start(&pod.kubelet, runtime, &log, restart) {
        Ok(started) => started,
        Err(message) => {
            let _ = running.send(false);
            return start_error(message);
        }
    };
    let pid = child.id();
    // The runtime closes its end of `made` as it execs the container's command (or fails):
    // from then on the container's namespaces and root are whole.
    let (mut made, mut said) = (made, Vec::new());
    tokio::select! {
        _ = made.read_to_end(&mut said) => {}
        () = pod.run.kill.cancelled() => {}
    }
    pod.event("Normal", "Created", &format!("Created container: {name}"));
    pod.event("Normal", "Started", &format!("Started container {name}"));
    let id = format!("netpol-verify-lab://{}-{name}-{restart}", pod.sandbox.uid);
    pod.containers.update(index, |c| {
        c.state = State::Running { started_at: started_at.clone() };
        c.id = Some(id);
        c.ready = spec.readiness_probe.is_none();
    });
    let readiness = match (spec.readiness_probe.clone(), pid) {
        (Some(probe), Some(pid)) => {
            let (pod, runtime) = (pod.clone(), runtime.clone());
            Some(tokio::spawn(async move { readiness(&pod, index, &probe, &runtime, pid).await }))
        }
        _ => None,
    };
    let run = &pod.run;
    let status = tokio::select! {
        status = child.wait() => status,
        () = run.stop.cancelled() => {
            pod.event("Normal", "Killing", &format!("Stopping container {name}"));
            signal(pid, Signal::SIGTERM);
            let grace = *lock(&run.grace);
            tokio::select! {
                status = child.wait() => status,
                () = tokio::time::sleep(grace) => { signal(pid, Signal::SIGKILL); child.wait().await }
                () = run.kill.cancelled() => { signal(pid, Signal::SIGKILL); child.wait().await }
            }
        }
        () = run.kill.cancelled() => { signal(pid, Signal::SIGKILL); child.wait().await }
    };
    // The prober is done before the container's end is written: it never marks an ended
    // container ready.
    if let Some(readiness) = readiness {
        readiness.abort();
        let _ = readiness.await;
    }
    let _ = running.send(false);
    let code = status.map(exit_code).unwrap_or(137);
    if let Some(why) = std::fs::read_to_string(&runtime.start_error).ok().filter(|t| !t.is_empty()) {
        return start_error(why);
    }
    Terminated {
        exit_code: code,
        reason: if code == 0 { "Completed" } else { "Error" }.to_string(),
        message: container::termination_message(runtime, spec, &log, code),
        started_at,
        finished_at: now(),
    }
}

/// Starts the runtime for `runtime`, its output appended to `log`; with the end of a pipe
/// that reaches end-of-file once the container is made (the runtime gets the other end as
/// its standard input and replaces it with `/dev/null` as it execs).
fn start(
    kubelet: &Kubelet,
    runtime: &shim::ContainerSpec,
    log: &std::path::Path,
    n: u32,
) -> Result<(tokio::process::Child, tokio::net::unix::pipe::Receiver), String> {
    let dir = log.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let spec_file = dir.join(format!("{n}-spec.json"));
    let text = serde_json::to_vec(runtime).map_err(|e| e.to_string())?;
    std::fs::write(&spec_file, text).map_err(|e| format!("cannot write {}: {e}", spec_file.display()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let (made, made_reader) =
        tokio::net::unix::pipe::pipe().map_err(|e| format!("cannot make a pipe for the runtime: {e}"))?;
    let made = made.into_blocking_fd().map_err(|e| format!("cannot make a pipe for the runtime: {e}"))?;
    let child = tokio::process::Command::new(&kubelet.config.verify)
        .args(["lab", "container", "--spec"])
        .arg(&spec_file)
        .stdin(made)
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the lab's container runtime: {e}"))?;
    Ok((child, made_reader))
}

/// Probes a container's readiness every period until it ends, as the kubelet's prober does.
async fn readiness(pod: &PodContext, index: usize, probe: &Probe, runtime: &shim::ContainerSpec, pid: u32) {
    let seconds = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let (success, failure) =
        (probe.success_threshold.unwrap_or(1).max(1), probe.failure_threshold.unwrap_or(3).max(1));
    // NB: the kubelet's prober ticks every period from the pod's start, so its first probe of
    // a container lands within a period of the container starting; the lab's lands 100 ms in
    // (after any initialDelaySeconds), once a server has had the time to listen.
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0).max(Duration::from_millis(100))).await;
    let (mut ready, mut streak, mut last_ok, mut failures, mut execs) = (false, 0, None, 0u32, 0u32);
    loop {
        let result = if let Some(tcp) = &probe.tcp_socket {
            match probe_port(&tcp.port, &pod.sandbox, index) {
                Some(port) => {
                    let address = std::net::SocketAddr::new(pod.sandbox.ip.into(), port);
                    pod.kubelet.node.dial(address, timeout).await
                }
                None => Err(format!("port {:?} is not a port of the container", tcp.port)),
            }
        } else if let Some(exec) = &probe.exec {
            execs += 1;
            let command = exec.command.clone().unwrap_or_default();
            exec_probe(&pod.kubelet, runtime, pid, command, timeout, execs).await
        } else {
            Err("the lab's kubelet runs tcpSocket and exec probes only".to_string())
        };
        let ok = result.is_ok();
        streak = if last_ok == Some(ok) { streak + 1 } else { 1 };
        last_ok = Some(ok);
        if let Err(why) = &result {
            failures += 1;
            if failures == 1 || failures % 10 == 0 {
                pod.event("Warning", "Unhealthy", &format!("Readiness probe failed: {why}"));
            }
        }
        if (ok && !ready && streak >= success) || (!ok && ready && streak >= failure) {
            ready = ok;
            pod.containers.update(index, |c| c.ready = ok);
        }
        tokio::time::sleep(period).await;
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(port: &IntOrString, sandbox: &Sandbox, index: usize) -> Option<u16> {
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

/// An exec probe: the command in the running container (process `pid`): its namespaces and
/// root, its user, capabilities and environment, as `runc exec` runs it.
async fn exec_probe(
    kubelet: &Kubelet,
    runtime: &shim::ContainerSpec,
    pid: u32,
    command: Vec<String>,
    timeout: Duration,
    n: u32,
) -> Result<(), String> {
    if command.is_empty() {
        return Err("exec probe with no command".into());
    }
    let dir =
        runtime.root.parent().map(std::path::Path::to_path_buf).unwrap_or_default().join(format!("exec-{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut spec = runtime.clone();
    spec.argv = command.clone();
    spec.join = Some(pid);
    spec.start_error = dir.join("start-error");
    let log = dir.join("output");
    let result = match start(kubelet, &spec, &log, n) {
        Ok((mut child, _)) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                Err(format!("command {command:?} exited with {}: {}", exit_code(status), output.trim()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                signal(child.id(), Signal::SIGKILL);
                let _ = child.wait().await;
                Err(format!("command {command:?} timed out"))
            }
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The exit code of a process ended by a signal, as containerd reports it (128 + signal).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

/// Signals a container: its whole process group (the runtime starts each container as a
/// group of its own, which its children stay in).
fn signal(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
    }
}
