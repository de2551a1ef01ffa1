//! Lab bring-up and tear-down times (`cargo bench --bench lab`; root). Figures and their machine:
//! docs/PERFORMANCE.md. Builds the upstream 3 × 3 grid and a 20-namespace grid (3 pods each)
//! five times each, with the enforcing CNI and the file's policies.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netpol_verify::fixtures::grid_yaml;
use netpol_verify::input::{Source, load};
use netpol_verify::lab::cni::CniMode;
use netpol_verify::lab::{Lab, LabSpec};

const POLICY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: NS}\nspec: {podSelector: {}}\n";

fn main() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_netpol-verify"));
    let probe = exe.with_file_name("netpol-probe");
    assert!(probe.is_file(), "build the workspace first (cargo build --workspace --profile bench)");
    for namespaces in [3usize, 20] {
        let names: Vec<String> = (0..namespaces).map(|i| format!("ns{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut text = grid_yaml(&names, &["a", "b", "c"]);
        for name in &names {
            text.push_str(&POLICY.replace("NS", name));
        }
        let snapshot = load(&[Source { name: "grid".into(), text }]).expect("valid").snapshot;
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for run in 0..5 {
            let spec = LabSpec {
                name: Some(format!("bench-{namespaces}-{run}")),
                cni: CniMode::Enforcing,
                enforce_delay: Duration::ZERO,
                nodes: 1,
                probe: probe.clone(),
                verify: exe.clone(),
                api_server: None,
            };
            let started = Instant::now();
            let (lab, _) = Lab::up(&spec, &snapshot).expect("up");
            ups.push(started.elapsed());
            let started = Instant::now();
            Lab::down(&lab.state.name).expect("down");
            downs.push(started.elapsed());
        }
        let range = |v: &[Duration]| {
            let ms: Vec<u128> = v.iter().map(Duration::as_millis).collect();
            format!("{}-{} ms", ms.iter().min().unwrap_or(&0), ms.iter().max().unwrap_or(&0))
        };
        println!(
            "{namespaces} namespaces x 3 pods (+ coredns): lab up {} (ready: every pod listening), lab down {}",
            range(&ups),
            range(&downs)
        );
    }
}
