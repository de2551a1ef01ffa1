//! The lab attached to a real API server: `lab up --api-server KUBECONFIG`. The cluster's
//! state lives in that server; the lab is its node.
//!
//! ```text
//!   kube-apiserver ◄──── Nodes, Leases, pods/status, deletes ──── the bridge ──► lab store ──► kubelet, CNI
//!        │         ────── watch Namespaces, Pods (of the lab's nodes), ──────►      ▲
//!        │                NetworkPolicies, ConfigMaps                               │
//!        └── pods/log ──► the kubelet's /containerLogs (HTTPS on 127.0.0.1) ────────┘
//! ```
//!
//! The lab's own store (the embedded API's, not served in this mode) stays what the kubelet and
//! the CNI read, so they run exactly as with the embedded API. The bridge registers the lab's
//! nodes (Ready, their Lease renewed every 10 s), publishes the lab's input (namespaces,
//! Services with the lab's cluster IPs, NetworkPolicies, and the workload pods bound to the
//! node, their ports served by the lab), mirrors what the server holds into the store, and
//! writes back what the kubelet decides: each pod's status, and its removal once a graceful
//! deletion is done. The server's own controllers do the rest (scheduling, EndpointSlices,
//! namespace finalization, garbage collection).
//!
//! What the lab made is recorded (`attached.json`) so `lab down` removes it from the server.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api as KubeApi, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Lab;
use super::api::catalog::KindId;
use super::api::store::{Change, Key, Store};
use super::api::{Api, rest};
use super::state;

/// The namespace of node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a node's Lease holds, and how often it is renewed (as the kubelet's defaults).
const LEASE_SECONDS: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long the lab waits for what it publishes to be accepted (a new namespace's default
/// ServiceAccount, made by kube-controller-manager, before its pods can be).
const PUBLISH_LIMIT: Duration = Duration::from_secs(30);
/// How long it waits for the node lifecycle controller to lift the not-ready taint the API
/// server puts on every new node.
const TAINT_LIMIT: Duration = Duration::from_secs(20);
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// How long a write back the server failed to take waits to be tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long `lab down` waits for the namespaces the lab created to be finalized.
const NAMESPACES_GONE_LIMIT: Duration = Duration::from_secs(30);
/// How long attaching may take in all: registering, publishing (with its waits) and the first
/// lists. `lab up` waits a little longer, so the daemon's own error is what it reports.
pub const ATTACH_LIMIT: Duration = Duration::from_secs(75);

/// What a lab made in the API server, for `lab down` to remove.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Made {
    /// The server's version, for whoever reads the file.
    pub server: String,
    /// The kubeconfig's context the lab attached through, and that context's server URL:
    /// `lab down` removes through that context, and only while it still names that server.
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub url: String,
    pub nodes: Vec<String>,
    /// Namespaces the lab created (those that were there already are left).
    pub namespaces: Vec<String>,
    /// Other objects, as `(kind, namespace, name)` with kind `pods`, `services` or
    /// `networkpolicies`.
    pub objects: Vec<(String, String, String)>,
}

/// Where a lab attached to an API server keeps [`Made`].
pub fn made_path(name: &str) -> PathBuf {
    state::lab_dir(name).join("attached.json")
}

/// Written once the lab serves as the server's node (what `lab up` waits for).
pub fn ready_path(name: &str) -> PathBuf {
    state::lab_dir(name).join("attached.ready")
}

fn save(name: &str, made: &Made) -> Result<(), String> {
    let text = serde_json::to_string_pretty(made).map_err(|e| e.to_string())?;
    super::api::write_private(&made_path(name), &text)
        .map_err(|e| format!("cannot write {}: {e}", made_path(name).display()))
}

/// The context `context` of `kubeconfig` (its current one when `None`): its name and its
/// cluster's server URL.
fn target(kubeconfig: &Path, context: Option<&str>) -> Result<(String, String), String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let name = match context {
        Some(name) => name.to_string(),
        None => config
            .current_context
            .clone()
            .ok_or_else(|| format!("{} sets no current-context", kubeconfig.display()))?,
    };
    let cluster = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| format!("{} has no context {name}", kubeconfig.display()))?;
    let url = config
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| {
            format!("{} has no server for cluster {cluster} (context {name})", kubeconfig.display())
        })?;
    Ok((name, url))
}

/// A client for `context` of `kubeconfig` (its current one when `None`).
pub async fn connect(kubeconfig: &Path, context: Option<&str>) -> Result<Client, String> {
    let connection = crate::kubernetes::Connection { kubeconfig: Some(kubeconfig), context };
    crate::kubernetes::client(&connection).await.map_err(|e| e.to_string())
}

/// What the API server said, with the object it was about.
fn failed(what: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{what}: the API server refused: {} ({})", status.message, status.reason)
        }
        other => format!("{what}: {other}"),
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// The lab's node `name` as the API server sees it: the lab's node object, with the address
/// the API server reaches the kubelet at (loopback: the API server runs on this machine) and
/// the kubelet's port.
pub fn node_object(lab_node: Value, kubelet_port: u16) -> Value {
    let mut node = lab_node;
    node["status"]["addresses"] = json!([{"type": "InternalIP", "address": "127.0.0.1"}]);
    node["status"]["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": kubelet_port}});
    node
}

fn lease(node: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()},
    })
}

/// Now, as a MicroTime (`2026-12-07T17:03:07.123456Z`).
fn micro_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let micros = now.as_microsecond();
    k8s_openapi::jiff::Timestamp::from_microsecond(micros)
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Registers the lab's nodes: each Node (refused when the server has one of that name: it is
/// another kubelet's), its status, its Lease.
async fn register(client: &Client, nodes: &[Value], made: &mut Made, lab: &str) -> Result<(), String> {
    let api: KubeApi<Node> = KubeApi::all(client.clone());
    let leases: KubeApi<Lease> = KubeApi::namespaced(client.clone(), LEASE_NAMESPACE);
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let object: Node = serde_json::from_value(node.clone()).map_err(|e| e.to_string())?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {
                return Err(format!(
                    "the API server already has a node named {name}: another kubelet's, or a lab's that was not \
                     brought down; pick another --name, or remove it with `kubectl delete node {name}`"
                ));
            }
            Err(e) => return Err(failed(&format!("registering node {name}"), &e)),
        }
        made.nodes.push(name.clone());
        save(lab, made)?;
        patch_node_status(client, &name, &node["status"]).await?;
        let lease: Lease = serde_json::from_value(lease(&name)).map_err(|e| e.to_string())?;
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => renew(client, &name).await?,
            Err(e) => return Err(failed(&format!("creating the Lease of node {name}"), &e)),
        }
    }
    Ok(())
}

async fn patch_node_status(client: &Client, name: &str, status: &Value) -> Result<(), String> {
    let api: KubeApi<Node> = KubeApi::all(client.clone());
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
        .await
        .map(|_| ())
        .map_err(|e| failed(&format!("writing the status of node {name}"), &e))
}

async fn renew(client: &Client, node: &str) -> Result<(), String> {
    let leases: KubeApi<Lease> = KubeApi::namespaced(client.clone(), LEASE_NAMESPACE);
    let patch = json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}});
    leases
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| failed(&format!("renewing the Lease of node {node}"), &e))
}

/// Renews every node's Lease and Ready condition until `stop` fires (as a kubelet does:
/// without it the node lifecycle controller marks the node NotReady and evicts its pods).
async fn heartbeat(client: Client, nodes: Vec<Value>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let mut conditions = node["status"]["conditions"].clone();
            if let Some(ready) = conditions.get_mut(0) {
                ready["lastHeartbeatTime"] = Value::from(super::api::store::now());
            }
            let status = json!({"conditions": conditions});
            for result in [renew(&client, name).await, patch_node_status(&client, name, &status).await] {
                if let Err(e) = result {
                    eprintln!("netpol-verify lab: {e}");
                }
            }
        }
    }
}

/// Waits (bounded) until the node lifecycle controller has lifted the not-ready taint the API
/// server gives every new node: until then the scheduler places nothing on it.
async fn wait_schedulable(client: &Client, nodes: &[String]) {
    let api: KubeApi<Node> = KubeApi::all(client.clone());
    let deadline = tokio::time::Instant::now() + TAINT_LIMIT;
    for name in nodes {
        loop {
            let tainted = match api.get(name).await {
                Ok(node) => node
                    .spec
                    .and_then(|s| s.taints)
                    .is_some_and(|t| t.iter().any(|t| t.key == NOT_READY_TAINT)),
                Err(_) => true,
            };
            if !tainted {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!(
                    "netpol-verify lab: node {name} still has the {NOT_READY_TAINT} taint after {TAINT_LIMIT:?}: \
                     does the cluster run kube-controller-manager (its node lifecycle controller lifts it)?"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// An object of the store as it is sent to the server: without what the server assigns, and
/// without owners (a pod copied from another cluster names a ReplicaSet this server does not
/// have, and its garbage collector would delete the pod).
fn outgoing(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "ownerReferences",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(field);
        }
    }
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    object
}

/// Creates `object` (retrying, within [`PUBLISH_LIMIT`], what a new namespace refuses until its
/// default ServiceAccount exists). `Ok(false)` when the server has one of that name already.
async fn create<K>(api: &KubeApi<K>, object: &Value, what: &str) -> Result<bool, String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object.clone()).map_err(|e| format!("{what}: {e}"))?;
    let deadline = tokio::time::Instant::now() + PUBLISH_LIMIT;
    loop {
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => return Ok(true),
            Err(e) if is_status(&e, 409) => return Ok(false),
            Err(kube::Error::Api(status))
                if status.message.contains("serviceaccount") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(failed(&format!("publishing {what}"), &e)),
        }
    }
}

/// Publishes the lab's input to the server: its namespaces (those there already are used as
/// they are), Services with the lab's cluster IPs, NetworkPolicies, and the workload pods,
/// bound to the lab's node. A Service, policy or pod the server has already is refused: the
/// lab would not be what its input says.
async fn publish(client: &Client, store: &Store, made: &mut Made, lab: &str) -> Result<(), String> {
    for namespace in store.list(KindId::NAMESPACES, None).0 {
        let name = namespace["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let api: KubeApi<Namespace> = KubeApi::all(client.clone());
        // One being deleted (an earlier lab's) takes no new objects: wait until it is gone.
        if !namespaces_gone(client, std::slice::from_ref(&name), PUBLISH_LIMIT).await.is_empty() {
            return Err(format!(
                "namespace {name} is still being deleted after {PUBLISH_LIMIT:?} (`kubectl get namespace {name} -o yaml` \
                 says what it waits for): the lab cannot publish its input into it"
            ));
        }
        if create(&api, &outgoing(&namespace), &format!("namespace {name}")).await? {
            made.namespaces.push(name);
            save(lab, made)?;
        }
    }
    for (kind, resource) in [
        (KindId::SERVICES, "services"),
        (KindId::NETWORK_POLICIES, "networkpolicies"),
        (KindId::PODS, "pods"),
    ] {
        for object in store.list(kind, None).0 {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let what = format!("{resource} {namespace}/{name}");
            let created = match kind {
                KindId::SERVICES => {
                    create(
                        &KubeApi::<Service>::namespaced(client.clone(), &namespace),
                        &outgoing(&object),
                        &what,
                    )
                    .await?
                }
                KindId::NETWORK_POLICIES => {
                    let api = KubeApi::<NetworkPolicy>::namespaced(client.clone(), &namespace);
                    create(&api, &outgoing(&object), &what).await?
                }
                _ => {
                    create(&KubeApi::<Pod>::namespaced(client.clone(), &namespace), &outgoing(&object), &what)
                        .await?
                }
            };
            if !created {
                return Err(format!(
                    "the API server already has {what}, which the lab's input defines: remove it \
                     (`kubectl delete -n {namespace} {resource} {name}`) or attach a lab whose input does not"
                ));
            }
            made.objects.push((resource.to_string(), namespace, name));
            save(lab, made)?;
        }
    }
    Ok(())
}

/// A pod of the lab's nodes, mirrored: its uid in the server and in the store, and the status
/// last written back.
#[derive(Debug, Clone)]
struct Mirrored {
    real_uid: String,
    store_uid: String,
    written: Value,
}

/// Follows the server into the store, and the kubelet's decisions back.
struct Bridge {
    client: Client,
    api: Arc<Api>,
    nodes: Vec<String>,
    pods: Mutex<HashMap<(String, String), Mirrored>>,
    /// Pods whose status or removal is to be written back.
    dirty: mpsc::UnboundedSender<(String, String)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn name_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

impl Bridge {
    fn key(&self, kind: KindId, object: &Value) -> Key {
        let (namespace, name) = name_of(object);
        self.api.key(kind, Some(&namespace), &name)
    }

    /// The server's object in the store (created, or replaced but for what the store assigns).
    fn put(&self, kind: KindId, object: &Value) {
        let key = self.key(kind, object);
        let what = self.api.catalog.get(kind).resource();
        let mut object = object.clone();
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        if self.api.store.get(&key).is_none() {
            let _ = self.api.store.create(key, object, &what);
        } else {
            let _ = self.api.store.update(&key, &what, |_| Ok(object));
        }
    }

    fn remove(&self, kind: KindId, object: &Value) {
        let key = self.key(kind, object);
        let _ = self.api.store.delete(&key, &self.api.catalog.get(kind).resource());
    }

    fn ours(&self, pod: &Value) -> bool {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        self.nodes.iter().any(|n| n == node)
    }

    /// A pod of the server: one bound to a lab node enters the store (the kubelet runs it);
    /// its labels follow; its graceful deletion becomes the store's.
    fn put_pod(&self, pod: &Value) {
        if !self.ours(pod) {
            return;
        }
        let id = name_of(pod);
        let key = self.key(KindId::PODS, pod);
        let real_uid = uid_of(pod);
        let mut pods = lock(&self.pods);
        let known = pods.get(&id).cloned();
        match known {
            Some(m) if m.real_uid == real_uid => {
                let _ = self.api.store.update(&key, "pods", |old| {
                    if uid_of(old) != m.store_uid {
                        return Err(super::api::status::ApiError::conflict("pods", &id.1));
                    }
                    let mut new = old.clone();
                    new["metadata"]["labels"] = pod["metadata"]["labels"].clone();
                    new["metadata"]["annotations"] = pod["metadata"]["annotations"].clone();
                    if rest::terminating(pod) && !rest::terminating(old) {
                        new["metadata"]["deletionTimestamp"] = pod["metadata"]["deletionTimestamp"].clone();
                        new["metadata"]["deletionGracePeriodSeconds"] =
                            pod["metadata"]["deletionGracePeriodSeconds"].clone();
                    }
                    Ok(new)
                });
            }
            other => {
                if let Some(old) = other {
                    // A new pod of the same name: the old one is gone.
                    let _ = self.api.store.delete_if(&key, "pods", |o| uid_of(o) == old.store_uid);
                }
                let store_uid = match self.api.store.get(&key) {
                    // Published by the lab (a workload pod of its input): the store has it.
                    Some(existing) if other_is_unmapped(&pods, &existing) => uid_of(&existing),
                    _ => {
                        let _ = self.api.store.delete(&key, "pods");
                        let mut object = pod.clone();
                        if let Some(meta) = object["metadata"].as_object_mut() {
                            meta.remove("managedFields");
                            meta.remove("deletionTimestamp");
                            meta.remove("deletionGracePeriodSeconds");
                        }
                        match self.api.store.create(key.clone(), object, "pods") {
                            Ok(stored) => uid_of(&stored),
                            Err(_) => return,
                        }
                    }
                };
                pods.insert(id.clone(), Mirrored { real_uid, store_uid, written: Value::Null });
                drop(pods);
                // Its status (a workload pod is running already), and a deletion under way.
                let _ = self.dirty.send(id);
                if rest::terminating(pod) {
                    self.put_pod(pod);
                }
            }
        }
    }

    /// A pod gone from the server (deleted at once, or its namespace or node gone): the
    /// kubelet stops it now.
    fn remove_pod(&self, pod: &Value) {
        let id = name_of(pod);
        let mut pods = lock(&self.pods);
        let Some(m) = pods.get(&id).cloned() else { return };
        if m.real_uid != uid_of(pod) {
            return;
        }
        pods.remove(&id);
        let key = self.key(KindId::PODS, pod);
        let _ = self.api.store.delete_if(&key, "pods", |o| uid_of(o) == m.store_uid);
    }

    /// Writes back what the kubelet decided about pod `id`: its status, or (once its object is
    /// gone from the store) its removal from the server. `false` when the server failed in a
    /// way worth trying again.
    async fn write_back(&self, id: (String, String)) -> bool {
        let Some(m) = lock(&self.pods).get(&id).cloned() else { return true };
        let key = self.api.key(KindId::PODS, Some(&id.0), &id.1);
        let pods: KubeApi<Pod> = KubeApi::namespaced(self.client.clone(), &id.0);
        let current = self.api.store.get(&key).filter(|o| uid_of(o) == m.store_uid);
        let Some(current) = current else {
            // The kubelet is done with it: remove it from the server (that very pod).
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(m.real_uid.clone()), resource_version: None }),
                ..DeleteParams::default()
            };
            match pods.delete(&id.1, &params).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => {
                    eprintln!(
                        "netpol-verify lab: {}",
                        failed(&format!("removing pod {}/{}", id.0, id.1), &e)
                    );
                    if crate::kubernetes::transient(&e) {
                        return false;
                    }
                }
            }
            let mut all = lock(&self.pods);
            if all.get(&id).is_some_and(|now| now.real_uid == m.real_uid) {
                all.remove(&id);
            }
            return true;
        };
        let status = current["status"].clone();
        if status == m.written {
            return true;
        }
        // A merge patch: what the status no longer has is removed (null), lists are replaced.
        let mut patch = status.clone();
        if let (Some(old), Some(new)) = (m.written.as_object(), patch.as_object_mut()) {
            for field in old.keys() {
                new.entry(field.clone()).or_insert(Value::Null);
            }
        }
        // With the uid, a new pod of the same name refuses the patch (its uid is immutable:
        // 422) rather than taking the old one's status.
        let patch = json!({"metadata": {"uid": m.real_uid}, "status": patch});
        match pods.patch_status(&id.1, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                if let Some(now) = lock(&self.pods).get_mut(&id).filter(|now| now.real_uid == m.real_uid) {
                    now.written = status;
                }
                true
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => true,
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains("metadata.uid") =>
            {
                true
            }
            Err(e) => {
                eprintln!(
                    "netpol-verify lab: {}",
                    failed(&format!("writing the status of pod {}/{}", id.0, id.1), &e)
                );
                !crate::kubernetes::transient(&e)
            }
        }
    }
}

/// Whether `existing` (in the store) is no mirrored pod's: one the lab published.
fn other_is_unmapped(pods: &HashMap<(String, String), Mirrored>, existing: &Value) -> bool {
    let uid = uid_of(existing);
    !pods.values().any(|m| m.store_uid == uid)
}

/// Follows kind `K` of the server into the store until `stop`; `ready` is told once the first
/// list is in.
async fn follow<K>(
    bridge: Arc<Bridge>,
    api: KubeApi<K>,
    config: watcher::Config,
    kind: KindId,
    ready: mpsc::UnboundedSender<KindId>,
    stop: CancellationToken,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff();
    tokio::pin!(stream);
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                eprintln!(
                    "netpol-verify lab: watching {}: {e} (retrying)",
                    bridge.api.catalog.get(kind).resource()
                );
                continue;
            }
        };
        // NB: a typed object always serializes; one that did not would be skipped, not stored
        // without a name.
        let value = |object: &K| serde_json::to_value(object).ok();
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(object) => {
                if let Some(object) = value(&object) {
                    listed.insert(name_of(&object));
                    apply(&bridge, kind, &object);
                }
            }
            watcher::Event::InitDone => {
                // What the store has and the server no longer does went while nobody watched.
                for object in bridge.api.store.list(kind, None).0 {
                    if !listed.contains(&name_of(&object)) && (kind != KindId::PODS || bridge.ours(&object)) {
                        match kind {
                            KindId::PODS => {
                                let mirrored = lock(&bridge.pods).remove(&name_of(&object));
                                if let Some(m) = mirrored {
                                    let key = bridge.key(kind, &object);
                                    let _ = bridge
                                        .api
                                        .store
                                        .delete_if(&key, "pods", |o| uid_of(o) == m.store_uid);
                                }
                            }
                            _ => bridge.remove(kind, &object),
                        }
                    }
                }
                let _ = ready.send(kind);
            }
            watcher::Event::Apply(object) => {
                if let Some(object) = value(&object) {
                    apply(&bridge, kind, &object);
                }
            }
            watcher::Event::Delete(object) => match (kind, value(&object)) {
                (_, None) => {}
                (KindId::PODS, Some(object)) => bridge.remove_pod(&object),
                (_, Some(object)) => bridge.remove(kind, &object),
            },
        }
    }
}

fn apply(bridge: &Bridge, kind: KindId, object: &Value) {
    match kind {
        KindId::PODS => bridge.put_pod(object),
        _ => bridge.put(kind, object),
    }
}

/// Sends every change the kubelet makes to a mirrored pod to be written back.
async fn watch_store(bridge: Arc<Bridge>, mut events: super::api::store::Events, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(event) = event else { return };
        if event.key.kind != KindId::PODS || !matches!(event.change, Change::Modified | Change::Deleted) {
            continue;
        }
        let id = (event.key.namespace.clone(), event.key.name.clone());
        let mirrored = lock(&bridge.pods).get(&id).is_some_and(|m| m.store_uid == uid_of(&event.object));
        if mirrored {
            let _ = bridge.dirty.send(id);
        }
    }
}

/// Writes back, one pod at a time, in the order changes came (each write reads the store as
/// it is then: several changes become one write). What the server failed to take for a
/// passing reason (429, 5xx, no answer) is written again a second later.
async fn write_back(
    bridge: Arc<Bridge>,
    mut dirty: mpsc::UnboundedReceiver<(String, String)>,
    stop: CancellationToken,
) {
    loop {
        let id = tokio::select! {
            () = stop.cancelled() => return,
            id = dirty.recv() => id,
        };
        let Some(id) = id else { return };
        if !bridge.write_back(id.clone()).await {
            let again = bridge.dirty.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_AFTER).await;
                let _ = again.send(id);
            });
        }
    }
}

/// Attaches lab `lab` to the API server of `kubeconfig`'s current context: registers its
/// nodes, publishes its input, mirrors the server into `api`'s store and writes the kubelet's
/// decisions back. Returns once the lab serves as the server's node, within [`ATTACH_LIMIT`];
/// the tasks run until `stop`.
pub async fn attach(
    lab: &Lab,
    kubeconfig: &Path,
    api: Arc<Api>,
    nodes: Vec<Value>,
    stop: CancellationToken,
) -> Result<(), String> {
    match tokio::time::timeout(ATTACH_LIMIT, attach_now(lab, kubeconfig, api, nodes, stop)).await {
        Ok(done) => done,
        Err(_) => Err(format!(
            "becoming a node of the API server of {} took longer than {ATTACH_LIMIT:?} (registering, \
             publishing the input, listing): is the server slow, or is kube-controller-manager not \
             running (it makes the default ServiceAccount new namespaces need)?",
            kubeconfig.display()
        )),
    }
}

async fn attach_now(
    lab: &Lab,
    kubeconfig: &Path,
    api: Arc<Api>,
    nodes: Vec<Value>,
    stop: CancellationToken,
) -> Result<(), String> {
    let name = lab.state.name.clone();
    let (context, url) = target(kubeconfig, None)?;
    let client = connect(kubeconfig, Some(&context)).await?;
    let server = client
        .apiserver_version()
        .await
        .map_err(|e| failed(&format!("reaching the API server of {}", kubeconfig.display()), &e))?;
    let mut made =
        Made { server: format!("Kubernetes {}", server.git_version), context, url, ..Made::default() };
    save(&name, &made)?;
    register(&client, &nodes, &mut made, &name).await?;
    tokio::spawn(heartbeat(client.clone(), nodes.clone(), stop.clone()));
    publish(&client, &api.store, &mut made, &name).await?;

    let (dirty, dirty_rx) = mpsc::unbounded_channel();
    let node_names: Vec<String> =
        nodes.iter().filter_map(|n| n["metadata"]["name"].as_str().map(String::from)).collect();
    let bridge = Arc::new(Bridge {
        client: client.clone(),
        api: api.clone(),
        nodes: node_names.clone(),
        pods: Mutex::new(HashMap::new()),
        dirty,
    });
    tokio::spawn(watch_store(bridge.clone(), api.store.subscribe(), stop.clone()));
    tokio::spawn(write_back(bridge.clone(), dirty_rx, stop.clone()));
    let (ready, mut listed) = mpsc::unbounded_channel();
    let config = watcher::Config::default();
    tokio::spawn(follow(
        bridge.clone(),
        KubeApi::<Namespace>::all(client.clone()),
        config.clone(),
        KindId::NAMESPACES,
        ready.clone(),
        stop.clone(),
    ));
    tokio::spawn(follow(
        bridge.clone(),
        KubeApi::<NetworkPolicy>::all(client.clone()),
        config.clone(),
        KindId::NETWORK_POLICIES,
        ready.clone(),
        stop.clone(),
    ));
    tokio::spawn(follow(
        bridge.clone(),
        KubeApi::<ConfigMap>::all(client.clone()),
        config.clone(),
        KindId::CONFIG_MAPS,
        ready.clone(),
        stop.clone(),
    ));
    // One node: only its pods; several: every bound pod, sorted out here.
    let pods_config = match node_names.as_slice() {
        [one] => config.fields(&format!("spec.nodeName={one}")),
        _ => config.fields("spec.nodeName!="),
    };
    tokio::spawn(follow(
        bridge.clone(),
        KubeApi::<Pod>::all(client.clone()),
        pods_config,
        KindId::PODS,
        ready,
        stop.clone(),
    ));
    let mut waiting: BTreeSet<KindId> =
        BTreeSet::from([KindId::NAMESPACES, KindId::NETWORK_POLICIES, KindId::CONFIG_MAPS, KindId::PODS]);
    let deadline = tokio::time::sleep(PUBLISH_LIMIT);
    tokio::pin!(deadline);
    while !waiting.is_empty() {
        tokio::select! {
            kind = listed.recv() => match kind {
                Some(kind) => { waiting.remove(&kind); }
                None => return Err("the lab's watches of the API server ended before their first lists".to_string()),
            },
            () = &mut deadline => {
                let names: Vec<String> = waiting.iter().map(|k| api.catalog.get(*k).resource()).collect();
                return Err(format!("listing {} from the API server took longer than {PUBLISH_LIMIT:?}", names.join(", ")));
            }
        }
    }
    wait_schedulable(&client, &node_names).await;
    Ok(())
}

/// Removes from the API server what lab `name` made there (recorded in [`Made`]): the pods
/// bound to its nodes (at once: no kubelet runs them now), the objects and namespaces it
/// published, its Leases and Nodes. Through the context it attached through, and only while
/// that context still names the same server. Bounded; returns what it could not remove.
pub fn detach(name: &str, kubeconfig: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(made_path(name)) else { return Vec::new() };
    let Ok(made) = serde_json::from_str::<Made>(&text) else {
        return vec![format!(
            "{} is unreadable: nothing removed from the API server",
            made_path(name).display()
        )];
    };
    let kubeconfig = kubeconfig.to_path_buf();
    // Its own thread and runtime: `lab down` is called from inside runtimes too.
    let work = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match runtime {
            Ok(runtime) => runtime.block_on(async {
                match tokio::time::timeout(Duration::from_secs(60), remove_made(&kubeconfig, &made)).await {
                    Ok(problems) => problems,
                    Err(_) => {
                        vec!["removing what the lab made in the API server took longer than 60 s".to_string()]
                    }
                }
            }),
            Err(e) => vec![format!("cannot start a runtime: {e}")],
        }
    });
    work.join().unwrap_or_else(|_| vec!["removing what the lab made in the API server failed".to_string()])
}

/// Waits, within `limit`, until none of `names` is a namespace being deleted; those that still
/// are. A namespace not being deleted (or absent) is not waited for.
async fn namespaces_gone(client: &Client, names: &[String], limit: Duration) -> Vec<String> {
    let api: KubeApi<Namespace> = KubeApi::all(client.clone());
    let deadline = tokio::time::Instant::now() + limit;
    let mut waiting: Vec<String> = names.to_vec();
    loop {
        let mut still = Vec::new();
        for name in waiting {
            match api.get_opt(&name).await {
                Ok(Some(namespace)) if namespace.metadata.deletion_timestamp.is_some() => still.push(name),
                Ok(_) => {}
                Err(_) => still.push(name),
            }
        }
        if still.is_empty() || tokio::time::Instant::now() > deadline {
            return still;
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn remove_made(kubeconfig: &Path, made: &Made) -> Vec<String> {
    let mut problems = Vec::new();
    // A record without a context (none is written so now) means the current one.
    let context = Some(made.context.as_str()).filter(|c| !c.is_empty());
    match target(kubeconfig, context) {
        Ok((context, url)) if !made.url.is_empty() && url != made.url => {
            return vec![format!(
                "context {context} of {} now names {url}, not {} that the lab attached to: nothing \
                 removed from either (point the context back and run `lab down` again)",
                kubeconfig.display(),
                made.url
            )];
        }
        Ok(_) => {}
        Err(e) => return vec![e],
    }
    let client = match connect(kubeconfig, context).await {
        Ok(client) => client,
        Err(e) => return vec![e],
    };
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    let gone = |result: Result<(), kube::Error>, what: String, problems: &mut Vec<String>| {
        if let Err(e) = result
            && !is_status(&e, 404)
        {
            problems.push(failed(&format!("removing {what}"), &e));
        }
    };
    let pods: KubeApi<Pod> = KubeApi::all(client.clone());
    for node in &made.nodes {
        let bound = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await;
        for pod in bound.map(|l| l.items).unwrap_or_default() {
            let (namespace, name) =
                (pod.metadata.namespace.unwrap_or_default(), pod.metadata.name.unwrap_or_default());
            let api: KubeApi<Pod> = KubeApi::namespaced(client.clone(), &namespace);
            gone(api.delete(&name, &now).await.map(|_| ()), format!("pod {namespace}/{name}"), &mut problems);
        }
    }
    for (resource, namespace, name) in made.objects.iter().rev() {
        let what = format!("{resource} {namespace}/{name}");
        let result = match resource.as_str() {
            "services" => {
                KubeApi::<Service>::namespaced(client.clone(), namespace).delete(name, &now).await.map(|_| ())
            }
            "networkpolicies" => KubeApi::<NetworkPolicy>::namespaced(client.clone(), namespace)
                .delete(name, &now)
                .await
                .map(|_| ()),
            _ => KubeApi::<Pod>::namespaced(client.clone(), namespace).delete(name, &now).await.map(|_| ()),
        };
        gone(result, what, &mut problems);
    }
    for namespace in &made.namespaces {
        let result =
            KubeApi::<Namespace>::all(client.clone()).delete(namespace, &DeleteParams::default()).await;
        gone(result.map(|_| ()), format!("namespace {namespace}"), &mut problems);
    }
    for node in &made.nodes {
        let leases: KubeApi<Lease> = KubeApi::namespaced(client.clone(), LEASE_NAMESPACE);
        gone(
            leases.delete(node, &DeleteParams::default()).await.map(|_| ()),
            format!("lease {node}"),
            &mut problems,
        );
        let nodes: KubeApi<Node> = KubeApi::all(client.clone());
        gone(
            nodes.delete(node, &DeleteParams::default()).await.map(|_| ()),
            format!("node {node}"),
            &mut problems,
        );
    }
    // As `kubectl delete namespace` does, wait for them to be gone (the namespace controller
    // empties them; their pods went at once above, so none waits for a kubelet).
    for namespace in namespaces_gone(&client, &made.namespaces, NAMESPACES_GONE_LIMIT).await {
        problems.push(format!(
            "namespace {namespace} is still being deleted after {NAMESPACES_GONE_LIMIT:?}: \
             `kubectl get namespace {namespace} -o yaml` says what it waits for"
        ));
    }
    problems
}
