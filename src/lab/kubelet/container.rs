//! From a Pod spec to what the runtime runs: the pod's volumes on disk, and for each
//! container its command (the image's ENTRYPOINT and CMD unless the spec says otherwise, with
//! `$(VAR)` references expanded), environment, user, capabilities and mounts — or why it
//! cannot start, in the kubelet's words.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::image::Image;
use super::shim::{ContainerSpec, Mount};
use crate::lab::api::Api;
use crate::lab::api::catalog::KindId;
use crate::lab::api::store::Key;

/// Why a container waits: its reason and message, as `containerStatuses[].state.waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: &str, message: impl Into<String>) -> Waiting {
        Waiting { reason: reason.into(), message: message.into() }
    }
}

/// What every container of a pod shares.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub pod: Pod,
    pub uid: String,
    pub ip: std::net::Ipv4Addr,
    pub host_ip: String,
    pub netns: PathBuf,
    /// The pod's directory: its volumes, `/etc` files, logs.
    pub dir: PathBuf,
    /// Prepared volumes by name.
    pub volumes: BTreeMap<String, (PathBuf, bool)>,
}

/// `name_namespace(uid)`, as the kubelet names a pod in messages.
pub fn pod_label(pod: &Pod, uid: &str) -> String {
    format!(
        "{}_{}({uid})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default()
    )
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Waiting + '_ {
    move |e| Waiting::new("CreateContainerError", format!("cannot {what}: {e}"))
}

/// Writes the pod's volumes under `dir`: ConfigMaps as files (`items`, modes), emptyDirs as
/// empty directories. A missing ConfigMap is a `FailedMount` (the pod waits for it); a kind
/// of volume the lab does not mount is refused the same way.
pub fn prepare_volumes(
    api: &Api,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, (PathBuf, bool)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut prepared = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let failed = |why: String| format!("MountVolume.SetUp failed for volume {:?} : {why}", volume.name);
        if let Some(source) = &volume.config_map {
            let key = Key::new(KindId::CONFIG_MAPS, &namespace, &source.name);
            let target = dir.join("volumes/configmap").join(&volume.name);
            let map = match api.store.get(&key) {
                Some(map) => map,
                None if source.optional == Some(true) => serde_json::json!({}),
                None => return Err(failed(format!("configmap {:?} not found", source.name))),
            };
            let _ = std::fs::remove_dir_all(&target);
            std::fs::create_dir_all(&target).map_err(|e| failed(e.to_string()))?;
            let data = map["data"].as_object().cloned().unwrap_or_default();
            let mode = source.default_mode.unwrap_or(0o644) as u32;
            let items: Vec<(String, String, u32)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone(), i.mode.map_or(mode, |m| m as u32)))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone(), mode)).collect(),
            };
            for (key, path, mode) in items {
                let Some(text) = data.get(&key).and_then(|v| v.as_str()) else {
                    return Err(failed(format!("configmap references non-existent config key: {key}")));
                };
                let file = target.join(&path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
                }
                std::fs::write(&file, text).map_err(|e| failed(e.to_string()))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| failed(e.to_string()))?;
            }
            // Always read-only, as the kubelet mounts ConfigMaps.
            prepared.insert(volume.name.clone(), (target, true));
        } else if volume.empty_dir.is_some() {
            let target = dir.join("volumes/empty-dir").join(&volume.name);
            std::fs::create_dir_all(&target).map_err(|e| failed(e.to_string()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| failed(e.to_string()))?;
            prepared.insert(volume.name.clone(), (target, false));
        } else {
            let kind = serde_json::to_value(volume)
                .ok()
                .and_then(|v| v.as_object().and_then(|m| m.keys().find(|k| *k != "name").cloned()))
                .unwrap_or_else(|| "unknown".into());
            return Err(failed(format!(
                "the lab's kubelet mounts only configMap and emptyDir volumes, not {kind}"
            )));
        }
    }
    Ok(prepared)
}

/// containerd's default capabilities for a container (`defaultUnixCaps`).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Expands `$(NAME)` from `env` (`$$(NAME)` stays `$(NAME)`), as the kubelet does.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: PATH and HOSTNAME as containerd sets them, then `envFrom`,
/// then `env` (values, field references, ConfigMap keys).
fn environment(
    api: &Api,
    sandbox: &Sandbox,
    container: &Container,
) -> Result<Vec<(String, String)>, Waiting> {
    let pod = &sandbox.pod;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("HOSTNAME".into(), hostname(pod)),
    ];
    let config_map = |map: &str, optional: Option<bool>| -> Result<Option<serde_json::Value>, Waiting> {
        match api.store.get(&Key::new(KindId::CONFIG_MAPS, &namespace, map)) {
            Some(found) => Ok(Some(found)),
            None if optional == Some(true) => Ok(None),
            None => Err(Waiting::new("CreateContainerConfigError", format!("configmap {map:?} not found"))),
        }
    };
    fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    for source in container.env_from.iter().flatten() {
        if let Some(reference) = &source.config_map_ref
            && let Some(map) = config_map(&reference.name, reference.optional)?
        {
            for (key, value) in map["data"].as_object().into_iter().flatten() {
                let name = format!("{}{key}", source.prefix.clone().unwrap_or_default());
                set(&mut env, name, value.as_str().unwrap_or_default().into());
            }
        } else if source.secret_ref.is_some() {
            return Err(Waiting::new(
                "CreateContainerConfigError",
                "the lab holds no Secrets: envFrom secretRef cannot be met",
            ));
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => expand(value, &env),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    let labels = pod.metadata.labels.clone().unwrap_or_default();
                    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                    let path = field.field_path.as_str();
                    let keyed = |prefix: &str, map: &BTreeMap<String, String>| {
                        path.strip_prefix(prefix)
                            .and_then(|k| k.strip_suffix("']"))
                            .map(|k| map.get(k).cloned().unwrap_or_default())
                    };
                    match path {
                        "metadata.name" => name.clone(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => sandbox.uid.clone(),
                        "spec.nodeName" => {
                            pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
                        }
                        "spec.serviceAccountName" => {
                            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                        }
                        "status.podIP" | "status.podIPs" => sandbox.ip.to_string(),
                        "status.hostIP" | "status.hostIPs" => sandbox.host_ip.clone(),
                        _ => match keyed("metadata.labels['", &labels)
                            .or_else(|| keyed("metadata.annotations['", &annotations))
                        {
                            Some(value) => value,
                            None => {
                                return Err(Waiting::new(
                                    "CreateContainerConfigError",
                                    format!("unsupported fieldPath: {path}"),
                                ));
                            }
                        },
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    match config_map(&key.name, key.optional)? {
                        Some(map) => match map["data"][&key.key].as_str() {
                            Some(value) => value.to_string(),
                            None if key.optional == Some(true) => continue,
                            None => {
                                return Err(Waiting::new(
                                    "CreateContainerConfigError",
                                    format!(
                                        "couldn't find key {} in ConfigMap {namespace}/{}",
                                        key.key, key.name
                                    ),
                                ));
                            }
                        },
                        None => continue,
                    }
                } else {
                    return Err(Waiting::new(
                        "CreateContainerConfigError",
                        format!(
                            "the lab's kubelet cannot fill env {} (only values, fieldRef and configMapKeyRef)",
                            var.name
                        ),
                    ));
                }
            }
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The pod's hostname: `spec.hostname`, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars().take(63).collect()
}

/// The runtime spec of `container`'s `restart`th run, or why it cannot start.
pub fn spec(
    api: &Api,
    sandbox: &Sandbox,
    container: &Container,
    image: &Image,
    restart: u32,
) -> Result<ContainerSpec, Waiting> {
    let pod = &sandbox.pod;
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let pod_security = pod_spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let label = pod_label(pod, &sandbox.uid);
    let explicit_uid = security.run_as_user.or(pod_security.run_as_user);
    let uid = explicit_uid.map_or(image.uid, |u| u as u32);
    let gid = security.run_as_group.or(pod_security.run_as_group).map_or(image.gid, |g| g as u32);
    if security.run_as_non_root.or(pod_security.run_as_non_root) == Some(true) && uid == 0 {
        let message = if explicit_uid.is_some() {
            format!(
                "container's runAsUser breaks non-root policy (pod: {label:?}, container: {})",
                container.name
            )
        } else {
            format!(
                "container has runAsNonRoot and image will run as root (pod: {label:?}, container: {})",
                container.name
            )
        };
        return Err(Waiting::new("CreateContainerConfigError", message));
    }
    let env = environment(api, sandbox, container)?;
    let command = container.command.clone().filter(|c| !c.is_empty());
    let args = container.args.clone().filter(|a| !a.is_empty());
    let argv: Vec<String> = match (command, args) {
        (Some(command), args) => command.into_iter().chain(args.unwrap_or_default()).collect(),
        (None, Some(args)) => image.entrypoint.iter().cloned().chain(args).collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
    // NB: privileged containers never get here (the kubelet refuses them, see `pod`).
    let capabilities: Vec<String> = {
        let dropped: Vec<String> =
            security.capabilities.iter().flat_map(|c| c.drop.iter().flatten()).cloned().collect();
        let added: Vec<String> =
            security.capabilities.iter().flat_map(|c| c.add.iter().flatten()).cloned().collect();
        let all_dropped = dropped.iter().any(|d| d == "ALL");
        let mut set: Vec<String> = DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !all_dropped && !dropped.contains(c))
            .collect();
        for cap in added {
            let cap = cap.trim_start_matches("CAP_").to_string();
            if cap == "ALL" {
                set = caps::all()
                    .iter()
                    .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
                    .collect();
            } else if !set.contains(&cap) {
                set.push(cap);
            }
        }
        set.into_iter().map(|c| format!("CAP_{c}")).collect()
    };
    let name = &container.name;
    let dir = sandbox.dir.join("containers").join(name);
    std::fs::create_dir_all(&dir).map_err(io("make the container's directory"))?;
    let termination = dir.join(format!("{restart}-termination-log"));
    std::fs::write(&termination, b"").map_err(io("make the termination message file"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o666))
            .map_err(io("open the termination message file"))?;
    }
    let root = dir.join(format!("{restart}-root"));
    std::fs::create_dir_all(&root).map_err(io("make the container's root"))?;
    let read_only_root = security.read_only_root_filesystem == Some(true);
    let etc = |file: &str| sandbox.dir.join("etc").join(file);
    let mut mounts = vec![
        Mount { source: etc("hosts"), target: "/etc/hosts".into(), read_only: false },
        Mount { source: etc("resolv.conf"), target: "/etc/resolv.conf".into(), read_only: read_only_root },
        Mount { source: etc("hostname"), target: "/etc/hostname".into(), read_only: read_only_root },
    ];
    for mount in container.volume_mounts.iter().flatten() {
        let Some((source, always_read_only)) = sandbox.volumes.get(&mount.name) else {
            return Err(Waiting::new(
                "CreateContainerConfigError",
                format!("volume {:?} is not mounted", mount.name),
            ));
        };
        let source = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub) => sub_path(source, sub, &mount.name, name)?,
            None => source.clone(),
        };
        let read_only = *always_read_only || mount.read_only == Some(true);
        mounts.push(Mount { source, target: mount.mount_path.clone(), read_only });
    }
    let termination_path =
        container.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    mounts.push(Mount { source: termination.clone(), target: termination_path, read_only: false });
    Ok(ContainerSpec {
        netns: sandbox.netns.clone(),
        root,
        image: image.files.clone(),
        argv,
        env,
        working_dir: container.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
        uid,
        gid,
        groups: pod_security.supplemental_groups.iter().flatten().map(|g| *g as u32).collect(),
        capabilities,
        no_new_privileges: security.allow_privilege_escalation == Some(false),
        read_only_root,
        hostname: hostname(pod),
        mounts,
        termination_log: termination,
        ipc_sysctls: pod_security
            .sysctls
            .iter()
            .flatten()
            .filter(|s| s.name.starts_with("kernel."))
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect(),
        join: None,
        start_error: dir.join(format!("{restart}-start-error")),
    })
}

/// `sub` of volume directory `volume`, made if missing as the kubelet makes it, and refused
/// unless it resolves inside the volume (a symlink a container left in a shared emptyDir must
/// not mount a host path into another).
fn sub_path(volume: &Path, sub: &str, volume_name: &str, container: &str) -> Result<PathBuf, Waiting> {
    let refuse = |why: String| {
        Waiting::new(
            "CreateContainerConfigError",
            format!(
                "failed to prepare subPath for volumeMount {volume_name:?} of container {container:?}: {why}"
            ),
        )
    };
    let path = volume.join(sub);
    if !path.exists() && volume.is_dir() {
        std::fs::create_dir_all(&path).map_err(|e| refuse(e.to_string()))?;
    }
    let (inside, base) = match (path.canonicalize(), volume.canonicalize()) {
        (Ok(inside), Ok(base)) => (inside, base),
        (Err(e), _) | (_, Err(e)) => return Err(refuse(e.to_string())),
    };
    if !inside.starts_with(&base) {
        return Err(refuse(format!("subpath {sub:?} resolves outside the volume")));
    }
    Ok(inside)
}

/// The file `container`'s `restart`th run logs to.
pub fn log_path(sandbox_dir: &Path, container: &str, restart: u32) -> PathBuf {
    sandbox_dir.join("containers").join(container).join(format!("{restart}.log"))
}

/// The termination message of a container that exited with `code`: what it wrote to its
/// termination-message file (at most 4 KiB), else, with `FallbackToLogsOnError` and a failure,
/// the end of its log (80 lines, at most 2 KiB).
pub fn termination_message(
    spec: &ContainerSpec,
    container: &Container,
    log: &Path,
    code: i32,
) -> Option<String> {
    let written = std::fs::read(&spec.termination_log).unwrap_or_default();
    if !written.is_empty() {
        let end = written.len().min(4096);
        return Some(String::from_utf8_lossy(&written[..end]).into_owned());
    }
    if code == 0 || container.termination_message_policy.as_deref() != Some("FallbackToLogsOnError") {
        return None;
    }
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    let start = tail.len().saturating_sub(2048);
    let start = (start..=tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
    Some(tail[start..].to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_references_expand_as_the_kubelet_expands_them() {
        let env = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())];
        assert_eq!(expand("x$(A)-$(B)", &env), "x1-two");
        assert_eq!(expand("$$(A) $(C) $", &env), "$(A) $(C) $");
    }

    #[test]
    fn a_sub_path_stays_inside_its_volume() {
        let dir = std::env::temp_dir().join(format!("netpol-verify-subpath-{}", std::process::id()));
        let volume = dir.join("volume");
        std::fs::create_dir_all(&volume).expect("a scratch volume");
        let made = sub_path(&volume, "a/b", "data", "c").expect("a sub path inside");
        assert!(made.is_dir() && made.ends_with("a/b"), "{made:?}");
        std::os::unix::fs::symlink("/etc", volume.join("escape")).expect("a symlink");
        let refused = sub_path(&volume, "escape", "data", "c").expect_err("an escape refused");
        assert_eq!(refused.reason, "CreateContainerConfigError");
        assert!(refused.message.contains("outside the volume"), "{}", refused.message);
        std::fs::remove_dir_all(&dir).expect("scratch removed");
    }
}
