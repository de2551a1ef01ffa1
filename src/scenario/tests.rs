use super::*;
use kube_core::SelectorExt;

fn error(text: &str) -> String {
    match load("s.yaml", text) {
        Ok(scenario) => panic!("expected an error, got {scenario:?}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: s\n";

#[test]
fn every_built_in_scenario_loads() {
    for (name, text) in BUILT_IN {
        let scenario = load(name, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scenario.name, name);
        assert!(!scenario.description.is_empty(), "{name} has no description");
    }
    let defaults: Vec<String> = resolve(&[]).unwrap_or_default().into_iter().map(|s| s.name).collect();
    assert_eq!(defaults, DEFAULT_SET);
}

#[test]
fn a_group_loads_with_its_target_ports_and_intent() {
    let text = format!(
        "{HEAD}groups:\n- name: web\n  from: {{names: [a]}}\n  to:\n    pods:\n      selector: {{matchLabels: {{app: web}}}}\n  ports: [8080, 53/udp]\n  intent: deny\n"
    );
    let scenario = load("s.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let Body::Groups(groups) = scenario.body else { panic!("no groups") };
    assert_eq!(groups[0].ports, vec![(8080, Protocol::Tcp), (53, Protocol::Udp)]);
    assert_eq!(groups[0].intent, Intent::Deny);
    assert!(groups[0].from.matches("a", &BTreeMap::new()) && !groups[0].from.matches("b", &BTreeMap::new()));
    let Target::Pods { selector, .. } = &groups[0].to else { panic!("not pods") };
    assert!(selector.matches(&BTreeMap::from([("app".to_string(), "web".to_string())])));
}

#[test]
fn an_unknown_field_names_its_line_and_path() {
    let text = format!("{HEAD}groups:\n- name: g\n  to: {{ip: 10.0.0.1}}\n  port: [80]\n  intent: deny\n");
    let message = error(&text);
    assert!(message.starts_with("s.yaml:7: groups[0].port: "), "{message}");
    assert!(message.contains("unknown field `port`"), "{message}");
}

#[test]
fn a_bad_intent_port_or_address_is_an_error_at_its_field() {
    let group = |to: &str, ports: &str, intent: &str| {
        format!("{HEAD}groups:\n- name: g\n  to: {to}\n  ports: {ports}\n  intent: {intent}\n")
    };
    let message = error(&group("{ip: 10.0.0.1}", "[80]", "maybe"));
    assert!(message.starts_with("s.yaml:8: groups[0].intent: unknown variant `maybe`"), "{message}");
    let message = error(&group("{ip: 10.0.0.1}", "[http]", "deny"));
    assert!(message.starts_with("s.yaml:7: groups[0].ports[0]: \"http\" is not a port"), "{message}");
    let message = error(&group("{ip: 10.0.0.300}", "[80]", "deny"));
    assert!(message.contains("groups[0].to.ip: \"10.0.0.300\" is not an IP address"), "{message}");
    let message = error(&group("{ip: 10.0.0.1}", "[80/SCTP]", "deny"));
    assert!(message.contains("SCTP cannot be probed"), "{message}");
    let message = error(&group("{ip: 10.0.0.1, clusterDns: {via: service}}", "[80]", "deny"));
    assert!(message.contains("groups[0].to: needs exactly one of"), "{message}");
    let message = error(&group("{clusterDns: {via: service}}", "[53]", "allow"));
    assert!(message.contains("leave ports out"), "{message}");
}

#[test]
fn the_header_is_checked() {
    let message = error("apiVersion: v1\nkind: Scenario\nname: s\ngroups: []\n");
    assert!(message.starts_with("s.yaml:1: apiVersion: must be netpol-verify.io/v1alpha1"), "{message}");
    let message = error(&format!("{HEAD}groups: []\n"));
    assert!(message.starts_with("s.yaml:4: groups: needs at least one group"), "{message}");
    let message =
        error("apiVersion: netpol-verify.io/v1alpha1\nkind: Scenario\nname: Bad_Name\ngroups: []\n");
    assert!(message.starts_with("s.yaml:3: name:"), "{message}");
    let message = error("a: [\n");
    assert!(message.starts_with("s.yaml:"), "{message}");
}

#[test]
fn a_selector_with_a_bad_operator_is_an_error() {
    let text = format!(
        "{HEAD}groups:\n- name: g\n  from:\n    selector:\n      matchExpressions: [{{key: a, operator: Near}}]\n  to: {{ip: 10.0.0.1}}\n  ports: [80]\n  intent: deny\n"
    );
    let message = error(&text);
    assert!(message.contains("groups[0].from.selector"), "{message}");
}

#[test]
fn canary_options_are_durations() {
    let scenario =
        load("c.yaml", &format!("{HEAD}canary: {{enforceTimeout: 5s}}\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        scenario.body,
        Body::Canary(CanaryOptions {
            enforce_timeout: Duration::from_secs(5),
            pod_start_window: Duration::from_secs(3)
        })
    );
    let message = error(&format!("{HEAD}canary: {{podStartWindow: forever}}\n"));
    assert!(message.contains("canary.podStartWindow: invalid duration"), "{message}");
}

#[test]
fn unknown_and_duplicate_scenarios_are_errors() {
    let message = resolve(&["nope".into()]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("built-ins are canary, matrix"), "{message}");
    let message = resolve(&["dns".into(), "dns".into()]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("two scenarios are named \"dns\""), "{message}");
}
