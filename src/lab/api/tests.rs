//! The lab API through kube-rs, as the Kubernetes backend uses it: TLS, the token, CRUD,
//! conflicts, selectors, watches and errors.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api as KubeApi, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

use super::*;

/// A running API (no kubelet) and a client configured from the kubeconfig it writes.
struct Running {
    client: kube::Client,
    kubeconfig: String,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(nodes: Vec<NodeInfo>) -> Running {
    let token = new_token().expect("a token");
    let api = Api::new(ApiConfig { token: token.clone(), nodes, custom_kinds: vec![], audit_log: None });
    let certificates = tls::Certificates::generate("test").expect("certificates");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let server = format!("https://{}", listener.local_addr().expect("an address"));
    let stop = CancellationToken::new();
    tokio::spawn(api.clone().serve(listener, certificates.server_config().expect("TLS"), stop.clone()));
    let kubeconfig = kubeconfig("lab-test", &server, &certificates.ca_pem, &token);
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
        .await
        .expect("a config");
    let client = kube::Client::try_from(config).expect("a client");
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("namespace");
    KubeApi::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace x");
    Running { client, kubeconfig, stop }
}

fn api_error(error: kube::Error) -> (u16, String, String) {
    match error {
        kube::Error::Api(response) => (response.code, response.reason, response.message),
        other => (0, String::new(), other.to_string()),
    }
}

#[tokio::test]
async fn objects_go_through_tls_with_versions_conflicts_and_status_errors() {
    let lab = start(vec![]).await;
    let maps: KubeApi<ConfigMap> = KubeApi::namespaced(lab.client.clone(), "x");
    let map: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "a", "labels": {"app": "web"}}, "data": {"k": "v"}}),
    )
    .expect("configmap");
    let created = maps.create(&PostParams::default(), &map).await.expect("created");
    let version = created.metadata.resource_version.clone().expect("a resourceVersion");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("x"));
    let (code, reason, message) =
        api_error(maps.create(&PostParams::default(), &map).await.expect_err("twice"));
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "configmaps \"a\" already exists")
    );

    // A stale resourceVersion is a conflict; the current one goes through.
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "w".to_string())].into());
    maps.replace("a", &PostParams::default(), &stale).await.expect("current version");
    let (code, reason, _) =
        api_error(maps.replace("a", &PostParams::default(), &stale).await.expect_err("stale"));
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let patched = maps
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .expect("patched");
    assert_ne!(patched.metadata.resource_version, Some(version));
    assert_eq!(patched.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("web"));

    // Label and field selectors, and pages.
    for name in ["b", "c"] {
        let other: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap");
        maps.create(&PostParams::default(), &other).await.expect("created");
    }
    let web = maps.list(&ListParams::default().labels("app=web,tier in (front)")).await.expect("listed");
    assert_eq!(web.items.len(), 1);
    let named = maps.list(&ListParams::default().fields("metadata.name!=a")).await.expect("listed");
    assert_eq!(named.items.len(), 2);
    let page = maps.list(&ListParams::default().limit(2)).await.expect("page");
    let token = page.metadata.continue_.clone().expect("more");
    let rest = maps.list(&ListParams::default().limit(2).continue_token(&token)).await.expect("page two");
    assert_eq!((page.items.len(), rest.items.len(), rest.metadata.continue_.is_none()), (2, 1, true));
    let (code, _, message) =
        api_error(maps.list(&ListParams::default().fields("data.k=v")).await.expect_err("not selectable"));
    assert!(code == 400 && message.starts_with("field label not supported: data.k"), "{message}");

    // Invalid objects are refused with the field to blame; a missing namespace is named.
    let policies: KubeApi<NetworkPolicy> = KubeApi::namespaced(lab.client.clone(), "x");
    let bad: NetworkPolicy = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}}),
    )
    .expect("policy");
    let (code, reason, message) =
        api_error(policies.create(&PostParams::default(), &bad).await.expect_err("invalid"));
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(message.starts_with("NetworkPolicy \"p\" is invalid: spec.policyTypes"), "{message}");
    let elsewhere: KubeApi<ConfigMap> = KubeApi::namespaced(lab.client.clone(), "nowhere");
    let (code, _, message) =
        api_error(elsewhere.create(&PostParams::default(), &map).await.expect_err("no namespace"));
    assert_eq!((code, message.as_str()), (404, "namespaces \"nowhere\" not found"));
    let (code, _, message) = api_error(maps.get("zzz").await.expect_err("missing"));
    assert_eq!((code, message.as_str()), (404, "configmaps \"zzz\" not found"));

    // A wrong token is refused.
    let forged = lab.kubeconfig.replace("token: ", "token: x");
    let parsed = kube::config::Kubeconfig::from_yaml(&forged).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default()).await.expect("config");
    let intruder: KubeApi<ConfigMap> =
        KubeApi::namespaced(kube::Client::try_from(config).expect("client"), "x");
    assert_eq!(api_error(intruder.list(&ListParams::default()).await.expect_err("refused")).0, 401);
}

#[tokio::test]
async fn watches_start_from_a_version_and_see_objects_enter_and_leave_a_selection() {
    let lab = start(vec![]).await;
    let maps: KubeApi<ConfigMap> = KubeApi::namespaced(lab.client.clone(), "x");
    let listed = maps.list(&ListParams::default()).await.expect("listed");
    let version = listed.metadata.resource_version.clone().expect("a version");
    let mut stream = maps
        .watch(&WatchParams::default().labels("app=web").timeout(10), &version)
        .await
        .expect("a watch")
        .boxed();
    let map = |labels: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "w", "labels": labels}})).expect("configmap")
    };
    maps.create(&PostParams::default(), &map(json!({"app": "web"}))).await.expect("created");
    maps.patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .expect("patched");
    maps.patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .expect("patched");
    maps.delete("w", &DeleteParams::default()).await.expect("deleted");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.expect("in time");
        match event.expect("an event").expect("decodes") {
            WatchEvent::Added(_) => seen.push("ADDED"),
            WatchEvent::Modified(_) => seen.push("MODIFIED"),
            WatchEvent::Deleted(_) => seen.push("DELETED"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["ADDED", "DELETED", "ADDED", "DELETED"],
        "leaving the selection is a deletion to the watcher"
    );
    let too_old = maps.watch(&WatchParams::default(), "0").await.expect("from the current state");
    drop(too_old);
}

#[tokio::test]
async fn pods_get_the_api_servers_defaults_and_go_at_once_when_no_node_runs_them() {
    let lab = start(vec![]).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(lab.client.clone(), "x");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "ghcr.io/netpol-verify/netpol-probe:0.1.0"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }))
    .expect("pod");
    let created = pods.create(&PostParams::default(), &pod).await.expect("created");
    let status = created.status.clone().unwrap_or_default();
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Pending"), None),
        "a client writes no status"
    );
    let spec = created.spec.clone().unwrap_or_default();
    assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(spec.containers[0].termination_message_path.as_deref(), Some("/dev/termination-log"));
    assert!(spec.node_name.is_none(), "no node: unscheduled");
    let mut changed = created.clone();
    changed.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
    let (code, _, message) =
        api_error(pods.replace("p", &PostParams::default(), &changed).await.expect_err("immutable"));
    assert!(code == 422 && message.contains("pod updates may not change fields"), "{message}");
    pods.delete("p", &DeleteParams::default().grace_period(30)).await.expect("deleted");
    assert_eq!(api_error(pods.get("p").await.expect_err("gone")).0, 404, "an unscheduled pod goes at once");
}

#[tokio::test]
async fn a_terminating_namespace_refuses_content_and_goes_once_empty() {
    let lab = start(vec![]).await;
    let maps: KubeApi<ConfigMap> = KubeApi::namespaced(lab.client.clone(), "x");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a", "finalizers": ["example.com/hold"]}}))
            .expect("configmap");
    maps.create(&PostParams::default(), &map).await.expect("created");
    let namespaces: KubeApi<Namespace> = KubeApi::all(lab.client.clone());
    namespaces.delete("x", &DeleteParams::background()).await.expect("deleting");
    let x = namespaces.get("x").await.expect("still there: its content holds a finalizer");
    assert_eq!(x.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    let other: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "b"}})).expect("configmap");
    let (code, _, message) =
        api_error(maps.create(&PostParams::default(), &other).await.expect_err("refused"));
    assert_eq!(
        (code, message.as_str()),
        (
            403,
            "configmaps \"b\" is forbidden: unable to create new content in namespace x because it is being terminated"
        )
    );
    maps.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("released");
    for _ in 0..50 {
        if namespaces.get("x").await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("namespace x stayed after its content went");
}

#[tokio::test]
async fn pods_are_bound_to_the_first_node_their_affinity_admits_or_left_unschedulable() {
    let node = |name: &str| NodeInfo {
        name: name.into(),
        labels: [("kubernetes.io/os".to_string(), "linux".to_string())].into(),
    };
    let lab = start(vec![node("lab-2"), node("lab")]).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(lab.client.clone(), "x");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec =
            json!({"containers": [{"name": "c", "image": "ghcr.io/netpol-verify/netpol-probe:0.1.0"}]});
        if let Some(node) = node {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
    };
    let bound = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let anywhere = pods.create(&PostParams::default(), &pod("a", None)).await.expect("created");
    assert_eq!(bound(&anywhere).as_deref(), Some("lab"), "the first node by name");
    let pinned = pods.create(&PostParams::default(), &pod("b", Some("lab-2"))).await.expect("created");
    assert_eq!(bound(&pinned).as_deref(), Some("lab-2"));
    let nowhere = pods.create(&PostParams::default(), &pod("c", Some("gone"))).await.expect("created");
    assert_eq!(bound(&nowhere), None);
    let scheduled = nowhere.status.and_then(|s| s.conditions).unwrap_or_default();
    assert_eq!((scheduled[0].type_.as_str(), scheduled[0].status.as_str()), ("PodScheduled", "False"));
    assert!(
        scheduled[0].message.as_deref().is_some_and(|m| m.starts_with("0/2 nodes are available")),
        "{scheduled:?}"
    );
}

#[tokio::test]
async fn pages_across_namespaces_hold_every_object_once() {
    let lab = start(vec![]).await;
    // "x-y" sorts before "x/" as text but after "x" as a namespace: pages follow the store.
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "x-y"}})).expect("namespace");
    KubeApi::<Namespace>::all(lab.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("x-y");
    for (namespace, name) in [("x", "a"), ("x", "b"), ("x-y", "a"), ("x-y", "b"), ("x", "c")] {
        let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap");
        KubeApi::<ConfigMap>::namespaced(lab.client.clone(), namespace)
            .create(&PostParams::default(), &map)
            .await
            .expect("created");
    }
    let all: KubeApi<ConfigMap> = KubeApi::all(lab.client.clone());
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let mut params = ListParams::default().limit(2);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = all.list(&params).await.expect("a page");
        seen.extend(page.items.iter().map(|m| {
            format!(
                "{}/{}",
                m.metadata.namespace.clone().unwrap_or_default(),
                m.metadata.name.clone().unwrap_or_default()
            )
        }));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["x/a", "x/b", "x/c", "x-y/a", "x-y/b"]);
}

/// One request as kubectl or curl would make it: status code and body.
async fn raw(
    lab: &Running,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = ::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .expect("a request");
    let response = lab.client.send(request.map(kube::client::Body::from)).await.expect("a response");
    let code = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.expect("a body");
    (code, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn dry_run_updates_are_checked_not_stored_logs_refuse_writes_and_overlong_watches_start() {
    let lab = start(vec![]).await;
    let maps: KubeApi<ConfigMap> = KubeApi::namespaced(lab.client.clone(), "x");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).expect("configmap");
    let created = maps.create(&PostParams::default(), &map).await.expect("created");
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let answered = maps.replace("a", &dry, &changed).await.expect("a dry run");
    assert_eq!(answered.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("w"));
    let stored = maps.get("a").await.expect("still there");
    assert_eq!(stored.data.as_ref().and_then(|d| d.get("k")).map(String::as_str), Some("v"));
    assert_eq!(stored.metadata.resource_version, created.metadata.resource_version);
    // A dry run with a stale version is the conflict the real write would be.
    maps.replace("a", &PostParams::default(), &changed).await.expect("written");
    let (code, reason, _) = api_error(maps.replace("a", &dry, &changed).await.expect_err("stale"));
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Logs are read, never written.
    let pods: KubeApi<Pod> = KubeApi::namespaced(lab.client.clone(), "x");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("pod created");
    let (code, body) = raw(&lab, "PUT", "/api/v1/namespaces/x/pods/p/log", Some(json!({}))).await;
    assert_eq!((code, body["reason"].as_str()), (405, Some("MethodNotAllowed")), "{body}");

    // A watch asking for longer than a deadline can hold (u64::MAX seconds) still starts.
    let request = ::http::Request::get(format!(
        "/api/v1/namespaces/x/configmaps?watch=true&timeoutSeconds={}",
        u64::MAX
    ))
    .body(Vec::new())
    .expect("a request");
    let events = lab.client.request_events::<ConfigMap>(request).await.expect("a watch");
    let mut events = Box::pin(events);
    let first =
        tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(WatchEvent::Added(_)))), "{first:?}");
}

#[tokio::test]
async fn logs_of_pods_no_kubelet_holds_and_strict_refusals_are_answered_as_kube_apiserver_does() {
    // No nodes: every pod stays unscheduled.
    let lab = start(vec![]).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(lab.client.clone(), "x");
    for (name, node) in [("unplaced", None), ("elsewhere", Some("gone"))] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("pod created");
    }
    let request = |path: &str| {
        ::http::Request::get(path.to_string()).body(kube::client::Body::empty()).expect("a request")
    };
    let response =
        lab.client.send(request("/api/v1/namespaces/x/pods/unplaced/log")).await.expect("an answer");
    assert_eq!(response.status().as_u16(), 204, "an unscheduled pod's log is no content");
    let (code, body) = raw(&lab, "GET", "/api/v1/namespaces/x/pods/elsewhere/log", None).await;
    assert_eq!((code, body["message"].as_str()), (404, Some("pods \"gone\" not found")), "{body}");

    let (code, body) = raw(
        &lab,
        "POST",
        "/api/v1/namespaces/x/configmaps?fieldValidation=Strict",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}, "bogus": 1})),
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (
            400,
            Some(
                "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"bogus\""
            )
        ),
        "{body}"
    );
}
