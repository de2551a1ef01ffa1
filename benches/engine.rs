//! Engine benchmark (`cargo bench --bench engine`): a generated cluster of 1,000 namespaces,
//! 5,000 pods and 2,000 NetworkPolicies mixing every peer and port kind, read through the real
//! loader; then the full 5,000 × 5,000 verdict matrix on one port. Prints load, compile and
//! matrix times, verdicts per second, and the process's peak memory. Figures and the machine
//! they came from: docs/PERFORMANCE.md.
//!
//! Options (after `--`): `--namespaces N`, `--pods-per-namespace N`, `--policies-per-namespace N`.

use std::fmt::Write as _;
use std::time::Instant;

use netpol_verify::engine::{Engine, Protocol};
use netpol_verify::input::{Source, load};

struct Shape {
    namespaces: usize,
    pods: usize,
    policies: usize,
}

fn main() {
    let mut shape = Shape { namespaces: 1000, pods: 5, policies: 2 };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse().ok());
        match (args[i].as_str(), value) {
            ("--namespaces", Some(v)) => shape.namespaces = v,
            ("--pods-per-namespace", Some(v)) => shape.pods = v,
            ("--policies-per-namespace", Some(v)) => shape.policies = v,
            _ => {
                i += 1; // `cargo bench` passes `--bench`; ignore what we do not know.
                continue;
            }
        }
        i += 2;
    }

    let started = Instant::now();
    let text = generate(&shape);
    let generated = started.elapsed();

    let started = Instant::now();
    let loaded = load(&[Source { name: "generated".into(), text }]).expect("the generated cluster is valid");
    let load_time = started.elapsed();
    let snapshot = loaded.snapshot;

    let started = Instant::now();
    let engine = Engine::new(&snapshot).expect("the generated policies are valid");
    let compile_time = started.elapsed();

    let pods: Vec<_> = snapshot.pod_ids().collect();
    let verdicts = pods.len() * pods.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let started = Instant::now();
    let allowed_single = count_allowed(&engine, &pods, &pods);
    let single = started.elapsed();

    let started = Instant::now();
    let chunk = pods.len().div_ceil(threads);
    let allowed_parallel: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .chunks(chunk)
            .map(|rows| {
                let (engine, pods) = (&engine, &pods);
                scope.spawn(move || count_allowed(engine, rows, pods))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    let parallel = started.elapsed();
    assert_eq!(allowed_single, allowed_parallel);

    println!(
        "cluster: {} namespaces, {} pods, {} policies",
        snapshot.namespaces().len(),
        snapshot.pods().len(),
        snapshot.policies().len()
    );
    println!("generate YAML:        {:>8.3} s", generated.as_secs_f64());
    println!("load (parse+validate): {:>7.3} s", load_time.as_secs_f64());
    println!("engine compile:       {:>8.3} s", compile_time.as_secs_f64());
    println!(
        "matrix 80/TCP, 1 thread:  {verdicts} verdicts in {:.3} s = {:.1} M verdicts/s ({allowed_single} allowed)",
        single.as_secs_f64(),
        verdicts as f64 / single.as_secs_f64() / 1e6
    );
    println!(
        "matrix 80/TCP, {threads} threads: {verdicts} verdicts in {:.3} s = {:.1} M verdicts/s",
        parallel.as_secs_f64(),
        verdicts as f64 / parallel.as_secs_f64() / 1e6
    );
    println!(
        "load + compile + matrix (1 thread): {:.3} s",
        (load_time + compile_time + single).as_secs_f64()
    );
    match peak_memory_kib() {
        Some(kib) => println!("peak memory (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak memory: unavailable (no /proc/self/status)"),
    }
}

fn count_allowed(
    engine: &Engine<'_>,
    rows: &[netpol_verify::model::PodId],
    columns: &[netpol_verify::model::PodId],
) -> usize {
    let mut allowed = 0;
    for &from in rows {
        for &to in columns {
            allowed += usize::from(engine.verdict(from, to, 80, Protocol::Tcp).allowed);
        }
    }
    allowed
}

fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The generated cluster. Namespace `n` has labels `team`, `env`; its pods have `app`, `tier`
/// and (some) `version`, and declare http/80, api/8080, metrics/9090 over TCP and dns/53 over
/// UDP. Policies cycle through ten shapes that together use every peer kind (podSelector,
/// namespaceSelector, both, ipBlock with except, empty and missing peer lists), every port kind
/// (number, name, endPort range, protocol only, none) and every selector operator.
fn generate(shape: &Shape) -> String {
    let mut out = String::with_capacity(shape.namespaces * (shape.pods + shape.policies) * 700);
    let envs = ["prod", "staging", "dev"];
    let tiers = ["web", "api", "db"];
    for n in 0..shape.namespaces {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{n}\n  labels: {{team: t{}, env: {}}}\n",
            n % 20,
            envs[n % 3]
        );
        for p in 0..shape.pods {
            let version = if p % 2 == 0 { ", version: v1" } else { "" };
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod{p}\n  namespace: ns{n}\n  \
                 labels: {{app: app{p}, tier: {}{version}}}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports:\n    \
                 - {{name: http, containerPort: 80}}\n    - {{name: api, containerPort: 8080}}\n    \
                 - {{name: metrics, containerPort: 9090}}\n    - {{name: dns, containerPort: 53, protocol: UDP}}\n\
                 status:\n  phase: Running\n  podIP: 10.{}.{}.{}\n",
                tiers[p % 3],
                n / 250,
                n % 250,
                p + 1
            );
        }
        for k in 0..shape.policies {
            let shape_index = (n * shape.policies + k) % 10;
            let _ = write!(
                out,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p{k}\n  namespace: ns{n}\nspec:\n{}",
                policy_spec(shape_index, n)
            );
        }
    }
    out
}

fn policy_spec(shape: usize, n: usize) -> String {
    match shape {
        0 => "  podSelector: {}\n  policyTypes: [Ingress]\n".into(),
        1 => "  podSelector: {matchLabels: {tier: db}}\n  ingress:\n  - from:\n    - podSelector:\n        \
              matchExpressions: [{key: app, operator: In, values: [app1, app2]}]\n"
            .into(),
        2 => format!(
            "  podSelector: {{matchLabels: {{tier: api}}}}\n  ingress:\n  - from:\n    - namespaceSelector: \
             {{matchLabels: {{team: t{}}}}}\n    ports: [{{port: 8080}}]\n",
            (n + 1) % 20
        ),
        3 => "  podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}\n  ingress:\n  - from:\n    \
              - namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}\n      \
              podSelector: {matchExpressions: [{key: tier, operator: Exists}]}\n    ports: [{port: http}]\n"
            .into(),
        4 => "  podSelector: {matchLabels: {app: app0}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    \
              - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports: [{port: 80, endPort: 90}]\n"
            .into(),
        5 => "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: \
              {matchLabels: {kubernetes.io/metadata.name: ns0}}\n      podSelector: {matchLabels: {app: app0}}\n    \
              ports: [{port: 53, protocol: UDP}]\n"
            .into(),
        6 => "  podSelector: {matchLabels: {tier: web}}\n  ingress:\n  - from: []\n    ports: [{protocol: SCTP}]\n".into(),
        7 => "  podSelector: {matchLabels: {tier: web}}\n  ingress:\n  - from:\n    \
              - podSelector: {matchExpressions: [{key: version, operator: DoesNotExist}]}\n    \
              - ipBlock: {cidr: 10.2.0.0/16}\n"
            .into(),
        8 => "  podSelector: {matchLabels: {tier: api}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    \
              - namespaceSelector: {}\n    ports: [{port: 9090}, {port: metrics}]\n"
            .into(),
        _ => format!(
            "  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - namespaceSelector: \
             {{matchLabels: {{team: t{}}}}}\n  egress:\n  - {{}}\n",
            n % 20
        ),
    }
}
