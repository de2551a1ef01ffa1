//! Ports and protocols of NetworkPolicy rules.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::FieldError;

/// A transport protocol NetworkPolicy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API's spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API's exact spelling, as the API server does (`tcp` is rejected there).
    pub fn from_api(text: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lenient parse for people typing on a command line: any case.
impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Protocol, String> {
        Protocol::from_api(&text.to_ascii_uppercase())
            .ok_or_else(|| format!("unknown protocol {text:?}: expected TCP, UDP or SCTP"))
    }
}

/// A port a container declares (`containerPort` with its protocol and optional name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub port: u16,
    pub protocol: Protocol,
    pub name: Option<String>,
}

/// One compiled entry of a rule's `ports` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortRule {
    /// "If this field is not provided, this matches all port names and numbers."
    AnyPort(Protocol),
    /// `port`, or `port`..=`endPort`: "the range of ports from port to endPort ... inclusive".
    Range { protocol: Protocol, start: u16, end: u16 },
    /// A named port: resolved against the destination pod's container ports.
    Named { protocol: Protocol, name: String },
}

impl PortRule {
    /// Validates and compiles one `NetworkPolicyPort` the way the API server validates it.
    pub(crate) fn compile(port: &NetworkPolicyPort, field: &str) -> Result<PortRule, FieldError> {
        // "protocol ... If not specified, this field defaults to TCP."
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::from_api(text).ok_or_else(|| {
                FieldError::new(
                    format!("{field}.protocol"),
                    format!("unsupported value {text:?}: must be \"TCP\", \"UDP\" or \"SCTP\""),
                )
            })?,
        };
        match (&port.port, port.end_port) {
            (None, None) => Ok(PortRule::AnyPort(protocol)),
            (None, Some(_)) => Err(FieldError::new(
                format!("{field}.endPort"),
                "may not be specified when port is not specified",
            )),
            (Some(IntOrString::Int(number)), end_port) => {
                let start = port_number(*number, &format!("{field}.port"))?;
                let end = match end_port {
                    None => start,
                    Some(end) => {
                        let end = port_number(end, &format!("{field}.endPort"))?;
                        if end < start {
                            return Err(FieldError::new(
                                format!("{field}.endPort"),
                                format!("{end} must be greater than or equal to port {start}"),
                            ));
                        }
                        end
                    }
                };
                Ok(PortRule::Range { protocol, start, end })
            }
            (Some(IntOrString::String(name)), end_port) => {
                if end_port.is_some() {
                    return Err(FieldError::new(
                        format!("{field}.endPort"),
                        "may not be specified when port is a named port",
                    ));
                }
                validate_port_name(name, &format!("{field}.port"))?;
                Ok(PortRule::Named { protocol, name: name.clone() })
            }
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        match self {
            PortRule::AnyPort(protocol)
            | PortRule::Range { protocol, .. }
            | PortRule::Named { protocol, .. } => *protocol,
        }
    }

    /// Whether traffic to `port`/`protocol` on a destination declaring `dest_ports` matches.
    /// `dest_ports` is `None` when the destination is not a pod: a named port then resolves
    /// nowhere and matches nothing.
    pub(crate) fn matches(
        &self,
        port: u16,
        protocol: Protocol,
        dest_ports: Option<&[ContainerPort]>,
    ) -> bool {
        if self.protocol() != protocol {
            return false;
        }
        match self {
            PortRule::AnyPort(_) => true,
            PortRule::Range { start, end, .. } => (*start..=*end).contains(&port),
            // NB: protocol-aware: the container port must carry this name *and* this protocol.
            PortRule::Named { name, .. } => dest_ports
                .unwrap_or_default()
                .iter()
                .any(|cp| cp.port == port && cp.protocol == protocol && cp.name.as_deref() == Some(name)),
        }
    }

    /// How the rule reads in explanations: `80/TCP`, `8000-8080/TCP`, `http/TCP (named)`, `any/UDP`.
    pub(crate) fn describe(&self) -> String {
        match self {
            PortRule::AnyPort(protocol) => format!("any/{protocol}"),
            PortRule::Range { protocol, start, end } if start == end => format!("{start}/{protocol}"),
            PortRule::Range { protocol, start, end } => format!("{start}-{end}/{protocol}"),
            PortRule::Named { protocol, name } => format!("{name}/{protocol} (named)"),
        }
    }
}

fn port_number(number: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(number)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| FieldError::new(field, format!("{number} must be between 1 and 65535, inclusive")))
}

/// IANA_SVC_NAME, as the API server checks named ports: at most 15 characters of `a-z`,
/// `0-9` and `-`, at least one letter, no leading, trailing or doubled `-`.
pub(crate) fn validate_port_name(name: &str, field: &str) -> Result<(), FieldError> {
    let problem = if name.len() > 15 {
        Some("must be no more than 15 characters")
    } else if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("must contain at least one letter (a-z)")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not begin or end with a hyphen")
    } else if name.contains("--") {
        Some("must not contain consecutive hyphens")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(FieldError::new(field, format!("invalid port name {name:?}: {problem}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(protocol: Option<&str>, port: Option<IntOrString>, end_port: Option<i32>) -> NetworkPolicyPort {
        NetworkPolicyPort { protocol: protocol.map(Into::into), port, end_port }
    }

    fn compile(p: NetworkPolicyPort) -> Result<PortRule, FieldError> {
        PortRule::compile(&p, "spec.ingress[0].ports[0]")
    }

    fn declared() -> Vec<ContainerPort> {
        vec![
            ContainerPort { port: 80, protocol: Protocol::Tcp, name: Some("serve-80-tcp".into()) },
            ContainerPort { port: 80, protocol: Protocol::Udp, name: Some("serve-80-udp".into()) },
        ]
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        let rule = compile(port(None, Some(IntOrString::Int(80)), None)).expect("valid");
        assert!(rule.matches(80, Protocol::Tcp, None));
        assert!(!rule.matches(80, Protocol::Udp, None));
        assert!(!rule.matches(80, Protocol::Sctp, None));
    }

    #[test]
    fn a_port_without_number_matches_every_port_of_its_protocol() {
        let rule = compile(port(Some("UDP"), None, None)).expect("valid");
        assert!(rule.matches(1, Protocol::Udp, None));
        assert!(rule.matches(65535, Protocol::Udp, None));
        assert!(!rule.matches(53, Protocol::Tcp, None));
    }

    #[test]
    fn end_port_ranges_are_inclusive() {
        let rule = compile(port(None, Some(IntOrString::Int(8000)), Some(8080))).expect("valid");
        for (p, want) in [(7999, false), (8000, true), (8001, true), (8080, true), (8081, false)] {
            assert_eq!(rule.matches(p, Protocol::Tcp, None), want, "port {p}");
        }
    }

    #[test]
    fn named_ports_resolve_against_the_destination_protocol_aware() {
        let tcp = compile(port(None, Some(IntOrString::String("serve-80-tcp".into())), None)).expect("valid");
        assert!(tcp.matches(80, Protocol::Tcp, Some(&declared())));
        assert!(!tcp.matches(81, Protocol::Tcp, Some(&declared())));
        // The UDP container port's name under the default protocol TCP resolves to nothing.
        let udp_name =
            compile(port(None, Some(IntOrString::String("serve-80-udp".into())), None)).expect("valid");
        assert!(!udp_name.matches(80, Protocol::Tcp, Some(&declared())));
        assert!(!udp_name.matches(80, Protocol::Udp, Some(&declared())));
        let udp = compile(port(Some("UDP"), Some(IntOrString::String("serve-80-udp".into())), None))
            .expect("valid");
        assert!(udp.matches(80, Protocol::Udp, Some(&declared())));
    }

    #[test]
    fn a_named_port_matches_nothing_when_the_destination_is_not_a_pod() {
        let rule = compile(port(None, Some(IntOrString::String("dns".into())), None)).expect("valid");
        assert!(!rule.matches(53, Protocol::Tcp, None));
    }

    #[test]
    fn invalid_ports_are_rejected_like_the_api_server_does() {
        let cases = [
            (port(Some("tcp"), Some(IntOrString::Int(80)), None), "protocol", "unsupported value"),
            (port(None, Some(IntOrString::Int(0)), None), "port", "between 1 and 65535"),
            (port(None, Some(IntOrString::Int(70000)), None), "port", "between 1 and 65535"),
            (port(None, Some(IntOrString::Int(90)), Some(80)), "endPort", "greater than or equal"),
            (port(None, None, Some(80)), "endPort", "port is not specified"),
            (port(None, Some(IntOrString::String("http".into())), Some(90)), "endPort", "named port"),
            (port(None, Some(IntOrString::String("80".into())), None), "port", "at least one letter"),
            (port(None, Some(IntOrString::String("Http".into())), None), "port", "alpha-numeric"),
            (
                port(None, Some(IntOrString::String("a-very-long-port-name".into())), None),
                "port",
                "15 characters",
            ),
            (port(None, Some(IntOrString::String("web--1".into())), None), "port", "consecutive"),
        ];
        for (p, field, message) in cases {
            let err = compile(p.clone()).expect_err(&format!("{p:?} is invalid"));
            assert_eq!(err.field, format!("spec.ingress[0].ports[0].{field}"), "{p:?}");
            assert!(err.message.contains(message), "{p:?}: {}", err.message);
        }
    }

    #[test]
    fn protocols_parse_leniently_on_the_command_line_only() {
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!(Protocol::from_api("udp"), None);
        assert!("icmp".parse::<Protocol>().is_err());
    }
}
