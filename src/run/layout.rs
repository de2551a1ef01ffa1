//! Where a run's probe pods go: per namespace in scope a server and a client (`--spread`: two
//! clients, one on the servers' node and one on another), the control pod in the tool's own
//! namespace, and with `--mimic-workloads` doubles of each workload. Pure: the run and
//! `--dry-run` lay pods out the same way.

use k8s_openapi::api::core::v1::Node;

use super::plan::{self, Deployment};
use super::{RunOptions, mimics, probe_pod, tool_namespace};
use crate::cluster::{ProbePod, Role};
use crate::model::{ObjectKey, Snapshot, name_of};

/// The run's probe pods.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub deployment: Deployment,
    /// Servers, doubles and the control pod: created and waited for before any probe.
    pub pods: Vec<ProbePod>,
    /// Clients: started by their first batch.
    pub clients: Vec<ProbePod>,
    /// `--spread`: the servers' node and the other clients' node.
    pub spread: Option<(String, String)>,
}

/// Lays out the pods of a run of `options` over `namespaces` (already scoped) of `snapshot`.
/// Fails only for `--spread` without two nodes to spread over.
pub fn layout(snapshot: &Snapshot, namespaces: &[String], options: &RunOptions) -> Result<Layout, String> {
    let mut layout = Layout::default();
    layout.deployment.namespaces = namespaces.to_vec();
    let has_groups = options.scenarios.iter().any(|s| matches!(s.body, crate::scenario::Body::Groups(_)));
    if !has_groups || namespaces.is_empty() {
        return Ok(layout);
    }
    let spread = match options.spread {
        Some(tolerate_taints) => Some(spread_nodes(snapshot.nodes(), tolerate_taints)?),
        None => None,
    };
    let on = |mut pod: ProbePod, node: Option<&String>| {
        pod.node = node.cloned();
        pod
    };
    let servers_node = spread.as_ref().map(|(a, _)| a);
    let run_id = &options.run_id;
    let ports = plan::server_ports(&options.scenarios);
    let control = ObjectKey::new(tool_namespace(run_id), format!("nv-control-{run_id}"));
    layout.pods.push(on(probe_pod(&control, Role::Control, run_id, &ports), servers_node));
    layout.deployment.control = Some(control);
    for ns in namespaces {
        let server = ObjectKey::new(ns, format!("nv-server-{run_id}"));
        layout.pods.push(on(probe_pod(&server, Role::Server, run_id, &ports), servers_node));
        layout.deployment.servers.insert(ns.clone(), server);
        let clients = match &spread {
            None => vec![(format!("nv-client-{run_id}"), None)],
            Some((same, other)) => vec![
                (format!("nv-client-samenode-{run_id}"), Some(same)),
                (format!("nv-client-othernode-{run_id}"), Some(other)),
            ],
        };
        for (name, node) in clients {
            let client = ObjectKey::new(ns, name);
            layout.clients.push(on(probe_pod(&client, Role::Client, run_id, &[]), node));
            layout.deployment.clients.push((ns.clone(), client));
        }
        if options.mimic_workloads {
            let doubles = mimics(snapshot, ns, run_id, &mut layout.deployment);
            layout.pods.extend(doubles.into_iter().map(|d| on(d, servers_node)));
        }
    }
    layout.spread = spread;
    Ok(layout)
}

/// `--spread`: the first two nodes (by name) a probe pod can be scheduled on: Ready, not
/// cordoned, Linux, and, unless `tolerate_taints`, without a NoSchedule or NoExecute taint.
pub fn spread_nodes(nodes: &[Node], tolerate_taints: bool) -> Result<(String, String), String> {
    let mut fit: Vec<&str> = nodes
        .iter()
        .filter(|node| {
            let spec = node.spec.as_ref();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
            let linux = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/os"))
                .is_none_or(|os| os == "linux");
            let repels = spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")));
            ready && !cordoned && linux && (tolerate_taints || !repels)
        })
        .map(|node| name_of(&node.metadata))
        .collect();
    fit.sort_unstable();
    match fit.as_slice() {
        [first, second, ..] => Ok((first.to_string(), second.to_string())),
        _ => {
            let how_many = match fit.first() {
                Some(only) => format!("only {only} fits"),
                None if nodes.is_empty() => {
                    "no node could be read (listing nodes needs `list nodes`; the lab is a single node)"
                        .to_string()
                }
                None => "none fits".to_string(),
            };
            let taints = if tolerate_taints {
                ""
            } else {
                ", without NoSchedule/NoExecute taints (or pass --tolerate-all-taints)"
            };
            Err(format!(
                "--spread needs two nodes a probe pod can run on (Ready, schedulable, Linux{taints}); {how_many} of {} nodes",
                nodes.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut object = serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                object.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(object).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spread_takes_the_first_two_nodes_a_probe_pod_can_run_on() {
        let nodes = [
            node("c-worker", serde_json::json!({})),
            node(
                "a-control-plane",
                serde_json::json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
            node("b-cordoned", serde_json::json!({"spec": {"unschedulable": true}})),
            node(
                "b-notready",
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            node(
                "b-windows",
                serde_json::json!({"metadata": {"name": "b-windows", "labels": {"kubernetes.io/os": "windows"}}}),
            ),
            node(
                "d-worker",
                serde_json::json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
            ),
        ];
        assert_eq!(spread_nodes(&nodes, false), Ok(("c-worker".into(), "d-worker".into())));
        assert_eq!(spread_nodes(&nodes, true), Ok(("a-control-plane".into(), "c-worker".into())));
        let one = spread_nodes(&nodes[..3], false).expect_err("one worker");
        assert!(
            one.contains("only c-worker fits of 3 nodes") && one.contains("--tolerate-all-taints"),
            "{one}"
        );
        let none = spread_nodes(&[], false).expect_err("no nodes");
        assert!(none.contains("list nodes"), "{none}");
    }
}
