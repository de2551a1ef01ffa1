//! `meta.k8s.io/v1` Tables: what `kubectl get` asks for and prints (its Accept header names
//! `as=Table`), with the columns the real API server gives each kind.

use serde_json::{Value, json};

use super::catalog::{Kind, Typed};

/// Whether an Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// A column: name, type, priority (1: only with `-o wide`).
type Column = (&'static str, &'static str, u8);

fn columns(kind: &Kind) -> Vec<Column> {
    let name = ("Name", "string", 0);
    let age = ("Age", "string", 0);
    match kind.typed {
        Typed::Pod => vec![
            name,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            age,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        Typed::Namespace => vec![name, ("Status", "string", 0), age],
        Typed::NetworkPolicy => vec![name, ("Pod-Selector", "string", 0), age],
        Typed::ConfigMap => vec![name, ("Data", "integer", 0), age],
        Typed::Service => vec![
            name,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            age,
            ("Selector", "string", 1),
        ],
        Typed::Event => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
            ("Name", "string", 1),
        ],
        Typed::Node => {
            vec![name, ("Status", "string", 0), ("Roles", "string", 0), age, ("Version", "string", 0)]
        }
        Typed::EndpointSlice => {
            vec![name, ("AddressType", "string", 0), ("Ports", "string", 0), ("Endpoints", "string", 0), age]
        }
        Typed::LimitRange => vec![name, ("Created At", "date", 0)],
        Typed::ResourceQuota => vec![name, age, ("Request", "string", 0), ("Limit", "string", 0)],
        Typed::Custom => vec![name, age],
    }
}

/// A Table of `objects`; each row carries the object's metadata (`includeObject=Metadata`,
/// the default), the whole object (`Object`) or nothing (`None`).
pub fn table(kind: &Kind, objects: &[Value], resource_version: u64, include: Option<&str>) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|(name, type_, priority)| {
            json!({"name": name, "type": type_, "format": if *name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = json!({"cells": cells(kind, object)});
            match include {
                Some("None") => {}
                Some("Object") => row["object"] = object.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn or_none(text: String) -> String {
    if text.is_empty() { "<none>".into() } else { text }
}

fn cells(kind: &Kind, object: &Value) -> Vec<Value> {
    let name = Value::from(text(&object["metadata"]["name"]));
    let created = Value::from(age(&object["metadata"]["creationTimestamp"]));
    let spec = &object["spec"];
    let status = &object["status"];
    match kind.typed {
        Typed::Pod => {
            let (ready, total, restarts, shown) = pod_status(object);
            let gates = spec["readinessGates"].as_array().map_or(String::from("<none>"), |gates| {
                let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
                let met = gates
                    .iter()
                    .filter(|g| {
                        conditions.iter().any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{met}/{}", gates.len())
            });
            vec![
                name,
                Value::from(format!("{ready}/{total}")),
                Value::from(shown),
                Value::from(restarts),
                created.clone(),
                Value::from(or_none(text(&status["podIP"]))),
                Value::from(or_none(text(&spec["nodeName"]))),
                Value::from(or_none(text(&status["nominatedNodeName"]))),
                Value::from(gates),
            ]
        }
        Typed::Namespace => vec![name, Value::from(text(&status["phase"])), created],
        Typed::NetworkPolicy => {
            let selector = &spec["podSelector"];
            let labels: Vec<String> = selector["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            let shown = if labels.is_empty() && selector["matchExpressions"].is_null() {
                "<none>".to_string()
            } else if labels.is_empty() {
                "(expressions)".to_string()
            } else {
                labels.join(",")
            };
            vec![name, Value::from(shown), created]
        }
        Typed::ConfigMap => {
            let count = object["data"].as_object().map_or(0, |m| m.len())
                + object["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, Value::from(count), created]
        }
        Typed::Service => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], text(&p["protocol"])))
                .collect();
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            vec![
                name,
                Value::from(text(&spec["type"])),
                Value::from(or_none(text(&spec["clusterIP"]))),
                Value::from("<none>"),
                Value::from(or_none(ports.join(","))),
                created.clone(),
                Value::from(or_none(selector.join(","))),
            ]
        }
        Typed::Event => {
            let seen = if object["lastTimestamp"].is_string() {
                &object["lastTimestamp"]
            } else {
                &object["eventTime"]
            };
            let involved = &object["involvedObject"];
            vec![
                Value::from(age(seen)),
                Value::from(text(&object["type"])),
                Value::from(text(&object["reason"])),
                Value::from(format!(
                    "{}/{}",
                    text(&involved["kind"]).to_ascii_lowercase(),
                    text(&involved["name"])
                )),
                Value::from(text(&object["message"])),
                name,
            ]
        }
        Typed::Node => {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            vec![
                name,
                Value::from(if ready { "Ready" } else { "NotReady" }),
                Value::from("<none>"),
                created.clone(),
                Value::from(text(&status["nodeInfo"]["kubeletVersion"])),
            ]
        }
        Typed::EndpointSlice => {
            let ports: Vec<String> =
                object["ports"].as_array().into_iter().flatten().map(|p| p["port"].to_string()).collect();
            let addresses: Vec<String> = object["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| text(&a))
                .collect();
            vec![
                name,
                Value::from(text(&object["addressType"])),
                Value::from(or_none(ports.join(","))),
                Value::from(or_none(addresses.join(","))),
                created.clone(),
            ]
        }
        Typed::LimitRange => vec![name, object["metadata"]["creationTimestamp"].clone()],
        Typed::ResourceQuota => {
            let hard: Vec<String> = spec["hard"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}: {}", text(v)))
                .collect();
            vec![name, created, Value::from(hard.join(", ")), Value::from("")]
        }
        Typed::Custom => vec![name, created],
    }
}

/// Ready and total containers, restarts, and the status `kubectl get pods` shows.
fn pod_status(pod: &Value) -> (usize, usize, u64, String) {
    let status = &pod["status"];
    let containers = status["containerStatuses"].as_array().cloned().unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = containers.iter().filter(|c| c["ready"] == true).count();
    let restarts = containers.iter().filter_map(|c| c["restartCount"].as_u64()).sum();
    let mut shown = status["reason"].as_str().or(status["phase"].as_str()).unwrap_or("Pending").to_string();
    for container in containers.iter().rev() {
        let state = &container["state"];
        if let Some(reason) = state["waiting"]["reason"].as_str().filter(|r| !r.is_empty()) {
            shown = reason.to_string();
        } else if state["terminated"].is_object() {
            let terminated = &state["terminated"];
            shown = match terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(reason) => reason.to_string(),
                None => format!("ExitCode:{}", terminated["exitCode"]),
            };
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        shown = "Terminating".into();
    }
    (ready, total, restarts, shown)
}

/// How long ago `timestamp` was, as kubectl writes ages (`5s`, `3m20s`, `2h`, `4d`).
pub fn age(timestamp: &Value) -> String {
    let Some(then) = timestamp.as_str().and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let seconds = k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second();
    human(seconds)
}

fn human(seconds: i64) -> String {
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        s if minutes < 10 && s % 60 != 0 => format!("{minutes}m{}s", s % 60),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 && minutes % 60 != 0 => format!("{hours}h{}m", minutes % 60),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 && hours % 24 != 0 => format!("{days}d{}h", hours % 24),
        _ => format!("{days}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Catalog, KindId};
    use super::*;

    #[test]
    fn pods_show_as_kubectl_get_pods_shows_them() {
        let catalog = Catalog::new(&[]);
        let pod = json!({
            "metadata": {"name": "web", "namespace": "x", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "lab", "readinessGates": [{"conditionType": "g"}]},
            "status": {"phase": "Pending", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "c", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
        });
        let table = table(catalog.get(KindId::PODS), &[pod], 7, None);
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let cells = &table["rows"][0]["cells"];
        let first: Vec<String> = (0..4).map(|i| cells[i].to_string()).collect();
        assert_eq!(first, ["\"web\"", "\"0/1\"", "\"ImagePullBackOff\"", "2"]);
        assert_eq!(
            (cells[5].as_str(), cells[6].as_str(), cells[8].as_str()),
            (Some("10.244.0.5"), Some("lab"), Some("0/1"))
        );
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
    }

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(
            [human(5), human(150), human(600), human(7200), human(90_000), human(300_000)],
            ["5s", "2m30s", "10m", "120m", "25h", "3d11h"]
        );
    }
}
