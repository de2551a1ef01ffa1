//! The Kubernetes side as manifests: `run --dry-run` and `images`, and the manifests checked by
//! an independent validator against the Kubernetes OpenAPI schemas (`kubernetes-validate`
//! from PyPI, which .ci/run installs). No cluster and no root needed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the tool with no kubeconfig and no in-cluster account: a test never reaches a real
/// API server.
fn verify(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("a temporary directory");
    Command::new(env!("CARGO_BIN_EXE_netpol-verify"))
        .args(args)
        .env("KUBECONFIG", home.path().join("missing"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("netpol-verify runs")
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/examples/shop.yaml");

/// Validates a file strictly (unknown fields are errors); the validator's verdict and words.
fn validate(path: &std::path::Path) -> (bool, String) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate must be installed (pip install kubernetes-validate): {e}")
        });
    let words =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), words)
}

fn dry_run(extra: &[&str]) -> String {
    let output = verify(&[&["run", "--dry-run", "--from-file", EXAMPLE], extra].concat());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn dry_run_manifests_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let yaml = dry_run(&["--image-pull-secret", "mirror", "--tolerate-all-taints"]);
    let (valid, words) = validate(&write(&dir, "run.yaml", &yaml));
    assert!(valid, "{words}");
    // The tool's namespace; per namespace in scope (shop, monitoring) a plan, a server and a
    // client; the control pod, and its batch with its plan. The canary: 2 namespaces, 7 pods
    // that serve (6 servers and its control pod), a first poller pod with its plan for each of
    // its 6 probers (5 clients, the pod-start one among them, and the control pod), and its 7
    // policies. And one control policy: nothing may reach shop's server over UDP.
    assert_eq!(yaml.matches("\n---\n").count() + 1, 1 + 2 * 3 + 3 + 2 + 7 + 6 * 2 + 7 + 1, "{yaml}");
    assert_eq!(yaml.matches("kind: NetworkPolicy").count(), 7 + 1, "{yaml}");
    assert!(yaml.contains("name: nv-control-in-nv-server-"), "{yaml}");
    assert_eq!(yaml.matches("kind: ConfigMap").count(), 2 + 1 + 6, "{yaml}");
    assert!(yaml.contains("name: nv-canary-late-") && yaml.contains("-p0-plan"), "{yaml}");
    assert_eq!(yaml.matches("- --every").count(), 6, "the canary's pollers repeat their plan: {yaml}");
    let (valid, words) = validate(&write(&dir, "capability.yaml", &dry_run(&["--low-ports", "capability"])));
    assert!(valid, "{words}");
    // The validator is not a rubber stamp: a misspelt field fails it.
    let broken = yaml.replacen("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1);
    let (valid, words) = validate(&write(&dir, "broken.yaml", &broken));
    assert!(!valid, "a misspelt field passed: {words}");
}

#[test]
fn dry_run_shows_pods_a_careful_operator_would_create() {
    let yaml = dry_run(&["-s", "matrix", "--image", "registry.internal/netpol-probe:1"]);
    assert_eq!(
        yaml.matches("kind: Pod\n").count(),
        6,
        "control and its batch + 2 × (server, client): {yaml}"
    );
    for needle in [
        "runAsNonRoot: true",
        "runAsUser: 65534",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "type: RuntimeDefault",
        "automountServiceAccountToken: false",
        "name: net.ipv4.ip_unprivileged_port_start",
        "image: registry.internal/netpol-probe:1",
        "netpol-verify.io/run: ",
        "app.kubernetes.io/name: netpol-verify",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in {yaml}");
    }
    assert!(!yaml.contains("kube-system"), "system namespaces are out of scope by default");
}

#[test]
fn images_lists_what_to_mirror() {
    let output = verify(&["images"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.trim(), concat!("ghcr.io/netpol-verify/netpol-probe:", env!("CARGO_PKG_VERSION")));
    let output = verify(&["images", "--image", "registry.internal/netpol-probe:1"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "registry.internal/netpol-probe:1");
}

#[test]
fn a_dry_run_needs_objects_from_somewhere() {
    let output = verify(&["run", "--dry-run"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot configure a connection to the cluster"));
    let output = verify(&["cleanup"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--kubeconfig FILE and --context NAME"));
    let output = verify(&["run", "--from-file", EXAMPLE]);
    assert_eq!(output.status.code(), Some(2), "--from-file alone would probe nothing");
    let output = verify(&["run", "--dry-run", "--from-file", EXAMPLE, "-n", "typo"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("namespace typo does not exist"));
}

#[test]
fn the_documented_role_passes_the_kubernetes_schemas() {
    let (valid, words) = validate(&PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rbac.yaml")));
    assert!(valid, "{words}");
}

#[test]
fn the_documented_cronjob_passes_the_schemas_and_its_arguments_parse() {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cronjob.yaml"));
    let (valid, words) = validate(&path);
    assert!(valid, "{words}");
    // The container's arguments are ones the tool takes: the same run, dry, from a file.
    let text = std::fs::read_to_string(&path).expect("docs/cronjob.yaml");
    let args: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(args.first(), Some(&"run"), "{args:?}");
    let output = verify(&[&args[..], &["--dry-run", "--from-file", EXAMPLE]].concat());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let yaml = String::from_utf8_lossy(&output.stdout);
    assert!(yaml.contains("image: ghcr.io/netpol-verify/netpol-probe:0.1.0"), "{yaml}");
}

#[test]
fn workload_doubles_wear_the_workloads_labels_and_never_become_ready() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let yaml = dry_run(&["-s", "matrix", "--mimic-workloads"]);
    let (valid, words) = validate(&write(&dir, "mimic.yaml", &yaml));
    assert!(valid, "{words}");
    // shop's frontend, backend and db; monitoring's prometheus.
    assert_eq!(yaml.matches("never Ready").count(), 4, "{yaml}");
    let db = yaml.split("\n---\n").find(|doc| doc.contains("app: db\n")).expect("a double of db");
    assert!(db.contains("conditionType: netpol-verify.io/never-ready"), "{db}");
    assert!(db.contains("containerPort: 5432") && !db.contains("readinessProbe"), "{db}");
}

/// On a real cluster (docs/e2e-kind.md): `cargo test --test kubernetes -- --ignored` with the
/// kubeconfig's current context pointing at a throwaway cluster and `NETPOL_VERIFY_IMAGE` at a
/// probe image it can pull. The run must finish with a verdict and leave nothing behind.
#[test]
#[ignore = "needs a real cluster"]
fn a_real_cluster_run_judges_and_leaves_nothing_behind() {
    let image = std::env::var("NETPOL_VERIFY_IMAGE").unwrap_or_else(|_| "netpol-probe:dev".into());
    let output = Command::new(env!("CARGO_BIN_EXE_netpol-verify"))
        .args(["run", "--image", &image, "--output", "json"])
        .output()
        .expect("netpol-verify runs");
    let code = output.status.code();
    assert!(matches!(code, Some(0 | 1 | 3)), "exit {code:?}: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert!(report["checks"].as_array().is_some_and(|c| !c.is_empty()), "{report:#}");
    // The default set includes the canary: it ran, through pollers.
    assert!(report["canary"]["capabilities"].as_array().is_some_and(|c| c.len() >= 9), "{report:#}");
    let run = report["run"]["id"].as_str().expect("a run id").to_string();
    let cleanup = Command::new(env!("CARGO_BIN_EXE_netpol-verify"))
        .args(["cleanup", "--run", &run])
        .output()
        .expect("netpol-verify runs");
    assert_eq!(
        String::from_utf8_lossy(&cleanup.stdout).trim(),
        "removed 0 pods, 0 policies and 0 namespaces"
    );
}

#[test]
fn spread_pins_pods_to_two_nodes_in_valid_manifests_or_says_why_it_cannot() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nodes = ["kind-worker", "kind-worker2"].map(|name| {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/os: linux}}\nstatus:\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        )
    });
    let example = std::fs::read_to_string(EXAMPLE).expect("the example");
    let cluster = write(&dir, "cluster.yaml", &format!("{example}\n{}", nodes.concat()));
    let cluster = cluster.to_str().expect("a UTF-8 path");
    let output = verify(&["run", "--dry-run", "--from-file", cluster, "-s", "matrix", "--spread"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let yaml = String::from_utf8(output.stdout).expect("UTF-8");
    let (valid, words) = validate(&write(&dir, "spread.yaml", &yaml));
    assert!(valid, "{words}");
    // Per namespace (shop, monitoring) a server on kind-worker and clients on both nodes; the
    // control pod and its batch on kind-worker.
    assert_eq!(yaml.matches("- kind-worker\n").count(), 2 + 2 + 2, "{yaml}");
    assert_eq!(yaml.matches("- kind-worker2\n").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("key: metadata.name").count(), 8, "{yaml}");

    let output = verify(&["run", "--dry-run", "--from-file", EXAMPLE, "--spread"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--spread needs two nodes a probe pod can run on"), "{stderr}");
    // A lab has as many nodes as `lab up --nodes` gave it (tests/backend.rs spreads over one).
    let output = verify(&["run", "--lab", "nope", "--spread"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no lab named nope"));
}
