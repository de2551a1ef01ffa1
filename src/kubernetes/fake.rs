//! A stateful in-memory API server for whole runs: it stores what is created, lists with label
//! selectors, starts pods (servers Running and Ready, batch pods Succeeded), answers a batch
//! pod's log by running its plan against the stored pods (a network that lets everything
//! through to pods that listen; a poller, `batch --every`, gets one round and ends), deletes,
//! and records every request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// The stored objects by (resource, namespace, name), and every request as `METHOD path`.
#[derive(Debug, Default)]
pub struct State {
    pub objects: BTreeMap<(String, String, String), Value>,
    pub requests: Vec<String>,
    /// Every object created, as it was sent.
    pub created: Vec<Value>,
    /// A name whose creation admission refuses (403), as a policy webhook would.
    pub refuse: Option<String>,
    /// Fired when the first batch pod is created: a user's Ctrl-C in the middle of a run.
    pub interrupt: Option<tokio_util::sync::CancellationToken>,
    next_ip: u8,
}

pub type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `k=v,k` as the API server reads a label selector (what the client sends).
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
        None => labels.get(term).is_some(),
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"))
    })
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}

/// A request's target: (resource, namespace, name, subresource).
type Route = (String, Option<String>, Option<String>, Option<String>);

/// Splits `/api/v1/namespaces/shop/pods/x` into its [`Route`].
fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/v1/").or_else(|| path.strip_prefix("/apis/networking.k8s.io/v1/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let owned = |s: &&str| s.to_string();
    match parts.as_slice() {
        [resource] => Some((resource.to_string(), None, None, None)),
        ["namespaces", name] => Some(("namespaces".into(), None, Some(owned(name)), None)),
        ["namespaces", ns, resource] => Some((owned(resource), Some(owned(ns)), None, None)),
        ["namespaces", ns, resource, name] => {
            Some((owned(resource), Some(owned(ns)), Some(owned(name)), None))
        }
        ["namespaces", ns, resource, name, sub] => {
            Some((owned(resource), Some(owned(ns)), Some(owned(name)), Some(owned(sub))))
        }
        _ => None,
    }
}

/// The batch output a pod's plan gets: every probe to a stored, running pod's address
/// connects (with that pod's identity), anything else times out.
fn batch_log(state: &State, namespace: &str, pod: &Value) -> String {
    let plan_name = pod["spec"]["volumes"][0]["configMap"]["name"].as_str().unwrap_or_default();
    let key = ("configmaps".to_string(), namespace.to_string(), plan_name.to_string());
    let plan: Value = state
        .objects
        .get(&key)
        .and_then(|m| m["data"]["plan.json"].as_str())
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut lines = Vec::new();
    let mut connected = 0;
    let probes = plan["probes"].as_array().cloned().unwrap_or_default();
    let args = pod["spec"]["containers"][0]["args"].as_array().cloned().unwrap_or_default();
    let polls = args.iter().any(|a| a == "--every");
    for probe in &probes {
        let target = probe["target"].as_str().unwrap_or_default();
        let server = state.objects.iter().find(|((resource, _, _), object)| {
            resource == "pods"
                && object["status"]["podIP"] == target
                && object["spec"]["restartPolicy"] == "Always"
        });
        let name = server.map(|((_, ns, name), _)| format!("{ns}/{name}"));
        let outcome = if name.is_some() { "connected" } else { "timeout" };
        connected += usize::from(name.is_some());
        lines.push(json!({"id": probe["id"], "target": target, "port": probe["port"], "protocol": probe["protocol"].as_str().unwrap_or("TCP"), "outcome": outcome, "name": name, "ms": 1}).to_string());
    }
    if polls {
        let results: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        return json!({"round": 0, "at_ms": 0, "results": results}).to_string() + "\n";
    }
    let total = probes.len();
    lines.push(json!({"summary": {"schema": 1, "total": total, "reached": connected, "not_reached": total - connected, "connected": connected, "refused": 0, "unreachable": 0, "timeout": total - connected, "error": 0, "ms": 1}}).to_string());
    lines.join("\n") + "\n"
}

/// Handles one request against `state`.
pub async fn handle(state: Shared, request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let body = request.into_body().collect_bytes().await.unwrap_or_default();
    let mut state = lock(&state);
    // A followed log is told apart (that is how a poller's rounds are read), and so is a
    // list's label selector.
    let follow = if query.contains("follow=true") { "?follow=true".to_string() } else { String::new() };
    let selector =
        query_param(&query, "labelSelector").map(|s| format!("?labelSelector={s}")).unwrap_or_default();
    state.requests.push(format!("{method} {path}{follow}{selector}"));
    if path == "/apis" {
        return Ok(respond(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})));
    }
    let Some((resource, namespace, name, sub)) = route(&path) else {
        return Ok(respond(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "code": 404, "message": format!("no route {path}")}),
        ));
    };
    let not_found = |what: &str| {
        respond(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
        )
    };
    match (method, name, sub) {
        (Method::GET, None, _) => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((r, ns, _), _)| *r == resource && namespace.as_ref().is_none_or(|n| n == ns))
                .filter(|(_, object)| selects(&selector, &object["metadata"]["labels"]))
                .map(|(_, object)| object.clone())
                .collect();
            Ok(respond(
                200,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
            ))
        }
        (Method::POST, None, _) => {
            let mut object: Value = serde_json::from_slice(&body).unwrap_or_default();
            state.created.push(object.clone());
            let ns = namespace.clone().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (resource.clone(), ns.clone(), name.clone());
            if state.refuse.as_deref() == Some(name.as_str()) {
                return Ok(respond(
                    403,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": format!("admission webhook \"validate.kyverno.svc\" denied the request: {resource} \"{name}\" is not allowed")}),
                ));
            }
            if state.objects.contains_key(&key) {
                return Ok(respond(
                    409,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": format!("{resource} \"{name}\" already exists")}),
                ));
            }
            if resource == "pods" {
                state.next_ip += 1;
                let serves = object["spec"]["restartPolicy"] == "Always";
                if !serves && let Some(interrupt) = state.interrupt.take() {
                    interrupt.cancel();
                }
                object["status"] = json!({
                    "phase": if serves { "Running" } else { "Succeeded" },
                    "podIP": format!("10.9.0.{}", state.next_ip),
                    "conditions": [{"type": "Ready", "status": if serves { "True" } else { "False" }}],
                });
            }
            state.objects.insert(key, object.clone());
            Ok(respond(201, &object))
        }
        (Method::GET, Some(name), Some(sub)) if sub == "log" => {
            let ns = namespace.unwrap_or_default();
            let Some(pod) = state.objects.get(&("pods".to_string(), ns.clone(), name.clone())).cloned()
            else {
                return Ok(not_found(&name));
            };
            let log = batch_log(&state, &ns, &pod);
            Ok(Response::builder()
                .status(200)
                .body(Body::from(log.into_bytes()))
                .unwrap_or_else(|_| Response::new(Body::from(Vec::new()))))
        }
        (Method::GET, Some(name), None) => {
            let key = (resource, namespace.unwrap_or_default(), name.clone());
            Ok(state.objects.get(&key).map_or_else(|| not_found(&name), |o| respond(200, o)))
        }
        (Method::DELETE, Some(name), None) => {
            let key = (resource, namespace.unwrap_or_default(), name.clone());
            match state.objects.remove(&key) {
                Some(object) => Ok(respond(200, &object)),
                None => Ok(not_found(&name)),
            }
        }
        _ => Ok(respond(
            405,
            &json!({"kind": "Status", "apiVersion": "v1", "code": 405, "message": "not supported by the fake"}),
        )),
    }
}
