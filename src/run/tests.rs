use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

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
        namespace("netpol-verify-abc123", &[(APP_LABEL, APP_VALUE)]),
        namespace("shop", &[("team", "shop")]),
    ]
}

#[test]
fn system_and_tool_namespaces_are_out_of_scope_by_default() {
    assert_eq!(Scope::default().apply(&cluster()), ["argocd", "default", "shop"]);
    let with_system = Scope { include_system: true, ..Scope::default() };
    assert_eq!(with_system.apply(&cluster()), ["argocd", "default", "kube-system", "shop"]);
}

#[test]
fn scope_filters_combine() {
    let named = Scope { namespaces: vec!["shop".into(), "kube-system".into()], ..Scope::default() };
    assert_eq!(named.apply(&cluster()), ["kube-system", "shop"], "naming a system namespace includes it");
    let excluded = Scope { exclude: vec!["default".into()], ..Scope::default() };
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
