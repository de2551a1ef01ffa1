//! `netpol-verify lab run` end to end (root): a lab per test, real packets, and the exact
//! verdicts every CNI mode must produce, read back from the JSON and JUnit reports. Probes go
//! only to addresses inside the lab.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use netpol_verify::lab::Lab;
use serde_json::Value;

mod support;

/// Which API the lab's cluster lives in.
#[derive(Debug, Clone, Copy)]
enum Server {
    /// The lab's own (`lab run`).
    Lab,
    /// A real kube-apiserver (tests/support/apiserver.rs), the lab attached as its node
    /// (`lab run --api-server`).
    Real,
}

/// A test of a CNI mode, run twice: with the lab's own API and with a real kube-apiserver
/// the lab is attached to.
macro_rules! on_both_apis {
    ($test:ident) => {
        mod $test {
            #[test]
            fn lab_api() {
                super::$test(super::Server::Lab)
            }
            #[test]
            fn real_apiserver() {
                super::$test(super::Server::Real)
            }
        }
    };
}

/// One lab at a time on the real API server: they would publish the same namespaces.
static REAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// x admits only its own namespace; y may reach only x, y and DNS; z has no policy.
fn cluster() -> String {
    format!(
        "{}{}{}",
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Namespace
metadata: {name: z}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec:
  containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.10}
---
"#,
        netpol_verify::fixtures::cluster_dns_yaml("10.244.0.10"),
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: limited-egress, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [x, y]}]}}]
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#
    )
}

fn verify() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netpol-verify"))
}

fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("r{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Run {
    output: Output,
    json: Value,
    dir: tempfile::TempDir,
}

impl Run {
    fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    fn checks(&self) -> Vec<&Value> {
        self.json["checks"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// `verdict from→to port/protocol` of every check whose verdict is `verdict`.
    fn with_verdict(&self, verdict: &str) -> BTreeSet<String> {
        self.checks().into_iter().filter(|c| c["verdict"] == verdict).map(cell).collect()
    }

    fn count(&self, verdict: &str) -> u64 {
        self.json["counts"][verdict].as_u64().unwrap_or(u64::MAX)
    }
}

/// `group from-namespace→to port/protocol`.
fn cell(check: &Value) -> String {
    format!(
        "{} {}→{} {}/{}",
        check["group"].as_str().unwrap_or("?"),
        check["from_namespace"].as_str().unwrap_or("?"),
        check["to_namespace"].as_str().unwrap_or(check["to"].as_str().unwrap_or("?")),
        check["port"],
        check["protocol"].as_str().unwrap_or("?")
    )
}

/// `lab run` on the test cluster with `args`; the JSON report, and a check that the lab and
/// everything the run made are gone.
fn lab_run(cni: &str, args: &[&str]) -> Run {
    lab_run_on(Server::Lab, &cluster(), cni, args)
}

fn lab_run_with(server: Server, cni: &str, args: &[&str]) -> Run {
    lab_run_on(server, &cluster(), cni, args)
}

/// On the real server, the lab skips `default` (which the lab's own API does not have), so
/// both runs probe the same namespaces; afterwards the server holds nothing of the lab.
fn lab_run_on(server: Server, objects: &str, cni: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, objects).expect("write the cluster");
    let name = unique_name();
    let mut command = Command::new(verify());
    command
        .args(["lab", "run", "--from-file"])
        .arg(&cluster)
        .args(["--name", &name, "--cni", cni, "--output", "json", "--probe-timeout", "500ms"])
        .args(args)
        .current_dir(dir.path());
    let (_one, plane) = match server {
        Server::Lab => (None, None),
        Server::Real => {
            let one = REAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let plane = support::apiserver::control_plane();
            command.arg("--api-server").arg(&plane.admin).args(["--exclude-namespace", "default"]);
            (Some(one), Some(plane))
        }
    };
    let output = command.output().expect("netpol-verify runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(Lab::list().iter().all(|l| l.name != name), "lab {name} was left behind; stderr: {stderr}");
    if let Some(plane) = plane {
        assert_eq!(
            plane.left_behind_once_settled(|_| true),
            Vec::<String>::new(),
            "the lab left these in the API server; stderr: {stderr}"
        );
    }
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}); exit {:?}, stderr: {stderr}", output.status.code()));
    Run { output, json, dir }
}

const SCENARIOS: [&str; 6] = ["-s", "matrix", "-s", "dns", "-s", "metadata"];

/// The verdicts every mode must give: each check's expected verdict from the engine's answer
/// per direction and what the mode enforces.
fn expected_not_enforced(run: &Run, enforced: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    run.checks().into_iter().filter(|c| c["policy"] == "deny" && !enforced(c)).map(cell).collect()
}

const METADATA_GAPS: [&str; 2] =
    ["metadata-ipv4 x→169.254.169.254 80/TCP", "metadata-ipv4 z→169.254.169.254 80/TCP"];

fn assert_common(run: &Run) {
    assert_eq!(run.count("over-blocked"), 0, "{:#?}", run.with_verdict("over-blocked"));
    assert_eq!(run.count("inconclusive"), 0, "{:#?}", run.with_verdict("inconclusive"));
    assert_eq!(run.with_verdict("intent-gap"), METADATA_GAPS.iter().map(|s| s.to_string()).collect());
    // 3 servers and the control pod, and the tool's namespace: each client is a pod per batch
    // that goes when its batch is read, as on any cluster.
    assert_eq!(run.json["run"]["cleaned"]["pods"], 4, "{}", run.json["run"]);
    assert_eq!(run.json["run"]["cleaned"]["namespaces"], 1);
}

on_both_apis!(enforcing_passes_everything_but_the_metadata_the_policies_allow);
fn enforcing_passes_everything_but_the_metadata_the_policies_allow(server: Server) {
    let run = lab_run_with(server, "enforcing", &SCENARIOS);
    assert_common(&run);
    assert_eq!(run.count("not-enforced"), 0, "{:#?}", run.with_verdict("not-enforced"));
    // 18 matrix + 12 DNS + 3 metadata checks.
    assert_eq!(run.checks().len(), 33);
    assert_eq!(run.count("pass"), 31);
    assert_eq!(run.code(), 1, "intent gaps fail the run");
    let denied = run.checks().into_iter().filter(|c| c["policy"] == "deny").count();
    assert_eq!(denied, 7, "y→x, y→z, z→x on TCP and UDP, y→metadata");
    assert_eq!(run.json["cluster"]["cni"], serde_json::json!(["the lab's emulated CNI, mode enforcing"]));
    assert_eq!(run.json["cluster"]["enforcement"], "expected");
    assert!(run.checks().into_iter().filter(|c| c["policy"] == "deny").all(|c| c["denied_by"] == "dropped"));
}

on_both_apis!(none_leaves_every_denial_unenforced_and_nothing_over_blocked);
fn none_leaves_every_denial_unenforced_and_nothing_over_blocked(server: Server) {
    let junit = "report.xml";
    let run = lab_run_with(
        server,
        "none",
        &[&SCENARIOS[..], &["--junit-file", junit, "--markdown-file", "summary.md"]].concat(),
    );
    assert_common(&run);
    assert_eq!(run.with_verdict("not-enforced"), expected_not_enforced(&run, |_| false));
    assert_eq!(run.count("not-enforced"), 7);
    assert_eq!(run.code(), 1);

    // The JUnit report says the same as the JSON.
    let xml = std::fs::read_to_string(run.dir.path().join(junit)).expect("the JUnit file");
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let suites: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert_eq!(suites, ["matrix", "dns", "metadata"]);
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), run.checks().len());
    let failures = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).count() as u64;
    let skipped = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("skipped"))).count() as u64;
    assert_eq!(failures, run.count("not-enforced") + run.count("over-blocked") + run.count("intent-gap"));
    assert_eq!(skipped, run.count("inconclusive"));
    let failure = doc.descendants().find(|n| n.has_tag_name("failure")).expect("a failure");
    assert!(failure.attribute("message").is_some_and(|m| !m.is_empty()));

    let markdown = std::fs::read_to_string(run.dir.path().join("summary.md")).expect("the Markdown file");
    assert!(
        markdown.contains("## netpol-verify: ❌ findings") && markdown.contains("| not-enforced | 7 |"),
        "{markdown}"
    );
}

on_both_apis!(ingress_only_leaves_exactly_the_egress_denials_unenforced);
fn ingress_only_leaves_exactly_the_egress_denials_unenforced(server: Server) {
    let run = lab_run_with(server, "ingress-only", &SCENARIOS);
    assert_common(&run);
    let expected = expected_not_enforced(&run, |c| c["ingress"] == "deny");
    assert_eq!(
        expected,
        ["pod-to-pod y→z 80/TCP", "pod-to-pod y→z 80/UDP", "metadata-ipv4 y→169.254.169.254 80/TCP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(run.with_verdict("not-enforced"), expected);
}

on_both_apis!(egress_only_leaves_exactly_the_ingress_denials_unenforced);
fn egress_only_leaves_exactly_the_ingress_denials_unenforced(server: Server) {
    let run = lab_run_with(server, "egress-only", &SCENARIOS);
    assert_common(&run);
    let expected = expected_not_enforced(&run, |c| c["egress"] == "deny");
    assert_eq!(expected.len(), 4, "y→x and z→x, TCP and UDP: {expected:#?}");
    assert_eq!(run.with_verdict("not-enforced"), expected);
}

on_both_apis!(tcp_only_leaves_exactly_the_udp_denials_unenforced);
fn tcp_only_leaves_exactly_the_udp_denials_unenforced(server: Server) {
    let run = lab_run_with(server, "tcp-only", &SCENARIOS);
    assert_common(&run);
    let expected = expected_not_enforced(&run, |c| c["protocol"] == "TCP");
    assert_eq!(expected.len(), 3, "y→x, y→z, z→x on UDP: {expected:#?}");
    assert_eq!(run.with_verdict("not-enforced"), expected);
}

on_both_apis!(reject_passes_with_every_denial_rejected);
fn reject_passes_with_every_denial_rejected(server: Server) {
    let run = lab_run_with(server, "reject", &SCENARIOS);
    assert_common(&run);
    assert_eq!(run.count("not-enforced"), 0);
    let denied: Vec<&Value> = run.checks().into_iter().filter(|c| c["policy"] == "deny").collect();
    assert_eq!(denied.len(), 7);
    for check in denied {
        assert_eq!(
            (&check["verdict"], &check["denied_by"]),
            (&Value::from("pass"), &Value::from("rejected")),
            "{check}"
        );
    }
}

#[test]
fn without_metadata_findings_an_enforcing_lab_exits_zero() {
    let run = lab_run("enforcing", &["-s", "matrix", "-s", "dns", "--exclude-namespace", "z"]);
    assert_eq!(run.code(), 0, "{}", String::from_utf8_lossy(&run.output.stderr));
    assert_eq!(run.json["exit_code"], 0);
    assert_eq!(run.json["run"]["namespaces"], serde_json::json!(["x", "y"]));
    assert_eq!(run.count("pass"), run.checks().len() as u64);
}

fn scenario_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the scenario");
    path
}

#[test]
fn a_target_with_nothing_listening_is_inconclusive_never_a_pass() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scenario = scenario_file(
        dir.path(),
        "closed.yaml",
        "apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: closed\ngroups:\n- name: web-closed-port\n  to:\n    pods:\n      selector: {matchLabels: {app: web}}\n  ports: [9999/TCP]\n  intent: policy\n",
    );
    let scenario = scenario.display().to_string();
    let run = lab_run("enforcing", &["-s", &scenario, "--junit-file", "report.xml"]);
    assert_eq!(run.checks().len(), 3);
    assert_eq!(run.count("inconclusive"), 3, "{:#?}", run.checks());
    assert_eq!(run.code(), 3);
    let xml = std::fs::read_to_string(run.dir.path().join("report.xml")).expect("the JUnit file");
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let skipped: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("skipped")).collect();
    assert_eq!(skipped.len(), 3, "inconclusive checks are skipped testcases: {xml}");
    assert!(
        skipped.iter().all(|n| n.attribute("message").is_some_and(|m| m.contains("dead target"))),
        "{xml}"
    );
    for check in run.checks() {
        assert!(
            check["detail"].as_str().is_some_and(|d| d.contains("a dead target looks the same")
                || d.contains("cannot be told from a dead target")),
            "{check}"
        );
    }
}

fn canary(server: Server, cni: &str, extra: &[&str], timeouts: &str) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scenario = scenario_file(
        dir.path(),
        "canary.yaml",
        &format!("apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: canary\ncanary: {timeouts}\n"),
    );
    let scenario = scenario.display().to_string();
    lab_run_with(server, cni, &[&["-s", scenario.as_str()], extra].concat())
}

fn capabilities(run: &Run) -> Vec<(String, String)> {
    run.json["canary"]["capabilities"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("?").to_string(),
                        c["status"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const CAPABILITIES: [&str; 9] = [
    "ingress deny",
    "UDP",
    "named port",
    "endPort",
    "SCTP is not TCP",
    "namespaceSelector",
    "egress deny",
    "ipBlock except",
    "pod-start window",
];

on_both_apis!(the_canary_finds_every_capability_enforced_by_an_enforcing_cni);
fn the_canary_finds_every_capability_enforced_by_an_enforcing_cni(server: Server) {
    let run = canary(server, "enforcing", &[], "{enforceTimeout: 5s, podStartWindow: 1s}");
    let expected: Vec<(String, String)> =
        CAPABILITIES.iter().map(|c| (c.to_string(), "enforced".to_string())).collect();
    assert_eq!(capabilities(&run), expected, "{:#}", run.json["canary"]);
    assert_eq!(run.json["canary"]["pod_start_window_ms"], 0);
    assert!(run.json["canary"]["enforce_latency_ms"].as_u64().is_some_and(|ms| ms < 1000));
    assert_eq!(run.code(), 0, "{:#}", run.json);
    // Its two scratch namespaces and 7 pods (6 servers, its control pod; its pollers went with
    // their steps) are gone with the run.
    assert_eq!(run.json["run"]["cleaned"]["namespaces"], 2);
    assert_eq!(run.json["run"]["cleaned"]["pods"], 7);
}

on_both_apis!(the_canary_finds_nothing_enforced_without_a_cni_that_enforces);
fn the_canary_finds_nothing_enforced_without_a_cni_that_enforces(server: Server) {
    let run = canary(server, "none", &[], "{enforceTimeout: 1s, podStartWindow: 500ms}");
    let statuses: Vec<(String, String)> = capabilities(&run);
    assert_eq!(statuses.len(), CAPABILITIES.len());
    assert!(statuses.iter().all(|(_, s)| s == "not enforced"), "{statuses:?}");
    assert_eq!(run.json["canary"]["enforce_latency_ms"], Value::Null);
    assert_eq!(run.code(), 1);
}

/// A CNI that gets one part of the API wrong: the canary's table names that part, and only it;
/// the matrix (which uses none of them) still passes, and no check is inconclusive.
#[test]
fn the_canary_names_the_part_of_the_api_a_faulty_cni_gets_wrong() {
    for (cni, capability, status) in [
        ("ignores-except", "ipBlock except", "not enforced"),
        ("ignores-named-ports", "named port", "not enforced"),
        ("ignores-end-port", "endPort", "over-blocked"),
    ] {
        let run = canary(Server::Lab, cni, &["-s", "matrix"], "{enforceTimeout: 5s, podStartWindow: 1s}");
        let expected: Vec<(String, String)> = CAPABILITIES
            .iter()
            .map(|c| (c.to_string(), if *c == capability { status } else { "enforced" }.to_string()))
            .collect();
        assert_eq!(capabilities(&run), expected, "{cni}: {:#}", run.json["canary"]);
        assert_eq!(run.count("inconclusive"), 0, "{cni}: {:#?}", run.with_verdict("inconclusive"));
        let matrix: Vec<&Value> = run.checks().into_iter().filter(|c| c["scenario"] == "matrix").collect();
        assert!(matrix.len() == 18 && matrix.iter().all(|c| c["verdict"] == "pass"), "{cni}: {matrix:#?}");
        assert_eq!(run.code(), 1, "{cni}: the canary's finding fails the run");
    }
}

/// A node pool without the policy agent: with --spread, exactly the egress denials of the
/// clients on the node that does not enforce get through (ingress is enforced where the
/// servers run), the same checks pass from the node that does, and a note names the node.
#[test]
fn a_cni_that_enforces_on_one_node_only_is_found_with_spread() {
    let run = lab_run("one-node", &[&SCENARIOS[..], &["--nodes", "2", "--spread"]].concat());
    let other = |c: &Value| c["from"].as_str().is_some_and(|f| f.contains("/nv-client-othernode-"));
    let expected: BTreeSet<String> = run
        .checks()
        .into_iter()
        .filter(|c| other(c) && c["egress"] == "deny" && c["ingress"] != "deny")
        .map(cell)
        .collect();
    assert_eq!(expected.len(), 3, "y→z over TCP and UDP, y→metadata: {expected:#?}");
    assert_eq!(run.with_verdict("not-enforced"), expected);
    assert!(run.checks().into_iter().filter(|c| !other(c)).all(|c| c["verdict"] != "not-enforced"));
    assert_eq!(run.count("inconclusive") + run.count("over-blocked"), 0, "{:#?}", run.json["counts"]);
    let notes = run.json["notes"].to_string();
    assert!(notes.contains("enforcement differs between nodes: 3 checks not enforced from node "), "{notes}");
}

/// A CNI slower than the canary waits: the canary finds nothing enforced within its bound and
/// says so (no latency, every capability not enforced), never a pass.
#[test]
fn a_cni_slower_than_the_canarys_wait_gives_no_pass_for_a_denial() {
    let run = canary(
        Server::Lab,
        "enforcing",
        &["--enforce-delay", "4s", "-s", "matrix"],
        "{enforceTimeout: 1s, podStartWindow: 500ms}",
    );
    assert_eq!(run.json["canary"]["enforce_latency_ms"], Value::Null, "{:#}", run.json["canary"]);
    // Every step's policies are younger than the delay when the canary gives up on them.
    let statuses = capabilities(&run);
    assert_eq!(statuses.len(), CAPABILITIES.len(), "{statuses:?}");
    assert!(statuses.iter().all(|(_, s)| s == "not enforced"), "{statuses:?}");
    assert_eq!(run.count("over-blocked"), 0, "{:#?}", run.with_verdict("over-blocked"));
    assert_eq!(run.code(), 1);
}

/// A CNI that ignores the stored policies but enforces the tool's own: the run's denials are
/// not enforced, and its control policies, created only once every check is made, never make
/// one look enforced (had they existed while the checks ran, they would have isolated shop's
/// server, and its 80/UDP denials would have passed).
#[test]
fn control_policies_never_make_an_ignored_stored_policy_look_enforced() {
    let run = lab_run_on(Server::Lab, &example("shop"), "only-tool-policies", &["-s", "matrix"]);
    let denied: Vec<&Value> = run.checks().into_iter().filter(|c| c["policy"] == "deny").collect();
    assert!(denied.len() >= 6, "{denied:#?}");
    for check in &denied {
        assert_eq!(check["verdict"], "not-enforced", "{check}");
    }
    assert!(run.json["control_policies"].as_array().is_some_and(|c| !c.is_empty()), "{:#}", run.json);
    assert_eq!(run.code(), 1);
}

#[test]
fn the_canary_measures_a_slow_cni_and_its_pod_start_window() {
    let run = canary(
        Server::Lab,
        "enforcing",
        &["--enforce-delay", "1s"],
        "{enforceTimeout: 10s, podStartWindow: 2s}",
    );
    let latency = run.json["canary"]["enforce_latency_ms"].as_u64().expect("enforced within the bound");
    assert!((1000..5000).contains(&latency), "latency {latency} ms");
    let window = run.json["canary"]["pod_start_window_ms"].as_u64().expect("a measured window");
    assert!(window >= 500, "a fresh pod is open until the delayed policy applies: {window} ms");
    let statuses = capabilities(&run);
    assert!(statuses.contains(&("pod-start window".to_string(), "not enforced".to_string())), "{statuses:?}");
    assert!(
        statuses.iter().filter(|(n, _)| n != "pod-start window").all(|(_, s)| s == "enforced"),
        "{statuses:?}"
    );
}

#[test]
fn scenario_errors_name_the_file_line_and_field_and_exit_2() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scenario = scenario_file(
        dir.path(),
        "bad.yaml",
        "apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: bad\ngroups:\n- name: g\n  to: {ip: 10.0.0.1}\n  ports: [80]\n  intent: sometimes\n",
    );
    let output = Command::new(verify())
        .args(["lab", "run", "--from-file", "/nonexistent.yaml", "-s"])
        .arg(&scenario)
        .output()
        .expect("netpol-verify runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml:8: groups[0].intent: unknown variant `sometimes`"), "{stderr}");
}

#[test]
fn run_without_a_lab_or_a_cluster_says_how_to_name_one() {
    // NB: no kubeconfig and no in-cluster account: a test never reaches a real API server.
    let home = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(verify())
        .args(["run", "-s", "matrix"])
        .env("KUBECONFIG", home.path().join("missing"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("netpol-verify runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot configure a connection to the cluster") && stderr.contains("--kubeconfig"),
        "{stderr}"
    );
}

/// q may only talk to itself: no DNS.
const NO_DNS: &str = "---
apiVersion: v1
kind: Namespace
metadata: {name: q}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-itself, namespace: q}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]
";

const DNS_AS_STORED: &str = "apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: dns-as-stored\ngroups:\n- name: service\n  to: {clusterDns: {via: service}}\n  intent: policy\n- name: pods\n  to: {clusterDns: {via: pods}}\n  intent: policy\n";

#[test]
fn dns_denied_through_the_service_passes_only_with_every_end_shown_alive() {
    let objects = format!("{}{NO_DNS}", cluster());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scenario = scenario_file(dir.path(), "dns.yaml", DNS_AS_STORED).display().to_string();
    let run = lab_run_on(Server::Lab, &objects, "enforcing", &["-s", &scenario, "-n", "q"]);
    assert_eq!(run.checks().len(), 4, "Service and pod, UDP and TCP");
    for check in run.checks() {
        assert_eq!(
            (&check["policy"], &check["verdict"]),
            (&Value::from("deny"), &Value::from("pass")),
            "{check}"
        );
    }
    let through_service =
        run.checks().into_iter().find(|c| c["group"] == "service").expect("a Service check");
    assert!(
        through_service["detail"].as_str().is_some_and(|d| d.contains("target shown alive")),
        "{through_service}"
    );
    let run = lab_run_on(Server::Lab, &objects, "none", &["-s", &scenario, "-n", "q"]);
    assert_eq!(run.count("not-enforced"), 4, "{:#?}", run.checks());
    // The built-in dns scenario requires DNS: the same denials are intent gaps.
    let run = lab_run_on(Server::Lab, &objects, "enforcing", &["-s", "dns", "-n", "q"]);
    assert_eq!(run.count("intent-gap"), 4, "{:#?}", run.checks());
}

#[test]
fn a_run_that_checks_nothing_is_not_a_pass() {
    // No argocd or flux-system here: the gitops scenario has nothing to probe.
    let run = lab_run("enforcing", &["-s", "gitops", "--junit-file", "report.xml"]);
    assert_eq!(run.checks().len(), 0);
    assert_eq!(run.code(), 3);
    assert_eq!(run.json["incomplete"], serde_json::json!(["no check was made"]));
    let xml = std::fs::read_to_string(run.dir.path().join("report.xml")).expect("the JUnit file");
    assert!(
        xml.contains("<testsuite") && xml.contains("name=\"incomplete\"") && xml.contains("<skipped"),
        "{xml}"
    );
}

#[test]
fn a_namespace_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, self::cluster()).expect("write the cluster");
    let output = Command::new(verify())
        .args(["lab", "run", "--from-file"])
        .arg(&cluster)
        .args(["--name", &unique_name(), "-n", "typo"])
        .output()
        .expect("netpol-verify runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("namespace typo does not exist (namespaces: kube-system, x, y, z)"), "{stderr}");
}

/// An example cluster of scenarios/examples.
fn example(name: &str) -> String {
    let path = format!("{}/scenarios/examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// The quick start: the shop fails without enforcement; with it, every check is conclusive
// and passes. The two checks no stored policy gives a positive control (80/UDP into shop's
// default-deny, which the node's TCP readiness probe cannot show alive) get one from a
// control policy, and without control policies stay inconclusive, as a dead target would.
on_both_apis!(the_quick_start_example_fails_without_enforcement_and_passes_with_it);
fn the_quick_start_example_fails_without_enforcement_and_passes_with_it(server: Server) {
    let shop = example("shop");
    let none = lab_run_on(server, &shop, "none", &[]);
    assert_eq!(none.code(), 1);
    assert!(none.count("not-enforced") > 10, "{:#?}", none.with_verdict("not-enforced"));
    assert_eq!(none.count("over-blocked"), 0);

    let enforcing = lab_run_on(server, &shop, "enforcing", &[]);
    let failed =
        enforcing.count("not-enforced") + enforcing.count("over-blocked") + enforcing.count("intent-gap");
    assert_eq!(failed + enforcing.count("inconclusive"), 0, "{:#?}", enforcing.json["counts"]);
    assert_eq!(enforcing.code(), 0, "{:#?}", enforcing.json["counts"]);
    let controls = &enforcing.json["control_policies"];
    let run = enforcing.json["run"]["id"].as_str().unwrap_or("?");
    assert_eq!(controls.as_array().map(Vec::len), Some(1), "{controls:#}");
    assert_eq!(controls[0]["policy"], format!("shop/nv-control-in-nv-server-{run}"));
    assert_eq!(controls[0]["selects"], format!("shop/nv-server-{run}"));
    assert_eq!(controls[0]["ports"], serde_json::json!(["80/UDP"]));
    // Removed once the controls are made (lab_run_on checks nothing of the run is left).
    // The checks it backs are explained by the stored policies alone.
    for check in enforcing.checks() {
        let policies = check["policies"].as_array().into_iter().flatten();
        assert!(policies.clone().all(|p| !p.as_str().unwrap_or("").contains("nv-control-")), "{check}");
    }

    let without = lab_run_on(server, &shop, "enforcing", &["--no-control-policies"]);
    let inconclusive: Vec<&Value> =
        without.checks().into_iter().filter(|c| c["verdict"] == "inconclusive").collect();
    assert_eq!(
        inconclusive.iter().map(|c| cell(c)).collect::<BTreeSet<_>>(),
        ["pod-to-pod monitoring→shop 80/UDP", "pod-to-pod shop→shop 80/UDP"].map(String::from).into(),
    );
    for check in &inconclusive {
        assert!(
            check["detail"].as_str().is_some_and(|d| d.contains("cannot be told from a dead target")),
            "{check}"
        );
    }
    assert_eq!(without.json["control_policies"], serde_json::json!([]));
    assert_eq!(without.code(), 3, "only inconclusive checks besides passes");
}

// The GitOps example: payments may send nothing at all, and four servers admit nothing over
// UDP. Without control policies 20 checks are inconclusive; with them none is, and every
// verdict but the stored policies' own intent gaps (payments may not reach DNS; argocd may
// reach the metadata service) is a pass.
on_both_apis!(the_gitops_example_is_conclusive_under_an_enforcing_cni);
fn the_gitops_example_is_conclusive_under_an_enforcing_cni(server: Server) {
    let gitops = example("gitops");
    let args = ["-s", "canary", "-s", "matrix", "-s", "dns", "-s", "metadata", "-s", "gitops"];
    let run = lab_run_on(server, &gitops, "enforcing", &args);
    assert_eq!(run.count("inconclusive"), 0, "{:#?}", run.with_verdict("inconclusive"));
    assert_eq!(run.count("not-enforced") + run.count("over-blocked"), 0, "{:#?}", run.json["counts"]);
    let gaps = run.with_verdict("intent-gap");
    assert!(
        gaps.iter().all(|g| g.contains("payments→kube-system") || g.contains("argocd→169.254")),
        "{gaps:#?}"
    );
    let controls: BTreeSet<String> = run.json["control_policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!("{} {}", c["selects"].as_str().unwrap_or("?"), c["direction"].as_str().unwrap_or("?"))
        })
        .map(|c| c.replace(run.json["run"]["id"].as_str().unwrap_or("?"), "RUN"))
        .collect();
    assert_eq!(
        controls,
        [
            "apps/nv-server-RUN ingress",
            "flux-system/nv-server-RUN ingress",
            "payments/nv-server-RUN ingress",
            "payments/nv-client-RUN egress",
        ]
        .map(String::from)
        .into()
    );
    let without = lab_run_on(server, &gitops, "enforcing", &[&args[..], &["--no-control-policies"]].concat());
    assert_eq!(without.count("inconclusive"), 20, "{:#?}", without.with_verdict("inconclusive"));
}

/// A CiliumNetworkPolicy in x: the engine does not model it, so nothing touching x is settled.
const CILIUM: &str = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-rules, namespace: x}
spec:
  endpointSelector: {}
";

#[test]
fn checks_an_unmodelled_policy_may_touch_are_never_confident() {
    let objects = format!("{}{CILIUM}", cluster());
    let run = lab_run_on(Server::Lab, &objects, "enforcing", &["-s", "matrix"]);
    let touching_x = |c: &&Value| c["from_namespace"] == "x" || c["to_namespace"] == "x";
    let (touching, others): (Vec<&Value>, Vec<&Value>) = run.checks().into_iter().partition(touching_x);
    assert_eq!(touching.len(), 10, "x to x, y, z and y, z to x, TCP and UDP");
    for check in touching {
        assert_eq!(
            (&check["policy"], &check["verdict"]),
            (&Value::from("unknown"), &Value::from("inconclusive")),
            "{check}"
        );
        assert!(
            check["detail"].as_str().is_some_and(|d| d.contains("CiliumNetworkPolicy x/l7-rules")),
            "{check}"
        );
    }
    assert!(others.iter().all(|c| c["verdict"] == "pass"), "{others:#?}");
    assert_eq!(run.code(), 3);
}

/// web in x admits y on 8080 (besides x's own pods).
const WEB_POLICY: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: 8080}]
";

#[test]
fn workload_doubles_are_selected_by_the_workloads_own_policies() {
    let objects = format!("{}{WEB_POLICY}", cluster());
    let on_the_double = |run: &Run| -> Vec<String> {
        run.checks()
            .into_iter()
            .filter(|c| c["to"].as_str().is_some_and(|t| t.starts_with("x/nv-mimic-0-")))
            .map(|c| {
                format!(
                    "{}:{}/{} {} {}",
                    c["from_namespace"], c["port"], c["protocol"], c["policy"], c["verdict"]
                )
            })
            .collect()
    };
    let run = lab_run_on(Server::Lab, &objects, "enforcing", &["-s", "matrix", "--mimic-workloads"]);
    assert_eq!(
        on_the_double(&run),
        [
            "\"x\":8080/\"TCP\" \"allow\" \"pass\"",
            "\"y\":8080/\"TCP\" \"allow\" \"pass\"",
            "\"z\":8080/\"TCP\" \"deny\" \"pass\"",
        ]
    );
    let run = lab_run_on(Server::Lab, &objects, "none", &["-s", "matrix", "--mimic-workloads"]);
    assert_eq!(on_the_double(&run)[2], "\"z\":8080/\"TCP\" \"deny\" \"not-enforced\"");
}

/// argocd admits only itself; flux-system has no policy.
const GITOPS: &str = "---
apiVersion: v1
kind: Namespace
metadata: {name: argocd}
---
apiVersion: v1
kind: Namespace
metadata: {name: flux-system}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-argocd, namespace: argocd}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
";

#[test]
fn gitops_namespaces_are_probed_into_and_out_of_as_their_policies_say() {
    let objects = format!("{}{GITOPS}", cluster());
    let into_argocd = |run: &Run| -> BTreeSet<String> {
        run.checks()
            .into_iter()
            .filter(|c| c["group"] == "into-gitops" && c["to_namespace"] == "argocd")
            .map(|c| {
                format!(
                    "{}→argocd {} {}",
                    c["from_namespace"].as_str().unwrap_or("?"),
                    c["policy"].as_str().unwrap_or("?"),
                    c["verdict"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let run = lab_run_on(Server::Lab, &objects, "enforcing", &["-s", "gitops"]);
    let sources = ["flux-system", "x", "y", "z"];
    assert_eq!(into_argocd(&run), sources.iter().map(|s| format!("{s}→argocd deny pass")).collect());
    // Out of them, and into flux-system, is as the other namespaces' policies say.
    assert!(
        run.checks().iter().any(|c| c["group"] == "out-of-gitops" && c["from_namespace"] == "argocd"),
        "{:#?}",
        run.checks()
    );
    assert_eq!(run.count("over-blocked") + run.count("not-enforced"), 0, "{:#?}", run.json["counts"]);
    let run = lab_run_on(Server::Lab, &objects, "none", &["-s", "gitops"]);
    assert_eq!(into_argocd(&run), sources.iter().map(|s| format!("{s}→argocd deny not-enforced")).collect());
}
