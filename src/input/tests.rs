use super::*;

fn source(name: &str, text: &str) -> Source {
    Source { name: name.into(), text: text.into() }
}

fn load_one(text: &str) -> Result<Loaded, InputError> {
    load(&[source("cluster.yaml", text)])
}

fn error(text: &str) -> String {
    load_one(text).expect_err("input is invalid").to_string()
}

const NS_X: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n";

#[test]
fn a_kubectl_list_loads_its_items() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: x}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x}
  spec: {containers: [{name: c, image: i}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: x}
  spec: {podSelector: {}}
metadata:
  resourceVersion: \"\"
";
    let loaded = load_one(text).expect("valid");
    assert_eq!(loaded.snapshot.namespaces().len(), 1);
    assert_eq!(loaded.snapshot.pods().len(), 1);
    assert_eq!(loaded.snapshot.policies().len(), 1);
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
}

#[test]
fn json_input_loads_like_yaml() {
    let text = r#"{
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}
    ]
}"#;
    let loaded = load(&[source("cluster.json", text)]).expect("valid");
    assert_eq!(loaded.snapshot.policies().len(), 1);
}

#[test]
fn other_kinds_are_ignored_with_one_note() {
    let text = format!(
        "{NS_X}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: s, namespace: x}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: x}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: t, namespace: x}}\n"
    );
    let loaded = load_one(&text).expect("valid");
    assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
    assert_eq!(
        loaded.notes[0].0,
        "ignored 3 object(s) of other kinds (ConfigMap: 2, Deployment: 1); only Namespaces, Pods, Services, Nodes and NetworkPolicies matter here"
    );
}

#[test]
fn services_are_kept_for_cluster_dns_and_the_lab() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n\
                spec: {clusterIP: 10.96.0.10, selector: {k8s-app: kube-dns}, ports: [{port: 53, protocol: UDP}]}\n";
    let loaded = load_one(text).expect("valid");
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    let service = &loaded.snapshot.services()[0];
    assert_eq!(service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()), Some("10.96.0.10"));
}

#[test]
fn a_pod_in_a_namespace_missing_from_the_input_is_noted_and_kept() {
    let loaded =
        load_one("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ghost}\n").expect("valid");
    assert_eq!(loaded.snapshot.pods().len(), 1);
    assert!(
        loaded.notes.iter().any(|n| n.0.starts_with("namespace ghost is referenced but not in the input"))
    );
}

#[test]
fn an_empty_file_is_an_error() {
    assert_eq!(
        error(""),
        "cluster.yaml: the file is empty (expected Namespaces, Pods and NetworkPolicies as YAML or JSON)"
    );
    assert!(error("# only a comment\n---\n").contains("the file is empty"));
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    let message = error("apiVersion: v1\nkind: Namespace\nmetadata: {name: x\n");
    assert!(message.starts_with("cluster.yaml:"), "{message}");
    assert!(message.contains("invalid YAML/JSON"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn malformed_json_is_reported_too() {
    let message = load(&[source("c.json", "{\"kind\": \"Pod\",, }")]).expect_err("bad").to_string();
    assert!(message.starts_with("c.json:1:"), "{message}");
}

#[test]
fn an_object_that_fails_to_deserialize_names_the_field_and_its_line() {
    let text = format!(
        "{NS_X}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\nspec:\n  containers:\n  - name: c\n    \
         image: i\n    ports:\n    - containerPort: eighty\n"
    );
    assert_eq!(
        error(&text),
        "cluster.yaml:16: document 2 (Pod x/a): spec.containers[0].ports[0].containerPort: \
         invalid type: string \"eighty\", expected i32"
    );
}

#[test]
fn an_invalid_cidr_is_an_error_at_its_field() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/40
";
    assert_eq!(
        error(text),
        "cluster.yaml:9: document 1 (NetworkPolicy x/p): spec.egress[0].to[0].ipBlock.cidr: \
         \"10.0.0.0/40\" is not a valid CIDR (expected e.g. \"192.168.1.0/24\" or \"2001:db8::/64\")"
    );
}

#[test]
fn an_except_outside_its_cidr_is_an_error() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/16
        except:
        - 10.0.1.0/24
        - 192.168.0.0/24
";
    assert_eq!(
        error(text),
        "cluster.yaml:11: document 1 (NetworkPolicy x/p): spec.ingress[0].from[0].ipBlock.except[1]: \
         192.168.0.0/24 must be a strict subset of cidr 10.0.0.0/16"
    );
}

#[test]
fn an_unknown_selector_operator_is_an_error() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector:
    matchExpressions:
    - key: app
      operator: Equals
      values: [web]
";
    assert_eq!(
        error(text),
        "cluster.yaml:8: document 1 (NetworkPolicy x/p): spec.podSelector.matchExpressions[0].operator: \
         unknown operator \"Equals\": must be In, NotIn, Exists or DoesNotExist"
    );
}

#[test]
fn a_misspelt_policy_field_is_an_error_not_a_silent_select_all() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podselector:
    matchLabels: {app: web}
";
    assert_eq!(
        error(text),
        "cluster.yaml:5: document 1 (NetworkPolicy x/p): spec.podselector: unknown field (check its \
         spelling against the networking.k8s.io/v1 API)"
    );
}

#[test]
fn unknown_pod_fields_are_only_noted() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  futureField: 1\n  containers: []\n";
    let loaded = load_one(text).expect("valid");
    assert!(
        loaded
            .notes
            .iter()
            .any(|n| n.0 == "cluster.yaml:5: document 1 (Pod x/a): ignored unknown field(s) spec.futureField"),
        "{:?}",
        loaded.notes
    );
}

#[test]
fn objects_need_a_kind_and_a_name() {
    assert_eq!(
        error("apiVersion: v1\nmetadata: {name: x}\n"),
        "cluster.yaml:1: document 1: object has no `kind` (expected Namespace, Pod or NetworkPolicy)"
    );
    assert_eq!(
        error("- just\n- a list\n"),
        "cluster.yaml:1: document 1: expected a Kubernetes object (a mapping with apiVersion and kind)"
    );
    assert_eq!(
        error("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n"),
        "cluster.yaml:3: document 1 (Pod x/(unnamed)): metadata.name: required: every object needs a name"
    );
}

#[test]
fn a_wrong_api_version_is_an_error() {
    let message =
        error("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n");
    assert!(message.starts_with("cluster.yaml:1: document 1 (NetworkPolicy x/p): "), "{message}");
    assert!(message.contains("networking.k8s.io/v1"), "{message}");
}

#[test]
fn list_items_are_located_by_index() {
    let text = "\
kind: List
apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: x}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x}
  status: {podIP: 10.0.0.300}
";
    assert_eq!(
        error(text),
        "cluster.yaml:10: document 1, items[1] (Pod x/a): status.podIP: \"10.0.0.300\" is not an IP address"
    );
}

#[test]
fn identical_repeats_are_merged_and_different_ones_rejected() {
    let same = [source("a.yaml", NS_X), source("b.yaml", NS_X)];
    assert_eq!(load(&same).expect("identical objects merge").snapshot.namespaces().len(), 1);
    let policy = |selector: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {{podSelector: {selector}}}\n"
        )
    };
    let different = [source("a.yaml", &policy("{}")), source("b.yaml", &policy("{matchLabels: {a: b}}"))];
    assert_eq!(
        load(&different).expect_err("conflict").to_string(),
        "NetworkPolicy x/p is defined twice, differently: a.yaml:1 (document 1) and b.yaml:1 (document 1)"
    );
}

#[test]
fn an_empty_list_is_fine() {
    let loaded = load_one("apiVersion: v1\nkind: List\nitems: []\n").expect("valid");
    assert!(loaded.snapshot.pods().is_empty());
}

#[test]
fn directories_are_read_file_by_file_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("b.yaml"), NS_X).expect("write");
    std::fs::write(
        dir.path().join("a.json"),
        "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"y\"}}",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not read").expect("write");
    let sources = read_sources(&[dir.path().to_path_buf()]).expect("readable");
    let names: Vec<&str> = sources.iter().map(|s| s.name.rsplit('/').next().unwrap_or_default()).collect();
    assert_eq!(names, ["a.json", "b.yaml"]);
    let empty = tempfile::tempdir().expect("temp dir");
    let err = read_sources(&[empty.path().to_path_buf()]).expect_err("nothing to read");
    assert!(err.to_string().ends_with("no .yaml, .yml or .json files in this directory"));
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = read_sources(&[PathBuf::from("/nonexistent/cluster.yaml")]).expect_err("missing");
    assert!(err.to_string().starts_with("cannot read /nonexistent/cluster.yaml: "), "{err}");
}

#[test]
fn typed_lists_from_the_api_need_no_kind_on_their_items() {
    let text = "\
apiVersion: v1
kind: PodList
items:
- metadata: {name: a, namespace: x}
  spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- metadata: {name: p, namespace: x}
  spec: {podSelector: {}}
";
    let loaded = load_one(text).expect("valid");
    assert_eq!(loaded.snapshot.pods().len(), 1);
    assert_eq!(loaded.snapshot.policies().len(), 1);
}

#[test]
fn non_canonical_cidrs_load_with_a_located_note() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.7/24}
";
    let loaded = load_one(text).expect("older API servers stored this");
    assert_eq!(
        loaded.notes[0].0,
        "cluster.yaml:7: document 1 (NetworkPolicy x/p): spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.7/24\" is not in \
         canonical form: read as 10.0.0.0/24, as older API servers do (1.33+ with StrictIPCIDRValidation rejects it in new \
         objects)"
    );
}

#[test]
fn pods_may_repeat_a_port_name_across_containers_but_not_within_one() {
    let pod = |ports_b: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec:\n  containers:\n  \
             - {{name: one, ports: [{{name: metrics, containerPort: 9100}}]}}\n  - {{name: two, ports: {ports_b}}}\n"
        )
    };
    assert!(
        load_one(&pod("[{name: metrics, containerPort: 9101}]")).is_ok(),
        "kube-proxy's manifests do this"
    );
    let message = error(&pod("[{name: m, containerPort: 1}, {name: m, containerPort: 2}]"));
    assert!(
        message.contains("spec.containers[1].ports[1].name: duplicate port name \"m\" in this container"),
        "{message}"
    );
}

#[test]
fn empty_port_names_and_protocols_mean_none_and_tcp() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers:\n  \
                - {name: c, ports: [{name: '', containerPort: 80, protocol: ''}]}\n";
    assert!(load_one(text).is_ok());
}

#[test]
fn an_object_without_a_namespace_collides_with_the_same_name_in_default() {
    let pod = |ns: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a{ns}}}\n");
    let text = format!("{}---\n{}", pod(""), pod(", namespace: default"));
    assert!(error(&text).starts_with("Pod default/a is defined twice, differently"), "{}", error(&text));
}

#[test]
fn names_the_api_server_would_refuse_are_errors_at_their_field() {
    assert_eq!(
        error("apiVersion: v1\nkind: Namespace\nmetadata: {name: Prod}\n"),
        "cluster.yaml:3: document 1 (Namespace Prod): metadata.name: Invalid value: \"Prod\": a lowercase \
         RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end \
         with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    );
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                  metadata: {name: \"deny\\n  drop\", namespace: x}\nspec: {podSelector: {}}\n";
    assert!(error(policy).contains("metadata.name: Invalid value: \"deny\\n  drop\""), "{}", error(policy));
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: my_ns}\n";
    assert!(error(pod).contains("metadata.namespace: Invalid value: \"my_ns\""), "{}", error(pod));
}

#[test]
fn service_ports_are_checked_like_the_api_server_does() {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: x}\n\
                   spec:\n  ports:\n  - {port: 53, protocol: DNS}\n";
    assert_eq!(
        error(service),
        "cluster.yaml:6: document 1 (Service x/dns): spec.ports[0].protocol: unsupported value \"DNS\": \
         must be \"TCP\", \"UDP\" or \"SCTP\""
    );
}

#[test]
fn policy_kinds_the_engine_does_not_model_are_kept_and_noted() {
    let loaded = load_one(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7, namespace: x}\nspec: {endpointSelector: {}}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: {name: calico, namespace: y}\nspec: {selector: all()}\n---\n\
         apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-all}\nspec: {selector: all()}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kept: Vec<String> = loaded.snapshot.unmodelled().iter().map(ToString::to_string).collect();
    assert_eq!(
        kept,
        [
            "CiliumNetworkPolicy x/l7 (cilium.io/v2)",
            "GlobalNetworkPolicy deny-all (crd.projectcalico.org/v1)",
            "NetworkPolicy y/calico (crd.projectcalico.org/v1)",
        ]
    );
    assert!(loaded.snapshot.policies().is_empty(), "a Calico NetworkPolicy is not a networking.k8s.io one");
    assert_eq!(loaded.notes.iter().filter(|n| n.0.contains("the engine does not model")).count(), 3);
    let touching: Vec<String> = loaded.snapshot.unmodelled_touching("x").map(|u| u.name.clone()).collect();
    assert_eq!(touching, ["l7", "deny-all"]);
}
