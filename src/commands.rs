//! What each subcommand does, with its output streams passed in so tests can drive it.

use std::io::Write;

use tokio_util::sync::CancellationToken;

use crate::cli::{
    LabArgs, LabCommand, LabRunArgs, LabUpArgs, Output, PlanArgs, RunArgs, RunOptionArgs, RunOutput,
};
use crate::engine::{Endpoint, Engine, Protocol};
use crate::error::{Error, Exit};
use crate::input::{load, read_sources};
use crate::lab::{Lab, LabSpec};
use crate::model::{Note, ObjectKey, PodId, Snapshot};
use crate::plan::{self, Probe};
use crate::report;
use crate::run::progress::{self, Progress};
use crate::run::{RunOptions, Scope};

/// `netpol-verify plan`.
pub fn plan(args: &PlanArgs, quiet: bool, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Error> {
    let sources = read_sources(&args.from_file)?;
    let loaded = load(&sources)?;
    let engine = Engine::new(&loaded.snapshot)?;

    if let Some(explain) = &args.explain {
        let [from, to, port] = explain.as_slice() else {
            return Err(Error::Usage("--explain takes FROM TO PORT, e.g. --explain x/a y/b 80/TCP".into()));
        };
        let from = find_pod(&loaded.snapshot, from)?;
        let to = find_pod(&loaded.snapshot, to)?;
        let (port, protocol, port_name) = parse_port(&engine, to, port)?;
        print_notes(err, quiet, &loaded.notes)?;
        match args.output {
            Output::Table => {
                let explanation = engine.explain(from, to, port, protocol);
                out.write_all(report::explain::render(&engine, &explanation).as_bytes())?;
            }
            Output::Json => {
                let probe = Probe { from, to, port, protocol, port_name };
                let expected =
                    [plan::Expected { probe: &probe, verdict: engine.verdict(from, to, port, protocol) }];
                report::json::write_plan(&mut *out, &engine, &expected, &loaded.notes)
                    .map_err(std::io::Error::from)?;
                writeln!(out)?;
            }
        }
        return Ok(());
    }

    let plan = plan::pod_matrix(&engine);
    let notes: Vec<Note> = loaded.notes.iter().chain(&plan.notes).cloned().collect();
    print_notes(err, quiet, &notes)?;
    let expected = plan::expectations(&engine, &plan);
    match args.output {
        Output::Table => out.write_all(report::table::render(&engine, &expected).as_bytes())?,
        Output::Json => {
            report::json::write_plan(&mut *out, &engine, &expected, &notes).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn print_notes(err: &mut dyn Write, quiet: bool, notes: &[Note]) -> Result<(), Error> {
    if !quiet {
        for note in notes {
            writeln!(err, "note: {note}")?;
        }
    }
    Ok(())
}

fn find_pod(snapshot: &Snapshot, text: &str) -> Result<PodId, Error> {
    let key = ObjectKey::parse(text).ok_or_else(|| {
        Error::Usage(format!("{text:?} is not a pod reference: write namespace/name, e.g. x/a"))
    })?;
    if let Some(id) = snapshot.find_pod(&key) {
        return Ok(id);
    }
    if snapshot.is_terminated(&key) {
        return Err(Error::Usage(format!("pod {key} has terminated: it has no network to explain")));
    }
    let known: Vec<String> = snapshot.pod_ids().take(12).map(|id| snapshot.pod_key(id).to_string()).collect();
    let more = if snapshot.pods().len() > known.len() { ", ..." } else { "" };
    Err(Error::Usage(format!("pod {key} is not in the input (pods: {}{more})", known.join(", "))))
}

/// `80`, `80/TCP`, `53/udp`, or a port name `to` declares.
fn parse_port(engine: &Engine<'_>, to: PodId, text: &str) -> Result<(u16, Protocol, Option<String>), Error> {
    let (number, protocol) = match text.split_once('/') {
        Some((number, protocol)) => (number, protocol.parse::<Protocol>().map_err(Error::Usage)?),
        None => (text, Protocol::Tcp),
    };
    if let Ok(port) = number.parse::<u16>() {
        if port == 0 {
            return Err(Error::Usage("port 0 is not a port: use 1-65535".into()));
        }
        let name = engine
            .declared_ports(to)
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
            .and_then(|p| p.name.clone());
        return Ok((port, protocol, name));
    }
    let declared = engine.declared_ports(to);
    match declared.iter().find(|p| p.name.as_deref() == Some(number)) {
        Some(p) if text.contains('/') && p.protocol != protocol => Err(Error::Usage(format!(
            "port {number} of {} is {}/{}, not {protocol}",
            engine.name(Endpoint::Pod(to)),
            p.port,
            p.protocol
        ))),
        Some(p) => Ok((p.port, p.protocol, p.name.clone())),
        None => Err(Error::Usage(format!(
            "{text:?} is neither a port number nor a port name {} declares (write e.g. 80/TCP)",
            engine.name(Endpoint::Pod(to))
        ))),
    }
}

/// `netpol-verify lab ...`.
pub fn lab(command: &LabCommand, quiet: bool, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Error> {
    match command {
        LabCommand::Up(args) => lab_up(args, quiet, out, err),
        LabCommand::Run(_) => Err(Error::Usage("lab run is an async command: use commands::lab_run".into())),
        LabCommand::Down { name: Some(name), .. } => {
            let removed = Lab::down(name)?;
            writeln!(out, "lab {name} removed ({removed} network namespaces)")?;
            Ok(())
        }
        LabCommand::Down { name: None, .. } => {
            let removed = Lab::down_all()?;
            if removed.is_empty() {
                writeln!(out, "no labs")?;
            } else {
                writeln!(out, "removed: {}", removed.join(", "))?;
            }
            Ok(())
        }
        LabCommand::List => {
            let labs = Lab::list();
            if labs.is_empty() {
                writeln!(out, "no labs")?;
                return Ok(());
            }
            writeln!(out, "{:<22} {:<22} {:<13} {:>5}  AGE", "NAME", "STATUS", "CNI", "PODS")?;
            for lab in labs {
                let cni = lab.cni.map_or("-", |c| c.as_str());
                let age = lab.age.map_or_else(|| "-".to_string(), |a| format!("{}s", a.as_secs()));
                writeln!(out, "{:<22} {:<22} {:<13} {:>5}  {age}", lab.name, lab.status, cni, lab.pods)?;
            }
            Ok(())
        }
        LabCommand::Exec { name, pod, command } => lab_exec(name, pod, command),
        LabCommand::Env { name } => {
            let kubeconfig = lab_kubeconfig(&Lab::open(name)?)?;
            writeln!(out, "export KUBECONFIG={}", kubeconfig.display())?;
            Ok(())
        }
        LabCommand::Serve { name, images } => crate::lab::daemon::serve(name, images).map_err(Error::Usage),
        LabCommand::Container { .. } => {
            Err(Error::Usage("lab container runs from main, before any thread starts".into()))
        }
        LabCommand::ServeDns { records, tcp, udp } => {
            crate::lab::dns::serve(records, tcp, udp).map_err(Error::Usage)
        }
    }
}

/// Builds a lab from `args` and starts its API; on failure nothing of it is left.
fn bring_up(
    args: &LabArgs,
    images: &[String],
    run_id: Option<&str>,
) -> Result<(Lab, std::path::PathBuf, Vec<Note>), Error> {
    let sources = read_sources(&args.from_file)?;
    let loaded = load(&sources)?;
    Engine::new(&loaded.snapshot)?;
    // What killed runs and dead labs left, before this lab takes its share of the host.
    let swept: Vec<Note> = Lab::sweep_abandoned().into_iter().map(Note).collect();
    let exe =
        std::env::current_exe().map_err(|e| Error::Usage(format!("cannot find this program's path: {e}")))?;
    let (probe, verify) = crate::lab::binaries_next_to(exe)?;
    let name = args.name.clone().or_else(|| run_id.map(|id| format!("run-{id}")));
    let spec = LabSpec {
        name,
        cni: args.cni,
        enforce_delay: args.enforce_delay.unwrap_or_default(),
        nodes: usize::from(args.nodes),
        probe,
        verify,
        api_server: args.api_server.as_deref().map(absolute).transpose()?,
    };
    let (mut lab, notes) = Lab::up(&spec, &loaded.snapshot)?;
    let started = lab.start_api(images).and_then(|kubeconfig| {
        // `lab up`'s lab outlives it: it lives as long as its API process. `lab run`'s is its own.
        if run_id.is_none() {
            lab.hand_over_to_api()?;
        }
        Ok(kubeconfig)
    });
    match started {
        Ok(kubeconfig) => Ok((lab, kubeconfig, swept.into_iter().chain(loaded.notes).chain(notes).collect())),
        Err(e) => {
            let _ = Lab::down(&lab.state.name);
            Err(e.into())
        }
    }
}

/// `path` from the root: the lab's processes run elsewhere.
fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, Error> {
    if !path.is_file() {
        return Err(Error::Usage(format!("--api-server {}: no such kubeconfig file", path.display())));
    }
    std::path::absolute(path).map_err(|e| Error::Usage(format!("--api-server {}: {e}", path.display())))
}

fn lab_up(args: &LabUpArgs, quiet: bool, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Error> {
    let (lab, kubeconfig, notes) = bring_up(&args.lab, &args.images, None)?;
    print_notes(err, quiet, &notes)?;
    let state = &lab.state;
    let delay = match state.enforce_delay_ms {
        0 => "policies take effect at once".to_string(),
        ms => format!("policy changes take effect after {ms} ms"),
    };
    writeln!(
        out,
        "lab {} is up: {} pods in {} namespaces, CNI {} ({delay})",
        state.name,
        state.pods.len(),
        state.namespaces.len(),
        state.cni.as_str()
    )?;
    writeln!(out, "  cluster DNS {}:53, metadata 169.254.169.254:80, pods:", state.dns_ip)?;
    for pod in &state.pods {
        let ports: Vec<String> = pod
            .tcp
            .iter()
            .map(|p| format!("{p}/TCP"))
            .chain(pod.udp.iter().map(|p| format!("{p}/UDP")))
            .chain(pod.dns_udp.iter().map(|p| format!("{p}/UDP(DNS)")))
            .chain(pod.dns_tcp.iter().map(|p| format!("{p}/TCP(DNS)")))
            .collect();
        writeln!(out, "    {:<30} {:<15} {}", pod.key.to_string(), pod.ip.to_string(), ports.join(" "))?;
    }
    if let Some(pod) = state.pods.first() {
        let target = state.pods.iter().find(|p| p.key != pod.key && !p.tcp.is_empty()).unwrap_or(pod);
        let port = target.tcp.first().copied().unwrap_or(80);
        writeln!(out, "try it:")?;
        writeln!(
            out,
            "  netpol-verify lab exec {} {} -- netpol-probe connect {}:{port} --expect-name {}",
            state.name, pod.key, target.ip, target.key
        )?;
    }
    match &state.api_server {
        Some(_) => writeln!(
            out,
            "attached to the API server of this kubeconfig, as node {} (kubectl get nodes shows it):\n  export KUBECONFIG={}",
            state.node_names().join(", "),
            kubeconfig.display()
        )?,
        None => writeln!(
            out,
            "its Kubernetes API (kubectl get pods -A works):\n  export KUBECONFIG={}",
            kubeconfig.display()
        )?,
    }
    writeln!(out, "remove it:\n  netpol-verify lab down {}", state.name)?;
    Ok(())
}

/// Replaces this process with `command` inside the pod's network namespace.
fn lab_exec(name: &str, pod: &str, command: &[String]) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    crate::lab::host::require_tools()?;
    let lab = Lab::open(name)?;
    let key = ObjectKey::parse(pod).ok_or_else(|| {
        Error::Usage(format!("{pod:?} is not a pod reference: write namespace/name, e.g. x/a"))
    })?;
    let netns = lab.pod_netns(&key).ok_or_else(|| Error::Usage(format!("lab {name} has no pod {key}")))?;
    let [program, rest @ ..] = command else {
        return Err(Error::Usage("lab exec needs a command after --".into()));
    };
    let program =
        if program == "netpol-probe" { lab.state.probe.display().to_string() } else { program.clone() };
    let failure =
        std::process::Command::new("ip").args(["netns", "exec", &netns, &program]).args(rest).exec();
    Err(Error::Usage(format!("cannot run {program} in {netns}: {failure}")))
}

/// `netpol-verify run`: against the kubeconfig's cluster, or a lab's API (`--lab`).
pub async fn run(
    args: &RunArgs,
    quiet: bool,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> Result<Exit, Error> {
    if args.dry_run {
        return dry_run(args, out).await;
    }
    let mut options = run_options(&args.options)?;
    options.spread = spread(&args.pods);
    let files = open_reports(&args.options)?;
    let (kube, target) = match &args.lab {
        Some(name) => lab_connection(name)?,
        None => {
            let target = match &args.kube.context {
                Some(context) => format!("cluster (context {context})"),
                None => "cluster (current context)".to_string(),
            };
            (args.kube.clone(), target)
        }
    };
    let cluster = connect(&kube, pod_options(&args.pods)).await?;
    run_on(&cluster, &target, (&options, files), &args.options, quiet, out, cancel).await
}

/// How to reach lab `name`'s API, and how reports name it.
fn lab_connection(name: &str) -> Result<(crate::cli::KubeArgs, String), Error> {
    let lab = Lab::open(name)?;
    let kubeconfig = lab_kubeconfig(&lab)?;
    let target = lab_target(&lab);
    Ok((crate::cli::KubeArgs { kubeconfig: Some(kubeconfig), context: None }, target))
}

/// Lab `lab`'s kubeconfig, which exists while its API runs.
fn lab_kubeconfig(lab: &Lab) -> Result<std::path::PathBuf, Error> {
    let name = &lab.state.name;
    let kubeconfig =
        lab.state.api_server.clone().unwrap_or_else(|| crate::lab::daemon::kubeconfig_path(name));
    if !kubeconfig.exists() {
        return Err(Error::Usage(format!(
            "lab {name} has no API running (its kubeconfig {} is missing): remove it with `netpol-verify lab down {name}` and bring it up again",
            kubeconfig.display()
        )));
    }
    Ok(kubeconfig)
}

/// `lab NAME (CNI MODE, enforcement delay D)`.
fn lab_target(lab: &Lab) -> String {
    let delay = match lab.state.enforce_delay_ms {
        0 => String::new(),
        ms => format!(", enforcement delay {ms} ms"),
    };
    format!("lab {} (CNI {}{delay})", lab.state.name, lab.state.cni.as_str())
}

async fn connect(
    args: &crate::cli::KubeArgs,
    pods: crate::manifest::PodOptions,
) -> Result<crate::kubernetes::KubeCluster, Error> {
    let connection = crate::kubernetes::Connection {
        kubeconfig: args.kubeconfig.as_deref(),
        context: args.context.as_deref(),
    };
    crate::kubernetes::KubeCluster::connect(&connection, pods).await.map_err(|e| Error::Usage(e.to_string()))
}

/// `netpol-verify cleanup`.
/// `netpol-verify cleanup`: one run's objects, or every run's older than `older_than` (what a
/// crashed run, a CronJob's killed pod say, left).
pub async fn cleanup(
    run: Option<&str>,
    older_than: std::time::Duration,
    kube: &crate::cli::KubeArgs,
    out: &mut dyn Write,
) -> Result<Exit, Error> {
    use crate::cluster::Cluster;
    let cluster = connect(kube, crate::manifest::PodOptions::default()).await?;
    let (cleaned, which) = match run {
        Some(run) => (cluster.cleanup(run).await, format!("of run {run}")),
        None if older_than.is_zero() => (cluster.cleanup_all().await, "of every run".into()),
        None => (cluster.sweep(older_than).await, format!("older than {}", crate::cli::age(older_than))),
    };
    let cleaned = cleaned.map_err(|e| Error::Usage(e.to_string()))?;
    writeln!(
        out,
        "removed {} pods, {} policies and {} namespaces {which}",
        cleaned.pods, cleaned.policies, cleaned.namespaces
    )?;
    Ok(Exit::Pass)
}

/// `run --dry-run`: the manifests a run would create, from files, a lab or the cluster
/// (read only).
async fn dry_run(args: &RunArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let mut options = run_options(&args.options)?;
    options.spread = spread(&args.pods);
    let snapshot = if !args.from_file.is_empty() {
        let loaded = load(&read_sources(&args.from_file)?)?;
        loaded.snapshot
    } else {
        let kube = match &args.lab {
            Some(name) => lab_connection(name)?.0,
            None => args.kube.clone(),
        };
        let cluster = connect(&kube, pod_options(&args.pods)).await?;
        let discovery =
            crate::cluster::Cluster::discover(&cluster).await.map_err(|e| Error::Usage(e.to_string()))?;
        discovery.snapshot
    };
    Engine::new(&snapshot)?;
    let existing: Vec<String> =
        snapshot.namespaces().iter().map(|n| crate::model::name_of(&n.metadata).to_string()).collect();
    if let Some(missing) = options.scope.namespaces.iter().find(|n| !existing.contains(n)) {
        return Err(Error::Usage(format!(
            "namespace {missing} does not exist (namespaces: {})",
            existing.join(", ")
        )));
    }
    let pods = pod_options(&args.pods);
    let manifests = crate::run::dry_run::manifests(&snapshot, &options, &pods).map_err(Error::Usage)?;
    out.write_all(crate::manifest::to_yaml(&manifests).as_bytes())?;
    Ok(Exit::Pass)
}

/// `--spread`, and whether it may choose tainted nodes (`--tolerate-all-taints`).
fn spread(args: &crate::cli::PodArgs) -> Option<bool> {
    args.spread.then_some(args.tolerate_all_taints)
}

/// The probe pods' options from the command line.
pub fn pod_options(args: &crate::cli::PodArgs) -> crate::manifest::PodOptions {
    crate::manifest::PodOptions {
        image: args.image.clone().unwrap_or_else(|| crate::manifest::DEFAULT_IMAGE.to_string()),
        image_pull_secrets: args.image_pull_secrets.clone(),
        tolerate_all_taints: args.tolerate_all_taints,
        low_ports: match args.low_ports {
            crate::cli::LowPortsArg::Sysctl => crate::manifest::LowPorts::Sysctl,
            crate::cli::LowPortsArg::Capability => crate::manifest::LowPorts::Capability,
        },
    }
}

/// `netpol-verify images`.
pub fn images(image: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
    let options = crate::manifest::PodOptions {
        image: image.unwrap_or(crate::manifest::DEFAULT_IMAGE).to_string(),
        ..crate::manifest::PodOptions::default()
    };
    for image in crate::manifest::images(&options) {
        writeln!(out, "{image}")?;
    }
    Ok(())
}

/// `netpol-verify lab run`: lab up, `run` against the lab's API exactly as against any
/// cluster, lab down (the lab goes whatever happens).
pub async fn lab_run(
    args: &LabRunArgs,
    quiet: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
    cancel: &CancellationToken,
) -> Result<Exit, Error> {
    let mut options = run_options(&args.options)?;
    options.spread = spread(&args.pods);
    let files = open_reports(&args.options)?;
    let images: Vec<String> = args.pods.image.iter().cloned().collect();
    let (lab, kubeconfig, notes) = {
        let (args, images, run_id) = (args.lab.clone(), images.clone(), options.run_id.clone());
        tokio::task::spawn_blocking(move || bring_up(&args, &images, Some(&run_id)))
            .await
            .map_err(|e| Error::Usage(format!("bringing the lab up failed: {e}")))??
    };
    let name = lab.state.name.clone();
    let target = lab_target(&lab);
    if !quiet {
        for note in &notes {
            // NB: nothing may return between lab up and lab down.
            let _ = writeln!(err, "note: {note}");
        }
    }
    let kube = crate::cli::KubeArgs { kubeconfig: Some(kubeconfig), context: None };
    let result = match connect(&kube, pod_options(&args.pods)).await {
        Ok(cluster) => run_on(&cluster, &target, (&options, files), &args.options, quiet, out, cancel).await,
        Err(e) => Err(e),
    };
    let down = tokio::task::spawn_blocking(move || Lab::down(&name)).await;
    let down = match down {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    match (result, down) {
        (result, None) => result,
        (Ok(_), Some(down)) => {
            Err(Error::Usage(format!("the run finished, but removing the lab failed: {down}")))
        }
        (Err(e), Some(down)) => Err(Error::Usage(format!("{e}; also, removing the lab failed: {down}"))),
    }
}

/// The report files, opened before anything else: a path that cannot be written should not
/// cost a run. Not truncated until the report is written, so a failed run leaves them be.
#[derive(Debug, Default)]
struct ReportFiles {
    junit: Option<(std::path::PathBuf, std::fs::File)>,
    markdown: Option<(std::path::PathBuf, std::fs::File)>,
}

fn open_reports(args: &RunOptionArgs) -> Result<ReportFiles, Error> {
    let open = |path: &Option<std::path::PathBuf>| -> Result<_, Error> {
        let Some(path) = path else { return Ok(None) };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
        Ok(Some((path.clone(), file)))
    };
    Ok(ReportFiles { junit: open(&args.junit_file)?, markdown: open(&args.markdown_file)? })
}

fn run_options(args: &RunOptionArgs) -> Result<RunOptions, Error> {
    let scenarios = crate::scenario::resolve(&args.scenarios)?;
    let selector = args
        .namespace_selector
        .as_deref()
        .map(crate::selector::parse_labels)
        .transpose()
        .map_err(|e| Error::Usage(format!("--namespace-selector: {e}")))?;
    if args.probe_timeout.is_zero() || args.probe_timeout > std::time::Duration::from_secs(300) {
        return Err(Error::Usage("--probe-timeout must be more than 0 and at most 5m".into()));
    }
    if args.control_settle > std::time::Duration::from_secs(600) {
        return Err(Error::Usage("--control-settle must be at most 10m".into()));
    }
    Ok(RunOptions {
        run_id: crate::run::new_run_id(),
        scenarios,
        scope: Scope {
            namespaces: args.namespaces.clone(),
            exclude: args.exclude_namespaces.clone(),
            selector,
            include_system: args.include_system,
        },
        probe_timeout: args.probe_timeout,
        pod_timeout: args.timeout,
        sweep_after: args.sweep_older_than,
        mimic_workloads: args.mimic_workloads,
        spread: None,
        control_policies: !args.no_control_policies,
        control_settle: args.control_settle,
    })
}

async fn run_on<C: crate::cluster::Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    target: &str,
    (options, files): (&RunOptions, ReportFiles),
    args: &RunOptionArgs,
    quiet: bool,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> Result<Exit, Error> {
    use std::io::IsTerminal;
    let ReportFiles { junit, markdown } = files;
    let progress: Box<dyn Progress> = if quiet {
        Box::new(progress::Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(progress::Bars::new())
    } else {
        Box::new(progress::Lines::new())
    };
    let mut report = match crate::run::run(cluster, options, progress.as_ref(), cancel).await {
        Ok(report) => report,
        Err(crate::run::RunError::Noted { error, notes }) => {
            print_notes(&mut std::io::stderr(), quiet, &notes)?;
            return Err(Error::Run(error));
        }
        Err(e) => return Err(e.into()),
    };
    report.target = target.to_string();
    let exit = report.exit();
    if let Some((path, file)) = junit {
        file.set_len(0)
            .map_err(std::io::Error::other)
            .and_then(|()| {
                report::junit::write(std::io::BufWriter::new(file), &report).map_err(std::io::Error::other)
            })
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some((path, mut file)) = markdown {
        file.set_len(0)
            .and_then(|()| file.write_all(report::markdown::render(&report).as_bytes()))
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    let written = match args.output {
        RunOutput::Text => {
            let style =
                report::run_text::Style { color: std::io::stdout().is_terminal(), verbose: args.verbose };
            out.write_all(report::run_text::render(&report, style).as_bytes())
        }
        RunOutput::Json => report::run_json::write(&mut *out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
    };
    match written {
        // A reader that went away (`| head`) does not change what the run found.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(exit),
    }
}
