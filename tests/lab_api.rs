//! The lab as a Kubernetes cluster (root): kubectl against its API — `get pods -A`, `logs`,
//! `describe`, `apply -f` of a NetworkPolicy that changes what a probe pod sees, `delete` —
//! and every Pod `run --dry-run` prints, executed by the lab's kubelet as written.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use netpol_probe::wire::{Plan, ProbeKind, ProbeSpec};
use netpol_verify::cluster::{ProbePod, Role};
use netpol_verify::lab::cni::CniMode;
use netpol_verify::manifest::{Manifest, PodOptions, Work, plan_config_map, probe_pod, to_yaml};
use netpol_verify::model::ObjectKey;
use serde_json::Value;

mod support;
use support::{TestLab, verify};

/// x/a and y/b, each serving 80/TCP.
const TWO_PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {app: b}}
spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.2.1}
";

/// `kubectl ARGS` against the lab, with a home of its own (kubectl caches discovery there).
fn kubectl(lab: &TestLab, home: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &lab.kubeconfig)
        .env("HOME", home)
        .output()
        .expect("kubectl runs")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A batch pod in x probing y/b on 80/TCP, as the pod builder makes it, with its plan.
fn batch_pod(name: &str) -> String {
    let pod = ProbePod {
        key: ObjectKey::new("x", name),
        role: Role::Client,
        run_id: "smoke".into(),
        labels: Default::default(),
        ports: vec![],
        node: None,
    };
    let plan = Plan {
        schema: 1,
        probes: vec![ProbeSpec {
            id: "to-b".into(),
            kind: ProbeKind::Connect,
            target: "10.244.2.1".into(),
            port: 80,
            protocol: None,
            timeout_ms: 1000,
            expect_name: Some("y/b".into()),
            query: None,
        }],
    };
    let text = serde_json::to_string(&plan).expect("plan");
    to_yaml(&[
        Manifest::new("its plan", &plan_config_map(&pod, &text)),
        Manifest::new(
            "the batch",
            &probe_pod(&pod, &PodOptions::default(), Work::Batch { probes: 1 }, false),
        ),
    ])
}

/// Waits until `kubectl get pod` shows phase `phase` for x/NAME.
fn wait_phase(lab: &TestLab, home: &Path, name: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown =
            stdout(&kubectl(lab, home, &["get", "pod", "-n", "x", name, "-o", "jsonpath={.status.phase}"]));
        if shown == phase {
            return;
        }
        assert!(Instant::now() < deadline, "pod x/{name} is {shown}, not {phase}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kubectl_lists_logs_and_applies_a_policy_that_changes_what_a_probe_sees() {
    let lab = TestLab::up(TWO_PODS, CniMode::Enforcing, 1);
    let home = tempfile::tempdir().expect("a home");
    let listed = stdout(&kubectl(&lab, home.path(), &["get", "pods", "-A", "-o", "wide"]));
    let header = listed.lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>();
    assert_eq!(header[..6], ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{listed}");
    let row = |ns: &str, name: &str| {
        listed.lines().find(|l| l.split_whitespace().take(2).eq([ns, name])).map(str::to_string)
    };
    let a = row("x", "a").unwrap_or_else(|| panic!("{listed}"));
    assert!(
        a.contains("1/1") && a.contains("Running") && a.contains("10.244.1.1") && a.contains(&lab.name),
        "{a}"
    );
    assert!(row("kube-system", "coredns").is_some(), "{listed}");
    let nodes = stdout(&kubectl(&lab, home.path(), &["get", "nodes"]));
    assert!(nodes.contains(&lab.name) && nodes.contains("Ready"), "{nodes}");

    // A probe pod applied with kubectl runs its plan; its log is the result.
    let dir = tempfile::tempdir().expect("a directory");
    let first = dir.path().join("first.yaml");
    std::fs::write(&first, batch_pod("probe-1")).expect("write");
    stdout(&kubectl(&lab, home.path(), &["apply", "-f", first.to_str().expect("a path")]));
    wait_phase(&lab, home.path(), "probe-1", "Succeeded");
    let log = stdout(&kubectl(&lab, home.path(), &["logs", "-n", "x", "probe-1"]));
    assert!(log.contains("\"outcome\":\"connected\"") && log.contains("\"name\":\"y/b\""), "{log}");

    // A NetworkPolicy applied with kubectl is enforced: the same probe now times out.
    let policy = dir.path().join("deny.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: \"y\"}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    )
    .expect("write");
    let applied = kubectl(&lab, home.path(), &["apply", "-f", policy.to_str().expect("a path")]);
    assert!(stdout(&applied).contains("networkpolicy.networking.k8s.io/deny-all created"));
    assert!(
        String::from_utf8_lossy(&applied.stderr).trim().is_empty(),
        "no warnings: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let second = dir.path().join("second.yaml");
    std::fs::write(&second, batch_pod("probe-2")).expect("write");
    stdout(&kubectl(&lab, home.path(), &["apply", "-f", second.to_str().expect("a path")]));
    wait_phase(&lab, home.path(), "probe-2", "Succeeded");
    let log = stdout(&kubectl(&lab, home.path(), &["logs", "-n", "x", "probe-2"]));
    assert!(log.contains("\"outcome\":\"timeout\""), "{log}");
    // Applied again, changed: a patch of the stored policy (the probe is through again).
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: \"y\"}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{}]\n",
    )
    .expect("write");
    let patched = stdout(&kubectl(&lab, home.path(), &["apply", "-f", policy.to_str().expect("a path")]));
    assert!(patched.contains("networkpolicy.networking.k8s.io/deny-all configured"), "{patched}");
    std::fs::write(&second, batch_pod("probe-3")).expect("write");
    stdout(&kubectl(&lab, home.path(), &["apply", "-f", second.to_str().expect("a path")]));
    wait_phase(&lab, home.path(), "probe-3", "Succeeded");
    let log = stdout(&kubectl(&lab, home.path(), &["logs", "-n", "x", "probe-3"]));
    assert!(log.contains("\"outcome\":\"connected\""), "{log}");

    let described = stdout(&kubectl(&lab, home.path(), &["describe", "pod", "-n", "x", "probe-1"]));
    assert!(described.contains("Started container probe") && described.contains("Completed"), "{described}");
    let deleted =
        stdout(&kubectl(&lab, home.path(), &["delete", "pod", "-n", "x", "probe-1", "probe-2", "probe-3"]));
    assert!(deleted.contains("pod \"probe-1\" deleted"), "{deleted}");
    let gone = kubectl(&lab, home.path(), &["get", "pod", "-n", "x", "probe-1"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("pods \"probe-1\" not found"));
}

/// What a dry run's pod is for, from its container's arguments.
fn work(pod: &Pod) -> &'static str {
    let args = pod.spec.as_ref().and_then(|s| s.containers[0].args.clone()).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("serve") => "serve",
        Some("batch") if args.iter().any(|a| a == "--every") => "poll",
        Some("batch") => "batch",
        _ => "other",
    }
}

#[test]
fn every_pod_a_dry_run_prints_runs_on_the_labs_kubelet_as_written() {
    let shop = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/examples/shop.yaml"))
        .expect("the example");
    let lab = TestLab::up(&shop, CniMode::Enforcing, 1);
    let printed = Command::new(verify())
        .args(["run", "--lab", &lab.name, "--dry-run", "--mimic-workloads"])
        .output()
        .expect("runs");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("run.yaml");
    std::fs::write(&file, &printed.stdout).expect("write");
    let home = tempfile::tempdir().expect("a home");
    stdout(&kubectl(&lab, home.path(), &["create", "-f", file.to_str().expect("a path")]));
    let run = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("netpol-verify.io/run: ").map(str::to_string))
        .expect("a run id");

    // Servers Ready (doubles of workloads Running, never Ready), batches Succeeded with a
    // summary, pollers Running with rounds: each as its kubelet ran it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (pods, problems) = runtime.block_on(async {
        let pods: Api<Pod> = Api::all(lab.client().await);
        let params = ListParams::default().labels(&format!("netpol-verify.io/run={run}"));
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let listed = pods.list(&params).await.expect("listed").items;
            let problems: Vec<String> = listed
                .iter()
                .filter_map(|pod| {
                    let status = pod.status.clone().unwrap_or_default();
                    let ready =
                        status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
                    let phase = status.phase.clone().unwrap_or_default();
                    let gated = pod.spec.as_ref().is_some_and(|s| s.readiness_gates.is_some());
                    let restarts: i32 =
                        status.container_statuses.iter().flatten().map(|c| c.restart_count).sum();
                    let ok = restarts == 0
                        && match work(pod) {
                            "serve" if gated => phase == "Running" && !ready,
                            "serve" => phase == "Running" && ready,
                            "batch" => phase == "Succeeded",
                            "poll" => phase == "Running",
                            _ => false,
                        };
                    (!ok).then(|| {
                        format!(
                            "{}: {} {phase} ready={ready} restarts={restarts}",
                            pod.metadata.name.clone().unwrap_or_default(),
                            work(pod)
                        )
                    })
                })
                .collect();
            if problems.is_empty() || Instant::now() > deadline {
                return (listed, problems);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(problems.is_empty(), "{problems:#?}");
    let kinds: std::collections::BTreeMap<&str, usize> = pods.iter().fold(Default::default(), |mut m, p| {
        *m.entry(work(p)).or_default() += 1;
        m
    });
    assert!(
        kinds.get("serve").is_some_and(|n| *n >= 3)
            && kinds.get("batch").is_some_and(|n| *n >= 3)
            && kinds.contains_key("poll"),
        "{kinds:?}"
    );
    for pod in pods.iter().filter(|p| work(p) != "serve") {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let log = stdout(&kubectl(&lab, home.path(), &["logs", "-n", &namespace, &name]));
        let line: Value = serde_json::from_str(log.lines().next().unwrap_or("null")).unwrap_or(Value::Null);
        let parsed =
            if work(pod) == "poll" { line["round"].is_u64() } else { line["summary"]["schema"] == 1 };
        assert!(parsed, "{namespace}/{name}: {log}");
    }
    // And the tool's cleanup removes what the dry run described.
    let cleaned = Command::new(verify())
        .args(["cleanup", "--run", &run, "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .output()
        .expect("runs");
    assert!(cleaned.status.success(), "{}", String::from_utf8_lossy(&cleaned.stderr));
    assert!(
        String::from_utf8_lossy(&cleaned.stdout).starts_with("removed "),
        "{}",
        String::from_utf8_lossy(&cleaned.stdout)
    );
}

#[test]
fn lab_up_writes_a_private_kubeconfig_lab_env_names_it_and_lab_down_removes_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a directory");
    let objects = dir.path().join("objects.yaml");
    std::fs::write(&objects, TWO_PODS).expect("write");
    let name = support::unique_name();
    let up = Command::new(verify())
        .args(["lab", "up", "-f"])
        .arg(&objects)
        .args(["--name", &name])
        .output()
        .expect("runs");
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let lab = TestLab { name: name.clone(), kubeconfig: netpol_verify::lab::daemon::kubeconfig_path(&name) };
    let printed = String::from_utf8_lossy(&up.stdout);
    let export = format!("export KUBECONFIG={}", lab.kubeconfig.display());
    assert!(printed.contains(&export), "{printed}");
    let mode = std::fs::metadata(&lab.kubeconfig).expect("the kubeconfig").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds the token");
    let text = std::fs::read_to_string(&lab.kubeconfig).expect("readable");
    assert!(
        text.contains("server: https://127.0.0.1:") && text.contains("certificate-authority-data:"),
        "{text}"
    );
    let env = Command::new(verify()).args(["lab", "env", &name]).output().expect("runs");
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), export);
    let down = Command::new(verify()).args(["lab", "down", &name]).output().expect("runs");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!lab.kubeconfig.exists(), "lab down removes the kubeconfig");
    let env = Command::new(verify()).args(["lab", "env", &name]).output().expect("runs");
    assert_eq!(env.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&env.stderr).contains(&format!("no lab named {name}")),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
}
