//! Peers of NetworkPolicy rules (`from` / `to` entries) and label selectors.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};

use super::FieldError;

/// One compiled `from`/`to` entry.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// `podSelector` and/or `namespaceSelector`: a set of pods.
    Pods { namespaces: NamespaceScope, pods: Selector },
    /// `ipBlock`: a CIDR minus its exceptions.
    IpBlock(CidrBlock),
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone)]
pub(crate) enum NamespaceScope {
    /// "Otherwise it selects the pods matching podSelector in the policy's own namespace."
    Own,
    /// "namespaceSelector selects namespaces using cluster-scoped labels ... if present but
    /// empty, it selects all namespaces."
    Selected(Selector),
}

/// An `ipBlock`: "a particular CIDR ... The except entry describes CIDRs that should not be
/// included within this rule."
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CidrBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl CidrBlock {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }

    pub(crate) fn describe(&self) -> String {
        if self.except.is_empty() {
            format!("ipBlock {}", self.cidr)
        } else {
            let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            format!("ipBlock {} except {}", self.cidr, except.join(", "))
        }
    }
}

impl Peer {
    /// Validates and compiles one peer, with the API server's rules: at least one field, and
    /// `ipBlock` alone.
    pub(crate) fn compile(peer: &NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
        match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
            (None, None, None) => Err(FieldError::new(
                field,
                "must specify a peer: one of podSelector, namespaceSelector or ipBlock (an empty \
                 `from`/`to` entry is rejected by the API server; omit `from`/`to` to allow all)",
            )),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                Err(FieldError::new(field, "may not specify both ipBlock and another peer"))
            }
            (None, None, Some(block)) => {
                Ok(Peer::IpBlock(compile_ip_block(block, &format!("{field}.ipBlock"))?))
            }
            (pods, namespaces, None) => {
                let pods = match pods {
                    Some(selector) => compile_selector(selector, &format!("{field}.podSelector"))?,
                    None => Selector::default(),
                };
                let namespaces = match namespaces {
                    Some(selector) => NamespaceScope::Selected(compile_selector(
                        selector,
                        &format!("{field}.namespaceSelector"),
                    )?),
                    None => NamespaceScope::Own,
                };
                Ok(Peer::Pods { namespaces, pods })
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Peer::Pods { namespaces: NamespaceScope::Own, pods } => {
                format!("podSelector {}", describe_selector(pods))
            }
            Peer::Pods { namespaces: NamespaceScope::Selected(ns), pods } if pods.selects_all() => {
                format!("namespaceSelector {}", describe_selector(ns))
            }
            Peer::Pods { namespaces: NamespaceScope::Selected(ns), pods } => format!(
                "namespaceSelector {} and podSelector {}",
                describe_selector(ns),
                describe_selector(pods)
            ),
            Peer::IpBlock(block) => block.describe(),
        }
    }
}

/// A selector as `{}` (everything) or its label-query form, `{pod=a,tier in (db,web)}`.
pub(crate) fn describe_selector(selector: &Selector) -> String {
    format!("{{{selector}}}")
}

/// Whether a selector matches a label set (`None` labels = no labels).
pub(crate) fn selects(
    selector: &Selector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    match labels {
        Some(labels) => selector.matches(labels),
        None => selector.matches(&std::collections::BTreeMap::new()),
    }
}

/// Validates a label selector's expressions as the API server does, then compiles it with
/// kube-core's `Selector` (which implements `matchLabels` and every operator).
pub(crate) fn compile_selector(selector: &LabelSelector, field: &str) -> Result<Selector, FieldError> {
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let here = format!("{field}.matchExpressions[{i}]");
        let has_values = requirement.values.as_ref().is_some_and(|v| !v.is_empty());
        match requirement.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(FieldError::new(
                    format!("{here}.values"),
                    format!("must be specified when operator is {}", requirement.operator),
                ));
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(FieldError::new(
                    format!("{here}.values"),
                    format!("may not be specified when operator is {}", requirement.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(FieldError::new(
                    format!("{here}.operator"),
                    format!("unknown operator {other:?}: must be In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
        if requirement.key.is_empty() {
            return Err(FieldError::new(format!("{here}.key"), "must not be empty"));
        }
    }
    Selector::try_from(selector.clone())
        .map_err(|e| FieldError::new(field, format!("invalid label selector: {e}")))
}

fn compile_ip_block(block: &IPBlock, field: &str) -> Result<CidrBlock, FieldError> {
    let cidr = parse_cidr(&block.cidr, &format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let here = format!("{field}.except[{i}]");
        let net = parse_cidr(text, &here)?;
        // "Except values will be rejected if they are outside the cidr range": the API server
        // requires a strict subset (same family, longer prefix, inside cidr).
        let inside = cidr.contains(&net.network()) && net.prefix_len() > cidr.prefix_len();
        let same_family = matches!((cidr, net), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)));
        if !same_family || !inside {
            return Err(FieldError::new(
                here,
                format!("{text} must be a strict subset of cidr {}", block.cidr),
            ));
        }
        except.push(net);
    }
    Ok(CidrBlock { cidr, except })
}

/// Parses a CIDR the way the API server accepts it: host bits may be set (`10.0.0.1/24` means
/// `10.0.0.0/24`); a bare address without a prefix length is not a CIDR.
fn parse_cidr(text: &str, field: &str) -> Result<IpNet, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(field, "must be specified (a CIDR such as 10.0.0.0/16)"));
    }
    text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
        FieldError::new(
            field,
            format!("{text:?} is not a valid CIDR (expected e.g. \"192.168.1.0/24\" or \"2001:db8::/64\")"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: (!values.is_empty()).then(|| values.iter().map(ToString::to_string).collect()),
            }]),
            match_labels: None,
        }
    }

    fn block(cidr: &str, except: &[&str]) -> Result<CidrBlock, FieldError> {
        let b = IPBlock {
            cidr: cidr.into(),
            except: (!except.is_empty()).then(|| except.iter().map(ToString::to_string).collect()),
        };
        compile_ip_block(&b, "spec.egress[0].to[0].ipBlock")
    }

    #[test]
    fn every_match_expressions_operator_follows_label_selector_semantics() {
        let with_a = labels(&[("pod", "a")]);
        let with_b = labels(&[("pod", "b")]);
        let without = labels(&[("app", "x")]);
        let cases = [
            (expr("pod", "In", &["a", "c"]), [true, false, false]),
            (expr("pod", "NotIn", &["a"]), [false, true, true]),
            (expr("pod", "Exists", &[]), [true, true, false]),
            (expr("pod", "DoesNotExist", &[]), [false, false, true]),
        ];
        for (selector, want) in cases {
            let compiled = compile_selector(&selector, "s").expect("valid selector");
            let got = [with_a.clone(), with_b.clone(), without.clone()].map(|l| selects(&compiled, Some(&l)));
            assert_eq!(got, want, "{selector:?}");
        }
    }

    #[test]
    fn an_empty_selector_selects_everything_even_unlabelled_objects() {
        let compiled = compile_selector(&LabelSelector::default(), "s").expect("valid");
        assert!(selects(&compiled, None));
        assert!(selects(&compiled, Some(&labels(&[("a", "b")]))));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut selector = expr("tier", "In", &["web"]);
        selector.match_labels = Some(labels(&[("pod", "a")]));
        let compiled = compile_selector(&selector, "s").expect("valid");
        assert!(selects(&compiled, Some(&labels(&[("pod", "a"), ("tier", "web")]))));
        assert!(!selects(&compiled, Some(&labels(&[("pod", "a")]))));
        assert!(!selects(&compiled, Some(&labels(&[("tier", "web")]))));
    }

    #[test]
    fn selector_mistakes_are_rejected_with_the_field() {
        let cases = [
            (expr("pod", "Equals", &["a"]), "s.matchExpressions[0].operator", "unknown operator"),
            (expr("pod", "In", &[]), "s.matchExpressions[0].values", "must be specified"),
            (expr("pod", "Exists", &["a"]), "s.matchExpressions[0].values", "may not be specified"),
            (expr("", "Exists", &[]), "s.matchExpressions[0].key", "must not be empty"),
        ];
        for (selector, field, message) in cases {
            let err = compile_selector(&selector, "s").expect_err("invalid");
            assert_eq!(err.field, field);
            assert!(err.message.contains(message), "{}", err.message);
        }
    }

    #[test]
    fn ip_blocks_exclude_their_exceptions() {
        let b = block("10.0.0.0/8", &["10.1.0.0/16"]).expect("valid");
        assert!(b.contains("10.2.3.4".parse().expect("ip")));
        assert!(!b.contains("10.1.3.4".parse().expect("ip")));
        assert!(!b.contains("11.0.0.1".parse().expect("ip")));
        assert!(!b.contains("::1".parse().expect("ip")));
    }

    #[test]
    fn host_bits_in_a_cidr_are_accepted_and_cleared() {
        let b = block("10.0.0.7/24", &[]).expect("valid like the API server");
        assert_eq!(b.cidr.to_string(), "10.0.0.0/24");
        assert!(b.contains("10.0.0.200".parse().expect("ip")));
    }

    #[test]
    fn bad_cidrs_and_exceptions_outside_the_cidr_are_rejected() {
        let cases = [
            (block("10.0.0.0/33", &[]), "ipBlock.cidr", "not a valid CIDR"),
            (block("10.0.0.1", &[]), "ipBlock.cidr", "not a valid CIDR"),
            (block("", &[]), "ipBlock.cidr", "must be specified"),
            (block("10.0.0.0/16", &["10.1.0.0/24"]), "ipBlock.except[0]", "strict subset"),
            (block("10.0.0.0/16", &["10.0.0.0/16"]), "ipBlock.except[0]", "strict subset"),
            (block("10.0.0.0/16", &["10.0.0.0/8"]), "ipBlock.except[0]", "strict subset"),
            (block("10.0.0.0/16", &["fd00::/64"]), "ipBlock.except[0]", "strict subset"),
            (block("10.0.0.0/16", &["nonsense"]), "ipBlock.except[0]", "not a valid CIDR"),
        ];
        for (result, field, message) in cases {
            let err = result.expect_err("invalid");
            assert_eq!(err.field, format!("spec.egress[0].to[0].{field}"));
            assert!(err.message.contains(message), "{}", err.message);
        }
    }

    #[test]
    fn peers_must_name_something_and_ip_block_stands_alone() {
        let empty = Peer::compile(&NetworkPolicyPeer::default(), "spec.ingress[0].from[0]");
        assert!(empty.expect_err("empty").message.contains("must specify a peer"));
        let mixed = NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: "10.0.0.0/8".into(), except: None }),
            pod_selector: Some(LabelSelector::default()),
            namespace_selector: None,
        };
        let err = Peer::compile(&mixed, "spec.ingress[0].from[0]").expect_err("mixed");
        assert!(err.message.contains("both ipBlock and another peer"));
    }
}
