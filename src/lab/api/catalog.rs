//! The kinds the lab's API serves: what discovery lists, and how each is stored and checked.

use crate::model::Unmodelled;

/// A served kind, by its place in the [`Catalog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindId(pub u16);

/// The built-in kinds, in catalog order.
impl KindId {
    pub const NAMESPACES: KindId = KindId(0);
    pub const PODS: KindId = KindId(1);
    pub const CONFIG_MAPS: KindId = KindId(2);
    pub const SERVICES: KindId = KindId(3);
    pub const EVENTS: KindId = KindId(4);
    pub const LIMIT_RANGES: KindId = KindId(5);
    pub const NODES: KindId = KindId(6);
    pub const NETWORK_POLICIES: KindId = KindId(7);
    pub const ENDPOINT_SLICES: KindId = KindId(8);
    pub const RESOURCE_QUOTAS: KindId = KindId(9);
}

/// What the API knows of a kind's objects: a typed k8s-openapi kind it checks and defaults,
/// or a custom resource (the policy CRDs of Calico, Cilium, Antrea and AdminNetworkPolicy)
/// it stores as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typed {
    Namespace,
    Pod,
    ConfigMap,
    Service,
    Event,
    LimitRange,
    Node,
    NetworkPolicy,
    EndpointSlice,
    ResourceQuota,
    Custom,
}

/// One served kind.
#[derive(Debug, Clone)]
pub struct Kind {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources: `status`, `log`.
    pub subresources: &'static [&'static str],
    pub typed: Typed,
}

impl Kind {
    /// `v1`, `networking.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The path of its collection: `/api/v1/pods`, or in `namespace`.
    pub fn path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() { "/api".to_string() } else { format!("/apis/{}", self.group) };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{root}/{}/namespaces/{ns}/{}", self.version, self.plural),
            None => format!("{root}/{}/{}", self.version, self.plural),
        }
    }

    /// `pods`, or `networkpolicies.networking.k8s.io`: how messages name it.
    pub fn resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// Every kind the lab serves.
#[derive(Debug, Clone)]
pub struct Catalog {
    kinds: Vec<Kind>,
}

fn builtin(
    group: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
    typed: Typed,
) -> Kind {
    Kind {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        namespaced,
        short_names,
        subresources,
        typed,
    }
}

impl Catalog {
    /// The built-in kinds, and the policy CRDs of `custom` (group, kind, cluster-wide) as a
    /// cluster that has them installed serves them.
    pub fn new(custom: &[(String, String, bool)]) -> Catalog {
        let mut kinds = vec![
            builtin("", "Namespace", "namespaces", false, &["ns"], &["status"], Typed::Namespace),
            builtin("", "Pod", "pods", true, &["po"], &["log", "status"], Typed::Pod),
            builtin("", "ConfigMap", "configmaps", true, &["cm"], &[], Typed::ConfigMap),
            builtin("", "Service", "services", true, &["svc"], &["status"], Typed::Service),
            builtin("", "Event", "events", true, &["ev"], &[], Typed::Event),
            builtin("", "LimitRange", "limitranges", true, &["limits"], &[], Typed::LimitRange),
            builtin("", "Node", "nodes", false, &["no"], &["status"], Typed::Node),
            builtin(
                "networking.k8s.io",
                "NetworkPolicy",
                "networkpolicies",
                true,
                &["netpol"],
                &[],
                Typed::NetworkPolicy,
            ),
            builtin(
                "discovery.k8s.io",
                "EndpointSlice",
                "endpointslices",
                true,
                &[],
                &[],
                Typed::EndpointSlice,
            ),
            builtin(
                "",
                "ResourceQuota",
                "resourcequotas",
                true,
                &["quota"],
                &["status"],
                Typed::ResourceQuota,
            ),
        ];
        for (group, kind, cluster_wide) in custom {
            if kinds.iter().any(|k| k.group == *group && k.kind == *kind) {
                continue;
            }
            let version = Unmodelled::KINDS
                .iter()
                .find(|(g, k, _)| g == group && k == kind)
                .map_or("v1", |(g, _, _)| custom_version(g));
            kinds.push(Kind {
                group: group.clone(),
                version: version.into(),
                kind: kind.clone(),
                plural: plural(kind),
                singular: kind.to_ascii_lowercase(),
                namespaced: !cluster_wide,
                short_names: &[],
                subresources: &[],
                typed: Typed::Custom,
            });
        }
        Catalog { kinds }
    }

    /// The custom kinds `unmodelled` objects need, once each.
    pub fn custom_kinds(unmodelled: &[Unmodelled]) -> Vec<(String, String, bool)> {
        let mut kinds: Vec<(String, String, bool)> = Vec::new();
        for object in unmodelled {
            let group = object.api_version.split_once('/').map_or("", |(g, _)| g).to_string();
            let entry = (group, object.kind.clone(), object.namespace.is_none());
            if !kinds.contains(&entry) {
                kinds.push(entry);
            }
        }
        kinds
    }

    pub fn get(&self, id: KindId) -> &Kind {
        &self.kinds[usize::from(id.0)]
    }

    pub fn ids(&self) -> impl Iterator<Item = KindId> + '_ {
        (0..self.kinds.len()).map(|i| KindId(i as u16))
    }

    /// The kind served at `group`/`version` as `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<KindId> {
        self.ids().find(|id| {
            let k = self.get(*id);
            k.group == group && k.version == version && k.plural == plural
        })
    }

    /// The kind of an object that says `apiVersion` and `kind`.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<KindId> {
        self.ids().find(|id| {
            let k = self.get(*id);
            k.api_version() == api_version && k.kind == kind
        })
    }

    /// Every group with its versions, the core group (`""`) first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for kind in &self.kinds {
            match groups.iter_mut().find(|(g, _)| *g == kind.group) {
                Some((_, versions)) if !versions.contains(&kind.version) => {
                    versions.push(kind.version.clone())
                }
                Some(_) => {}
                None => groups.push((kind.group.clone(), vec![kind.version.clone()])),
            }
        }
        groups
    }

    /// The kinds of `group`/`version`.
    pub fn of_version<'a>(&'a self, group: &'a str, version: &'a str) -> impl Iterator<Item = KindId> + 'a {
        self.ids().filter(move |id| self.get(*id).group == group && self.get(*id).version == version)
    }
}

/// A kind's resource name, as its CRD declares it: `ciliumnetworkpolicies`.
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

/// The version the policy CRDs are served at, as their projects publish them.
fn custom_version(group: &str) -> &'static str {
    match group {
        "cilium.io" => "v2",
        "policy.networking.k8s.io" => "v1alpha1",
        "crd.antrea.io" => "v1beta1",
        "projectcalico.org" => "v3",
        _ => "v1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_sit_at_their_ids_and_custom_ones_follow() {
        let catalog = Catalog::new(&[("cilium.io".into(), "CiliumNetworkPolicy".into(), false)]);
        assert_eq!(catalog.get(KindId::PODS).plural, "pods");
        assert_eq!(catalog.get(KindId::NETWORK_POLICIES).api_version(), "networking.k8s.io/v1");
        assert_eq!(catalog.get(KindId::ENDPOINT_SLICES).kind, "EndpointSlice");
        assert_eq!(catalog.get(KindId::RESOURCE_QUOTAS).kind, "ResourceQuota");
        let cilium = catalog.find("cilium.io", "v2", "ciliumnetworkpolicies").expect("served");
        assert_eq!(
            catalog.get(cilium).path(Some("x")),
            "/apis/cilium.io/v2/namespaces/x/ciliumnetworkpolicies"
        );
        assert_eq!(catalog.find_kind("v1", "Pod"), Some(KindId::PODS));
        let groups: Vec<String> = catalog.groups().into_iter().map(|(g, _)| g).collect();
        assert_eq!(groups, ["", "networking.k8s.io", "discovery.k8s.io", "cilium.io"]);
    }
}
