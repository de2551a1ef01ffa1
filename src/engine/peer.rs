//! Peers of NetworkPolicy rules (`from` / `to` entries) and label selectors.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
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
    pub(crate) fn compile(
        peer: &NetworkPolicyPeer,
        field: &str,
        warnings: &mut Vec<FieldError>,
    ) -> Result<Peer, FieldError> {
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
                Ok(Peer::IpBlock(compile_ip_block(block, &format!("{field}.ipBlock"), warnings)?))
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
    for key in selector.match_labels.iter().flatten().map(|(k, _)| k) {
        validate_label_key(key, &format!("{field}.matchLabels"))?;
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let here = format!("{field}.matchExpressions[{i}]");
        validate_label_key(&requirement.key, &format!("{here}.key"))?;
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
    }
    // NB: values are not checked: stored objects may hold values later API servers reject
    // (`AllowInvalidLabelValueInSelector`), and any value has a well-defined meaning.
    Selector::try_from(selector.clone())
        .map_err(|e| FieldError::new(field, format!("invalid label selector: {e}")))
}

/// A label key is a qualified name: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 characters, alphanumeric at both ends, with `-`, `_`, `.` inside.
fn validate_label_key(key: &str, field: &str) -> Result<(), FieldError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        return Ok(());
    }
    let problem = if !prefix_ok {
        "the prefix must be a lowercase DNS subdomain (e.g. example.com)"
    } else {
        "the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending \
         with a letter or digit"
    };
    Err(FieldError::new(field, format!("invalid label key {key:?}: {problem}")))
}

fn compile_ip_block(
    block: &IPBlock,
    field: &str,
    warnings: &mut Vec<FieldError>,
) -> Result<CidrBlock, FieldError> {
    let cidr = parse_cidr(&block.cidr, &format!("{field}.cidr"), warnings)?;
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let here = format!("{field}.except[{i}]");
        let net = parse_cidr(text, &here, warnings)?;
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

/// Parses a CIDR as the API server has accepted it, so stored objects never fail here: host
/// bits may be set (`10.0.0.7/24` means `10.0.0.0/24`), IPv4 octets may carry leading zeros
/// (read as decimal), and an IPv4-mapped IPv6 CIDR means its IPv4 range. API servers with
/// `StrictIPCIDRValidation` (1.33+) reject those forms in new objects, so each one is warned
/// about. A bare address without a prefix length is not a CIDR.
fn parse_cidr(text: &str, field: &str, warnings: &mut Vec<FieldError>) -> Result<IpNet, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(field, "must be specified (a CIDR such as 10.0.0.0/16)"));
    }
    let invalid = || {
        FieldError::new(
            field,
            format!("{text:?} is not a valid CIDR (expected e.g. \"192.168.1.0/24\" or \"2001:db8::/64\")"),
        )
    };
    let parsed = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => without_leading_zeros(text).and_then(|t| t.parse::<IpNet>().ok()).ok_or_else(invalid)?,
    };
    let net = match parsed {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| invalid())?),
            None => parsed,
        },
        _ => parsed,
    };
    let canonical = net.trunc();
    if canonical.to_string() != text {
        warnings.push(FieldError::new(
            field,
            format!(
                "{text:?} is not in canonical form: read as {canonical}, as older API servers do \
                 (1.33+ with StrictIPCIDRValidation rejects it in new objects)"
            ),
        ));
    }
    Ok(canonical)
}

/// `010.001.0.0/16` → `10.1.0.0/16`; `None` when the text is not a dotted IPv4 CIDR.
fn without_leading_zeros(text: &str) -> Option<String> {
    let (address, prefix) = text.split_once('/')?;
    let octets: Vec<&str> = address.split('.').collect();
    if octets.len() != 4
        || !octets.iter().all(|o| !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let octets: Vec<String> = octets
        .iter()
        .map(|o| o.trim_start_matches('0'))
        .map(|o| if o.is_empty() { "0".to_string() } else { o.to_string() })
        .collect();
    Some(format!("{}/{prefix}", octets.join(".")))
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
        compile_ip_block(&b, "spec.egress[0].to[0].ipBlock", &mut Vec::new())
    }

    fn block_warnings(cidr: &str) -> (String, Vec<FieldError>) {
        let mut warnings = Vec::new();
        let b = IPBlock { cidr: cidr.into(), except: None };
        let compiled = compile_ip_block(&b, "f", &mut warnings).expect("accepted");
        (compiled.cidr.to_string(), warnings)
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
    fn qualified_label_keys_are_accepted() {
        for key in ["app", "app.kubernetes.io/name", "kubernetes.io/metadata.name", "A_b-c.D", "x"] {
            assert!(validate_label_key(key, "f").is_ok(), "{key}");
        }
        let selector =
            LabelSelector { match_labels: Some(labels(&[("bad key", "v")])), match_expressions: None };
        let err = compile_selector(&selector, "s").expect_err("invalid key");
        assert_eq!(err.field, "s.matchLabels");
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
            (expr("", "Exists", &[]), "s.matchExpressions[0].key", "invalid label key \"\""),
            (expr("a b", "Exists", &[]), "s.matchExpressions[0].key", "the name part"),
            (expr("Example.com/app", "Exists", &[]), "s.matchExpressions[0].key", "the prefix"),
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
    fn non_canonical_cidrs_stored_by_older_api_servers_are_read_as_they_did_with_a_warning() {
        for (text, read_as) in [
            ("10.0.0.7/24", "10.0.0.0/24"),
            ("010.001.0.0/16", "10.1.0.0/16"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            let (cidr, warnings) = block_warnings(text);
            assert_eq!(cidr, read_as, "{text}");
            assert_eq!(warnings.len(), 1, "{text}");
            assert!(warnings[0].message.contains("not in canonical form"), "{:?}", warnings[0]);
        }
        let (cidr, warnings) = block_warnings("10.0.0.0/24");
        assert_eq!(cidr, "10.0.0.0/24");
        assert!(warnings.is_empty());
        let b = block("10.0.0.7/24", &[]).expect("valid like the API server");
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
        let empty = Peer::compile(&NetworkPolicyPeer::default(), "spec.ingress[0].from[0]", &mut Vec::new());
        assert!(empty.expect_err("empty").message.contains("must specify a peer"));
        let mixed = NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: "10.0.0.0/8".into(), except: None }),
            pod_selector: Some(LabelSelector::default()),
            namespace_selector: None,
        };
        let err = Peer::compile(&mixed, "spec.ingress[0].from[0]", &mut Vec::new()).expect_err("mixed");
        assert!(err.message.contains("both ipBlock and another peer"));
    }
}
