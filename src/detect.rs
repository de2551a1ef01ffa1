//! Which CNI and cloud provider a cluster runs, from what runs in it and its nodes, and what
//! that means for NetworkPolicy: EKS and AKS do not enforce it by default, GKE Dataplane V2
//! does, flannel never does. Pure. A guess from names and labels, never a verdict: the canary
//! is the proof.

use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;

/// Whether what runs in the cluster enforces NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// An enforcer runs.
    Expected,
    /// Only networking that does not enforce NetworkPolicy was found.
    NotExpected,
    /// Nothing recognised, or a CNI whose versions differ.
    Unknown,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Enforcement::Expected => "NetworkPolicy should be enforced",
            Enforcement::NotExpected => "nothing here enforces NetworkPolicy",
            Enforcement::Unknown => "whether NetworkPolicy is enforced is not known from what runs",
        })
    }
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// e.g. `EKS`, `AKS`, `GKE`, `kind`, `k3s`, `AWS`.
    pub provider: Option<String>,
    /// What was recognised, with whether each enforces: `Calico (enforces)`.
    pub cni: Vec<String>,
    pub enforcement: Enforcement,
    /// What to do about it.
    pub advice: Vec<String>,
}

/// A networking component: how to recognise its pods, and whether it enforces.
struct Component {
    name: &'static str,
    /// (label key, value) on its pods, or a pod name prefix (key `""`).
    marks: &'static [(&'static str, &'static str)],
    enforces: Option<bool>,
}

const COMPONENTS: [Component; 11] = [
    Component { name: "Calico", marks: &[("k8s-app", "calico-node")], enforces: Some(true) },
    Component { name: "GKE Dataplane V2", marks: &[("", "anetd-")], enforces: Some(true) },
    Component { name: "Cilium", marks: &[("k8s-app", "cilium")], enforces: Some(true) },
    Component {
        name: "Azure Network Policy Manager",
        marks: &[("k8s-app", "azure-npm")],
        enforces: Some(true),
    },
    Component { name: "kube-router", marks: &[("k8s-app", "kube-router")], enforces: Some(true) },
    Component { name: "Antrea", marks: &[("component", "antrea-agent")], enforces: Some(true) },
    Component { name: "Weave Net", marks: &[("name", "weave-net")], enforces: Some(true) },
    // The VPC CNI enforces only with its network policy agent enabled: see `aws_node`.
    Component { name: "AWS VPC CNI", marks: &[("k8s-app", "aws-node")], enforces: None },
    Component {
        name: "flannel",
        marks: &[("app", "flannel"), ("k8s-app", "flannel")],
        enforces: Some(false),
    },
    Component { name: "Azure CNI", marks: &[("k8s-app", "azure-cns")], enforces: Some(false) },
    // kindnet enforces NetworkPolicy from v1.0 (kind 0.24) on; older ones do not.
    Component { name: "kindnet", marks: &[("app", "kindnet")], enforces: None },
];

/// The node label by which the netpol-verify lab says which CNI it emulates (`enforcing`,
/// `none`, `ingress-only`, ...), as a real CNI says what it is by the pods it runs.
pub const LAB_CNI_LABEL: &str = "lab.netpol-verify.io/cni";

/// The lab's CNI, from its node's label: what it is and whether it enforces.
fn lab_cni(nodes: &[Node]) -> Option<(String, Option<bool>)> {
    let mode = nodes.iter().find_map(|n| n.metadata.labels.as_ref()?.get(LAB_CNI_LABEL).cloned())?;
    let enforces = match mode.as_str() {
        "enforcing" | "reject" => Some(true),
        "none" => Some(false),
        // Enforces part of NetworkPolicy: the canary tells which part.
        _ => None,
    };
    Some((format!("the lab's emulated CNI, mode {mode}"), enforces))
}

fn marked(pod: &Pod, marks: &[(&str, &str)]) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    marks.iter().any(|(key, value)| match *key {
        "" => name.starts_with(value),
        key => labels.and_then(|l| l.get(key)).is_some_and(|v| v == value),
    })
}

/// Whether an aws-node pod runs the network policy agent with enforcement on.
fn aws_policy_agent_enabled(pod: &Pod) -> bool {
    pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
        c.name == "aws-network-policy-agent"
            && c.args.iter().flatten().any(|a| a == "--enable-network-policy=true")
    })
}

fn provider(nodes: &[Node]) -> Option<String> {
    let node = nodes.first()?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).unwrap_or_default();
    let has = |key: &str| labels.contains_key(key);
    let named = if provider_id.starts_with("aws://") {
        if has("eks.amazonaws.com/nodegroup")
            || has("eks.amazonaws.com/compute-type")
            || has("alpha.eksctl.io/cluster-name")
        {
            "EKS"
        } else {
            "AWS"
        }
    } else if provider_id.starts_with("azure://") {
        if has("kubernetes.azure.com/cluster") { "AKS" } else { "Azure" }
    } else if provider_id.starts_with("gce://") {
        if has("cloud.google.com/gke-nodepool") { "GKE" } else { "Google Cloud" }
    } else if provider_id.starts_with("kind://") {
        "kind"
    } else if provider_id.starts_with("netpol-verify-lab://") {
        "netpol-verify lab"
    } else if labels.get("node.kubernetes.io/instance-type").is_some_and(|t| t == "k3s") {
        "k3s"
    } else {
        return None;
    };
    Some(named.to_string())
}

/// What the pods (every namespace: CNIs live in kube-system, calico-system, kube-flannel...)
/// and nodes say about the cluster's networking.
pub fn detect(pods: &[Pod], nodes: &[Node]) -> Detection {
    let provider = provider(nodes);
    let mut cni = Vec::new();
    let mut enforcers = Vec::new();
    let mut non_enforcers = Vec::new();
    let mut unsure = Vec::new();
    for component in &COMPONENTS {
        let found: Vec<&Pod> = pods.iter().filter(|p| marked(p, component.marks)).collect();
        if found.is_empty() || (component.name == "Cilium" && enforcers.contains(&"GKE Dataplane V2")) {
            continue;
        }
        let enforces = match component.name {
            "AWS VPC CNI" => Some(found.iter().any(|p| aws_policy_agent_enabled(p))),
            _ => component.enforces,
        };
        let label = match (component.name, enforces) {
            ("AWS VPC CNI", Some(true)) => "AWS VPC CNI (network policy agent enabled: enforces)".to_string(),
            ("AWS VPC CNI", _) => {
                "AWS VPC CNI (network policy agent not enabled: does not enforce)".to_string()
            }
            (name, Some(true)) => format!("{name} (enforces)"),
            (name, Some(false)) => format!("{name} (does not enforce NetworkPolicy)"),
            (name, None) => format!("{name} (enforces in recent versions only)"),
        };
        cni.push(label);
        match enforces {
            Some(true) => enforcers.push(component.name),
            Some(false) => non_enforcers.push(component.name),
            None => unsure.push(component.name),
        }
    }
    if let Some((name, enforces)) = lab_cni(nodes) {
        cni.push(name);
        match enforces {
            Some(true) => enforcers.push("the lab's CNI"),
            Some(false) => non_enforcers.push("the lab's CNI"),
            None => unsure.push("the lab's CNI"),
        }
    }
    if provider.as_deref() == Some("k3s") && enforcers.is_empty() {
        // k3s embeds kube-router's NetworkPolicy controller unless started without it.
        cni.push(
            "k3s network policy controller (enforces unless k3s runs with --disable-network-policy)".into(),
        );
        unsure.push("k3s");
    }
    let enforcement = if !enforcers.is_empty() {
        Enforcement::Expected
    } else if !non_enforcers.is_empty() && unsure.is_empty() {
        Enforcement::NotExpected
    } else {
        Enforcement::Unknown
    };
    let mut advice = Vec::new();
    if enforcement != Enforcement::Expected {
        match provider.as_deref() {
            Some("EKS") => advice.push(
                "EKS does not enforce NetworkPolicy by default: enable the VPC CNI's network policy agent \
                 (enableNetworkPolicy: \"true\" in the vpc-cni add-on configuration) or install Calico"
                    .into(),
            ),
            Some("AKS") => advice.push(
                "AKS enforces NetworkPolicy only on clusters created with --network-policy azure, calico or \
                 cilium; update the cluster's network policy engine"
                    .into(),
            ),
            Some("GKE") => advice.push(
                "GKE enforces NetworkPolicy with Dataplane V2 or with network policy enforcement enabled \
                 (gcloud container clusters update --enable-network-policy)"
                    .into(),
            ),
            _ => {}
        }
        if non_enforcers.contains(&"flannel") {
            advice.push("flannel never enforces NetworkPolicy: add Calico for policy (canal) or move to a CNI that enforces".into());
        }
        if enforcement == Enforcement::Unknown {
            advice.push("the canary scenario shows whether, and how fast, policies are enforced here".into());
        }
    }
    Detection { provider, cni, enforcement, advice }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, NodeSpec, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("kube-system".into()),
                labels: Some(
                    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn node(provider_id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-1".into()),
                labels: Some(
                    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec { provider_id: Some(provider_id.into()), ..NodeSpec::default() }),
            status: None,
        }
    }

    fn aws_node(agent_enabled: bool) -> Pod {
        let mut pod = pod("aws-node-x1", &[("k8s-app", "aws-node")]);
        let flag = format!("--enable-network-policy={agent_enabled}");
        pod.spec = Some(PodSpec {
            containers: vec![
                Container { name: "aws-node".into(), ..Container::default() },
                Container {
                    name: "aws-network-policy-agent".into(),
                    args: Some(vec![flag]),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        });
        pod
    }

    #[test]
    fn eks_without_the_policy_agent_enforces_nothing_and_says_what_to_enable() {
        let nodes = [node("aws:///eu-west-1a/i-0abc", &[("eks.amazonaws.com/nodegroup", "ng-1")])];
        let detection = detect(&[aws_node(false)], &nodes);
        assert_eq!(detection.provider.as_deref(), Some("EKS"));
        assert_eq!(detection.enforcement, Enforcement::NotExpected);
        assert!(detection.advice[0].contains("enableNetworkPolicy"), "{:?}", detection.advice);
        let detection = detect(&[aws_node(true)], &nodes);
        assert_eq!(detection.enforcement, Enforcement::Expected);
        assert!(detection.advice.is_empty());
        // Calico on EKS enforces, whatever the VPC CNI's agent does.
        let detection =
            detect(&[aws_node(false), pod("calico-node-a", &[("k8s-app", "calico-node")])], &nodes);
        assert_eq!(detection.enforcement, Enforcement::Expected);
    }

    #[test]
    fn aks_gke_flannel_and_kind_are_told_apart() {
        let aks = [node("azure:///subscriptions/x/vm-0", &[("kubernetes.azure.com/cluster", "rg")])];
        let detection = detect(&[pod("azure-cns-1", &[("k8s-app", "azure-cns")])], &aks);
        assert_eq!(
            (detection.provider.as_deref(), detection.enforcement),
            (Some("AKS"), Enforcement::NotExpected)
        );
        assert!(detection.advice[0].contains("--network-policy"), "{:?}", detection.advice);
        let with_npm = detect(&[pod("azure-npm-1", &[("k8s-app", "azure-npm")])], &aks);
        assert_eq!(with_npm.enforcement, Enforcement::Expected);

        let gke = [node("gce://project/zone/vm", &[("cloud.google.com/gke-nodepool", "default")])];
        let dataplane_v2 = detect(&[pod("anetd-abcde", &[("k8s-app", "cilium")])], &gke);
        assert_eq!(dataplane_v2.cni, ["GKE Dataplane V2 (enforces)"]);
        assert_eq!(dataplane_v2.enforcement, Enforcement::Expected);

        let flannel = detect(&[pod("kube-flannel-ds-1", &[("app", "flannel")])], &[]);
        assert_eq!(flannel.enforcement, Enforcement::NotExpected);
        assert!(flannel.advice.iter().any(|a| a.contains("flannel never enforces")));

        let kind = detect(
            &[pod("kindnet-1", &[("app", "kindnet")])],
            &[node("kind://docker/kind/kind-control-plane", &[])],
        );
        assert_eq!((kind.provider.as_deref(), kind.enforcement), (Some("kind"), Enforcement::Unknown));
        assert!(kind.advice.iter().any(|a| a.contains("canary")));
    }

    #[test]
    fn the_lab_says_which_cni_it_emulates_on_its_node() {
        let lab = |mode: &str| [node("netpol-verify-lab://demo", &[(LAB_CNI_LABEL, mode)])];
        let enforcing = detect(&[], &lab("enforcing"));
        assert_eq!(enforcing.provider.as_deref(), Some("netpol-verify lab"));
        assert_eq!(enforcing.cni, ["the lab's emulated CNI, mode enforcing"]);
        assert_eq!(enforcing.enforcement, Enforcement::Expected);
        assert_eq!(detect(&[], &lab("none")).enforcement, Enforcement::NotExpected);
        assert_eq!(detect(&[], &lab("tcp-only")).enforcement, Enforcement::Unknown);
    }

    #[test]
    fn nothing_recognised_is_unknown() {
        let detection = detect(&[pod("coredns-1", &[("k8s-app", "kube-dns")])], &[]);
        assert_eq!((detection.provider, detection.enforcement), (None, Enforcement::Unknown));
        assert!(detection.cni.is_empty());
    }
}
