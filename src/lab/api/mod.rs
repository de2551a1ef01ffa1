//! The lab's Kubernetes API: what `kubectl` and kube-rs talk to, served on loopback over TLS
//! with a bearer token (the kubeconfig `lab up` writes names both).
//!
//! ```text
//!  kubectl / netpol-verify run ──TLS──► http (routing, auth) ──► rest (admission, defaults,
//!                                          │                       validation, preconditions)
//!                                          ├─► watch (list+watch, logs)     │
//!                                          └─► discovery, openapi           ▼
//!                                                                  store ──events──► kubelet, CNI,
//!                                                                                    namespaces
//! ```
//!
//! It holds Namespaces, Pods (with `log` and `status`), ConfigMaps, Services, EndpointSlices,
//! Events, LimitRanges, the lab's Node, NetworkPolicies, and the policy CRDs of the lab's input;
//! it answers discovery, OpenAPI v3, CRUD with resourceVersions (409 on conflict), label and
//! field selectors, watches, Tables for `kubectl get`, and `Status` errors. What it does not
//! emulate is listed in docs/lab.md.

pub mod catalog;
pub mod discovery;
mod http;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod rest;
pub mod select;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use catalog::Catalog;
use status::ApiError;
use store::Store;

/// A node of the lab, to which the API's scheduler binds the pods that fit it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A container's log as the kubelet keeps it: the file, and whether the container still runs
/// (a followed log ends when it stops).
#[derive(Debug)]
pub struct LogSource {
    pub path: PathBuf,
    pub running: tokio::sync::watch::Receiver<bool>,
}

/// Where `pods/log` reads from: the kubelet.
pub trait Logs: Send + Sync + std::fmt::Debug {
    /// The log of `container` of `pod` (its `previous` run's, if asked), or why there is none.
    fn open(&self, pod: &Value, container: &str, previous: bool) -> Result<LogSource, ApiError>;
}

/// How to make an API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub token: String,
    /// The nodes pods are scheduled to (none: pods stay unscheduled, as with no kubelet).
    pub nodes: Vec<NodeInfo>,
    /// The policy CRDs to serve: (group, kind, cluster-wide).
    pub custom_kinds: Vec<(String, String, bool)>,
    /// Where to write the audit log (an event a line, as kube-apiserver's `--audit-log-path`).
    pub audit_log: Option<PathBuf>,
}

/// The API: its objects and what it serves.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<Store>,
    pub catalog: Catalog,
    schemas: openapi::Schemas,
    documents: openapi::Documents,
    token: String,
    nodes: Vec<NodeInfo>,
    logs: std::sync::OnceLock<Arc<dyn Logs>>,
    /// Names for Events.
    events: AtomicU64,
    /// `host:port` it serves on, once bound.
    address: std::sync::OnceLock<String>,
    audit_log: Option<std::sync::Mutex<std::fs::File>>,
}

impl Api {
    pub fn new(config: ApiConfig) -> Arc<Api> {
        let catalog = Catalog::new(&config.custom_kinds);
        let schemas = openapi::Schemas::new(&catalog);
        let documents = openapi::Documents::new(&catalog, &schemas);
        Arc::new(Api {
            store: Arc::new(Store::default()),
            catalog,
            schemas,
            documents,
            token: config.token,
            nodes: config.nodes,
            logs: std::sync::OnceLock::new(),
            events: AtomicU64::new(0),
            address: std::sync::OnceLock::new(),
            audit_log: config.audit_log.and_then(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .ok()
                    .map(std::sync::Mutex::new)
            }),
        })
    }

    /// Writes an audit event (when the API keeps a log).
    fn audit(&self, event: &Value) {
        use std::io::Write;
        if let Some(log) = &self.audit_log {
            let mut line = serde_json::to_vec(event).unwrap_or_default();
            line.push(b'\n');
            let _ = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write_all(&line);
        }
    }

    /// Where `pods/log` reads from (the kubelet attaches itself once).
    pub fn attach_logs(&self, logs: Arc<dyn Logs>) {
        let _ = self.logs.set(logs);
    }

    /// Serves the API on `listener` (TLS as `config` says: [`tls::Certificates::server_config`])
    /// until `stop` fires. Runs the namespace controller alongside.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        if let Ok(address) = listener.local_addr() {
            let _ = self.address.set(address.to_string());
        }
        tokio::spawn(namespace_controller(self.clone(), self.store.subscribe(), stop.clone()));
        serve_tls(http::router(self.clone()), listener, config, stop).await
    }

    /// Serves the kubelet's API for the API server the lab is attached to (its `pods/log`
    /// requests: `/containerLogs/NAMESPACE/POD/CONTAINER`), from this API's store and logs.
    pub async fn serve_kubelet(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        serve_tls(http::kubelet_router(self), listener, config, stop).await
    }
}

/// Serves `router` over HTTP/1.1 and TLS on `listener` until `stop` fires.
async fn serve_tls(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted.map_err(|e| format!("the lab API stopped accepting: {e}"))?,
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Finishes what terminating namespaces hold, as the namespace controller does: on every
/// change in one, it deletes what is left, and the namespace once nothing is. `events` is
/// subscribed before the task starts, so no change made meanwhile is missed.
async fn namespace_controller(api: Arc<Api>, mut events: store::Events, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(event) = event else { return };
        let namespace = if event.key.kind == catalog::KindId::NAMESPACES {
            event.key.name.clone()
        } else {
            event.key.namespace.clone()
        };
        if !namespace.is_empty() {
            api.sweep_namespace(&namespace);
        }
    }
}

/// A kubeconfig for the API at `server` (`https://127.0.0.1:PORT`), trusting `ca_pem`, with
/// the bearer token: one cluster, user and context, all named `context`.
pub fn kubeconfig(context: &str, server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {context}\n  user:\n    token: {token}\ncontexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {context}\n    namespace: default\ncurrent-context: {context}\n"
    )
}

/// Writes `text` to `path`, readable by its owner only (it holds a credential).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let mut file =
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&partial)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(partial, path)
}

/// A fresh bearer token: 32 random bytes from the kernel, hex.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn getrandom_bytes(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("cannot read /dev/urandom for the lab API's token: {e}"))
}

#[cfg(test)]
mod tests;
