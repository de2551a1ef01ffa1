//! The lab's CNI: NetworkPolicies as nftables rules on the node side of every pod link, and
//! kube-proxy's Service translation. Pure: rulesets are text, `host` loads them.
//!
//! The engine resolves selectors (which pods a peer means); everything else is nftables' own
//! doing — matching addresses, ports and protocols, the union of rules, both ends of a
//! connection, replies through conntrack — so the lab is a second, independent implementation
//! that tests hold against the engine's verdicts.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::topology::ServiceNat;
use crate::engine::{Direction, EnforcedPeer, Engine, PortRule, Protocol};
use crate::model::PodId;

/// How much of the NetworkPolicy API the lab's network enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CniMode {
    /// The full semantics; denied packets are dropped (the client sees a timeout).
    Enforcing,
    /// Stores policies, enforces nothing (the EKS and AKS default).
    None,
    /// Only ingress rules are enforced.
    IngressOnly,
    /// Only egress rules are enforced.
    EgressOnly,
    /// Only TCP is filtered; UDP and SCTP pass.
    TcpOnly,
    /// The full semantics, but denied packets are answered: TCP RST, ICMP port unreachable.
    Reject,
    /// A fault: ipBlock `except` is ignored (the whole CIDR is allowed).
    IgnoresExcept,
    /// A fault: a port given by name matches every port of its protocol.
    IgnoresNamedPorts,
    /// A fault: `endPort` is ignored (a range allows its first port only).
    IgnoresEndPort,
    /// A fault: only pods on the lab's first node are enforced (a node pool without the policy
    /// agent); pods on the others pass everything.
    OneNode,
    /// A fault: only netpol-verify's own policies (the canary's, the run's control policies)
    /// are enforced; every other stored policy is ignored, as by a CNI that drops policies it
    /// cannot program while it enforces simple ones.
    OnlyToolPolicies,
}

impl CniMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CniMode::Enforcing => "enforcing",
            CniMode::None => "none",
            CniMode::IngressOnly => "ingress-only",
            CniMode::EgressOnly => "egress-only",
            CniMode::TcpOnly => "tcp-only",
            CniMode::Reject => "reject",
            CniMode::IgnoresExcept => "ignores-except",
            CniMode::IgnoresNamedPorts => "ignores-named-ports",
            CniMode::IgnoresEndPort => "ignores-end-port",
            CniMode::OneNode => "one-node",
            CniMode::OnlyToolPolicies => "only-tool-policies",
        }
    }

    /// Whether this mode is a fault injected on purpose (a CNI that gets part of the API
    /// wrong), rather than one a real CNI is configured to be.
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            CniMode::IgnoresExcept
                | CniMode::IgnoresNamedPorts
                | CniMode::IgnoresEndPort
                | CniMode::OneNode
                | CniMode::OnlyToolPolicies
        )
    }

    fn enforces(self, direction: Direction) -> bool {
        match self {
            CniMode::None => false,
            CniMode::IngressOnly => direction == Direction::Ingress,
            CniMode::EgressOnly => direction == Direction::Egress,
            CniMode::Enforcing
            | CniMode::TcpOnly
            | CniMode::Reject
            | CniMode::IgnoresExcept
            | CniMode::IgnoresNamedPorts
            | CniMode::IgnoresEndPort
            | CniMode::OneNode
            | CniMode::OnlyToolPolicies => true,
        }
    }
}

/// A pod's link as the node sees it.
#[derive(Debug, Clone)]
pub struct Link {
    pub pod: PodId,
    /// The node end of the pod's veth.
    pub interface: String,
    pub ip: Ipv4Addr,
    /// Whether the pod runs on the lab's first node (`one-node` enforces only those).
    pub first_node: bool,
}

/// The `inet netpol` table for the node: a forward chain that sends each packet through the
/// egress chain of the pod it leaves and the ingress chain of the pod it enters. A chain
/// `return`s when a rule admits the packet and drops (or rejects) it otherwise; replies pass
/// through conntrack. Loading it replaces the previous ruleset atomically.
pub fn policy_ruleset(engine: &Engine<'_>, links: &[Link], mode: CniMode) -> String {
    let mut chains = String::new();
    let mut dispatch = Vec::new();
    for direction in [Direction::Egress, Direction::Ingress] {
        if !mode.enforces(direction) {
            continue;
        }
        let mut map = Vec::new();
        for link in links.iter().filter(|l| mode != CniMode::OneNode || l.first_node) {
            let Some(rules) = engine.enforced_rules(link.pod, direction) else { continue };
            let chain = format!("{}_{}", direction.field(), link.interface);
            map.push(format!("\"{}\" : jump {chain}", link.interface));
            let _ = writeln!(chains, "  chain {chain} {{");
            for rule in &rules {
                // Each rule says where it comes from (`nft list ruleset` shows it). Names are
                // checked on input; this keeps the comment inert whatever comes.
                let policy = engine.snapshot().policy_key(rule.policy).to_string();
                let policy: String = policy
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "-./".contains(c) { c } else { '_' })
                    .take(100)
                    .collect();
                let comment = format!("comment \"{policy} rule {}\"", rule.index);
                for peer in peer_matches(rule.peers.as_deref(), direction, links, mode) {
                    for port in port_matches(engine, rule.ports, direction, link.pod, links, mode) {
                        let matched = [peer.as_str(), port.as_str()].join(" ");
                        let _ = writeln!(chains, "    {} return {comment}", matched.trim());
                    }
                }
            }
            deny(&mut chains, mode);
            chains.push_str("  }\n");
        }
        if !map.is_empty() {
            let field = match direction {
                Direction::Egress => "iifname",
                Direction::Ingress => "oifname",
            };
            dispatch.push(format!("    {field} vmap {{ {} }}", map.join(", ")));
        }
    }
    let mut out = String::from("add table inet netpol\ndelete table inet netpol\ntable inet netpol {\n");
    out.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    out.push_str("    ct state established,related accept\n    ct state invalid drop\n");
    if mode == CniMode::TcpOnly {
        out.push_str("    meta l4proto != tcp accept\n");
    }
    for line in dispatch {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("  }\n");
    out.push_str(&chains);
    out.push_str("}\n");
    out
}

fn deny(chains: &mut String, mode: CniMode) {
    if mode == CniMode::Reject {
        chains.push_str(
            "    meta l4proto tcp reject with tcp reset\n    reject with icmpx type port-unreachable\n",
        );
    } else {
        chains.push_str("    drop\n");
    }
}

/// The alternatives a rule's peers allow, each an nft match ("" = anything). A peer that can
/// match nothing in the lab (no pods, an IPv6 block) yields no alternative.
fn peer_matches(
    peers: Option<&[EnforcedPeer<'_>]>,
    direction: Direction,
    links: &[Link],
    mode: CniMode,
) -> Vec<String> {
    let field = match direction {
        Direction::Egress => "ip daddr",
        Direction::Ingress => "ip saddr",
    };
    let Some(peers) = peers else { return vec![String::new()] };
    let mut alternatives = Vec::new();
    for peer in peers {
        match peer {
            EnforcedPeer::Pods(pods) => {
                let ips: Vec<String> =
                    pods.iter().filter_map(|p| ip_of(*p, links)).map(|ip| ip.to_string()).collect();
                if !ips.is_empty() {
                    alternatives.push(format!("{field} {{ {} }}", ips.join(", ")));
                }
            }
            EnforcedPeer::Cidr { cidr: IpNet::V4(cidr), except } => {
                let except: Vec<String> = except
                    .iter()
                    .filter_map(|e| match e {
                        IpNet::V4(e) => Some(e.to_string()),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                if except.is_empty() || mode == CniMode::IgnoresExcept {
                    alternatives.push(format!("{field} {cidr}"));
                } else {
                    alternatives.push(format!("{field} {cidr} {field} != {{ {} }}", except.join(", ")));
                }
            }
            // The lab is IPv4-only: an IPv6 block matches nothing in it.
            EnforcedPeer::Cidr { cidr: IpNet::V6(_), .. } => {}
        }
    }
    alternatives
}

/// The alternatives a rule's ports allow. A named port resolves against the destination pod:
/// for ingress that is the pod itself, for egress every pod that declares the name.
fn port_matches(
    engine: &Engine<'_>,
    ports: Option<&[PortRule]>,
    direction: Direction,
    pod: PodId,
    links: &[Link],
    mode: CniMode,
) -> Vec<String> {
    let Some(ports) = ports else { return vec![String::new()] };
    let mut alternatives = Vec::new();
    for port in ports {
        match port {
            PortRule::AnyPort(protocol) => alternatives.push(format!("meta l4proto {}", nft(*protocol))),
            PortRule::Named { protocol, .. } if mode == CniMode::IgnoresNamedPorts => {
                alternatives.push(format!("meta l4proto {}", nft(*protocol)));
            }
            PortRule::Range { protocol, start, end } if start == end || mode == CniMode::IgnoresEndPort => {
                alternatives.push(format!("{} dport {start}", nft(*protocol)));
            }
            PortRule::Range { protocol, start, end } => {
                alternatives.push(format!("{} dport {start}-{end}", nft(*protocol)));
            }
            PortRule::Named { protocol, name } => {
                let named = |target: PodId| -> Vec<u16> {
                    engine
                        .declared_ports(target)
                        .iter()
                        .filter(|cp| cp.protocol == *protocol && cp.name.as_deref() == Some(name.as_str()))
                        .map(|cp| cp.port)
                        .collect()
                };
                match direction {
                    Direction::Ingress => {
                        let numbers: Vec<String> = named(pod).iter().map(ToString::to_string).collect();
                        if !numbers.is_empty() {
                            alternatives.push(format!(
                                "{} dport {{ {} }}",
                                nft(*protocol),
                                numbers.join(", ")
                            ));
                        }
                    }
                    Direction::Egress => {
                        let pairs: Vec<String> = links
                            .iter()
                            .flat_map(|l| named(l.pod).into_iter().map(move |p| format!("{} . {p}", l.ip)))
                            .collect();
                        if !pairs.is_empty() {
                            alternatives.push(format!(
                                "ip daddr . {} dport {{ {} }}",
                                nft(*protocol),
                                pairs.join(", ")
                            ));
                        }
                    }
                }
            }
        }
    }
    alternatives
}

fn ip_of(pod: PodId, links: &[Link]) -> Option<IpAddr> {
    links.iter().find(|l| l.pod == pod).map(|l| IpAddr::V4(l.ip))
}

fn nft(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The `ip kubeproxy` table: each Service port's cluster IP translated to one of its endpoints
/// before routing, so policies see the pod's address; ports without endpoints are rejected.
pub fn service_ruleset(nat: &[ServiceNat]) -> String {
    let mut rules = String::new();
    for entry in nat {
        let head = format!("ip daddr {} {} dport {}", entry.ip, entry.protocol, entry.port);
        match entry.endpoints.as_slice() {
            [] => {}
            [(ip, port)] => {
                let _ = writeln!(rules, "    {head} dnat to {ip}:{port}");
            }
            endpoints => {
                let map: Vec<String> = endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                    .collect();
                let _ = writeln!(
                    rules,
                    "    {head} dnat ip to numgen random mod {} map {{ {} }}",
                    endpoints.len(),
                    map.join(", ")
                );
            }
        }
    }
    let mut out = String::from("add table ip kubeproxy\ndelete table ip kubeproxy\ntable ip kubeproxy {\n");
    out.push_str("  chain services {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    out.push_str(&rules);
    // The node's own connections to Services are translated too, as kube-proxy does.
    out.push_str("  }\n  chain node_services {\n    type nat hook output priority -100; policy accept;\n");
    out.push_str(&rules);
    // NB: the node routes the Service ranges to itself (as kube-proxy's IPVS mode binds them
    // to a dummy device), so what is not translated arrives here, at the node's input hook.
    out.push_str("  }\n  chain no_endpoints {\n    type filter hook input priority 0; policy accept;\n");
    for entry in nat.iter().filter(|e| e.endpoints.is_empty()) {
        let _ = writeln!(
            out,
            "    ip daddr {} {} dport {} reject with icmp type port-unreachable",
            entry.ip, entry.protocol, entry.port
        );
    }
    out.push_str("  }\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::upstream_cluster_yaml;
    use crate::input::{Source, load};
    use crate::model::Snapshot;

    fn snapshot(policies: &str) -> Snapshot {
        let text = format!("{}---\n{policies}", upstream_cluster_yaml());
        load(&[Source { name: "t".into(), text }]).expect("valid").snapshot
    }

    fn links(snapshot: &Snapshot, engine: &Engine<'_>) -> Vec<Link> {
        snapshot
            .pod_ids()
            .map(|pod| Link {
                pod,
                interface: format!("p{}", pod.0),
                ip: match engine.pod_ip(pod) {
                    Some(IpAddr::V4(ip)) => ip,
                    _ => Ipv4Addr::UNSPECIFIED,
                },
                first_node: pod.0 % 2 == 0,
            })
            .collect()
    }

    const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.244.3.0/24]}}]
    ports: [{port: serve-80-tcp}, {port: 81, endPort: 90, protocol: UDP}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: serve-81-udp, protocol: UDP}]
  - ports: [{protocol: SCTP}]
";

    #[test]
    fn policies_become_per_pod_chains_dispatched_by_interface() {
        let s = snapshot(POLICIES);
        let engine = Engine::new(&s).expect("valid");
        let ruleset = policy_ruleset(&engine, &links(&s, &engine), CniMode::Enforcing);
        insta::assert_snapshot!(ruleset);
    }

    #[test]
    fn a_policy_name_cannot_break_out_of_its_comment() {
        let s = snapshot("");
        let mut policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "evil\n  chain x {", "namespace": "x"}, "spec": {"podSelector": {}, "ingress": [{}]}}),
        )
        .expect("policy");
        policy.metadata.namespace = Some("x".into());
        let (s, _) = Snapshot::new(s.namespaces().to_vec(), s.pods().to_vec(), vec![policy]);
        let engine = Engine::new(&s).expect("valid");
        let ruleset = policy_ruleset(&engine, &links(&s, &engine), CniMode::Enforcing);
        assert!(ruleset.contains("return comment \"x/evil___chain_x__ rule 0\""), "{ruleset}");
        assert!(!ruleset.contains("chain x {"), "{ruleset}");
    }

    #[test]
    fn modes_choose_directions_protocols_and_the_deny_verdict() {
        let s = snapshot(POLICIES);
        let engine = Engine::new(&s).expect("valid");
        let links = links(&s, &engine);
        let none = policy_ruleset(&engine, &links, CniMode::None);
        assert!(
            !none.contains("vmap") && !none.contains("chain egress_") && !none.contains("chain ingress_"),
            "{none}"
        );
        let ingress = policy_ruleset(&engine, &links, CniMode::IngressOnly);
        assert!(ingress.contains("oifname vmap") && !ingress.contains("iifname vmap"));
        let egress = policy_ruleset(&engine, &links, CniMode::EgressOnly);
        assert!(egress.contains("iifname vmap") && !egress.contains("oifname vmap"));
        assert!(policy_ruleset(&engine, &links, CniMode::TcpOnly).contains("meta l4proto != tcp accept"));
        let reject = policy_ruleset(&engine, &links, CniMode::Reject);
        assert!(reject.contains("reject with tcp reset") && !reject.contains("    drop\n"));
    }

    #[test]
    fn faults_get_exactly_their_part_of_the_api_wrong() {
        let s = snapshot(POLICIES);
        let engine = Engine::new(&s).expect("valid");
        let links = links(&s, &engine);
        let faithful = policy_ruleset(&engine, &links, CniMode::Enforcing);
        let differs = |mode: CniMode| -> Vec<String> {
            let faulty = policy_ruleset(&engine, &links, mode);
            faithful
                .lines()
                .zip(faulty.lines())
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("{} => {}", a.trim(), b.trim()))
                .collect()
        };
        let except = differs(CniMode::IgnoresExcept);
        assert!(
            !except.is_empty()
                && except.iter().all(|d| d.contains("!= { 10.244.3.0/24 }") && !d.ends_with("}\"")),
            "{except:#?}"
        );
        assert!(
            except.iter().all(|d| d.split(" => ").nth(1).is_some_and(|b| !b.contains("!="))),
            "{except:#?}"
        );
        let named = differs(CniMode::IgnoresNamedPorts);
        assert!(
            !named.is_empty() && named.iter().all(|d| d.contains("dport") && d.contains("meta l4proto")),
            "{named:#?}"
        );
        let range = differs(CniMode::IgnoresEndPort);
        assert!(
            !range.is_empty()
                && range.iter().all(|d| d.contains("udp dport 81-90")
                    && d.contains("=> ")
                    && d.split(" => ").nth(1).is_some_and(|b| b.contains("udp dport 81 "))),
            "{range:#?}"
        );
        // One node: the other node's pods have no chains.
        let one = policy_ruleset(&engine, &links, CniMode::OneNode);
        for link in &links {
            let has = one.contains(&format!("\"{}\" : jump", link.interface));
            let had = faithful.contains(&format!("\"{}\" : jump", link.interface));
            assert_eq!(has, had && link.first_node, "{}", link.interface);
        }
    }

    #[test]
    fn services_translate_to_their_endpoints() {
        let nat = vec![
            ServiceNat {
                service: crate::model::ObjectKey::new("kube-system", "kube-dns"),
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 53,
                protocol: "udp".into(),
                endpoints: vec![(Ipv4Addr::new(10, 244, 0, 10), 53), (Ipv4Addr::new(10, 244, 0, 11), 5353)],
            },
            ServiceNat {
                service: crate::model::ObjectKey::new("x", "empty"),
                ip: Ipv4Addr::new(10, 96, 0, 20),
                port: 80,
                protocol: "tcp".into(),
                endpoints: vec![],
            },
        ];
        insta::assert_snapshot!(service_ruleset(&nat));
    }
}
