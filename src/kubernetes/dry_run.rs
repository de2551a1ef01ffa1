//! `run --dry-run`: the objects a run would create, printed instead of created.

use std::net::{IpAddr, Ipv4Addr};

use super::{Manifest, PodOptions, namespace, plan_config_map, policy, probe_pod};
use crate::cluster::Role;
use crate::model::{ObjectKey, Snapshot};
use crate::run::{RunOptions, canary, plan, tool_namespace};
use crate::scenario::Body;

/// Every object a run of `options` on `snapshot` would create, in creation order.
pub fn manifests(
    snapshot: &Snapshot,
    options: &RunOptions,
    pods: &PodOptions,
) -> Vec<Manifest> {
    let run_id = &options.run_id;
    let mut namespaces = Vec::new();
    let mut config_maps = Vec::new();
    let mut probe_pods = Vec::new();
    let mut policies = Vec::new();
    let in_scope = options.scope.apply(snapshot.namespaces());
    let has_groups = options.scenarios.iter().any(|s| matches!(s.body, Body::Groups(_)));
    let ports = plan::server_ports(&options.scenarios);
    if has_groups && !in_scope.is_empty() {
        let tool = tool_namespace(run_id);
        namespaces
            .push(Manifest::new("the run's own namespace, for its control pod", &namespace(&tool, run_id)));
        let control = crate::run::probe_pod(
            &ObjectKey::new(&tool, format!("nv-control-{run_id}")),
            Role::Control,
            run_id,
            &ports,
        );
        probe_pods.push(Manifest::new(
            "the control pod: a vantage point of the tool's own, to show targets alive",
            &probe_pod(&control, pods, false),
        ));
        // Its probes run from a batch pod with its labels, made like a client's.
        let mut control_batch = control.clone();
        control_batch.key.name = format!("{}-b0", control.key.name);
        control_batch.role = Role::Client;
        control_batch.ports = Vec::new();
        config_maps.push(Manifest::new(
            "the plan of the control pod's batch (written at run time)",
            &plan_config_map(&control_batch, "{\"schema\":1,\"probes\":[]}"),
        ));
        let mut batch_pod = probe_pod(&control_batch, pods, false);
        batch_pod.metadata.labels = Some(control.all_labels());
        probe_pods.push(Manifest::new("the control pod's batch: runs its plan once and exits", &batch_pod));
        for ns in &in_scope {
            let server = crate::run::probe_pod(
                &ObjectKey::new(ns, format!("nv-server-{run_id}")),
                Role::Server,
                run_id,
                &ports,
            );
            let client = crate::run::probe_pod(
                &ObjectKey::new(ns, format!("nv-client-{run_id}")),
                Role::Client,
                run_id,
                &[],
            );
            probe_pods.push(Manifest::new(format!("probe server in {ns}"), &probe_pod(&server, pods, false)));
            if options.mimic_workloads {
                let mut deployment = crate::run::plan::Deployment::default();
                for mimic in crate::run::mimics(snapshot, ns, run_id, &mut deployment) {
                    probe_pods.push(Manifest::new(
                        format!("a double of a workload in {ns}: its labels and ports, so its policies select it; never Ready"),
                        &probe_pod(&mimic, pods, true),
                    ));
                }
            }
            config_maps.push(Manifest::new(
                format!("the plan of {ns}'s client: its probes are written when the run starts, once the servers have addresses"),
                &plan_config_map(&client, "{\"schema\":1,\"probes\":[]}"),
            ));
            probe_pods.push(Manifest::new(
                format!("probe client in {ns}: runs its plan once and exits; its log is the result"),
                &probe_pod(&client, pods, false),
            ));
        }
    }
    if options.scenarios.iter().any(|s| matches!(s.body, Body::Canary(_))) {
        // NB: a documentation address (RFC 5737) stands in for a pod address known only at run time.
        let placeholder = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let (names, canary_pods, canary_policies) = canary::objects(run_id, placeholder);
        for name in names {
            namespaces.push(Manifest::new(
                "a scratch namespace of the enforcement canary",
                &namespace(&name, run_id),
            ));
        }
        for pod in canary_pods {
            let role = pod.labels.get("netpol-verify.io/canary").cloned().unwrap_or_default();
            let what = match pod.role {
                crate::cluster::Role::Client => format!(
                    "canary prober ({role}): a pod per canary step, named {}-pN, running its plan every 50 ms (batch --every 50ms --for ...) until the step is done",
                    pod.key.name
                ),
                _ => format!("canary pod: {role}"),
            };
            probe_pods.push(Manifest::new(what, &probe_pod(&pod, pods, false)));
        }
        for p in canary_policies {
            let comment = if p.metadata.name.as_deref() == Some("nv-canary-except") {
                "canary policy; 192.0.2.1/32 stands in for the target pod's address, known at run time"
            } else {
                "canary policy"
            };
            policies.push(Manifest::new(comment, &policy(&p, run_id)));
        }
    }
    namespaces.into_iter().chain(config_maps).chain(probe_pods).chain(policies).collect()
}
