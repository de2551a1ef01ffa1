//! `netpol-verify run` end to end on a lab (`cargo bench --bench run`; root): `lab run` as a
//! user runs it — the lab up with its API, the Kubernetes backend against that API (the same
//! code a real cluster gets), the lab down. Figures and their machine: docs/PERFORMANCE.md. A
//! lab of 20 namespaces (3 pods each, cluster DNS, the metadata service) with policies in every
//! namespace, the default scenario set (canary, matrix, dns, metadata), the enforcing CNI;
//! three runs, each phase timed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netpol_verify::fixtures::grid_yaml;
use netpol_verify::input::{Source, load};
use netpol_verify::kubernetes::{Connection, KubeCluster};
use netpol_verify::lab::cni::CniMode;
use netpol_verify::lab::{Lab, LabSpec};
use netpol_verify::manifest::PodOptions;
use netpol_verify::run::{RunOptions, Scope, new_run_id, progress, run};
use tokio_util::sync::CancellationToken;

/// Every namespace admits only itself; every other one also limits egress to itself and DNS.
const POLICIES: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace, namespace: NS}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
";
const EGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: NS}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {}}]
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
";

fn main() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_netpol-verify"));
    let probe = exe.with_file_name("netpol-probe");
    assert!(probe.is_file(), "build the workspace first (cargo build --workspace --profile bench)");
    let names: Vec<String> = (0..20).map(|i| format!("ns{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut text = grid_yaml(&names, &["a", "b", "c"]);
    for (i, name) in names.iter().enumerate() {
        text.push_str(&POLICIES.replace("NS", name));
        if i % 2 == 1 {
            text.push_str(&EGRESS.replace("NS", name));
        }
    }
    let snapshot = load(&[Source { name: "grid".into(), text }]).expect("valid").snapshot;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for attempt in 0..3 {
        let options = RunOptions {
            run_id: new_run_id(),
            scenarios: netpol_verify::scenario::resolve(&[]).expect("the default set"),
            scope: Scope::default(),
            probe_timeout: Duration::from_secs(2),
            pod_timeout: Duration::from_secs(120),
            sweep_after: Duration::from_secs(3600),
            mimic_workloads: false,
            spread: None,
            control_policies: true,
            control_settle: Duration::from_secs(2),
        };
        let spec = LabSpec {
            name: Some(format!("bench-run-{attempt}")),
            cni: CniMode::Enforcing,
            enforce_delay: Duration::ZERO,
            nodes: 1,
            probe: probe.clone(),
            verify: exe.clone(),
            api_server: None,
        };
        let started = Instant::now();
        let (lab, _) = Lab::up(&spec, &snapshot).expect("up");
        let kubeconfig = lab.start_api(&[]).expect("the lab's API");
        let up = started.elapsed();
        let name = lab.state.name.clone();
        let report = runtime
            .block_on(async {
                let connection = Connection { kubeconfig: Some(&kubeconfig), context: None };
                let cluster =
                    KubeCluster::connect(&connection, PodOptions::default()).await.expect("connects");
                run(&cluster, &options, &progress::Quiet, &CancellationToken::new()).await
            })
            .expect("the run");
        let ran = started.elapsed() - up;
        let before_down = Instant::now();
        Lab::down(&name).expect("down");
        let down = before_down.elapsed();
        let phases: Vec<String> =
            report.phases.iter().map(|(phase, d)| format!("{phase} {:.2} s", d.as_secs_f64())).collect();
        let counts: Vec<String> =
            report.counts().iter().filter(|(_, n)| **n > 0).map(|(v, n)| format!("{n} {v}")).collect();
        println!(
            "run {attempt}: {} checks ({}), exit {}: total {:.2} s = lab up (with its API) {:.2} s + run {:.2} s + lab down {:.2} s; run phases: {}",
            report.all_checks().count(),
            counts.join(", "),
            report.exit() as u8,
            (up + ran + down).as_secs_f64(),
            up.as_secs_f64(),
            ran.as_secs_f64(),
            down.as_secs_f64(),
            phases.join(", ")
        );
    }
}
