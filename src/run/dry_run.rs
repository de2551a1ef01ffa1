//! `run --dry-run`: the objects a run would create, printed instead of created.

use std::net::{IpAddr, Ipv4Addr};

use super::{RunOptions, canary, layout, tool_namespace};
use crate::cluster::{ProbePod, Role};
use crate::manifest::{
    Manifest, PodOptions, Turn, Work, namespace, plan_config_map, policy, probe_pod, prober_pod,
};
use crate::model::{ObjectKey, Snapshot};
use crate::scenario::Body;

/// A plan's ConfigMap as the dry run shows it: the probes are written at run time.
const EMPTY_PLAN: &str = "{\"schema\":1,\"probes\":[]}";

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
    // A prober's pod for `turn`, and the ConfigMap with its plan.
    let mut prober = |prober: &ProbePod, turn: Turn, work: Work, what: String| {
        let pod = prober_pod(prober, turn);
        config_maps.push(Manifest::new(
            format!(
                "the plan of {}: its probes are written at run time, once the servers have addresses",
                pod.key
            ),
            &plan_config_map(&pod, EMPTY_PLAN),
        ));
        probe_pods.push(Manifest::new(what, &probe_pod(&pod, pods, work, false)));
    };
    let in_scope = options.scope.apply(snapshot.namespaces());
    let layout = layout::layout(snapshot, &in_scope, options)?;
    let once = Work::Batch { probes: 0 };
    let mut servers = Vec::new();
    if let Some(control) = layout.pods.iter().find(|p| p.role == Role::Control) {
        let tool = tool_namespace(run_id);
        namespaces
            .push(Manifest::new("the run's own namespace, for its control pod", &namespace(&tool, run_id)));
        servers.push(Manifest::new(
            "the control pod: a vantage point of the tool's own, to show targets alive",
            &probe_pod(control, pods, Work::Serve, false),
        ));
        // Its probes run from a batch pod with its labels.
        prober(control, Turn::Batch(0), once, "the control pod's batch: runs its plan once and exits".into());
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
        servers.push(Manifest::new(what, &probe_pod(pod, pods, Work::Serve, mimic)));
    }
    for client in &layout.clients {
        let ns = &client.key.namespace;
        let node = client.node.as_ref().map(|n| format!(" (on node {n})")).unwrap_or_default();
        let what = format!("probe client in {ns}{node}: runs its plan once and exits; its log is the result");
        prober(client, Turn::Batch(0), once, what);
    }
    if let Some(options_of_canary) = options.scenarios.iter().find_map(|s| match &s.body {
        Body::Canary(o) => Some(o),
        Body::Groups(_) => None,
    }) {
        // NB: a documentation address (RFC 5737) stands in for a pod address known only at run time.
        let placeholder = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let (names, canary_pods, canary_policies) = canary::objects(run_id, placeholder);
        for name in names {
            namespaces.push(Manifest::new(
                "a scratch namespace of the enforcement canary",
                &namespace(&name, run_id),
            ));
        }
        for pod in canary_pods.iter().filter(|p| p.role != Role::Client) {
            let role = pod.labels.get("netpol-verify.io/canary").cloned().unwrap_or_default();
            servers.push(Manifest::new(
                format!("canary pod: {role}"),
                &probe_pod(pod, pods, Work::Serve, false),
            ));
        }
        let rounds = Work::Rounds {
            probes: 0,
            every: canary::POLL_INTERVAL,
            total: canary::first_step(options_of_canary, options.pod_timeout),
        };
        for pod in canary::probers(run_id) {
            let role = pod.labels.get("netpol-verify.io/canary").cloned().unwrap_or_default();
            let what = format!(
                "canary prober ({role}): a pod per canary step it takes part in ({}-p0, -p1, ...), running its plan every {} ms for the step (the first step's length shown)",
                pod.key.name,
                canary::POLL_INTERVAL.as_millis()
            );
            prober(&pod, Turn::Poll(0), rounds, what);
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
    if options.control_policies {
        for control in control_policies(snapshot, &layout, options) {
            let comment = format!("control policy, selecting only {}: {}", control.selects, control.why);
            policies.push(Manifest::new(comment, &policy(&control.policy, run_id)));
        }
    }
    Ok(namespaces.into_iter().chain(config_maps).chain(servers).chain(probe_pods).chain(policies).collect())
}

/// The control policies the run would add, planned as the run plans them, with documentation
/// addresses (RFC 5737) standing in for the probe pods' (only ipBlock rules, whose match of pod
/// addresses the spec leaves to the CNI anyway, could decide otherwise at run time).
fn control_policies(
    snapshot: &Snapshot,
    layout: &layout::Layout,
    options: &RunOptions,
) -> Vec<super::controls::ControlPolicy> {
    let documentation = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
    let addresses =
        documentation.iter().flat_map(|&[a, b, c]| (1..=254).map(move |d| Ipv4Addr::new(a, b, c, d)));
    let mut addresses = addresses.map(IpAddr::V4);
    let pods: Vec<_> = layout
        .pods
        .iter()
        .chain(&layout.clients)
        .map(|pod| super::pod_object(pod, &addresses.next().into_iter().collect::<Vec<_>>()))
        .collect();
    let with_pods = snapshot.with_pods(pods);
    let Ok(engine) = crate::engine::Engine::new(&with_pods) else { return Vec::new() };
    let planned = super::plan::plan(&engine, &options.scenarios, &layout.deployment);
    super::controls::needed(&engine, &planned, &layout.deployment, &options.run_id)
}
