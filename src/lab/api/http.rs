//! Requests to the lab API: axum hands over each one; this checks the bearer token, finds what
//! the path names (discovery, OpenAPI, a collection, an object, a subresource) and answers in
//! the API's JSON, with a `Status` for every failure.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::catalog::KindId;
use super::rest::{Query, Written};
use super::select::Selection;
use super::status::ApiError;
use super::{Api, discovery, table};

pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(handle).with_state(api)
}

/// The kubelet API as kube-apiserver calls it for `pods/log`:
/// `GET /containerLogs/NAMESPACE/POD/CONTAINER` with the log's query (`follow`, `previous`,
/// `tailLines`, `limitBytes`). Nothing else (no exec, attach or port-forward).
pub fn kubelet_router(api: Arc<Api>) -> Router {
    Router::new().fallback(kubelet).with_state(api)
}

async fn kubelet(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    QueryParams(mut query): QueryParams<Query>,
) -> Response {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (Method::GET, ["containerLogs", namespace, pod, container]) = (method, parts.as_slice()) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(
                "the netpol-verify lab's kubelet serves only GET /containerLogs/NAMESPACE/POD/CONTAINER\n",
            ))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    };
    let Some(object) = api.store.get(&super::store::Key::new(KindId::PODS, *namespace, *pod)) else {
        return failure(&ApiError::not_found("pods", pod));
    };
    query.insert("container".into(), (*container).to_string());
    match super::watch::log(&api, &object, &query).await {
        Ok(response) => response,
        Err(e) => failure(&e),
    }
}

/// A JSON response.
pub fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Audit-Id", "netpol-verify-lab");
    for warning in warnings {
        builder = builder.header("Warning", format!("299 - {warning:?}"));
    }
    builder
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn failure(error: &ApiError) -> Response {
    json_response(error.code, &error.to_status(), &[])
}

/// What a resource path names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    kind: KindId,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn handle(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    QueryParams(query): QueryParams<Query>,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let public = matches!(path, "/version" | "/healthz" | "/readyz" | "/livez");
    if !public && !authorized(&api, &headers) {
        let mut error = ApiError::new(401, "Unauthorized", "Unauthorized");
        error.details = None;
        return failure(&error);
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let response = match route(&api, &method, path, &query, &accept, &content_type, &body).await {
        Ok(response) => response,
        Err(error) => failure(&error),
    };
    if !public {
        let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        api.audit(&audit_event(&api, &method, &uri, &query, response.status().as_u16(), agent));
    }
    response
}

/// The audit event of a request, as kube-apiserver writes them at level Metadata
/// (`audit.k8s.io/v1`): the verb RBAC checks, and the object the request is about.
fn audit_event(api: &Api, method: &Method, uri: &Uri, query: &Query, code: u16, agent: &str) -> Value {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => ("", "", &[][..]),
    };
    let found = (!rest.is_empty()).then(|| target(api, group, version, rest)).flatten();
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method, found.as_ref().map(|t| t.name.is_some())) {
        (&Method::GET, Some(false)) if watch => "watch",
        (&Method::GET, Some(false)) => "list",
        (&Method::GET, _) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(false)) => "deletecollection",
        (&Method::DELETE, _) => "delete",
        _ => "unknown",
    };
    let object = found.map(|t| {
        let kind = api.catalog.get(t.kind);
        json!({"resource": kind.plural, "namespace": t.namespace, "name": t.name, "apiGroup": kind.group,
               "apiVersion": kind.version, "subresource": t.subresource})
    });
    json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": "ResponseComplete",
        "requestURI": uri.to_string(),
        "verb": verb,
        "user": {"username": "lab-admin"},
        "userAgent": agent,
        "objectRef": object,
        "responseStatus": {"code": code},
        "stageTimestamp": super::store::now(),
    })
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    value.strip_prefix("Bearer ").is_some_and(|token| {
        // NB: compared in constant time, as a credential should be.
        token.len() == api.token.len()
            && token.bytes().zip(api.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

async fn route(
    api: &Arc<Api>,
    method: &Method,
    path: &str,
    query: &Query,
    accept: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ok = |value: Value| Ok(json_response(200, &value, &[]));
    let not_found = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    match path {
        "/version" => return ok(discovery::version()),
        "/healthz" | "/readyz" | "/livez" => {
            return Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("ok"))
                .unwrap_or_else(|_| Response::new(Body::empty())));
        }
        "/api" => return ok(discovery::core_versions(api.address.get().map_or("127.0.0.1", String::as_str))),
        "/apis" => return ok(discovery::groups(&api.catalog)),
        "/openapi/v3" => return ok(api.documents.index()),
        _ => {}
    }
    if let Some(doc) = path.strip_prefix("/openapi/v3/") {
        let bytes = api.documents.get(doc).ok_or_else(not_found)?;
        return Ok(Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes.to_vec()))
            .unwrap_or_else(|_| Response::new(Body::empty())));
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group] => {
            return discovery::group_of(&api.catalog, group).map_or_else(|| Err(not_found()), ok);
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        return discovery::resources(&api.catalog, group, version).map_or_else(|| Err(not_found()), ok);
    }
    let target = target(api, group, version, rest).ok_or_else(not_found)?;
    serve(api, method, target, query, accept, content_type, body).await
}

/// Splits the path below `/api/v1` or `/apis/{group}/{version}` into what it names.
fn target(api: &Api, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let find = |plural: &str| api.catalog.find(group, version, plural);
    let owned = |s: &&str| Some(s.to_string());
    let namespaced = |plural: &str| find(plural).filter(|k| api.catalog.get(*k).namespaced);
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => Target {
            kind: namespaced(plural)?,
            namespace: owned(ns),
            name: tail.first().and_then(owned),
            subresource: match tail {
                [_] | [] => None,
                [_, sub] => owned(sub),
                _ => return None,
            },
        },
        [plural, tail @ ..] => Target {
            kind: find(plural)?,
            namespace: None,
            name: tail.first().and_then(owned),
            subresource: match tail {
                [_] | [] => None,
                [_, sub] => owned(sub),
                _ => return None,
            },
        },
        [] => return None,
    };
    // A namespaced kind's object is only reached through its namespace.
    let info = api.catalog.get(target.kind);
    if info.namespaced && target.namespace.is_none() && target.name.is_some() {
        return None;
    }
    if let Some(sub) = &target.subresource
        && !info.subresources.contains(&sub.as_str())
    {
        return None;
    }
    Some(target)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

fn written(
    written: Written,
    code_if_created: u16,
    api: &Api,
    key_kind: KindId,
    accept: &str,
    query: &Query,
) -> Response {
    let code = if written.created { code_if_created } else { 200 };
    let body = if table::wanted(accept) {
        table::table(
            api.catalog.get(key_kind),
            &[written.object],
            api.store.revision(),
            query.get("includeObject").map(String::as_str),
        )
    } else {
        written.object
    };
    json_response(code, &body, &written.warnings)
}

async fn serve(
    api: &Arc<Api>,
    method: &Method,
    target: Target,
    query: &Query,
    accept: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let kind = api.catalog.get(target.kind);
    let resource = kind.resource();
    let namespace = target.namespace.as_deref();
    match (method, target.name.as_deref(), target.subresource.as_deref()) {
        (&Method::GET, None, _) => {
            let selection = Selection::parse(
                kind,
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return super::watch::watch(api.clone(), target.kind, namespace, selection, query, accept);
            }
            Ok(list(api, target.kind, namespace, &selection, query, accept))
        }
        (&Method::POST, None, _) => {
            let written = api.create(target.kind, namespace, &parse_body(body)?, query)?;
            Ok(self::written(written, 201, api, target.kind, accept, query))
        }
        (&Method::DELETE, None, _) => {
            let selection = Selection::parse(
                kind,
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )?;
            let options = parse_body(body)?;
            let (items, _) = api.store.list(target.kind, namespace);
            let mut deleted = Vec::new();
            for item in items.iter().filter(|i| selection.matches(i)) {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let ns = item["metadata"]["namespace"].as_str();
                deleted.push(api.delete(&api.key(target.kind, ns, name), &options, query)?);
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": {}, "items": deleted}),
                &[],
            ))
        }
        (&Method::GET, Some(name), Some("log")) => {
            let key = api.key(target.kind, namespace, name);
            let pod = api.store.get(&key).ok_or_else(|| ApiError::not_found(&resource, name))?;
            super::watch::log(api, &pod, query).await
        }
        (method, Some(_), Some("log")) => Err(method_not_allowed(method)),
        (method, Some(name), sub) => {
            let key = api.key(target.kind, namespace, name);
            match *method {
                Method::GET => {
                    let object = api.store.get(&key).ok_or_else(|| ApiError::not_found(&resource, name))?;
                    let body = if table::wanted(accept) {
                        table::table(
                            kind,
                            &[object],
                            api.store.revision(),
                            query.get("includeObject").map(String::as_str),
                        )
                    } else {
                        object
                    };
                    Ok(json_response(200, &body, &[]))
                }
                Method::PUT => Ok(written(
                    api.replace(&key, &parse_body(body)?, query, sub)?,
                    201,
                    api,
                    target.kind,
                    accept,
                    query,
                )),
                Method::PATCH => Ok(written(
                    api.patch(&key, content_type, body, query, sub)?,
                    201,
                    api,
                    target.kind,
                    accept,
                    query,
                )),
                Method::DELETE if sub.is_none() => {
                    let deleted = api.delete(&key, &parse_body(body)?, query)?;
                    Ok(json_response(200, &deleted, &[]))
                }
                _ => Err(method_not_allowed(method)),
            }
        }
        (method, None, _) => Err(method_not_allowed(method)),
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

/// A list (or a Table of it), selected and paged (`limit`, `continue`).
fn list(
    api: &Api,
    kind: KindId,
    namespace: Option<&str>,
    selection: &Selection,
    query: &Query,
    accept: &str,
) -> Response {
    let info = api.catalog.get(kind);
    let (items, revision) = api.store.list(kind, namespace);
    let mut items: Vec<Value> = items.into_iter().filter(|i| selection.matches(i)).collect();
    // `continue` is the key of the last object of the page before (`NAMESPACE/NAME`; neither
    // holds a `/`): a page goes on after it, in the store's order of (namespace, name).
    if let Some(after) = query.get("continue").filter(|c| !c.is_empty()) {
        let after = after.split_once('/').unwrap_or(("", after.as_str()));
        items.retain(|i| page_position(i) > after);
    }
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let mut next = String::new();
    if let Some(limit) = limit
        && items.len() > limit
    {
        items.truncate(limit);
        next = items.last().map(page_key).unwrap_or_default();
    }
    if table::wanted(accept) {
        let mut table = table::table(info, &items, revision, query.get("includeObject").map(String::as_str));
        table["metadata"]["continue"] = Value::from(next);
        return json_response(200, &table, &[]);
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if !next.is_empty() {
        metadata["continue"] = Value::from(next);
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": metadata, "items": items}),
        &[],
    )
}

fn page_position(object: &Value) -> (&str, &str) {
    (
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

fn page_key(object: &Value) -> String {
    let (namespace, name) = page_position(object);
    format!("{namespace}/{name}")
}
