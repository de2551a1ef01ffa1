use super::*;
use crate::cluster::ROLE_LABEL;
use crate::engine::ContainerPort;
use crate::model::ObjectKey;

fn server() -> ProbePod {
    ProbePod {
        node: None,
        key: ObjectKey::new("shop", "nv-server-r1"),
        role: Role::Server,
        run_id: "r1".into(),
        labels: BTreeMap::new(),
        ports: vec![
            ContainerPort { port: 80, protocol: Protocol::Tcp, name: Some("http".into()) },
            ContainerPort { port: 53, protocol: Protocol::Udp, name: None },
        ],
    }
}

#[test]
fn probe_pods_meet_pod_security_restricted() {
    let pod = probe_pod(&server(), &PodOptions::default(), Work::Serve, false);
    let spec = pod.spec.expect("a spec");
    let security = spec.security_context.expect("a pod security context");
    assert_eq!((security.run_as_non_root, security.run_as_user), (Some(true), Some(65534)));
    assert_eq!(security.seccomp_profile.map(|p| p.type_), Some("RuntimeDefault".into()));
    let container = &spec.containers[0];
    let security = container.security_context.clone().expect("a container security context");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(container.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some());
}

#[test]
fn servers_listen_on_low_ports_through_the_safe_sysctl_or_the_one_capability() {
    let pod = probe_pod(&server(), &PodOptions::default(), Work::Serve, false);
    let spec = pod.spec.expect("a spec");
    let sysctls = spec.security_context.and_then(|s| s.sysctls).unwrap_or_default();
    assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(
        spec.containers[0].args.clone().unwrap_or_default(),
        ["serve", "--name", "shop/nv-server-r1", "--tcp", "80", "--udp", "53"]
    );
    let options = PodOptions { low_ports: LowPorts::Capability, ..PodOptions::default() };
    let spec = probe_pod(&server(), &options, Work::Serve, false).spec.expect("a spec");
    assert!(spec.security_context.and_then(|s| s.sysctls).is_none());
    let capabilities =
        spec.containers[0].security_context.clone().and_then(|s| s.capabilities).expect("caps");
    assert_eq!(capabilities.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
}

#[test]
fn a_pod_wearing_a_workloads_labels_never_becomes_ready() {
    let spec = probe_pod(&server(), &PodOptions::default(), Work::Serve, true).spec.expect("a spec");
    assert_eq!(spec.readiness_gates.map(|g| g[0].condition_type.clone()), Some(NEVER_READY.to_string()));
    assert!(spec.containers[0].readiness_probe.is_none());
    let spec = probe_pod(&server(), &PodOptions::default(), Work::Serve, false).spec.expect("a spec");
    assert!(spec.readiness_gates.is_none() && spec.containers[0].readiness_probe.is_some());
}

#[test]
fn clients_run_their_plan_from_a_config_map_and_exit() {
    let client = ProbePod {
        node: None,
        key: ObjectKey::new("shop", "nv-client-r1"),
        role: Role::Client,
        ports: vec![],
        ..server()
    };
    let spec =
        probe_pod(&client, &PodOptions::default(), Work::Batch { probes: 3 }, false).spec.expect("a spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    // The probe's own flags (probe-image/src/main.rs): every probe of the plan at once.
    assert_eq!(
        spec.containers[0].args.clone().unwrap_or_default(),
        ["batch", "--plan", PLAN_PATH, "--concurrency", "3"]
    );
    let mount = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    assert_eq!(format!("{}/plan.json", mount[0].mount_path), PLAN_PATH, "the plan is where the args say");
    assert_eq!(
        spec.volumes.as_ref().and_then(|v| v[0].config_map.clone()).map(|c| c.name),
        Some("nv-client-r1-plan".to_string())
    );
    let map = plan_config_map(&client, "{}");
    assert_eq!(map.metadata.labels.and_then(|l| l.get(RUN_LABEL).cloned()), Some("r1".to_string()));
}

#[test]
fn options_reach_every_pod() {
    let options = PodOptions {
        image: "registry.internal/netpol-probe:0.1.0".into(),
        image_pull_secrets: vec!["mirror".into()],
        tolerate_all_taints: true,
        low_ports: LowPorts::Sysctl,
    };
    let spec = probe_pod(&server(), &options, Work::Serve, false).spec.expect("a spec");
    assert_eq!(spec.containers[0].image.as_deref(), Some("registry.internal/netpol-probe:0.1.0"));
    assert_eq!(spec.image_pull_secrets.map(|s| s[0].name.clone()), Some("mirror".to_string()));
    assert_eq!(spec.tolerations.map(|t| t[0].operator.clone()), Some(Some("Exists".to_string())));
    assert_eq!(images(&options), ["registry.internal/netpol-probe:0.1.0"]);
}

#[test]
fn manifests_print_as_yaml_with_their_type_and_comment() {
    let yaml = to_yaml(&[Manifest::new("the run's namespace", &namespace("netpol-verify-r1", "r1"))]);
    assert!(yaml.starts_with("---\n# the run's namespace\n"), "{yaml}");
    assert!(yaml.contains("apiVersion: v1") && yaml.contains("kind: Namespace"), "{yaml}");
    assert!(yaml.contains("netpol-verify.io/run: r1"), "{yaml}");
}

#[test]
fn pollers_repeat_their_plan_and_every_later_prober_pod_has_a_name_of_its_own() {
    let client =
        ProbePod { role: Role::Client, ports: vec![], key: ObjectKey::new("c", "nv-client"), ..server() };
    let work = Work::Rounds {
        probes: 10_000,
        every: std::time::Duration::from_millis(50),
        total: std::time::Duration::from_secs(3),
    };
    let poller = prober_pod(&client, Turn::Poll(2));
    assert_eq!(poller.key.name, "nv-client-p2");
    let spec = probe_pod(&poller, &PodOptions::default(), work, false).spec.expect("a spec");
    assert_eq!(
        spec.containers[0].args.clone().unwrap_or_default().join(" "),
        format!("batch --plan {PLAN_PATH} --concurrency {MAX_CONCURRENCY} --every 50ms --for 3000ms")
    );
    assert_eq!(prober_pod(&client, Turn::Batch(0)).key.name, "nv-client", "a client's first batch is itself");
    assert_eq!(prober_pod(&client, Turn::Batch(1)).key.name, "nv-client-b1");
    let control = ProbePod { role: Role::Control, ..server() };
    let batch = prober_pod(&control, Turn::Batch(0));
    assert_eq!(batch.key.name, "nv-server-r1-b0");
    assert!(batch.ports.is_empty());
    assert_eq!(
        batch.all_labels().get(ROLE_LABEL).map(String::as_str),
        Some("control"),
        "the prober's own labels"
    );
    assert_eq!(batch_args(Work::Serve, "-"), None);
    assert_eq!(serve_args("x/a", &[80, 81], &[]), ["serve", "--name", "x/a", "--tcp", "80,81"]);
}
