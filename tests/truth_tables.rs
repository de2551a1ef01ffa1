//! Truth-table cases (tests/cases/*.yaml): each is a small cluster, its policies, and the
//! connections they allow, mostly transcribed from the upstream Kubernetes e2e NetworkPolicy
//! tests. Each case runs `netpol-verify plan --output json` (in process) and every cell of
//! every expected matrix must match. Format: tests/cases/README.md.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use clap::Parser;
use netpol_verify::cli::{Cli, Command};
use netpol_verify::fixtures::Grid;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    upstream: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    notes: Option<String>,
    /// `upstream`: prepend the x/y/z × a/b/c grid to `objects`.
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Row/column order when the cluster is not the grid.
    #[serde(default)]
    pods: Option<Vec<String>>,
    objects: String,
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    port: u16,
    protocol: String,
    matrix: String,
}

fn check_case(path: &Path, text: String) -> datatest_stable::Result<()> {
    let case: Case = serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let (objects, order) = match case.cluster.as_deref() {
        Some("upstream") => {
            let mut grid = Grid::upstream();
            for (ns, labels) in &case.namespace_labels {
                for (k, v) in labels {
                    grid = grid.namespace_label(ns, k, v);
                }
            }
            for (pod, labels) in &case.pod_labels {
                for (k, v) in labels {
                    grid = grid.pod_label(pod, k, v);
                }
            }
            let order = case.pods.clone().unwrap_or_else(|| grid.pod_keys());
            (format!("{}{}", grid.to_yaml(), case.objects), order)
        }
        Some(other) => return Err(format!("unknown cluster {other:?} (only `upstream`)").into()),
        None => {
            let order = case.pods.clone().ok_or("a case without `cluster: upstream` must list `pods`")?;
            (case.objects.clone(), order)
        }
    };

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, objects)?;
    let file = file.to_str().ok_or("temp path is not UTF-8")?;
    let cli = Cli::try_parse_from(["netpol-verify", "plan", "--from-file", file, "--output", "json"])?;
    let Command::Plan(args) = &cli.command else { return Err("not a plan command".into()) };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    netpol_verify::commands::plan(args, false, &mut out, &mut err)
        .map_err(|e| format!("{}: plan failed: {e}", case.name))?;
    let document: serde_json::Value = serde_json::from_slice(&out)?;
    let mut got: HashMap<(String, String, u16, String), String> = HashMap::new();
    for probe in document["probes"].as_array().ok_or("no probes array")? {
        let key = (
            probe["from"].as_str().unwrap_or_default().to_string(),
            probe["to"].as_str().unwrap_or_default().to_string(),
            probe["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or_default(),
            probe["protocol"].as_str().unwrap_or_default().to_string(),
        );
        got.insert(key, probe["expected"].as_str().unwrap_or_default().to_string());
    }

    let mut wrong = Vec::new();
    let mut cells = 0;
    for expect in &case.expect {
        let rows: Vec<Vec<&str>> = expect.matrix.lines().map(|l| l.split_whitespace().collect()).collect();
        if rows.len() != order.len() || rows.iter().any(|r| r.len() != order.len()) {
            return Err(format!(
                "{}: matrix for {}/{} is not {n}×{n}",
                case.name,
                expect.port,
                expect.protocol,
                n = order.len()
            )
            .into());
        }
        for (i, from) in order.iter().enumerate() {
            for (j, to) in order.iter().enumerate() {
                if i == j {
                    continue; // a pod to its own IP: implementation-defined, not planned
                }
                let want = match rows[i][j] {
                    "." => "allow",
                    "X" => "deny",
                    other => return Err(format!("{}: unknown cell {other:?}", case.name).into()),
                };
                cells += 1;
                let key = (from.clone(), to.clone(), expect.port, expect.protocol.clone());
                let have = got.get(&key).map(String::as_str).unwrap_or("(not planned)");
                if have != want {
                    wrong.push(format!(
                        "{from} -> {to} {}/{}: want {want}, got {have}",
                        expect.port, expect.protocol
                    ));
                }
            }
        }
    }
    if cells == 0 {
        return Err(format!("{}: the case checks no cells", case.name).into());
    }
    if !wrong.is_empty() {
        return Err(format!(
            "{}: {} of {cells} cells wrong:\n  {}",
            case.name,
            wrong.len(),
            wrong.join("\n  ")
        )
        .into());
    }
    Ok(())
}

datatest_stable::harness! {
    { test = check_case, root = "tests/cases", pattern = r"\.yaml$" },
}
