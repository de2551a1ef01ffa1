//! One pod on the lab's node, from its sandbox to its removal: the kubelet's admission
//! (sysctls), the sandbox (network namespace, address, the CNI's rules, the pod's sysctls and
//! `/etc` files), volumes, a supervisor per container, and the pod's status as the kubelet
//! writes it (phase, conditions with readiness gates, container states, restarts).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::container::{self, Sandbox, Waiting};
use super::supervise::{PodContext, supervise};
use super::{Kubelet, PodRun};
use crate::lab::api::store::now;

/// The kubelet's "safe" sysctls (Kubernetes 1.32): always allowed, set in the pod's network
/// (or IPC) namespace.
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// A container's state, as `containerStatuses[].state` says it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting(Waiting),
    Running { started_at: String },
    Terminated(Terminated),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// What the kubelet knows of one container.
#[derive(Debug, Clone)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last: Option<Terminated>,
    pub ready: bool,
    pub restarts: u32,
    pub id: Option<String>,
}

/// The containers of a pod, shared by their supervisors and the pod's status writer.
#[derive(Debug)]
pub struct Containers {
    pub states: Mutex<Vec<ContainerState>>,
    pub changed: tokio::sync::Notify,
}

impl Containers {
    pub fn update(&self, index: usize, change: impl FnOnce(&mut ContainerState)) {
        if let Some(state) =
            self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(index)
        {
            change(state);
        }
        self.changed.notify_one();
    }

    fn snapshot(&self) -> Vec<ContainerState> {
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

fn terminated_json(t: &Terminated, id: Option<&String>) -> Value {
    let mut value = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": id,
    });
    if let Some(message) = &t.message {
        value["message"] = Value::from(message.clone());
    }
    value
}

fn container_json(c: &ContainerState) -> Value {
    let state = match &c.state {
        State::Waiting(w) => json!({"waiting": {"reason": w.reason, "message": w.message}}),
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(t) => json!({"terminated": terminated_json(t, c.id.as_ref())}),
    };
    let mut value = json!({
        "name": c.name,
        "image": c.image,
        "imageID": format!("netpol-verify-lab://{}", c.image),
        "ready": c.ready,
        "restartCount": c.restarts,
        "started": matches!(c.state, State::Running { .. }),
        "state": state,
        "lastState": c.last.as_ref().map_or(json!({}), |t| json!({"terminated": terminated_json(t, c.id.as_ref())})),
    });
    if let Some(id) = &c.id {
        value["containerID"] = Value::from(id.clone());
    }
    value
}

/// The pod's phase from its containers' states (the kubelet's `getPhase`); `terminal` once a
/// deleted pod's containers are all stopped (it then ends Succeeded or Failed, whatever its
/// restart policy).
pub fn phase(containers: &[ContainerState], restart_policy: &str, terminal: bool) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                succeeded += usize::from(t.exit_code == 0);
            }
            State::Waiting(_) => match &c.last {
                Some(last) => {
                    stopped += 1;
                    succeeded += usize::from(last.exit_code == 0);
                }
                None => waiting += 1,
            },
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == containers.len() {
        if terminal {
            return if succeeded == stopped { "Succeeded" } else { "Failed" };
        }
        match restart_policy {
            "Always" => "Running",
            "OnFailure" if succeeded < stopped => "Running",
            "Never" if succeeded < stopped => "Failed",
            _ => "Succeeded",
        }
    } else {
        "Pending"
    }
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let mut value = json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now()});
    if let Some(reason) = reason {
        value["reason"] = Value::from(reason);
    }
    if let Some(message) = message {
        value["message"] = Value::from(message);
    }
    value
}

/// Writes the pod's status from its containers (keeping PodScheduled and conditions other
/// controllers own, and the transition times of unchanged ones); `terminal` as [`phase`]
/// says. Returns `false` when the pod is gone (deleted, or replaced by one of another uid).
pub fn write_status(
    kubelet: &Kubelet,
    run: &PodRun,
    sandbox: Option<&Sandbox>,
    containers: &[ContainerState],
    terminal: bool,
) -> bool {
    let written = kubelet.api.store.update(&run.key, "pods", |old| {
        if old["metadata"]["uid"].as_str() != Some(run.uid.as_str()) {
            return Err(crate::lab::api::status::ApiError::not_found("pods", &run.key.name));
        }
        let mut next = old.clone();
        let restart_policy = old["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        let phase = phase(containers, restart_policy, terminal);
        let unready: Vec<&str> = containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
        let containers_ready = unready.is_empty();
        let succeeded = phase == "Succeeded";
        let (ready_reason, ready_message) = if succeeded {
            (Some("PodCompleted"), None)
        } else if containers_ready {
            (None, None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!("containers with unready status: [{}]", unready.join(" "))),
            )
        };
        // Readiness gates: Ready only when every gate's condition is True.
        let conditions = old["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let gate_problems: Vec<String> = old["spec"]["readinessGates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|gate| {
                let kind = gate["conditionType"].as_str()?;
                match conditions.iter().find(|c| c["type"] == kind) {
                    None => Some(format!(
                        "corresponding condition of pod readiness gate {kind:?} does not exist."
                    )),
                    Some(c) if c["status"] != "True" => Some(format!(
                        "the status of pod readiness gate {kind:?} is not \"True\", but {}",
                        c["status"].as_str().unwrap_or_default()
                    )),
                    Some(_) => None,
                }
            })
            .collect();
        let ready = if !containers_ready || succeeded {
            condition("Ready", false, ready_reason, ready_message.clone())
        } else if !gate_problems.is_empty() {
            condition("Ready", false, Some("ReadinessGatesNotReady"), Some(gate_problems.join(", ")))
        } else {
            condition("Ready", true, None, None)
        };
        let ours = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"];
        let mut next_conditions: Vec<Value> = vec![
            condition("PodReadyToStartContainers", sandbox.is_some(), None, None),
            condition("Initialized", true, None, None),
            ready,
            condition("ContainersReady", containers_ready && !succeeded, ready_reason, ready_message),
        ];
        for kept in conditions.iter().filter(|c| !ours.contains(&c["type"].as_str().unwrap_or_default())) {
            next_conditions.push(kept.clone());
        }
        // A condition whose status did not change keeps its transition time.
        for c in &mut next_conditions {
            if let Some(before) =
                conditions.iter().find(|b| b["type"] == c["type"] && b["status"] == c["status"])
            {
                c["lastTransitionTime"] = before["lastTransitionTime"].clone();
            }
        }
        let status = &mut next["status"];
        status["phase"] = Value::from(phase);
        status["conditions"] = Value::Array(next_conditions);
        status["containerStatuses"] = Value::Array(containers.iter().map(container_json).collect());
        status["hostIP"] = Value::from(kubelet.host_ip.clone());
        status["hostIPs"] = json!([{"ip": kubelet.host_ip}]);
        if let Some(sandbox) = sandbox {
            status["podIP"] = Value::from(sandbox.ip.to_string());
            status["podIPs"] = json!([{"ip": sandbox.ip.to_string()}]);
        }
        if status["startTime"].is_null() {
            status["startTime"] = Value::from(now());
        }
        Ok(next)
    });
    written.is_ok()
}

/// A Failed pod the kubelet refused (`reason`, `message`), with no container run.
fn reject(kubelet: &Kubelet, run: &PodRun, pod: &Value, reason: &str, message: &str) {
    kubelet.api.record(pod, "Warning", reason, message, "kubelet");
    let _ = kubelet.api.store.update(&run.key, "pods", |old| {
        if old["metadata"]["uid"].as_str() != Some(run.uid.as_str()) {
            return Err(crate::lab::api::status::ApiError::not_found("pods", &run.key.name));
        }
        let mut next = old.clone();
        next["status"]["phase"] = Value::from("Failed");
        next["status"]["reason"] = Value::from(reason);
        next["status"]["message"] = Value::from(format!("Pod was rejected: {message}"));
        Ok(next)
    });
}

/// The first sysctl of the pod the kubelet does not allow.
fn forbidden_sysctl(pod: &Pod) -> Option<String> {
    let sysctls = pod.spec.as_ref()?.security_context.as_ref()?.sysctls.as_ref()?;
    sysctls.iter().find(|s| !SAFE_SYSCTLS.contains(&s.name.as_str())).map(|s| s.name.clone())
}

/// What the lab's kubelet cannot run as asked: the host's namespaces, privileged containers
/// (the lab gives them neither the host's devices nor its namespaces), init containers. The
/// pod's containers then wait (`CreateContainerConfigError`) with this message.
/// NB: said, never skipped: such a pod run some other way is not the pod asked for.
fn unsupported(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)];
    if let Some((field, _)) = host.iter().find(|(_, set)| *set == Some(true)) {
        return Some(format!(
            "the netpol-verify lab's kubelet does not run pods in the host's namespaces (spec.{field})"
        ));
    }
    if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
        return Some(
            "the netpol-verify lab's kubelet does not run init containers (spec.initContainers)".into(),
        );
    }
    let privileged =
        spec.containers.iter().find(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
    privileged.map(|c| {
        format!(
            "the netpol-verify lab's kubelet does not run privileged containers (container {}: securityContext.privileged)",
            c.name
        )
    })
}

/// Runs pod `pod` until it is deleted; removes its object once a graceful deletion is done.
pub async fn run(kubelet: Arc<Kubelet>, object: Value, run: Arc<PodRun>) {
    let Ok(pod) = serde_json::from_value::<Pod>(object.clone()) else { return };
    let finish = |graceful: bool| {
        if graceful {
            run.remove_object(&kubelet.api);
        }
    };
    if let Some(name) = forbidden_sysctl(&pod) {
        reject(
            &kubelet,
            &run,
            &object,
            "SysctlForbidden",
            &format!("forbidden sysctl: {name:?} not allowlisted"),
        );
        let graceful = run.ended().await;
        finish(graceful);
        return;
    }
    let specs: Vec<Container> = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    let unsupported = unsupported(&pod);
    let creating = match &unsupported {
        Some(message) => {
            kubelet.api.record(&object, "Warning", "Failed", message, "kubelet");
            Waiting::new("CreateContainerConfigError", message.clone())
        }
        None => Waiting::new("ContainerCreating", ""),
    };
    let containers = Arc::new(Containers {
        states: Mutex::new(
            specs
                .iter()
                .map(|c| ContainerState {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    state: State::Waiting(creating.clone()),
                    last: None,
                    ready: false,
                    restarts: 0,
                    id: None,
                })
                .collect(),
        ),
        changed: tokio::sync::Notify::new(),
    });
    // NB: a sandbox being made is finished, never dropped half-way (its namespace would
    // outlive the pod); a deletion meanwhile tears it down right after. One that could not
    // be made is tried again, 1 s later, then twice as long each time (at most 30 s).
    let (mut wait, mut failed) = (Duration::from_secs(1), None::<String>);
    let sandbox = loop {
        match kubelet.sandbox(&pod, &run).await {
            Ok(sandbox) => break Arc::new(sandbox),
            Err(e) => {
                if failed.as_ref() != Some(&e) {
                    kubelet.api.record(&object, "Warning", "FailedCreatePodSandBox", &e, "kubelet");
                    failed = Some(e);
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => wait = (wait * 2).min(Duration::from_secs(30)),
                    graceful = run.ended() => {
                        finish(graceful);
                        return;
                    }
                }
            }
        }
    };
    if run.stopping() {
        kubelet.teardown(&run, &sandbox).await;
        finish(!run.kill.is_cancelled());
        return;
    }
    write_status(&kubelet, &run, Some(&sandbox), &containers.snapshot(), false);
    if unsupported.is_some() {
        let graceful = run.ended().await;
        kubelet.teardown(&run, &sandbox).await;
        finish(graceful);
        return;
    }
    // Volumes: a missing ConfigMap keeps the pod creating until it appears.
    let mut warned = false;
    let sandbox = loop {
        match container::prepare_volumes(&kubelet.api, &sandbox.pod, &sandbox.dir) {
            Ok(volumes) => break Arc::new(Sandbox { volumes, ..(*sandbox).clone() }),
            Err(message) => {
                if !warned {
                    kubelet.api.record(&object, "Warning", "FailedMount", &message, "kubelet");
                    warned = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    graceful = run.ended() => {
                        kubelet.teardown(&run, &sandbox).await;
                        finish(graceful);
                        return;
                    }
                }
            }
        }
    };
    let restart_policy =
        pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
    let context = Arc::new(PodContext {
        kubelet: kubelet.clone(),
        sandbox: sandbox.clone(),
        run: run.clone(),
        containers: containers.clone(),
        object: object.clone(),
        restart_policy,
    });
    let mut supervisors = tokio::task::JoinSet::new();
    for (index, spec) in specs.into_iter().enumerate() {
        supervisors.spawn(supervise(context.clone(), index, spec));
    }
    // Status as the containers change, until every supervisor ended.
    loop {
        tokio::select! {
            () = containers.changed.notified() => {
                if !write_status(&kubelet, &run, Some(&sandbox), &containers.snapshot(), false) {
                    // Deleted under us (a forced deletion): stop now.
                    run.kill.cancel();
                }
            }
            done = supervisors.join_next() => {
                if done.is_none() {
                    break;
                }
            }
        }
    }
    // A pod stopped by its deletion ends in a terminal phase, as the kubelet writes it
    // before the object goes.
    write_status(&kubelet, &run, Some(&sandbox), &containers.snapshot(), run.stop.is_cancelled());
    // Ended by themselves (a pod that ran to completion) or stopped: wait for the deletion.
    let graceful = if run.stop.is_cancelled() || run.kill.is_cancelled() {
        !run.kill.is_cancelled()
    } else {
        run.ended().await
    };
    kubelet.teardown(&run, &sandbox).await;
    finish(graceful);
}

/// Whether `pod` is one the lab emulates (a workload of its input): it keeps its labels and
/// address, and the lab serves its ports.
pub fn emulated(pod: &Value) -> bool {
    pod["metadata"]["annotations"][crate::lab::EMULATED].is_string()
}
