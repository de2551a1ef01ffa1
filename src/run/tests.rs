use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::cluster::{APP_LABEL, APP_VALUE};

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn cluster() -> Vec<Namespace> {
    vec![
        namespace("argocd", &[("team", "platform")]),
        namespace("default", &[]),
        namespace("kube-system", &[]),
        namespace("netpol-verify-abc123", &[(APP_LABEL, APP_VALUE), (RUN_LABEL, "abc123")]),
        // The user's own, wearing the common app label (their CronJob of the tool, say).
        namespace("netpol-verify-cron", &[(APP_LABEL, APP_VALUE)]),
        namespace("shop", &[("team", "shop")]),
    ]
}

#[test]
fn system_and_tool_namespaces_are_out_of_scope_by_default() {
    assert_eq!(Scope::default().apply(&cluster()), ["argocd", "default", "netpol-verify-cron", "shop"]);
    let with_system = Scope { include_system: true, ..Scope::default() };
    assert_eq!(
        with_system.apply(&cluster()),
        ["argocd", "default", "kube-system", "netpol-verify-cron", "shop"]
    );
}

#[test]
fn scope_filters_combine() {
    let named = Scope { namespaces: vec!["shop".into(), "kube-system".into()], ..Scope::default() };
    assert_eq!(named.apply(&cluster()), ["kube-system", "shop"], "naming a system namespace includes it");
    let excluded = Scope { exclude: vec!["default".into(), "netpol-verify-cron".into()], ..Scope::default() };
    assert_eq!(excluded.apply(&cluster()), ["argocd", "shop"]);
    let selected = Scope { selector: Some(Selector::from_iter([("team", "shop")])), ..Scope::default() };
    assert_eq!(selected.apply(&cluster()), ["shop"]);
    let tool = Scope { namespaces: vec!["netpol-verify-abc123".into()], ..Scope::default() };
    assert!(tool.apply(&cluster()).is_empty(), "the tool's own namespaces are never probed");
}

#[test]
fn run_ids_are_short_valid_label_values() {
    let id = new_run_id();
    assert_eq!(id.len(), 6);
    assert!(id.starts_with(|c: char| c.is_ascii_lowercase()), "{id}");
    assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{id}");
    crate::validate::NameRule::Label.check(&tool_namespace(&id)).unwrap_or_else(|e| panic!("{e}"));
}

/// An in-memory cluster whose network enforces the stored policies perfectly, with faults to
/// inject: pods that never answer, clients whose batch output is lost, a pod that cannot be
/// created.
mod fake {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use netpol_probe::wire::{Outcome, Plan, ProbeResult, Summary};

    use super::*;
    use crate::cluster::{APP_LABEL, APP_VALUE, BatchOutput, Discovery, RUN_LABEL, Running};
    use crate::engine::Endpoint;
    use crate::model::{Snapshot, key_of};

    #[derive(Debug, Default)]
    pub struct State {
        pub namespaces: Vec<Namespace>,
        pub pods: Vec<Pod>,
        pub policies: Vec<NetworkPolicy>,
        pub dead: BTreeSet<String>,
        pub lost: BTreeSet<String>,
        pub fail_create: Option<String>,
        /// `wait_running` never returns (pods that never start).
        pub hang: bool,
        /// The API server's authorizer refuses this verb and resource (`get pods/log`, say):
        /// batches or cleanup fail with its 403.
        pub refuse: Option<(&'static str, &'static str)>,
        pub calls: Vec<String>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeCluster(pub Arc<Mutex<State>>);

    /// kube-apiserver's RBAC refusal, as the Kubernetes backend reports it.
    fn refused(verb: &str, resource: &str, key: &ObjectKey) -> ClusterError {
        ClusterError::Api {
            what: format!("{verb} {resource} {key}"),
            code: 403,
            message: format!(
                "User \"ci\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{}\"",
                key.namespace
            ),
            fix: format!("grant the tool `{verb}` on `{resource}`"),
        }
    }

    impl FakeCluster {
        pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        fn snapshot(&self) -> Snapshot {
            let state = self.state();
            Snapshot::new(state.namespaces.clone(), state.pods.clone(), state.policies.clone()).0
        }

        fn answer(&self, plan: &Plan, client: Option<&ObjectKey>) -> BatchOutput {
            let snapshot = self.snapshot();
            let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
            let dead = self.state().dead.clone();
            let mut output = BatchOutput {
                results: Vec::new(),
                summary: Some(Summary::default()),
                client_ips: Vec::new(),
            };
            for spec in &plan.probes {
                let target = snapshot
                    .pod_ids()
                    .find(|&id| engine.pod_ip(id).map(|ip| ip.to_string()) == Some(spec.target.clone()));
                let reached = match (target, client.and_then(|c| snapshot.find_pod(c))) {
                    (Some(t), _) if dead.contains(&snapshot.pod_key(t).name) => false,
                    (Some(_), None) => true,
                    (Some(t), Some(c)) => {
                        let protocol = if spec.protocol == Some(netpol_probe::wire::Transport::Udp) {
                            crate::engine::Protocol::Udp
                        } else {
                            crate::engine::Protocol::Tcp
                        };
                        engine.verdict(Endpoint::Pod(c), Endpoint::Pod(t), spec.port, protocol).allowed
                    }
                    (None, _) => false,
                };
                output.results.push(ProbeResult {
                    id: Some(spec.id.clone()),
                    target: spec.target.clone(),
                    port: spec.port,
                    protocol: spec.transport(),
                    query: spec.query.clone(),
                    outcome: if reached { Outcome::Connected } else { Outcome::Timeout },
                    name: if reached { spec.expect_name.clone() } else { None },
                    ms: if reached { 1 } else { spec.timeout_ms },
                    message: None,
                    attempts: None,
                    rcode: None,
                });
            }
            output
        }
    }

    impl Cluster for FakeCluster {
        async fn discover(&self) -> Result<Discovery, ClusterError> {
            self.state().calls.push("discover".into());
            Ok(Discovery { snapshot: self.snapshot(), notes: Vec::new(), detection: None })
        }

        async fn create_namespace(&self, name: &str, run_id: &str) -> Result<(), ClusterError> {
            let mut state = self.state();
            state.calls.push(format!("create namespace {name}"));
            state.namespaces.push(namespace(name, &[(APP_LABEL, APP_VALUE), (RUN_LABEL, run_id)]));
            Ok(())
        }

        async fn delete_namespace(&self, name: &str) -> Result<(), ClusterError> {
            self.state().namespaces.retain(|n| n.metadata.name.as_deref() != Some(name));
            Ok(())
        }

        async fn create_probe_pod(&self, pod: &ProbePod) -> Result<(), ClusterError> {
            let mut state = self.state();
            state.calls.push(format!("create pod {}", pod.key));
            if state.fail_create.as_deref() == Some(pod.key.name.as_str()) {
                return Err(ClusterError::Invalid(format!("pod {}: forbidden", pod.key)));
            }
            let ip = format!("10.244.200.{}", state.pods.len() + 1).parse().ok();
            // The same Pod object the run plans with, as the API server would report it.
            state.pods.push(crate::run::pod_object(pod, Vec::from_iter(ip).as_slice()));
            Ok(())
        }

        async fn delete_pod(&self, key: &ObjectKey) -> Result<(), ClusterError> {
            self.state().pods.retain(|p| key_of(&p.metadata) != *key);
            Ok(())
        }

        async fn create_policy(&self, policy: &NetworkPolicy, _: &str) -> Result<(), ClusterError> {
            if let Some(("create", "networkpolicies")) = self.state().refuse {
                return Err(refused("create", "networkpolicies", &key_of(&policy.metadata)));
            }
            self.state().policies.push(policy.clone());
            Ok(())
        }

        async fn delete_policy(&self, key: &ObjectKey) -> Result<(), ClusterError> {
            self.state().policies.retain(|p| key_of(&p.metadata) != *key);
            Ok(())
        }

        async fn wait_running(&self, pods: &[ObjectKey], _: Duration) -> Result<Vec<Running>, ClusterError> {
            if self.state().hang {
                std::future::pending::<()>().await;
            }
            let snapshot = self.snapshot();
            let engine = Engine::new(&snapshot).map_err(|e| ClusterError::Invalid(e.to_string()))?;
            pods.iter()
                .map(|key| {
                    let ip = snapshot.find_pod(key).and_then(|id| engine.pod_ip(id));
                    ip.map(|ip| Running { key: key.clone(), ip })
                        .ok_or_else(|| ClusterError::NotFound { what: format!("pod {key}") })
                })
                .collect()
        }

        async fn run_batch(
            &self,
            client: &ProbePod,
            plan: &Plan,
            _: Duration,
        ) -> Result<BatchOutput, ClusterError> {
            let key = &client.key;
            self.state().calls.push(format!("batch {key} ({} probes)", plan.probes.len()));
            if let Some(("get", "pods/log")) = self.state().refuse {
                return Err(refused("get", "pods/log", key));
            }
            // Like a Kubernetes client pod: it exists from its first batch on.
            if !self.state().pods.iter().any(|p| key_of(&p.metadata) == *key) {
                self.create_probe_pod(client).await?;
            }
            if self.state().lost.contains(&key.namespace) {
                return Ok(BatchOutput::default());
            }
            let mut output = self.answer(plan, Some(key));
            let snapshot = self.snapshot();
            let engine = Engine::new(&snapshot).map_err(|e| ClusterError::Invalid(e.to_string()))?;
            output.client_ips = snapshot.find_pod(key).and_then(|id| engine.pod_ip(id)).into_iter().collect();
            Ok(output)
        }

        async fn run_node_batch(&self, plan: &Plan, _: Duration) -> Result<BatchOutput, ClusterError> {
            // The node's view comes from the pods' readiness, read with `list pods`.
            if let Some(("list", "pods")) = self.state().refuse {
                return Err(refused("list", "pods", &ObjectKey::new("", "node")));
            }
            Ok(self.answer(plan, None))
        }

        async fn start_poll(
            &self,
            prober: &ProbePod,
            plan: &Plan,
            every: Duration,
            total: Duration,
            _: Duration,
        ) -> Result<crate::cluster::Poller, ClusterError> {
            Ok(crate::cluster::poll::by_batches(self, prober, plan, every, total))
        }

        async fn cleanup(&self, run_id: &str) -> Result<Cleaned, ClusterError> {
            let mut state = self.state();
            state.calls.push(format!("cleanup {run_id}"));
            if let Some(("delete", "pods")) = state.refuse {
                return Err(refused("delete", "pods", &ObjectKey::new("a", "nv-server-t1")));
            }
            let ours = |meta: &ObjectMeta| {
                meta.labels.as_ref().and_then(|l| l.get(RUN_LABEL)).is_some_and(|r| r == run_id)
            };
            let before = (state.pods.len(), state.namespaces.len());
            state.pods.retain(|p| !ours(&p.metadata));
            state.namespaces.retain(|n| !ours(&n.metadata));
            Ok(Cleaned {
                pods: before.0 - state.pods.len(),
                policies: 0,
                namespaces: before.1 - state.namespaces.len(),
            })
        }
    }
}

use fake::FakeCluster;

/// Two namespaces; b admits only its own.
fn fake_cluster() -> FakeCluster {
    let cluster = FakeCluster::default();
    {
        let mut state = cluster.state();
        state.namespaces = vec![namespace("a", &[]), namespace("b", &[])];
        state.policies = vec![
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "same-namespace", "namespace": "b"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        ];
    }
    cluster
}

fn options() -> RunOptions {
    RunOptions {
        run_id: "t1".into(),
        scenarios: crate::scenario::resolve(&["matrix".into()]).unwrap_or_else(|e| panic!("{e}")),
        scope: Scope::default(),
        probe_timeout: Duration::from_millis(100),
        pod_timeout: Duration::from_secs(1),
        sweep_after: Duration::from_secs(3600),
        mimic_workloads: false,
        spread: None,
        control_policies: true,
        control_settle: Duration::ZERO,
    }
}

fn verdicts(report: &RunReport) -> Vec<String> {
    report
        .judged
        .iter()
        .map(|j| {
            format!(
                "{}→{} {}/{} {}",
                j.check.from_namespace,
                j.check.to,
                j.check.probe.target.port,
                j.check.probe.target.protocol,
                j.verdict
            )
        })
        .collect()
}

#[tokio::test]
async fn a_perfect_network_passes_and_everything_is_removed() {
    let cluster = fake_cluster();
    let report = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.judged.iter().all(|j| j.verdict == check::Verdict::Pass), "{:#?}", verdicts(&report));
    assert_eq!(report.judged.len(), 8);
    assert_eq!(report.cleaned, Cleaned { pods: 5, policies: 0, namespaces: 1 });
    let state = cluster.state();
    assert!(state.pods.is_empty(), "{:?}", state.pods);
    // One batch per client pod (and one for the control pod), never one per probe.
    let batches: Vec<&String> = state.calls.iter().filter(|c| c.starts_with("batch")).collect();
    assert_eq!(batches.len(), 3, "{batches:?}");
    assert_eq!(state.calls.last().map(String::as_str), Some("cleanup t1"));
}

#[tokio::test]
async fn lost_results_are_inconclusive_never_passes() {
    let cluster = fake_cluster();
    cluster.state().lost.insert("a".into());
    let report = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for judged in &report.judged {
        let expected = if judged.check.from_namespace == "a" {
            check::Verdict::Inconclusive
        } else {
            check::Verdict::Pass
        };
        assert_eq!(judged.verdict, expected, "{}", judged.detail);
    }
    assert!(
        report.notes.iter().any(|n| n.0.contains("did not finish: 0 of 4 probes reported")),
        "{:?}",
        report.notes
    );
    assert_eq!(report.exit(), crate::error::Exit::Inconclusive);
}

#[tokio::test]
async fn a_permission_the_batches_lack_stops_the_run_naming_the_grant() {
    let cluster = fake_cluster();
    cluster.state().refuse = Some(("get", "pods/log"));
    let error = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.starts_with("running the batch in "), "{error}");
    assert!(error.ends_with("(HTTP 403): grant the tool `get` on `pods/log`"), "{error}");
    assert_eq!(cluster.state().calls.last().map(String::as_str), Some("cleanup t1"));
}

#[tokio::test]
async fn a_run_that_may_not_remove_what_it_made_fails_naming_the_grant_and_the_label() {
    let cluster = fake_cluster();
    cluster.state().refuse = Some(("delete", "pods"));
    let error = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.starts_with("cleanup of run t1 failed (delete pods a/nv-server-t1: User \"ci\" cannot delete"),
        "{error}"
    );
    assert!(error.contains("grant the tool `delete` on `pods`"), "{error}");
    assert!(error.contains("netpol-verify cleanup --run t1"), "{error}");
}

#[tokio::test]
async fn a_dead_target_makes_its_checks_inconclusive() {
    let cluster = fake_cluster();
    cluster.state().dead.insert("nv-server-t1".into());
    let report = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.judged.iter().all(|j| j.verdict == check::Verdict::Inconclusive),
        "{:#?}",
        verdicts(&report)
    );
    assert!(report.judged.iter().all(|j| j.detail.contains("dead target")), "{:#?}", report.judged);
}

#[tokio::test]
async fn a_failed_step_names_the_object_and_still_cleans_up() {
    let cluster = fake_cluster();
    cluster.state().fail_create = Some("nv-server-t1".into());
    let error = run(&cluster, &options(), &progress::Quiet, &CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(error.as_deref(), Some("creating pod a/nv-server-t1: pod a/nv-server-t1: forbidden"));
    let state = cluster.state();
    assert_eq!(state.calls.last().map(String::as_str), Some("cleanup t1"));
    assert!(state.pods.is_empty() && state.namespaces.len() == 2);
}

#[tokio::test]
async fn a_cancelled_run_cleans_up_and_says_so() {
    let cluster = fake_cluster();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let error = run(&cluster, &options(), &progress::Quiet, &cancel).await.err().map(|e| e.to_string());
    assert_eq!(error.as_deref(), Some("interrupted; removed 0 pods, 0 policies and 0 namespaces of run t1"));
    assert_eq!(cluster.state().calls.last().map(String::as_str), Some("cleanup t1"));
}

#[tokio::test]
async fn a_run_cancelled_while_pods_start_removes_what_it_created() {
    let cluster = fake_cluster();
    cluster.state().hang = true;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
    });
    let error = run(&cluster, &options(), &progress::Quiet, &cancel).await.err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("interrupted; removed 3 pods, 0 policies and 1 namespaces of run t1"),
        "servers and the control pod; clients start with their batch"
    );
    let state = cluster.state();
    assert!(state.pods.is_empty() && state.namespaces.len() == 2, "{:?}", state.pods);
}

#[test]
fn a_dual_stack_client_is_planned_with_both_its_addresses() {
    let key = ObjectKey::new("a", "nv-client-r1");
    let client = probe_pod(&key, Role::Client, "r1", &[]);
    let (v4, v6): (std::net::IpAddr, std::net::IpAddr) =
        ("10.244.0.5".parse().expect("v4"), "fd00:10:244::5".parse().expect("v6"));
    let snapshot = crate::model::Snapshot::default().with_pods(vec![pod_object(&client, &[v4, v6])]);
    let engine = Engine::new(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    let id = snapshot.find_pod(&key).expect("the client");
    // ipBlock rules see the address of the target's family, as the network does.
    for (target, expected) in [("fd00:10:244::9", v6), ("10.244.0.9", v4)] {
        let target = crate::engine::Endpoint::Ip(target.parse().expect("an address"));
        let (from, _) = engine.connection_addresses(crate::engine::Endpoint::Pod(id), target);
        assert_eq!(from, Some(expected));
    }
}

fn canary_options() -> RunOptions {
    let text = "apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: canary\ncanary: {enforceTimeout: 2s, podStartWindow: 300ms}\n";
    let scenario = crate::scenario::load("canary.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    RunOptions { scenarios: vec![scenario], ..options() }
}

#[tokio::test]
async fn the_canary_finds_a_network_that_enforces_the_engine_everything_enforced() {
    let cluster = fake_cluster();
    let cancel = CancellationToken::new();
    let report =
        run(&cluster, &canary_options(), &progress::Quiet, &cancel).await.unwrap_or_else(|e| panic!("{e}"));
    let canary = report.canary.as_ref().unwrap_or_else(|| panic!("the canary ran: {:?}", report.incomplete));
    let statuses: Vec<(&str, &str)> = canary.capabilities.iter().map(|c| (c.name, c.status)).collect();
    assert!(
        statuses.iter().all(|(name, status)| *status == "enforced"
            || (*name == "ipBlock except" && *status == "inconclusive")),
        "{statuses:?}"
    );
    assert_eq!(statuses.len(), 9, "{statuses:?}");
    assert!(canary.enforce_latency.is_some());
    assert_eq!(canary.pod_start_window, Some(Duration::ZERO));
}

#[tokio::test]
async fn a_canary_whose_pollers_never_report_says_so_and_is_never_a_pass() {
    let cluster = fake_cluster();
    cluster.state().fail_create = Some("nv-canary-client-t1".into());
    let cancel = CancellationToken::new();
    let report =
        run(&cluster, &canary_options(), &progress::Quiet, &cancel).await.unwrap_or_else(|e| panic!("{e}"));
    let canary = report.canary.as_ref().unwrap_or_else(|| panic!("the canary ran: {:?}", report.incomplete));
    let connectivity = &canary.capabilities[0];
    assert_eq!((connectivity.name, connectivity.status), ("connectivity", "inconclusive"));
    assert!(
        connectivity.detail.contains("nv-canary-t1/nv-canary-client-t1 ended without a single round"),
        "{}",
        connectivity.detail
    );
    assert!(canary.checks.iter().all(|j| j.verdict == check::Verdict::Inconclusive), "{:?}", canary.checks);
    assert_eq!(report.exit(), crate::error::Exit::Inconclusive);
}

#[tokio::test]
async fn a_permission_the_node_probes_or_the_canary_lack_stops_the_run_naming_the_grant() {
    for (refuse, step, options) in [
        (("list", "pods"), "running the node's control probes", options()),
        (("create", "networkpolicies"), "running the canary", canary_options()),
    ] {
        let cluster = fake_cluster();
        cluster.state().refuse = Some(refuse);
        let error = run(&cluster, &options, &progress::Quiet, &CancellationToken::new())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with(step), "{error}");
        let grant = format!("(HTTP 403): grant the tool `{}` on `{}`", refuse.0, refuse.1);
        assert!(error.ends_with(&grant), "{error}");
        assert_eq!(cluster.state().calls.last().map(String::as_str), Some("cleanup t1"));
    }
}
