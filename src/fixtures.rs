//! Generated example clusters, as YAML the loader reads like any file.
//!
//! The shape is the one the upstream Kubernetes e2e NetworkPolicy tests use: namespaces `x`,
//! `y`, `z` labelled `ns: <name>`, pods `a`, `b`, `c` in each labelled `pod: <name>`, every pod
//! serving ports 80 and 81 over TCP, UDP and SCTP under the names `serve-<port>-<protocol>`,
//! and pod IPs `10.244.<namespace index>.<pod index>` (both 1-based).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The upstream e2e cluster: namespaces x, y, z × pods a, b, c.
pub fn upstream_cluster_yaml() -> String {
    Grid::upstream().to_yaml()
}

/// The image kubeadm's cluster DNS runs.
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.0";

/// Cluster DNS as kubeadm sets it up: a `coredns` pod in kube-system at `pod_ip` serving
/// `dns` (53/UDP) and `dns-tcp` (53/TCP), behind the kube-dns Service at 10.96.0.10. Ends with
/// a document separator, so more objects can follow.
pub fn cluster_dns_yaml(pod_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  containers:
  - name: coredns
    image: {COREDNS_IMAGE}
    ports: [{{name: dns, containerPort: 53, protocol: UDP}}, {{name: dns-tcp, containerPort: 53}}]
status: {{phase: Running, podIP: {pod_ip}}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: 10.96.0.10
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}}
---
"
    )
}

/// Every namespace × every pod, in the upstream e2e style.
pub fn grid_yaml(namespaces: &[&str], pods: &[&str]) -> String {
    Grid::new(namespaces, pods).to_yaml()
}

/// A grid cluster with optional extra labels. Namespace `i` (1-based) gets the pod CIDR
/// `10.244.i.0/24`, so at most 255 namespaces and 254 pods per namespace.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    namespaces: Vec<String>,
    pods: Vec<String>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Grid {
    pub fn new(namespaces: &[&str], pods: &[&str]) -> Grid {
        Grid {
            namespaces: namespaces.iter().map(ToString::to_string).collect(),
            pods: pods.iter().map(ToString::to_string).collect(),
            ..Grid::default()
        }
    }

    pub fn upstream() -> Grid {
        Grid::new(&["x", "y", "z"], &["a", "b", "c"])
    }

    /// Adds a label to a namespace (as upstream's "updated namespace" tests do).
    pub fn namespace_label(mut self, namespace: &str, key: &str, value: &str) -> Grid {
        self.namespace_labels.entry(namespace.into()).or_default().insert(key.into(), value.into());
        self
    }

    /// Adds a label to the pod `namespace/name` (as upstream's "updated pod" tests do).
    pub fn pod_label(mut self, pod: &str, key: &str, value: &str) -> Grid {
        self.pod_labels.entry(pod.into()).or_default().insert(key.into(), value.into());
        self
    }

    /// `namespace/pod` of every pod, in the order rows and columns of truth tables use.
    pub fn pod_keys(&self) -> Vec<String> {
        self.namespaces.iter().flat_map(|ns| self.pods.iter().map(move |p| format!("{ns}/{p}"))).collect()
    }

    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for ns in &self.namespaces {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
            );
            let _ = writeln!(out, "    kubernetes.io/metadata.name: {ns}");
            for (key, value) in self.namespace_labels.get(ns).into_iter().flatten() {
                let _ = writeln!(out, "    {key}: {value}");
            }
        }
        for (n, ns) in self.namespaces.iter().enumerate() {
            for (p, pod) in self.pods.iter().enumerate() {
                let ip = format!("10.244.{}.{}", n + 1, p + 1);
                let _ = write!(
                    out,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    pod: {pod}\n"
                );
                for (key, value) in self.pod_labels.get(&format!("{ns}/{pod}")).into_iter().flatten() {
                    let _ = writeln!(out, "    {key}: {value}");
                }
                out.push_str("spec:\n  containers:\n  - name: cont\n    image: probe\n    ports:\n");
                for port in [80, 81] {
                    for protocol in ["TCP", "UDP", "SCTP"] {
                        let _ = write!(
                            out,
                            "    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {protocol}\n",
                            protocol.to_ascii_lowercase()
                        );
                    }
                }
                let _ = write!(out, "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Source, load};

    #[test]
    fn the_upstream_cluster_loads_with_nine_pods_and_no_notes() {
        let loaded = load(&[Source { name: "grid".into(), text: upstream_cluster_yaml() }]).expect("valid");
        assert_eq!(loaded.snapshot.pods().len(), 9);
        assert_eq!(loaded.snapshot.namespaces().len(), 3);
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }

    #[test]
    fn extra_labels_land_on_their_objects() {
        let grid =
            Grid::upstream().namespace_label("y", "ns2", "updated").pod_label("x/b", "pod2", "updated");
        let loaded = load(&[Source { name: "grid".into(), text: grid.to_yaml() }]).expect("valid");
        let s = &loaded.snapshot;
        let y = &s.namespaces()[1];
        assert_eq!(
            y.metadata.labels.as_ref().and_then(|l| l.get("ns2")).map(String::as_str),
            Some("updated")
        );
        let xb = s.pod(s.find_pod(&crate::model::ObjectKey::new("x", "b")).expect("x/b"));
        assert_eq!(
            xb.metadata.labels.as_ref().and_then(|l| l.get("pod2")).map(String::as_str),
            Some("updated")
        );
        assert_eq!(grid.pod_keys()[..4], ["x/a", "x/b", "x/c", "y/a"]);
    }
}
