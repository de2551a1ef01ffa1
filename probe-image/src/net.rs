//! Turning socket errors into probe outcomes, and resolving targets.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::wire::Outcome;

/// The outcome a failed socket operation means: RST or ICMP port unreachable is `refused`; no
/// route or ICMP host/network unreachable is `unreachable`; anything else is an `error`.
pub fn classify(error: &io::Error) -> Outcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Refused,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Outcome::Unreachable,
        _ => Outcome::Error,
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
        // The raw errno the kernel gives for an ICMP host unreachable.
        assert_eq!(classify(&io::Error::from_raw_os_error(113)), Outcome::Unreachable);
        assert_eq!(classify(&io::Error::from_raw_os_error(101)), Outcome::Unreachable);
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
