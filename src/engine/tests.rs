//! Engine rules, one topic per test, written from the NetworkPolicy API documentation and the
//! upstream e2e tests. Clusters are the upstream x/y/z × a/b/c grid plus the policies (and
//! extra objects) each test adds.

use std::net::IpAddr;

use super::*;
use crate::fixtures::upstream_cluster_yaml;
use crate::input::{Source, load};
use crate::model::ObjectKey;

fn snapshot(extra: &str) -> Snapshot {
    let text = format!("{}---\n{extra}", upstream_cluster_yaml());
    load(&[Source { name: "test".into(), text }]).expect("valid test input").snapshot
}

fn pod(snapshot: &Snapshot, key: &str) -> PodId {
    snapshot.find_pod(&ObjectKey::parse(key).expect("ns/name")).expect("pod exists")
}

fn allowed(engine: &Engine<'_>, from: &str, to: &str, port: u16, protocol: Protocol) -> bool {
    let s = engine.snapshot();
    engine.verdict(pod(s, from), pod(s, to), port, protocol).allowed
}

/// Every ordered pair of distinct pods whose connection is denied on `port`/`protocol`.
fn denied(engine: &Engine<'_>, port: u16, protocol: Protocol) -> Vec<String> {
    let s = engine.snapshot();
    let mut out = Vec::new();
    for from in s.pod_ids() {
        for to in s.pod_ids() {
            if from != to && !engine.verdict(from, to, port, protocol).allowed {
                out.push(format!("{}->{}", s.pod_key(from), s.pod_key(to)));
            }
        }
    }
    out
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

const DENY_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
";

#[test]
fn without_policies_every_connection_is_allowed() {
    let s = snapshot("");
    let engine = Engine::new(&s).expect("valid");
    for protocol in Protocol::ALL {
        assert!(denied(&engine, 80, protocol).is_empty());
    }
    let v = engine.verdict(pod(&s, "x/a"), pod(&s, "y/b"), 80, Protocol::Tcp);
    assert_eq!(v.egress.outcome, Outcome::NotIsolated);
    assert_eq!(v.ingress.outcome, Outcome::NotIsolated);
}

#[test]
fn a_policy_isolates_only_the_pods_it_selects_in_its_own_namespace_for_ingress_only() {
    let s = snapshot(DENY_INGRESS_X);
    let engine = Engine::new(&s).expect("valid");
    let denied = denied(&engine, 80, Protocol::Tcp);
    // Every pod into x is denied (8 sources × 3 targets, minus the 3 self-pairs): 24.
    assert_eq!(denied.len(), 24);
    assert!(denied.iter().all(|d| d.contains("->x/")), "{denied:?}");
    assert!(allowed(&engine, "x/a", "y/a", 80, Protocol::Tcp), "egress from x stays open");
    let v = engine.verdict(pod(&s, "y/a"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert_eq!(v.ingress.isolated_by, [PolicyId(0)]);
    assert_eq!(v.ingress.outcome, Outcome::Denied);
}

#[test]
fn egress_isolation_needs_egress_in_policy_types() {
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
",
    );
    let engine = Engine::new(&s).expect("valid");
    let denied = denied(&engine, 80, Protocol::Tcp);
    assert_eq!(denied.len(), 8);
    assert!(denied.iter().all(|d| d.starts_with("x/a->")), "{denied:?}");
    assert!(allowed(&engine, "y/a", "x/a", 80, Protocol::Tcp), "ingress into x/a stays open");
}

#[test]
fn a_connection_needs_the_source_egress_and_the_destination_ingress() {
    // x/a may only send to y/a; y/a and y/b only accept x/a (upstream: "should support denying
    // of egress traffic on the client side (even if the server explicitly allows this traffic)").
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-ya, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-xa, namespace: y}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}
",
    );
    let engine = Engine::new(&s).expect("valid");
    assert!(allowed(&engine, "x/a", "y/a", 80, Protocol::Tcp));
    let v = engine.verdict(pod(&s, "x/a"), pod(&s, "y/b"), 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.egress.outcome, Outcome::Denied, "egress blocks even though ingress admits");
    assert!(v.ingress.outcome.permits());
    assert!(!allowed(&engine, "x/b", "y/a", 80, Protocol::Tcp));
    assert!(allowed(&engine, "x/b", "y/c", 80, Protocol::Tcp));
}

#[test]
fn the_union_of_every_selecting_policy_decides() {
    let s = snapshot(&format!(
        "{DENY_INGRESS_X}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-to-a, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - namespaceSelector: {{}}
"
    ));
    let engine = Engine::new(&s).expect("valid");
    assert!(allowed(&engine, "z/c", "x/a", 80, Protocol::Tcp));
    assert!(!allowed(&engine, "z/c", "x/b", 80, Protocol::Tcp));
    let v = engine.verdict(pod(&s, "z/c"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert_eq!(v.ingress.isolated_by.len(), 2);
    assert_eq!(
        v.ingress.outcome,
        Outcome::Allowed(RuleRef {
            policy: PolicyId(0), // allow-to-a sorts before deny
            direction: Direction::Ingress,
            rule: 0,
            peer: Some(0),
            port: None,
            via_ip_block: false,
        })
    );
}

#[test]
fn peer_selectors_follow_own_namespace_and_and_or_semantics() {
    // One policy per behaviour, each isolating a different target pod in x.
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pods-in-own-namespace, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: namespace-and-pod, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: namespace-or-pod, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
",
    );
    let engine = Engine::new(&s).expect("valid");
    let cases = [
        // podSelector alone: only pods of the policy's namespace.
        ("x/b", "x/a", true),
        ("y/b", "x/a", false),
        ("x/c", "x/a", false),
        // Both selectors in one peer: pod b in namespace y, only.
        ("y/b", "x/b", true),
        ("y/a", "x/b", false),
        ("z/b", "x/b", false),
        ("x/a", "x/b", false),
        // Two peers: anything in y, or pod b of x.
        ("y/a", "x/c", true),
        ("y/c", "x/c", true),
        ("x/b", "x/c", true),
        ("z/b", "x/c", false),
        ("x/a", "x/c", false),
    ];
    for (from, to, want) in cases {
        assert_eq!(allowed(&engine, from, to, 80, Protocol::Tcp), want, "{from} -> {to}");
    }
}

#[test]
fn namespace_selectors_see_the_name_label_the_control_plane_sets() {
    let s = snapshot(
        "
apiVersion: v1
kind: Namespace
metadata: {name: w}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: w, labels: {pod: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.9.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-w, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [w]}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    assert!(allowed(&engine, "w/a", "x/a", 80, Protocol::Tcp));
    assert!(!allowed(&engine, "y/a", "x/a", 80, Protocol::Tcp));
}

#[test]
fn missing_and_empty_peer_and_port_lists_match_everything() {
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: rules, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: []
    ports: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: rules, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - {}
",
    );
    let engine = Engine::new(&s).expect("valid");
    for protocol in Protocol::ALL {
        assert!(denied(&engine, 81, protocol).is_empty(), "{protocol}");
    }
    let v = engine.verdict(pod(&s, "z/a"), pod(&s, "x/a"), 81, Protocol::Udp);
    assert!(matches!(v.ingress.outcome, Outcome::Allowed(RuleRef { peer: None, port: None, .. })));
}

#[test]
fn ports_match_by_number_range_name_and_protocol() {
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 81                 # TCP by default
    - protocol: UDP
      port: 80
      endPort: 81
    - protocol: SCTP
      port: serve-80-sctp
    - port: serve-80-udp       # TCP by default: resolves to nothing
",
    );
    let engine = Engine::new(&s).expect("valid");
    let cases = [
        (80, Protocol::Tcp, false),
        (81, Protocol::Tcp, true),
        (80, Protocol::Udp, true),
        (81, Protocol::Udp, true),
        (80, Protocol::Sctp, true),
        (81, Protocol::Sctp, false),
    ];
    for (port, protocol, want) in cases {
        assert_eq!(allowed(&engine, "y/a", "x/b", port, protocol), want, "{port}/{protocol}");
    }
    let v = engine.verdict(pod(&s, "y/a"), pod(&s, "x/b"), 81, Protocol::Udp);
    assert!(matches!(v.ingress.outcome, Outcome::Allowed(RuleRef { port: Some(1), .. })));
}

#[test]
fn egress_named_ports_resolve_against_the_destination_pod() {
    let s = snapshot(
        "
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: y, labels: {pod: odd}}
spec:
  containers:
  - name: c
    image: i
    ports: [{name: serve-80-tcp, containerPort: 8080}]
status: {podIP: 10.244.2.50}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-80-tcp}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    assert!(allowed(&engine, "x/a", "y/a", 80, Protocol::Tcp));
    assert!(!allowed(&engine, "x/a", "y/a", 81, Protocol::Tcp));
    // On y/odd the name means 8080, not 80.
    assert!(allowed(&engine, "x/a", "y/odd", 8080, Protocol::Tcp));
    assert!(!allowed(&engine, "x/a", "y/odd", 80, Protocol::Tcp));
    // An address outside the cluster declares no names.
    assert!(!engine.verdict(pod(&s, "x/a"), ip("192.0.2.10"), 80, Protocol::Tcp).allowed);
}

#[test]
fn ip_blocks_with_except_govern_external_addresses() {
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-cidr, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress, Ingress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32, 10.0.0.0/8]}
  ingress:
  - from:
    - ipBlock: {cidr: 203.0.113.0/24}
",
    );
    let engine = Engine::new(&s).expect("valid");
    let a = pod(&s, "x/a");
    assert!(engine.verdict(a, ip("198.51.100.7"), 443, Protocol::Tcp).allowed);
    let metadata = engine.verdict(a, ip("169.254.169.254"), 80, Protocol::Tcp);
    assert!(!metadata.allowed);
    assert_eq!(metadata.ingress.outcome, Outcome::External);
    assert!(engine.verdict(ip("203.0.113.9"), a, 80, Protocol::Tcp).allowed);
    assert!(!engine.verdict(ip("198.51.100.7"), a, 80, Protocol::Tcp).allowed);
    // Pod IPs (10.244/16) sit inside the except: pods in x cannot reach other pods.
    assert!(!allowed(&engine, "x/a", "y/a", 80, Protocol::Tcp));
    let external = engine.verdict(a, ip("198.51.100.7"), 443, Protocol::Tcp);
    assert!(!external.implementation_defined.any(), "an ipBlock naming an outside address is plain");
}

#[test]
fn an_ip_block_matching_a_pod_ip_allows_but_is_marked_implementation_defined() {
    // Upstream: "should allow egress access to server in CIDR block".
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-yb-by-cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.2.2/32}}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    let v = engine.verdict(pod(&s, "x/a"), pod(&s, "y/b"), 80, Protocol::Tcp);
    assert!(v.allowed);
    assert!(v.implementation_defined.ip_block_matches_pod_ip);
    assert_eq!(v.implementation_defined.names(), ["ipblock-matches-pod-ip"]);
    let denied_v = engine.verdict(pod(&s, "x/a"), pod(&s, "y/a"), 80, Protocol::Tcp);
    assert!(!denied_v.allowed);
    assert!(!denied_v.implementation_defined.any(), "a deny does not hinge on ipBlock semantics");
}

#[test]
fn a_selector_admission_wins_over_an_ip_block_one_so_the_cell_is_not_implementation_defined() {
    let s = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16}}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    let from_y = engine.verdict(pod(&s, "y/a"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert!(from_y.allowed);
    assert!(!from_y.implementation_defined.ip_block_matches_pod_ip);
    assert!(matches!(from_y.ingress.outcome, Outcome::Allowed(RuleRef { rule: 1, .. })));
    let from_z = engine.verdict(pod(&s, "z/a"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert!(from_z.allowed && from_z.implementation_defined.ip_block_matches_pod_ip);
}

#[test]
fn selectors_that_print_alike_are_still_resolved_apart() {
    // Both selectors print as `pod=b,pod2=updated`; only the second matches x/b's labels.
    let s = snapshot(
        "
apiVersion: v1
kind: Pod
metadata: {name: b2, namespace: x, labels: {pod: b, pod2: updated}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.20}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one-odd-value, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: 'b,pod2=updated'}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two-labels, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    assert!(!allowed(&engine, "x/b2", "y/a", 80, Protocol::Tcp));
    assert!(allowed(&engine, "x/b2", "y/b", 80, Protocol::Tcp));
}

#[test]
fn an_ip_block_matching_a_host_network_pod_is_node_traffic_not_a_pod_ip_match() {
    let s = snapshot(
        "
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: z, labels: {pod: h}}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 172.18.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-nodes, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 172.18.0.0/16}}]}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    let v = engine.verdict(pod(&s, "z/h"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert!(v.allowed);
    assert!(matches!(v.ingress.outcome, Outcome::Allowed(RuleRef { via_ip_block: false, .. })));
    assert_eq!(v.implementation_defined.names(), ["host-network-pod"]);
}

#[test]
fn a_pod_reaching_its_own_ip_is_allowed_and_implementation_defined() {
    let s = snapshot(DENY_INGRESS_X);
    let engine = Engine::new(&s).expect("valid");
    let a = pod(&s, "x/a");
    let v = engine.verdict(a, a, 80, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(v.ingress.outcome, Outcome::Denied, "the policies' own answer is still reported");
    assert_eq!(v.implementation_defined.names(), ["pod-to-itself"]);
}

#[test]
fn host_network_pods_are_neither_isolated_nor_matched_by_selectors() {
    let s = snapshot(&format!(
        "{DENY_INGRESS_X}---
apiVersion: v1
kind: Pod
metadata: {{name: h, namespace: x, labels: {{pod: h}}}}
spec: {{hostNetwork: true, nodeName: node-1, containers: [{{name: c, image: i}}]}}
status: {{podIP: 172.18.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: h2, namespace: z, labels: {{pod: h2}}}}
spec: {{hostNetwork: true, nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{podIP: 172.18.0.3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: on-node-2, namespace: x, labels: {{pod: d}}}}
spec: {{nodeName: node-2, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.244.1.9}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-x, namespace: y}}
spec:
  podSelector: {{}}
  ingress: [{{from: [{{podSelector: {{}}, namespaceSelector: {{matchLabels: {{ns: x}}}}}}]}}]
"
    ));
    let engine = Engine::new(&s).expect("valid");
    // Into the host-network pod: the deny-all in x does not isolate it.
    let into_h = engine.verdict(pod(&s, "y/a"), pod(&s, "x/h"), 80, Protocol::Tcp);
    assert!(into_h.allowed);
    assert_eq!(into_h.ingress.outcome, Outcome::HostNetwork);
    assert!(into_h.implementation_defined.host_network_pod);
    // From it: the selector for namespace x does not match a host-network pod.
    assert!(!allowed(&engine, "x/h", "y/a", 80, Protocol::Tcp));
    // A host-network pod is its node: pods always accept traffic from their own node.
    let local = engine.verdict(pod(&s, "z/h2"), pod(&s, "x/on-node-2"), 80, Protocol::Tcp);
    assert!(local.allowed);
    assert_eq!(local.ingress.outcome, Outcome::LocalNode);
    assert!(!allowed(&engine, "z/h2", "x/a", 80, Protocol::Tcp), "x/a has no node: not local");
}

#[test]
fn a_pod_without_an_ip_is_judged_by_selectors_and_never_matched_by_ip_blocks() {
    let s = snapshot(
        "
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: y, labels: {pod: a}}
spec: {containers: [{name: c, image: i}]}
status: {phase: Pending}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y-or-cidr, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: a}}
      namespaceSelector: {matchLabels: {ns: y}}
    - ipBlock: {cidr: 0.0.0.0/0}
",
    );
    let engine = Engine::new(&s).expect("valid");
    let pending = pod(&s, "y/pending");
    assert!(engine.verdict(pending, pod(&s, "x/b"), 80, Protocol::Tcp).allowed, "labels pod=a in y");
    let explanation = engine.explain(pending, pod(&s, "x/b"), 80, Protocol::Tcp);
    let cidr_check = &explanation.ingress.policies[0].rules[0].peers[1];
    assert!(!cidr_check.matches);
    assert!(cidr_check.why.contains("has no IP"), "{}", cidr_check.why);
}

#[test]
fn the_source_address_follows_the_destination_family_on_dual_stack_pods() {
    let s = snapshot(
        "
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: y, labels: {pod: v6}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 'fd00::5', podIPs: [{ip: 'fd00::5'}, {ip: 10.244.2.60}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v4-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16}}]}]
",
    );
    let engine = Engine::new(&s).expect("valid");
    // To an IPv4 destination, y/v6 uses its IPv4 address, which the block covers.
    let v = engine.verdict(pod(&s, "y/v6"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert!(v.allowed);
    let explanation = engine.explain(pod(&s, "y/v6"), pod(&s, "x/a"), 80, Protocol::Tcp);
    assert_eq!(explanation.from_ip, Some(ip("10.244.2.60")));
}

#[test]
fn invalid_policies_stop_the_engine_with_the_policy_and_field() {
    use k8s_openapi::api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicySpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let policy = NetworkPolicy {
        metadata: ObjectMeta { name: Some("bad".into()), namespace: Some("x".into()), ..Default::default() },
        spec: Some(NetworkPolicySpec {
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "10.0.0.0/16".into(),
                        except: Some(vec!["10.1.0.0/24".into()]),
                    }),
                    ..Default::default()
                }]),
                ports: None,
            }]),
            ..Default::default()
        }),
    };
    let (s, _) = Snapshot::new(vec![], vec![], vec![policy]);
    let err = Engine::new(&s).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "NetworkPolicy x/bad: spec.egress[0].to[0].ipBlock.except[0]: 10.1.0.0/24 must be a strict subset of cidr 10.0.0.0/16"
    );
}

#[test]
fn explanations_agree_with_verdicts_on_every_cell() {
    let s = snapshot(&format!(
        "{DENY_INGRESS_X}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: mixed, namespace: x}}
spec:
  podSelector: {{matchExpressions: [{{key: pod, operator: NotIn, values: [c]}}]}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}, {{ipBlock: {{cidr: 10.244.3.0/24, except: [10.244.3.2/32]}}}}]
    ports: [{{port: 80}}, {{port: serve-81-udp, protocol: UDP}}]
  egress:
  - to: [{{podSelector: {{}}}}]
  - ports: [{{protocol: UDP}}]
"
    ));
    let engine = Engine::new(&s).expect("valid");
    for from in s.pod_ids() {
        for to in s.pod_ids() {
            for (port, protocol) in [(80, Protocol::Tcp), (81, Protocol::Tcp), (81, Protocol::Udp)] {
                let e = engine.explain(from, to, port, protocol);
                for (side, outcome) in
                    [(&e.egress, e.verdict.egress.outcome), (&e.ingress, e.verdict.ingress.outcome)]
                {
                    let isolated = !side.policies.is_empty();
                    let any_admits = side.policies.iter().flat_map(|p| &p.rules).any(|r| r.admits);
                    let expected = match outcome {
                        Outcome::Denied => isolated && !any_admits,
                        Outcome::Allowed(_) => isolated && any_admits,
                        _ => !isolated,
                    };
                    assert!(
                        expected,
                        "{} -> {} {port}/{protocol}: {outcome:?}",
                        engine.name(e.from),
                        engine.name(e.to)
                    );
                }
            }
        }
    }
}
