//! What a lab will build from a snapshot: pods and their addresses, cluster DNS, the Services
//! kube-proxy translates, DNS records. Pure: [`Topology::plan`] decides, `host` builds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::{Selector, SelectorExt};

use crate::model::{Note, ObjectKey, Snapshot, key_of};

/// Where pods live unless their objects say otherwise.
pub const DEFAULT_POD_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);
/// Where Services live unless their objects say otherwise.
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);
/// The kube-dns Service address when the objects have none.
pub const DEFAULT_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The cloud metadata service, as on every major cloud.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The address pods route through: link-local, answered by the node end of every pod link.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The domain of cluster names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// One pod the lab runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabPod {
    pub key: ObjectKey,
    /// Position in the lab: names its namespace, link and MAC addresses.
    pub index: usize,
    pub ip: Ipv4Addr,
    /// Ports `netpol-probe serve` listens on.
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// Runs the lab's DNS server (a kube-dns pod).
    pub dns: bool,
    /// The ports the DNS server listens on: what kube-dns sends to this pod (53 when nothing).
    pub dns_tcp: Vec<u16>,
    pub dns_udp: Vec<u16>,
}

/// One Service port as kube-proxy translates it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceNat {
    pub service: ObjectKey,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Pod address and port of every endpoint.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The plan of a lab.
#[derive(Debug, Clone)]
pub struct Topology {
    pub pods: Vec<LabPod>,
    pub namespaces: Vec<Namespace>,
    /// The pods' objects as the lab runs them: addresses filled in, DNS added when missing.
    pub pod_objects: Vec<Pod>,
    pub services: Vec<Service>,
    /// What pods route to the node: 10.244.0.0/16, and the /16 of any pod address outside it.
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Likewise for Services: 10.96.0.0/12, and the /16 of any cluster IP outside it.
    pub service_cidrs: Vec<Ipv4Net>,
    pub nat: Vec<ServiceNat>,
    pub dns_ip: Ipv4Addr,
    /// DNS names and their addresses (`name.` fully qualified).
    pub records: BTreeMap<String, Ipv4Addr>,
    pub notes: Vec<Note>,
}

/// Why a snapshot cannot become a lab.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The lab speaks IPv4 only.
    #[error("pod {pod} has only an IPv6 address ({ip}): the lab is IPv4-only; give it an IPv4 podIP or none")]
    Ipv6Only { pod: ObjectKey, ip: String },
    /// Two pods claim one address.
    #[error("pods {first} and {second} both have the IP {ip}")]
    DuplicateIp { first: ObjectKey, second: ObjectKey, ip: Ipv4Addr },
    /// No address left to allocate.
    #[error("no free address for pod {pod} in the lab's allocation range")]
    Exhausted { pod: ObjectKey },
    /// An address the lab cannot give a pod or a Service.
    #[error("{object} has the address {ip}, {why}: give it another address{hint}")]
    Unusable { object: String, ip: Ipv4Addr, why: String, hint: &'static str },
}

/// Addresses no pod or Service may have in the lab, and why.
const RESERVED: [(Ipv4Net, &str); 4] = [
    (Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8), "which is not a host address"),
    (Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8), "which is loopback"),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "which is link-local (the lab's node is 169.254.1.1, the metadata service 169.254.169.254)",
    ),
    (Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 3), "which is multicast or reserved"),
];

impl Topology {
    /// Plans the lab for `snapshot`.
    pub fn plan(snapshot: &Snapshot) -> Result<Topology, TopologyError> {
        let mut notes = Vec::new();
        let mut namespaces = snapshot.namespaces().to_vec();
        let mut pod_objects: Vec<Pod> = Vec::new();
        for pod in snapshot.pods() {
            let key = key_of(&pod.metadata);
            if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
                notes.push(Note(format!(
                    "lab: pod {key} uses the host network: not created (the lab has no host to share)"
                )));
                continue;
            }
            pod_objects.push(pod.clone());
        }
        let dns_label = |p: &Pod| {
            p.metadata.namespace.as_deref() == Some("kube-system")
                && p.metadata.labels.as_ref().and_then(|l| l.get("k8s-app")).map(String::as_str)
                    == Some("kube-dns")
        };
        if !pod_objects.iter().any(dns_label) {
            if !namespaces.iter().any(|n| n.metadata.name.as_deref() == Some("kube-system")) {
                namespaces.push(namespace("kube-system"));
            }
            pod_objects.push(coredns_pod());
            notes.push(Note(
                "lab: no kube-dns pod in the input: added kube-system/coredns to serve cluster DNS".into(),
            ));
        }

        let mut services = snapshot.services().to_vec();
        let kube_dns_key = ObjectKey::new("kube-system", "kube-dns");
        if !services.iter().any(|s| key_of(&s.metadata) == kube_dns_key) {
            services.push(kube_dns_service());
        }
        let kube_dns = services.iter().find(|s| key_of(&s.metadata) == kube_dns_key);

        // Addresses: the objects' own IPv4 ones first, then allocations for the rest.
        let mut used: BTreeMap<Ipv4Addr, ObjectKey> = BTreeMap::new();
        let mut ips: Vec<Option<Ipv4Addr>> = Vec::new();
        for pod in &pod_objects {
            let key = key_of(&pod.metadata);
            let addresses: Vec<IpAddr> = pod_addresses(pod);
            let v4 = addresses.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            });
            if v4.is_none()
                && let Some(v6) = addresses.first()
            {
                return Err(TopologyError::Ipv6Only { pod: key, ip: v6.to_string() });
            }
            if let Some(ip) = v4 {
                if addresses.len() > 1 {
                    notes.push(Note(format!(
                        "lab: pod {key}: only its IPv4 address {ip} is used (the lab is IPv4-only)"
                    )));
                }
                if let Some(first) = used.insert(ip, key.clone()) {
                    return Err(TopologyError::DuplicateIp { first, second: key, ip });
                }
            }
            ips.push(v4);
        }
        let mut free = allocation_range().filter(|ip| !used.contains_key(ip));
        let mut sctp_pods = Vec::new();
        let mut pods = Vec::new();
        for (index, (pod, ip)) in pod_objects.iter_mut().zip(ips).enumerate() {
            let key = key_of(&pod.metadata);
            let ip = match ip {
                Some(ip) => ip,
                None => free.next().ok_or_else(|| TopologyError::Exhausted { pod: key.clone() })?,
            };
            set_running(pod, ip);
            let dns = dns_label(pod);
            let (dns_tcp, dns_udp) = if dns { dns_ports(kube_dns, pod) } else { (Vec::new(), Vec::new()) };
            let (tcp, udp, sctp) = served_ports(pod, &dns_tcp, &dns_udp);
            if sctp {
                sctp_pods.push(key.to_string());
            }
            pods.push(LabPod {
                key,
                index,
                ip,
                tcp: tcp.into_iter().collect(),
                udp: udp.into_iter().collect(),
                dns,
                dns_tcp,
                dns_udp,
            });
        }

        if let Some(first) = sctp_pods.first() {
            notes.push(Note(format!(
                "lab: SCTP ports are not served (the probe speaks TCP and UDP): {} pod(s), e.g. {first}",
                sctp_pods.len()
            )));
        }
        let dns_ip = match kube_dns.and_then(cluster_ip) {
            Some(ip) => ip,
            None => {
                notes.push(Note(format!(
                    "lab: Service {kube_dns_key} has no IPv4 clusterIP: pods' resolv.conf names \
                     {DEFAULT_DNS_IP}, which nothing answers, so cluster DNS lookups fail"
                )));
                DEFAULT_DNS_IP
            }
        };
        let nat = service_nat(&services, &pod_objects, &pods, &mut notes);

        // The usual ranges first, so the error names the object that strays into the other's.
        check_addresses(&pods, &services, &[DEFAULT_POD_CIDR], &[DEFAULT_SERVICE_CIDR])?;
        let pod_cidrs = networks(DEFAULT_POD_CIDR, pods.iter().map(|p| p.ip));
        let service_cidrs = networks(DEFAULT_SERVICE_CIDR, services.iter().filter_map(cluster_ip));
        check_addresses(&pods, &services, &pod_cidrs, &service_cidrs)?;
        let records = records(&services, &pods);
        Ok(Topology {
            pods,
            namespaces,
            pod_objects,
            services,
            pod_cidrs,
            service_cidrs,
            nat,
            dns_ip,
            records,
            notes,
        })
    }
}

/// Where unaddressed pods get their IPs: the upper half of 10.244.0.0/16, away from the
/// addresses written objects usually use.
pub(crate) fn allocation_range() -> impl Iterator<Item = Ipv4Addr> {
    (128u32..=255)
        .flat_map(|third| (1u32..=254).map(move |fourth| Ipv4Addr::from(0x0af4_0000 | (third << 8) | fourth)))
}

/// `base`, and the /16 of every address outside what is listed so far.
fn networks(base: Ipv4Net, addresses: impl Iterator<Item = Ipv4Addr>) -> Vec<Ipv4Net> {
    let mut nets = vec![base];
    for ip in addresses {
        if !nets.iter().any(|net| net.contains(&ip)) {
            nets.push(Ipv4Net::new_assert(ip, 16).trunc());
        }
    }
    nets
}

/// Refuses pod and Service addresses the lab cannot give: reserved ones (the node and the
/// metadata service live in 169.254.0.0/16), and pods and Services in each other's ranges.
fn check_addresses(
    pods: &[LabPod],
    services: &[Service],
    pod_cidrs: &[Ipv4Net],
    service_cidrs: &[Ipv4Net],
) -> Result<(), TopologyError> {
    let objects = pods.iter().map(|p| (format!("pod {}", p.key), p.ip, service_cidrs, "Service", " or none"));
    let services = services.iter().filter_map(|s| {
        let ip = cluster_ip(s)?;
        Some((format!("Service {}", key_of(&s.metadata)), ip, pod_cidrs, "pod", ""))
    });
    for (object, ip, others, other, hint) in objects.chain(services) {
        let why = if let Some((net, why)) = RESERVED.iter().find(|(net, _)| net.contains(&ip)) {
            format!("{why} ({net})")
        } else if let Some(net) = others.iter().find(|net| net.contains(&ip)) {
            format!("inside the lab's {other} range {net}")
        } else {
            continue;
        };
        return Err(TopologyError::Unusable { object, ip, why, hint });
    }
    Ok(())
}

fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
        ips.push(ip);
    }
    for ip in status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten() {
        if let Ok(ip) = ip.ip.parse::<IpAddr>()
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips
}

pub(crate) fn set_running(pod: &mut Pod, ip: Ipv4Addr) {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some("Running".into());
    status.pod_ip = Some(ip.to_string());
    status.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() }]);
}

/// The TCP and UDP ports `netpol-probe serve` listens on for a pod (a DNS pod's DNS ports are
/// the DNS server's), and whether it declares SCTP ports (which are not served).
pub(crate) fn served_ports(pod: &Pod, dns_tcp: &[u16], dns_udp: &[u16]) -> (Vec<u16>, Vec<u16>, bool) {
    let (mut tcp, mut udp, mut sctp) = (BTreeSet::new(), BTreeSet::new(), false);
    for port in declared_ports(pod) {
        let Ok(number) = u16::try_from(port.container_port) else { continue };
        match port.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => {
                udp.insert(number);
            }
            "SCTP" => sctp = true,
            _ => {
                tcp.insert(number);
            }
        }
    }
    tcp.retain(|p| !dns_tcp.contains(p));
    udp.retain(|p| !dns_udp.contains(p));
    (tcp.into_iter().collect(), udp.into_iter().collect(), sctp)
}

/// The TCP and UDP ports a kube-dns pod's DNS server listens on: those the kube-dns Service
/// sends to it, or 53 when it sends none there (no such Service, or it does not select the pod).
fn dns_ports(kube_dns: Option<&Service>, pod: &Pod) -> (Vec<u16>, Vec<u16>) {
    let (mut tcp, mut udp) = (BTreeSet::new(), BTreeSet::new());
    let spec = kube_dns.and_then(|s| s.spec.as_ref());
    let selector = spec.and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty());
    if let (Some(spec), Some(selector)) = (spec, selector) {
        let selector: Selector = selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if selector.matches(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) {
            for port in spec.ports.iter().flatten() {
                let Some(target) = target_port(port, pod) else { continue };
                match port.protocol.as_deref().unwrap_or("TCP") {
                    "UDP" => udp.insert(target),
                    "TCP" | "" => tcp.insert(target),
                    _ => false,
                };
            }
        }
    }
    if tcp.is_empty() && udp.is_empty() {
        return (vec![53], vec![53]);
    }
    (tcp.into_iter().collect(), udp.into_iter().collect())
}

/// Ports of the containers and of restartable init containers.
fn declared_ports(pod: &Pod) -> Vec<ContainerPort> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let sidecars =
        spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers.iter().chain(sidecars).flat_map(|c| c.ports.iter().flatten().cloned()).collect()
}

fn cluster_ip(service: &Service) -> Option<Ipv4Addr> {
    service.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()
}

/// kube-proxy's view: each port of each Service with a selector and a cluster IP, with the
/// pods it selects as endpoints.
fn service_nat(
    services: &[Service],
    objects: &[Pod],
    pods: &[LabPod],
    notes: &mut Vec<Note>,
) -> Vec<ServiceNat> {
    let mut nat = Vec::new();
    for service in services {
        let key = key_of(&service.metadata);
        let Some(spec) = service.spec.as_ref() else { continue };
        let Some(ip) = cluster_ip(service) else {
            if spec.type_.as_deref() != Some("ExternalName") {
                notes.push(Note(format!(
                    "lab: Service {key} has no IPv4 clusterIP (headless or IPv6): nothing to translate, \
                     and its name does not resolve in the lab"
                )));
            }
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            notes.push(Note(format!(
                "lab: Service {key} has no selector: not translated (the lab makes endpoints from \
                 selectors, it does not read EndpointSlices)"
            )));
            continue;
        };
        let selector: Selector = selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let selected: Vec<(&Pod, &LabPod)> = objects
            .iter()
            .zip(pods)
            .filter(|(pod, _)| pod.metadata.namespace == service.metadata.namespace)
            .filter(|(pod, _)| selector.matches(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect();
        for port in spec.ports.iter().flatten() {
            let Ok(number) = u16::try_from(port.port) else { continue };
            // Checked on input; what is not a protocol never reaches nftables.
            let api = port.protocol.as_deref().filter(|p| !p.is_empty()).unwrap_or("TCP");
            let Some(protocol) = crate::engine::Protocol::from_api(api) else { continue };
            let endpoints: Vec<(Ipv4Addr, u16)> = selected
                .iter()
                .filter_map(|(object, pod)| target_port(port, object).map(|target| (pod.ip, target)))
                .collect();
            if endpoints.is_empty() {
                notes.push(Note(format!(
                    "lab: Service {key} port {number}/{protocol} has no endpoints in the lab"
                )));
            }
            nat.push(ServiceNat {
                service: key.clone(),
                ip,
                port: number,
                protocol: protocol.as_str().to_ascii_lowercase(),
                endpoints,
            });
        }
    }
    nat
}

/// The pod port a Service port sends to: `targetPort` as a number or a name the pod declares
/// (for the same protocol), else the Service port itself.
fn target_port(port: &ServicePort, pod: &Pod) -> Option<u16> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => declared_ports(pod)
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Service names, pod names, and the API server's `kubernetes.default`.
fn records(services: &[Service], pods: &[LabPod]) -> BTreeMap<String, Ipv4Addr> {
    let mut records = BTreeMap::new();
    records.insert(format!("kubernetes.default.svc.{CLUSTER_DOMAIN}."), Ipv4Addr::new(10, 96, 0, 1));
    for service in services {
        if let Some(ip) = cluster_ip(service) {
            let key = key_of(&service.metadata);
            records.insert(format!("{}.{}.svc.{CLUSTER_DOMAIN}.", key.name, key.namespace), ip);
        }
    }
    for pod in pods {
        let dashed = pod.ip.to_string().replace('.', "-");
        records.insert(format!("{dashed}.{}.pod.{CLUSTER_DOMAIN}.", pod.key.namespace), pod.ip);
    }
    records
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(crate::model::NAMESPACE_NAME_LABEL.into(), name.into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn coredns_pod() -> Pod {
    let port = |name: &str, protocol: &str| ContainerPort {
        name: Some(name.into()),
        container_port: 53,
        protocol: Some(protocol.into()),
        ..ContainerPort::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some("coredns".into()),
            namespace: Some("kube-system".into()),
            labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "coredns".into(),
                // A real API server requires one (the lab runs its own DNS server instead).
                image: Some(crate::fixtures::COREDNS_IMAGE.into()),
                ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn kube_dns_service() -> Service {
    let port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.into()),
        port: 53,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::Int(53)),
        ..ServicePort::default()
    };
    Service {
        metadata: ObjectMeta {
            name: Some("kube-dns".into()),
            namespace: Some("kube-system".into()),
            labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(DEFAULT_DNS_IP.to_string()),
            selector: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
            ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::upstream_cluster_yaml;
    use crate::input::{Source, load};

    fn plan(extra: &str) -> Result<Topology, TopologyError> {
        let text = format!("{}---\n{extra}", upstream_cluster_yaml());
        let loaded = load(&[Source { name: "t".into(), text }]).expect("valid");
        Topology::plan(&loaded.snapshot)
    }

    #[test]
    fn the_grid_keeps_its_addresses_and_gets_cluster_dns() {
        let topology = plan("").expect("plans");
        assert_eq!(topology.pods.len(), 10, "9 pods and the added coredns");
        let xa = &topology.pods
            [topology.pods.iter().position(|p| p.key == ObjectKey::new("x", "a")).expect("x/a")];
        assert_eq!(xa.ip, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!((xa.tcp.as_slice(), xa.udp.as_slice()), (&[80, 81][..], &[80, 81][..]));
        let dns = topology.pods.iter().find(|p| p.dns).expect("a DNS pod");
        assert_eq!(dns.key, ObjectKey::new("kube-system", "coredns"));
        assert!(dns.ip.octets()[2] >= 128, "allocated from the upper half: {}", dns.ip);
        assert_eq!(topology.dns_ip, DEFAULT_DNS_IP);
        let dns_udp = topology.nat.iter().find(|n| n.protocol == "udp").expect("DNS over UDP");
        assert_eq!(dns_udp.endpoints, vec![(dns.ip, 53)]);
        assert_eq!(topology.records.get("kube-dns.kube-system.svc.cluster.local."), Some(&DEFAULT_DNS_IP));
        assert_eq!(topology.pod_cidrs, vec![DEFAULT_POD_CIDR]);
        assert_eq!((dns.dns_tcp.as_slice(), dns.dns_udp.as_slice()), (&[53][..], &[53][..]));
        assert!(dns.tcp.is_empty() && dns.udp.is_empty(), "all its ports are DNS");
        assert!(topology.notes.iter().any(|n| n.0.contains("added kube-system/coredns")));
    }

    #[test]
    fn the_files_own_dns_pod_and_service_are_used() {
        let extra = "\
apiVersion: v1
kind: Pod
metadata: {name: dns-1, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: c, ports: [{name: dns, containerPort: 5353, protocol: UDP}, {containerPort: 9153}]}]}
status: {podIP: 10.244.9.9}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.100.0.10
  selector: {k8s-app: kube-dns}
  ports: [{port: 53, protocol: UDP, targetPort: dns}]
";
        let topology = plan(extra).expect("plans");
        assert_eq!(topology.dns_ip, Ipv4Addr::new(10, 100, 0, 10));
        assert_eq!(topology.nat.len(), 1);
        assert_eq!(topology.nat[0].endpoints, vec![(Ipv4Addr::new(10, 244, 9, 9), 5353)], "named targetPort");
        let dns = topology.pods.iter().find(|p| p.dns).expect("the file's DNS pod");
        assert_eq!(dns.dns_udp, vec![5353], "the DNS server listens where the Service sends");
        assert!(dns.dns_tcp.is_empty(), "the Service has no TCP port");
        assert_eq!(dns.tcp, vec![9153], "the rest is served by the probe");
        assert!(dns.udp.is_empty());
        assert!(topology.service_cidrs.iter().any(|n| n.contains(&Ipv4Addr::new(10, 100, 0, 10))));
    }

    #[test]
    fn unaddressed_pods_get_free_addresses_and_odd_ones_widen_the_pod_cidr() {
        let extra = "\
apiVersion: v1
kind: Pod
metadata: {name: new, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: y}
status: {podIP: 10.250.0.5}
";
        let topology = plan(extra).expect("plans");
        let new = topology.pods.iter().find(|p| p.key.name == "new").expect("x/new");
        assert!(DEFAULT_POD_CIDR.contains(&new.ip));
        assert!(topology.pods.iter().filter(|p| p.ip == new.ip).count() == 1);
        let far: Ipv4Net = "10.250.0.0/16".parse().expect("net");
        assert_eq!(topology.pod_cidrs, vec![DEFAULT_POD_CIDR, far], "a /16 for the outlier, no wider");
    }

    #[test]
    fn host_network_pods_are_left_out_and_ipv6_only_pods_refused() {
        let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {hostNetwork: true, containers: []}\n";
        let topology = plan(host).expect("plans");
        assert!(topology.pods.iter().all(|p| p.key.name != "h"));
        assert!(topology.notes.iter().any(|n| n.0.contains("x/h uses the host network")));
        let v6 =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: six, namespace: x}\nstatus: {podIP: 'fd00::6'}\n";
        assert!(matches!(plan(v6), Err(TopologyError::Ipv6Only { .. })));
        let dup =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: twin, namespace: x}\nstatus: {podIP: 10.244.1.1}\n";
        assert!(matches!(plan(dup), Err(TopologyError::DuplicateIp { .. })));
    }

    #[test]
    fn addresses_the_lab_reserves_or_mixes_up_are_refused() {
        let pod = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: odd, namespace: x}}\nstatus: {{podIP: {ip}}}\n"
            )
        };
        for (ip, why) in [
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "link-local"),
            ("127.0.0.5", "loopback"),
            ("0.1.2.3", "not a host address"),
            ("239.1.1.1", "multicast"),
            ("10.96.0.10", "inside the lab's Service range 10.96.0.0/12"),
        ] {
            let err = plan(&pod(ip)).expect_err(ip).to_string();
            assert!(err.starts_with(&format!("pod x/odd has the address {ip}, ")), "{err}");
            assert!(err.contains(why) && err.ends_with("give it another address or none"), "{ip}: {err}");
        }
        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
                       spec: {clusterIP: 10.244.1.200, ports: [{port: 80}], selector: {pod: a}}\n";
        let err = plan(service).expect_err("a Service among the pods").to_string();
        assert!(
            err.contains("Service x/s has the address 10.244.1.200, inside the lab's pod range"),
            "{err}"
        );
        // A far-away pod is fine: it gets its own /16, and no pod gets a default route.
        let topology = plan(&pod("192.168.7.7")).expect("plans");
        assert!(topology.pod_cidrs.iter().all(|n| n.prefix_len() >= 12), "{:?}", topology.pod_cidrs);
    }

    #[test]
    fn services_the_lab_cannot_translate_are_noted() {
        let extra = "\
apiVersion: v1
kind: Service
metadata: {name: external, namespace: x}
spec: {clusterIP: 10.96.5.5, ports: [{port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, selector: {pod: a}, ports: [{port: 80}]}
";
        let topology = plan(extra).expect("plans");
        let notes: Vec<&str> = topology.notes.iter().map(|n| n.0.as_str()).collect();
        assert!(notes.iter().any(|n| n.contains("Service x/external has no selector")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("Service x/headless has no IPv4 clusterIP")), "{notes:?}");
        assert!(topology.nat.iter().all(|n| n.service.namespace != "x"));
        let dns = "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n\
                   spec: {clusterIP: None, selector: {k8s-app: kube-dns}, ports: [{port: 53, protocol: UDP}]}\n";
        let topology = plan(dns).expect("plans");
        assert!(
            topology.notes.iter().any(|n| n.0.contains("cluster DNS lookups fail")),
            "{:?}",
            topology.notes
        );
    }
}
