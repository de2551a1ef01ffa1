//! The lab's control plane and node, as one process: `netpol-verify lab serve NAME`, which
//! `lab up` starts (detached, like the lab's other processes) once the lab's network is
//! built. It serves the lab's Kubernetes API on 127.0.0.1, runs the kubelet of the lab's node
//! and the CNI's controller, and writes the kubeconfig (mode 0600) when it is ready.
//!
//! The API starts out holding the lab as `lab up` built it: its namespaces, the workload pods
//! of its input (running, their ports served by the lab), Services with EndpointSlices, the
//! NetworkPolicies, the policy CRDs' objects, and the lab's node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::api::catalog::{Catalog, KindId};
use super::api::store::{Change, Events, now};
use super::api::{Api, ApiConfig, NodeInfo, objects};
use super::attach;
use super::enforce::Network;
use super::kubelet::{Kubelet, NodeConfig, image::Image};
use super::state::{self, LabState};
use super::topology::GATEWAY_IP;
use super::{EMULATED, Lab};
use crate::model::key_of;

/// Where a lab keeps its kubeconfig (`lab env` prints it; `lab down` removes it).
pub fn kubeconfig_path(name: &str) -> PathBuf {
    state::lab_dir(name).join("kubeconfig")
}

/// The pid of a lab's API process (`netpol-verify lab serve`).
pub fn pid_path(name: &str) -> PathBuf {
    state::lab_dir(name).join("api.pid")
}

/// Where a lab's API logs every request (`audit.k8s.io/v1` events, one a line).
pub fn audit_log_path(name: &str) -> PathBuf {
    state::lab_dir(name).join("audit.log")
}

use crate::detect::LAB_CNI_LABEL as CNI_LABEL;

/// A node object of the lab.
pub fn node(state: &LabState, name: &str) -> Value {
    let name = name.to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                CNI_LABEL: state.cni.as_str(),
            },
        },
        "spec": {"podCIDR": state.pod_cidrs.first().map(ToString::to_string), "providerID": format!("netpol-verify-lab://{name}")},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the netpol-verify lab's kubelet is posting ready status", "lastHeartbeatTime": now(), "lastTransitionTime": now()},
            ],
            "addresses": [{"type": "InternalIP", "address": GATEWAY_IP.to_string()}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "kubeletVersion": format!("v1.{}.0+netpol-verify-lab", super::api::discovery::MINOR),
                "containerRuntimeVersion": format!("netpol-verify-lab://{}", env!("CARGO_PKG_VERSION")),
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "the netpol-verify lab",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "",
            },
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "1000"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "1000"},
        },
    })
}

/// A workload pod of the input, as the API shows it: bound to the node, running and Ready.
fn workload(pod: &k8s_openapi::api::core::v1::Pod, node: &str, ip: std::net::Ipv4Addr) -> Value {
    let mut object = serde_json::to_value(pod).unwrap_or_default();
    let at = now();
    let meta = &mut object["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][EMULATED] =
        Value::from("the lab serves this pod's ports (netpol-probe serve); its containers do not run");
    if !object["spec"].is_object() {
        object["spec"] = json!({"containers": []});
    }
    object["spec"]["nodeName"] = Value::from(node);
    let containers: Vec<Value> = object["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "restartCount": 0, "started": true,
                   "state": {"running": {"startedAt": at}}})
        })
        .collect();
    let condition =
        |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": at});
    object["status"] = json!({
        "phase": "Running",
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
        "hostIP": GATEWAY_IP.to_string(),
        "hostIPs": [{"ip": GATEWAY_IP.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": at,
        "containerStatuses": containers,
        "qosClass": "BestEffort",
    });
    object
}

/// Stores an object the lab starts with, with the API's defaults (not through admission: the
/// lab's own objects, as a cluster's bootstrap makes them).
fn seed(api: &Api, kind: KindId, object: Value) {
    let info = api.catalog.get(kind);
    let Ok(mut decoded) = objects::decode(info, &object, objects::FieldValidation::Ignore).map(|d| d.object)
    else {
        return;
    };
    let status = decoded.get("status").cloned();
    objects::set_defaults(info, &mut decoded);
    if let Some(status) = status.filter(|_| kind == KindId::PODS) {
        decoded["status"] = status;
    }
    let name = decoded["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let key = api.key(kind, decoded["metadata"]["namespace"].as_str(), &name);
    let _ = api.store.create(key, decoded, &info.resource());
}

/// The API holding the lab as it was built.
fn populate(api: &Api, lab: &Lab) {
    let state = &lab.state;
    for name in state.node_names() {
        seed(api, KindId::NODES, node(state, &name));
    }
    for namespace in &state.namespaces {
        seed(api, KindId::NAMESPACES, serde_json::to_value(namespace).unwrap_or_default());
    }
    for pod in &state.pod_objects {
        let key = key_of(&pod.metadata);
        let Some(lab_pod) = state.pods.iter().find(|p| p.key == key) else { continue };
        seed(api, KindId::PODS, workload(pod, &state.name, lab_pod.ip));
    }
    for service in &state.services {
        seed(api, KindId::SERVICES, serde_json::to_value(service).unwrap_or_default());
    }
    // kube-proxy's endpoints, as the EndpointSlice controller publishes them.
    let mut slices: BTreeMap<crate::model::ObjectKey, Vec<&super::topology::ServiceNat>> = BTreeMap::new();
    for nat in &state.nat {
        slices.entry(nat.service.clone()).or_default().push(nat);
    }
    for (service, ports) in slices {
        let mut addresses: Vec<std::net::Ipv4Addr> =
            ports.iter().flat_map(|p| p.endpoints.iter().map(|(ip, _)| *ip)).collect();
        addresses.sort();
        addresses.dedup();
        let declared = state.services.iter().find(|s| key_of(&s.metadata) == service);
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|ip| {
                let pod = state.pods.iter().find(|p| p.ip == *ip);
                json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": state.name,
                       "targetRef": pod.map(|p| json!({"kind": "Pod", "namespace": p.key.namespace, "name": p.key.name}))})
            })
            .collect();
        let slice_ports: Vec<Value> = ports
            .iter()
            .map(|nat| {
                let name = declared
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| {
                        s.ports.iter().flatten().find(|p| {
                            p.port == i32::from(nat.port)
                                && p.protocol.as_deref().unwrap_or("TCP").eq_ignore_ascii_case(&nat.protocol)
                        })
                    })
                    .and_then(|p| p.name.clone());
                let target = nat.endpoints.first().map_or(nat.port, |(_, port)| *port);
                json!({"name": name.unwrap_or_default(), "port": target, "protocol": nat.protocol.to_ascii_uppercase()})
            })
            .collect();
        seed(
            api,
            KindId::ENDPOINT_SLICES,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{}-lab", service.name), "namespace": service.namespace,
                             "labels": {crate::model::SERVICE_NAME_LABEL: service.name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": slice_ports,
            }),
        );
    }
    for policy in &state.policies {
        seed(api, KindId::NETWORK_POLICIES, serde_json::to_value(policy).unwrap_or_default());
    }
    for object in &state.unmodelled {
        let group = object.api_version.split_once('/').map_or("", |(g, _)| g);
        let Some(kind) = api.catalog.ids().find(|k| {
            let info = api.catalog.get(*k);
            info.group == group && info.kind == object.kind
        }) else {
            continue;
        };
        let mut metadata = json!({"name": object.name});
        if let Some(namespace) = &object.namespace {
            metadata["namespace"] = Value::from(namespace.clone());
        }
        seed(api, kind, json!({"metadata": metadata, "spec": {}}));
    }
}

/// Keeps the lab's record, and so its CNI, in step with the API: namespaces and their labels,
/// NetworkPolicies, and pods' labels (the kubelet adds and removes pods). `events` is
/// subscribed before the task starts, so no change made meanwhile is missed.
async fn mirror(mut events: Events, network: Arc<Network>, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(event) = event else { return };
        let labels_changed = event
            .old
            .as_ref()
            .is_none_or(|old| old["metadata"]["labels"] != event.object["metadata"]["labels"]);
        let result = match (event.key.kind, event.change) {
            (KindId::NAMESPACES, Change::Deleted) => network.remove_namespace(event.key.name.clone()).await,
            (KindId::NAMESPACES, _) if labels_changed => match serde_json::from_value(event.object.clone()) {
                Ok(namespace) => network.put_namespace(namespace).await,
                Err(_) => Ok(()),
            },
            (KindId::NETWORK_POLICIES, Change::Deleted) => {
                let key = crate::model::ObjectKey::new(&event.key.namespace, &event.key.name);
                network.remove_policy(key).await.map(|_| ())
            }
            (KindId::NETWORK_POLICIES, _) => {
                let unchanged = event.old.as_ref().is_some_and(|old| old["spec"] == event.object["spec"])
                    && !labels_changed;
                match serde_json::from_value(event.object.clone()) {
                    Ok(policy) if !unchanged => network.put_policy(policy).await,
                    _ => Ok(()),
                }
            }
            (KindId::PODS, Change::Modified) if labels_changed => {
                match serde_json::from_value(event.object.clone()) {
                    Ok(pod) => network.relabel_pod(pod).await,
                    Err(_) => Ok(()),
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            eprintln!(
                "netpol-verify lab: the CNI could not follow {} {}/{}: {e}",
                event.change.as_str(),
                event.key.namespace,
                event.key.name
            );
        }
    }
}

/// `netpol-verify lab serve NAME`: runs lab `name`'s API, kubelet and CNI until killed
/// (`lab down`) or its record goes.
pub fn serve(name: &str, images: &[String]) -> Result<(), String> {
    let lab = Lab::open(name).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the lab's runtime: {e}"))?;
    runtime.block_on(run(lab, images.to_vec()))
}

async fn run(lab: Lab, images: Vec<String>) -> Result<(), String> {
    let name = lab.state.name.clone();
    let dir = lab.state.dir();
    let certificates = super::api::tls::Certificates::generate(&name)?;
    let token = super::api::new_token()?;
    let nodes = lab
        .state
        .node_names()
        .into_iter()
        .map(|node| NodeInfo {
            labels: BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), node.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ]),
            name: node,
        })
        .collect();
    let api = Api::new(ApiConfig {
        token: token.clone(),
        nodes,
        custom_kinds: Catalog::custom_kinds(&lab.state.unmodelled),
        audit_log: Some(audit_log_path(&name)),
    });
    populate(&api, &lab);
    let image = Image::build(&dir.join("image"), &lab.state.probe, images)?;
    let network = Network::new(lab.clone());
    let stop = CancellationToken::new();
    tokio::spawn(mirror(api.store.subscribe(), network.clone(), stop.clone()));
    let kubelet = Kubelet::new(
        api.clone(),
        network.clone(),
        image,
        NodeConfig {
            node_names: lab.state.node_names(),
            host_ip: GATEWAY_IP.to_string(),
            dir: dir.clone(),
            verify: lab.state.verify.clone(),
            node_netns: PathBuf::from("/run/netns").join(state::node_netns(&name)),
        },
    )?;
    tokio::spawn(kubelet.run(stop.clone()));
    let serving = match &lab.state.api_server {
        Some(kubeconfig) => {
            // The kubelet's API, where the API server reads pods' logs.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            let serving = tokio::spawn(api.clone().serve_kubelet(
                listener,
                certificates.server_config()?,
                stop.clone(),
            ));
            let nodes = lab
                .state
                .node_names()
                .iter()
                .map(|n| attach::node_object(node(&lab.state, n), port))
                .collect();
            attach::attach(&lab, kubeconfig, api.clone(), nodes, stop.clone()).await?;
            // Last: its appearance tells `lab up` the lab is the server's node.
            std::fs::write(attach::ready_path(&name), "")
                .map_err(|e| format!("cannot write {}: {e}", attach::ready_path(&name).display()))?;
            serving
        }
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            let server = format!("https://{address}");
            let serving =
                tokio::spawn(api.clone().serve(listener, certificates.server_config()?, stop.clone()));
            std::fs::write(dir.join("ca.crt"), &certificates.ca_pem)
                .map_err(|e| format!("cannot write the lab's CA: {e}"))?;
            // Last: its appearance tells `lab up` the API is ready.
            super::api::write_private(
                &kubeconfig_path(&name),
                &super::api::kubeconfig(&format!("lab-{name}"), &server, &certificates.ca_pem, &token),
            )
            .map_err(|e| format!("cannot write the lab's kubeconfig: {e}"))?;
            serving
        }
    };
    // Until SIGINT or SIGTERM, or until the lab is removed from under it (`lab down` also
    // just kills it).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                if !state::lab_dir(&name).exists() {
                    break;
                }
            }
        }
    }
    stop.cancel();
    let _ = serving.await;
    Ok(())
}
