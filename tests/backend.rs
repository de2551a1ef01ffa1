//! The Kubernetes backend end to end against the lab's API and kubelet (root): what a run does
//! to a cluster — every request, read back from the API's audit log, each one the documented
//! role allows — what it leaves behind (nothing), and how it fails: a quota refusing a pod, an
//! interrupt mid-batch, a pod that never becomes Ready, an image that cannot be pulled, a
//! kubeconfig pointing nowhere, the API killed mid-run, SIGINT and SIGTERM. The probe pods
//! run as written, with real packets; probes go only to addresses inside the lab.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{DownOnDrop, TWO_NAMESPACES, TestLab, unique_name, verify};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ResourceQuota};
use kube::api::{Api, ListParams, PostParams};
use netpol_verify::cluster::Cluster;
use netpol_verify::kubernetes::KubeCluster;
use netpol_verify::lab::cni::CniMode;
use netpol_verify::lab::{Lab, daemon};
use netpol_verify::run::{RunOptions, Scope, progress};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// `VERB resource[/sub] ns/name` of an audit event (`-` for what it lacks).
fn request(event: &Value) -> String {
    let object = &event["objectRef"];
    let resource = match object["subresource"].as_str() {
        Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or("-")),
        None => object["resource"].as_str().unwrap_or("-").to_string(),
    };
    let at =
        format!("{}/{}", object["namespace"].as_str().unwrap_or(""), object["name"].as_str().unwrap_or(""));
    format!("{} {resource} {at}", event["verb"].as_str().unwrap_or("?"))
}

/// Every request of `events` is one docs/rbac.yaml grants: the role is exactly enough.
fn assert_the_documented_role_allows(events: &[Value]) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rbac.yaml"))
        .expect("docs/rbac.yaml");
    let role: Value = serde_saphyr::from_str(&text).expect("docs/rbac.yaml parses");
    let rules = role["rules"].as_array().cloned().unwrap_or_default();
    let has = |rule: &Value, key: &str, want: &str| {
        rule[key].as_array().is_some_and(|v| v.iter().any(|x| x.as_str() == Some(want)))
    };
    for event in events {
        // Discovery (`/apis`, `/api/v1`) is open to every authenticated user.
        let object = &event["objectRef"];
        let Some(resource) = object["resource"].as_str() else { continue };
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let (verb, group) =
            (event["verb"].as_str().unwrap_or_default(), object["apiGroup"].as_str().unwrap_or_default());
        let granted = rules
            .iter()
            .any(|r| has(r, "verbs", verb) && has(r, "apiGroups", group) && has(r, "resources", &resource));
        assert!(
            granted,
            "docs/rbac.yaml does not grant {verb} on {resource} ({group:?}), needed for {}",
            event["requestURI"]
        );
    }
}

/// Options for a matrix-only run with short bounds.
fn matrix_options(run_id: &str) -> RunOptions {
    RunOptions {
        run_id: run_id.into(),
        scenarios: netpol_verify::scenario::resolve(&["matrix".into()]).expect("built in"),
        scope: Scope::default(),
        probe_timeout: Duration::from_millis(500),
        pod_timeout: Duration::from_secs(30),
        sweep_after: Duration::from_secs(3600),
        mimic_workloads: false,
        spread: None,
        control_policies: true,
        control_settle: Duration::from_secs(2),
    }
}

async fn run(cluster: &KubeCluster, options: &RunOptions) -> Result<netpol_verify::run::RunReport, String> {
    netpol_verify::run::run(cluster, options, &progress::Quiet, &CancellationToken::new())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_whole_run_creates_only_labelled_objects_and_leaves_nothing_behind() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let client = lab.client().await;
    // A user's object wearing the common app label: never the tool's to touch.
    let users: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "settings", "labels": {"app.kubernetes.io/name": "netpol-verify"}}}),
    )
    .expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), "a")
        .create(&PostParams::default(), &users)
        .await
        .expect("seeded");
    let before = lab.objects().await;
    let seen = lab.audit().len();
    let report = run(&lab.cluster().await, &matrix_options("t1")).await.expect("the run");
    // 2 clients × 2 servers × (80/TCP, 80/UDP), every one through (no policies here).
    assert_eq!(report.judged.len(), 8);
    let verdicts: BTreeSet<String> = report.judged.iter().map(|j| j.verdict.to_string()).collect();
    assert_eq!(verdicts, BTreeSet::from(["pass".to_string()]), "{:#?}", report.judged);
    assert_eq!(
        lab.objects_once_settled(&before).await,
        before,
        "everything the run created is gone, and nothing else"
    );

    let events: Vec<Value> = lab.audit().split_off(seen);
    assert_the_documented_role_allows(&events);
    // It wrote only its own objects, and deleted only those.
    let writes: Vec<String> = events
        .iter()
        .filter(|e| !["get", "list", "watch"].contains(&e["verb"].as_str().unwrap_or_default()))
        .map(request)
        .collect();
    for write in &writes {
        let own = write.contains("/nv-")
            || write.contains("netpol-verify-t1")
            || [" a/", " b/", " netpol-verify-t1/", "create namespaces /"]
                .iter()
                .any(|end| write.ends_with(end));
        assert!(own, "{write}");
        assert!(!write.contains("settings"), "{write}");
    }
    // Exactly what a careful operator would do, in some order (batches run at once): make its
    // namespace, start the servers and the control pod, run a batch pod per prober with its
    // plan and remove both once read, and remove what remains.
    let mut made = writes.clone();
    made.extend(events.iter().map(request).filter(|r| r.starts_with("get pods/log")));
    made.sort();
    let mut expected =
        vec!["create namespaces /".to_string(), "delete namespaces /netpol-verify-t1".to_string()];
    for (namespace, server, prober) in [
        ("a", "nv-server-t1", "nv-client-t1"),
        ("b", "nv-server-t1", "nv-client-t1"),
        ("netpol-verify-t1", "nv-control-t1", "nv-control-t1-b0"),
    ] {
        expected.extend([
            format!("create pods {namespace}/"),
            format!("delete pods {namespace}/{server}"),
            format!("create configmaps {namespace}/"),
            format!("create pods {namespace}/"),
            format!("get pods/log {namespace}/{prober}"),
            format!("delete pods {namespace}/{prober}"),
            format!("delete configmaps {namespace}/{prober}-plan"),
        ]);
    }
    expected.sort();
    assert_eq!(made, expected);
    // What it read: the cluster (twice), each namespace's LimitRanges, its pods.
    let reads: BTreeSet<String> = events
        .iter()
        .filter(|e| ["get", "list"].contains(&e["verb"].as_str().unwrap_or_default()))
        .map(|e| {
            format!(
                "{} {}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or("(discovery)")
            )
        })
        .collect();
    let expected_reads: BTreeSet<String> = [
        "get (discovery)",
        "get pods",
        "list configmaps",
        "list endpointslices",
        "list limitranges",
        "list namespaces",
        "list networkpolicies",
        "list nodes",
        "list pods",
        "list services",
    ]
    .map(String::from)
    .into();
    assert_eq!(reads, expected_reads);
}

#[tokio::test]
async fn the_canary_polls_from_pods_of_its_own_and_follows_their_logs() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let before = lab.objects().await;
    let seen = lab.audit().len();
    let mut options = matrix_options("t3");
    options.scenarios = netpol_verify::scenario::resolve(&["canary".into()]).expect("built in");
    let report = run(&lab.cluster().await, &options).await.expect("the run");
    let canary = report.canary.as_ref().unwrap_or_else(|| panic!("the canary ran: {:?}", report.incomplete));
    let statuses: BTreeSet<(&str, &str)> = canary.capabilities.iter().map(|c| (c.name, c.status)).collect();
    assert!(statuses.iter().all(|(_, s)| *s == "enforced"), "{:#?}", canary.capabilities);
    assert_eq!(
        canary.pod_start_window,
        Some(Duration::ZERO),
        "the lab's CNI programs a pod before it starts"
    );
    assert!(
        canary.enforce_latency.is_some_and(|l| l < Duration::from_secs(2)),
        "{:?}",
        canary.enforce_latency
    );
    assert_eq!(lab.objects_once_settled(&before).await, before, "everything the canary created is gone");
    let events: Vec<Value> = lab.audit().split_off(seen);
    assert_the_documented_role_allows(&events);
    // Every round came from a poller pod's followed log, never a pod per round: the deny
    // phase's 2 probers, the capabilities' 5, the fresh pod and its control.
    let followed: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["objectRef"]["subresource"] == "log"
                && e["requestURI"].as_str().is_some_and(|u| u.contains("follow=true"))
        })
        .collect();
    assert_eq!(followed.len(), 9, "{followed:#?}");
    assert!(followed.iter().any(|e| e["objectRef"]["name"] == "nv-canary-late-t3-p0"), "{followed:#?}");
    let batches = events
        .iter()
        .filter(|e| {
            e["objectRef"]["subresource"] == "log"
                && e["requestURI"].as_str().is_some_and(|u| !u.contains("follow=true"))
        })
        .count();
    assert_eq!(batches, 0);
    let policies = events
        .iter()
        .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "networkpolicies")
        .count();
    assert_eq!(policies, 7, "the canary's policies");
}

#[tokio::test]
async fn spread_pins_servers_to_one_node_and_probes_from_it_and_another() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 3);
    let mut options = matrix_options("t4");
    options.spread = Some(false);
    let report = run(&lab.cluster().await, &options).await.expect("the run");
    // 2 namespaces × 2 clients (same node, other node) × 2 servers × (80/TCP, 80/UDP).
    assert_eq!(report.judged.len(), 16);
    assert!(report.judged.iter().all(|j| j.verdict.to_string() == "pass"), "{:#?}", report.judged);
    let from = |name: &str| report.judged.iter().filter(|j| j.check.probe.client.name == name).count();
    assert_eq!((from("nv-client-samenode-t4"), from("nv-client-othernode-t4")), (8, 8));
    let (first, second) = (lab.name.clone(), format!("{}-2", lab.name));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.0.contains(&format!("node {first}")) && n.0.contains(&format!("node {second}"))),
        "{:?}",
        report.notes
    );
    // Where the scheduler put each pod in a and b, from its Events (they outlive the pods;
    // those of the tool's own namespace went with it).
    let events = Api::<Event>::all(lab.client().await).list(&ListParams::default()).await.expect("events");
    let mut placed: Vec<(String, String)> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| {
            let message = e.message.clone()?;
            let (pod, node) = message.strip_prefix("Successfully assigned ")?.split_once(" to ")?;
            let name = pod.split_once('/')?.1;
            name.contains("-t4").then(|| (name.to_string(), node.to_string()))
        })
        .collect();
    placed.sort();
    let expected: Vec<(String, String)> = [
        ("nv-client-othernode-t4", &second),
        ("nv-client-othernode-t4", &second),
        ("nv-client-samenode-t4", &first),
        ("nv-client-samenode-t4", &first),
        ("nv-server-t4", &first),
        ("nv-server-t4", &first),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(placed, expected);
}

#[tokio::test]
async fn spread_without_two_nodes_stops_before_creating_anything() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let seen = lab.audit().len();
    let mut options = matrix_options("t5");
    options.spread = Some(false);
    let error = run(&lab.cluster().await, &options).await.err().unwrap_or_default();
    assert!(error.starts_with("--spread needs two nodes"), "{error}");
    let writes = lab.audit().split_off(seen).iter().filter(|e| e["verb"] == "create").count();
    assert_eq!(writes, 0);
}

#[tokio::test]
async fn a_run_that_a_quota_refuses_midway_removes_everything_it_made_and_names_the_refusal() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let quota: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}))
            .expect("quota");
    Api::<ResourceQuota>::namespaced(lab.client().await, "a")
        .create(&PostParams::default(), &quota)
        .await
        .expect("quota");
    let before = lab.objects().await;
    let error = run(&lab.cluster().await, &matrix_options("t6")).await.err().unwrap_or_default();
    assert!(
        error.contains("creating pod a/nv-server-t6")
            && error.contains("exceeded quota: no-pods")
            && error.contains("refused by admission"),
        "{error}"
    );
    assert_eq!(lab.objects_once_settled(&before).await, before, "what it made before the refusal is gone");
    let deleted: Vec<String> = lab.audit().iter().filter(|e| e["verb"] == "delete").map(request).collect();
    for gone in ["delete namespaces /netpol-verify-t6", "delete pods netpol-verify-t6/nv-control-t6"] {
        assert!(deleted.iter().any(|d| d == gone), "{gone}: {deleted:#?}");
    }
}

#[tokio::test]
async fn a_run_interrupted_mid_batch_removes_everything_it_made() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let before = lab.objects().await;
    let cancel = CancellationToken::new();
    // A user's Ctrl-C the moment the first batch pod exists.
    let watcher = {
        let (client, cancel) = (lab.client().await, cancel.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client);
            let params = ListParams::default().labels("netpol-verify.io/role=client");
            loop {
                if pods.list(&params).await.is_ok_and(|l| !l.items.is_empty()) {
                    cancel.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let error =
        netpol_verify::run::run(&lab.cluster().await, &matrix_options("t2"), &progress::Quiet, &cancel)
            .await
            .err()
            .map(|e| e.to_string());
    watcher.abort();
    assert!(error.as_deref().is_some_and(|e| e.starts_with("interrupted; removed ")), "{error:?}");
    // Pods deleted mid-run go in their grace period, and the node tears down sandboxes after
    // their objects go: wait for the kubelet, within a bound.
    let sandboxes = || Lab::open(&lab.name).map(|l| l.state.pods.len()).unwrap_or_default();
    assert_eq!(lab.objects_once_settled(&before).await, before, "left behind");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandboxes() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sandboxes(), 1, "only the lab's DNS pod has a sandbox");
}

#[tokio::test]
async fn a_pod_that_never_becomes_ready_fails_the_wait_within_its_bound() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    // A probe server whose readiness probe asks a port nothing serves.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nv-stuck", "labels": {"app.kubernetes.io/name": "netpol-verify", "netpol-verify.io/run": "t7"}},
        "spec": {"containers": [{"name": "probe", "image": "ghcr.io/netpol-verify/netpol-probe:0.1.0",
                  "args": ["serve", "--name", "a/nv-stuck", "--tcp", "8080"],
                  "readinessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 1}}]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(lab.client().await, "a")
        .create(&PostParams::default(), &pod)
        .await
        .expect("created");
    let started = Instant::now();
    let key = netpol_verify::model::ObjectKey::new("a", "nv-stuck");
    let error = lab
        .cluster()
        .await
        .wait_running(&[key], Duration::from_secs(4))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(started.elapsed() < Duration::from_secs(8), "bounded: {:?}", started.elapsed());
    assert!(
        error.contains("pod a/nv-stuck runs but is not Ready")
            && error.contains("kubectl describe pod -n a nv-stuck"),
        "{error}"
    );
    assert!(error.contains("did not happen within 4s"), "{error}");
}

/// `netpol-verify ARGS` with the lab's objects, in a directory of its own.
fn verify_command(args: &[&str]) -> Command {
    let mut command = Command::new(verify());
    command.args(args).stdin(Stdio::null());
    command
}

fn lab_pods_of_the_tool(lab: &TestLab) -> Vec<String> {
    let state = Lab::open(&lab.name).map(|l| l.state.pods).unwrap_or_default();
    state.iter().filter(|p| p.key.name.starts_with("nv-")).map(|p| p.key.to_string()).collect()
}

#[test]
fn a_probe_image_that_cannot_be_pulled_is_named_with_the_fix_and_nothing_is_left() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    let output = verify_command(&[
        "run",
        "--lab",
        &lab.name,
        "-s",
        "matrix",
        "--image",
        "docker.io/library/nginx:1.27",
        "--timeout",
        "10s",
        "-q",
    ])
    .output()
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ImagePullBackOff")
            && stderr.contains("\"docker.io/library/nginx:1.27\"")
            && stderr.contains("pass --image"),
        "{stderr}"
    );
    assert!(lab_pods_of_the_tool(&lab).is_empty(), "left: {:?}", lab_pods_of_the_tool(&lab));
}

/// One `lab run` at a time among the tests that kill one: each `lab run` first removes labs
/// whose owner is gone, so a concurrent one could remove the killed run's lab before the test
/// looks at it.
static LAB_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab_run() -> std::sync::MutexGuard<'static, ()> {
    LAB_RUNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn servers_listen_on_low_ports_through_the_sysctl_or_the_capability() {
    let _one = one_lab_run();
    let objects = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/examples/shop.yaml");
    for way in ["sysctl", "capability"] {
        let output = verify_command(&["lab", "run", "-f"])
            .arg(&objects)
            .args([
                "--name",
                &unique_name(),
                "-s",
                "matrix",
                "--low-ports",
                way,
                "--output",
                "json",
                "--probe-timeout",
                "500ms",
                "-q",
            ])
            .output()
            .expect("runs");
        let json: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{way}: not JSON ({e}): {}", String::from_utf8_lossy(&output.stderr)));
        // The matrix probes 80/TCP and 80/UDP: every server listened below 1024.
        let checks = json["checks"].as_array().cloned().unwrap_or_default();
        assert!(!checks.is_empty(), "{way}: {json:#}");
        let failed: Vec<&Value> = checks
            .iter()
            .filter(|c| !["pass", "inconclusive"].contains(&c["verdict"].as_str().unwrap_or_default()))
            .collect();
        assert!(failed.is_empty(), "{way}: {failed:#?}");
        let reached = checks.iter().filter(|c| c["observed"] == "allow").count();
        assert!(reached > 0, "{way}: a server answered on port 80: {json:#}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("permission denied"), "{way}");
    }
}

#[test]
fn a_kubeconfig_pointing_nowhere_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    // NB: port 1 on loopback: refused at once, and never anyone else's server.
    std::fs::write(
        &kubeconfig,
        netpol_verify::lab::api::kubeconfig("nowhere", "https://127.0.0.1:1", "", "t"),
    )
    .expect("write");
    let output =
        verify_command(&["run", "-s", "matrix", "--kubeconfig"]).arg(&kubeconfig).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("discovering the cluster: list namespaces")
            && stderr.contains("is the API server reachable"),
        "{stderr}"
    );
}

/// Waits until the lab's API has created a pod after its `seen`th request (a run is under way).
fn wait_for_probe_pods(lab: &TestLab, seen: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab
        .audit()
        .split_off(seen.min(lab.audit().len()))
        .iter()
        .any(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "pods")
    {
        assert!(Instant::now() < deadline, "the run never created a pod");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_run_removes_everything_it_made() {
    let lab = TestLab::up(TWO_NAMESPACES, CniMode::Enforcing, 1);
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let seen = lab.audit().len();
        let child = verify_command(&["run", "--lab", &lab.name, "-s", "matrix", "-q"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs");
        wait_for_probe_pods(&lab, seen);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("signalled");
        let output = child.wait_with_output().expect("exits");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted; removed"), "{signal}: {stderr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lab_pods_of_the_tool(&lab).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(lab_pods_of_the_tool(&lab).is_empty(), "{signal}: left {:?}", lab_pods_of_the_tool(&lab));
        // The API holds nothing of the tool's either.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let left = runtime.block_on(async {
            let pods: Api<Pod> = Api::all(lab.client().await);
            pods.list(&ListParams::default().labels("app.kubernetes.io/name=netpol-verify"))
                .await
                .expect("listed")
                .items
                .len()
        });
        assert_eq!(left, 0, "{signal}");
    }
}

/// Network namespaces and processes of lab `name`.
fn lab_traces(name: &str) -> Vec<String> {
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip runs");
    let mut traces: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| netpol_verify::lab::state::lab_of_netns(n) == Some(name))
        .map(String::from)
        .collect();
    let processes = netpol_verify::lab::host::lab_processes(name, &traces);
    traces.extend(processes.iter().map(|p| format!("process {p}")));
    traces
}

#[test]
fn lab_run_interrupted_or_with_its_api_killed_leaves_nothing() {
    let _one = one_lab_run();
    let objects = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/examples/shop.yaml");
    for kill_the_api in [false, true] {
        let name = unique_name();
        let _guard = DownOnDrop(name.clone());
        let child = verify_command(&["lab", "run", "-f"])
            .arg(&objects)
            // Bounded waits: a dead API server is asked again until the bound.
            .args(["--name", &name, "-s", "matrix", "-q", "--timeout", "10s"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs");
        let audit = daemon::audit_log_path(&name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&audit)
            .is_ok_and(|t| t.contains("\"verb\":\"create\"") && t.contains("\"resource\":\"pods\""))
        {
            assert!(Instant::now() < deadline, "the run never created a pod");
            std::thread::sleep(Duration::from_millis(20));
        }
        if kill_the_api {
            let pid: i32 = std::fs::read_to_string(daemon::pid_path(&name))
                .expect("the API's pid")
                .trim()
                .parse()
                .expect("a pid");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                .expect("killed");
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .expect("signalled");
        }
        let output = child.wait_with_output().expect("exits");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        if kill_the_api {
            assert!(stderr.contains("is the API server reachable"), "{stderr}");
        } else {
            assert!(stderr.contains("interrupted; removed"), "{stderr}");
        }
        assert!(lab_traces(&name).is_empty(), "left: {:?}", lab_traces(&name));
        assert!(!netpol_verify::lab::state::lab_dir(&name).exists(), "the lab's record is gone");
    }
}

/// `kill -9` of `lab run` leaves its whole lab (nothing of the run gets to clean up); the next
/// `lab run` sees the lab's owner is gone, removes it, and says so.
#[test]
fn a_lab_run_killed_with_sigkill_is_removed_by_the_next_lab_run() {
    let _one = one_lab_run();
    let objects = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/examples/shop.yaml");
    let (dead, next) = (unique_name(), unique_name());
    let _guards = (DownOnDrop(dead.clone()), DownOnDrop(next.clone()));
    let mut child = verify_command(&["lab", "run", "-f"])
        .arg(&objects)
        .args(["--name", &dead, "-s", "matrix", "-q"])
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    let audit = daemon::audit_log_path(&dead);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&audit)
        .is_ok_and(|t| t.contains("\"verb\":\"create\"") && t.contains("\"resource\":\"pods\""))
    {
        assert!(Instant::now() < deadline, "the run never created a pod");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let left = lab_traces(&dead);
    assert!(
        left.len() > 5 && left.iter().any(|t| t.starts_with("process")),
        "a killed run leaves its lab: {left:?}"
    );

    let output = verify_command(&["lab", "run", "-f"])
        .arg(&objects)
        .args(["--name", &next, "-s", "dns"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(matches!(output.status.code(), Some(0 | 1 | 3)), "the run was made: {stderr}");
    assert!(stderr.contains(&format!("removed abandoned lab {dead} (")), "{stderr}");
    assert!(stderr.contains("the process it was for (pid "), "{stderr}");
    assert_eq!(lab_traces(&dead), Vec::<String>::new(), "nothing of the dead run is left");
    assert!(!netpol_verify::lab::state::lab_dir(&dead).exists(), "nor its record");
}
