//! Control policies: NetworkPolicies a run adds for its own duration, so that a check the
//! stored policies leave without a positive control gets one. Pure.
//!
//! Two gaps need them. A probe server that no stored policy lets any probe reach on a port the
//! node does not show alive (UDP: the kubelet's readiness probe is TCP) cannot be told from a
//! dead one; an ingress policy selecting only that server admits the control pod on those
//! ports. A client whose egress the policies deny everywhere (a deny-all-egress namespace)
//! cannot show it can send at all; an egress policy selecting only that client lets it reach
//! the control pod on 80/TCP.
//!
//! Each policy's podSelector requires the run's id, which only the run's probe pods carry, so
//! no workload pod is ever selected: an ingress policy selects the one server by its name
//! ([`crate::cluster::POD_LABEL`]), an egress one the namespace's clients of the run. A policy
//! is added only to a pod the stored policies already isolate in its direction, so it only
//! adds the control path: every other verdict stays as stored ([`unchanged`] checks the run's
//! own, the tests every workload pair). And they exist only after every check has been made
//! (see `run::control_phase`): a policy of the tool's that isolated a pod whose stored policy
//! the network ignores would otherwise make that pod's denials look enforced.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::check::{Check, PolicyAnswer};
use super::plan::{self, Deployment, Planned};
use crate::cluster::{POD_LABEL, ROLE_LABEL, RUN_LABEL, Role};
use crate::engine::{Direction, Engine, Protocol};
use crate::model::{NAMESPACE_NAME_LABEL, ObjectKey, PodId};

/// A NetworkPolicy the run adds, and what it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPolicy {
    pub policy: NetworkPolicy,
    /// The one probe pod it selects.
    pub selects: ObjectKey,
    pub direction: Direction,
    /// The pod at the other end: the control pod.
    pub peer: ObjectKey,
    /// `80/UDP`, ...
    pub ports: Vec<String>,
    pub why: String,
}

impl ControlPolicy {
    pub fn key(&self) -> ObjectKey {
        crate::model::key_of(&self.policy.metadata)
    }
}

/// The control policies the run needs, given what it planned with the stored policies alone.
pub fn needed(
    engine: &Engine<'_>,
    planned: &Planned,
    deployment: &Deployment,
    run_id: &str,
) -> Vec<ControlPolicy> {
    let Some(control) = deployment.control.as_ref() else { return Vec::new() };
    let snapshot = engine.snapshot();
    if snapshot.find_pod(control).is_none() {
        return Vec::new();
    }
    let mut policies = Vec::new();

    // Targets: the run's servers no planned probe may reach, on ports the node does not show.
    let mut silent: BTreeMap<PodId, BTreeSet<(u16, Protocol)>> = BTreeMap::new();
    for check in &planned.checks {
        let target = &check.probe.target;
        if target.dns {
            continue;
        }
        let Some(pod) = run_pod_at(engine, target.address, run_id, Role::Server) else { continue };
        let allowed = |c: &Check| c.policy == PolicyAnswer::Allow && c.implementation_defined.is_empty();
        let covered = planned.checks.iter().any(|c| c.probe.target == *target && allowed(c))
            || planned.controls.iter().any(|p| p.target == *target)
            || node_shows(engine, pod, deployment, target.port, target.protocol);
        let isolated = !engine.isolated_by(pod, Direction::Ingress).is_empty();
        if !covered && isolated {
            silent.entry(pod).or_default().insert((target.port, target.protocol));
        }
    }
    for (pod, ports) in silent {
        let key = snapshot.pod_key(pod);
        let ports: Vec<(u16, Protocol)> = ports.into_iter().collect();
        let why = format!(
            "no stored policy lets any probe reach {key} on {}: the control pod may, so a denial is not \
             mistaken for a dead server",
            port_list(&ports)
        );
        policies.push(control_policy(Direction::Ingress, &key, control, run_id, &ports, why));
    }

    // Clients: those whose every probe the policies deny; to the control pod's 80/TCP, the
    // port a source control tries.
    let control_port = 80;
    for client in plan::unbacked_clients(engine, deployment, &planned.checks) {
        let Some(id) = snapshot.find_pod(client) else { continue };
        if engine.isolated_by(id, Direction::Egress).is_empty() || !is_run_pod(engine, id, run_id) {
            continue;
        }
        let ports = [(control_port, Protocol::Tcp)];
        let why = format!(
            "the stored policies let {client} reach none of the run's pods or cluster DNS: it may reach the \
             control pod, so its denials are not mistaken for a client that cannot send"
        );
        policies.push(control_policy(Direction::Egress, client, control, run_id, &ports, why));
    }
    policies
}

/// Whether the run's own checks get the same answers with the control policies as without:
/// `before` as planned on the stored policies, `after` the same checks answered again with
/// the control policies added. The first difference, if any.
pub fn unchanged(before: &[Check], after: &[Check]) -> Result<(), String> {
    for (b, a) in before.iter().zip(after) {
        let same = b.policy == a.policy
            && b.egress == a.egress
            && b.ingress == a.ingress
            && b.implementation_defined == a.implementation_defined;
        if !same {
            return Err(format!(
                "{} → {} {}/{}: {:?} without them, {:?} with them",
                b.probe.client, b.to, b.probe.target.port, b.probe.target.protocol, b.policy, a.policy
            ));
        }
    }
    Ok(())
}

/// The run's pod of `role` at `address`.
fn run_pod_at(engine: &Engine<'_>, address: std::net::IpAddr, run_id: &str, role: Role) -> Option<PodId> {
    let snapshot = engine.snapshot();
    snapshot.pod_ids().find(|&id| {
        let labels = snapshot.pod(id).metadata.labels.as_ref();
        engine.pod_ip(id) == Some(address)
            && is_run_pod(engine, id, run_id)
            && labels.and_then(|l| l.get(ROLE_LABEL)).is_some_and(|r| r == role.as_str())
    })
}

/// Whether `pod` is one of run `run_id`'s probe pods, named by its pod label.
fn is_run_pod(engine: &Engine<'_>, pod: PodId, run_id: &str) -> bool {
    let object = engine.snapshot().pod(pod);
    let labels = object.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    crate::cluster::is_tools(labels)
        && label(RUN_LABEL) == Some(run_id)
        && label(POD_LABEL) == object.metadata.name.as_deref()
}

/// Whether the node's probe (the kubelet's readiness probe: a server's first TCP port; a
/// double of a workload is never Ready) shows `pod` alive on this port.
fn node_shows(
    engine: &Engine<'_>,
    pod: PodId,
    deployment: &Deployment,
    port: u16,
    protocol: Protocol,
) -> bool {
    let key = engine.snapshot().pod_key(pod);
    let double = deployment.mimics.iter().any(|(_, m)| *m == key);
    let readiness = engine.declared_ports(pod).iter().find(|p| p.protocol == Protocol::Tcp);
    !double && protocol == Protocol::Tcp && readiness.is_some_and(|p| p.port == port)
}

fn port_list(ports: &[(u16, Protocol)]) -> String {
    ports.iter().map(|(port, protocol)| format!("{port}/{protocol}")).collect::<Vec<_>>().join(", ")
}

/// Selects exactly probe pod `pod` of the run.
fn only(pod: &ObjectKey, run_id: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (RUN_LABEL.to_string(), run_id.to_string()),
            (POD_LABEL.to_string(), pod.name.clone()),
        ])),
        match_expressions: None,
    }
}

/// The run's control pods, by the tool's namespace, the run and the role: the control pod,
/// and the pod each of its batches runs in (on Kubernetes a pod of its own, `NAME-b0`, with
/// the control pod's labels but its own name).
fn control_peer(control: &ObjectKey, run_id: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                control.namespace.clone(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(run_pods(run_id, Role::Control)),
        ip_block: None,
    }
}

/// The run's probe pods of `role`.
fn run_pods(run_id: &str, role: Role) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (RUN_LABEL.to_string(), run_id.to_string()),
            (ROLE_LABEL.to_string(), role.as_str().to_string()),
        ])),
        match_expressions: None,
    }
}

fn policy_ports(ports: &[(u16, Protocol)]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|(port, protocol)| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(*port))),
            protocol: Some(protocol.as_str().to_string()),
            end_port: None,
        })
        .collect()
}

fn metadata(name: String, namespace: &str, run_id: &str) -> ObjectMeta {
    ObjectMeta {
        // Pod names are at most 63 characters; a policy name may have 253.
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(crate::manifest::labels(run_id)),
        ..ObjectMeta::default()
    }
}

/// The control policy of `direction` for probe pod `pod`: an ingress one selects that server
/// and admits the control pods; an egress one selects the run's clients in its namespace (the
/// client, and the pods its later batches run in: on Kubernetes each batch is a pod of its own,
/// `NAME-b1`, ..., and the controls run after the checks; the namespace's clients share their
/// labels, so the stored policies isolate them alike) and lets them reach the control pods.
fn control_policy(
    direction: Direction,
    pod: &ObjectKey,
    control: &ObjectKey,
    run_id: &str,
    ports: &[(u16, Protocol)],
    why: String,
) -> ControlPolicy {
    let (peers, ports_field) = (Some(vec![control_peer(control, run_id)]), Some(policy_ports(ports)));
    let (name, selector, ingress, egress) = match direction {
        Direction::Ingress => (
            format!("nv-control-in-{}", pod.name),
            only(pod, run_id),
            Some(vec![NetworkPolicyIngressRule { from: peers, ports: ports_field }]),
            None,
        ),
        Direction::Egress => (
            format!("nv-control-out-{}", pod.name),
            run_pods(run_id, Role::Client),
            None,
            Some(vec![NetworkPolicyEgressRule { to: peers, ports: ports_field }]),
        ),
    };
    let policy = NetworkPolicy {
        metadata: metadata(name, &pod.namespace, run_id),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec![direction.policy_type().into()]),
            ingress,
            egress,
        }),
    };
    ControlPolicy {
        policy,
        selects: pod.clone(),
        direction,
        peer: control.clone(),
        ports: ports.iter().map(|(p, proto)| format!("{p}/{proto}")).collect(),
        why,
    }
}

#[cfg(test)]
mod tests;
