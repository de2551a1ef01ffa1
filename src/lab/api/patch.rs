//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge
//! patch, which merges the lists [`super::openapi::MERGE_KEYS`] names element by element (the
//! same metadata kubectl computes its patches from) and replaces every other list.

use serde_json::Value;

use super::openapi::Schemas;
use super::status::ApiError;

/// RFC 7386: objects merge, `null` removes, anything else replaces.
pub fn merge(target: &Value, patch: &Value) -> Value {
    let Some(patch) = patch.as_object() else { return patch.clone() };
    let mut out = target.as_object().cloned().unwrap_or_default();
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy` and `test`, in order, all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Some(operations) = patch.as_array() else {
        return Err(ApiError::bad_request("a JSON patch is a list of operations"));
    };
    let mut doc = target.clone();
    for (i, op) in operations.iter().enumerate() {
        let bad = |why: &str| ApiError::new(422, "Invalid", format!("JSON patch operation {i}: {why}"));
        let path = op["path"].as_str().ok_or_else(|| bad("no path"))?;
        match op["op"].as_str() {
            Some("add") => add(&mut doc, path, op["value"].clone()).map_err(|e| bad(&e))?,
            Some("remove") => {
                remove(&mut doc, path).map_err(|e| bad(&e))?;
            }
            Some("replace") => {
                remove(&mut doc, path).map_err(|e| bad(&e))?;
                add(&mut doc, path, op["value"].clone()).map_err(|e| bad(&e))?;
            }
            Some("move") => {
                let from = op["from"].as_str().ok_or_else(|| bad("no from"))?;
                let value = remove(&mut doc, from).map_err(|e| bad(&e))?;
                add(&mut doc, path, value).map_err(|e| bad(&e))?;
            }
            Some("copy") => {
                let from = op["from"].as_str().ok_or_else(|| bad("no from"))?;
                let value =
                    doc.pointer(from).cloned().ok_or_else(|| bad(&format!("{from} does not exist")))?;
                add(&mut doc, path, value).map_err(|e| bad(&e))?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(bad(&format!("test of {path} failed")));
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    Ok((parent.to_string(), unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last}"))?
            };
            if index > list.len() {
                return Err(format!("index {index} is out of range"));
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err(format!("{parent} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(|| format!("{path} does not exist")),
        Some(Value::Array(list)) => {
            let index: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
            if index >= list.len() {
                return Err(format!("{path} does not exist"));
            }
            Ok(list.remove(index))
        }
        _ => Err(format!("{parent} does not exist")),
    }
}

/// A strategic merge patch of `target`, whose schema is `schema`: maps merge, lists the
/// schemas mark merge element by element (by their merge key, or as a set of strings), other
/// lists are replaced; the directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
/// `$setElementOrder/FIELD` and `$deleteFromPrimitiveList/FIELD` are honoured.
pub fn strategic(schemas: &Schemas, schema: &str, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    Ok(strategic_map(schemas, Some(schema), target, patch))
}

fn strategic_map(schemas: &Schemas, schema: Option<&str>, target: &Value, patch: &Value) -> Value {
    let Some(patch) = patch.as_object() else { return patch.clone() };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Value::Object(replaced);
        }
        Some("delete") => return Value::Null,
        _ => {}
    }
    let mut out = target.as_object().cloned().unwrap_or_default();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), value.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let Some(Value::Array(list)) = out.get_mut(field) {
                let gone = value.as_array().cloned().unwrap_or_default();
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if value.is_null() {
            out.remove(key);
            continue;
        }
        let (child, merged) = schema.map(|s| schemas.property(s, key)).unwrap_or((None, None));
        let current = out.get(key).cloned().unwrap_or(Value::Null);
        let next = match (value, merged) {
            (Value::Array(items), Some(merge_key)) => {
                merge_list(schemas, child.as_deref(), &current, items, merge_key.as_deref())
            }
            (Value::Object(_), _) => strategic_map(schemas, child.as_deref(), &current, value),
            _ => value.clone(),
        };
        if next.is_null() {
            out.remove(key);
        } else {
            out.insert(key.clone(), next);
        }
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            reorder(list, &order);
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Value::Object(out)
}

fn merge_list(
    schemas: &Schemas,
    item: Option<&str>,
    current: &Value,
    items: &[Value],
    key: Option<&str>,
) -> Value {
    let mut list = current.as_array().cloned().unwrap_or_default();
    let Some(key) = key else {
        // A set of strings: the union, in order.
        for value in items {
            if !list.contains(value) {
                list.push(value.clone());
            }
        }
        return Value::Array(list);
    };
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect());
    }
    for element in items {
        let id = element.get(key);
        let position = list.iter().position(|e| e.get(key).is_some() && e.get(key) == id);
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => list[i] = strategic_map(schemas, item, &list[i], element),
            (None, false) => list.push(strategic_map(schemas, item, &Value::Null, element)),
        }
    }
    Value::Array(list)
}

/// Puts the elements `order` names first, in its order (matched on every key it gives).
fn reorder(list: &mut Vec<Value>, order: &[Value]) {
    let matches = |element: &Value, wanted: &Value| match wanted.as_object() {
        Some(keys) => keys.iter().all(|(k, v)| element.get(k) == Some(v)),
        None => element == wanted,
    };
    let mut ordered: Vec<Value> = Vec::new();
    for wanted in order {
        if let Some(i) = list.iter().position(|e| matches(e, wanted)) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

/// The object of a patch whose type the request names.
pub fn apply(
    content_type: &str,
    schemas: &Schemas,
    schema: &str,
    custom: bool,
    target: &Value,
    body: &[u8],
) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
    match media {
        "application/merge-patch+json" => Ok(merge(target, &patch)),
        "application/json-patch+json" => json_patch(target, &patch),
        "application/strategic-merge-patch+json" if custom => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources: use a JSON merge patch",
        )),
        "application/strategic-merge-patch+json" => strategic(schemas, schema, target, &patch),
        "application/apply-patch+yaml" => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the lab's API does not do server-side apply: use kubectl apply without --server-side",
        )),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the patch type {other:?} is not supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Catalog;
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_follows_the_schemas_merge_keys() {
        let schemas = Schemas::new(&Catalog::new(&[]));
        let pod = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "old", "ports": [{"containerPort": 80}]}, {"name": "d", "image": "d"}],
                     "tolerations": [{"key": "t"}]},
        });
        let patch = json!({
            "metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"containers": [{"name": "c", "image": "new"}, {"name": "d", "$patch": "delete"}],
                     "tolerations": [{"key": "u"}], "$setElementOrder/containers": [{"name": "c"}]},
        });
        let patched = strategic(&schemas, "io.k8s.api.core.v1.Pod", &pod, &patch).expect("applies");
        assert_eq!(patched["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(patched["metadata"]["finalizers"], json!(["x", "y"]), "a set of strings");
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "c", "image": "new", "ports": [{"containerPort": 80}]}]),
            "merged by name; d deleted"
        );
        assert_eq!(patched["spec"]["tolerations"], json!([{"key": "u"}]), "no merge key: replaced");

        let policy = json!({"spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}], "policyTypes": ["Ingress"]}});
        let patch =
            json!({"spec": {"ingress": [{"ports": [{"port": 80}]}], "policyTypes": ["Ingress", "Egress"]}});
        let patched =
            strategic(&schemas, "io.k8s.api.networking.v1.NetworkPolicy", &policy, &patch).expect("applies");
        assert_eq!(
            patched["spec"]["ingress"],
            json!([{"ports": [{"port": 80}]}]),
            "a policy's rules are atomic"
        );
    }

    #[test]
    fn merge_and_json_patches_follow_their_rfcs() {
        let target = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        assert_eq!(
            merge(&target, &json!({"a": {"b": null, "d": 4}, "l": [3]})),
            json!({"a": {"c": 2, "d": 4}, "l": [3]})
        );
        let patched = json_patch(
            &target,
            &json!([{"op": "add", "path": "/l/-", "value": 3}, {"op": "replace", "path": "/a/b", "value": 9},
                    {"op": "remove", "path": "/a/c"}, {"op": "test", "path": "/l/0", "value": 1}]),
        )
        .expect("applies");
        assert_eq!(patched, json!({"a": {"b": 9}, "l": [1, 2, 3]}));
        let failed = json_patch(&target, &json!([{"op": "test", "path": "/l/0", "value": 5}]))
            .expect_err("test fails");
        assert_eq!(failed.code, 422);
    }
}
