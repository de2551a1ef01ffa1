//! What the tool creates in a cluster, as Kubernetes objects: the pod builder.
//!
//! Pure, and the only place that builds a probe command line ([`serve_args`], [`batch_args`]).
//! Probe pods meet Pod Security "restricted" (non-root uid 65534, no privilege escalation,
//! every capability dropped, seccomp RuntimeDefault, a read-only root filesystem), request
//! tiny resources, carry the run's labels, and never mount a service account token. Servers
//! listen on low ports through the safe sysctl `net.ipv4.ip_unprivileged_port_start` (or
//! NET_BIND_SERVICE, where a cluster forbids that sysctl); a readiness probe from the kubelet
//! (the node, which NetworkPolicy always allows) shows each server alive. Probers run their
//! plan from a ConfigMap, once or in rounds, and exit; their results are their logs. The run
//! and `--dry-run` ([`crate::run::dry_run`]) build their objects here; the Kubernetes backend
//! ([`crate::kubernetes`]) sends them; the lab's kubelet runs them as written.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort as ApiPort,
    LocalObjectReference, Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    Pod, PodReadinessGate, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Sysctl, TCPSocketAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cluster::{APP_LABEL, APP_VALUE, ProbePod, RUN_LABEL, Role};
use crate::engine::Protocol;
use crate::model::NAMESPACE_NAME_LABEL;

/// The probe image this build runs by default: the project's, at this version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/netpol-verify/netpol-probe:", env!("CARGO_PKG_VERSION"));
/// Where a prober's plan is mounted: the directory, and the file in it.
pub const PLAN_DIR: &str = "/plan";
pub const PLAN_PATH: &str = "/plan/plan.json";
/// The probe image's entrypoint (probe-image/Dockerfile).
pub const PROBE_ENTRYPOINT: &str = "/netpol-probe";
/// The most probes a batch runs at once: its whole plan, up to this (each holds a socket).
pub const MAX_CONCURRENCY: usize = 4096;
/// A readiness gate no controller sets: pods wearing a workload's labels carry it, so they
/// never become Ready and no Service sends them real traffic.
pub const NEVER_READY: &str = "netpol-verify.io/never-ready";
/// The uid and gid probes run as (nobody).
pub const PROBE_UID: i64 = 65534;

/// How servers get to listen on ports below 1024 as a non-root user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowPorts {
    /// The namespaced, "safe" sysctl `net.ipv4.ip_unprivileged_port_start=0` (allowed by Pod
    /// Security "restricted"; needs Kubernetes 1.22 or newer).
    #[default]
    Sysctl,
    /// The NET_BIND_SERVICE capability (the one "restricted" allows adding), for clusters whose
    /// policy forbids the sysctl. The image's binary carries it as a file capability.
    Capability,
}

/// What the user chose for the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    /// The probe image (`--image`): one flag for every image the tool uses.
    pub image: String,
    pub image_pull_secrets: Vec<String>,
    /// Schedule on tainted nodes too (`--tolerate-all-taints`).
    pub tolerate_all_taints: bool,
    pub low_ports: LowPorts,
}

impl Default for PodOptions {
    fn default() -> Self {
        PodOptions {
            image: DEFAULT_IMAGE.into(),
            image_pull_secrets: Vec::new(),
            tolerate_all_taints: false,
            low_ports: LowPorts::default(),
        }
    }
}

/// Every image a run uses, for mirroring into an air-gapped registry (`netpol-verify images`).
pub fn images(options: &PodOptions) -> Vec<String> {
    vec![options.image.clone()]
}

/// What a probe pod's container does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// `netpol-probe serve` on the pod's TCP and UDP ports, answering with its name.
    Serve,
    /// `netpol-probe batch` over the `probes` of the plan in its ConfigMap, once, then exit.
    Batch { probes: usize },
    /// The same plan in rounds, one every `every`, until `total` has passed (the canary's
    /// pollers).
    Rounds { probes: usize, every: std::time::Duration, total: std::time::Duration },
}

impl Work {
    /// What a pod of `role` does when nothing else is said: servers and the control pod
    /// serve; clients run a batch.
    pub fn of(role: Role) -> Work {
        match role {
            Role::Server | Role::Control => Work::Serve,
            Role::Client => Work::Batch { probes: 0 },
        }
    }

    fn serves(self) -> bool {
        self == Work::Serve
    }
}

/// `netpol-probe` arguments that serve `tcp` and `udp` ports as `name` (`namespace/pod`).
pub fn serve_args(name: &str, tcp: &[u16], udp: &[u16]) -> Vec<String> {
    let list = |ports: &[u16]| ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut args = vec!["serve".to_string(), "--name".to_string(), name.to_string()];
    if !tcp.is_empty() {
        args.extend(["--tcp".to_string(), list(tcp)]);
    }
    if !udp.is_empty() {
        args.extend(["--udp".to_string(), list(udp)]);
    }
    args
}

/// `netpol-probe` arguments that run the plan at `plan` (a file, or `-` for standard input):
/// every probe at once, once or in rounds. `None` for [`Work::Serve`].
pub fn batch_args(work: Work, plan: &str) -> Option<Vec<String>> {
    let (probes, rounds) = match work {
        Work::Serve => return None,
        Work::Batch { probes } => (probes, None),
        Work::Rounds { probes, every, total } => (probes, Some((every, total))),
    };
    let concurrency = probes.clamp(1, MAX_CONCURRENCY).to_string();
    let mut args = ["batch", "--plan", plan, "--concurrency", &concurrency].map(String::from).to_vec();
    if let Some((every, total)) = rounds {
        args.extend([
            "--every".to_string(),
            format!("{}ms", every.as_millis()),
            "--for".to_string(),
            format!("{}ms", total.as_millis()),
        ]);
    }
    Some(args)
}

/// Which pod of a prober's runs this is: its `n`th batch, or its `n`th poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Batch(usize),
    Poll(usize),
}

/// The pod that runs `prober`'s plan for `turn`: a client's first batch is the client itself;
/// every later one, every poller, and every batch of a server or the control pod is a pod of
/// its own, `NAME-bN` or `NAME-pN`. It wears the prober's labels, so its policies select it.
pub fn prober_pod(prober: &ProbePod, turn: Turn) -> ProbePod {
    let mut pod = prober.clone();
    pod.ports = Vec::new();
    match turn {
        Turn::Batch(0) if prober.role == Role::Client => {}
        Turn::Batch(n) => pod.key.name = format!("{}-b{n}", prober.key.name),
        Turn::Poll(n) => pod.key.name = format!("{}-p{n}", prober.key.name),
    }
    pod
}

/// The name of the ConfigMap holding the plan of the pod named `pod`.
pub fn plan_name(pod: &str) -> String {
    format!("{pod}-plan")
}

pub fn labels(run_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(APP_LABEL.into(), APP_VALUE.into()), (RUN_LABEL.into(), run_id.into())])
}

/// A namespace of the tool's own, where Pod Security admission enforces `restricted`: what the
/// tool runs there meets it, and nothing else may run there.
pub fn namespace(name: &str, run_id: &str) -> Namespace {
    let mut labels = labels(run_id);
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    labels.insert("pod-security.kubernetes.io/enforce".into(), "restricted".into());
    labels.insert("pod-security.kubernetes.io/enforce-version".into(), "latest".into());
    Namespace {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..ObjectMeta::default() },
        ..Namespace::default()
    }
}

/// The ConfigMap holding a client's plan (JSON, as `netpol-probe batch` reads it).
pub fn plan_config_map(pod: &ProbePod, plan: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(plan_name(&pod.key.name)),
            namespace: Some(pod.key.namespace.clone()),
            labels: Some(labels(&pod.run_id)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("plan.json".to_string(), plan.to_string())])),
        ..ConfigMap::default()
    }
}

/// A NetworkPolicy of the tool's own (the canary's), labelled with the run.
pub fn policy(policy: &NetworkPolicy, run_id: &str) -> NetworkPolicy {
    let mut policy = policy.clone();
    policy.metadata.labels.get_or_insert_with(BTreeMap::new).extend(labels(run_id));
    policy
}

/// `pod`'s ports of `protocol`, sorted, without repeats.
fn ports_of(pod: &ProbePod, protocol: Protocol) -> Vec<u16> {
    let mut ports: Vec<u16> = pod.ports.iter().filter(|p| p.protocol == protocol).map(|p| p.port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Required node affinity to the node named `node` (`--spread`): by the node's name, as a
/// DaemonSet's pods are placed, so the scheduler still checks taints and resources.
fn on_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// A probe pod doing `work`. Probers read their plan from the ConfigMap [`plan_config_map`]
/// makes; `never_ready` pods (those wearing a workload's labels) carry a readiness gate nothing
/// sets.
pub fn probe_pod(pod: &ProbePod, options: &PodOptions, work: Work, never_ready: bool) -> Pod {
    let serves = work.serves();
    let low_port = serves && pod.ports.iter().any(|p| p.port < 1024);
    let args = batch_args(work, PLAN_PATH).unwrap_or_else(|| {
        serve_args(&pod.key.to_string(), &ports_of(pod, Protocol::Tcp), &ports_of(pod, Protocol::Udp))
    });
    let container_ports: Vec<ApiPort> = pod
        .ports
        .iter()
        .filter(|_| serves)
        .map(|p| ApiPort {
            container_port: i32::from(p.port),
            protocol: Some(p.protocol.as_str().into()),
            name: p.name.clone(),
            ..ApiPort::default()
        })
        .collect();
    // The kubelet's readiness probe comes from the node: it shows the server alive to
    // traffic NetworkPolicy always allows.
    let readiness = pod.ports.iter().find(|p| serves && p.protocol == Protocol::Tcp).map(|p| Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(i32::from(p.port)), host: None }),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        failure_threshold: Some(3),
        ..Probe::default()
    });
    let quantity = |text: &str| Quantity(text.to_string());
    let add_capability = low_port && options.low_ports == LowPorts::Capability;
    let container = Container {
        name: "probe".into(),
        image: Some(options.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        ports: (!container_ports.is_empty()).then_some(container_ports),
        readiness_probe: readiness.filter(|_| !never_ready),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("10m")),
                ("memory".into(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), quantity("200m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: add_capability.then(|| vec!["NET_BIND_SERVICE".into()]),
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        env: None,
        volume_mounts: (!serves).then(|| {
            vec![VolumeMount {
                name: "plan".into(),
                mount_path: PLAN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let sysctls = (low_port && options.low_ports == LowPorts::Sysctl)
        .then(|| vec![Sysctl { name: "net.ipv4.ip_unprivileged_port_start".into(), value: "0".into() }]);
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.key.name.clone()),
            namespace: Some(pod.key.namespace.clone()),
            labels: Some(pod.all_labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some(if serves { "Always" } else { "Never" }.into()),
            termination_grace_period_seconds: Some(2),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(PROBE_UID),
                run_as_group: Some(PROBE_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                sysctls,
                ..PodSecurityContext::default()
            }),
            image_pull_secrets: (!options.image_pull_secrets.is_empty()).then(|| {
                options
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            tolerations: options
                .tolerate_all_taints
                .then(|| vec![Toleration { operator: Some("Exists".into()), ..Toleration::default() }]),
            readiness_gates: never_ready
                .then(|| vec![PodReadinessGate { condition_type: NEVER_READY.into() }]),
            affinity: pod.node.as_ref().map(|node| on_node(node)),
            volumes: (!serves).then(|| {
                vec![Volume {
                    name: "plan".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: plan_name(&pod.key.name),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                }]
            }),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// One object of a dry run, with a comment saying what it is for.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub comment: String,
    pub object: serde_json::Value,
}

impl Manifest {
    pub fn new<T: serde::Serialize + k8s_openapi::Resource>(
        comment: impl Into<String>,
        object: &T,
    ) -> Manifest {
        let mut value = serde_json::to_value(object).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            // k8s-openapi leaves the type fields to the client: a manifest needs them.
            map.insert("apiVersion".into(), T::API_VERSION.into());
            map.insert("kind".into(), T::KIND.into());
        }
        Manifest { comment: comment.into(), object: value }
    }
}

/// The manifests as multi-document YAML, each with its comment.
pub fn to_yaml(manifests: &[Manifest]) -> String {
    let mut out = String::new();
    for manifest in manifests {
        out.push_str("---\n");
        for line in manifest.comment.lines() {
            let _ = writeln!(out, "# {line}");
        }
        match serde_saphyr::to_string(&manifest.object) {
            Ok(text) => out.push_str(&text),
            Err(e) => {
                let _ = writeln!(out, "# cannot render this object: {e}");
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub mod limits;

#[cfg(test)]
mod tests;
