//! Create, replace, patch and delete, with what the real API server adds on the way: admission
//! (a namespace that exists and is not terminating, scheduling to the lab's nodes, a clusterIP
//! for a Service), defaults, validation, resourceVersion preconditions (409), graceful pod
//! deletion, namespaces that terminate, finalizers, dry runs and `fieldValidation`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::Api;
use super::catalog::{KindId, Typed};
use super::objects::{self, FieldValidation};
use super::status::ApiError;
use super::store::{Key, metadata, now};

/// What a write stored (or, in a dry run, would have), and the warnings for the client.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// Query parameters, as a map.
pub type Query = HashMap<String, String>;

fn dry_run(query: &Query) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("dryRun must be All, not {other:?}"))),
    }
}

fn warnings(validation: FieldValidation, unknown: &[String]) -> Vec<String> {
    match validation {
        FieldValidation::Warn => unknown.iter().map(|f| format!("unknown field {f:?}")).collect(),
        _ => Vec::new(),
    }
}

/// `.metadata.deletionTimestamp` is set.
pub fn terminating(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

impl Api {
    /// The key of `name` of `kind` in `namespace` (ignored for cluster-scoped kinds).
    pub fn key(&self, kind: KindId, namespace: Option<&str>, name: &str) -> Key {
        let namespaced = self.catalog.get(kind).namespaced;
        Key::new(kind, if namespaced { namespace.unwrap_or_default() } else { "" }, name)
    }

    /// Refuses content in a namespace that does not exist or is being deleted.
    fn admit_namespace(&self, kind: KindId, namespace: &str, name: &str) -> Result<(), ApiError> {
        let info = self.catalog.get(kind);
        if !info.namespaced {
            return Ok(());
        }
        match self.store.get(&Key::new(KindId::NAMESPACES, "", namespace)) {
            None => Err(ApiError::not_found("namespaces", namespace)),
            Some(ns) if terminating(&ns) => {
                // Worded, and detailed, as kube-apiserver's NamespaceLifecycle admission does.
                let mut e = ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    info.resource()
                ));
                let mut details = json!({
                    "name": name,
                    "kind": info.plural,
                    "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}],
                });
                // The core group is no group at all: absent, not null.
                if !info.group.is_empty() {
                    details["group"] = Value::from(info.group.clone());
                }
                e.details = Some(details);
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    /// The ResourceQuota admission plugin, for the pod count (`pods`, `count/pods`): a pod
    /// past a quota's limit is refused (403), as a namespace with a quota refuses it.
    fn admit_quota(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let (quotas, _) = self.store.list(KindId::RESOURCE_QUOTAS, Some(namespace));
        let (pods, _) = self.store.list(KindId::PODS, Some(namespace));
        // Quotas count pods that have not ended.
        let used = pods
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        for quota in quotas {
            for key in ["pods", "count/pods"] {
                let Some(limit) = quota["spec"]["hard"][key].as_str().and_then(|l| l.parse::<usize>().ok())
                else {
                    continue;
                };
                if used + 1 > limit {
                    let quota_name = quota["metadata"]["name"].as_str().unwrap_or_default();
                    return Err(ApiError::forbidden(format!(
                        "pods \"{name}\" is forbidden: exceeded quota: {quota_name}, requested: {key}=1, used: {key}={used}, limited: {key}={limit}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// POST to a collection.
    pub fn create(
        &self,
        kind: KindId,
        namespace: Option<&str>,
        body: &Value,
        query: &Query,
    ) -> Result<Written, ApiError> {
        let info = self.catalog.get(kind);
        let validation = FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
        let decoded = objects::decode(info, body, validation)?;
        let mut object = decoded.object;
        let meta = metadata(&mut object);
        if info.namespaced {
            let path_ns = namespace.unwrap_or("default");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != path_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), Value::from(path_ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty)
            && let Some(prefix) = meta.get("generateName").and_then(Value::as_str).map(str::to_string)
        {
            meta.insert("name".into(), Value::from(format!("{prefix}{}", self.suffix())));
        }
        for field in ["uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            meta.remove(field);
        }
        let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        self.admit_namespace(kind, &namespace, &name)?;
        if info.subresources.contains(&"status") && kind != KindId::NODES {
            object.as_object_mut().map(|o| o.remove("status"));
        }
        objects::set_defaults(info, &mut object);
        match info.typed {
            Typed::Pod => self.schedule(&mut object),
            Typed::Service => self.allocate_cluster_ip(&mut object),
            _ => {}
        }
        objects::validate(info, &object)?;
        let name = objects::name_of(info, &object)?;
        if info.typed == Typed::Pod {
            self.admit_quota(&namespace, &name)?;
        }
        let key = self.key(kind, Some(&namespace), &name);
        let warnings = warnings(validation, &decoded.unknown);
        if dry_run(query)? {
            if self.store.get(&key).is_some() {
                return Err(ApiError::already_exists(&info.resource(), &name));
            }
            return Ok(Written { object, warnings, created: true });
        }
        let object = self.store.create(key, object, &info.resource())?;
        if info.typed == Typed::Pod {
            self.on_pod_created(&object);
        }
        Ok(Written { object, warnings, created: true })
    }

    /// What an update keeps from the stored object: its status (written only through the
    /// status subresource), and its deletion marks.
    fn carry_over(&self, kind: KindId, old: &Value, new: &mut Value) {
        let info = self.catalog.get(kind);
        if info.subresources.contains(&"status") {
            new["status"] = old["status"].clone();
            if new["status"].is_null() {
                new.as_object_mut().map(|o| o.remove("status"));
            }
        }
        let meta = metadata(new);
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "generateName"] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
    }

    /// What an update of `old` to `new` stores: checked, defaulted and validated; a conflict
    /// when `new` names a resourceVersion that is not `old`'s.
    fn updated(
        &self,
        key: &Key,
        old: &Value,
        new: &Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        let info = self.catalog.get(key.kind);
        let wanted = new["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty());
        if wanted.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(ApiError::conflict(&info.resource(), &key.name));
        }
        let mut next = if subresource == Some("status") {
            let mut next = old.clone();
            next["status"] = new["status"].clone();
            next
        } else {
            let mut next = new.clone();
            self.carry_over(key.kind, old, &mut next);
            next
        };
        objects::set_defaults(info, &mut next);
        if info.typed == Typed::Pod && subresource.is_none() {
            pod_update_allowed(old, &next, &key.name)?;
        }
        objects::validate(info, &next)?;
        if let Some(meta) = next["metadata"].as_object_mut() {
            meta.insert("namespace".into(), old["metadata"]["namespace"].clone());
            if !info.namespaced {
                meta.remove("namespace");
            }
        }
        Ok(next)
    }

    /// Checks an update of `old` to `new` and stores it (atomically: `new`'s resourceVersion,
    /// when it has one, must be the stored one).
    fn store_update(&self, key: &Key, new: Value, subresource: Option<&str>) -> Result<Value, ApiError> {
        let info = self.catalog.get(key.kind);
        let resource = info.resource();
        let stored = self.store.update(key, &resource, |old| self.updated(key, old, &new, subresource))?;
        // A deletion that waited on finalizers ends when the last one goes.
        let finalized = stored["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if terminating(&stored) && finalized && info.typed != Typed::Namespace && info.typed != Typed::Pod {
            return self.store.delete(key, &resource);
        }
        Ok(stored)
    }

    /// PUT of an object (or of its status).
    pub fn replace(
        &self,
        key: &Key,
        body: &Value,
        query: &Query,
        subresource: Option<&str>,
    ) -> Result<Written, ApiError> {
        let info = self.catalog.get(key.kind);
        let validation = FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
        let decoded = objects::decode(info, body, validation)?;
        let name = objects::name_of(info, &decoded.object)?;
        if name != key.name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        let warnings = warnings(validation, &decoded.unknown);
        if dry_run(query)? {
            // Checked as a write would be, stored nowhere.
            let current =
                self.store.get(key).ok_or_else(|| ApiError::not_found(&info.resource(), &key.name))?;
            let object = self.updated(key, &current, &decoded.object, subresource)?;
            return Ok(Written { object, warnings, created: false });
        }
        let object = self.store_update(key, decoded.object, subresource)?;
        Ok(Written { object, warnings, created: false })
    }

    /// PATCH of an object (or of its status).
    pub fn patch(
        &self,
        key: &Key,
        content_type: &str,
        body: &[u8],
        query: &Query,
        subresource: Option<&str>,
    ) -> Result<Written, ApiError> {
        let info = self.catalog.get(key.kind);
        let current = self.store.get(key).ok_or_else(|| ApiError::not_found(&info.resource(), &key.name))?;
        let schema = super::openapi::schema_name(info);
        let patched = super::patch::apply(
            content_type,
            &self.schemas,
            &schema,
            info.typed == Typed::Custom,
            &current,
            body,
        )?;
        let mut patched = patched;
        // The patch's own precondition, if it names a resourceVersion; otherwise the one read.
        let wanted = patched["metadata"]["resourceVersion"].clone();
        if wanted.is_null() || wanted == current["metadata"]["resourceVersion"] {
            patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        self.replace(key, &patched, query, subresource)
    }

    /// DELETE of an object, with its DeleteOptions (body, or query).
    pub fn delete(&self, key: &Key, options: &Value, query: &Query) -> Result<Value, ApiError> {
        let info = self.catalog.get(key.kind);
        let resource = info.resource();
        let current = self.store.get(key).ok_or_else(|| ApiError::not_found(&resource, &key.name))?;
        let preconditions = &options["preconditions"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(wanted) = preconditions[field].as_str()
                && Some(wanted) != current["metadata"][field].as_str()
            {
                return Err(ApiError::conflict(&resource, &key.name).with_message(format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {}",
                    current["metadata"][field].as_str().unwrap_or_default()
                )));
            }
        }
        if dry_run(query)? {
            return Ok(current);
        }
        let grace = options["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
        match info.typed {
            Typed::Pod => self.delete_pod(key, &current, grace),
            Typed::Namespace => self.terminate_namespace(key),
            _ if current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) => {
                self.store.update(key, &resource, |old| {
                    let mut next = old.clone();
                    if !terminating(old) {
                        metadata(&mut next).insert("deletionTimestamp".into(), Value::from(now()));
                        metadata(&mut next).insert("deletionGracePeriodSeconds".into(), Value::from(0));
                    }
                    Ok(next)
                })
            }
            _ => self.store.delete(key, &resource),
        }
    }

    /// A pod goes at once when it never ran on a node, has ended, or the grace period is 0;
    /// otherwise it is marked, and the kubelet removes it once its containers stopped.
    fn delete_pod(&self, key: &Key, current: &Value, grace: Option<i64>) -> Result<Value, ApiError> {
        let resource = self.catalog.get(key.kind).resource();
        let phase = current["status"]["phase"].as_str().unwrap_or_default();
        let scheduled = current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        // "A negative value is set to 1": the API server's rule.
        let grace =
            match grace.or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30) {
                g if g < 0 => 1,
                g => g,
            };
        if grace == 0 || !scheduled || phase == "Succeeded" || phase == "Failed" {
            return self.store.delete(key, &resource);
        }
        self.store.update(key, &resource, |old| {
            let mut next = old.clone();
            if !terminating(old)
                || old["metadata"]["deletionGracePeriodSeconds"].as_i64().is_some_and(|g| grace < g)
            {
                let at = k8s_openapi::jiff::Timestamp::now()
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(grace))
                    .map_or_else(
                        |_| now(),
                        |t| k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string(),
                    );
                metadata(&mut next).insert("deletionTimestamp".into(), Value::from(at));
                metadata(&mut next).insert("deletionGracePeriodSeconds".into(), Value::from(grace));
            }
            Ok(next)
        })
    }

    /// A namespace terminates: its contents are removed (by the namespace controller), then
    /// the namespace itself.
    fn terminate_namespace(&self, key: &Key) -> Result<Value, ApiError> {
        let terminated = self.store.update(key, "namespaces", |old| {
            let mut next = old.clone();
            if !terminating(old) {
                metadata(&mut next).insert("deletionTimestamp".into(), Value::from(now()));
                metadata(&mut next).insert("deletionGracePeriodSeconds".into(), Value::from(0));
                next["status"]["phase"] = Value::from("Terminating");
            }
            Ok(next)
        })?;
        self.sweep_namespace(&key.name);
        Ok(terminated)
    }

    /// Deletes what a terminating namespace still holds; the namespace itself once it is empty.
    pub fn sweep_namespace(&self, namespace: &str) {
        let Some(ns) = self.store.get(&Key::new(KindId::NAMESPACES, "", namespace)) else { return };
        if !terminating(&ns) {
            return;
        }
        let mut left = 0;
        for kind in self.catalog.ids().filter(|k| self.catalog.get(*k).namespaced) {
            let (items, _) = self.store.list(kind, Some(namespace));
            for item in items {
                left += 1;
                let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = Key::new(kind, namespace, name);
                if !terminating(&item) {
                    let _ = self.delete(&key, &Value::Null, &Query::new());
                }
            }
        }
        if left == 0 {
            let _ = self.store.delete(&Key::new(KindId::NAMESPACES, "", namespace), "namespaces");
        }
    }

    /// A random-looking suffix for `generateName`.
    fn suffix(&self) -> String {
        let n = self.store.revision().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
        let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5).map(|i| alphabet[((n >> (i * 5)) % alphabet.len() as u64) as usize] as char).collect()
    }

    /// A pod is bound at once to the first node (by name) whose labels its nodeSelector and
    /// required node affinity accept; one that fits none stays Pending, unschedulable, as the
    /// scheduler leaves it.
    fn schedule(&self, pod: &mut Value) {
        if self.nodes.is_empty() || pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
            return;
        }
        let mut nodes: Vec<&super::NodeInfo> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let chosen = nodes.iter().find(|n| node_fits(&pod["spec"], &n.name, &n.labels));
        let fits = chosen.is_some();
        if let Some(node) = chosen {
            pod["spec"]["nodeName"] = Value::from(node.name.clone());
        }
        let condition = if fits {
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()})
        } else {
            json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": now(),
                   "reason": "Unschedulable",
                   "message": format!("0/{n} nodes are available: {n} node(s) didn't match Pod's node affinity/selector. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling.", n = self.nodes.len())})
        };
        pod["status"]["conditions"] = json!([condition]);
    }

    fn on_pod_created(&self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        match pod["spec"]["nodeName"].as_str() {
            Some(node) => self.record(
                pod,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {namespace}/{name} to {node}"),
                "default-scheduler",
            ),
            None if !self.nodes.is_empty() => self.record(
                pod,
                "Warning",
                "FailedScheduling",
                pod["status"]["conditions"][0]["message"].as_str().unwrap_or_default(),
                "default-scheduler",
            ),
            None => {}
        }
    }

    /// A clusterIP for a Service that asks for one: the first free address of 10.96.0.0/12
    /// after the API server's own (10.96.0.1).
    fn allocate_cluster_ip(&self, service: &mut Value) {
        let ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
        if !ip.is_empty() || service["spec"]["type"] == "ExternalName" {
            return;
        }
        let (services, _) = self.store.list(KindId::SERVICES, None);
        let used: Vec<&str> = services.iter().filter_map(|s| s["spec"]["clusterIP"].as_str()).collect();
        let free = (2u32..(1 << 20))
            .map(|n| std::net::Ipv4Addr::from(0x0a60_0000 | n).to_string())
            .find(|ip| !used.contains(&ip.as_str()));
        if let Some(ip) = free {
            service["spec"]["clusterIP"] = Value::from(ip.clone());
            service["spec"]["clusterIPs"] = json!([ip]);
        }
    }

    /// Records an Event about `object`, as `component` reports it.
    pub fn record(&self, object: &Value, type_: &str, reason: &str, message: &str, component: &str) {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
        let kind = object["kind"].as_str().unwrap_or("Pod");
        let n = self.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name =
            format!("{}.{:016x}", meta["name"].as_str().unwrap_or("object"), n + 0x1800_0000_0000_0000);
        let at = now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "kind": kind,
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": object["apiVersion"],
                "resourceVersion": meta["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "source": {"component": component, "host": object["spec"]["nodeName"]},
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
            "type": type_,
            "reportingComponent": component,
            "reportingInstance": object["spec"]["nodeName"].as_str().unwrap_or_default(),
        });
        let key = Key::new(KindId::EVENTS, namespace, name);
        let _ = self.store.create(key, event, "events");
    }
}

impl ApiError {
    /// The same error with another message.
    pub fn with_message(mut self, message: String) -> ApiError {
        self.message = message;
        self
    }
}

/// What a pod update may change: the spec only in the fields the API server lets change.
fn pod_update_allowed(old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let comparable = |spec: &Value| {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            for container in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                container.as_object_mut().map(|c| c.remove("image"));
            }
        }
        if let Some(map) = spec.as_object_mut() {
            map.remove("activeDeadlineSeconds");
            map.remove("tolerations");
        }
        spec
    };
    if comparable(&old["spec"]) == comparable(&new["spec"]) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "Pod",
        name,
        &[(
            "spec".into(),
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
        )],
    ))
}

/// Whether a pod's nodeSelector and required node affinity admit the node `name` with `labels`.
fn node_fits(spec: &Value, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let selector_ok = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array();
    let requirement_ok = |r: &Value, value: Option<&str>| {
        let values: Vec<&str> =
            r["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match r["operator"].as_str() {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    };
    let affinity_ok = terms.is_none_or(|terms| {
        terms.iter().any(|term| {
            let fields = term["matchFields"].as_array().into_iter().flatten().all(|r| {
                let value = (r["key"] == "metadata.name").then_some(name);
                requirement_ok(r, value)
            });
            let expressions = term["matchExpressions"].as_array().into_iter().flatten().all(|r| {
                requirement_ok(r, r["key"].as_str().and_then(|k| labels.get(k)).map(String::as_str))
            });
            fields && expressions
        })
    });
    selector_ok && affinity_ok
}
