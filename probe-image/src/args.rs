//! Small parsers for the command line: durations, port lists, identities.

pub use crate::text::parse_duration;

/// `80`, `80,81`, `8000-8010`, or a mix: sorted, without repeats.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port {s:?} in {text:?}: ports are 1-65535"))
        };
        match part.split_once('-') {
            Some((start, end)) => {
                let (start, end) = (port(start)?, port(end)?);
                if start > end {
                    return Err(format!("invalid port range {part:?}: the start is above the end"));
                }
                ports.extend(start..=end);
            }
            None => ports.push(port(part)?),
        }
    }
    if ports.is_empty() {
        return Err(format!("no ports in {text:?}"));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// The name `serve` answers with: `--name`, else `$POD_NAMESPACE/$POD_NAME`, else the host name.
pub fn identity(explicit: Option<String>) -> String {
    if let Some(name) = explicit {
        return name;
    }
    let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    if let (Some(namespace), Some(pod)) = (var("POD_NAMESPACE"), var("POD_NAME")) {
        return format!("{namespace}/{pod}");
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_mix_numbers_and_ranges() {
        assert_eq!(parse_ports("80"), Ok(vec![80]));
        assert_eq!(parse_ports("81,80,8000-8002,80"), Ok(vec![80, 81, 8000, 8001, 8002]));
        for bad in ["", "0", "65536", "http", "90-80", "1-"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_explicit_name_wins() {
        assert_eq!(identity(Some("x/a".into())), "x/a");
    }
}
