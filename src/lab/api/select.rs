//! `labelSelector` and `fieldSelector` of list and watch requests, against stored objects.

use std::collections::BTreeMap;

use kube_core::{Selector, SelectorExt};
use serde_json::Value;

use super::catalog::{Kind, Typed};
use super::status::ApiError;
use crate::selector::{FieldTerm, parse_fields, parse_labels};

/// What a request selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    labels: Option<Selector>,
    fields: Vec<FieldTerm>,
}

/// The fields a kind can be selected by, besides `metadata.name` and `metadata.namespace`.
fn fields_of(kind: &Kind) -> &'static [&'static str] {
    match kind.typed {
        Typed::Pod => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Typed::Event => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Typed::Namespace => &["status.phase"],
        Typed::Node => &["spec.unschedulable"],
        _ => &[],
    }
}

impl Selection {
    /// The selectors of a request on `kind`; 400 for what cannot be parsed or selected by.
    pub fn parse(kind: &Kind, labels: Option<&str>, fields: Option<&str>) -> Result<Selection, ApiError> {
        let labels = match labels.map(str::trim).filter(|l| !l.is_empty()) {
            Some(text) => Some(
                parse_labels(text)
                    .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            ),
            None => None,
        };
        let fields = parse_fields(fields.unwrap_or_default()).map_err(ApiError::bad_request)?;
        for term in &fields {
            let known = ["metadata.name", "metadata.namespace"].contains(&term.key.as_str())
                || fields_of(kind).contains(&term.key.as_str());
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {} (for {}: metadata.name, metadata.namespace{})",
                    term.key,
                    kind.resource(),
                    fields_of(kind).iter().map(|f| format!(", {f}")).collect::<String>()
                )));
            }
        }
        Ok(Selection { labels, fields })
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let labels_ok = self.labels.as_ref().is_none_or(|selector| {
            let labels: BTreeMap<String, String> = object["metadata"]["labels"]
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            selector.matches(&labels)
        });
        labels_ok
            && self.fields.iter().all(|term| {
                let value = field_value(object, &term.key);
                (value == term.value) != term.negated
            })
    }
}

/// A field's value as field selectors compare it: a string, `true`/`false`, or empty.
fn field_value(object: &Value, path: &str) -> String {
    let value = path.split('.').fold(object, |v, part| &v[part]);
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // NB: `source` of an Event is `source.component` to a field selector.
        Value::Object(map) if path == "source" => {
            map.get("component").and_then(Value::as_str).unwrap_or_default().to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Catalog, KindId};
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_fields_select_as_the_api_server_does() {
        let catalog = Catalog::new(&[]);
        let pods = catalog.get(KindId::PODS);
        let pod = json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web", "tier": "front"}},
            "spec": {"nodeName": "lab"},
            "status": {"phase": "Running"},
        });
        let select =
            |labels: &str, fields: &str| Selection::parse(pods, Some(labels), Some(fields)).expect("parses");
        assert!(select("", "").matches(&pod));
        assert!(select("app=web,tier in (front,back)", "metadata.name=a,status.phase!=Failed").matches(&pod));
        assert!(!select("app!=web", "").matches(&pod));
        assert!(!select("", "spec.nodeName=other").matches(&pod));
        assert!(select("!legacy", "spec.hostNetwork!=true").matches(&pod), "absent is not true");
        let unsupported =
            Selection::parse(pods, None, Some("spec.containers=x")).expect_err("not selectable");
        assert!(
            unsupported.message.starts_with("field label not supported: spec.containers"),
            "{}",
            unsupported.message
        );
        let events = catalog.get(KindId::EVENTS);
        let event = json!({"metadata": {"name": "e"}, "involvedObject": {"name": "a", "uid": "u1"}, "source": {"component": "kubelet"}});
        let by_object = Selection::parse(
            events,
            None,
            Some("involvedObject.name=a,involvedObject.uid=u1,source=kubelet"),
        );
        assert!(by_object.expect("parses").matches(&event));
    }
}
