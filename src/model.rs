//! The snapshot: the Namespaces, Pods and NetworkPolicies one run reasons about.
//!
//! Built once from whatever a backend or a file provided, then immutable. It applies the few
//! things the API server would have done to objects written by hand (the namespace name label,
//! the `default` namespace) and sets aside what cannot take part in traffic (terminated pods),
//! each with a [`Note`] so nothing is dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label the control plane sets on every namespace (immutable, value = the name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Index of a pod in [`Snapshot::pods`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(pub u32);

/// Index of a namespace in [`Snapshot::namespaces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceId(pub u32);

/// Index of a policy in [`Snapshot::policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(pub u32);

/// `namespace/name` of a namespaced object, as every output spells it (and as it serializes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }

    /// Parses `namespace/name`; `None` when either half is missing.
    pub fn parse(text: &str) -> Option<ObjectKey> {
        let (namespace, name) = text.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| ObjectKey::new(namespace, name))
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> String {
        key.to_string()
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = String;

    fn try_from(text: String) -> Result<ObjectKey, String> {
        ObjectKey::parse(&text).ok_or_else(|| format!("{text:?} is not namespace/name"))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something worth telling the user about the input, that does not stop the run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note(pub String);

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy object the engine does not model (a CNI's own policy kinds, AdminNetworkPolicy):
/// it may allow or deny anything, so no verdict it may touch is confident.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Unmodelled {
    /// `apiVersion` as written, e.g. `cilium.io/v2`.
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-wide kinds: they may touch every connection.
    pub namespace: Option<String>,
    pub name: String,
}

impl Unmodelled {
    /// The kinds known to hold network policy, by API group: (group, kind, cluster-wide).
    pub const KINDS: [(&'static str, &'static str, bool); 10] = [
        ("crd.projectcalico.org", "NetworkPolicy", false),
        ("crd.projectcalico.org", "GlobalNetworkPolicy", true),
        ("projectcalico.org", "NetworkPolicy", false),
        ("projectcalico.org", "GlobalNetworkPolicy", true),
        ("cilium.io", "CiliumNetworkPolicy", false),
        ("cilium.io", "CiliumClusterwideNetworkPolicy", true),
        ("policy.networking.k8s.io", "AdminNetworkPolicy", true),
        ("policy.networking.k8s.io", "BaselineAdminNetworkPolicy", true),
        ("crd.antrea.io", "ClusterNetworkPolicy", true),
        ("crd.antrea.io", "NetworkPolicy", false),
    ];

    /// Whether `apiVersion`/`kind` is one of [`Self::KINDS`], and if so whether it is cluster-wide.
    pub fn cluster_wide(api_version: &str, kind: &str) -> Option<bool> {
        let group = api_version.split_once('/').map_or("", |(group, _)| group);
        Self::KINDS.iter().find(|(g, k, _)| *g == group && *k == kind).map(|(_, _, wide)| *wide)
    }
}

impl fmt::Display for Unmodelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{} ({})", self.kind, self.name, self.api_version),
            None => write!(f, "{} {} ({})", self.kind, self.name, self.api_version),
        }
    }
}

/// The cluster objects of one run, sorted by namespace and name, with lookups by key.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
    services: Vec<Service>,
    endpoint_slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    unmodelled: Vec<Unmodelled>,
    terminated: Vec<Pod>,
    namespace_index: HashMap<String, NamespaceId>,
    pod_index: HashMap<ObjectKey, PodId>,
}

impl Snapshot {
    /// Builds the snapshot. Objects without a name are skipped; pods and policies without a
    /// namespace go to `default` (as `kubectl apply` would place them); namespaces that pods or
    /// policies refer to but the input lacks are assumed to exist with only their name label;
    /// pods that have terminated (phase `Succeeded` or `Failed`) are set aside: they have no
    /// network, and their IP may already belong to another pod.
    pub fn new(
        namespaces: Vec<Namespace>,
        pods: Vec<Pod>,
        policies: Vec<NetworkPolicy>,
    ) -> (Snapshot, Vec<Note>) {
        let mut notes = Vec::new();
        let mut by_name: BTreeMap<String, Namespace> = BTreeMap::new();
        for mut ns in namespaces {
            let Some(name) = ns.metadata.name.clone() else {
                notes.push(Note("skipped a Namespace without metadata.name".into()));
                continue;
            };
            ns.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(NAMESPACE_NAME_LABEL.into(), name.clone());
            by_name.insert(name, ns);
        }

        let mut live = Vec::new();
        let mut terminated = Vec::new();
        for mut pod in pods {
            if !place_in_namespace(&mut pod.metadata, "Pod", &mut notes) {
                continue;
            }
            match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some(phase @ ("Succeeded" | "Failed")) => {
                    notes.push(Note(format!(
                        "pod {} has terminated (phase {phase}): it has no network and is left out",
                        key_of(&pod.metadata)
                    )));
                    terminated.push(pod);
                }
                _ => live.push(pod),
            }
        }
        let mut kept_policies = Vec::new();
        for mut policy in policies {
            if place_in_namespace(&mut policy.metadata, "NetworkPolicy", &mut notes) {
                kept_policies.push(policy);
            }
        }

        let referenced = live
            .iter()
            .map(|p| &p.metadata)
            .chain(kept_policies.iter().map(|p| &p.metadata))
            .filter_map(|m| m.namespace.clone());
        for namespace in referenced.collect::<Vec<_>>() {
            if by_name.contains_key(&namespace) {
                continue;
            }
            notes.push(Note(format!(
                "namespace {namespace} is referenced but not in the input: assuming it has only \
                 the label {NAMESPACE_NAME_LABEL}={namespace}, so namespaceSelector verdicts \
                 involving it may be wrong (include Namespaces: kubectl get ns,pods,netpol -A -o yaml)"
            )));
            by_name.insert(namespace.clone(), synthesized_namespace(&namespace));
        }

        live.sort_by_key(|p| key_of(&p.metadata));
        kept_policies.sort_by_key(|p| key_of(&p.metadata));
        let namespaces: Vec<Namespace> = by_name.into_values().collect();
        let namespace_index = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| (name_of(&ns.metadata).to_string(), NamespaceId(i as u32)))
            .collect();
        let pod_index =
            live.iter().enumerate().map(|(i, p)| (key_of(&p.metadata), PodId(i as u32))).collect();
        let snapshot = Snapshot {
            namespaces,
            pods: live,
            policies: kept_policies,
            services: Vec::new(),
            endpoint_slices: Vec::new(),
            nodes: Vec::new(),
            unmodelled: Vec::new(),
            terminated,
            namespace_index,
            pod_index,
        };
        (snapshot, notes)
    }

    /// Namespaces, sorted by name.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Pods that can take part in traffic, sorted by `namespace/name`.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// NetworkPolicies, sorted by `namespace/name`.
    pub fn policies(&self) -> &[NetworkPolicy] {
        &self.policies
    }

    /// Adds Services (for cluster DNS and, in the lab, kube-proxy's translation), sorted by
    /// `namespace/name`; those without a namespace go to `default`.
    pub fn with_services(mut self, mut services: Vec<Service>) -> Snapshot {
        for service in &mut services {
            if service.metadata.namespace.as_deref().is_none_or(str::is_empty) {
                service.metadata.namespace = Some("default".into());
            }
        }
        services.sort_by_key(|s| key_of(&s.metadata));
        self.services = services;
        self
    }

    /// Services, sorted by `namespace/name`.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The same cluster with `extra` pods added (or replacing pods of the same key): the
    /// tool's probe clients, which a Kubernetes backend creates only when their batch runs.
    pub fn with_pods(&self, extra: Vec<Pod>) -> Snapshot {
        let keys: Vec<ObjectKey> = extra.iter().map(|p| key_of(&p.metadata)).collect();
        let mut pods: Vec<Pod> = self
            .pods
            .iter()
            .chain(&self.terminated)
            .filter(|p| !keys.contains(&key_of(&p.metadata)))
            .cloned()
            .collect();
        pods.extend(extra);
        self.rebuilt(pods, self.policies.clone())
    }

    /// The same cluster with `extra` NetworkPolicies added (or replacing policies of the same
    /// key): the run's control policies.
    pub fn with_policies(&self, extra: Vec<NetworkPolicy>) -> Snapshot {
        let keys: Vec<ObjectKey> = extra.iter().map(|p| key_of(&p.metadata)).collect();
        let mut policies: Vec<NetworkPolicy> =
            self.policies.iter().filter(|p| !keys.contains(&key_of(&p.metadata))).cloned().collect();
        policies.extend(extra);
        let pods = self.pods.iter().chain(&self.terminated).cloned().collect();
        self.rebuilt(pods, policies)
    }

    /// This cluster's other objects with `pods` and `policies`.
    fn rebuilt(&self, pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> Snapshot {
        let (snapshot, _) = Snapshot::new(self.namespaces.clone(), pods, policies);
        snapshot
            .with_services(self.services.clone())
            .with_endpoint_slices(self.endpoint_slices.clone())
            .with_nodes(self.nodes.clone())
            .with_unmodelled(self.unmodelled.clone())
    }

    /// Adds EndpointSlices (for cluster DNS: the Service's ready endpoints).
    pub fn with_endpoint_slices(
        mut self,
        mut slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    ) -> Snapshot {
        slices.sort_by_key(|s| key_of(&s.metadata));
        self.endpoint_slices = slices;
        self
    }

    /// The EndpointSlices of `service` (by the `kubernetes.io/service-name` label), sorted.
    pub fn endpoint_slices_of(
        &self,
        service: &ObjectKey,
    ) -> Vec<&k8s_openapi::api::discovery::v1::EndpointSlice> {
        self.endpoint_slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(service.namespace.as_str())
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| *n == service.name)
            })
            .collect()
    }

    /// Adds Nodes (for recognising the cloud provider).
    pub fn with_nodes(mut self, nodes: Vec<k8s_openapi::api::core::v1::Node>) -> Snapshot {
        self.nodes = nodes;
        self
    }

    /// Nodes, when the input or the cluster gave them.
    pub fn nodes(&self) -> &[k8s_openapi::api::core::v1::Node] {
        &self.nodes
    }

    /// Adds policy objects the engine does not model.
    pub fn with_unmodelled(mut self, mut unmodelled: Vec<Unmodelled>) -> Snapshot {
        unmodelled.sort();
        unmodelled.dedup();
        self.unmodelled = unmodelled;
        self
    }

    /// Policy objects the engine does not model, sorted.
    pub fn unmodelled(&self) -> &[Unmodelled] {
        &self.unmodelled
    }

    /// The unmodelled objects that may touch traffic of a pod in `namespace`: cluster-wide ones
    /// and those in that namespace.
    pub fn unmodelled_touching<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Unmodelled> + 'a {
        self.unmodelled.iter().filter(move |u| u.namespace.as_deref().is_none_or(|ns| ns == namespace))
    }

    /// Pods left out because they have terminated.
    pub fn terminated_pods(&self) -> &[Pod] {
        &self.terminated
    }

    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize]
    }

    pub fn pod_key(&self, id: PodId) -> ObjectKey {
        key_of(&self.pod(id).metadata)
    }

    pub fn policy_key(&self, id: PolicyId) -> ObjectKey {
        key_of(&self.policies[id.0 as usize].metadata)
    }

    pub fn pod_ids(&self) -> impl ExactSizeIterator<Item = PodId> + use<> {
        (0..self.pods.len() as u32).map(PodId)
    }

    pub fn find_pod(&self, key: &ObjectKey) -> Option<PodId> {
        self.pod_index.get(key).copied()
    }

    pub fn find_namespace(&self, name: &str) -> Option<NamespaceId> {
        self.namespace_index.get(name).copied()
    }

    /// Whether `key` names a pod that was left out because it terminated.
    pub fn is_terminated(&self, key: &ObjectKey) -> bool {
        self.terminated.iter().any(|p| key_of(&p.metadata) == *key)
    }
}

/// `namespace/name` of an object's metadata (empty halves when absent).
pub fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// An object's name, or `""` when it has none.
pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn place_in_namespace(meta: &mut ObjectMeta, kind: &str, notes: &mut Vec<Note>) -> bool {
    let Some(name) = meta.name.as_deref() else {
        notes.push(Note(format!("skipped a {kind} without metadata.name")));
        return false;
    };
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        notes.push(Note(format!(
            "{kind} {name} has no metadata.namespace: placed in `default`, as kubectl apply would"
        )));
        meta.namespace = Some("default".into());
    }
    true
}

fn synthesized_namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.into(), name.into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta { name: Some(name.into()), namespace: namespace.map(Into::into), ..ObjectMeta::default() }
    }

    fn pod(namespace: Option<&str>, name: &str, phase: Option<&str>) -> Pod {
        Pod {
            metadata: meta(namespace, name),
            status: Some(PodStatus { phase: phase.map(Into::into), ..PodStatus::default() }),
            ..Pod::default()
        }
    }

    #[test]
    fn namespaces_get_the_name_label_the_control_plane_sets() {
        let ns = Namespace { metadata: meta(None, "x"), ..Namespace::default() };
        let (snapshot, notes) = Snapshot::new(vec![ns], vec![], vec![]);
        assert!(notes.is_empty());
        let labels = snapshot.namespaces()[0].metadata.labels.as_ref();
        assert_eq!(labels.and_then(|l| l.get(NAMESPACE_NAME_LABEL)).map(String::as_str), Some("x"));
    }

    #[test]
    fn a_pod_in_a_missing_namespace_is_kept_and_noted() {
        let (snapshot, notes) = Snapshot::new(vec![], vec![pod(Some("y"), "a", None)], vec![]);
        assert_eq!(snapshot.pods().len(), 1);
        assert!(snapshot.find_namespace("y").is_some());
        assert!(notes.iter().any(|n| n.0.contains("namespace y is referenced")), "{notes:?}");
    }

    #[test]
    fn terminated_pods_are_set_aside_with_a_note() {
        let pods = vec![
            pod(Some("x"), "done", Some("Succeeded")),
            pod(Some("x"), "crashed", Some("Failed")),
            pod(Some("x"), "live", Some("Running")),
        ];
        let (snapshot, notes) = Snapshot::new(vec![], pods, vec![]);
        assert_eq!(snapshot.pods().len(), 1);
        assert_eq!(snapshot.terminated_pods().len(), 2);
        assert!(snapshot.is_terminated(&ObjectKey::new("x", "done")));
        assert_eq!(notes.iter().filter(|n| n.0.contains("terminated")).count(), 2);
    }

    #[test]
    fn objects_without_a_namespace_go_to_default() {
        let (snapshot, notes) = Snapshot::new(vec![], vec![pod(None, "a", None)], vec![]);
        assert_eq!(snapshot.pod_key(PodId(0)), ObjectKey::new("default", "a"));
        assert!(notes.iter().any(|n| n.0.contains("placed in `default`")));
    }

    #[test]
    fn pods_are_sorted_and_found_by_key() {
        let pods = vec![pod(Some("y"), "b", None), pod(Some("x"), "c", None), pod(Some("x"), "a", None)];
        let (snapshot, _) = Snapshot::new(vec![], pods, vec![]);
        let keys: Vec<String> = snapshot.pod_ids().map(|id| snapshot.pod_key(id).to_string()).collect();
        assert_eq!(keys, ["x/a", "x/c", "y/b"]);
        assert_eq!(snapshot.find_pod(&ObjectKey::new("y", "b")), Some(PodId(2)));
    }

    #[test]
    fn object_keys_parse_only_namespace_slash_name() {
        assert_eq!(ObjectKey::parse("x/a"), Some(ObjectKey::new("x", "a")));
        for bad in ["x", "/a", "x/", "x/a/b", ""] {
            assert_eq!(ObjectKey::parse(bad), None, "{bad}");
        }
    }
}
