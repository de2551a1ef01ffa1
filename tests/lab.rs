//! The lab with real packets (root): lifecycle, every CNI mode against the engine's verdicts,
//! policy changes, cluster DNS, the metadata service, and cleanup after failures and kills.
//! Probes go only to addresses inside the lab.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netpol_probe::wire::{Outcome, Plan, ProbeKind, ProbeResult, ProbeSpec, Transport};
use netpol_verify::engine::{Engine, Protocol};
use netpol_verify::fixtures::upstream_cluster_yaml;
use netpol_verify::input::{Source, load};
use netpol_verify::lab::cni::CniMode;
use netpol_verify::lab::{Lab, LabSpec, state};
use netpol_verify::model::{ObjectKey, Snapshot};

mod support;
use support::{DownOnDrop, unique_name, verify};

fn probe() -> PathBuf {
    let probe = verify().with_file_name("netpol-probe");
    assert!(probe.is_file(), "{} is missing: build the workspace (cargo test --workspace)", probe.display());
    probe
}

/// A lab that is removed when the test ends, however it ends.
struct TestLab {
    lab: Lab,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab.state.name);
    }
}

fn snapshot(extra: &str) -> Snapshot {
    let text = format!("{}---\n{extra}", upstream_cluster_yaml());
    load(&[Source { name: "test".into(), text }]).expect("valid objects").snapshot
}

fn up(extra: &str, cni: CniMode, delay: Duration) -> TestLab {
    let spec = LabSpec {
        name: Some(unique_name()),
        cni,
        enforce_delay: delay,
        nodes: 1,
        probe: probe(),
        verify: verify(),
        api_server: None,
    };
    let (lab, _) = Lab::up(&spec, &snapshot(extra)).expect("the lab comes up");
    TestLab { lab }
}

const GRID: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];
const PORTS: [(u16, Protocol); 4] =
    [(80, Protocol::Tcp), (81, Protocol::Tcp), (80, Protocol::Udp), (81, Protocol::Udp)];

/// Runs one batch per source pod (all at once) and returns every result by (from, to, port, protocol).
fn observe(lab: &Lab, timeout_ms: u64) -> HashMap<(String, String, u16, Protocol), ProbeResult> {
    let ip = |key: &str| {
        let key = ObjectKey::parse(key).expect("key");
        lab.state.pods.iter().find(|p| p.key == key).expect("pod in the lab").ip.to_string()
    };
    let children: Vec<_> = GRID
        .iter()
        .map(|from| {
            let probes: Vec<ProbeSpec> = GRID
                .iter()
                .filter(|to| *to != from)
                .flat_map(|to| PORTS.iter().map(move |(port, protocol)| (to, *port, *protocol)))
                .map(|(to, port, protocol)| ProbeSpec {
                    id: format!("{to}|{port}|{protocol}"),
                    kind: ProbeKind::Connect,
                    target: ip(to),
                    port,
                    protocol: Some(if protocol == Protocol::Udp { Transport::Udp } else { Transport::Tcp }),
                    timeout_ms,
                    expect_name: Some(to.to_string()),
                    query: None,
                })
                .collect();
            (from.to_string(), start_batch(lab, from, probes))
        })
        .collect();
    let mut seen = HashMap::new();
    for (from, child) in children {
        for result in results(child) {
            let Some(id) = result.id.clone() else { continue };
            let mut parts = id.split('|');
            let (to, port, protocol) = (parts.next(), parts.next(), parts.next());
            let (Some(to), Some(port), Some(protocol)) = (to, port, protocol) else { continue };
            let protocol: Protocol = protocol.parse().expect("protocol");
            seen.insert((from.clone(), to.to_string(), port.parse().expect("port"), protocol), result);
        }
    }
    assert_eq!(seen.len(), 9 * 8 * 4, "every probe reported");
    seen
}

/// Compares each observed cell with what `expect(verdict)` says should have happened.
fn check(
    lab: &Lab,
    observed: &HashMap<(String, String, u16, Protocol), ProbeResult>,
    expect: impl Fn(&netpol_verify::engine::Verdict<'_>, Protocol) -> bool,
) {
    let snapshot = lab.snapshot();
    let engine = Engine::new(&snapshot).expect("valid");
    let mut wrong = Vec::new();
    for ((from, to, port, protocol), result) in observed {
        let pod = |k: &str| snapshot.find_pod(&ObjectKey::parse(k).expect("key")).expect("pod");
        let verdict = engine.verdict(pod(from), pod(to), *port, *protocol);
        let want = expect(&verdict, *protocol);
        if result.reached() != want {
            wrong.push(format!(
                "{from} -> {to} {port}/{protocol}: want {}, saw {result:?}",
                if want { "reach" } else { "deny" }
            ));
        }
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{} of {} cells differ:\n{}", wrong.len(), observed.len(), wrong.join("\n"));
}

/// Ingress and egress rules, selectors of every kind, named ports, an ipBlock with except.
const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}]
    ports: [{port: serve-80-tcp}, {port: 81, protocol: UDP}]
  - from: [{ipBlock: {cidr: 10.244.3.0/24, except: [10.244.3.3/32]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-own-namespace, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, endPort: 81}]
  - ports: [{port: serve-80-udp, protocol: UDP}]
";

#[test]
fn enforcing_matches_the_engine_on_every_cell() {
    let lab = up(POLICIES, CniMode::Enforcing, Duration::ZERO);
    let observed = observe(&lab.lab, 600);
    check(&lab.lab, &observed, |v, _| v.allowed);
    // A denied packet vanishes: the client waits for its timeout, on every denied cell.
    let denied: Vec<&ProbeResult> = observed.values().filter(|r| !r.reached()).collect();
    assert!(denied.len() > 50, "the policies deny a good part of the grid: {}", denied.len());
    for result in denied {
        assert_eq!(result.outcome, Outcome::Timeout, "{result:?}");
    }
}

#[test]
fn none_allows_everything() {
    let lab = up(POLICIES, CniMode::None, Duration::ZERO);
    let observed = observe(&lab.lab, 600);
    check(&lab.lab, &observed, |_, _| true);
}

#[test]
fn ingress_only_and_egress_only_enforce_one_direction() {
    let ingress = up(POLICIES, CniMode::IngressOnly, Duration::ZERO);
    let observed = observe(&ingress.lab, 600);
    check(&ingress.lab, &observed, |v, _| v.ingress.outcome.permits());
    let egress = up(POLICIES, CniMode::EgressOnly, Duration::ZERO);
    let observed = observe(&egress.lab, 600);
    check(&egress.lab, &observed, |v, _| v.egress.outcome.permits());
}

#[test]
fn tcp_only_leaves_udp_unfiltered() {
    let lab = up(POLICIES, CniMode::TcpOnly, Duration::ZERO);
    let observed = observe(&lab.lab, 600);
    check(&lab.lab, &observed, |v, protocol| protocol == Protocol::Udp || v.allowed);
}

#[test]
fn reject_denies_the_same_cells_but_answers_them() {
    let lab = up(POLICIES, CniMode::Reject, Duration::ZERO);
    let observed = observe(&lab.lab, 2000);
    check(&lab.lab, &observed, |v, _| v.allowed);
    let denied: Vec<&ProbeResult> = observed.values().filter(|r| !r.reached()).collect();
    assert!(!denied.is_empty());
    for result in denied {
        assert_eq!(result.outcome, Outcome::Refused, "{result:?}");
        assert!(result.ms < 1000, "an answer, not a timeout: {result:?}");
    }
}

/// `netpol-probe ARGS` from inside a lab pod.
fn from_pod(lab: &Lab, pod: &str, args: &[&str]) -> ProbeResult {
    let netns = lab.pod_netns(&ObjectKey::parse(pod).expect("key")).expect("pod");
    let output = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(probe())
        .args(args)
        .output()
        .expect("probe runs");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn cluster_dns_answers_through_the_service_ip_and_the_pod() {
    let lab = up("", CniMode::Enforcing, Duration::ZERO);
    let lab = &lab.lab;
    assert_eq!(lab.state.dns_ip.to_string(), "10.96.0.10");
    // Through resolv.conf (the Service IP), over UDP and TCP.
    for extra in [&[][..], &["--tcp"][..]] {
        let mut args = vec!["dns", "kube-dns.kube-system.svc.cluster.local"];
        args.extend_from_slice(extra);
        let result = from_pod(lab, "x/a", &args);
        assert_eq!(
            (result.outcome, result.rcode.as_deref()),
            (Outcome::Connected, Some("NoError")),
            "{result:?}"
        );
        assert_eq!(result.target, "10.96.0.10");
    }
    let missing = from_pod(lab, "y/b", &["dns", "nothing.svc.cluster.local"]);
    assert_eq!(missing.rcode.as_deref(), Some("NXDomain"));
    // Straight to the DNS pod.
    let dns_pod = lab.state.pods.iter().find(|p| p.dns).expect("a DNS pod");
    let server = format!("{}:53", dns_pod.ip);
    let direct = from_pod(lab, "z/c", &["dns", "kubernetes.default.svc.cluster.local", "--server", &server]);
    assert_eq!(direct.outcome, Outcome::Connected);
}

#[test]
fn the_metadata_service_answers_unless_a_policy_denies_it() {
    let deny_metadata = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-metadata, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]
";
    let lab = up(deny_metadata, CniMode::Enforcing, Duration::ZERO);
    let open = from_pod(&lab.lab, "x/a", &["connect", "169.254.169.254:80", "--expect-name", "metadata"]);
    assert_eq!(open.outcome, Outcome::Connected, "{open:?}");
    let closed = from_pod(&lab.lab, "y/a", &["connect", "169.254.169.254:80", "--timeout", "500ms"]);
    assert_eq!(closed.outcome, Outcome::Timeout, "{closed:?}");
    let pods_still = from_pod(&lab.lab, "y/a", &["connect", "10.244.1.1:80", "--expect-name", "x/a"]);
    assert_eq!(pods_still.outcome, Outcome::Connected, "{pods_still:?}");
}

#[test]
fn policy_changes_take_effect_when_applied() {
    let mut test_lab = up("", CniMode::Enforcing, Duration::ZERO);
    let lab = &mut test_lab.lab;
    let reach = |lab: &Lab| from_pod(lab, "y/a", &["connect", "10.244.1.2:80", "--timeout", "500ms"]).outcome;
    assert_eq!(reach(lab), Outcome::Connected);
    let deny: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}
    }))
    .expect("policy");
    lab.add_policy(deny).expect("stored");
    assert_eq!(reach(lab), Outcome::Connected, "stored, not yet enforced");
    lab.apply_policies(&lab.state.policies.clone()).expect("applied");
    assert_eq!(reach(lab), Outcome::Timeout);
    assert!(lab.remove_policy(&ObjectKey::new("x", "deny")).expect("removed"));
    lab.apply_policies(&lab.state.policies.clone()).expect("applied");
    assert_eq!(reach(lab), Outcome::Connected);
    // The record on disk follows.
    assert!(Lab::open(&lab.state.name).expect("opens").state.policies.is_empty());
}

/// Lab `name`'s namespaces, resolv.conf directories, record, and processes (each carries
/// `NETPOL_LAB=NAME`).
fn leftovers(name: &str) -> Vec<String> {
    let entries = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    };
    let mut found: Vec<String> = entries("/run/netns")
        .into_iter()
        .chain(entries("/etc/netns").into_iter().map(|d| format!("/etc/netns/{d}")))
        .filter(|n| state::lab_of_netns(n.trim_start_matches("/etc/netns/")) == Some(name))
        .collect();
    if state::lab_dir(name).exists() {
        found.push(state::lab_dir(name).display().to_string());
    }
    let netns: Vec<String> =
        entries("/run/netns").into_iter().filter(|n| state::lab_of_netns(n) == Some(name)).collect();
    for pid in netpol_verify::lab::host::lab_processes(name, &netns) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push(format!("process {pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    found
}

#[test]
fn a_lab_lists_then_leaves_nothing_when_removed() {
    let lab = up(POLICIES, CniMode::Enforcing, Duration::ZERO);
    let name = lab.lab.state.name.clone();
    let listed = Lab::list().into_iter().find(|l| l.name == name).expect("listed");
    assert_eq!((listed.status.as_str(), listed.pods), ("up", 10));
    assert!(!leftovers(&name).is_empty());
    let netns: Vec<String> = lab.lab.state.pods.iter().map(|p| state::pod_netns(&name, p.index)).collect();
    drop(lab);
    assert_eq!(leftovers(&name), Vec::<String>::new());
    for netns in netns {
        assert!(!std::path::Path::new("/etc/netns").join(&netns).exists(), "{netns}'s resolv.conf is gone");
    }
}

#[test]
fn a_failed_build_removes_what_it_made() {
    // A "probe" that exits at once: the lab cannot become ready.
    let spec = LabSpec {
        name: Some(unique_name()),
        cni: CniMode::Enforcing,
        enforce_delay: Duration::ZERO,
        nodes: 1,
        probe: PathBuf::from("/bin/false"),
        verify: verify(),
        api_server: None,
    };
    let err = Lab::up(&spec, &snapshot("")).expect_err("the pods never listen");
    assert!(err.to_string().contains("did not start"), "{err}");
    let name = spec.name.as_deref().expect("named");
    assert_eq!(leftovers(name), Vec::<String>::new());
}

/// The tests that leave a lab abandoned on purpose, one at a time: the `lab up` of one would
/// remove what the other left before it looks.
static ABANDONING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_lab_whose_creator_was_killed_is_removed_by_down() {
    let _one = ABANDONING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = unique_name();
    let dir = tempfile::tempdir().expect("temp dir");
    let grid = netpol_verify::fixtures::grid_yaml(
        &(0..20).map(|i| format!("ns{i}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>(),
        &["a", "b", "c"],
    );
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, grid).expect("write");
    let _guard = DownOnDrop(name.clone());
    let mut child = Command::new(verify())
        .args(["lab", "up", "--name", &name, "--from-file"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lab up starts");
    // Kill it half-way: once pod namespaces exist, long before its pods listen.
    let pod_namespaces = || {
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| state::lab_of_netns(n) == Some(name.as_str()) && n.contains("-p"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod_namespaces() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(pod_namespaces() > 0, "killed after building pod namespaces");
    let status = Lab::list().into_iter().find(|l| l.name == name).map(|l| l.status);
    assert_eq!(status.as_deref(), Some("creating (abandoned)"), "killed half-way");
    let output = Command::new(verify()).args(["lab", "down", &name]).output().expect("lab down runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn twenty_namespaces_come_up_and_every_pod_answers() {
    let names: Vec<String> = (0..20).map(|i| format!("ns{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let text = netpol_verify::fixtures::grid_yaml(&names, &["a", "b", "c"]);
    let snapshot = load(&[Source { name: "grid".into(), text }]).expect("valid").snapshot;
    let spec = LabSpec {
        name: Some(unique_name()),
        cni: CniMode::Enforcing,
        enforce_delay: Duration::ZERO,
        nodes: 1,
        probe: probe(),
        verify: verify(),
        api_server: None,
    };
    let started = Instant::now();
    let (lab, _) = Lab::up(&spec, &snapshot).expect("up");
    let lab = TestLab { lab };
    let took = started.elapsed();
    assert_eq!(lab.lab.state.pods.len(), 61);
    let probes: Vec<ProbeSpec> = lab
        .lab
        .state
        .pods
        .iter()
        .filter(|p| !p.dns)
        .map(|p| ProbeSpec {
            id: p.key.to_string(),
            kind: ProbeKind::Connect,
            target: p.ip.to_string(),
            port: 80,
            protocol: None,
            timeout_ms: 2000,
            expect_name: Some(p.key.to_string()),
            query: None,
        })
        .collect();
    let results = batch(&lab.lab, "ns0/a", probes);
    let reached = results.iter().filter(|r| r.reached()).count();
    assert_eq!((results.len(), reached), (60, 60), "{results:?} (up took {took:?})");
}

/// The Kubernetes backend against the lab's API: the same code a real cluster gets, its pods
/// run by the lab's kubelet.
mod through_the_kubernetes_api {
    use super::*;
    use netpol_verify::cluster::{Cluster, ClusterError, ProbePod, Role};
    use netpol_verify::engine::ContainerPort;
    use netpol_verify::kubernetes::{Connection, KubeCluster};
    use std::collections::BTreeMap;

    /// A lab with its API up, and the backend connected to it through its kubeconfig.
    async fn up_with_api(extra: &str, cni: CniMode, delay: Duration) -> (TestLab, KubeCluster) {
        let lab = up(extra, cni, delay);
        let kubeconfig = lab.lab.start_api(&[]).expect("the lab's API comes up");
        (lab, connect(&kubeconfig).await)
    }

    async fn connect(kubeconfig: &std::path::Path) -> KubeCluster {
        let connection = Connection { kubeconfig: Some(kubeconfig), context: None };
        KubeCluster::connect(&connection, netpol_verify::manifest::PodOptions::default())
            .await
            .expect("connects")
    }

    fn server(namespace: &str, name: &str, run: &str) -> ProbePod {
        ProbePod {
            node: None,
            key: ObjectKey::new(namespace, name),
            role: Role::Server,
            run_id: run.into(),
            labels: BTreeMap::from([("app".into(), name.into())]),
            ports: vec![
                ContainerPort { port: 8080, protocol: Protocol::Tcp, name: Some("http".into()) },
                ContainerPort { port: 8080, protocol: Protocol::Udp, name: None },
            ],
        }
    }

    fn client(namespace: &str, name: &str, run: &str) -> ProbePod {
        ProbePod {
            node: None,
            role: Role::Client,
            ports: vec![],
            labels: BTreeMap::new(),
            ..server(namespace, name, run)
        }
    }

    fn plan_to(ip: &str, expect: &str, timeout_ms: u64) -> Plan {
        let probe = |protocol| ProbeSpec {
            id: format!("{protocol}"),
            kind: ProbeKind::Connect,
            target: ip.into(),
            port: 8080,
            protocol: Some(protocol),
            timeout_ms,
            expect_name: Some(expect.into()),
            query: None,
        };
        Plan { schema: 1, probes: vec![probe(Transport::Tcp), probe(Transport::Udp)] }
    }

    fn deny_ingress(namespace: &str) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "canary-deny", "namespace": namespace},
            "spec": {"podSelector": {}}
        }))
        .expect("policy")
    }

    /// One batch from `from` (a pod made for it, as on any cluster): each probe's outcome.
    async fn outcomes(cluster: &KubeCluster, from: &ProbePod, ip: &str, expect: &str) -> Vec<Outcome> {
        let output =
            cluster.run_batch(from, &plan_to(ip, expect, 400), Duration::from_secs(20)).await.expect("batch");
        assert!(output.summary.is_some(), "the batch completed: {output:?}");
        let mut results = output.results;
        results.sort_by(|a, b| a.id.cmp(&b.id));
        results.iter().map(|r| r.outcome).collect()
    }

    #[tokio::test]
    async fn probe_pods_run_as_written_and_go_with_their_run() {
        let (lab, cluster) = up_with_api("", CniMode::Enforcing, Duration::ZERO).await;
        let run = "r1";
        cluster.create_namespace("netpol-verify-r1", run).await.expect("namespace");
        let (server, client) =
            (server("netpol-verify-r1", "server", run), client("netpol-verify-r1", "client", run));
        cluster.create_probe_pod(&server).await.expect("server");
        let running = cluster
            .wait_running(std::slice::from_ref(&server.key), Duration::from_secs(20))
            .await
            .expect("Ready");
        let ip = running[0].ip.to_string();
        assert_eq!(
            outcomes(&cluster, &client, &ip, "netpol-verify-r1/server").await,
            [Outcome::Connected, Outcome::Connected]
        );

        // Discovery sees the probe pods with the tool's labels.
        let found = cluster.discover().await.expect("discover");
        let pod = found.snapshot.find_pod(&server.key).expect("listed");
        let labels = found.snapshot.pod(pod).metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("netpol-verify.io/run").map(String::as_str), Some(run));
        assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("netpol-verify"));

        // A policy stored through the API is enforced; deleting it lifts it.
        cluster.create_policy(&deny_ingress("netpol-verify-r1"), run).await.expect("policy");
        assert_eq!(
            outcomes(&cluster, &client, &ip, "netpol-verify-r1/server").await,
            [Outcome::Timeout, Outcome::Timeout]
        );
        cluster.delete_policy(&ObjectKey::new("netpol-verify-r1", "canary-deny")).await.expect("deleted");
        assert_eq!(
            outcomes(&cluster, &client, &ip, "netpol-verify-r1/server").await,
            [Outcome::Connected, Outcome::Connected]
        );

        // Everything of the run goes; nothing else does.
        cluster.create_policy(&deny_ingress("netpol-verify-r1"), run).await.expect("policy");
        let cleaned = cluster.cleanup(run).await.expect("cleanup");
        assert_eq!(
            (cleaned.pods, cleaned.policies, cleaned.namespaces),
            (1, 1, 1),
            "the batch pods went with their batches"
        );
        let after = cluster.discover().await.expect("discover");
        assert!(after.snapshot.find_pod(&server.key).is_none());
        assert_eq!(after.snapshot.pods().len(), 10, "the lab's own pods stay");
        let record = Lab::open(&lab.lab.state.name).expect("opens");
        assert_eq!(record.state.pods.len(), 10, "their sandboxes went too");
        // Errors name what is missing or wrong, with the API server's code.
        assert!(matches!(cluster.delete_pod(&server.key).await, Err(ClusterError::Api { code: 404, .. })));
        let nowhere = super::through_the_kubernetes_api::server("nowhere", "s", run);
        assert!(matches!(cluster.create_probe_pod(&nowhere).await, Err(ClusterError::Api { code: 404, .. })));
        let mut bad = deny_ingress("x");
        bad.spec.as_mut().expect("spec").policy_types = Some(vec!["Sideways".into()]);
        assert!(matches!(cluster.create_policy(&bad, run).await, Err(ClusterError::Invalid(_))));
    }

    #[tokio::test]
    async fn changes_from_many_clients_are_all_enforced() {
        let (lab, first) = up_with_api("", CniMode::Enforcing, Duration::ZERO).await;
        let name = lab.lab.state.name.clone();
        let kubeconfig = netpol_verify::lab::daemon::kubeconfig_path(&name);
        let mut clients = vec![first];
        for _ in 0..3 {
            clients.push(connect(&kubeconfig).await);
        }
        let mut changes = tokio::task::JoinSet::new();
        for i in 0..48 {
            let cluster = clients[i % 4].clone();
            let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("allow-{i}"), "namespace": "x"},
                    "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}
                }))
                .expect("policy");
            changes.spawn(async move { cluster.create_policy(&policy, "r3").await });
        }
        for result in changes.join_all().await {
            result.expect("policy");
        }
        // The CNI follows the API: the last ruleset it enforces holds every policy.
        let deadline = Instant::now() + Duration::from_secs(10);
        let missing = loop {
            let enforced = Command::new("ip")
                .args(["netns", "exec", &state::node_netns(&name), "nft", "list", "table", "inet", "netpol"])
                .output()
                .expect("nft runs");
            let enforced = String::from_utf8_lossy(&enforced.stdout);
            let missing: Vec<usize> =
                (0..48).filter(|i| !enforced.contains(&format!("comment \"x/allow-{i} rule 0\""))).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(missing.is_empty(), "stored but not enforced: {missing:?}");
        assert_eq!(Lab::open(&name).expect("opens").state.policies.len(), 48);
    }

    #[tokio::test]
    async fn a_batch_cut_off_at_its_limit_has_no_summary() {
        let (_lab, cluster) = up_with_api(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: y}\nspec: {podSelector: {}}\n",
            CniMode::Enforcing,
            Duration::ZERO,
        )
        .await;
        let plan = Plan {
            schema: 1,
            probes: vec![ProbeSpec {
                id: "slow".into(),
                kind: ProbeKind::Connect,
                target: "10.244.2.1".into(),
                port: 80,
                protocol: None,
                timeout_ms: 20_000,
                expect_name: None,
                query: None,
            }],
        };
        cluster.create_namespace("nv-r4", "r4").await.expect("namespace");
        let started = Instant::now();
        let output = cluster
            .run_batch(&client("nv-r4", "client", "r4"), &plan, Duration::from_secs(3))
            .await
            .expect("batch");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(output.summary.is_none() && output.results.is_empty(), "{output:?}");
    }

    #[tokio::test]
    async fn a_slow_cni_enforces_changes_after_its_delay() {
        let delay = Duration::from_millis(2000);
        let (_lab, cluster) = up_with_api("", CniMode::Enforcing, delay).await;
        cluster.create_namespace("nv-r2", "r2").await.expect("namespace");
        let target = server("nv-r2", "target", "r2");
        cluster.create_probe_pod(&target).await.expect("server");
        let ip = cluster
            .wait_running(std::slice::from_ref(&target.key), Duration::from_secs(20))
            .await
            .expect("Ready")[0]
            .ip;
        let from = client("nv-r2", "client", "r2");
        let changed = Instant::now();
        cluster.create_policy(&deny_ingress("nv-r2"), "r2").await.expect("policy");
        // Polled from a pod of its own, as the canary does, until the change lands.
        let mut poller = cluster
            .start_poll(
                &from,
                &plan_to(&ip.to_string(), "nv-r2/target", 150),
                Duration::from_millis(50),
                Duration::from_secs(15),
                Duration::from_secs(20),
            )
            .await
            .expect("a poller");
        let mut reached_before = false;
        let denied_at = loop {
            let round = tokio::time::timeout(Duration::from_secs(15), poller.rounds.recv())
                .await
                .expect("a round in time")
                .expect("a round");
            let tcp = round.results.iter().find(|r| r.id.as_deref() == Some("TCP")).map(|r| r.outcome);
            match tcp {
                Some(Outcome::Connected) => reached_before = true,
                Some(Outcome::Timeout) => break round.sent,
                other => panic!("{other:?}"),
            }
        };
        assert!(reached_before, "not enforced at first");
        let lag = denied_at.duration_since(changed.into());
        assert!(lag >= delay, "enforced {lag:?} after the change, before the {delay:?} delay");
        assert!(lag < delay * 3, "enforced only {lag:?} after the change");
    }
}

#[test]
fn without_root_the_lab_says_what_it_needs() {
    use std::os::unix::fs::PermissionsExt;
    // Copies any user may run (the build tree may sit under a private home).
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let verify_copy = dir.path().join("netpol-verify");
    std::fs::copy(verify(), &verify_copy).expect("copy");
    std::fs::copy(probe(), dir.path().join("netpol-probe")).expect("copy");
    let objects = dir.path().join("cluster.yaml");
    std::fs::write(&objects, upstream_cluster_yaml()).expect("write");
    for path in [&verify_copy, &dir.path().join("netpol-probe"), &objects] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for args in [&["lab", "up", "--from-file"][..], &["lab", "down", "nothing"][..]] {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(&verify_copy).args(args);
        if args[1] == "up" {
            command.arg(&objects);
        }
        let output = command.output().expect("setpriv runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("the lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"), "{stderr}");
        assert!(stderr.contains("sudo"), "{stderr}");
    }

    // `lab list` needs no root, and tells a lab being built by a root process (one it may not
    // signal) from an abandoned one.
    let lab = up("", CniMode::Enforcing, Duration::ZERO);
    let building = unique_name();
    let _guard = DownOnDrop(building.clone());
    let mut record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.lab.state.dir().join("state.json")).expect("record"),
    )
    .expect("json");
    record["name"] = building.clone().into();
    record["status"] = "creating".into();
    record["creator_pid"] = 1.into();
    std::fs::create_dir_all(state::lab_dir(&building)).expect("mkdir");
    std::fs::write(state::lab_dir(&building).join("state.json"), record.to_string()).expect("write");
    let output = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&verify_copy)
        .args(["lab", "list"])
        .output()
        .expect("setpriv runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = String::from_utf8_lossy(&output.stdout);
    let line = |name: &str| listed.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or("");
    assert!(line(&lab.lab.state.name).contains(" up "), "{listed}");
    assert!(line(&building).contains("creating") && !line(&building).contains("abandoned"), "{listed}");
}

/// Services for the DNS and kube-proxy tests: DNS pods on 5353, a Service with one endpoint
/// (a named targetPort), one with two, one with none.
const SERVICES: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: dns-1, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: c, ports: [{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5353}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}, {name: dns-tcp, port: 53, targetPort: dns-tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: x}
spec: {clusterIP: 10.96.1.1, selector: {pod: a}, ports: [{port: 8080, targetPort: serve-80-tcp}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: y, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: y, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec: {clusterIP: 10.96.1.2, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: y}
spec: {clusterIP: 10.96.1.3, selector: {app: nobody}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-by-pod, namespace: z}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 5353, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-by-service-ip, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.96.0.10/32}}]
";

#[test]
fn services_translate_to_their_pods_before_policies_look() {
    let lab = up(SERVICES, CniMode::Enforcing, Duration::ZERO);
    let lab = &lab.lab;
    let dns = lab.state.pods.iter().find(|p| p.dns).expect("the file's DNS pod");
    assert_eq!((dns.dns_udp.as_slice(), dns.dns_tcp.as_slice()), (&[5353][..], &[5353][..]));

    // DNS through the Service (53 -> 5353), over UDP and TCP; nothing listens on the pod's 53.
    for extra in [&[][..], &["--tcp"][..]] {
        let mut args = vec!["dns", "front.x.svc.cluster.local"];
        args.extend_from_slice(extra);
        let result = from_pod(lab, "z/a", &args);
        assert_eq!(
            (result.outcome, result.rcode.as_deref()),
            (Outcome::Connected, Some("NoError")),
            "{result:?}"
        );
    }
    let pod_53 = format!("{}:53", dns.ip);
    let direct =
        from_pod(lab, "z/a", &["dns", "front.x.svc.cluster.local", "--server", &pod_53, "--timeout", "1s"]);
    assert_eq!(direct.outcome, Outcome::Refused, "{direct:?}");

    // Policies see the DNS pod, not the Service IP: allowing the pod's port works, allowing
    // the Service IP does not (as on a real cluster); the engine says the same.
    let snapshot = lab.snapshot();
    let engine = Engine::new(&snapshot).expect("valid");
    let pod = |k: &str| snapshot.find_pod(&ObjectKey::parse(k).expect("key")).expect("pod");
    for (from, works) in [("z/b", true), ("z/c", false)] {
        let result = from_pod(lab, from, &["dns", "front.x.svc.cluster.local", "--timeout", "1s"]);
        assert_eq!(result.reached(), works, "{from}: {result:?}");
        let verdict = engine.verdict(pod(from), pod("kube-system/dns-1"), 5353, Protocol::Udp);
        assert_eq!(verdict.allowed, works, "{from}: the engine agrees");
    }

    // A Service name resolves (search list) and reaches its pod through a named targetPort.
    let front = from_pod(lab, "z/a", &["connect", "front.x:8080", "--expect-name", "x/a"]);
    assert_eq!(front.outcome, Outcome::Connected, "{front:?}");
    // Two endpoints: connections spread over both.
    let probes: Vec<ProbeSpec> = (0..30)
        .map(|i| ProbeSpec {
            id: i.to_string(),
            kind: ProbeKind::Connect,
            target: "10.96.1.2".into(),
            port: 80,
            protocol: None,
            timeout_ms: 2000,
            expect_name: None,
            query: None,
        })
        .collect();
    let names: std::collections::BTreeSet<String> = batch(lab, "z/a", probes)
        .into_iter()
        .map(|r| r.name.unwrap_or_else(|| format!("{:?}", r.outcome)))
        .collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["y/web-1", "y/web-2"]);
    // No endpoints: refused at once.
    let nobody = from_pod(lab, "z/a", &["connect", "10.96.1.3:80", "--timeout", "2s"]);
    assert_eq!(nobody.outcome, Outcome::Refused, "{nobody:?}");
    assert!(nobody.ms < 1000, "{nobody:?}");
    // A pod address no pod has: the node answers, as a CNI's node does.
    let nowhere = from_pod(lab, "z/a", &["connect", "10.244.250.250:80", "--timeout", "2s"]);
    assert_eq!(nowhere.outcome, Outcome::Unreachable, "{nowhere:?}");
    assert!(nowhere.message.as_deref().is_some_and(|m| m.contains("No route to host")), "{nowhere:?}");
}

/// Starts `probes` as one `netpol-probe batch` in `pod`, all at once.
fn start_batch(lab: &Lab, pod: &str, probes: Vec<ProbeSpec>) -> std::process::Child {
    // The command line a probe pod's container runs, from the pod builder, with the plan on
    // standard input instead of a ConfigMap.
    let args = netpol_verify::manifest::batch_args(
        netpol_verify::manifest::Work::Batch { probes: probes.len() },
        "-",
    )
    .expect("a batch");
    let plan = serde_json::to_string(&Plan { schema: 1, probes }).expect("plan");
    let netns = lab.pod_netns(&ObjectKey::parse(pod).expect("key")).expect("netns");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(probe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("batch starts");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), plan.as_bytes()).expect("plan written");
    drop(child.stdin.take());
    child
}

/// A batch's results (its summary line left out).
fn results(child: std::process::Child) -> Vec<ProbeResult> {
    let output = child.wait_with_output().expect("batch ends");
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Runs `probes` as one batch from `pod`; the results.
fn batch(lab: &Lab, pod: &str, probes: Vec<ProbeSpec>) -> Vec<ProbeResult> {
    results(start_batch(lab, pod, probes))
}

fn spec(name: &str) -> LabSpec {
    LabSpec {
        name: Some(name.into()),
        cni: CniMode::Enforcing,
        enforce_delay: Duration::ZERO,
        nodes: 1,
        probe: probe(),
        verify: verify(),
        api_server: None,
    }
}

#[test]
fn a_name_is_claimed_once_and_labs_with_similar_names_stay_apart() {
    let name = unique_name();
    let _guard = DownOnDrop(name.clone());
    // Two `lab up`s race for one name: one wins, and the loser removes nothing of it.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || Lab::up(&spec(&name), &snapshot("")).map(|(lab, _)| lab))
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|r| r.join().expect("no panic")).collect();
    let winners: Vec<&Lab> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let loser = results.iter().find_map(|r| r.as_ref().err()).expect("a loser");
    assert!(loser.to_string().contains("already exists"), "{loser}");
    let winner = winners[0];
    assert_eq!(Lab::list().into_iter().find(|l| l.name == name).map(|l| l.status).as_deref(), Some("up"));
    let reached = from_pod(winner, "x/a", &["connect", "10.244.2.2:80", "--expect-name", "y/b"]);
    assert_eq!(reached.outcome, Outcome::Connected, "the winner's lab is whole: {reached:?}");

    // Lab NAME-b's namespaces (npl-NAME-b-p0, ...) are not lab NAME's.
    let similar = format!("{name}-b");
    let _guard_b = DownOnDrop(similar.clone());
    Lab::up(&spec(&similar), &snapshot("")).expect("up");
    let before = leftovers(&similar);
    Lab::down(&name).expect("down");
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert_eq!(leftovers(&similar), before, "the other lab is untouched");
}

#[test]
fn changes_from_two_handles_are_both_kept_and_indexes_never_reused() {
    let lab = up("", CniMode::Enforcing, Duration::ZERO);
    let name = lab.lab.state.name.clone();
    // Two handles on one lab, as two processes would have.
    let (mut first, mut second) = (Lab::open(&name).expect("opens"), Lab::open(&name).expect("opens"));
    let pod = |name: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "x", "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}
        }))
        .expect("pod")
    };
    let one = first.add_pod(pod("one")).expect("added");
    let two = second.add_pod(pod("two")).expect("added (the second handle's record was stale)");
    assert_eq!((one.index, two.index), (10, 11));
    let record = Lab::open(&name).expect("opens");
    assert!(["one", "two"].iter().all(|n| record.state.pods.iter().any(|p| p.key.name == *n)), "both kept");
    assert!(first.remove_pod(&one.key).expect("removed"));
    let three = first.add_pod(pod("three")).expect("added");
    assert_eq!(three.index, 12, "a removed pod's index is not given again");
    // The new pod is ready only once its own server listens, and answers as itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.pod_ready(&three.key) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let target = format!("{}:80", three.ip);
    let reached = from_pod(&first, "y/a", &["connect", &target, "--expect-name", "x/three"]);
    assert_eq!(reached.outcome, Outcome::Connected, "{reached:?}");

    // A lab removed meanwhile is not brought back by a change.
    Lab::down(&name).expect("down");
    let deny: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}
    }))
    .expect("policy");
    let err = second.add_policy(deny).expect_err("the lab is gone");
    assert!(err.to_string().contains(&format!("cannot lock lab {name}")), "{err}");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn down_sweeps_resolv_conf_directories_whose_namespace_is_gone() {
    let _one = ABANDONING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = unique_name();
    let orphan = std::path::Path::new("/etc/netns").join(state::pod_netns(&name, 3));
    std::fs::create_dir_all(&orphan).expect("mkdir");
    std::fs::write(orphan.join("resolv.conf"), "nameserver 10.96.0.10\n").expect("write");
    let _guard = DownOnDrop(name.clone());
    let listed = Lab::list().into_iter().find(|l| l.name == name).map(|l| l.status);
    assert_eq!(listed.as_deref(), Some("leftover"));
    Lab::down(&name).expect("down");
    assert!(!orphan.exists());
    assert_eq!(leftovers(&name), Vec::<String>::new());
}
