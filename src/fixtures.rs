//! Generated example clusters, as YAML the loader reads like any file.
//!
//! The shape is the one the upstream Kubernetes e2e NetworkPolicy tests use: namespaces `x`,
//! `y`, `z` labelled `ns: <name>`, pods `a`, `b`, `c` in each labelled `pod: <name>`, every pod
//! serving ports 80 and 81 over TCP, UDP and SCTP under the names `serve-<port>-<protocol>`,
//! and pod IPs `10.244.<namespace index>.<pod index>` (both 1-based).

use std::fmt::Write as _;

/// The upstream e2e cluster: namespaces x, y, z × pods a, b, c.
pub fn upstream_cluster_yaml() -> String {
    grid_yaml(&["x", "y", "z"], &["a", "b", "c"])
}

/// Every namespace × every pod, in the upstream e2e style. Namespace `i` (1-based) gets the
/// pod CIDR `10.244.i.0/24`, so at most 255 namespaces and 254 pods per namespace.
pub fn grid_yaml(namespaces: &[&str], pods: &[&str]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n    \
             kubernetes.io/metadata.name: {ns}\n"
        );
    }
    for (n, ns) in namespaces.iter().enumerate() {
        for (p, pod) in pods.iter().enumerate() {
            let ip = format!("10.244.{}.{}", n + 1, p + 1);
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    \
                 pod: {pod}\nspec:\n  containers:\n  - name: cont\n    image: probe\n    ports:\n"
            );
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
}
