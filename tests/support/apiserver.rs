//! A real control plane for the tests (issue 14): etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler as `tests/apiserver/build.sh` builds them from their published Go modules,
//! on loopback. One instance per test binary, started by the first test that asks for it;
//! each test works in namespaces of its own.
//!
//! It is set up as a kubeadm cluster is, in what the tool meets: TLS with a certificate
//! authority made here, a service-account issuer and signing key, `--authorization-mode=Node,RBAC`
//! (the controllers and the scheduler as their own users, bound by the bootstrap roles), and the
//! PodSecurity admission as kubeadm and kind leave it: `privileged` unless a namespace's label
//! says otherwise (the tool labels its own `restricted`), with `restricted` audited and
//! warned everywhere but kube-system.
//!
//! The processes die with the test binary however it ends: each is started under
//! `setpriv --pdeathsig KILL` by a thread that lives as long as the process. What they leave on
//! disk (a folder named after the test binary's pid) is removed by the next start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use netpol_verify::lab::api::tls::Certificates;
use netpol_verify::lab::api::{kubeconfig, new_token};
use rcgen::KeyPair;

/// How long the control plane may take to become ready (a cold machine, two cores).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its files: certificates, kubeconfigs, etcd's data, each process's log.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    pub ca_pem: String,
    /// A kubeconfig for a cluster administrator (group system:masters).
    pub admin: PathBuf,
    processes: Mutex<Vec<(&'static str, Child)>>,
}

/// The control plane of this test binary, started on first use.
pub fn control_plane() -> &'static ControlPlane {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match SHARED.get_or_init(start) {
        Ok(plane) => plane,
        Err(e) => panic!("the real control plane (tests/support/apiserver.rs) did not start: {e}"),
    }
}

impl ControlPlane {
    /// A client acting as the cluster administrator.
    pub async fn admin_client(&self) -> kube::Client {
        client_of(&self.admin).await
    }

    /// A kubeconfig that authenticates with `token` (a service account's, say), in `dir`.
    pub fn kubeconfig_with_token(&self, dir: &Path, name: &str, token: &str) -> PathBuf {
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, kubeconfig(name, &self.server, &self.ca_pem, token))
            .expect("write a kubeconfig");
        path
    }

    /// Creates namespace `name` (with `labels`) and waits, within 30 s, for its `default`
    /// service account, without which the ServiceAccount admission refuses every pod.
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let client = self.admin_client().await;
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.to_string());
        namespace.metadata.labels =
            Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        self.wait_for_default_account(name).await;
    }

    /// Waits, within 30 s, for namespace `name`'s `default` service account (the controller
    /// manager makes it).
    pub async fn wait_for_default_account(&self, name: &str) {
        let accounts = Api::<ServiceAccount>::namespaced(self.admin_client().await, name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "namespace {name} got no default service account within 30 s: is kube-controller-manager running? {}",
                self.log_tail("kube-controller-manager")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of a process's log, for a failure message.
    pub fn log_tail(&self, process: &str) -> String {
        log_tail(&self.dir, process)
    }

    /// What the cluster holds beyond a fresh one's: nodes, node Leases, namespaces but the four
    /// kube-apiserver makes, pods, NetworkPolicies, Services but `default/kubernetes`, as
    /// `kind ns/name` (a sync call: it runs its own runtime in a thread of its own).
    pub fn left_behind(&self) -> Vec<String> {
        let admin = self.admin.clone();
        let look = async move {
            let client = client_of(&admin).await;
            let mut found = Vec::new();
            macro_rules! all {
                ($kind:ty, $label:expr, $keep:expr) => {
                    for object in
                        Api::<$kind>::all(client.clone()).list(&Default::default()).await.expect("listed")
                    {
                        let meta = &object.metadata;
                        let name = format!(
                            "{}/{}",
                            meta.namespace.clone().unwrap_or_default(),
                            meta.name.clone().unwrap_or_default()
                        );
                        let keep: &[&str] = $keep;
                        if !keep.contains(&name.as_str()) {
                            found.push(format!("{} {name}", $label));
                        }
                    }
                };
            }
            use k8s_openapi::api::core::v1::{Node, Pod, Service};
            all!(Node, "node", &[]);
            all!(Namespace, "namespace", &["/default", "/kube-node-lease", "/kube-public", "/kube-system"]);
            all!(Pod, "pod", &[]);
            all!(Service, "service", &["default/kubernetes"]);
            all!(k8s_openapi::api::networking::v1::NetworkPolicy, "networkpolicy", &[]);
            let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(client.clone(), "kube-node-lease");
            for lease in leases.list(&Default::default()).await.expect("listed") {
                found.push(format!("lease kube-node-lease/{}", lease.metadata.name.unwrap_or_default()));
            }
            found
        };
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(look)
        })
        .join()
        .expect("listed what is left")
    }

    /// What [`ControlPlane::left_behind`] finds that `of` picks, once deletions under way are
    /// done (a namespace is finalized after the request that deleted it returns): polled for up
    /// to 30 s.
    pub fn left_behind_once_settled(&self, of: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut left = self.left_behind();
            left.retain(|l| of(l));
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Panics, with its log, if a process of the control plane has exited.
    pub fn assert_running(&self) {
        let mut processes = self.processes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, child) in processes.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited ({status}): {}", log_tail(&self.dir, name));
            }
        }
    }
}

/// A client from a kubeconfig file.
pub async fn client_of(kubeconfig: &Path) -> kube::Client {
    let text = std::fs::read_to_string(kubeconfig).expect("the kubeconfig");
    let parsed = kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default()).await.expect("a config");
    kube::Client::try_from(config).expect("a client")
}

fn start() -> Result<ControlPlane, String> {
    let bin = build()?;
    sweep();
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("etcd")).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let files = Files::write(&dir)?;
    let [etcd_client, etcd_peer, secure] = free_ports()?;
    let server = format!("https://127.0.0.1:{secure}");
    let path = |name: &str| dir.join(name).display().to_string();
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let commands: Vec<(&'static str, Vec<String>)> = vec![
        (
            "etcd",
            vec![
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Test data: losing it to a power cut costs nothing.
                "--unsafe-no-fsync".into(),
            ],
        ),
        (
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // No Endpoints for the kubernetes Service: nothing here reaches it.
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={secure}"),
                format!("--tls-cert-file={}", path("apiserver.crt")),
                format!("--tls-private-key-file={}", path("apiserver.key")),
                format!("--client-ca-file={}", path("ca.crt")),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=Node,RBAC".into(),
                // As kubeadm and kind run it: privileged pods are Pod Security's to refuse.
                "--allow-privileged=true".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", path("sa.pub")),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!("--admission-control-config-file={}", path("admission.yaml")),
            ],
        ),
        (
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", path("kube-controller-manager.kubeconfig")),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--controllers=*".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", path("sa.key")),
                format!("--root-ca-file={}", path("ca.crt")),
            ],
        ),
        (
            "kube-scheduler",
            vec![
                format!("--kubeconfig={}", path("kube-scheduler.kubeconfig")),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
        ),
    ];
    let processes = launch(&bin, &dir, commands)?;
    let plane = ControlPlane {
        dir: dir.clone(),
        server,
        ca_pem: files.ca_pem,
        admin: dir.join("admin.kubeconfig"),
        processes: Mutex::new(processes),
    };
    std::fs::write(&plane.admin, kubeconfig("admin", &plane.server, &plane.ca_pem, &files.admin_token))
        .map_err(|e| format!("cannot write the admin kubeconfig: {e}"))?;
    for (user, token) in
        [("kube-controller-manager", &files.controller_token), ("kube-scheduler", &files.scheduler_token)]
    {
        std::fs::write(
            dir.join(format!("{user}.kubeconfig")),
            kubeconfig(user, &plane.server, &plane.ca_pem, token),
        )
        .map_err(|e| format!("cannot write the {user} kubeconfig: {e}"))?;
    }
    wait_ready(&plane)?;
    Ok(plane)
}

/// The four binaries, built (or found in the cache) by tests/apiserver/build.sh.
fn build() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apiserver/build.sh");
    // Its progress goes where the tests' output goes: a first build takes minutes.
    let output = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{script} failed ({}): its messages are above", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bin = stdout.lines().last().map(PathBuf::from).unwrap_or_default();
    if !bin.join("kube-apiserver").is_file() {
        return Err(format!("{script} printed {stdout:?}, not the folder of the binaries"));
    }
    Ok(bin)
}

const PREFIX: &str = "netpol-verify-apiserver-";

/// Removes what control planes of test binaries no longer running left on disk.
fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `N` distinct free loopback ports (held together while chosen, so no two are the same).
fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}")))
        .collect::<Result<_, _>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ports.try_into().map_err(|_| "no free loopback ports".to_string())
}

/// Starts each command from a thread that never ends, under `setpriv --pdeathsig KILL`: the
/// kernel kills them when that thread does, that is when the test binary exits.
fn launch(
    bin: &Path,
    dir: &Path,
    commands: Vec<(&'static str, Vec<String>)>,
) -> Result<Vec<(&'static str, Child)>, String> {
    let (sender, receiver) = mpsc::channel();
    let (bin, dir) = (bin.to_path_buf(), dir.to_path_buf());
    std::thread::Builder::new()
        .name("control-plane".into())
        .spawn(move || {
            let started: Result<Vec<_>, String> = commands
                .into_iter()
                .map(|(name, args)| {
                    let log = std::fs::File::create(dir.join(format!("{name}.log")))
                        .map_err(|e| format!("cannot make {name}'s log: {e}"))?;
                    let err = log.try_clone().map_err(|e| e.to_string())?;
                    Command::new("setpriv")
                        .args(["--pdeathsig", "KILL", "--"])
                        .arg(bin.join(name))
                        .args(args)
                        .stdin(Stdio::null())
                        .stdout(log)
                        .stderr(err)
                        .spawn()
                        .map(|child| (name, child))
                        .map_err(|e| format!("cannot start {name} (setpriv is in util-linux): {e}"))
                })
                .collect();
            let _ = sender.send(started);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start the control plane's thread: {e}"))?;
    receiver.recv().map_err(|e| format!("the control plane's thread ended: {e}"))?
}

/// Waits for `/readyz` to answer `ok`, as long as every process runs. On a thread of its own:
/// the tests that call this run in a runtime of theirs.
fn wait_ready(plane: &ControlPlane) -> Result<(), String> {
    std::thread::scope(|scope| {
        scope.spawn(|| wait_ready_here(plane)).join().unwrap_or_else(|_| Err("the wait panicked".into()))
    })
}

fn wait_ready_here(plane: &ControlPlane) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    let deadline = Instant::now() + READY_WITHIN;
    runtime.block_on(async {
        let client = plane.admin_client().await;
        loop {
            {
                let mut processes = plane.processes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (name, child) in processes.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "{name} exited ({status}) while starting: {}",
                            log_tail(&plane.dir, name)
                        ));
                    }
                }
            }
            let request = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
            let last = match client.request_text(request).await {
                Ok(text) if text.trim() == "ok" => return wait_scheduling(plane, &client, deadline).await,
                Ok(text) => text,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready within {READY_WITHIN:?} (last answer: {last}): {}",
                    log_tail(&plane.dir, "kube-apiserver")
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Waits until the controller manager and the scheduler do their part: a pod in `default`
/// (which needs its service account first) is marked unschedulable, as no node takes it.
async fn wait_scheduling(
    plane: &ControlPlane,
    client: &kube::Client,
    deadline: Instant,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Pod;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "scheduler-ready"},
        "spec": {"containers": [{"name": "c", "image": "registry.internal/pause:1",
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 65532,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}
    }))
    .map_err(|e| e.to_string())?;
    let mut last = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "the control plane does not schedule within {READY_WITHIN:?} ({last}): {}\n{}",
                log_tail(&plane.dir, "kube-controller-manager"),
                log_tail(&plane.dir, "kube-scheduler")
            ));
        }
        match pods.get_opt("scheduler-ready").await {
            Ok(None) => {
                // Refused until the namespace's default service account exists.
                if let Err(e) = pods.create(&PostParams::default(), &pod).await {
                    last = e.to_string();
                }
            }
            Ok(Some(found)) => {
                let conditions = found.status.and_then(|s| s.conditions).unwrap_or_default();
                if conditions.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False") {
                    let _ = pods
                        .delete("scheduler-ready", &kube::api::DeleteParams::default().grace_period(0))
                        .await;
                    return Ok(());
                }
                last = "the pod is not marked unschedulable yet".into();
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_tail(dir: &Path, process: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{process}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "the end of {}/{process}.log:\n{}",
        dir.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// The control plane's credentials and configuration, written into its folder.
struct Files {
    ca_pem: String,
    admin_token: String,
    controller_token: String,
    scheduler_token: String,
}

impl Files {
    fn write(dir: &Path) -> Result<Files, String> {
        // The lab API's: a CA of its own and a serving certificate for 127.0.0.1 it signs.
        let certificates = Certificates::generate("tests")?;
        // The service-account signing key (ES256): the private half signs tokens, the public
        // half verifies them.
        let account_key =
            KeyPair::generate().map_err(|e| format!("cannot make the service-account key: {e}"))?;
        let files = Files {
            ca_pem: certificates.ca_pem.clone(),
            admin_token: new_token()?,
            controller_token: new_token()?,
            scheduler_token: new_token()?,
        };
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
        };
        write("ca.crt", &files.ca_pem)?;
        write("apiserver.crt", &certificates.cert_pem)?;
        write("apiserver.key", &certificates.key_pem)?;
        write("sa.key", &account_key.serialize_pem())?;
        write("sa.pub", &account_key.public_key_pem())?;
        write(
            "tokens.csv",
            &format!(
                "{},admin,admin,\"system:masters\"\n{},system:kube-controller-manager,kube-controller-manager\n{},system:kube-scheduler,kube-scheduler\n",
                files.admin_token, files.controller_token, files.scheduler_token
            ),
        )?;
        write("admission.yaml", ADMISSION)?;
        Ok(files)
    }
}

/// Pod Security as kubeadm and kind configure it, `privileged` enforced by default (so the
/// workload pods a lab attached here publishes are admitted as a user's cluster admits them;
/// the tool's namespaces carry their own `restricted` label, which the tests check is what
/// admits its pods), with `restricted` audited and warned; kube-system exempt.
const ADMISSION: &str = "\
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: privileged
      enforce-version: latest
      audit: restricted
      audit-version: latest
      warn: restricted
      warn-version: latest
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: [kube-system]
";
