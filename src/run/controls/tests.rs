use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::input::{Source, load};
use crate::model::Snapshot;
use crate::run::{RunOptions, Scope, layout, pod_object};

const SHOP: &str = include_str!("../../../scenarios/examples/shop.yaml");
const GITOPS: &str = include_str!("../../../scenarios/examples/gitops.yaml");

/// A run over `text`'s cluster with the default scenarios and gitops: the cluster with the
/// run's probe pods in it (each at an address of its own), and where they are.
fn with_run(text: &str) -> (Snapshot, Deployment, RunOptions) {
    let loaded =
        load(&[Source { name: "cluster.yaml".into(), text: text.into() }]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = ["canary", "matrix", "dns", "metadata", "gitops"].map(String::from).to_vec();
    let options = RunOptions {
        run_id: "abc123".into(),
        scenarios: crate::scenario::resolve(&names).unwrap_or_else(|e| panic!("{e}")),
        scope: Scope::default(),
        probe_timeout: std::time::Duration::from_secs(1),
        pod_timeout: std::time::Duration::from_secs(1),
        sweep_after: std::time::Duration::from_secs(3600),
        mimic_workloads: true,
        spread: None,
        control_policies: true,
        control_settle: std::time::Duration::ZERO,
    };
    let namespaces = options.scope.apply(loaded.snapshot.namespaces());
    let laid = layout::layout(&loaded.snapshot, &namespaces, &options).unwrap_or_else(|e| panic!("{e}"));
    let pods = laid
        .pods
        .iter()
        .chain(&laid.clients)
        .enumerate()
        .map(|(i, pod)| {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250) as u8 + 1));
            pod_object(pod, &[ip])
        })
        .collect();
    (loaded.snapshot.with_pods(pods), laid.deployment, options)
}

fn needed_for(snapshot: &Snapshot, deployment: &Deployment, options: &RunOptions) -> Vec<ControlPolicy> {
    let engine = Engine::new(snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan::plan(&engine, &options.scenarios, deployment);
    needed(&engine, &planned, deployment, &options.run_id)
}

fn is_tool_pod(snapshot: &Snapshot, pod: PodId) -> bool {
    crate::cluster::is_tools(snapshot.pod(pod).metadata.labels.as_ref())
}

/// The proof the issue asks for, with the engine: on the example clusters, each control policy
/// selects exactly the probe pod it names, and no verdict between any two pods changes (the
/// workloads', the probe pods', either way round, on every declared port and 80/TCP, 80/UDP),
/// except that the control pod may now reach the servers it names, and the clients named may
/// reach it.
#[test]
fn control_policies_select_only_their_probe_pod_and_change_no_other_verdict() {
    for (name, text) in [("shop", SHOP), ("gitops", GITOPS)] {
        let (before, deployment, options) = with_run(text);
        let controls = needed_for(&before, &deployment, &options);
        assert!(!controls.is_empty(), "{name}: the example needs control policies");
        let after = before.with_policies(controls.iter().map(|c| c.policy.clone()).collect());
        let (old, new) = (
            Engine::new(&before).unwrap_or_else(|e| panic!("{e}")),
            Engine::new(&after).unwrap_or_else(|e| panic!("{e}")),
        );
        for control in &controls {
            let id = after.policies().iter().position(|p| crate::model::key_of(&p.metadata) == control.key());
            let id = crate::model::PolicyId(
                id.unwrap_or_else(|| panic!("{} is in the cluster", control.key())) as u32,
            );
            let selected: Vec<ObjectKey> = after
                .pod_ids()
                .filter(|&pod| new.isolated_by(pod, control.direction).contains(&id))
                .map(|pod| after.pod_key(pod))
                .collect();
            assert_eq!(
                selected,
                std::slice::from_ref(&control.selects),
                "{name}: {} selects only its pod",
                control.key()
            );
        }
        let control = deployment.control.clone().unwrap_or_else(|| panic!("a control pod"));
        let opened = |from: &ObjectKey, to: &ObjectKey, port: u16, protocol: Protocol| {
            controls.iter().any(|c| {
                let (f, t) = match c.direction {
                    Direction::Ingress => (&c.peer, &c.selects),
                    Direction::Egress => (&c.selects, &c.peer),
                };
                f == from && t == to && c.ports.contains(&format!("{port}/{protocol}"))
            })
        };
        let (mut compared, mut workload_pairs) = (0, 0);
        for from in before.pod_ids() {
            for to in before.pod_ids() {
                let (from_key, to_key) = (before.pod_key(from), before.pod_key(to));
                let (a, b) = (after.find_pod(&from_key), after.find_pod(&to_key));
                let (Some(a), Some(b)) = (a, b) else { panic!("{from_key} and {to_key} are in both") };
                let ports = old
                    .declared_ports(to)
                    .iter()
                    .map(|p| (p.port, p.protocol))
                    .chain([(80, Protocol::Tcp), (80, Protocol::Udp)]);
                for (port, protocol) in ports {
                    let was = old.verdict(from, to, port, protocol).allowed;
                    let is = new.verdict(a, b, port, protocol).allowed;
                    if opened(&from_key, &to_key, port, protocol) {
                        assert!(is, "{name}: {from_key} → {to_key} {port}/{protocol} is opened");
                    } else {
                        assert_eq!(was, is, "{name}: {from_key} → {to_key} {port}/{protocol} unchanged");
                    }
                    compared += 1;
                    if !is_tool_pod(&before, from) && !is_tool_pod(&before, to) {
                        workload_pairs += 1;
                    }
                }
            }
        }
        assert!(workload_pairs > 20 && compared > 500, "{name}: {workload_pairs} of {compared}");
        assert!(controls.iter().all(|c| c.peer == control));
    }
}

#[test]
fn the_gitops_example_gets_the_controls_its_inconclusive_checks_lacked() {
    let (snapshot, deployment, options) = with_run(GITOPS);
    let controls = needed_for(&snapshot, &deployment, &options);
    let rows: Vec<String> = controls
        .iter()
        .map(|c| format!("{} {} {}", c.key(), c.direction.field(), c.ports.join(",")))
        .collect();
    // payments may send nothing: its client gets a way to the control pod. The servers that no
    // stored policy lets any probe reach over UDP (argocd admits its own pods) admit the
    // control pod on 80/UDP; TCP 80 is the readiness port, which the node shows. The doubles
    // of workloads (never Ready) admit it on their ports.
    for expected in [
        "payments/nv-control-out-nv-client-abc123 egress 80/TCP",
        "apps/nv-control-in-nv-server-abc123 ingress 80/UDP",
        "flux-system/nv-control-in-nv-server-abc123 ingress 80/UDP",
        "payments/nv-control-in-nv-server-abc123 ingress 80/UDP",
    ] {
        assert!(rows.contains(&expected.to_string()), "{expected} in {rows:#?}");
    }
    assert!(!rows.iter().any(|r| r.starts_with("argocd/nv-control-in-nv-server")), "{rows:#?}");
    // Each control policy is a valid NetworkPolicy.
    for control in &controls {
        crate::engine::validate_policy(&control.policy).unwrap_or_else(|e| panic!("{}: {e}", control.key()));
    }
}

#[test]
fn a_check_the_control_policies_would_change_is_found() {
    let (snapshot, deployment, options) = with_run(GITOPS);
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let checks = plan::plan_checks(&engine, &options.scenarios, &deployment).checks;
    assert_eq!(unchanged(&checks, &checks), Ok(()));
    let mut changed = checks.clone();
    let first =
        changed.iter_mut().find(|c| c.policy == PolicyAnswer::Deny).unwrap_or_else(|| panic!("a denial"));
    first.policy = PolicyAnswer::Allow;
    let error = unchanged(&checks, &changed).expect_err("a change");
    assert!(error.contains("Deny without them, Allow with them"), "{error}");
}

#[test]
fn with_its_control_policies_the_run_plans_a_control_for_every_target_that_lacked_one() {
    for text in [SHOP, GITOPS] {
        let (snapshot, deployment, options) = with_run(text);
        let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
        let checks = plan::plan_checks(&engine, &options.scenarios, &deployment);
        let planned = plan::with_controls(&engine, &deployment, checks.clone());
        let controls = needed(&engine, &planned, &deployment, &options.run_id);
        let with = snapshot.with_policies(controls.iter().map(|c| c.policy.clone()).collect());
        let engine = Engine::new(&with).unwrap_or_else(|e| panic!("{e}"));
        let again = plan::with_controls(&engine, &deployment, checks);
        for control in &controls {
            let pod = with.find_pod(&control.selects).map(|id| engine.pod_ip(id));
            let probes: Vec<String> = again
                .controls
                .iter()
                .filter(|p| match control.direction {
                    Direction::Ingress => Some(Some(p.target.address)) == pod && p.client == control.peer,
                    Direction::Egress => p.client == control.selects,
                })
                .map(|p| format!("{}/{}", p.target.port, p.target.protocol))
                .collect();
            for port in &control.ports {
                assert!(
                    probes.contains(port),
                    "{}: a control probe on {port}, planned {probes:?}",
                    control.key()
                );
            }
        }
        assert_eq!(needed(&engine, &again, &deployment, &options.run_id).len(), 0, "nothing is left to add");
    }
}

#[test]
fn the_dry_run_prints_the_control_policies_the_run_would_add_and_none_without_them() {
    let loaded =
        load(&[Source { name: "gitops.yaml".into(), text: GITOPS.into() }]).unwrap_or_else(|e| panic!("{e}"));
    let (_, _, mut options) = with_run(GITOPS);
    options.mimic_workloads = false;
    let pods = crate::manifest::PodOptions::default();
    let names = |options: &RunOptions| -> Vec<String> {
        crate::run::dry_run::manifests(&loaded.snapshot, options, &pods)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|m| m.comment.starts_with("control policy"))
            .map(|m| {
                format!("{}/{}", m.object["metadata"]["namespace"], m.object["metadata"]["name"])
                    .replace('"', "")
            })
            .collect()
    };
    assert_eq!(
        names(&options),
        [
            "apps/nv-control-in-nv-server-abc123",
            "flux-system/nv-control-in-nv-server-abc123",
            "payments/nv-control-in-nv-server-abc123",
            "payments/nv-control-out-nv-client-abc123",
        ]
    );
    options.control_policies = false;
    assert_eq!(names(&options), Vec::<String>::new());
}
