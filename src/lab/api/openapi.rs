//! The OpenAPI v3 documents kubectl reads (`kubectl apply` takes its strategic-merge-patch
//! metadata and its `fieldValidation` support from them): generated once, from the very
//! k8s-openapi types the API decodes, with the Kubernetes extensions kubectl looks for —
//! `x-kubernetes-group-version-kind` on each kind's schema and operations, and the patch
//! strategies and merge keys of [`MERGE_KEYS`], which the API's own strategic merge patch
//! follows too ([`super::patch`]).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use super::catalog::{Catalog, Kind, Typed};

/// Lists merged element by element in a strategic merge patch (`patchStrategy:"merge"` in
/// the Kubernetes Go types): (schema, property, merge key; `None` for a list of strings merged
/// as a set).
pub const MERGE_KEYS: [(&str, &str, Option<&str>); 20] = [
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", None),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", Some("uid")),
    ("io.k8s.api.core.v1.PodSpec", "containers", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "volumes", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", Some("ip")),
    ("io.k8s.api.core.v1.Container", "ports", Some("containerPort")),
    ("io.k8s.api.core.v1.Container", "env", Some("name")),
    ("io.k8s.api.core.v1.Container", "volumeMounts", Some("mountPath")),
    ("io.k8s.api.core.v1.Container", "volumeDevices", Some("devicePath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", Some("name")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", Some("mountPath")),
    ("io.k8s.api.core.v1.PodStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", Some("ip")),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", Some("port")),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", Some("type")),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", Some("type")),
];

/// The schema name of a kind's k8s-openapi type (`io.k8s.api.core.v1.Pod`).
pub fn schema_name(kind: &Kind) -> String {
    use k8s_openapi::api::core::v1 as core;
    match kind.typed {
        Typed::Namespace => core::Namespace::schema_name().into(),
        Typed::Pod => core::Pod::schema_name().into(),
        Typed::ConfigMap => core::ConfigMap::schema_name().into(),
        Typed::Service => core::Service::schema_name().into(),
        Typed::Event => core::Event::schema_name().into(),
        Typed::LimitRange => core::LimitRange::schema_name().into(),
        Typed::Node => core::Node::schema_name().into(),
        Typed::NetworkPolicy => k8s_openapi::api::networking::v1::NetworkPolicy::schema_name().into(),
        Typed::EndpointSlice => k8s_openapi::api::discovery::v1::EndpointSlice::schema_name().into(),
        Typed::ResourceQuota => core::ResourceQuota::schema_name().into(),
        Typed::Custom => format!("{}.{}.{}", kind.group, kind.version, kind.kind),
    }
}

/// Every schema the served kinds need, by name, with the Kubernetes extensions.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    pub components: Map<String, Value>,
}

impl Schemas {
    pub fn new(catalog: &Catalog) -> Schemas {
        use k8s_openapi::api::core::v1 as core;
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        generator.subschema_for::<core::Namespace>();
        generator.subschema_for::<core::Pod>();
        generator.subschema_for::<core::ConfigMap>();
        generator.subschema_for::<core::Service>();
        generator.subschema_for::<core::Event>();
        generator.subschema_for::<core::LimitRange>();
        generator.subschema_for::<core::Node>();
        generator.subschema_for::<k8s_openapi::api::networking::v1::NetworkPolicy>();
        generator.subschema_for::<k8s_openapi::api::discovery::v1::EndpointSlice>();
        generator.subschema_for::<core::ResourceQuota>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        let mut components = generator.take_definitions(true);
        for id in catalog.ids() {
            let kind = catalog.get(id);
            let name = schema_name(kind);
            if kind.typed == Typed::Custom {
                components.insert(
                    name.clone(),
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            }
            if let Some(schema) = components.get_mut(&name).and_then(Value::as_object_mut) {
                schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk(kind)]));
            }
        }
        for (schema, property, key) in MERGE_KEYS {
            let Some(field) = components.get_mut(schema).and_then(|s| s["properties"].get_mut(property))
            else {
                continue;
            };
            if let Some(field) = field.as_object_mut() {
                field.insert("x-kubernetes-patch-strategy".into(), Value::from("merge"));
                if let Some(key) = key {
                    field.insert("x-kubernetes-patch-merge-key".into(), Value::from(key));
                }
            }
        }
        Schemas { components }
    }

    /// The schema a `$ref`, an `allOf` wrapping one, or a list's `items` points to.
    fn resolve<'a>(&'a self, schema: &'a Value) -> Option<&'a str> {
        let target = schema.get("allOf").and_then(|a| a.get(0)).unwrap_or(schema);
        target.get("$ref")?.as_str()?.strip_prefix("#/components/schemas/")
    }

    /// What a strategic merge patch needs of property `field` of schema `schema`: the schema of
    /// its value (for a list, of its items), and, for a list merged element by element, its
    /// merge key (`Some(None)`: a set of strings).
    pub fn property(&self, schema: &str, field: &str) -> (Option<String>, Option<Option<String>>) {
        let Some(property) = self.components.get(schema).and_then(|s| s["properties"].get(field)) else {
            return (None, None);
        };
        let items = property.get("items").unwrap_or(property);
        let target = self.resolve(items).or_else(|| self.resolve(property)).map(str::to_string);
        let merged = (property.get("x-kubernetes-patch-strategy").and_then(Value::as_str) == Some("merge"))
            .then(|| {
                property.get("x-kubernetes-patch-merge-key").and_then(Value::as_str).map(str::to_string)
            });
        (target, merged)
    }
}

fn gvk(kind: &Kind) -> Value {
    json!({"group": kind.group, "version": kind.version, "kind": kind.kind})
}

/// The documents: `/openapi/v3` lists them, `/openapi/v3/api/v1` (and so on) is one.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// By path below `/openapi/v3/` (`api/v1`, `apis/networking.k8s.io/v1`): the hash and the
    /// document.
    docs: BTreeMap<String, (String, Vec<u8>)>,
}

impl Documents {
    pub fn new(catalog: &Catalog, schemas: &Schemas) -> Documents {
        let mut docs = BTreeMap::new();
        for (group, versions) in catalog.groups() {
            for version in versions {
                let path = if group.is_empty() {
                    format!("api/{version}")
                } else {
                    format!("apis/{group}/{version}")
                };
                let document = document(catalog, schemas, &group, &version);
                let bytes = serde_json::to_vec(&document).unwrap_or_default();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut hasher);
                docs.insert(path, (format!("{:016X}", hasher.finish()), bytes));
            }
        }
        Documents { docs }
    }

    /// `GET /openapi/v3`.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(path, (hash, _))| {
                (path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}))
            })
            .collect();
        json!({"paths": paths})
    }

    /// `GET /openapi/v3/{path}`.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.docs.get(path).map(|(_, bytes)| bytes.as_slice())
    }
}

fn parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(
    kind: &Kind,
    action: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
    response: &str,
) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", kind.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind),
    });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

fn document(catalog: &Catalog, schemas: &Schemas, group: &str, version: &str) -> Value {
    let writes = || {
        vec![
            parameter("dryRun", "When present, indicates that modifications should not be persisted."),
            parameter(
                "fieldManager",
                "A name associated with the actor or entity that is making these changes.",
            ),
            parameter(
                "fieldValidation",
                "How the server handles unknown fields: Ignore, Warn or Strict (the lab's API supports all three).",
            ),
        ]
    };
    let mut paths = Map::new();
    for id in catalog.of_version(group, version) {
        let kind = catalog.get(id);
        let schema = schema_name(kind);
        let body = |content: &[&str]| {
            let content: Map<String, Value> = content
                .iter()
                .map(|c| {
                    (c.to_string(), json!({"schema": {"$ref": format!("#/components/schemas/{schema}")}}))
                })
                .collect();
            json!({"content": content, "required": true})
        };
        let mut patches = vec!["application/json-patch+json", "application/merge-patch+json"];
        if kind.typed != Typed::Custom {
            patches.push("application/strategic-merge-patch+json");
        }
        let item_ops = |suffix: &str| {
            json!({
                "get": operation(kind, "get", vec![], None, &schema),
                "put": operation(kind, "put", writes(), Some(body(&["application/json"])), &schema),
                "patch": operation(kind, "patch", writes(), Some(body(&patches)), &schema),
                "delete": if suffix.is_empty() { operation(kind, "delete", writes(), None, &schema) } else { Value::Null },
            })
        };
        let collection = kind.path(Some("{namespace}"));
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(kind, "list", vec![parameter("labelSelector", ""), parameter("fieldSelector", "")], None, &schema),
                "post": operation(kind, "post", writes(), Some(body(&["application/json"])), &schema),
            }),
        );
        let mut item = item_ops("");
        strip_nulls(&mut item);
        paths.insert(format!("{collection}/{{name}}"), item);
        if kind.subresources.contains(&"status") {
            let mut status = item_ops("status");
            strip_nulls(&mut status);
            paths.insert(format!("{collection}/{{name}}/status"), status);
        }
        if kind.namespaced {
            paths.insert(kind.path(None), json!({"get": operation(kind, "list", vec![], None, &schema)}));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (the netpol-verify lab)", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas.components},
    })
}

fn strip_nulls(value: &mut Value) {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_kubectl_apply_looks_for() {
        let catalog = Catalog::new(&[]);
        let schemas = Schemas::new(&catalog);
        let documents = Documents::new(&catalog, &schemas);
        let index = documents.index();
        let url = index["paths"]["apis/networking.k8s.io/v1"]["serverRelativeURL"].as_str().expect("listed");
        assert!(url.starts_with("/openapi/v3/apis/networking.k8s.io/v1?hash="), "{url}");
        let doc: Value = serde_json::from_slice(documents.get("apis/networking.k8s.io/v1").expect("served"))
            .expect("JSON");
        let patch = &doc["paths"]["/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"]
            ["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "NetworkPolicy");
        assert!(patch["requestBody"]["content"].get("application/strategic-merge-patch+json").is_some());
        let names: Vec<&str> =
            patch["parameters"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        assert!(names.contains(&"fieldValidation"), "kubectl looks at the operation's parameters: {names:?}");
        let policy = &doc["components"]["schemas"]["io.k8s.api.networking.v1.NetworkPolicy"];
        assert_eq!(policy["x-kubernetes-group-version-kind"][0]["kind"], "NetworkPolicy");
        assert!(doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["annotations"].is_object());
        // The merge metadata the API's own patches use.
        let (item, merged) = schemas.property("io.k8s.api.core.v1.PodSpec", "containers");
        assert_eq!(
            (item.as_deref(), merged),
            (Some("io.k8s.api.core.v1.Container"), Some(Some("name".to_string())))
        );
        let (spec, merged) = schemas.property("io.k8s.api.networking.v1.NetworkPolicy", "spec");
        assert_eq!((spec.as_deref(), merged), (Some("io.k8s.api.networking.v1.NetworkPolicySpec"), None));
        let (_, merged) = schemas.property("io.k8s.api.networking.v1.NetworkPolicySpec", "ingress");
        assert_eq!(merged, None, "a policy's rules are replaced as a whole");
        for (schema, property, _) in MERGE_KEYS {
            assert!(schemas.property(schema, property).1.is_some(), "{schema}.{property} is in the schemas");
        }
    }
}
