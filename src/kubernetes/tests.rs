//! The Kubernetes backend against a scripted API server (tower-test): the requests it makes,
//! in order, and what it makes of the answers.

use std::collections::BTreeMap;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::cluster::Role;
use crate::engine::{ContainerPort, Protocol};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mocked() -> (KubeCluster, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (KubeCluster::new(Client::new(service, "default"), PodOptions::default()), handle)
}

/// Answers the next request with `status` and `body`, after checking its method and that its
/// path and query start with `path`; returns the request's body.
async fn answer(handle: &mut Handle, method: &str, path: &str, status: u16, body: Value) -> Value {
    let (request, respond) = handle.next_request().await.expect("the client made a request");
    let uri = request.uri().to_string();
    assert_eq!(
        (request.method().as_str(), uri.starts_with(path)),
        (method, true),
        "expected {method} {path}, got {uri}"
    );
    let sent = request.into_body().collect_bytes().await.expect("a body");
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
        .expect("a response");
    respond.send_response(response);
    serde_json::from_slice(&sent).unwrap_or(Value::Null)
}

/// Answers the next request, a list whose query must contain `query`, with `items`.
async fn answer_list_with(handle: &mut Handle, query: &str, kind: &str, items: Value) {
    let (request, respond) = handle.next_request().await.expect("the client made a request");
    assert!(request.uri().to_string().contains(query), "{}", request.uri());
    let body = serde_json::to_vec(&list(kind, items)).expect("JSON");
    respond.send_response(Response::builder().status(200).body(Body::from(body)).expect("a response"));
}

/// The query of a list of the tool's own pods (any run), as waits make it.
const TOOL_PODS: &str =
    "/api/v1/pods?&labelSelector=app.kubernetes.io%2Fname%3Dnetpol-verify%2Cnetpol-verify.io%2Frun";

/// Answers the read of `namespace`'s LimitRanges: none.
async fn no_limit_ranges(handle: &mut Handle, namespace: &str) {
    let path = format!("/api/v1/namespaces/{namespace}/limitranges");
    answer_list_with(handle, &path, "LimitRange", json!([])).await;
}

/// Answers a cleanup pass's lists of the run's ConfigMaps and NetworkPolicies: none.
async fn no_configmaps_or_policies(handle: &mut Handle) {
    answer(handle, "GET", "/api/v1/configmaps?&labelSelector", 200, list("ConfigMap", json!([]))).await;
    let policies = "/apis/networking.k8s.io/v1/networkpolicies?&labelSelector";
    answer(handle, "GET", policies, 200, list("NetworkPolicy", json!([]))).await;
}

fn list(kind: &str, items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": code})
}

#[tokio::test]
async fn discovery_lists_the_objects_and_finds_unmodelled_policies_through_api_discovery() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        answer(
            &mut server,
            "GET",
            "/api/v1/namespaces?",
            200,
            list("Namespace", json!([{"metadata": {"name": "shop"}}])),
        )
        .await;
        let pod = json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "web"}]}, "status": {"phase": "Running", "podIP": "10.0.0.5"}});
        answer(&mut server, "GET", "/api/v1/pods?", 200, list("Pod", json!([pod]))).await;
        answer(
            &mut server,
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies?",
            200,
            list("NetworkPolicy", json!([])),
        )
        .await;
        answer(&mut server, "GET", "/api/v1/services?", 200, list("Service", json!([]))).await;
        answer(
            &mut server,
            "GET",
            "/api/v1/nodes?",
            403,
            status(403, "Forbidden", "nodes is forbidden: User \"ci\" cannot list resource \"nodes\""),
        )
        .await;
        let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "cilium.io", "versions": [{"groupVersion": "cilium.io/v2", "version": "v2"}], "preferredVersion": {"groupVersion": "cilium.io/v2", "version": "v2"}}
        ]});
        answer(&mut server, "GET", "/apis", 200, groups).await;
        // This Cilium serves no clusterwide kind: it is not asked for.
        let resources = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cilium.io/v2", "resources": [
            {"name": "ciliumnetworkpolicies", "singularName": "ciliumnetworkpolicy", "namespaced": true, "kind": "CiliumNetworkPolicy", "verbs": ["list"]},
            {"name": "ciliumnetworkpolicies/status", "singularName": "", "namespaced": true, "kind": "CiliumNetworkPolicy", "verbs": ["get"]}
        ]});
        answer(&mut server, "GET", "/apis/cilium.io/v2", 200, resources).await;
        let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "l7", "namespace": "shop"}});
        answer(&mut server, "GET", "/apis/cilium.io/v2/ciliumnetworkpolicies?", 200, json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicyList", "metadata": {}, "items": [cnp]})).await;
    });
    let discovery = cluster.discover().await.unwrap_or_else(|e| panic!("{e}"));
    api.await.expect("the scripted API server");
    assert_eq!(discovery.snapshot.pods().len(), 1);
    let unmodelled: Vec<String> = discovery.snapshot.unmodelled().iter().map(ToString::to_string).collect();
    assert_eq!(unmodelled, ["CiliumNetworkPolicy shop/l7 (cilium.io/v2)"]);
    assert!(
        discovery.notes.iter().any(|n| n.0.contains("grant the tool `list` on `nodes`")
            && n.0.contains("provider is not recognised")),
        "{:?}",
        discovery.notes
    );
}

fn server_pod() -> ProbePod {
    ProbePod {
        node: None,
        key: ObjectKey::new("shop", "nv-server-t1"),
        role: Role::Server,
        run_id: "t1".into(),
        labels: BTreeMap::new(),
        ports: vec![ContainerPort { port: 80, protocol: Protocol::Tcp, name: Some("http".into()) }],
    }
}

#[tokio::test]
async fn a_probe_pod_is_created_restricted_and_labelled() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        // The namespace's LimitRange, as OpenShift projects have: limits at most 10 × requests.
        let range = json!({"metadata": {"name": "limits", "namespace": "shop"}, "spec": {"limits": [{"type": "Container", "maxLimitRequestRatio": {"cpu": "10"}}]}});
        answer_list_with(&mut server, "/api/v1/namespaces/shop/limitranges", "LimitRange", json!([range]))
            .await;
        let created = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-server-t1", "namespace": "shop"}});
        answer(&mut server, "POST", "/api/v1/namespaces/shop/pods?", 201, created).await
    });
    cluster.create_probe_pod(&server_pod()).await.unwrap_or_else(|e| panic!("{e}"));
    let sent = api.await.expect("the scripted API server");
    let resources = &sent["spec"]["containers"][0]["resources"];
    assert_eq!((&resources["requests"]["cpu"], &resources["limits"]["cpu"]), (&json!("10m"), &json!("100m")));
    assert_eq!(resources["limits"]["memory"], "64Mi");
    let notes = cluster.notes();
    assert!(
        notes.iter().any(|n| n.0 == "probe pods in shop were fitted to its LimitRanges: cpu limit 100m"),
        "{notes:?}"
    );
    assert_eq!(sent["metadata"]["labels"]["netpol-verify.io/run"], "t1");
    assert_eq!(sent["metadata"]["labels"]["app.kubernetes.io/name"], "netpol-verify");
    assert_eq!(sent["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sent["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sent["spec"]["automountServiceAccountToken"], false);
    assert!(sent["spec"]["readinessGates"].is_null(), "a plain probe server may become Ready");
    // Wearing a workload's labels, it must never become Ready.
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        no_limit_ranges(&mut server, "shop").await;
        answer(
            &mut server,
            "POST",
            "/api/v1/namespaces/shop/pods?",
            201,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
        )
        .await
    });
    let mut mimic = server_pod();
    mimic.labels.insert("app".into(), "web".into());
    cluster.create_probe_pod(&mimic).await.unwrap_or_else(|e| panic!("{e}"));
    let sent = api.await.expect("the scripted API server");
    assert_eq!(sent["spec"]["readinessGates"][0]["conditionType"], NEVER_READY_FOR_TESTS);
    assert!(sent["spec"]["containers"][0]["readinessProbe"].is_null());
}

const NEVER_READY_FOR_TESTS: &str = crate::manifest::NEVER_READY;

#[tokio::test]
async fn a_refused_low_port_sysctl_falls_back_to_net_bind_service_for_the_rest_of_the_run() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let path = "/api/v1/namespaces/shop/pods?";
        let refusal =
            "admission webhook \"validate.kyverno.svc\" denied the request: sysctls are not allowed";
        no_limit_ranges(&mut server, "shop").await;
        let first = answer(&mut server, "POST", path, 400, status(400, "BadRequest", refusal)).await;
        let created = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
        let retried = answer(&mut server, "POST", path, 201, created.clone()).await;
        // The next server goes straight to the capability.
        let next = answer(&mut server, "POST", path, 201, created).await;
        (first, retried, next)
    });
    assert!(cluster.notes().is_empty());
    cluster.create_probe_pod(&server_pod()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut other = server_pod();
    other.key.name = "nv-server-t2".into();
    cluster.create_probe_pod(&other).await.unwrap_or_else(|e| panic!("{e}"));
    let (first, retried, next) = api.await.expect("the scripted API server");
    assert_eq!(first["spec"]["securityContext"]["sysctls"][0]["name"], "net.ipv4.ip_unprivileged_port_start");
    for sent in [&retried, &next] {
        assert!(sent["spec"]["securityContext"]["sysctls"].is_null(), "{sent:#}");
        let capabilities = &sent["spec"]["containers"][0]["securityContext"]["capabilities"];
        assert_eq!(
            (&capabilities["add"], &capabilities["drop"]),
            (&json!(["NET_BIND_SERVICE"]), &json!(["ALL"]))
        );
    }
    let notes = cluster.notes();
    assert!(notes.len() == 1 && notes[0].0.contains("NET_BIND_SERVICE"), "{notes:?}");
}

#[tokio::test]
async fn when_neither_the_sysctl_nor_the_capability_is_allowed_the_error_says_both() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let path = "/api/v1/namespaces/shop/pods?";
        let sysctl =
            "pods \"nv-server-t1\" is forbidden: forbidden sysctl: \"net.ipv4.ip_unprivileged_port_start\"";
        no_limit_ranges(&mut server, "shop").await;
        answer(&mut server, "POST", path, 403, status(403, "Forbidden", sysctl)).await;
        let capability = "pods \"nv-server-t1\" is forbidden: unable to validate against any security context constraint: capabilities.add: Invalid value: \"NET_BIND_SERVICE\"";
        answer(&mut server, "POST", path, 403, status(403, "Forbidden", capability)).await;
    });
    let error =
        cluster.create_probe_pod(&server_pod()).await.err().map(|e| e.to_string()).unwrap_or_default();
    api.await.expect("the scripted API server");
    for needle in ["capabilities.add", "forbidden sysctl", "either the sysctl or NET_BIND_SERVICE"] {
        assert!(error.contains(needle), "{needle:?} missing from {error}");
    }
}

#[tokio::test]
async fn garbled_answers_are_named_as_such() {
    // What no API server can be made to give: a web page, a list of the wrong shape, and a
    // server error with no Status.
    for (status, body, expected) in [
        (200, b"<html>sign in</html>".to_vec(), "not what a Kubernetes API server answers"),
        (
            200,
            br#"{"kind":"NamespaceList","items":"none"}"#.to_vec(),
            "not what a Kubernetes API server answers",
        ),
        (502, b"Bad Gateway".to_vec(), "HTTP 502"),
    ] {
        let (cluster, mut server) = mocked();
        let api = tokio::spawn(async move {
            let (_, respond) = server.next_request().await.expect("the client made a request");
            respond.send_response(
                Response::builder().status(status).body(Body::from(body)).expect("a response"),
            );
        });
        let error = cluster.discover().await.err().map(|e| e.to_string()).unwrap_or_default();
        api.await.expect("the scripted API server");
        assert!(
            error.starts_with("list namespaces (all namespaces): ") && error.contains(expected),
            "{error}"
        );
    }
}

#[tokio::test]
async fn api_errors_say_what_to_do() {
    let cases = [
        (
            403,
            "Forbidden",
            "pods is forbidden: User \"ci\" cannot create resource \"pods\" in API group \"\" in the namespace \"shop\"",
            "grant the tool `create` on `pods` (kubectl auth can-i create pods; the role it needs is docs/rbac.yaml)",
        ),
        (
            403,
            "Forbidden",
            "pods \"nv-server-t1\" is forbidden: violates PodSecurity \"restricted:latest\": seccompProfile",
            "refused by admission (Pod Security, a policy webhook",
        ),
        (409, "AlreadyExists", "pods \"nv-server-t1\" already exists", "it already exists"),
        (404, "NotFound", "namespaces \"shop\" not found", "its namespace does not exist (any more)"),
        (
            422,
            "Invalid",
            "Pod \"nv-server-t1\" is invalid: spec.containers[0].resources.limits[memory]: Invalid value: \"64Mi\": must be less than or equal to memory limit of 32Mi",
            "an admission policy rejected a field",
        ),
    ];
    for (code, reason, message, fix) in cases {
        let (cluster, mut server) = mocked();
        let api = tokio::spawn(async move {
            no_limit_ranges(&mut server, "shop").await;
            answer(&mut server, "POST", "/api/v1/namespaces/shop/pods?", code, status(code, reason, message))
                .await;
        });
        let error =
            cluster.create_probe_pod(&server_pod()).await.err().map(|e| e.to_string()).unwrap_or_default();
        api.await.expect("the scripted API server");
        assert!(error.starts_with("create pods shop/nv-server-t1: "), "{error}");
        assert!(
            error.contains(message) && error.contains(&format!("HTTP {code}")) && error.contains(fix),
            "{error}"
        );
    }
}

#[tokio::test]
async fn cleanup_deletes_only_what_carries_the_runs_labels() {
    let (cluster, mut server) = mocked();
    let selector = "labelSelector=app.kubernetes.io%2Fname%3Dnetpol-verify%2Cnetpol-verify.io%2Frun%3Dt1";
    let api = tokio::spawn(async move {
        let pod = json!({"metadata": {"name": "nv-server-t1", "namespace": "shop"}});
        answer_list_with(&mut server, selector, "Pod", json!([pod])).await;
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/shop/pods/nv-server-t1?",
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-server-t1"}}),
        )
        .await;
        no_configmaps_or_policies(&mut server).await;
        let ns = json!({"metadata": {"name": "netpol-verify-t1"}});
        answer(&mut server, "GET", "/api/v1/namespaces?&labelSelector", 200, list("Namespace", json!([ns])))
            .await;
        // Already on its way out: gone is cleaned.
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/netpol-verify-t1?",
            404,
            status(404, "NotFound", "namespaces \"netpol-verify-t1\" not found"),
        )
        .await;
        // A second pass, for creates that were on the wire when the run stopped: nothing left.
        answer(&mut server, "GET", "/api/v1/pods?&labelSelector", 200, list("Pod", json!([]))).await;
        no_configmaps_or_policies(&mut server).await;
        answer(&mut server, "GET", "/api/v1/namespaces?&labelSelector", 200, list("Namespace", json!([])))
            .await;
    });
    let cleaned = cluster.cleanup("t1").await.unwrap_or_else(|e| panic!("{e}"));
    api.await.expect("the scripted API server");
    assert_eq!(cleaned, Cleaned { pods: 1, policies: 0, namespaces: 1 });
}

#[tokio::test]
async fn a_pod_that_cannot_pull_its_image_is_named_with_the_fix() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-server-t1", "namespace": "shop"},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "probe", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/netpol-verify/netpol-probe\""}}}]}});
        answer_list_with(&mut server, TOOL_PODS, "Pod", json!([pod])).await;
    });
    let error = cluster
        .wait_running(&[ObjectKey::new("shop", "nv-server-t1")], Duration::ZERO)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    api.await.expect("the scripted API server");
    assert!(
        error.contains("pod shop/nv-server-t1: ImagePullBackOff") && error.contains("pass --image"),
        "{error}"
    );
}

#[tokio::test]
async fn a_batch_is_a_pod_created_with_its_plan_whose_log_is_the_output() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let map = answer(
            &mut server,
            "POST",
            "/api/v1/namespaces/shop/configmaps?",
            201,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nv-client-t1-plan"}}),
        )
        .await;
        no_limit_ranges(&mut server, "shop").await;
        let pod = answer(
            &mut server,
            "POST",
            "/api/v1/namespaces/shop/pods?",
            201,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-client-t1"}}),
        )
        .await;
        let done = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-client-t1", "namespace": "shop"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]}});
        let one = "/api/v1/namespaces/shop/pods?&fieldSelector=metadata.name%3Dnv-client-t1";
        answer_list_with(&mut server, one, "Pod", json!([done])).await;
        // The log: one result line, then the summary.
        let (request, respond) = server.next_request().await.expect("a request");
        assert!(
            request.uri().to_string().starts_with("/api/v1/namespaces/shop/pods/nv-client-t1/log"),
            "{}",
            request.uri()
        );
        let log = "{\"id\":\"c1\",\"target\":\"10.0.0.5\",\"port\":80,\"protocol\":\"TCP\",\"outcome\":\"connected\",\"name\":\"shop/nv-server-t1\",\"ms\":2}\n\
                   {\"summary\":{\"schema\":1,\"total\":1,\"reached\":1,\"not_reached\":0,\"connected\":1,\"refused\":0,\"unreachable\":0,\"timeout\":0,\"error\":0,\"ms\":2}}\n";
        respond.send_response(
            Response::builder().status(200).body(Body::from(log.as_bytes().to_vec())).expect("a response"),
        );
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/shop/pods/nv-client-t1?",
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-client-t1"}}),
        )
        .await;
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/shop/configmaps/nv-client-t1-plan?",
            200,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}),
        )
        .await;
        (map, pod)
    });
    let client = ProbePod {
        node: None,
        key: ObjectKey::new("shop", "nv-client-t1"),
        role: Role::Client,
        ports: vec![],
        ..server_pod()
    };
    let plan = Plan {
        schema: netpol_probe::wire::SCHEMA,
        probes: vec![netpol_probe::wire::ProbeSpec {
            id: "c1".into(),
            kind: netpol_probe::wire::ProbeKind::Connect,
            target: "10.0.0.5".into(),
            port: 80,
            protocol: None,
            timeout_ms: 1000,
            expect_name: Some("shop/nv-server-t1".into()),
            query: None,
        }],
    };
    let output =
        cluster.run_batch(&client, &plan, Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
    let (map, pod) = api.await.expect("the scripted API server");
    assert!(map["data"]["plan.json"].as_str().is_some_and(|p| p.contains("\"id\":\"c1\"")), "{map}");
    assert_eq!(
        pod["spec"]["containers"][0]["args"],
        json!(["batch", "--plan", crate::manifest::PLAN_PATH, "--concurrency", "1"])
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["metadata"]["labels"]["netpol-verify.io/role"], "client");
    assert_eq!(output.results.len(), 1);
    assert!(output.summary.is_some());
    let ips: Vec<String> = output.client_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.0.0.9", "fd00::9"], "both families of a dual-stack pod");
}

#[test]
fn the_node_shows_alive_what_the_kubelets_readiness_probe_reached() {
    let ready = |name: &str, ip: &str, ready: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "probe", "readinessProbe": {"tcpSocket": {"port": 80}}}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .expect("a pod")
    };
    let pods = [ready("nv-server-t1", "10.0.0.5", "True"), ready("nv-server-t2", "10.0.0.6", "False")];
    let probe = |id: &str, target: &str, port: u16, protocol: Option<netpol_probe::wire::Transport>| {
        netpol_probe::wire::ProbeSpec {
            id: id.into(),
            kind: netpol_probe::wire::ProbeKind::Connect,
            target: target.into(),
            port,
            protocol,
            timeout_ms: 1000,
            expect_name: None,
            query: None,
        }
    };
    let plan = Plan {
        schema: netpol_probe::wire::SCHEMA,
        probes: vec![
            probe("n1", "10.0.0.5", 80, None),
            probe("n2", "10.0.0.5", 81, None),
            probe("n3", "10.0.0.5", 80, Some(netpol_probe::wire::Transport::Udp)),
            probe("n4", "10.0.0.6", 80, None),
        ],
    };
    let results = node_results(&pods, &plan);
    let ids: Vec<&str> = results.iter().filter_map(|r| r.id.as_deref()).collect();
    assert_eq!(ids, ["n1"], "only the Ready pod, on its readiness port, over TCP");
    assert_eq!(results[0].name.as_deref(), Some("shop/nv-server-t1"));
}

#[tokio::test]
async fn a_policy_kind_that_cannot_be_listed_makes_every_check_unknown() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        for (path, kind) in [
            ("/api/v1/namespaces?", "Namespace"),
            ("/api/v1/pods?", "Pod"),
            ("/apis/networking.k8s.io/v1/networkpolicies?", "NetworkPolicy"),
            ("/api/v1/services?", "Service"),
            ("/api/v1/nodes?", "Node"),
        ] {
            answer(&mut server, "GET", path, 200, list(kind, json!([]))).await;
        }
        let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "crd.projectcalico.org", "versions": [{"groupVersion": "crd.projectcalico.org/v1", "version": "v1"}]}
        ]});
        answer(&mut server, "GET", "/apis", 200, groups).await;
        let resources = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "crd.projectcalico.org/v1", "resources": [
            {"name": "globalnetworkpolicies", "singularName": "globalnetworkpolicy", "namespaced": false, "kind": "GlobalNetworkPolicy", "verbs": ["list"]}
        ]});
        answer(&mut server, "GET", "/apis/crd.projectcalico.org/v1", 200, resources).await;
        let forbidden = status(
            403,
            "Forbidden",
            "globalnetworkpolicies.crd.projectcalico.org is forbidden: User \"ci\" cannot list resource",
        );
        answer(&mut server, "GET", "/apis/crd.projectcalico.org/v1/globalnetworkpolicies?", 403, forbidden)
            .await;
    });
    let discovery = cluster.discover().await.unwrap_or_else(|e| panic!("{e}"));
    api.await.expect("the scripted API server");
    let unmodelled = discovery.snapshot.unmodelled();
    assert_eq!(unmodelled.len(), 1);
    assert_eq!(
        (unmodelled[0].namespace.as_deref(), unmodelled[0].name.as_str()),
        (None, "(could not be listed)")
    );
    assert!(
        discovery.notes.iter().any(|n| n.0.contains("every check is `unknown` until the tool may list it"))
    );
}

#[tokio::test]
async fn a_run_sweeps_only_what_earlier_runs_left_long_enough_ago() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let pods = json!([
            {"metadata": {"name": "nv-server-old", "namespace": "shop", "creationTimestamp": "2020-01-01T00:00:00Z", "labels": {"netpol-verify.io/run": "old"}}},
            {"metadata": {"name": "nv-server-now", "namespace": "shop", "creationTimestamp": "2999-01-01T00:00:00Z", "labels": {"netpol-verify.io/run": "now"}}}
        ]);
        // The tool's objects only: the app label *and* a run label.
        let selector = "labelSelector=app.kubernetes.io%2Fname%3Dnetpol-verify%2Cnetpol-verify.io%2Frun";
        answer_list_with(&mut server, selector, "Pod", pods).await;
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/shop/pods/nv-server-old?",
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-server-old"}}),
        )
        .await;
        no_configmaps_or_policies(&mut server).await;
        let namespaces = json!([
            {"metadata": {"name": "netpol-verify-old", "creationTimestamp": "2020-01-01T00:00:00Z"}},
            {"metadata": {"name": "team-tools", "creationTimestamp": "2020-01-01T00:00:00Z"}}
        ]);
        answer(&mut server, "GET", "/api/v1/namespaces?&labelSelector", 200, list("Namespace", namespaces))
            .await;
        // team-tools carries the labels but is not a name the tool gives: it stays.
        answer(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/netpol-verify-old?",
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "netpol-verify-old"}}),
        )
        .await;
    });
    let swept = cluster.sweep(Duration::from_secs(3600)).await.unwrap_or_else(|e| panic!("{e}"));
    api.await.expect("the scripted API server");
    assert_eq!(swept, Cleaned { pods: 1, policies: 0, namespaces: 1 });
}

#[tokio::test]
async fn a_busy_api_server_is_asked_again_within_the_bound() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let path = "/api/v1/pods?&labelSelector";
        answer(&mut server, "GET", path, 429, status(429, "TooManyRequests", "too many requests")).await;
        let pod = |name: &str, ip: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
                "spec": {"containers": [{"name": "probe", "readinessProbe": {"tcpSocket": {"port": 80}}}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
        };
        // One list for every pod waited for, each poll.
        let pending = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-mimic-0-t1", "namespace": "shop"}, "status": {"phase": "Pending"}});
        answer_list_with(&mut server, TOOL_PODS, "Pod", json!([pod("nv-server-t1", "10.0.0.5"), pending]))
            .await;
        // Then a watch from that list's version: the other pod starts.
        let (request, respond) = server.next_request().await.expect("a watch");
        let uri = request.uri().to_string();
        assert!(uri.contains("watch=true") && uri.contains("resourceVersion=1"), "{uri}");
        let line = json!({"type": "MODIFIED", "object": pod("nv-mimic-0-t1", "10.0.0.6")}).to_string() + "\n";
        respond.send_response(
            Response::builder().status(200).body(Body::from(line.into_bytes())).expect("a response"),
        );
    });
    let keys = [ObjectKey::new("shop", "nv-server-t1"), ObjectKey::new("shop", "nv-mimic-0-t1")];
    let running = cluster.wait_running(&keys, Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
    api.await.expect("the scripted API server");
    let ips: Vec<String> = running.iter().map(|r| r.ip.to_string()).collect();
    assert_eq!(ips, ["10.0.0.5", "10.0.0.6"]);
}

#[test]
fn a_kubelet_that_forbids_the_sysctl_is_named_with_the_fix() {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "nv-server-t1", "namespace": "shop"},
        "status": {"phase": "Failed", "reason": "SysctlForbidden", "message": "Pod forbidden sysctl: \"net.ipv4.ip_unprivileged_port_start\" not allowlisted"}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let reason = super::waiting_reason(&pod).unwrap_or_default();
    assert!(reason.starts_with("pod shop/nv-server-t1: SysctlForbidden: Pod forbidden sysctl"), "{reason}");
    assert!(reason.ends_with("pass --low-ports capability"), "{reason}");
}

#[test]
fn an_unschedulable_pod_gets_the_fix_its_scheduler_message_calls_for() {
    let unschedulable = |message: &str| -> String {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "nv-server-t1", "namespace": "shop"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": message}]}}))
            .unwrap_or_else(|e| panic!("{e}"));
        super::waiting_reason(&pod).unwrap_or_default()
    };
    // kube-scheduler's words, as a real one gives them.
    let tainted =
        unschedulable("0/3 nodes are available: 3 node(s) had untolerated taint {dedicated: infra}.");
    assert!(tainted.starts_with("pod shop/nv-server-t1 cannot be scheduled: 0/3 nodes"), "{tainted}");
    assert!(tainted.ends_with("(--tolerate-all-taints lets probes run on tainted nodes)"), "{tainted}");
    let none = unschedulable("no nodes available to schedule pods");
    assert!(none.contains("no node that takes pods: kubectl get nodes") && !none.contains("taint"), "{none}");
    let full = unschedulable("0/2 nodes are available: 2 Insufficient memory.");
    assert!(full.contains("no room for the probe pods") && !full.contains("taint"), "{full}");
    let other =
        unschedulable("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.");
    assert!(other.ends_with("didn't match Pod's node affinity/selector."), "{other}");
}

#[tokio::test]
async fn a_pod_deleted_while_the_run_waits_for_it_fails_the_wait_at_once() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        answer_list_with(&mut server, TOOL_PODS, "Pod", json!([])).await;
    });
    let keys = [ObjectKey::new("shop", "nv-server-t1")];
    let wait = cluster.wait_running(&keys, Duration::from_secs(600));
    let error = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("at once").err();
    api.await.expect("the scripted API server");
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.starts_with("pod shop/nv-server-t1 (it was deleted while the run waited"), "{error}");
}

#[tokio::test]
async fn a_probe_server_the_kubelet_refused_fails_the_wait_at_once() {
    let (cluster, mut server) = mocked();
    let api = tokio::spawn(async move {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nv-server-t1", "namespace": "shop"},
            "status": {"phase": "Failed", "reason": "SysctlForbidden", "message": "forbidden sysctl"}});
        answer_list_with(&mut server, TOOL_PODS, "Pod", json!([pod])).await;
    });
    let keys = [ObjectKey::new("shop", "nv-server-t1")];
    let wait = cluster.wait_running(&keys, Duration::from_secs(600));
    let error = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("at once").err();
    api.await.expect("the scripted API server");
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("SysctlForbidden") && error.contains("--low-ports capability"), "{error}");
}

#[tokio::test]
async fn discovery_reads_cluster_dns_endpointslices_and_goes_on_without_them() {
    for allowed in [true, false] {
        let (cluster, mut server) = mocked();
        let api = tokio::spawn(async move {
            answer(&mut server, "GET", "/api/v1/namespaces?", 200, list("Namespace", json!([]))).await;
            answer(&mut server, "GET", "/api/v1/pods?", 200, list("Pod", json!([]))).await;
            let policies = "/apis/networking.k8s.io/v1/networkpolicies?";
            answer(&mut server, "GET", policies, 200, list("NetworkPolicy", json!([]))).await;
            let dns = json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"}, "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"}}});
            answer(&mut server, "GET", "/api/v1/services?", 200, list("Service", json!([dns]))).await;
            answer(&mut server, "GET", "/api/v1/nodes?", 200, list("Node", json!([]))).await;
            let slices = "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dkube-dns";
            if allowed {
                let slice = json!({"metadata": {"name": "kube-dns-x1", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "kube-dns"}}, "addressType": "IPv4", "endpoints": []});
                answer(&mut server, "GET", slices, 200, list("EndpointSlice", json!([slice]))).await;
            } else {
                let forbidden = status(
                    403,
                    "Forbidden",
                    "endpointslices.discovery.k8s.io is forbidden: User \"ci\" cannot list resource",
                );
                answer(&mut server, "GET", slices, 403, forbidden).await;
            }
            answer(
                &mut server,
                "GET",
                "/apis",
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            )
            .await;
        });
        let discovery = cluster.discover().await.unwrap_or_else(|e| panic!("{e}"));
        api.await.expect("the scripted API server");
        let found = discovery.snapshot.endpoint_slices_of(&ObjectKey::new("kube-system", "kube-dns")).len();
        assert_eq!(found, usize::from(allowed));
        let noted =
            discovery.notes.iter().any(|n| n.0.contains("endpoints come from the Service's selector"));
        assert_eq!(noted, !allowed, "{:?}", discovery.notes);
    }
}
