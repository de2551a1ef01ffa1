//! `run --dry-run`: the objects a run would create, printed instead of created.

use std::net::{IpAddr, Ipv4Addr};

use super::{Manifest, PodOptions, namespace, plan_config_map, policy, probe_pod};
use crate::cluster::Role;
use crate::model::{ObjectKey, Snapshot};
use crate::run::{RunOptions, canary, layout, tool_namespace};
use crate::scenario::Body;

/// Every object a run of `options` on `snapshot` would create, in creation order; fails only
/// for `--spread` without two nodes to spread over.
pub fn manifests(
    snapshot: &Snapshot,
    options: &RunOptions,
    pods: &PodOptions,
) -> Result<Vec<Manifest>, String> {
    let run_id = &options.run_id;
    let mut namespaces = Vec::new();
    let mut config_maps = Vec::new();
    let mut probe_pods = Vec::new();
    let mut policies = Vec::new();
    let in_scope = options.scope.apply(snapshot.namespaces());
    let layout = layout::layout(snapshot, &in_scope, options)?;
    if let Some(control) = layout.pods.iter().find(|p| p.role == Role::Control) {
        let tool = tool_namespace(run_id);
        namespaces
            .push(Manifest::new("the run's own namespace, for its control pod", &namespace(&tool, run_id)));
        probe_pods.push(Manifest::new(
            "the control pod: a vantage point of the tool's own, to show targets alive",
            &probe_pod(control, pods, false),
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
    }
    let doubles: Vec<&ObjectKey> = layout.deployment.mimics.iter().map(|(_, key)| key).collect();
    for pod in layout.pods.iter().filter(|p| p.role == Role::Server) {
        let ns = &pod.key.namespace;
        let mimic = doubles.contains(&&pod.key);
        let what = if mimic {
            format!(
                "a double of a workload in {ns}: its labels and ports, so its policies select it; never Ready"
            )
        } else {
            format!("probe server in {ns}")
        };
        probe_pods.push(Manifest::new(what, &probe_pod(pod, pods, mimic)));
    }
    for client in &layout.clients {
        let ns = &client.key.namespace;
        let node = client.node.as_ref().map(|n| format!(" (on node {n})")).unwrap_or_default();
        config_maps.push(Manifest::new(
            format!(
                "the plan of {}: its probes are written when the run starts, once the servers have addresses",
                client.key
            ),
            &plan_config_map(client, "{\"schema\":1,\"probes\":[]}"),
        ));
        probe_pods.push(Manifest::new(
            format!("probe client in {ns}{node}: runs its plan once and exits; its log is the result"),
            &probe_pod(client, pods, false),
        ));
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
    Ok(namespaces.into_iter().chain(config_maps).chain(probe_pods).chain(policies).collect())
}
