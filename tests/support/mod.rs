//! What the tests of the lab as a cluster share: a lab with its API, removed however a test
//! ends, and ways to read it back.

#![allow(dead_code)]

pub mod apiserver;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use netpol_verify::input::{Source, load};
use netpol_verify::kubernetes::{Connection, KubeCluster};
use netpol_verify::lab::cni::CniMode;
use netpol_verify::lab::{Lab, LabSpec, daemon};
use netpol_verify::manifest::PodOptions;
use serde_json::Value;

pub fn verify() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netpol-verify"))
}

pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("b{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Namespaces a and b, nothing in them.
pub const TWO_NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";

/// A lab with its API, removed when the test ends however it ends.
pub struct TestLab {
    pub name: String,
    pub kubeconfig: PathBuf,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = Lab::down(&self.name);
    }
}

/// Removes lab `name` when dropped, for labs a test does not hold as a [`TestLab`] (made by
/// a command it runs).
pub struct DownOnDrop(pub String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

impl TestLab {
    pub fn up(objects: &str, cni: CniMode, nodes: usize) -> TestLab {
        let snapshot =
            load(&[Source { name: "test".into(), text: objects.into() }]).expect("valid objects").snapshot;
        let probe = verify().with_file_name("netpol-probe");
        let spec = LabSpec {
            name: Some(unique_name()),
            cni,
            enforce_delay: Duration::ZERO,
            nodes,
            probe,
            verify: verify(),
            api_server: None,
        };
        let (lab, _) = Lab::up(&spec, &snapshot).expect("the lab comes up");
        let name = lab.state.name.clone();
        let kubeconfig = match lab.start_api(&[]) {
            Ok(kubeconfig) => kubeconfig,
            Err(e) => {
                let _ = Lab::down(&name);
                panic!("the lab's API: {e}");
            }
        };
        TestLab { name, kubeconfig }
    }

    pub async fn cluster(&self) -> KubeCluster {
        let connection = Connection { kubeconfig: Some(&self.kubeconfig), context: None };
        KubeCluster::connect(&connection, PodOptions::default()).await.expect("connects")
    }

    pub async fn client(&self) -> kube::Client {
        apiserver::client_of(&self.kubeconfig).await
    }

    /// The API's audit log so far: one event per request.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(daemon::audit_log_path(&self.name)).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The objects once deletions under way have finished: Kubernetes deletes asynchronously
    /// (a pod in its grace period, a namespace terminating until its pods are gone), so this
    /// waits, within 20 s, for the API to hold what it held `before`, and returns what it holds.
    pub async fn objects_once_settled(&self, before: &BTreeSet<String>) -> BTreeSet<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let now = self.objects().await;
            if &now == before || std::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Every object the API holds of the kinds a run touches, as `kind ns/name`.
    pub async fn objects(&self) -> BTreeSet<String> {
        objects_of(&self.client().await, &ListParams::default()).await
    }
}

/// The objects of the kinds a run touches that `params` selects, across namespaces, as
/// `kind ns/name`.
pub async fn objects_of(client: &kube::Client, params: &ListParams) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    macro_rules! all {
        ($kind:ty, $label:expr) => {
            for object in Api::<$kind>::all(client.clone()).list(params).await.expect("listed") {
                let meta = &object.metadata;
                found.insert(format!(
                    "{} {}/{}",
                    $label,
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default()
                ));
            }
        };
    }
    all!(Namespace, "namespace");
    all!(Pod, "pod");
    all!(ConfigMap, "configmap");
    all!(NetworkPolicy, "networkpolicy");
    found
}
