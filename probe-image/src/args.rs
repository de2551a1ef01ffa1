//! Small parsers for the command line: durations, port lists, identities.

use std::time::Duration;

use crate::wire::{MAX_TIMEOUT_MS, MIN_TIMEOUT_MS};

/// `500ms`, `1s`, `2m` (whole numbers), between 1 ms and 5 minutes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {text:?}: write a whole number with ms, s or m, e.g. 500ms, 1s, 2m");
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(bad());
    };
    let ms = number.parse::<u64>().map_err(|_| bad())?.checked_mul(unit_ms).ok_or_else(bad)?;
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(format!("duration {text:?} is out of range: use 1ms to 5m"));
    }
    Ok(Duration::from_millis(ms))
}

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
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "1", "1.5s", "-1s", "1h", "s", "0ms", "6m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

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
