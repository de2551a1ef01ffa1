//! The lab's kubelet runs pods as written (root): each container's command and arguments,
//! environment from field references, configMap items at their paths, user, groups and
//! capability sets, no_new_privs and a read-only root (read off the live process), exec
//! readiness probes and readiness gates, restart policies with back-off, exit codes and
//! termination messages, runAsNonRoot, pods it cannot honour (host namespaces, init containers,
//! privileged) refused, and a pod the kubelet cannot run named as such.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{Api, PostParams};
use netpol_verify::lab::Lab;
use netpol_verify::lab::cni::CniMode;
use serde_json::{Value, json};

mod support;
use support::{TWO_NAMESPACES, TestLab};

const IMAGE: &str = "ghcr.io/netpol-verify/netpol-probe:0.1.0";

async fn create(lab: &TestLab, pod: Value) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(lab.client().await, "a");
    let pod: Pod = serde_json::from_value(pod).expect("a pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    pods
}

/// Waits until `done` accepts pod a/`name`, at most 20 s; the pod as it then is.
async fn wait_for(pods: &Api<Pod>, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = serde_json::to_value(pods.get(name).await.expect("the pod")).expect("JSON");
        if done(&pod) {
            return pod;
        }
        assert!(Instant::now() < deadline, "pod a/{name} never {what}: {:#}", pod["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `/proc/PID/status` and `/proc/PID/mountinfo` of the process running in pod a/`name`'s
/// network namespace.
fn process_of(lab: &TestLab, name: &str) -> (BTreeMap<String, String>, String) {
    let record = Lab::open(&lab.name).expect("the lab");
    let key = netpol_verify::model::ObjectKey::new("a", name);
    let netns = record.pod_netns(&key).expect("a sandbox");
    let pids = std::process::Command::new("ip").args(["netns", "pids", &netns]).output().expect("ip runs");
    let pid = String::from_utf8_lossy(&pids.stdout).split_whitespace().next().expect("a process").to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let fields = status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    (fields, std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("its mounts"))
}

/// Whether the mount at `target` in `mountinfo` is read-only.
fn read_only(mountinfo: &str, target: &str) -> Option<bool> {
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(target))
        .map(|l| l.split_whitespace().nth(5).is_some_and(|options| options.split(',').any(|o| o == "ro")))
}

#[tokio::test]
async fn a_server_runs_with_exactly_its_specs_user_capabilities_mounts_and_environment() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let maps: Api<ConfigMap> = Api::namespaced(lab.client().await, "a");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "files"}, "data": {"k": "v", "other": "x"}}))
            .expect("map");
    maps.create(&PostParams::default(), &map).await.expect("created");
    // Its name from the environment (fieldRef), not --name; a low port by NET_BIND_SERVICE
    // alone (the image's file capability); an exec readiness probe.
    let pods = create(
        &lab,
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "securityContext": {"runAsUser": 1234, "runAsGroup": 2345, "supplementalGroups": [3456]},
                "volumes": [{"name": "files", "configMap": {"name": "files", "items": [{"key": "k", "path": "deep/k.txt", "mode": 0o400}]}}],
                "containers": [{
                    "name": "probe", "image": IMAGE,
                    "args": ["serve", "--tcp", "80"],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                    "volumeMounts": [{"name": "files", "mountPath": "/files"}],
                    "readinessProbe": {"exec": {"command": ["/netpol-probe", "connect", "127.0.0.1:80", "--expect-name", "a/web"]}, "periodSeconds": 1},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                         "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
                }],
            },
        }),
    )
    .await;
    wait_for(&pods, "web", "became Ready through its exec probe", ready).await;
    let (status, mounts) = process_of(&lab, "web");
    let ids =
        |k: &str| status.get(k).map(|v| v.split_whitespace().take(1).collect::<String>()).unwrap_or_default();
    assert_eq!((ids("Uid"), ids("Gid")), ("1234".to_string(), "2345".to_string()));
    assert_eq!(status.get("Groups").map(String::as_str), Some("3456"));
    // CAP_NET_BIND_SERVICE (bit 10) alone, effective because serve raised it; none ambient.
    assert_eq!(status.get("CapBnd").map(String::as_str), Some("0000000000000400"));
    assert_eq!(status.get("CapEff").map(String::as_str), Some("0000000000000400"));
    assert_eq!(status.get("CapAmb").map(String::as_str), Some("0000000000000000"));
    assert_eq!(status.get("NoNewPrivs").map(String::as_str), Some("1"));
    assert_eq!(read_only(&mounts, "/"), Some(true), "{mounts}");
    assert_eq!(read_only(&mounts, "/files"), Some(true), "configMaps are read-only: {mounts}");
    assert_eq!(read_only(&mounts, "/dev/termination-log"), Some(false), "{mounts}");
    assert!(
        read_only(&mounts, "/etc/resolv.conf").is_some()
            && read_only(&mounts, "/usr/lib").is_none_or(|ro| ro),
        "{mounts}"
    );
    // The item at its path, with its mode.
    let pod = serde_json::to_value(pods.get("web").await.expect("the pod")).expect("JSON");
    let uid = pod["metadata"]["uid"].as_str().expect("a uid");
    let item = netpol_verify::lab::state::lab_dir(&lab.name)
        .join(format!("pods/{uid}/volumes/configmap/files/deep/k.txt"));
    assert_eq!(std::fs::read_to_string(&item).expect("the item"), "v");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&item).expect("metadata").permissions().mode() & 0o777, 0o400);
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    assert_eq!(pod["status"]["podIP"].as_str().map(|ip| ip.starts_with("10.244.")), Some(true));
}

#[tokio::test]
async fn exits_restarts_and_termination_messages_are_the_kubelets() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let failing = |name: &str, restart: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "containers": [{
                "name": "probe", "image": IMAGE, "args": ["batch", "--plan", "/nowhere/plan.json"],
                "terminationMessagePolicy": "FallbackToLogsOnError"}]},
        })
    };
    // Never: the pod fails, with the probe's own words as its termination message.
    let pods = create(&lab, failing("once", "Never")).await;
    let pod = wait_for(&pods, "once", "failed", |p| p["status"]["phase"] == "Failed").await;
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((terminated["exitCode"].as_i64(), terminated["reason"].as_str()), (Some(2), Some("Error")));
    assert!(
        terminated["message"].as_str().is_some_and(|m| m.contains("cannot read the plan /nowhere/plan.json")),
        "{terminated}"
    );
    // Always: restarted at once, then backed off.
    let pods = create(&lab, failing("again", "Always")).await;
    let pod = wait_for(&pods, "again", "backed off", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 1, "{status}");
    assert!(
        status["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("back-off 10s restarting failed container=probe pod=again_a(")),
        "{status}"
    );
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 2);
    assert_eq!(pod["status"]["phase"], "Running", "a crashing container of an Always pod");
    // A command the image does not have cannot start.
    let pods = create(
        &lab,
        json!({"metadata": {"name": "shell"}, "spec": {"restartPolicy": "Never",
        "containers": [{"name": "probe", "image": IMAGE, "command": ["sh", "-c", "true"]}]}}),
    )
    .await;
    let pod = wait_for(&pods, "shell", "failed to start", |p| p["status"]["phase"] == "Failed").await;
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (terminated["exitCode"].as_i64(), terminated["reason"].as_str()),
        (Some(128), Some("StartError"))
    );
    assert!(
        terminated["message"]
            .as_str()
            .is_some_and(|m| m.contains("exec: \"sh\": executable file not found in $PATH")),
        "{terminated}"
    );
}

#[tokio::test]
async fn pods_the_kubelet_refuses_or_holds_back_say_why() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    // runAsNonRoot with uid 0.
    let pods = create(
        &lab,
        json!({"metadata": {"name": "root"}, "spec": {"containers": [{"name": "probe", "image": IMAGE,
        "args": ["serve", "--tcp", "8080"], "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]}}),
    )
    .await;
    let pod = wait_for(&pods, "root", "was refused", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.starts_with("container's runAsUser breaks non-root policy (pod: \"root_a("), "{message}");
    // What the lab's kubelet cannot honour is refused, never run another way.
    for (name, spec, field) in [
        ("host", json!({"hostNetwork": true}), "spec.hostNetwork"),
        (
            "init",
            json!({"initContainers": [{"name": "i", "image": IMAGE, "args": ["version"]}]}),
            "spec.initContainers",
        ),
        ("privileged", json!({}), "securityContext.privileged"),
    ] {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "probe", "image": IMAGE, "args": ["serve", "--tcp", "8080"],
            "securityContext": {"privileged": name == "privileged"}}]);
        let pods = create(&lab, json!({"metadata": {"name": name}, "spec": spec})).await;
        let pod = wait_for(&pods, name, "was refused", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
        let message =
            pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("the netpol-verify lab's kubelet does not run") && message.contains(field),
            "{message}"
        );
    }
    // An unsafe sysctl: the pod fails, as a kubelet without --allowed-unsafe-sysctls fails it.
    let pods = create(&lab, json!({"metadata": {"name": "unsafe"}, "spec": {"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]},
        "containers": [{"name": "probe", "image": IMAGE, "args": ["serve", "--tcp", "8080"]}]}}))
    .await;
    let pod = wait_for(&pods, "unsafe", "was rejected", |p| p["status"]["phase"] == "Failed").await;
    assert_eq!(pod["status"]["reason"], "SysctlForbidden");
    assert_eq!(
        pod["status"]["message"],
        "Pod was rejected: forbidden sysctl: \"net.core.somaxconn\" not allowlisted"
    );
    // A readiness gate nothing sets: running, never Ready.
    let pods = create(&lab, json!({"metadata": {"name": "gated"}, "spec": {"readinessGates": [{"conditionType": "example.com/never"}],
        "containers": [{"name": "probe", "image": IMAGE, "args": ["serve", "--tcp", "8080"]}]}}))
    .await;
    let pod = wait_for(&pods, "gated", "ran", |p| p["status"]["phase"] == "Running").await;
    let condition = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (condition["status"].as_str(), condition["reason"].as_str()),
        (Some("False"), Some("ReadinessGatesNotReady")),
        "{condition}"
    );
    // A ConfigMap that is not there yet: the pod waits for it, then runs.
    let pods = create(&lab, json!({"metadata": {"name": "waits"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "plan", "configMap": {"name": "later"}}],
        "containers": [{"name": "probe", "image": IMAGE, "args": ["batch", "--plan", "/plan/plan.json"], "volumeMounts": [{"name": "plan", "mountPath": "/plan"}]}]}}))
    .await;
    let events: Api<Event> = Api::namespaced(lab.client().await, "a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events.list(&Default::default()).await.expect("events").items.iter().any(|e| {
        e.reason.as_deref() == Some("FailedMount") && e.involved_object.name.as_deref() == Some("waits")
    }) {
        assert!(Instant::now() < deadline, "no FailedMount event for a/waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = serde_json::to_value(pods.get("waits").await.expect("the pod")).expect("JSON");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
        "{:#}",
        pod["status"]
    );
    let maps: Api<ConfigMap> = Api::namespaced(lab.client().await, "a");
    let later: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "later"}, "data": {"plan.json": "{\"schema\":1,\"probes\":[]}"}}),
    )
    .expect("map");
    maps.create(&PostParams::default(), &later).await.expect("created");
    wait_for(&pods, "waits", "ran once its ConfigMap came", |p| p["status"]["phase"] == "Succeeded").await;
}
