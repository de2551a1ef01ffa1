//! The `netpol-verify` binary end to end: output shapes, exit codes, and the one-line errors
//! bad input gets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::Parser;
use netpol_verify::cli::{Cli, Command as Sub, Output as Format};

const EXAMPLE: &str = "scenarios/examples/shop.yaml";

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netpol-verify"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn plan_prints_truth_tables_for_the_example() {
    let output = run(&["plan", "--from-file", EXAMPLE]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    insta::assert_snapshot!("shop_table", stdout(&output));
    assert_eq!(stderr(&output), "", "the example is complete: nothing to note");
}

#[test]
fn quiet_drops_the_notes_but_not_the_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = write_temp(
        dir.path(),
        "extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: shop}\n",
    );
    let extra = extra.to_str().expect("utf-8 path");
    let loud = run(&["plan", "--from-file", EXAMPLE, "--from-file", extra]);
    assert_eq!(
        stderr(&loud),
        "note: ignored 1 object(s) of other kinds (ConfigMap: 1); only Namespaces, Pods, Services, Nodes and NetworkPolicies matter here\n"
    );
    let quiet = run(&["-q", "plan", "--from-file", EXAMPLE, "--from-file", extra]);
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(stderr(&quiet), "");
    assert_eq!(stdout(&quiet), stdout(&loud));
}

#[test]
fn explain_tells_why_in_plain_words() {
    let output =
        run(&["plan", "-q", "--from-file", EXAMPLE, "--explain", "shop/frontend", "shop/db", "5432/TCP"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    insta::assert_snapshot!("shop_explain_denied", stdout(&output));
    let named =
        run(&["plan", "-q", "-f", EXAMPLE, "--explain", "monitoring/prometheus", "shop/backend", "metrics"]);
    assert_eq!(named.status.code(), Some(0), "{}", stderr(&named));
    insta::assert_snapshot!("shop_explain_named_port", stdout(&named));
}

#[test]
fn json_output_has_the_documented_shape() {
    let output = run(&["plan", "-q", "--from-file", EXAMPLE, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(doc["schema"], "netpol-verify/plan/v1");
    assert_eq!(doc["notes"], serde_json::json!([]));
    let probes = doc["probes"].as_array().expect("probes array");
    // 5 pods; each destination's declared ports, from the 4 other pods.
    let declared_ports = [
        2, /* coredns */
        1, /* prometheus */
        2, /* backend */
        1, /* db */
        1, /* frontend */
    ];
    assert_eq!(probes.len(), declared_ports.iter().sum::<usize>() * 4);
    for probe in probes {
        for key in ["from", "to"] {
            let text = probe[key].as_str().expect("string");
            assert_eq!(text.split('/').count(), 2, "{text}");
        }
        assert!(probe["port"].as_u64().is_some_and(|p| (1..=65535).contains(&p)));
        assert!(matches!(probe["protocol"].as_str(), Some("TCP" | "UDP" | "SCTP")));
        assert!(matches!(probe["expected"].as_str(), Some("allow" | "deny")));
        let because = probe["because"].as_array().expect("because array");
        assert!(because.len() >= 2 && because.iter().all(|b| b.is_string()));
    }
    let db = probes
        .iter()
        .find(|p| p["from"] == "shop/backend" && p["to"] == "shop/db")
        .expect("backend -> db is planned");
    assert_eq!(db["expected"], "allow");
    assert_eq!(db["port"], 5432);
    assert_eq!(db["port_name"], "postgres");
    assert_eq!(db["from_ip"], "10.244.1.11");
    assert_eq!(db["to_ip"], "10.244.1.12");
    assert_eq!(
        db["egress"],
        serde_json::json!({
            "outcome": "allowed",
            "isolated_by": ["shop/allow-dns", "shop/backend", "shop/default-deny"],
            "rule": {"policy": "shop/backend", "direction": "egress", "index": 0, "peer": 0, "port": 0, "via_ip_block": false}
        })
    );
    assert_eq!(
        db["because"][1],
        "ingress to shop/db: isolated by shop/db, shop/default-deny; allowed by shop/db ingress rule 0 (from[0], ports[0])"
    );
}

#[test]
fn explain_with_json_output_prints_that_one_probe() {
    let output = run(&[
        "plan",
        "-q",
        "-f",
        EXAMPLE,
        "-o",
        "json",
        "--explain",
        "shop/frontend",
        "shop/backend",
        "8080",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    let probes = doc["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0]["expected"], "allow");
    assert_eq!(probes[0]["port_name"], "http");
}

#[test]
fn objects_can_come_from_standard_input() {
    let mut child = bin()
        .args(["plan", "-q", "--from-file", "-", "--output", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE)).expect("example");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(doc["probes"].as_array().map(Vec::len), Some(28));
}

/// Every kind of bad input: exit status 2 and exactly one line on stderr, naming the problem.
#[test]
fn bad_input_gets_one_clear_line_and_exit_status_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = |spec: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}"
        )
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write_temp(dir.path(), "empty.yaml", ""), "empty.yaml: the file is empty"),
        (write_temp(dir.path(), "broken.yaml", "kind: Pod\nmetadata: {name: [\n"), "broken.yaml:"),
        (write_temp(dir.path(), "broken.json", "{\"kind\": \"Pod\",, }"), "broken.json:1:"),
        (
            write_temp(
                dir.path(),
                "cidr.yaml",
                &policy("  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/99}\n"),
            ),
            "cidr.yaml:9: document 1 (NetworkPolicy x/p): spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/99\" is not a valid CIDR",
        ),
        (
            write_temp(
                dir.path(),
                "except.yaml",
                &policy(
                    "  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/16\n        except: [10.9.0.0/24]\n",
                ),
            ),
            "except.yaml:11: document 1 (NetworkPolicy x/p): spec.ingress[0].from[0].ipBlock.except[0]: 10.9.0.0/24 must be a strict subset of cidr 10.0.0.0/16",
        ),
        (
            write_temp(
                dir.path(),
                "operator.yaml",
                &policy(
                    "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Matches, values: [a]}\n",
                ),
            ),
            "operator.yaml:9: document 1 (NetworkPolicy x/p): spec.podSelector.matchExpressions[0].operator: unknown operator \"Matches\"",
        ),
        (
            write_temp(
                dir.path(),
                "deserialize.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: http\n",
            ),
            "deserialize.yaml:8: document 1 (Pod x/a): spec.containers[0].ports[0].containerPort: invalid type: string \"http\", expected i32",
        ),
        (
            write_temp(dir.path(), "empty-peer.yaml", &policy("  ingress:\n  - from:\n    - {}\n")),
            "empty-peer.yaml:9: document 1 (NetworkPolicy x/p): spec.ingress[0].from[0]: must specify a peer",
        ),
        (dir.path().join("missing.yaml"), "cannot read "),
    ];
    for (path, expected) in cases {
        let path = path.to_str().expect("utf-8 path");
        let output = run(&["plan", "--from-file", path]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{path}: {err}");
        assert_eq!(err.lines().count(), 1, "{path}: one line, got {err:?}");
        let line = err.trim_end();
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains(expected), "{path}:\n  got:  {line}\n  want: …{expected}…");
        assert!(stdout(&output).is_empty(), "no partial output on error");
    }
}

#[test]
fn a_pod_in_a_missing_namespace_is_noted_and_planned() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ghost}\nspec: {containers: [{name: c, ports: [{containerPort: 80}]}]}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: ghost}\nspec: {containers: [{name: c}]}\n";
    let path = write_temp(dir.path(), "ghost.yaml", text);
    let output = run(&["plan", "-o", "json", "-f", path.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("note: namespace ghost is referenced but not in the input"));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(doc["probes"][0]["from"], "ghost/b");
}

#[test]
fn explain_rejects_unknown_pods_and_ports_with_exit_status_2() {
    let cases = [
        (
            vec!["shop/nope", "shop/db", "5432"],
            "pod shop/nope is not in the input (pods: kube-system/coredns, ",
        ),
        (vec!["shop", "shop/db", "5432"], "\"shop\" is not a pod reference: write namespace/name"),
        (vec!["shop/backend", "shop/db", "5432/ICMP"], "unknown protocol \"ICMP\""),
        (
            vec!["shop/backend", "shop/db", "dns"],
            "\"dns\" is neither a port number nor a port name shop/db declares",
        ),
        (vec!["shop/backend", "shop/db", "postgres/UDP"], "port postgres of shop/db is 5432/TCP, not UDP"),
        (vec!["shop/backend", "shop/db", "0"], "port 0 is not a port"),
    ];
    for (explain, expected) in cases {
        let mut args = vec!["plan", "-f", EXAMPLE, "--explain"];
        args.extend(explain.iter().copied());
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{explain:?}");
        assert!(stderr(&output).contains(expected), "{explain:?}: {}", stderr(&output));
    }
}

/// The command line, argument by argument (nextest's `test_argument_parsing` style).
#[test]
fn argument_parsing() {
    let ok: &[&[&str]] = &[
        &["plan", "--from-file", "a.yaml"],
        &["plan", "-f", "a.yaml", "-f", "b.json", "--output", "json"],
        &["plan", "-f", "-", "-o", "table"],
        &["-q", "plan", "-f", "a.yaml", "--explain", "x/a", "y/b", "80/TCP"],
        &["plan", "-f", "a.yaml", "--quiet"],
        &["lab", "up", "-f", "a.yaml"],
        &["lab", "up", "-f", "a.yaml", "--name", "demo", "--cni", "tcp-only", "--enforce-delay", "2s"],
        &["lab", "down", "demo"],
        &["lab", "down", "--all"],
        &["lab", "list"],
        &["lab", "exec", "demo", "x/a", "--", "netpol-probe", "connect", "10.244.1.2:80"],
    ];
    for args in ok {
        let cli = Cli::try_parse_from(std::iter::once("netpol-verify").chain(args.iter().copied()));
        assert!(cli.is_ok(), "{args:?}: {:?}", cli.err());
    }
    let cli =
        Cli::try_parse_from(["netpol-verify", "plan", "-f", "a", "-f", "b", "-o", "json"]).expect("valid");
    let Sub::Plan(args) = cli.command else { panic!("a plan command") };
    assert_eq!(args.from_file.len(), 2);
    assert_eq!(args.output, Format::Json);

    let bad: &[&[&str]] = &[
        &["plan"],                                            // --from-file is required
        &["plan", "-f", "a.yaml", "--output", "yaml"],        // no such format
        &["plan", "-f", "a.yaml", "--explain", "x/a", "y/b"], // three values
        &["check", "-f", "a.yaml"],                           // no such command
        &["lab", "up"],                                       // --from-file is required
        &["lab", "up", "-f", "a", "--cni", "calico"],         // no such mode
        &["lab", "up", "-f", "a", "--enforce-delay", "2h"],   // not a duration we take
        &["lab", "down"],                                     // a name or --all
        &["lab", "down", "demo", "--all"],                    // not both
        &["lab", "exec", "demo", "x/a"],                      // no command
    ];
    for args in bad {
        let cli = Cli::try_parse_from(std::iter::once("netpol-verify").chain(args.iter().copied()));
        assert!(cli.is_err(), "{args:?} should be rejected");
    }
    // Usage errors exit with status 2, like every other could-not-run.
    assert_eq!(run(&["plan"]).status.code(), Some(2));
}

#[test]
fn the_project_keeps_at_least_forty_truth_table_cases() {
    let cases = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases"))
        .expect("tests/cases exists")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert!(cases >= 40, "only {cases} cases");
}
