//! The Kubernetes backend against a real kube-apiserver (issue 14): what the real server
//! validates, defaults, admits and authorizes, where our imitations only agree with us. The
//! control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built from
//! their Go modules by tests/apiserver/build.sh) is tests/support/apiserver.rs's. It has no
//! node of its own; where a test needs pods that run, a lab is attached to it as its node
//! (`lab up --api-server`, docs/lab.md), and tests/run.rs runs every CNI mode that way.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::Value;
use support::apiserver::{ControlPlane, control_plane};
use support::verify;

/// One test at a time: `cleanup` and the checks that nothing is left see the whole cluster,
/// so a test running beside another would remove, or find, the other's objects.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/examples/shop.yaml");
const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rbac.yaml");

/// How long one command of the tool may take here before the test calls it hung.
const COMMAND_WITHIN: Duration = Duration::from_secs(180);

/// Runs the tool against the control plane with `kubeconfig`, within [`COMMAND_WITHIN`].
fn netpol_verify(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(verify())
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("netpol-verify runs");
    // Read as it writes (a full pipe would stall it), and wait no longer than the bound.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    use std::io::Read;
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + COMMAND_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().expect("a status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let said = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("netpol-verify {args:?} did not end within {COMMAND_WITHIN:?}: {said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// The cluster as every test starts it: nothing of the tool's left by an earlier one.
async fn fresh(plane: &ControlPlane) -> kube::Client {
    plane.assert_running();
    let client = plane.admin_client().await;
    let output = netpol_verify(&plane.admin, &["cleanup", "--older-than", "0s"]);
    assert_eq!(output.status.code(), Some(0), "{}", words(&output));
    assert_eq!(labelled_once_settled(&client).await, BTreeSet::new(), "what an earlier test left");
    client
}

fn words(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The documents of a multi-document YAML text.
fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("YAML").into_iter().filter(|d| !d.is_null()).collect()
}

/// Creates `object` as it is written, and returns what the server stored.
async fn create(client: &kube::Client, object: &Value) -> Result<Value, kube::Error> {
    let (group, version) = match object["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), object["apiVersion"].as_str().unwrap_or_default().to_string()),
    };
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, kind));
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let typed: DynamicObject = serde_json::from_value(object.clone()).expect("an object");
    let stored = api.create(&PostParams::default(), &typed).await?;
    Ok(serde_json::to_value(stored).expect("JSON"))
}

/// The paths of `sent` that `stored` lacks or holds with another value: what the server
/// dropped or changed of what we wrote (its defaults, added beside, are no difference).
fn dropped(sent: &Value, stored: &Value, path: &str, found: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(sent), Value::Object(stored)) => {
            for (key, value) in sent {
                match stored.get(key) {
                    Some(kept) => dropped(value, kept, &format!("{path}.{key}"), found),
                    None => found.push(format!("{path}.{key} (dropped)")),
                }
            }
        }
        (Value::Array(sent), Value::Array(stored)) if sent.len() == stored.len() => {
            for (i, (value, kept)) in sent.iter().zip(stored).enumerate() {
                dropped(value, kept, &format!("{path}[{i}]"), found);
            }
        }
        _ if sent == stored => {}
        _ => found.push(format!("{path}: sent {sent}, stored {stored}")),
    }
}

/// Every object `run --dry-run` prints for the example cluster is admitted by the real API
/// server, with Pod Security `restricted` enforced by the label the tool gives its namespaces, and stored as written: no field the pod
/// builder sets is unknown to the server, dropped or changed by it.
#[tokio::test]
async fn every_object_a_run_creates_is_admitted_as_restricted_and_stored_as_written() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    let client = fresh(plane).await;
    // The cluster's own namespaces, which the run's pods go into.
    for namespace in ["shop", "monitoring"] {
        plane.namespace(namespace, &[]).await;
    }
    let output = Command::new(verify())
        .args(["run", "--dry-run", "--from-file", EXAMPLE, "--image", "registry.internal/netpol-probe:1"])
        .output()
        .expect("netpol-verify runs");
    assert_eq!(output.status.code(), Some(0), "{}", words(&output));
    let objects = documents(&String::from_utf8_lossy(&output.stdout));
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["ConfigMap", "Namespace", "NetworkPolicy", "Pod"]));
    // Namespaces first (each needs its default service account before it takes a pod), then
    // what goes into them, pods last, as the run orders them.
    let rank =
        |o: &Value| ["Namespace", "ConfigMap", "NetworkPolicy", "Pod"].iter().position(|k| o["kind"] == *k);
    let mut ordered: Vec<&Value> = objects.iter().collect();
    ordered.sort_by_key(|o| rank(o));
    let mut differences = Vec::new();
    for object in ordered {
        let name = format!(
            "{} {}/{}",
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default()
        );
        if object["kind"] == "Namespace" {
            let labels = &object["metadata"]["labels"];
            assert_eq!(
                labels["pod-security.kubernetes.io/enforce"], "restricted",
                "{name} is not restricted"
            );
        }
        let stored = match create(&client, object).await {
            Ok(stored) => stored,
            Err(e) => panic!("the real API server refused {name}: {e}"),
        };
        if object["kind"] == "Namespace" {
            let namespace = object["metadata"]["name"].as_str().unwrap_or_default();
            plane.wait_for_default_account(namespace).await;
        }
        let mut found = Vec::new();
        dropped(object, &stored, "", &mut found);
        differences.extend(found.into_iter().map(|d| format!("{name}: {d}")));
    }
    assert!(differences.is_empty(), "the server did not store what we wrote:\n{}", differences.join("\n"));
    // The tool removes what it made: its cleanup, against the real server, leaves none of it.
    let output = netpol_verify(&plane.admin, &["cleanup", "--older-than", "0s"]);
    assert_eq!(output.status.code(), Some(0), "{}", words(&output));
    assert_eq!(labelled_once_settled(&client).await, BTreeSet::new());
}

/// The objects of the tool's kinds labelled as the tool's, once deletions under way are done
/// (a namespace is removed by the controller manager after its contents), within 60 s.
async fn labelled_once_settled(client: &kube::Client) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = labelled(client).await;
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn labelled(client: &kube::Client) -> BTreeSet<String> {
    support::objects_of(client, &ListParams::default().labels("app.kubernetes.io/name=netpol-verify")).await
}

/// A run on a cluster with no node its pods could go to fails within its bound, names a pod
/// the scheduler could not place and why, exits 2, and leaves nothing behind.
#[tokio::test]
async fn a_run_whose_pods_no_node_takes_fails_in_time_naming_the_pod_and_leaves_nothing() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    let client = fresh(plane).await;
    plane.namespace("unplaceable", &[]).await;
    let started = Instant::now();
    let output =
        netpol_verify(&plane.admin, &["run", "-n", "unplaceable", "-s", "matrix", "--timeout", "10s"]);
    let said = words(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}: {said}", started.elapsed());
    assert!(said.contains("pod unplaceable/nv-server-") && said.contains("cannot be scheduled"), "{said}");
    assert!(said.contains("no nodes available to schedule pods"), "the scheduler's own words: {said}");
    assert!(said.contains("kubectl get nodes") && !said.contains("taint"), "the fix for no nodes: {said}");
    assert_eq!(labelled_once_settled(&client).await, BTreeSet::new(), "{said}");
}

/// The rules of docs/rbac.yaml's ClusterRole, one by one.
fn documented_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    let text = std::fs::read_to_string(RBAC).expect("docs/rbac.yaml");
    let role: ClusterRole = serde_saphyr::from_str(&text).expect("a ClusterRole");
    role.rules.unwrap_or_default()
}

/// One permission of a role: API group, resource, verb.
type Grant = (String, String, String);

/// Every permission `rules` give, one by one.
fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> Vec<Grant> {
    let mut all = Vec::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    all.push((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    all
}

/// `rules` with the permission to `verb` `resource` of `group` taken away, and nothing else
/// (a rule per permission left).
fn without(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
    group: &str,
    verb: &str,
    resource: &str,
) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    grants(rules)
        .into_iter()
        .filter(|(g, r, v)| (g.as_str(), r.as_str(), v.as_str()) != (group, resource, verb))
        .map(|(group, resource, verb)| k8s_openapi::api::rbac::v1::PolicyRule {
            api_groups: Some(vec![group]),
            resources: Some(vec![resource]),
            verbs: vec![verb],
            ..Default::default()
        })
        .collect()
}

/// A service account bound to a ClusterRole of `rules` alone, and a kubeconfig for it.
async fn account_with(
    plane: &ControlPlane,
    dir: &tempfile::TempDir,
    name: &str,
    rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
) -> std::path::PathBuf {
    let client = plane.admin_client().await;
    let pp = PostParams::default();
    let mut account = ServiceAccount::default();
    account.metadata.name = Some(name.into());
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&pp, &account)
        .await
        .expect("account");
    let mut role = ClusterRole::default();
    role.metadata.name = Some(name.into());
    role.rules = Some(rules);
    Api::<ClusterRole>::all(client.clone()).create(&pp, &role).await.expect("role");
    let mut binding = ClusterRoleBinding::default();
    binding.metadata.name = Some(name.into());
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: name.into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some("default".into()),
        ..Subject::default()
    }]);
    Api::<ClusterRoleBinding>::all(client.clone()).create(&pp, &binding).await.expect("binding");
    // The authorizer sees a new binding a moment later: wait until it grants what it binds.
    if let Some((group, resource, verb)) =
        grants(role.rules.as_deref().unwrap_or_default()).into_iter().next()
    {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource, None),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!("system:serviceaccount:default:{name}")),
                groups: Some(vec!["system:serviceaccounts".into(), "system:serviceaccounts:default".into()]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group),
                    resource: Some(resource),
                    subresource,
                    verb: Some(verb),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviews = Api::<SubjectAccessReview>::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = reviews.create(&pp, &review).await.expect("a review");
            if answer.status.is_some_and(|s| s.allowed) {
                break;
            }
            assert!(Instant::now() < deadline, "the binding of {name} not in force within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client, "default")
        .create_token_request(name, &pp, &request)
        .await
        .expect("a token")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    plane.kubeconfig_with_token(dir.path(), name, &token)
}

/// Leftovers of a crashed run, made by the administrator: a namespace with a pod, a ConfigMap
/// and a NetworkPolicy, and a probe pod in a namespace of the cluster's, all labelled with run
/// `run`.
async fn leftovers(plane: &ControlPlane, run: &str, workload_namespace: &str) {
    let client = plane.admin_client().await;
    let labels = serde_json::json!({"app.kubernetes.io/name": "netpol-verify", "netpol-verify.io/run": run});
    let scratch = format!("netpol-verify-{run}");
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": scratch, "labels": labels}}))
            .expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    plane.wait_for_default_account(&scratch).await;
    let pod = |namespace: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("nv-{run}-left"), "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "probe", "image": "registry.internal/netpol-probe:1",
                "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 65532,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}
        })
    };
    for object in [
        pod(&scratch),
        pod(workload_namespace),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("nv-{run}-plan"), "namespace": scratch, "labels": labels}}),
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("nv-{run}-deny"), "namespace": scratch, "labels": labels},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    ] {
        create(&client, &object).await.unwrap_or_else(|e| panic!("leftover {object}: {e}"));
    }
}

/// `cleanup`, as a service account bound only to the documented role, removes a crashed run's
/// objects; with any rule it uses taken away, it stops with the refusal and the grant that fixes
/// it, naming verb and resource.
#[tokio::test]
async fn cleanup_needs_exactly_the_documented_rules_it_uses() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    let client = fresh(plane).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    plane.namespace("crashed", &[]).await;
    let rules = documented_rules();
    let kubeconfig = account_with(plane, &dir, "cleaner", rules.clone()).await;
    leftovers(plane, "c0ffee", "crashed").await;
    // By default only what is over an hour old goes: a run still going keeps its objects.
    let before = labelled_once_settled(&client).await;
    let output = netpol_verify(&kubeconfig, &["cleanup"]);
    assert_eq!(output.status.code(), Some(0), "{}", words(&output));
    assert!(
        words(&output).contains("removed 0 pods, 0 policies and 0 namespaces older than 1h"),
        "{}",
        words(&output)
    );
    assert_eq!(labelled_once_settled(&client).await, before);
    // Once they are older than asked (the server's creation timestamps have whole seconds).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let output = netpol_verify(&kubeconfig, &["cleanup", "--older-than", "1s"]);
    assert_eq!(output.status.code(), Some(0), "{}", words(&output));
    assert!(words(&output).contains("older than 1s"), "{}", words(&output));
    assert_eq!(labelled_once_settled(&client).await, BTreeSet::new());

    // The rules cleanup uses: listing and deleting the four kinds it makes.
    let uses = [
        ("", "list", "pods"),
        ("", "delete", "pods"),
        ("", "list", "configmaps"),
        ("", "delete", "configmaps"),
        ("networking.k8s.io", "list", "networkpolicies"),
        ("networking.k8s.io", "delete", "networkpolicies"),
        ("", "list", "namespaces"),
        ("", "delete", "namespaces"),
    ];
    for (i, (group, verb, resource)) in uses.into_iter().enumerate() {
        let without = without(&rules, group, verb, resource);
        let name = format!("cleaner-{i}");
        let kubeconfig = account_with(plane, &dir, &name, without).await;
        let run = format!("dead{i:02x}");
        leftovers(plane, &run, "crashed").await;
        let output = netpol_verify(&kubeconfig, &["cleanup", "--older-than", "0s"]);
        let said = words(&output);
        assert_eq!(output.status.code(), Some(2), "without {verb} {resource}: {said}");
        assert!(
            said.contains("forbidden") && said.contains(&format!("cannot {verb} resource \"{resource}\"")),
            "{said}"
        );
        assert!(
            said.contains(&format!("grant the tool `{verb}` on `{resource}`")),
            "without {verb} {resource}: {said}"
        );
        // What the documented role may do, the administrator finishes.
        let output = netpol_verify(&plane.admin, &["cleanup", "--older-than", "0s"]);
        assert_eq!(output.status.code(), Some(0), "{}", words(&output));
        assert_eq!(labelled_once_settled(&client).await, BTreeSet::new());
    }
}

/// One request of the differential test.
struct Step {
    name: &'static str,
    method: http::Method,
    path: String,
    body: Option<Value>,
    content_type: &'static str,
    accept: &'static str,
    /// Remember the resourceVersion of the answer (a list's), for a later `{rv}`.
    remember: bool,
}

fn step(name: &'static str, method: http::Method, path: &str, body: Option<Value>) -> Step {
    Step {
        name,
        method,
        path: path.to_string(),
        body,
        content_type: "application/json",
        accept: "application/json",
        remember: false,
    }
}

/// Every kind of request the tool and kubectl make, in a namespace `diff`: creates with
/// conflicts, invalid names, unknown fields (strict) and as dry runs; lists by label and field,
/// paged, and as kubectl's Tables; watches from the start and from a list's resourceVersion;
/// stale updates, patches, a pod's status and log; graceful and immediate deletes, collection
/// deletes, a namespace deleted in the foreground; and what is not there.
fn requests() -> Vec<Step> {
    use http::Method as M;
    use serde_json::json;
    let restricted = json!({"pod-security.kubernetes.io/enforce": "restricted"});
    let namespace =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "diff", "labels": restricted}});
    let map = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "diff", "labels": {"run": "r1"}}, "data": {"k": "v"}})
    };
    let pod = |privileged: bool| {
        let security = if privileged {
            json!({"privileged": true})
        } else {
            json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 65532,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
        };
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": if privileged { "root" } else { "p" }, "namespace": "diff", "labels": {"run": "r1"}},
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "probe",
                "image": "registry.internal/netpol-probe:1", "securityContext": security}]}})
    };
    let mut unplaced = pod(false);
    unplaced["metadata"]["name"] = json!("q");
    unplaced["spec"]["nodeName"] = Value::Null;
    unplaced["spec"]["nodeSelector"] = json!({"example.com/no": "node"});
    let cms = "/api/v1/namespaces/diff/configmaps";
    let pods = "/api/v1/namespaces/diff/pods";
    let mut stale = map("plan");
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["data"]["k"] = json!("stale");
    let mut patch =
        step("merge-patch a ConfigMap", M::PATCH, &format!("{cms}/plan"), Some(json!({"data": {"k": "v2"}})));
    patch.content_type = "application/merge-patch+json";
    // `kubectl get configmaps`: a Table.
    let mut kubectl_get =
        step("get them as kubectl does", M::GET, &format!("{cms}?labelSelector=run%3Dr1"), None);
    kubectl_get.accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    vec![
        step("create a namespace", M::POST, "/api/v1/namespaces", Some(namespace.clone())),
        step("create it again", M::POST, "/api/v1/namespaces", Some(namespace)),
        step("get a namespace that is not there", M::GET, "/api/v1/namespaces/absent", None),
        step("create a ConfigMap", M::POST, cms, Some(map("plan"))),
        step("create it again", M::POST, cms, Some(map("plan"))),
        step("create one with an invalid name", M::POST, cms, Some(map("Not_Valid"))),
        step(
            "create one in a namespace that is not there",
            M::POST,
            "/api/v1/namespaces/absent/configmaps",
            Some({
                let mut m = map("plan");
                m["metadata"]["namespace"] = json!("absent");
                m
            }),
        ),
        step("list by label", M::GET, &format!("{cms}?labelSelector=run%3Dr1"), None),
        step("list by label, none match", M::GET, &format!("{cms}?labelSelector=run%3Dr2"), None),
        step("list by field", M::GET, &format!("{cms}?fieldSelector=metadata.name%3Dplan"), None),
        step("create one as a dry run", M::POST, &format!("{cms}?dryRun=All"), Some(map("dry"))),
        step("get it", M::GET, &format!("{cms}/dry"), None),
        step(
            "create one with an unknown field, strictly",
            M::POST,
            &format!("{cms}?fieldValidation=Strict"),
            Some({
                let mut m = map("strict");
                m["bogus"] = json!(1);
                m
            }),
        ),
        step("create another", M::POST, cms, Some(map("second"))),
        step("list one page of them", M::GET, &format!("{cms}?labelSelector=run%3Dr1&limit=1"), None),
        kubectl_get,
        step("list with a malformed selector", M::GET, &format!("{cms}?labelSelector=run%20in"), None),
        step("list across namespaces by label", M::GET, "/api/v1/configmaps?labelSelector=run%3Dr1", None),
        step("update with a stale resourceVersion", M::PUT, &format!("{cms}/plan"), Some(stale)),
        patch,
        step("create a restricted pod", M::POST, pods, Some(pod(false))),
        step("get a pod's status", M::GET, &format!("{pods}/p/status"), None),
        step("get a pod that is not there", M::GET, &format!("{pods}/absent"), None),
        step(
            "get the log of a pod that is not there",
            M::GET,
            &format!("{pods}/absent/log?container=probe"),
            None,
        ),
        Step {
            remember: true,
            ..step(
                "list pods by field",
                M::GET,
                &format!("{pods}?fieldSelector=spec.nodeName%3Delsewhere"),
                None,
            )
        },
        step(
            "watch pods by label from the start",
            M::GET,
            &format!("{pods}?watch=true&labelSelector=run%3Dr1&resourceVersion=0&timeoutSeconds=1"),
            None,
        ),
        step(
            "delete a pod gracefully",
            M::DELETE,
            &format!("{pods}/p"),
            Some(json!({"gracePeriodSeconds": 30})),
        ),
        step("create a pod no node takes", M::POST, pods, Some(unplaced)),
        step("get the log of a pod no node took", M::GET, &format!("{pods}/q/log?container=probe"), None),
        step(
            "get the log of a pod whose node is not there",
            M::GET,
            &format!("{pods}/p/log?container=probe"),
            None,
        ),
        step(
            "watch pods from a list's resourceVersion",
            M::GET,
            &format!("{pods}?watch=true&resourceVersion={{rv}}&timeoutSeconds=1"),
            None,
        ),
        step("delete it now", M::DELETE, &format!("{pods}/p"), Some(json!({"gracePeriodSeconds": 0}))),
        step("get it", M::GET, &format!("{pods}/p"), None),
        step("delete ConfigMaps by label", M::DELETE, &format!("{cms}?labelSelector=run%3Dr1"), None),
        // By label: kube-controller-manager also puts a `kube-root-ca.crt` ConfigMap into every
        // namespace, which the lab does not (docs/lab.md).
        step("list them", M::GET, &format!("{cms}?labelSelector=run%3Dr1"), None),
        step("create a privileged pod", M::POST, pods, Some(pod(true))),
        step(
            "delete the namespace in the foreground",
            M::DELETE,
            "/api/v1/namespaces/diff",
            Some(json!({"propagationPolicy": "Foreground"})),
        ),
        step("create in the terminating namespace", M::POST, cms, Some(map("late"))),
        step("delete a namespace that is not there", M::DELETE, "/api/v1/namespaces/absent", None),
    ]
}

/// What of an answer the tool and kubectl read: the status code, and for a Status its
/// reason, code and details; for a list the names in it; for an object its identity,
/// labels, data, phase and whether it is being deleted; for a watch its events.
fn shape(code: u16, body: &[u8], watch: bool) -> Value {
    use serde_json::json;
    let object = |v: &Value| -> Value {
        if v["kind"] == "Status" {
            let causes: Vec<Value> = v["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"field": c["field"], "reason": c["reason"]}))
                .collect();
            return json!({"kind": "Status", "status": v["status"], "reason": v["reason"], "code": v["code"],
                "message": v["message"],
                // As kube-rs decodes it, which is how the tool reads every refusal.
                "decodes": serde_json::from_value::<kube::core::Status>(v.clone()).is_ok(),
                "details": {"name": v["details"]["name"], "kind": v["details"]["kind"], "causes": causes}});
        }
        if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
            let names: Vec<&Value> =
                v["items"].as_array().into_iter().flatten().map(|i| &i["metadata"]["name"]).collect();
            let continues = v["metadata"]["continue"].as_str().is_some_and(|c| !c.is_empty());
            return json!({"kind": v["kind"], "apiVersion": v["apiVersion"], "names": names, "continues": continues});
        }
        if v["kind"] == "Table" {
            let columns: Vec<&Value> =
                v["columnDefinitions"].as_array().into_iter().flatten().map(|c| &c["name"]).collect();
            let rows: Vec<&Value> =
                v["rows"].as_array().into_iter().flatten().map(|r| &r["cells"][0]).collect();
            return json!({"kind": "Table", "apiVersion": v["apiVersion"], "columns": columns, "rows": rows});
        }
        json!({"kind": v["kind"], "apiVersion": v["apiVersion"], "name": v["metadata"]["name"],
            "namespace": v["metadata"]["namespace"], "labels": v["metadata"]["labels"], "data": v["data"],
            "phase": v["status"]["phase"], "deleting": !v["metadata"]["deletionTimestamp"].is_null()})
    };
    let text = String::from_utf8_lossy(body);
    let body = match serde_json::from_str::<Value>(&text) {
        Ok(v) if !watch || code != 200 => object(&v),
        // A watch: one event a line.
        _ => Value::Array(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|e| json!({"type": e["type"], "object": object(&e["object"])}))
                .collect(),
        ),
    };
    json!({"code": code, "body": body})
}

/// Sends `step` (its `{rv}` the resourceVersion remembered from this server), remembers the
/// resourceVersion of its answer if the step says so, and returns the answer's shape.
async fn exchange(client: &kube::Client, step: &Step, remembered: &mut String) -> Value {
    let body = step.body.as_ref().map(|b| serde_json::to_vec(b).expect("JSON")).unwrap_or_default();
    let request = http::Request::builder()
        .method(step.method.clone())
        .uri(step.path.replace("{rv}", remembered))
        .header(http::header::CONTENT_TYPE, step.content_type)
        .header(http::header::ACCEPT, step.accept)
        .body(kube::client::Body::from(body))
        .expect("a request");
    let response = client.send(request).await.unwrap_or_else(|e| panic!("{}: {e}", step.name));
    let code = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap_or_else(|e| panic!("{}: {e}", step.name));
    if step.remember {
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        *remembered = answer["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
    }
    shape(code, &bytes, step.path.contains("watch=true"))
}

/// The lab's embedded API answers every request kind the tool and kubectl make as the real
/// kube-apiserver does, in what they read; where it does not, the difference is one of the
/// known limits docs/lab.md lists, and exactly that.
#[tokio::test]
async fn the_lab_api_answers_as_the_real_one_does() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    let real = fresh(plane).await;
    let lab = support::TestLab::up(support::TWO_NAMESPACES, netpol_verify::lab::cni::CniMode::Enforcing, 1);
    let emulated = lab.client().await;
    let mut differences = Vec::new();
    let (mut real_version, mut lab_version) = (String::new(), String::new());
    for step in requests() {
        let theirs = exchange(&real, &step, &mut real_version).await;
        let ours = exchange(&emulated, &step, &mut lab_version).await;
        if step.name == "create a namespace" {
            plane.wait_for_default_account("diff").await;
        }
        if theirs != ours {
            differences.push((step, theirs, ours));
        }
    }
    // The lab's known limits (docs/lab.md, "The lab API beside kube-apiserver"): the step, the
    // difference it is known to make and no other, and whether it must still make it (a limit
    // lifted comes off this list).
    type Known = (&'static str, fn(&Value, &Value) -> bool, bool);
    let known: [Known; 3] = [
        // The lab's own words for a malformed selector: the same code and reason.
        (
            "list with a malformed selector",
            |real, lab| {
                real["code"] == 400
                    && real["code"] == lab["code"]
                    && real["body"]["reason"] == lab["body"]["reason"]
            },
            true,
        ),
        // No Pod Security admission: the real server refuses, the lab creates.
        (
            "create a privileged pod",
            |real, lab| real["code"] == 403 && real["body"]["reason"] == "Forbidden" && lab["code"] == 201,
            true,
        ),
        // Scheduling is part of the create: kube-scheduler's later update is one more MODIFIED
        // event; every event the lab sends, the real server sends too, in order. (Whether the
        // scheduler wrote before the watch started is its timing: the difference may vanish.)
        (
            "watch pods from a list's resourceVersion",
            |real, lab| {
                let (Some(real), Some(lab)) = (real["body"].as_array(), lab["body"].as_array()) else {
                    return false;
                };
                let mut lab_events = lab.iter().peekable();
                for event in real {
                    if lab_events.peek() == Some(&event) {
                        lab_events.next();
                    } else if event["type"] != "MODIFIED" {
                        return false;
                    }
                }
                lab_events.next().is_none()
            },
            false,
        ),
    ];
    let described = |(step, real, lab): &(Step, Value, Value)| {
        format!("{} ({} {}):\n  real: {real}\n  lab:  {lab}", step.name, step.method, step.path)
    };
    let unexpected: Vec<String> = differences
        .iter()
        .filter(|(step, real, lab)| {
            !known.iter().any(|(name, expected, _)| *name == step.name && expected(real, lab))
        })
        .map(described)
        .collect();
    assert!(unexpected.is_empty(), "the lab's API differs from kube-apiserver:\n{}", unexpected.join("\n"));
    let lifted: Vec<&str> = known
        .iter()
        .filter(|(name, _, must)| *must && !differences.iter().any(|(step, _, _)| step.name == *name))
        .map(|(name, _, _)| *name)
        .collect();
    assert!(lifted.is_empty(), "no longer a difference, take it off the known limits: {lifted:?}");
}

/// A CustomResourceDefinition for each policy kind the engine does not model
/// (`Unmodelled::KINDS`), so that a run discovers and lists them as on a cluster running that
/// CNI; waits until discovery serves them.
async fn install_policy_kinds(client: &kube::Client) {
    use serde_json::json;
    let mut served = Vec::new();
    for (group, kind, cluster_wide) in netpol_verify::model::Unmodelled::KINDS {
        let singular = kind.to_ascii_lowercase();
        let plural = match singular.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{singular}s"),
        };
        let mut crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {"group": group, "scope": if cluster_wide { "Cluster" } else { "Namespaced" },
                "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural, "singular": singular},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        });
        // Kubernetes' own groups need the API review's mark.
        if group.ends_with(".k8s.io") {
            crd["metadata"]["annotations"] =
                json!({"api-approved.kubernetes.io": "unapproved, a test's stand-in"});
        }
        create(client, &crd).await.unwrap_or_else(|e| panic!("CRD {plural}.{group}: {e}"));
        served.push((format!("{group}/v1"), plural));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (group_version, plural) in served {
        loop {
            let listed = client.list_api_group_resources(&group_version).await;
            if listed.is_ok_and(|l| l.resources.iter().any(|r| r.name == plural)) {
                break;
            }
            assert!(Instant::now() < deadline, "{plural} of {group_version} not served within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The lab the run RBAC test runs on: a namespace, cluster DNS, nothing else.
const RBAC_LAB: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: rbac-run}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n---\n";

/// `run` as a service account bound only to docs/rbac.yaml's role, on this server with a lab
/// attached as its node (so the run's pods start, report and are read back), passes; with each
/// permission of the role taken away in turn, it says which one it lacks: a permission it
/// cannot do without stops it with the server's refusal and the grant that fixes it; an
/// optional one (nodes, cluster DNS's EndpointSlices, LimitRanges, the policy kinds of other
/// CNIs) becomes a note and the run ends as with the whole role. No permission goes unused.
#[tokio::test]
async fn run_as_the_documented_role_needs_each_permission_of_it() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    let client = fresh(plane).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    install_policy_kinds(&client).await;
    let input = dir.path().join("lab.yaml");
    let objects = format!("{RBAC_LAB}{}", netpol_verify::fixtures::cluster_dns_yaml("10.244.0.10"));
    std::fs::write(&input, objects).expect("the lab's input");
    let lab = format!("rbac{:x}", std::process::id());
    let _down = support::DownOnDrop(lab.clone());
    let up = Command::new(verify())
        .args(["lab", "up", "--name", &lab, "--api-server"])
        .arg(&plane.admin)
        .arg("--from-file")
        .arg(&input)
        .output()
        .expect("lab up");
    assert_eq!(up.status.code(), Some(0), "{}", words(&up));

    let run = |kubeconfig: &std::path::Path| {
        netpol_verify(
            kubeconfig,
            &["run", "-n", "rbac-run", "--timeout", "30s", "--probe-timeout", "500ms", "-o", "json"],
        )
    };
    let settle = || async {
        let output = netpol_verify(&plane.admin, &["cleanup", "--older-than", "0s"]);
        assert_eq!(output.status.code(), Some(0), "{}", words(&output));
        assert_eq!(labelled_once_settled(&client).await, BTreeSet::new());
    };
    let counts = |output: &Output| -> Value {
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        report["counts"].clone()
    };

    let rules = documented_rules();
    let whole = run(&account_with(plane, &dir, "runner", rules.clone()).await);
    let said = words(&whole);
    // No policy in rbac-run: the metadata address is reachable, an intent gap (exit 1); every
    // other check passes.
    assert_eq!(whole.status.code(), Some(1), "{said}");
    assert!(!said.contains("forbidden"), "{said}");
    let expected = counts(&whole);
    assert_eq!(expected["inconclusive"], 0, "{said}");
    assert_eq!(expected["not-enforced"], 0, "{said}");
    assert!(expected["pass"].as_u64().is_some_and(|n| n > 0), "{said}");
    settle().await;

    let optional = |resource: &str| ["nodes", "endpointslices", "limitranges"].contains(&resource);
    let policy_kind = |group: &str| !["", "networking.k8s.io"].contains(&group);
    let total = expected.as_object().map(|c| c.values().filter_map(Value::as_u64).sum::<u64>());
    // Every permission is tried before the verdict, so one failure names all that differ.
    let mut wrong = Vec::new();
    for (i, (group, resource, verb)) in grants(&rules).into_iter().enumerate() {
        let output = run(&account_with(
            plane,
            &dir,
            &format!("runner-{i}"),
            without(&rules, &group, &verb, &resource),
        )
        .await);
        let said = words(&output);
        let permission = format!("{verb} {resource} ({group:?})");
        let refused = format!("cannot {verb} resource \"{resource}\"");
        // Text on standard error, or inside the JSON report (a note), quotes escaped.
        let mentions = |text: &str| said.contains(text) || said.contains(&text.replace('"', "\\\""));
        if !mentions(&refused) {
            wrong.push(format!("without {permission}, no refusal: unused? {said}"));
        } else if optional(&resource) {
            if output.status.code() != Some(1) || counts(&output) != expected {
                wrong.push(format!("without {permission} the run should go on as with it: {said}"));
            }
        } else if policy_kind(&group) {
            // Policies it may not read could say anything: every check unknown.
            let counts = counts(&output);
            let grant = format!("grant the tool `{verb}` on `{resource}.{group}`");
            if output.status.code() != Some(3)
                || counts["pass"] != 0
                || Some(
                    counts["inconclusive"].as_u64().unwrap_or(0)
                        + counts["informational"].as_u64().unwrap_or(0),
                ) != total
                || !mentions(&grant)
            {
                wrong.push(format!("without {permission} every check should be inconclusive, the note naming the grant: {said}"));
            }
        } else if output.status.code() != Some(2)
            || !mentions(&format!("grant the tool `{verb}` on `{resource}`"))
        {
            wrong.push(format!("without {permission} the run should stop, naming the grant: {said}"));
        }
        settle().await;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    drop(_down);
    // The lab's: its node and Lease, its namespace, kube-dns and its pod.
    let left = plane.left_behind_once_settled(|l| {
        l.starts_with("node ")
            || l.starts_with("lease ")
            || l.contains("rbac-run")
            || l.contains("kube-system/")
    });
    assert_eq!(left, Vec::<String>::new(), "what the lab left");
}

/// `lab down` removes what an attached lab made only from the server it attached to: with the
/// kubeconfig's context pointed at another server it removes nothing there or here, says so and
/// keeps the lab's record; pointed back, a second `lab down` removes everything.
#[tokio::test]
async fn lab_down_removes_only_from_the_server_the_lab_attached_to() {
    let _exclusive = EXCLUSIVE.lock().await;
    let plane = control_plane();
    fresh(plane).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&plane.admin, &kubeconfig).expect("a copy of the kubeconfig");
    let input = dir.path().join("lab.yaml");
    std::fs::write(&input, "apiVersion: v1\nkind: Namespace\nmetadata: {name: attached-here}\n")
        .expect("input");
    let lab = format!("moved{:x}", std::process::id());
    let _down = support::DownOnDrop(lab.clone());
    let up = Command::new(verify())
        .args(["lab", "up", "--name", &lab, "--api-server"])
        .arg(&kubeconfig)
        .arg("--from-file")
        .arg(&input)
        .output()
        .expect("lab up");
    assert_eq!(up.status.code(), Some(0), "{}", words(&up));
    let ours = |l: &str| l.contains(&lab) || l.contains("attached-here");
    let made = |left: Vec<String>| left.into_iter().filter(|l| ours(l)).collect::<BTreeSet<_>>();
    let node = &lab;
    let expected = BTreeSet::from([
        format!("node /{node}"),
        format!("lease kube-node-lease/{node}"),
        "namespace /attached-here".to_string(),
    ]);
    assert_eq!(made(plane.left_behind()), expected);

    // The same context, another server (never contacted: the lab refuses before connecting).
    let text = std::fs::read_to_string(&kubeconfig).expect("the kubeconfig");
    let parsed = kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig");
    let url = parsed.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()).expect("a server");
    let elsewhere = "https://127.0.0.1:1";
    std::fs::write(&kubeconfig, text.replace(&url, elsewhere)).expect("kubeconfig moved");
    let down = Command::new(verify()).args(["lab", "down", &lab]).output().expect("lab down");
    let said = words(&down);
    assert_eq!(down.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("now names {elsewhere}, not {url}")), "{said}");
    assert!(said.contains(&format!("netpol-verify lab down {lab}")), "{said}");
    assert_eq!(made(plane.left_behind()), expected, "nothing removed: {said}");

    std::fs::write(&kubeconfig, &text).expect("kubeconfig back");
    let down = Command::new(verify()).args(["lab", "down", &lab]).output().expect("lab down");
    assert_eq!(down.status.code(), Some(0), "{}", words(&down));
    assert_eq!(plane.left_behind_once_settled(ours), Vec::<String>::new());
}
