//! The lab's container runtime: `netpol-verify lab container --spec FILE`, a single-threaded
//! process the kubelet starts for each container (and each exec probe). Like runc, it enters
//! the pod's network namespace, gives the container a mount, UTS and IPC namespace of its own
//! and a root of its own — the image's files and nothing else (for a dynamically linked probe
//! build, the host's libraries too), `/dev`, `/proc`, the kubelet's `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`, the pod's volumes and the termination-message file
//! at their paths — makes that root read-only if the spec says so, takes the user, groups and
//! capability sets the spec gives (bounding, permitted and effective; never ambient, as
//! containerd), sets `no_new_privs` for `allowPrivilegeEscalation: false`, and execs the
//! container's command with exactly its environment.

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
    /// The image's files, each shown at `/NAME` in the container.
    pub image: Vec<(PathBuf, String)>,
    /// Show the host's library directories read-only (a dynamically linked binary needs them).
    pub host_libraries: bool,
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
fn mount_point(root: &Path, inside: &str, file: bool) -> Result<PathBuf, String> {
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
    if spec.host_libraries {
        for dir in ["/usr/lib", "/usr/lib64"] {
            if Path::new(dir).is_dir() {
                bind(Path::new(dir), &mount_point(root, dir, false)?, true)?;
            }
        }
        // Debian's merged /usr: /lib and /lib64 are links into it.
        for link in ["/lib", "/lib64"] {
            match std::fs::read_link(link) {
                Ok(to) => std::os::unix::fs::symlink(to, root.join(&link[1..]))
                    .map_err(|e| format!("cannot link {link}: {e}"))?,
                Err(_) if Path::new(link).is_dir() => {
                    bind(Path::new(link), &mount_point(root, link, false)?, true)?
                }
                Err(_) => {}
            }
        }
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
    nix::unistd::chroot(root).map_err(failed("change the root"))?;
    std::env::set_current_dir(&spec.working_dir).map_err(|e| {
        format!("failed to create containerd task: chdir to cwd ({:?}): {e}", spec.working_dir)
    })?;
    nix::unistd::sethostname(&spec.hostname).map_err(failed("set the hostname"))?;
    privileges(spec)?;
    let program = resolve(&spec.argv[0], &spec.env)?;
    let error = std::process::Command::new(program)
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
