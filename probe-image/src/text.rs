//! Small text formats shared by the probe and the orchestrator.

use std::time::Duration;

use crate::wire::{MAX_TIMEOUT_MS, MIN_TIMEOUT_MS};

/// `500ms`, `1s`, `2m` (whole numbers), between 1 ms and 5 minutes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MAX_TIMEOUT_MS)
}

/// A duration as [`parse_duration`] reads it, between 1 ms and `max_ms`.
pub fn parse_duration_within(text: &str, max_ms: u64) -> Result<Duration, String> {
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
    if !(MIN_TIMEOUT_MS..=max_ms).contains(&ms) {
        let max = if max_ms.is_multiple_of(60_000) {
            format!("{}m", max_ms / 60_000)
        } else {
            format!("{max_ms}ms")
        };
        return Err(format!("duration {text:?} is out of range: use 1ms to {max}"));
    }
    Ok(Duration::from_millis(ms))
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
        assert_eq!(parse_duration_within("10m", 600_000), Ok(Duration::from_secs(600)));
        let err = parse_duration_within("11m", 600_000).expect_err("above the bound");
        assert!(err.ends_with("use 1ms to 10m"), "{err}");
    }
}
