//! What the API server does to an object on its way in: decodes it as its k8s-openapi type
//! (unknown fields found, as `fieldValidation` asks), validates it as the real API server would
//! (names, and for Pods, Services and NetworkPolicies the fields the lab relies on), and fills
//! in the defaults a client reads back.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::catalog::{Kind, Typed};
use super::status::ApiError;
use crate::engine::FieldError;
use crate::input::tree::FieldPath;
use crate::validate::NameRule;

/// What `fieldValidation` asks of unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refused with 400 (kubectl's default since 1.27).
    Strict,
    /// Accepted, with a `Warning` header each.
    Warn,
    /// Dropped silently (the default of other clients).
    #[default]
    Ignore,
}

impl FieldValidation {
    pub fn parse(text: Option<&str>) -> Result<FieldValidation, ApiError> {
        match text {
            None | Some("" | "Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// An object as decoded, and the unknown fields it had (dropped from `object`).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub object: Value,
    pub unknown: Vec<String>,
}

fn typed<T: DeserializeOwned + Serialize>(kind: &Kind, body: &Value) -> Result<Decoded, ApiError> {
    let mut unknown = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| unknown.push(FieldPath::from_ignored(&path).to_string());
    let value: T = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(body, &mut track))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {path}: {error}",
                kind = kind.kind,
                version = kind.version,
                path = FieldPath::from_serde(e.path()),
                error = e.inner()
            ))
        })?;
    let object = serde_json::to_value(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Decoded { object, unknown })
}

/// Decodes `body` as a `kind` object: a typed round trip for the built-in kinds (so the stored
/// object is what the API would store), a JSON object for custom ones.
pub fn decode(kind: &Kind, body: &Value, validation: FieldValidation) -> Result<Decoded, ApiError> {
    use k8s_openapi::api::core::v1 as core;
    if !body.is_object() {
        return Err(ApiError::bad_request(format!("a {} must be a JSON object", kind.kind)));
    }
    for (field, want) in [("apiVersion", kind.api_version()), ("kind", kind.kind.clone())] {
        if let Some(have) = body.get(field).and_then(Value::as_str)
            && have != want
        {
            return Err(ApiError::bad_request(format!(
                "the {field} of the object ({have}) does not match the {field} of the request ({want})"
            )));
        }
    }
    let decoded = match kind.typed {
        Typed::Namespace => typed::<core::Namespace>(kind, body)?,
        Typed::Pod => typed::<core::Pod>(kind, body)?,
        Typed::ConfigMap => typed::<core::ConfigMap>(kind, body)?,
        Typed::Service => typed::<core::Service>(kind, body)?,
        Typed::Event => typed::<core::Event>(kind, body)?,
        Typed::LimitRange => typed::<core::LimitRange>(kind, body)?,
        Typed::Node => typed::<core::Node>(kind, body)?,
        Typed::NetworkPolicy => typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(kind, body)?,
        Typed::EndpointSlice => typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(kind, body)?,
        Typed::ResourceQuota => typed::<core::ResourceQuota>(kind, body)?,
        Typed::Custom => {
            let mut object = body.clone();
            object["apiVersion"] = Value::from(kind.api_version());
            object["kind"] = Value::from(kind.kind.clone());
            Decoded { object, unknown: Vec::new() }
        }
    };
    if validation == FieldValidation::Strict && !decoded.unknown.is_empty() {
        let fields: Vec<String> = decoded.unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
        return Err(ApiError::bad_request(format!(
            "{0} in version {1:?} cannot be handled as a {0}: strict decoding error: {2}",
            kind.kind,
            kind.version,
            fields.join(", ")
        )));
    }
    Ok(decoded)
}

/// The object's name (from `metadata.name`), or why it has none.
pub fn name_of(kind: &Kind, object: &Value) -> Result<String, ApiError> {
    match object["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => Ok(name.to_string()),
        None => Err(ApiError::invalid(
            &kind.kind,
            "",
            &[("metadata.name".into(), "Required value: name or generateName is required".into())],
        )),
    }
}

/// Checks `object` as the API server would before storing it.
pub fn validate(kind: &Kind, object: &Value) -> Result<(), ApiError> {
    let name = name_of(kind, object)?;
    let invalid = |e: FieldError| ApiError::invalid(&kind.kind, &name, &[(e.field, e.message)]);
    let rule = match kind.typed {
        Typed::Namespace => NameRule::Label,
        Typed::Service => NameRule::Rfc1035Label,
        _ => NameRule::Subdomain,
    };
    rule.check(&name).map_err(|e| invalid(FieldError { field: "metadata.name".into(), message: e }))?;
    match kind.typed {
        Typed::Pod => {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(object.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            validate_pod(&pod).map_err(invalid)?;
            crate::engine::validate_pod(&pod).map_err(invalid)?;
        }
        Typed::Service => {
            let service: k8s_openapi::api::core::v1::Service =
                serde_json::from_value(object.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            crate::validate::validate_service(&service).map_err(invalid)?;
        }
        Typed::NetworkPolicy => {
            let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(object.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            crate::engine::validate_policy(&policy).map_err(invalid)?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether `path` has a `..` segment.
fn backsteps(path: &str) -> bool {
    path.split('/').any(|segment| segment == "..")
}

/// A path inside a volume (a ConfigMap item's, a `subPath`): relative, without `..`, as the
/// API server's `validateLocalDescendingPath` has it.
fn descending(path: &str, field: String) -> Result<(), FieldError> {
    if path.starts_with('/') {
        return Err(FieldError {
            field,
            message: format!("Invalid value: {path:?}: must be a relative path"),
        });
    }
    if backsteps(path) {
        return Err(FieldError { field, message: format!("Invalid value: {path:?}: must not contain '..'") });
    }
    Ok(())
}

/// A file mode as volumes take it.
fn mode(mode: Option<i32>, field: String) -> Result<(), FieldError> {
    match mode {
        Some(m) if !(0..=0o777).contains(&m) => Err(FieldError {
            field,
            message: format!(
                "Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"
            ),
        }),
        _ => Ok(()),
    }
}

/// A user or group id.
fn id(value: Option<i64>, field: String) -> Result<(), FieldError> {
    match value {
        Some(v) if !(0..=i64::from(i32::MAX)).contains(&v) => Err(FieldError {
            field,
            message: format!("Invalid value: {v}: must be between 0 and 2147483647, inclusive"),
        }),
        _ => Ok(()),
    }
}

/// What the lab needs of a Pod spec before a kubelet may run it: what the API server checks
/// of names, ids, modes and paths (a volume's name, an item's path, a `subPath` or a
/// `mountPath` never climbs out of where it belongs), volume mounts that name a volume.
fn validate_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Result<(), FieldError> {
    let field = |f: String, m: &str| Err(FieldError { field: f, message: m.to_string() });
    let Some(spec) = &pod.spec else { return field("spec".into(), "Required value") };
    if spec.containers.is_empty() {
        return field("spec.containers".into(), "Required value");
    }
    let mut volumes: Vec<&str> = Vec::new();
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        let here = format!("spec.volumes[{i}]");
        if let Err(e) = NameRule::Label.check(&volume.name) {
            return field(format!("{here}.name"), &e);
        }
        if volumes.contains(&volume.name.as_str()) {
            return field(format!("{here}.name"), &format!("Duplicate value: {:?}", volume.name));
        }
        volumes.push(&volume.name);
        if let Some(map) = &volume.config_map {
            mode(map.default_mode, format!("{here}.configMap.defaultMode"))?;
            for (j, item) in map.items.iter().flatten().enumerate() {
                let at = format!("{here}.configMap.items[{j}]");
                if item.path.is_empty() {
                    return field(format!("{at}.path"), "Required value");
                }
                descending(&item.path, format!("{at}.path"))?;
                mode(item.mode, format!("{at}.mode"))?;
            }
        }
    }
    let pod_security = spec.security_context.clone().unwrap_or_default();
    id(pod_security.run_as_user, "spec.securityContext.runAsUser".into())?;
    id(pod_security.run_as_group, "spec.securityContext.runAsGroup".into())?;
    id(pod_security.fs_group, "spec.securityContext.fsGroup".into())?;
    for (i, group) in pod_security.supplemental_groups.iter().flatten().enumerate() {
        id(Some(*group), format!("spec.securityContext.supplementalGroups[{i}]"))?;
    }
    let mut names = Vec::new();
    let containers = spec.containers.iter().map(|c| ("containers", c));
    let init = spec.init_containers.iter().flatten().map(|c| ("initContainers", c));
    for (i, (list, container)) in containers.chain(init).enumerate() {
        let here = format!("spec.{list}[{i}]");
        if let Err(e) = NameRule::Label.check(&container.name) {
            return field(format!("{here}.name"), &e);
        }
        if names.contains(&container.name.as_str()) {
            return field(format!("{here}.name"), &format!("Duplicate value: {:?}", container.name));
        }
        names.push(&container.name);
        if container.image.as_deref().is_none_or(str::is_empty) {
            return field(format!("{here}.image"), "Required value");
        }
        if let Some(security) = &container.security_context {
            id(security.run_as_user, format!("{here}.securityContext.runAsUser"))?;
            id(security.run_as_group, format!("{here}.securityContext.runAsGroup"))?;
        }
        if let Some(path) = &container.termination_message_path
            && (!path.starts_with('/') || backsteps(path))
        {
            return field(
                format!("{here}.terminationMessagePath"),
                &format!("Invalid value: {path:?}: must be an absolute path without '..'"),
            );
        }
        for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
            let at = format!("{here}.volumeMounts[{j}]");
            if !volumes.contains(&mount.name.as_str()) {
                return field(format!("{at}.name"), &format!("Not found: {:?}", mount.name));
            }
            if !mount.mount_path.starts_with('/') || backsteps(&mount.mount_path) {
                return field(
                    format!("{at}.mountPath"),
                    "Invalid value: must be an absolute path without '..'",
                );
            }
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                descending(sub, format!("{at}.subPath"))?;
            }
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        return field(
            "spec.restartPolicy".into(),
            &format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        );
    }
    Ok(())
}

/// The elements of the list `object[key]`, if it is one. NB: `object[key]` through
/// `IndexMut` would add a `null` where there is nothing.
fn list_mut<'a>(object: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    object.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// Sets `object[key]` to `value` unless it holds something already.
fn default(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        let slot = map.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// The defaults the API server fills in on create (and that hold on every update).
pub fn set_defaults(kind: &Kind, object: &mut Value) {
    match kind.typed {
        Typed::Namespace => {
            let name = object["metadata"]["name"].clone();
            default(&mut object["metadata"], "labels", json!({}));
            object["metadata"]["labels"][crate::model::NAMESPACE_NAME_LABEL] = name;
            default(object, "spec", json!({}));
            default(&mut object["spec"], "finalizers", json!(["kubernetes"]));
            default(object, "status", json!({}));
            default(&mut object["status"], "phase", json!("Active"));
        }
        Typed::Pod => pod_defaults(object),
        Typed::NetworkPolicy => {
            default(object, "spec", json!({}));
            let spec = &mut object["spec"];
            default(spec, "podSelector", json!({}));
            // "If this field is not specified, it will default based on the existence of
            // ingress or egress rules": Ingress always, Egress when egress rules exist.
            if spec["policyTypes"].as_array().is_none_or(Vec::is_empty) {
                let egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
                spec["policyTypes"] = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
            }
            for direction in ["ingress", "egress"] {
                for rule in list_mut(spec, direction) {
                    for port in list_mut(rule, "ports") {
                        default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
        Typed::Service => {
            default(object, "spec", json!({}));
            let spec = &mut object["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            for port in list_mut(spec, "ports") {
                default(port, "protocol", json!("TCP"));
                let number = port["port"].clone();
                default(port, "targetPort", number);
            }
        }
        _ => {}
    }
}

fn pod_defaults(object: &mut Value) {
    default(object, "spec", json!({}));
    let spec = &mut object["spec"];
    for (key, value) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
        ("serviceAccountName", json!("default")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        // The DefaultTolerationSeconds admission plugin's.
        (
            "tolerations",
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ]),
        ),
    ] {
        default(spec, key, value);
    }
    for volume in list_mut(spec, "volumes") {
        if volume["configMap"].is_object() {
            default(&mut volume["configMap"], "defaultMode", json!(0o644));
        }
    }
    for list in ["initContainers", "containers"] {
        for container in list_mut(spec, list) {
            let image = container["image"].as_str().unwrap_or_default();
            // "Defaults to Always if :latest tag is specified, or IfNotPresent otherwise."
            let tag = image.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, tag)| tag);
            let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
                "IfNotPresent"
            } else {
                "Always"
            };
            default(container, "imagePullPolicy", json!(pull));
            default(container, "terminationMessagePath", json!("/dev/termination-log"));
            default(container, "terminationMessagePolicy", json!("File"));
            default(container, "resources", json!({}));
            for port in list_mut(container, "ports") {
                default(port, "protocol", json!("TCP"));
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if container[probe].is_object() {
                    let probe = &mut container[probe];
                    for (key, value) in [
                        ("timeoutSeconds", 1),
                        ("periodSeconds", 10),
                        ("successThreshold", 1),
                        ("failureThreshold", 3),
                    ] {
                        default(probe, key, json!(value));
                    }
                }
            }
        }
    }
    let qos = qos_class(&object["spec"]);
    default(object, "status", json!({}));
    default(&mut object["status"], "phase", json!("Pending"));
    default(&mut object["status"], "qosClass", json!(qos));
}

/// `Guaranteed` (every container's requests equal its limits, for cpu and memory),
/// `BestEffort` (none sets any), else `Burstable`.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let set = |c: &Value, what: &str| c["resources"][what].as_object().is_some_and(|m| !m.is_empty());
    if containers.iter().all(|c| !set(c, "requests") && !set(c, "limits")) {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][r];
            !limit.is_null()
                && (c["resources"]["requests"][r].is_null() || c["resources"]["requests"][r] == *limit)
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Catalog, KindId};
    use super::*;

    #[test]
    fn pods_are_decoded_checked_and_defaulted_as_the_api_server_does() {
        let catalog = Catalog::new(&[]);
        let pods = catalog.get(KindId::PODS);
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}], "bogus": 1}]},
        });
        let strict = decode(pods, &body, FieldValidation::Strict).expect_err("an unknown field");
        assert!(strict.message.contains("unknown field \"spec.containers[0].bogus\""), "{}", strict.message);
        let mut decoded = decode(pods, &body, FieldValidation::Ignore).expect("decodes");
        assert_eq!(decoded.unknown, ["spec.containers[0].bogus"]);
        assert!(decoded.object["spec"]["containers"][0].get("bogus").is_none(), "dropped");
        set_defaults(pods, &mut decoded.object);
        let spec = &decoded.object["spec"];
        assert_eq!(
            (spec["restartPolicy"].as_str(), spec["dnsPolicy"].as_str()),
            (Some("Always"), Some("ClusterFirst"))
        );
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always", "no tag means latest");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(decoded.object["status"]["qosClass"], "BestEffort");
        assert!(
            spec.get("volumes").is_none() && spec.get("initContainers").is_none(),
            "no nulls added: {spec}"
        );
        validate(pods, &decoded.object).expect("valid");

        let no_image = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        let err = validate(pods, &no_image).expect_err("no image");
        assert_eq!(err.message, "Pod \"p\" is invalid: spec.containers[0].image: Required value");
        // Nothing a pod says reaches outside its volumes, nor names an id past the API's range.
        for (spec, blamed) in [
            (json!({"volumes": [{"name": "../../x", "emptyDir": {}}]}), "spec.volumes[0].name"),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "m", "items": [{"key": "k", "path": "/etc/cron.d/x"}]}}]}),
                "spec.volumes[0].configMap.items[0].path",
            ),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "m", "items": [{"key": "k", "path": "a/../../x"}]}}]}),
                "spec.volumes[0].configMap.items[0].path",
            ),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "m", "defaultMode": 0o4755}}]}),
                "spec.volumes[0].configMap.defaultMode",
            ),
            (json!({"securityContext": {"runAsUser": 4_294_967_296_i64}}), "spec.securityContext.runAsUser"),
            (
                json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/a", "subPath": "../../etc"}]}]}),
                "spec.containers[0].volumeMounts[0].subPath",
            ),
            (
                json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/a/../../x"}]}]}),
                "spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                json!({"containers": [{"name": "c", "image": "i", "terminationMessagePath": "/dev/../etc/passwd"}]}),
                "spec.containers[0].terminationMessagePath",
            ),
        ] {
            let mut spec = spec;
            if spec.get("containers").is_none() {
                spec["containers"] = json!([{"name": "c", "image": "i"}]);
            }
            let pod = json!({"metadata": {"name": "p"}, "spec": spec});
            let err = validate(pods, &pod).expect_err(blamed);
            assert_eq!(
                err.details.as_ref().map(|d| d["causes"][0]["field"].clone()),
                Some(json!(blamed)),
                "{}",
                err.message
            );
        }
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p"}});
        assert_eq!(decode(pods, &wrong_kind, FieldValidation::Ignore).expect_err("a Service").code, 400);
    }

    #[test]
    fn network_policies_get_their_policy_types_and_protocols() {
        let catalog = Catalog::new(&[]);
        let policies = catalog.get(KindId::NETWORK_POLICIES);
        let mut policy = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        set_defaults(policies, &mut policy);
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(policy["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        assert!(policy["spec"].get("ingress").is_none(), "no nulls added");
        let bad =
            json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}});
        let err = validate(policies, &bad).expect_err("invalid");
        assert_eq!(err.code, 422);
        assert!(
            err.message.starts_with("NetworkPolicy \"p\" is invalid: spec.policyTypes"),
            "{}",
            err.message
        );
    }
}
