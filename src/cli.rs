//! The command line (clap derive). Parsing only; [`crate::commands`] does the work.

use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lab::cni::CniMode;

/// Proves whether a Kubernetes cluster's network enforces the NetworkPolicies its API server stores.
#[derive(Debug, Parser)]
#[command(name = "netpol-verify", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Print only results and errors, no notes.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Predict what every pod-to-pod connection should do, from stored objects (no cluster needed).
    ///
    /// Reads Namespaces, Pods and NetworkPolicies, plans one probe for every ordered pair of
    /// distinct pods on every port the destination declares, and prints what the stored
    /// policies say about each.
    Plan(PlanArgs),
    /// Probe the cluster: does its network enforce what its NetworkPolicies say?
    ///
    /// Deploys a probe client and a probe server into every namespace in scope, probes the
    /// connections the scenarios name (all concurrently, one batch per client), compares what
    /// got through with what the stored policies allow, reports a verdict per connection, and
    /// removes everything it created. Exit status: 0 all pass, 1 findings, 2 could not run,
    /// 3 only inconclusive checks besides passes.
    Run(Box<RunArgs>),
    /// A cluster emulated in Linux network namespaces, with a CNI you choose (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Remove what runs left on a Kubernetes cluster: the objects of runs (labelled
    /// app.kubernetes.io/name=netpol-verify and with a run id) older than `--older-than`, or
    /// every object of one run.
    Cleanup {
        /// Only this run's objects (its id is in every report), whatever their age.
        #[arg(long, value_name = "ID", conflicts_with = "older_than")]
        run: Option<String>,

        /// Only objects older than this (a run still going is younger); 0s removes every run's.
        #[arg(long, value_name = "AGE", default_value = "1h", value_parser = parse_age)]
        older_than: Duration,

        #[command(flatten)]
        kube: KubeArgs,
    },
    /// List every image a run uses, for mirroring into an air-gapped registry.
    Images {
        /// The probe image you will pass to `run --image`.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run against this lab (see `netpol-verify lab up`): its Kubernetes API, as with
    /// `--kubeconfig $(netpol-verify lab env NAME)`.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["from_file", "kubeconfig", "context"])]
    pub lab: Option<String>,

    /// Print the manifests (YAML) the run would create, and create nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: take the cluster's objects from files (as for `plan`), not a cluster.
    #[arg(short = 'f', long = "from-file", value_name = "FILE", requires = "dry_run")]
    pub from_file: Vec<PathBuf>,

    #[command(flatten)]
    pub pods: PodArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub options: RunOptionArgs,
}

/// Which cluster, as kubectl takes it.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// How probe pods are made on a Kubernetes cluster.
#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    /// The probe image, for every pod the tool creates (default: the project's image at this
    /// version; `netpol-verify images` lists what to mirror).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// An image pull secret for the probe pods (repeatable; it must exist in each namespace).
    #[arg(long = "image-pull-secret", value_name = "NAME")]
    pub image_pull_secrets: Vec<String>,

    /// Let probe pods run on tainted nodes too.
    #[arg(long)]
    pub tolerate_all_taints: bool,

    /// Place the probe servers on one node and probe each namespace from a client on that
    /// node and from one on another (some CNIs enforce differently within a node).
    #[arg(long)]
    pub spread: bool,

    /// How servers listen on ports below 1024 as non-root: the safe sysctl
    /// net.ipv4.ip_unprivileged_port_start, or the NET_BIND_SERVICE capability.
    #[arg(long, value_enum, default_value_t = LowPortsArg::Sysctl)]
    pub low_ports: LowPortsArg,
}

/// `--low-ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LowPortsArg {
    Sysctl,
    Capability,
}

/// What every run takes, on a cluster or a lab.
#[derive(Debug, Clone, Args)]
pub struct RunOptionArgs {
    /// A scenario to run: a built-in (canary, matrix, dns, metadata, default-deny, gitops) or a
    /// scenario file (repeatable; default: canary, matrix, dns, metadata).
    #[arg(short, long = "scenario", value_name = "NAME|FILE")]
    pub scenarios: Vec<String>,

    /// Probe only this namespace (repeatable; default: every namespace but kube-system,
    /// kube-public and kube-node-lease).
    #[arg(short, long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Never probe this namespace (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    pub exclude_namespaces: Vec<String>,

    /// Probe only namespaces whose labels match, e.g. `team=shop,env!=dev,!legacy`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub namespace_selector: Option<String>,

    /// Also probe kube-system, kube-public and kube-node-lease.
    #[arg(long)]
    pub include_system: bool,

    /// Output format on standard output.
    #[arg(short, long, value_enum, default_value_t = RunOutput::Text)]
    pub output: RunOutput,

    /// Also write a JUnit XML report here (a testsuite per scenario, a testcase per check).
    #[arg(long, value_name = "PATH")]
    pub junit_file: Option<PathBuf>,

    /// Also write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "PATH")]
    pub markdown_file: Option<PathBuf>,

    /// How long each probe waits for an answer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = netpol_probe::text::parse_duration)]
    pub probe_timeout: Duration,

    /// How long probe pods may take to start.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = netpol_probe::text::parse_duration)]
    pub timeout: Duration,

    /// First remove what earlier runs left (a crashed run's objects) once older than this.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_age)]
    pub sweep_older_than: Duration,

    /// Also deploy, per distinct workload label set in a namespace, a probe server wearing those
    /// labels on the workload's ports, so the workload's own policies are tested (on a cluster it
    /// never becomes Ready: no Service sends it real traffic).
    #[arg(long)]
    pub mimic_workloads: bool,

    /// Add no control policies: checks that lack a positive control stay inconclusive. By
    /// default the run adds, for its duration, NetworkPolicies selecting only its own probe pods
    /// that let its control pod reach servers no policy lets any probe reach, and clients whose
    /// egress is denied everywhere reach the control pod.
    #[arg(long)]
    pub no_control_policies: bool,

    /// How long to wait after adding control policies before probing (the CNI enforces them
    /// asynchronously; the canary's enforcement latency says how long yours takes).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = netpol_probe::text::parse_duration)]
    pub control_settle: Duration,

    /// Also print truth tables (text output).
    #[arg(short, long)]
    pub verbose: bool,
}

/// How `run` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOutput {
    /// The summary, capabilities and failures, for people.
    Text,
    /// One JSON document with every check (schema: docs/run-json.md).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab from objects and leave it running.
    ///
    /// Every pod gets a network namespace with its address, runs `netpol-probe serve` on its
    /// container ports under its own name, and is routed through a node namespace where the
    /// chosen CNI mode enforces the NetworkPolicies. Cluster DNS answers on the kube-dns Service
    /// IP; a metadata service answers on 169.254.169.254:80. Nothing routes out of the lab.
    Up(LabUpArgs),
    /// Build a lab, run `netpol-verify run` against its Kubernetes API, and remove it: one command.
    Run(Box<LabRunArgs>),
    /// Print the shell commands that point kubectl at a lab (`eval "$(netpol-verify lab env NAME)"`).
    Env {
        /// The lab.
        name: String,
    },
    /// Remove a lab: its processes, namespaces and record.
    Down {
        /// The lab to remove.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Remove every lab, and what any killed `lab up` left behind.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// List labs (and leftovers of killed ones).
    List,
    /// Run a command inside a lab pod's network namespace, like `kubectl exec`.
    ///
    /// `netpol-probe` as the command means the lab's own probe binary.
    Exec {
        /// The lab.
        name: String,
        /// The pod, as namespace/name.
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a lab's Kubernetes API, kubelet and CNI (what `lab up` starts).
    #[command(hide = true)]
    Serve {
        name: String,
        /// Images the kubelet runs as the probe image.
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Run one container of a lab pod (the lab kubelet's runtime).
    #[command(hide = true)]
    Container {
        #[arg(long)]
        spec: PathBuf,
    },
    /// Serve the lab's cluster DNS (what lab kube-dns pods run).
    #[command(hide = true)]
    ServeDns {
        #[arg(long)]
        records: PathBuf,
        /// TCP ports to answer on.
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<u16>,
        /// UDP ports to answer on.
        #[arg(long, value_delimiter = ',')]
        udp: Vec<u16>,
    },
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub lab: LabArgs,

    /// An image the lab's kubelet runs as the probe image, besides the project's
    /// (ghcr.io/netpol-verify/netpol-probe, any tag): the one you pass to `run --image`
    /// (repeatable).
    #[arg(long = "image", value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// What a lab is made of.
#[derive(Debug, Clone, Args)]
pub struct LabArgs {
    /// Objects as for `plan --from-file` (repeatable, `-` for standard input, directories).
    #[arg(short = 'f', long = "from-file", value_name = "FILE", required = true)]
    pub from_file: Vec<PathBuf>,

    /// The lab's name (default: a generated one): lowercase letters, digits and '-'.
    #[arg(long)]
    pub name: Option<String>,

    /// What the emulated CNI enforces.
    #[arg(long, value_enum, default_value_t = CniMode::Enforcing)]
    pub cni: CniMode,

    /// How late policy changes take effect, like a slow CNI: 500ms, 2s, 1m (default: at once).
    #[arg(long, value_name = "DURATION", value_parser = netpol_probe::text::parse_duration)]
    pub enforce_delay: Option<Duration>,

    /// How many nodes the lab shows (for --spread). They share the lab's one network: which
    /// node a pod runs on changes no packet's path.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub nodes: u8,

    /// Attach the lab to the API server of this kubeconfig (its current context) instead of
    /// serving an API of its own: the lab registers as its node(s), publishes its input there,
    /// runs the pods bound to its nodes and enforces the NetworkPolicies the server holds. The
    /// server must run on this machine: it reaches the lab's kubelet on 127.0.0.1.
    #[arg(long, value_name = "KUBECONFIG")]
    pub api_server: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LabRunArgs {
    #[command(flatten)]
    pub lab: LabArgs,

    /// How probe pods are made (the lab's kubelet runs `--image` as the probe image).
    #[command(flatten)]
    pub pods: PodArgs,

    #[command(flatten)]
    pub options: RunOptionArgs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Objects as YAML or JSON, e.g. `kubectl get ns,pods,netpol -A -o yaml` (repeatable; `-` reads
    /// standard input; a directory reads its .yaml, .yml and .json files).
    #[arg(short = 'f', long = "from-file", value_name = "FILE", required = true)]
    pub from_file: Vec<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Explain one connection in plain words, e.g. `--explain x/a y/b 80/TCP`. PORT is a number
    /// with an optional /TCP, /UDP or /SCTP (TCP by default), or a port name the destination declares.
    #[arg(long, num_args = 3, value_names = ["FROM", "TO", "PORT"])]
    pub explain: Option<Vec<String>>,
}

/// How `plan` prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Truth tables, one per port and protocol (rows = from, columns = to).
    Table,
    /// One JSON document with every probe (schema: docs/plan-json.md).
    Json,
}

/// An age: a whole number with `s`, `m`, `h` or `d` (`90m`, `1h`, `2d`).
/// An age as [`parse_age`] reads it: the largest unit that divides it.
pub fn age(age: Duration) -> String {
    let seconds = age.as_secs();
    let (unit, size) = [("d", 86_400), ("h", 3600), ("m", 60)]
        .into_iter()
        .find(|(_, size)| seconds > 0 && seconds.is_multiple_of(*size))
        .unwrap_or(("s", 1));
    format!("{}{unit}", seconds / size)
}

pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid age {text:?}: write a whole number with s, m, h or d, e.g. 90m, 1h, 2d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_seconds_to_days() {
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_age("1y").is_err() && parse_age("h").is_err() && parse_age("").is_err());
        for text in ["90m", "1h", "2d", "45s", "0s"] {
            assert_eq!(parse_age(text).map(age).as_deref(), Ok(text), "read back as written");
        }
    }

    #[test]
    fn every_default_parses() {
        use clap::Parser;
        // A default that its own parser refuses would break every run.
        let cli = Cli::try_parse_from(["netpol-verify", "run", "--lab", "x"]).map_err(|e| e.to_string());
        assert!(cli.is_ok(), "{cli:?}");
        let cli =
            Cli::try_parse_from(["netpol-verify", "lab", "run", "-f", "x.yaml"]).map_err(|e| e.to_string());
        assert!(cli.is_ok(), "{cli:?}");
    }
}
