//! What the engine reads from a Pod, and the checks the API server makes on those fields.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ContainerPort as ApiContainerPort, Pod};

use super::FieldError;
use super::port::{self, ContainerPort, Protocol};
use crate::model::{NamespaceId, Snapshot};

/// What the engine needs to know about a pod.
#[derive(Debug, Clone)]
pub(crate) struct PodFacts {
    pub namespace: NamespaceId,
    /// `status.podIPs` (or `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub node: Option<String>,
    pub ports: Vec<ContainerPort>,
}

impl PodFacts {
    /// The pod's address in `family` (v4 or v6, as `like`), else its primary one.
    pub(crate) fn ip_like(&self, like: Option<IpAddr>) -> Option<IpAddr> {
        like.and_then(|like| self.ips.iter().copied().find(|ip| ip.is_ipv4() == like.is_ipv4()))
            .or_else(|| self.ips.first().copied())
    }
}

/// Validates the Pod fields the engine reads (IPs, container ports) as the API server would.
pub fn validate_pod(pod: &Pod) -> Result<(), FieldError> {
    if let Some(status) = &pod.status {
        if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
            parse_ip(ip, "status.podIP")?;
        }
        for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
            parse_ip(&ip.ip, &format!("status.podIPs[{i}].ip"))?;
        }
    }
    let Some(spec) = &pod.spec else { return Ok(()) };
    let containers = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    for (field, container) in containers.chain(init) {
        // NB: port names must be unique within a container; across containers the API server
        // only warns (kube-proxy's own manifests repeat them).
        let mut names = HashSet::new();
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let here = format!("{field}.ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                return Err(FieldError::new(
                    format!("{here}.containerPort"),
                    format!("{} must be between 1 and 65535, inclusive", port.container_port),
                ));
            }
            if let Some(protocol) = port.protocol.as_deref().filter(|p| !p.is_empty())
                && Protocol::from_api(protocol).is_none()
            {
                return Err(FieldError::new(
                    format!("{here}.protocol"),
                    format!("unsupported value {protocol:?}: must be \"TCP\", \"UDP\" or \"SCTP\""),
                ));
            }
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                port::validate_port_name(name, &format!("{here}.name"))?;
                if !names.insert(name) {
                    return Err(FieldError::new(
                        format!("{here}.name"),
                        format!("duplicate port name {name:?} in this container"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr, FieldError> {
    text.parse().map_err(|_| FieldError::new(field, format!("{text:?} is not an IP address")))
}

/// Reads what the engine needs from a pod. Unparsable IPs and out-of-range ports are skipped
/// here; the input layer rejects them with a proper error before this point.
pub(crate) fn pod_facts(snapshot: &Snapshot, pod: &Pod) -> PodFacts {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .and_then(|ns| snapshot.find_namespace(ns))
        .unwrap_or(NamespaceId(0));
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if let Some(primary) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
        ips.retain(|ip| *ip != primary);
        ips.insert(0, primary);
    }
    let spec = pod.spec.as_ref();
    let mut ports: Vec<ContainerPort> = spec
        .into_iter()
        .flat_map(|s| {
            let sidecars =
                s.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            s.containers.iter().chain(sidecars)
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(container_port)
        .collect();
    ports.sort();
    ports.dedup();
    PodFacts {
        namespace,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        node: spec.and_then(|s| s.node_name.clone()),
        ports,
    }
}

/// A declared port as the engine sees it. An empty protocol is TCP (the API server's default);
/// an empty name is no name.
fn container_port(port: &ApiContainerPort) -> Option<ContainerPort> {
    Some(ContainerPort {
        port: u16::try_from(port.container_port).ok().filter(|p| *p > 0)?,
        protocol: match port.protocol.as_deref() {
            None | Some("") => Protocol::Tcp,
            Some(text) => Protocol::from_api(text)?,
        },
        name: port.name.clone().filter(|n| !n.is_empty()),
    })
}
