//! One NetworkPolicy, validated and compiled into rules.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use kube_core::Selector;

use super::peer::{Peer, compile_selector};
use super::port::PortRule;
use super::{Direction, FieldError};

/// A NetworkPolicy as the engine evaluates it.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    /// "podSelector selects the pods to which this NetworkPolicy object applies ... If it is
    /// not specified, it defaults to an empty selector."
    pub pod_selector: Selector,
    /// `Some` when the policy affects ingress (its rules may be empty: then it allows nothing).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy affects egress.
    pub egress: Option<Vec<Rule>>,
    /// Accepted but non-canonical fields (see `peer::parse_cidr`).
    pub warnings: Vec<FieldError>,
}

/// One ingress or egress rule: "The traffic must match both ports and from" (or `to`).
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// `None`: "If this field is empty or missing, this rule matches all sources" (or
    /// destinations). `Some`: the peers, combined with a logical OR.
    pub peers: Option<Vec<Peer>>,
    /// `None`: "If this field is empty or missing, this rule matches all ports".
    pub ports: Option<Vec<PortRule>>,
}

impl CompiledPolicy {
    /// Validates `policy` as the API server would (so a file the server would reject is an
    /// error, not a guess) and compiles it.
    pub(crate) fn compile(policy: &NetworkPolicy) -> Result<CompiledPolicy, FieldError> {
        let spec = policy.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(selector) => compile_selector(selector, "spec.podSelector")?,
            None => Selector::default(),
        };
        let (affects_ingress, affects_egress) =
            policy_types(spec.policy_types.as_deref(), spec.egress.as_deref())?;
        let mut warnings = Vec::new();

        let ingress = match affects_ingress {
            false => None,
            true => Some(
                spec.ingress
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, rule)| {
                        compile_rule(
                            Direction::Ingress,
                            i,
                            rule.from.as_deref(),
                            rule.ports.as_deref(),
                            &mut warnings,
                        )
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let egress = match affects_egress {
            false => None,
            true => Some(
                spec.egress
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, rule)| {
                        compile_rule(
                            Direction::Egress,
                            i,
                            rule.to.as_deref(),
                            rule.ports.as_deref(),
                            &mut warnings,
                        )
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(CompiledPolicy { pod_selector, ingress, egress, warnings })
    }

    pub(crate) fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Which directions a policy affects.
///
/// "If this field is not specified, it will default based on the existence of ingress or
/// egress rules; policies that contain an egress section are assumed to affect egress, and all
/// policies (whether or not they contain an ingress section) are assumed to affect ingress."
///
/// NB: the API server's defaulting tests `len(spec.egress) != 0`, so `egress: []` without
/// `policyTypes` does *not* make an egress policy. Objects read from a cluster already carry
/// the defaulted `policyTypes`; this matters only for hand-written files.
fn policy_types<T>(
    policy_types: Option<&[String]>,
    egress: Option<&[T]>,
) -> Result<(bool, bool), FieldError> {
    match policy_types {
        None | Some([]) => Ok((true, egress.is_some_and(|rules| !rules.is_empty()))),
        Some(types) if types.len() > 2 => Err(FieldError::new(
            "spec.policyTypes",
            format!("may not specify more than two policyTypes (got {})", types.len()),
        )),
        Some(types) => {
            let (mut ingress, mut egress) = (false, false);
            for (i, policy_type) in types.iter().enumerate() {
                match policy_type.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(FieldError::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?}: must be \"Ingress\" or \"Egress\""),
                        ));
                    }
                }
            }
            Ok((ingress, egress))
        }
    }
}

fn compile_rule(
    direction: Direction,
    index: usize,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    warnings: &mut Vec<FieldError>,
) -> Result<Rule, FieldError> {
    let rule_field = format!("spec.{}[{index}]", direction.field());
    let peers = match peers {
        None | Some([]) => None,
        Some(peers) => Some(
            peers
                .iter()
                .enumerate()
                .map(|(i, peer)| {
                    Peer::compile(peer, &format!("{rule_field}.{}[{i}]", direction.peers_field()), warnings)
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(ports) => Some(
            ports
                .iter()
                .enumerate()
                .map(|(i, port)| PortRule::compile(port, &format!("{rule_field}.ports[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{
        NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
    };

    fn policy(spec: NetworkPolicySpec) -> NetworkPolicy {
        NetworkPolicy { spec: Some(spec), ..NetworkPolicy::default() }
    }

    fn types(types: &[&str]) -> Option<Vec<String>> {
        Some(types.iter().map(ToString::to_string).collect())
    }

    fn directions(spec: NetworkPolicySpec) -> (bool, bool) {
        let compiled = CompiledPolicy::compile(&policy(spec)).expect("valid");
        (compiled.ingress.is_some(), compiled.egress.is_some())
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let egress_rule = NetworkPolicyEgressRule::default();
        assert_eq!(directions(NetworkPolicySpec::default()), (true, false));
        assert_eq!(
            directions(NetworkPolicySpec { egress: Some(vec![egress_rule.clone()]), ..Default::default() }),
            (true, true)
        );
        // The API server tests len(egress) != 0: an empty egress list adds nothing.
        assert_eq!(
            directions(NetworkPolicySpec { egress: Some(vec![]), ..Default::default() }),
            (true, false)
        );
        assert_eq!(
            directions(NetworkPolicySpec { policy_types: types(&["Egress"]), ..Default::default() }),
            (false, true)
        );
        assert_eq!(
            directions(NetworkPolicySpec {
                policy_types: types(&["Ingress", "Egress"]),
                ..Default::default()
            }),
            (true, true)
        );
    }

    #[test]
    fn explicit_policy_types_ignore_rules_of_the_other_direction() {
        let spec = NetworkPolicySpec {
            policy_types: types(&["Egress"]),
            ingress: Some(vec![NetworkPolicyIngressRule::default()]),
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile(&policy(spec)).expect("valid");
        assert!(compiled.ingress.is_none());
        assert_eq!(compiled.egress.map(|r| r.len()), Some(0));
    }

    #[test]
    fn empty_and_missing_peer_lists_both_match_everything() {
        let spec = NetworkPolicySpec {
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: None, ports: None },
                NetworkPolicyIngressRule { from: Some(vec![]), ports: Some(vec![]) },
            ]),
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile(&policy(spec)).expect("valid");
        let rules = compiled.ingress.expect("ingress");
        assert!(rules.iter().all(|r| r.peers.is_none() && r.ports.is_none()));
    }

    #[test]
    fn more_than_two_policy_types_are_rejected() {
        let spec = NetworkPolicySpec {
            policy_types: types(&["Ingress", "Egress", "Ingress"]),
            ..Default::default()
        };
        let err = CompiledPolicy::compile(&policy(spec)).expect_err("invalid");
        assert_eq!(err.field, "spec.policyTypes");
    }

    #[test]
    fn unknown_policy_types_are_rejected() {
        let spec = NetworkPolicySpec { policy_types: types(&["Ingress", "ingress"]), ..Default::default() };
        let err = CompiledPolicy::compile(&policy(spec)).expect_err("invalid");
        assert_eq!(err.field, "spec.policyTypes[1]");
    }

    #[test]
    fn a_list_holding_an_empty_peer_is_rejected_with_its_path() {
        let spec = NetworkPolicySpec {
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer::default()]),
                ports: None,
            }]),
            ..Default::default()
        };
        let err = CompiledPolicy::compile(&policy(spec)).expect_err("invalid");
        assert_eq!(err.field, "spec.egress[0].to[0]");
    }
}
