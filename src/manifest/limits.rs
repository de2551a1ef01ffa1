//! Fitting the probe pods' tiny requests and limits to a namespace's LimitRanges, so that the
//! LimitRanger admission plugin accepts them: within every `min` and `max`, and within
//! `maxLimitRequestRatio` (OpenShift projects set one by default). Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The resources LimitRanges bound that the probes set: CPU in millicores, memory in bytes.
const RESOURCES: [&str; 2] = ["cpu", "memory"];

/// A Kubernetes quantity (`100m`, `64Mi`, `0.5`, `1G`, `2e3`) as a number of base units.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 16] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("", 1.0),
    ];
    let (number, factor) = suffixes.iter().find_map(|(suffix, factor)| {
        let number = text.strip_suffix(suffix)?;
        // `1E3` is an exponent, not exa: a digit must end the number.
        (number.ends_with(|c: char| c.is_ascii_digit() || c == '.')).then_some((number, *factor))
    })?;
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * factor)
}

/// `value` of `resource` as a quantity: CPU in millicores, memory in whole bytes (Mi when exact).
fn quantity(resource: &str, value: f64) -> Quantity {
    let text = if resource == "cpu" {
        format!("{}m", (value * 1000.0).ceil() as u64)
    } else {
        let bytes = value.ceil() as u64;
        if bytes.is_multiple_of(1024 * 1024) {
            format!("{}Mi", bytes / (1024 * 1024))
        } else {
            bytes.to_string()
        }
    };
    Quantity(text)
}

/// `resources` moved inside `ranges` (their Container and Pod items: the probe pod has one
/// container), and what was changed, for a note. Requests rise to a `min`, limits fall to a
/// `max`, a limit comes down to `maxLimitRequestRatio` × its request, and a request never
/// exceeds its limit. A range that cannot be met (a `min` above a `max`) is left to the API
/// server, whose message names it.
pub fn fit(resources: &ResourceRequirements, ranges: &[LimitRange]) -> (ResourceRequirements, Vec<String>) {
    let mut fitted = resources.clone();
    let mut changed = Vec::new();
    let items = ranges
        .iter()
        .filter_map(|r| r.spec.as_ref())
        .flat_map(|s| &s.limits)
        .filter(|item| matches!(item.type_.as_str(), "Container" | "Pod"));
    let get = |map: &Option<BTreeMap<String, Quantity>>, resource: &str| {
        map.as_ref().and_then(|m| m.get(resource)).and_then(|q| parse_quantity(&q.0))
    };
    for item in items {
        for resource in RESOURCES {
            let (Some(mut request), Some(mut limit)) =
                (get(&fitted.requests, resource), get(&fitted.limits, resource))
            else {
                continue;
            };
            let (before_request, before_limit) = (request, limit);
            if let Some(min) = get(&item.min, resource) {
                request = request.max(min);
                limit = limit.max(min);
            }
            if let Some(max) = get(&item.max, resource) {
                request = request.min(max);
                limit = limit.min(max);
            }
            if let Some(ratio) = get(&item.max_limit_request_ratio, resource) {
                limit = limit.min(request * ratio);
            }
            request = request.min(limit);
            for (side, map, before, after) in [
                ("request", &mut fitted.requests, before_request, request),
                ("limit", &mut fitted.limits, before_limit, limit),
            ] {
                if after != before {
                    let value = quantity(resource, after);
                    changed.push(format!("{resource} {side} {}", value.0));
                    map.get_or_insert_with(BTreeMap::new).insert(resource.into(), value);
                }
            }
        }
    }
    (fitted, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_resources() -> ResourceRequirements {
        let map = |cpu: &str, memory: &str| {
            Some(BTreeMap::from([
                ("cpu".into(), Quantity(cpu.into())),
                ("memory".into(), Quantity(memory.into())),
            ]))
        };
        ResourceRequirements {
            requests: map("10m", "16Mi"),
            limits: map("200m", "64Mi"),
            ..Default::default()
        }
    }

    fn range(item: serde_json::Value) -> LimitRange {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "limits"}, "spec": {"limits": [item]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn shown(resources: &ResourceRequirements) -> String {
        let side = |m: &Option<BTreeMap<String, Quantity>>| {
            m.iter().flatten().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>().join(",")
        };
        format!("requests {} limits {}", side(&resources.requests), side(&resources.limits))
    }

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        for (text, value) in [
            ("100m", 0.1),
            ("2", 2.0),
            ("0.5", 0.5),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1G", 1e9),
            ("1k", 1e3),
            ("2e3", 2e3),
            ("1E3", 1e3),
            ("128974848", 128_974_848.0),
        ] {
            assert_eq!(parse_quantity(text), Some(value), "{text}");
        }
        for bad in ["", "Mi", "-1", "ten", "1Q"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn requests_and_limits_move_inside_the_namespaces_limitranges() {
        let cases = [
            (
                serde_json::json!({"type": "Container"}),
                "requests cpu=10m,memory=16Mi limits cpu=200m,memory=64Mi",
                0,
            ),
            // OpenShift's default: limits at most 10 × the request.
            (
                serde_json::json!({"type": "Container", "maxLimitRequestRatio": {"cpu": "10"}}),
                "requests cpu=10m,memory=16Mi limits cpu=100m,memory=64Mi",
                1,
            ),
            (
                serde_json::json!({"type": "Container", "min": {"cpu": "50m", "memory": "32Mi"}}),
                "requests cpu=50m,memory=32Mi limits cpu=200m,memory=64Mi",
                2,
            ),
            (
                serde_json::json!({"type": "Pod", "max": {"cpu": "100m", "memory": "8Mi"}}),
                "requests cpu=10m,memory=8Mi limits cpu=100m,memory=8Mi",
                3,
            ),
            // Storage limits are not the probe's business.
            (
                serde_json::json!({"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}),
                "requests cpu=10m,memory=16Mi limits cpu=200m,memory=64Mi",
                0,
            ),
        ];
        for (item, expected, changes) in cases {
            let (fitted, changed) = fit(&probe_resources(), &[range(item.clone())]);
            assert_eq!(shown(&fitted), expected, "{item}");
            assert_eq!(changed.len(), changes, "{item}: {changed:?}");
        }
    }
}
