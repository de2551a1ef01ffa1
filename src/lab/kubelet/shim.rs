//! The lab's container runtime: `netpol-verify lab container --spec FILE`, a single-threaded
//! process the kubelet starts for each container. Like runc, it enters the pod's network
//! namespace, gives the container a mount, UTS and IPC namespace of its own and a root of its
//! own — the image's files and nothing else (a dynamically linked probe build brings the
//! libraries it links, each at its path), `/dev`, `/proc`, the kubelet's `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`, the pod's volumes and the termination-message file
//! at their paths — pivots into that root (the host's is unmounted), makes it read-only if the
//! spec says so, sets the pod's IPC sysctls, takes the user, groups and capability sets the
//! spec gives (bounding, permitted and effective; never ambient, as containerd), sets
//! `no_new_privs` for `allowPrivilegeEscalation: false`, and execs the container's command with
//! exactly its environment. An exec probe joins the running container's namespaces instead
//! (`join`), as `runc exec` does.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// On the host.
    pub source: PathBuf,
    /// In the container.
    pub target: String,
    pub read_only: bool,
}

/// Everything the runtime needs to start one container process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The pod's network namespace (`/run/netns/...`).
    pub netns: PathBuf,
    /// An empty directory the container's root is mounted on.
    pub root: PathBuf,
    /// The image's files (and the libraries a dynamically linked binary needs): each host
    /// file, and its path in the container.
    pub image: Vec<(PathBuf, String)>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The capabilities it holds (`CAP_NET_BIND_SERVICE`, ...): bounding, permitted and
    /// effective; inheritable and ambient stay empty, as containerd leaves them.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    /// The host file behind `terminationMessagePath`.
    pub termination_log: PathBuf,
    /// The pod's sysctls of its IPC namespace (`kernel.*`), set in the container's.
    pub ipc_sysctls: Vec<(String, String)>,
    /// Join the namespaces of this running container process instead of making a container
    /// (an exec probe).
    pub join: Option<u32>,
    /// Where to write why the container could not start (the exit code is then 128).
    pub start_error: PathBuf,
}

/// The exit code of a container that could not start (containerd's `StartError`).
pub const START_ERROR: i32 = 128;

/// Runs the container of the spec at `path`: returns only if it could not start (the error
/// is also written to the spec's `start_error` file).
pub fn run(path: &Path) -> i32 {
    let spec: ContainerSpec = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_slice(&t).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("netpol-verify lab container: cannot read {}: {e}", path.display());
            return START_ERROR;
        }
    };
    // Opened before the root changes; closed by a successful exec (close-on-exec).
    let report = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&spec.start_error);
    let error = match start(&spec) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if let Ok(mut report) = report {
        let _ = report.write_all(error.as_bytes());
    }
    eprintln!("{error}");
    START_ERROR
}

enum Never {}

fn failed(what: &str) -> impl FnOnce(nix::Error) -> String + '_ {
    move |e| format!("failed to create containerd task: OCI runtime create failed: {what}: {e}")
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    let what = format!("mount {} on {}", source.display(), target.display());
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(failed(&what))?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(failed(&what))?;
    }
    Ok(())
}

/// Makes `path` under the container's root: a directory, or (for a file source) an empty file.
/// NB: never outside it (the API refuses `..` in mount paths; this holds anyway).
fn mount_point(root: &Path, inside: &str, file: bool) -> Result<PathBuf, String> {
    if inside.split('/').any(|segment| segment == "..") {
        return Err(format!(
            "failed to create containerd task: the mount path {inside:?} climbs out of the container"
        ));
    }
    let path = root.join(inside.trim_start_matches('/'));
    let io = |e: std::io::Error| format!("failed to create containerd task: cannot make {inside}: {e}");
    if file {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if !path.exists() {
            std::fs::File::create(&path).map_err(io)?;
        }
    } else {
        std::fs::create_dir_all(&path).map_err(io)?;
    }
    Ok(path)
}

fn start(spec: &ContainerSpec) -> Result<Never, String> {
    match spec.join {
        Some(pid) => join(pid)?,
        None => build(spec)?,
    }
    std::env::set_current_dir(&spec.working_dir).map_err(|e| {
        format!("failed to create containerd task: chdir to cwd ({:?}): {e}", spec.working_dir)
    })?;
    // The kubelet's end of standard input says when the container is made: it is closed
    // as the command execs (or as this fails), replaced by /dev/null.
    let null = std::fs::File::open("/dev/null")
        .map_err(|e| format!("failed to create containerd task: open /dev/null: {e}"))?;
    privileges(spec)?;
    let program = resolve(&spec.argv[0], &spec.env)?;
    let error = std::process::Command::new(program)
        .stdin(null)
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
        .exec();
    Err(format!(
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: {:?}: {error}: unknown",
        spec.argv[0]
    ))
}

/// Enters the namespaces of running container process `pid` (IPC, UTS, network, then mount,
/// which also moves this process into the container's root).
fn join(pid: u32) -> Result<(), String> {
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|e| {
            format!("the container (process {pid}) is gone: cannot open its {ns} namespace: {e}")
        })
    };
    let namespaces = [
        (open("ipc")?, CloneFlags::CLONE_NEWIPC),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
        (open("net")?, CloneFlags::CLONE_NEWNET),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
    ];
    for (file, kind) in &namespaces {
        setns(file, *kind).map_err(failed("enter the container's namespaces"))?;
    }
    Ok(())
}

/// Makes the container: its namespaces, its root and what is mounted in it, then pivots into it.
fn build(spec: &ContainerSpec) -> Result<(), String> {
    let netns =
        std::fs::File::open(&spec.netns).map_err(|e| format!("cannot open {}: {e}", spec.netns.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).map_err(failed("enter the pod's network namespace"))?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(failed("unshare namespaces"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(failed("make / private"))?;
    let root = &spec.root;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .map_err(failed("mount the container's root"))?;
    for (source, name) in &spec.image {
        bind(source, &mount_point(root, name, true)?, true)?;
    }
    let dev = mount_point(root, "/dev", false)?;
    mount(Some("tmpfs"), &dev, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755,size=64k"))
        .map_err(failed("mount /dev"))?;
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(device);
        bind(&host, &mount_point(root, &format!("/dev/{device}"), true)?, false)?;
    }
    let proc = mount_point(root, "/proc", false)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(failed("mount /proc"))?;
    for volume in &spec.mounts {
        let file = volume.source.is_file();
        bind(&volume.source, &mount_point(root, &volume.target, file)?, volume.read_only)?;
    }
    if spec.read_only_root {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(None::<&str>, root, None::<&str>, flags, None::<&str>)
            .map_err(failed("make the root read-only"))?;
    }
    // Into the new root; the host's is detached, so nothing of it stays reachable.
    std::env::set_current_dir(root).map_err(|e| format!("failed to create containerd task: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(failed("pivot into the container's root"))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(failed("detach the host's root"))?;
    std::env::set_current_dir("/").map_err(|e| format!("failed to create containerd task: {e}"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(failed("set the hostname"))?;
    for (key, value) in &spec.ipc_sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value)
            .map_err(|e| format!("failed to create containerd task: sysctl {key}: {e}"))?;
    }
    Ok(())
}

/// `argv[0]` as the runtime finds it: a path as given, else the first match on the
/// container's `PATH`.
fn resolve(program: &str, env: &[(String, String)]) -> Result<PathBuf, String> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", |(_, v)| v.as_str());
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!(
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: {program:?}: executable file not found in $PATH: unknown"
            )
        })
}

/// The user, groups and capabilities of the spec, as runc applies them before exec: the
/// bounding set first, then the user (keeping the permitted set), then permitted and
/// effective, with no inheritable or ambient capabilities.
fn privileges(spec: &ContainerSpec) -> Result<(), String> {
    use caps::{CapSet, Capability};
    let wanted: caps::CapsHashSet = spec
        .capabilities
        .iter()
        .map(|c| c.parse::<Capability>().map_err(|_| format!("unknown capability {c}")))
        .collect::<Result<_, _>>()?;
    let caps_failed =
        |what: &str, e: caps::errors::CapsError| format!("failed to create containerd task: {what}: {e}");
    for cap in caps::all() {
        if !wanted.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| caps_failed("drop from the bounding set", e))?;
        }
    }
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(failed("set groups"))?;
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    nix::unistd::setresgid(gid, gid, gid).map_err(failed("set the group"))?;
    nix::sys::prctl::set_keepcaps(true).map_err(failed("keep capabilities"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(failed("set the user"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(failed("keep capabilities"))?;
    caps::set(None, CapSet::Permitted, &wanted)
        .map_err(|e| caps_failed("set the permitted capabilities", e))?;
    caps::set(None, CapSet::Effective, &wanted)
        .map_err(|e| caps_failed("set the effective capabilities", e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| caps_failed("clear the inheritable capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_failed("clear the ambient capabilities", e))?;
    if spec.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(failed("set no_new_privs"))?;
    }
    Ok(())
}
