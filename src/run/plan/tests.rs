use super::*;
use crate::input::{Source, load};
use crate::model::Snapshot;
use crate::scenario;

/// Namespaces a, b, kube-system and the tool's, cluster DNS, and two policies.
fn cluster() -> String {
    format!(
        "{}{}{}",
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: nv-r1, labels: {app.kubernetes.io/name: netpol-verify}}
---
"#,
        crate::fixtures::cluster_dns_yaml("10.244.0.53"),
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace-only, namespace: b}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-dns, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 80}]}]
"#
    )
}

fn probe_pod(namespace: &str, name: &str, role: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app.kubernetes.io/name: netpol-verify, netpol-verify.io/role: {role}}}}}\nspec:\n  containers:\n  - name: probe\n    ports: [{{name: http, containerPort: 80}}, {{containerPort: 80, protocol: UDP}}]\nstatus: {{phase: Running, podIP: {ip}}}\n"
    )
}

fn snapshot() -> (Snapshot, Deployment) {
    let mut text = cluster();
    let mut deployment = Deployment { namespaces: vec!["a".into(), "b".into()], ..Deployment::default() };
    for (i, ns) in ["a", "b"].iter().enumerate() {
        text += &probe_pod(ns, "nv-client", "client", &format!("10.244.9.{}", 10 + i));
        text += &probe_pod(ns, "nv-server", "server", &format!("10.244.9.{}", 20 + i));
        deployment.clients.push((ns.to_string(), ObjectKey::new(*ns, "nv-client")));
        deployment.servers.insert(ns.to_string(), ObjectKey::new(*ns, "nv-server"));
    }
    text += &probe_pod("nv-r1", "nv-control", "control", "10.244.9.30");
    deployment.control = Some(ObjectKey::new("nv-r1", "nv-control"));
    let loaded = load(&[Source { name: "cluster.yaml".into(), text }]).unwrap_or_else(|e| panic!("{e}"));
    (loaded.snapshot, deployment)
}

fn scenarios(names: &[&str]) -> Vec<Scenario> {
    scenario::resolve(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn row(check: &Check) -> String {
    format!(
        "{} {} -> {} {}/{} {}",
        check.group,
        check.from_namespace,
        check.to,
        check.probe.target.port,
        check.probe.target.protocol,
        check.policy.as_str()
    )
}

#[test]
fn the_matrix_probes_every_server_from_every_client_with_the_policies_answer() {
    let (snapshot, deployment) = snapshot();
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["matrix"]), &deployment);
    let rows: Vec<String> = planned.checks.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "pod-to-pod a -> a/nv-server 80/TCP allow",
            "pod-to-pod a -> a/nv-server 80/UDP deny",
            "pod-to-pod a -> b/nv-server 80/TCP deny",
            "pod-to-pod a -> b/nv-server 80/UDP deny",
            "pod-to-pod b -> a/nv-server 80/TCP allow",
            "pod-to-pod b -> a/nv-server 80/UDP allow",
            "pod-to-pod b -> b/nv-server 80/TCP allow",
            "pod-to-pod b -> b/nv-server 80/UDP allow",
        ]
    );
    assert_eq!(planned.checks[0].probe.expect_name.as_deref(), Some("a/nv-server"));
    assert_eq!(planned.checks[2].policies, ["a/no-dns", "b/same-namespace-only"].map(String::from).to_vec());
    // The control pod can reach a's server (not isolated for ingress), not b's.
    let controls: Vec<String> = planned
        .controls
        .iter()
        .map(|p| format!("{}:{}/{}", p.target.address, p.target.port, p.target.protocol))
        .collect();
    assert_eq!(controls, ["10.244.9.20:80/TCP", "10.244.9.20:80/UDP"]);
    let batches = batches(&planned, 1000);
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[&ObjectKey::new("a", "nv-client")].probes.len(), 4);
}

#[test]
fn cluster_dns_is_probed_through_the_service_and_at_its_pods() {
    let (snapshot, deployment) = snapshot();
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["dns"]), &deployment);
    let rows: Vec<String> = planned.checks.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "kube-dns-service a -> kube-system/kube-dns (10.96.0.10) 53/UDP deny",
            "kube-dns-service a -> kube-system/kube-dns (10.96.0.10) 53/TCP deny",
            "kube-dns-service b -> kube-system/kube-dns (10.96.0.10) 53/UDP allow",
            "kube-dns-service b -> kube-system/kube-dns (10.96.0.10) 53/TCP allow",
            "dns-pods a -> kube-system/coredns 53/UDP deny",
            "dns-pods a -> kube-system/coredns 53/TCP deny",
            "dns-pods b -> kube-system/coredns 53/UDP allow",
            "dns-pods b -> kube-system/coredns 53/TCP allow",
        ]
    );
    assert!(planned.checks.iter().all(|c| c.probe.target.dns && c.probe.query.as_deref() == Some(DNS_QUERY)));
    assert!(
        planned
            .notes
            .iter()
            .any(|n| n.0.contains("dns/nodelocal-dns: skipped: NodeLocal DNSCache does not run"))
    );
    // Controls go through the Service too: the control pod is not isolated.
    let controls: Vec<String> = planned
        .controls
        .iter()
        .map(|p| {
            format!("{} {} {}:{}/{}", p.id, p.client, p.target.address, p.target.port, p.target.protocol)
        })
        .collect();
    assert_eq!(
        controls,
        [
            "k1 nv-r1/nv-control 10.96.0.10:53/UDP",
            "k2 nv-r1/nv-control 10.96.0.10:53/TCP",
            "k3 nv-r1/nv-control 10.244.0.53:53/UDP",
            "k4 nv-r1/nv-control 10.244.0.53:53/TCP",
            // a may reach no DNS at all: its own server shows it can send.
            "s5 a/nv-client 10.244.9.20:80/TCP",
        ]
    );
    // Through the Service, each endpoint must be shown alive; the node probes them directly.
    assert_eq!(planned.checks[0].backends.len(), 1);
    assert_eq!(planned.checks[0].backends[0].address.to_string(), "10.244.0.53");
    assert_eq!(planned.node_controls.len(), 4);
}

#[test]
fn metadata_skips_the_other_ip_family_and_absent_gitops_namespaces_are_noted() {
    let (snapshot, deployment) = snapshot();
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["metadata", "gitops"]), &deployment);
    let rows: Vec<String> = planned.checks.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "metadata-ipv4 a -> 169.254.169.254 80/TCP allow",
            "metadata-ipv4 b -> 169.254.169.254 80/TCP allow"
        ]
    );
    assert_eq!(planned.checks[0].intent, Some(Intent::Deny));
    let notes: Vec<&str> = planned.notes.iter().map(|n| n.0.as_str()).collect();
    assert!(
        notes.iter().any(|n| n.starts_with("metadata/metadata-ipv6: some targets were skipped")),
        "{notes:?}"
    );
    assert!(notes.contains(&"gitops/into-gitops: skipped: it matches no target in scope"), "{notes:?}");
    assert!(
        notes.contains(&"gitops/out-of-gitops: skipped: no namespace in scope matches its sources"),
        "{notes:?}"
    );
}

#[test]
fn default_deny_probes_only_other_namespaces() {
    let (snapshot, deployment) = snapshot();
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["default-deny"]), &deployment);
    let rows: Vec<String> = planned.checks.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "cross-namespace-ingress a -> b/nv-server 80/TCP deny",
            "cross-namespace-ingress b -> a/nv-server 80/TCP allow"
        ]
    );
    assert_eq!(planned.checks[1].intent, Some(Intent::Deny));
}

#[test]
fn probe_servers_listen_on_every_port_scenarios_probe_them_on() {
    let ports = server_ports(&scenarios(&["matrix", "default-deny", "dns"]));
    let ports: Vec<String> =
        ports.iter().map(|p| format!("{}/{} {:?}", p.port, p.protocol, p.name)).collect();
    assert_eq!(ports, ["80/TCP Some(\"http\")", "80/UDP None"]);
}

#[test]
fn nodelocal_dns_is_probed_where_it_runs() {
    let (snapshot, deployment) = snapshot();
    let mut pods: Vec<_> = snapshot.pods().to_vec();
    let mut cache = pods[0].clone();
    cache.metadata.name = Some("node-local-dns-x1".into());
    cache.metadata.namespace = Some("kube-system".into());
    cache.metadata.labels = Some([("k8s-app".to_string(), "node-local-dns".to_string())].into());
    cache.status.get_or_insert_with(Default::default).pod_ip = Some("10.244.0.60".into());
    pods.push(cache);
    let (snapshot, _) = Snapshot::new(snapshot.namespaces().to_vec(), pods, snapshot.policies().to_vec());
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["dns"]), &deployment);
    let rows: Vec<String> = planned.checks.iter().filter(|c| c.group == "nodelocal-dns").map(row).collect();
    assert_eq!(
        rows,
        [
            "nodelocal-dns a -> NodeLocal DNSCache 169.254.20.10 53/UDP deny",
            "nodelocal-dns a -> NodeLocal DNSCache 169.254.20.10 53/TCP deny",
            "nodelocal-dns b -> NodeLocal DNSCache 169.254.20.10 53/UDP allow",
            "nodelocal-dns b -> NodeLocal DNSCache 169.254.20.10 53/TCP allow",
        ]
    );
}

#[test]
fn cluster_dns_endpoints_come_from_the_endpointslices_ready_pods_when_known() {
    // A second CoreDNS pod the selector matches, not ready; and an endpoint that is no pod.
    let extra = r#"---
apiVersion: v1
kind: Pod
metadata: {name: coredns-starting, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  containers:
  - name: coredns
    ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]
status: {phase: Running, podIP: 10.244.0.54}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-x1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353, protocol: TCP}]
endpoints:
- addresses: [10.244.0.53]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: kube-system, name: coredns}
- addresses: [10.244.0.54]
  conditions: {ready: false}
  targetRef: {kind: Pod, namespace: kube-system, name: coredns-starting}
- addresses: [192.0.2.53]
"#;
    let (snapshot, deployment) = snapshot();
    let text = format!("{}{extra}", cluster());
    let loaded = load(&[Source { name: "cluster.yaml".into(), text }]).unwrap_or_else(|e| panic!("{e}"));
    let slices: Vec<_> = loaded
        .snapshot
        .endpoint_slices_of(&ObjectKey::new("kube-system", "kube-dns"))
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(slices.len(), 1);
    let snapshot = snapshot
        .with_pods(
            loaded
                .snapshot
                .pods()
                .iter()
                .filter(|p| p.metadata.name.as_deref() == Some("coredns-starting"))
                .cloned()
                .collect(),
        )
        .with_endpoint_slices(slices);
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let planned = plan(&engine, &scenarios(&["dns"]), &deployment);
    let pods: Vec<String> = planned
        .checks
        .iter()
        .filter(|c| c.group == "dns-pods")
        .map(|c| {
            format!("{} {}:{}/{}", c.to, c.probe.target.address, c.probe.target.port, c.probe.target.protocol)
        })
        .collect();
    // Only the ready pod, on the port the slice names (not the selector's targetPort).
    assert_eq!(
        pods,
        ["kube-system/coredns 10.244.0.53:5353/UDP", "kube-system/coredns 10.244.0.53:5353/TCP"].repeat(2)
    );
    let via_service =
        planned.checks.iter().find(|c| c.group == "kube-dns-service").expect("through the Service");
    let backends: Vec<String> =
        via_service.backends.iter().map(|b| format!("{}:{}", b.address, b.port)).collect();
    assert_eq!(backends, ["10.244.0.53:5353"], "the Service's backends are the ready endpoints");
    assert!(
        planned.notes.iter().any(|n| n.0.contains("endpoint 192.0.2.53 is not a pod the run knows")),
        "{:?}",
        planned.notes
    );
}
