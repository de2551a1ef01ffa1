//! API discovery as clients read it: `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//! `/apis/{group}/{version}` and `/version` (the unaggregated documents, which kubectl and
//! kube-rs both take).

use serde_json::{Value, json};

use super::catalog::Catalog;

/// The Kubernetes release whose types the lab serves (k8s-openapi's `v1_37`).
pub const MINOR: &str = "37";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0+netpol-verify-lab.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "none (the netpol-verify lab)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group(name: &str, versions: &[String]) -> Value {
    let listed: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": listed, "preferredVersion": listed.first()})
}

/// `GET /apis`.
pub fn groups(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = catalog
        .groups()
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, versions)| group(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub fn group_of(catalog: &Catalog, name: &str) -> Option<Value> {
    let (_, versions) = catalog.groups().into_iter().find(|(g, _)| g == name && !g.is_empty())?;
    let mut group = group(name, &versions);
    group["kind"] = Value::from("APIGroup");
    group["apiVersion"] = Value::from("v1");
    Some(group)
}

/// `GET /api/v1`, `GET /apis/{group}/{version}`: every resource and subresource served there.
pub fn resources(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for id in catalog.of_version(group, version) {
        let kind = catalog.get(id);
        let verbs =
            json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
        resources.push(json!({
            "name": kind.plural,
            "singularName": kind.singular,
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": verbs,
            "shortNames": kind.short_names,
        }));
        for sub in kind.subresources {
            let verbs = if *sub == "log" { json!(["get"]) } else { json!(["get", "patch", "update"]) };
            let sub_kind = if *sub == "log" { "Pod" } else { kind.kind.as_str() };
            resources.push(json!({
                "name": format!("{}/{sub}", kind.plural),
                "singularName": "",
                "namespaced": kind.namespaced,
                "kind": sub_kind,
                "verbs": verbs,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_kind_and_subresource() {
        let catalog = Catalog::new(&[("cilium.io".into(), "CiliumNetworkPolicy".into(), false)]);
        let groups = groups(&catalog);
        let names: Vec<&str> =
            groups["groups"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str()).collect();
        assert_eq!(names, ["networking.k8s.io", "discovery.k8s.io", "cilium.io"]);
        let core = resources(&catalog, "", "v1").expect("core");
        let names: Vec<&str> =
            core["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        assert!(
            names.contains(&"pods/log") && names.contains(&"pods/status") && names.contains(&"limitranges")
        );
        assert!(resources(&catalog, "apps", "v1").is_none());
        assert_eq!(group_of(&catalog, "cilium.io").expect("served")["preferredVersion"]["version"], "v2");
    }
}
