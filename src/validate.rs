//! Checks the API server makes that the engine does not need: object names, and the Service
//! fields the lab builds from. Names end up in generated files (nftables comments,
//! resolv.conf), so nothing reaches them that the API server would have refused.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::engine::{FieldError, Protocol, validate_port_name};

/// The kinds of object names the API server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label (Namespaces, and every `metadata.namespace`).
    Label,
    /// RFC 1035 label (Services: they become DNS names, so they start with a letter).
    Rfc1035Label,
    /// RFC 1123 subdomain (Pods, NetworkPolicies).
    Subdomain,
}

impl NameRule {
    /// The rule for `kind`'s `metadata.name`.
    pub fn for_kind(kind: &str) -> NameRule {
        match kind {
            "Namespace" => NameRule::Label,
            "Service" => NameRule::Rfc1035Label,
            _ => NameRule::Subdomain,
        }
    }

    /// `Err` holds the API server's explanation.
    pub fn check(self, name: &str) -> Result<(), String> {
        let label_ok = |label: &str, first_letter: bool| {
            let bytes = label.as_bytes();
            let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
            let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    (if first_letter { first.is_ascii_lowercase() } else { edge(first) })
                        && edge(last)
                        && bytes.iter().all(inner)
                }
                _ => false,
            }
        };
        // kube-apiserver's words (apimachinery's validation), double space and all, so the
        // message reads as `kubectl apply` would show it.
        let (ok, limit, what) = match self {
            NameRule::Label => (
                label_ok(name, false),
                63,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
                 and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
                 regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ),
            NameRule::Rfc1035Label => (
                label_ok(name, true),
                63,
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
                 an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or \
                 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            ),
            NameRule::Subdomain => (
                name.split('.').all(|label| label_ok(label, false)),
                253,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or \
                 '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex \
                 used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ),
        };
        if name.len() > limit {
            return Err(format!("Invalid value: {name:?}: must be no more than {limit} characters"));
        }
        if ok { Ok(()) } else { Err(format!("Invalid value: {name:?}: {what}")) }
    }
}

/// Checks `metadata.name` (required) and `metadata.namespace` of a `kind` object.
pub fn validate_meta(kind: &str, meta: &ObjectMeta) -> Result<String, FieldError> {
    let name = match meta.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => return Err(FieldError::new("metadata.name", "required: every object needs a name")),
    };
    NameRule::for_kind(kind).check(name).map_err(|e| FieldError::new("metadata.name", e))?;
    if let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        NameRule::Label.check(namespace).map_err(|e| FieldError::new("metadata.namespace", e))?;
    }
    Ok(name.to_string())
}

/// Validates the Service fields the lab reads (cluster IP, ports), as the API server would.
pub fn validate_service(service: &Service) -> Result<(), FieldError> {
    let Some(spec) = &service.spec else { return Ok(()) };
    if let Some(ip) = spec.cluster_ip.as_deref()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(FieldError::new(
            "spec.clusterIP",
            format!("Invalid value: {ip:?}: must be a valid IP address, \"None\" or empty"),
        ));
    }
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let here = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&port.port) {
            return Err(FieldError::new(
                format!("{here}.port"),
                format!("{} must be between 1 and 65535, inclusive", port.port),
            ));
        }
        if let Some(protocol) = port.protocol.as_deref().filter(|p| !p.is_empty())
            && Protocol::from_api(protocol).is_none()
        {
            return Err(FieldError::new(
                format!("{here}.protocol"),
                format!("unsupported value {protocol:?}: must be \"TCP\", \"UDP\" or \"SCTP\""),
            ));
        }
        match &port.target_port {
            Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => {
                return Err(FieldError::new(
                    format!("{here}.targetPort"),
                    format!("{n} must be between 1 and 65535, inclusive"),
                ));
            }
            Some(IntOrString::String(name)) => validate_port_name(name, &format!("{here}.targetPort"))?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        for (rule, good) in [
            (NameRule::Label, "kube-system"),
            (NameRule::Label, "123-abc"),
            (NameRule::Rfc1035Label, "kube-dns"),
            (NameRule::Subdomain, "allow.dns-53"),
            (NameRule::Subdomain, "a"),
        ] {
            assert_eq!(rule.check(good), Ok(()), "{rule:?} {good}");
        }
        for (rule, bad) in [
            (NameRule::Label, "Kube"),
            (NameRule::Label, "a.b"),
            (NameRule::Label, "-a"),
            (NameRule::Label, ""),
            (NameRule::Rfc1035Label, "1dns"),
            (NameRule::Subdomain, "a..b"),
            (NameRule::Subdomain, "deny\n  chain x"),
            (NameRule::Subdomain, "a_b"),
        ] {
            assert!(rule.check(bad).is_err(), "{rule:?} {bad:?}");
        }
        assert!(NameRule::Label.check(&"a".repeat(64)).expect_err("too long").contains("no more than 63"));
        assert_eq!(NameRule::Subdomain.check(&"a".repeat(253)), Ok(()));
    }

    #[test]
    fn service_fields_are_checked() {
        let service = |spec: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}, "spec": spec}))
                .expect("service")
        };
        let ok = service(
            serde_json::json!({"clusterIP": "None", "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns"}]}),
        );
        assert_eq!(validate_service(&ok), Ok(()));
        for (spec, field) in [
            (serde_json::json!({"clusterIP": "10.96.0"}), "spec.clusterIP"),
            (serde_json::json!({"ports": [{"port": 0}]}), "spec.ports[0].port"),
            (serde_json::json!({"ports": [{"port": 53, "protocol": "udp; drop"}]}), "spec.ports[0].protocol"),
            (serde_json::json!({"ports": [{"port": 53, "targetPort": 70000}]}), "spec.ports[0].targetPort"),
            (
                serde_json::json!({"ports": [{"port": 53, "targetPort": "Not_A_Name"}]}),
                "spec.ports[0].targetPort",
            ),
        ] {
            assert_eq!(validate_service(&service(spec)).map_err(|e| e.field), Err(field.to_string()));
        }
    }
}
