//! Turning socket errors into probe outcomes, and resolving targets.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::wire::Outcome;

/// The outcome a failed socket operation means, from the errno the kernel chose for the RST or
/// ICMP error it received:
/// - `refused`: ECONNREFUSED (TCP RST, ICMP port unreachable);
/// - `unreachable`: ENETUNREACH, EHOSTUNREACH (no route; ICMP host/net unreachable, and IPv4
///   admin-prohibited), EHOSTDOWN, ENONET, ENETDOWN, and EACCES, which is what IPv6's
///   admin-prohibited, policy-fail and reject-route become;
/// - `timeout`: ETIMEDOUT (the kernel gave up retrying a SYN before our own timeout);
/// - `error`: anything else, such as EPERM from a local firewall.
pub fn classify(error: &io::Error) -> Outcome {
    const EACCES: i32 = 13;
    const ENONET: i32 = 64;
    const ENETDOWN: i32 = 100;
    const ENETUNREACH: i32 = 101;
    const ECONNRESET: i32 = 104;
    const ETIMEDOUT: i32 = 110;
    const ECONNREFUSED: i32 = 111;
    const EHOSTDOWN: i32 = 112;
    const EHOSTUNREACH: i32 = 113;
    match error.raw_os_error() {
        Some(ECONNREFUSED | ECONNRESET) => Outcome::Refused,
        Some(ENETUNREACH | EHOSTUNREACH | EHOSTDOWN | ENONET | ENETDOWN | EACCES) => Outcome::Unreachable,
        Some(ETIMEDOUT) => Outcome::Timeout,
        Some(_) => Outcome::Error,
        None => match error.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Outcome::Unreachable,
            io::ErrorKind::TimedOut => Outcome::Timeout,
            _ => Outcome::Error,
        },
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6 addresses).
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("invalid port in {text:?}: ports are 1-65535"));
        }
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| {
        format!("invalid target {text:?}: write HOST:PORT, e.g. 10.0.0.5:80 or [fd00::5]:80")
    })?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port in {text:?}: ports are 1-65535"))?;
    if host.is_empty() || host.contains(':') {
        return Err(format!("invalid target {text:?}: write HOST:PORT, with IPv6 addresses in brackets"));
    }
    Ok((host.to_string(), port))
}

/// The address a target names: an IP as is; a name through DNS (see [`crate::dns::resolve`]).
pub async fn resolve_target(host: &str) -> Result<IpAddr, String> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(ip),
        Err(_) => crate::dns::resolve(host).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_map_to_outcomes() {
        let cases = [
            (io::ErrorKind::ConnectionRefused, Outcome::Refused),
            (io::ErrorKind::HostUnreachable, Outcome::Unreachable),
            (io::ErrorKind::NetworkUnreachable, Outcome::Unreachable),
            (io::ErrorKind::PermissionDenied, Outcome::Error),
        ];
        for (kind, outcome) in cases {
            assert_eq!(classify(&io::Error::from(kind)), outcome, "{kind:?}");
        }
        // The raw errnos the kernel gives.
        for (errno, outcome) in [
            (111, Outcome::Refused),     // ECONNREFUSED
            (113, Outcome::Unreachable), // EHOSTUNREACH
            (101, Outcome::Unreachable), // ENETUNREACH
            (13, Outcome::Unreachable),  // EACCES: ICMPv6 admin-prohibited
            (112, Outcome::Unreachable), // EHOSTDOWN
            (110, Outcome::Timeout),     // ETIMEDOUT: SYN retries exhausted
            (1, Outcome::Error),         // EPERM: a local firewall
        ] {
            assert_eq!(classify(&io::Error::from_raw_os_error(errno)), outcome, "errno {errno}");
        }
    }

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(split_host_port("10.0.0.5:80"), Ok(("10.0.0.5".into(), 80)));
        assert_eq!(split_host_port("[fd00::5]:53"), Ok(("fd00::5".into(), 53)));
        assert_eq!(split_host_port("kube-dns.kube-system:53"), Ok(("kube-dns.kube-system".into(), 53)));
        for bad in ["10.0.0.5", "10.0.0.5:0", "fd00::5:80", ":80", "x:http"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
