//! Label selectors as kubectl's `-l` and the API's `labelSelector` write them, and field
//! selectors as the API's `fieldSelector` does. Pure.

use kube_core::Selector;

/// Parses a label selector as kubectl's `-l` takes it: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// `k in (a,b)`, `k notin (a,b)`, joined by commas.
pub fn parse_labels(text: &str) -> Result<Selector, String> {
    use kube_core::Expression;
    let mut expressions = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        // A term ends at the first comma outside parentheses.
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                c == ',' && depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let term = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        let bad = || {
            format!("{term:?} is not a selector term (write k=v, k!=v, k, !k, k in (a,b) or k notin (a,b))")
        };
        let key_ok =
            |k: &str| !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
        let set = |values: &str| -> Option<std::collections::BTreeSet<String>> {
            let inner = values.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        };
        let expression = if let Some((k, v)) = term.split_once("!=") {
            Expression::NotEqual(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Expression::Equal(k.trim().into(), v.trim().into())
        } else if let Some(k) = term.strip_prefix('!') {
            Expression::DoesNotExist(k.trim().into())
        } else if let Some((k, values)) = term.split_once(" notin ") {
            Expression::NotIn(k.trim().into(), set(values).ok_or_else(bad)?)
        } else if let Some((k, values)) = term.split_once(" in ") {
            Expression::In(k.trim().into(), set(values).ok_or_else(bad)?)
        } else {
            Expression::Exists(term.into())
        };
        let key = match &expression {
            Expression::In(k, _)
            | Expression::NotIn(k, _)
            | Expression::Equal(k, _)
            | Expression::NotEqual(k, _)
            | Expression::Exists(k)
            | Expression::DoesNotExist(k) => k,
        };
        if !key_ok(key) {
            return Err(bad());
        }
        expressions.push(expression);
    }
    if expressions.is_empty() {
        return Err("an empty selector: leave the flag out to select every namespace".into());
    }
    Ok(expressions.into_iter().collect())
}

/// A field selector term: `key=value`, `key==value` or `key!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub key: String,
    pub value: String,
    /// `!=`.
    pub negated: bool,
}

/// Parses a field selector (`metadata.name=x,status.phase!=Running`); empty: no terms.
pub fn parse_fields(text: &str) -> Result<Vec<FieldTerm>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            let (key, value, negated) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, v, false)
            } else {
                return Err(format!("invalid field selector term {term:?}: write key=value or key!=value"));
            };
            Ok(FieldTerm { key: key.trim().to_string(), value: value.trim().to_string(), negated })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::SelectorExt;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_parse_like_kubectls() {
        let selector = parse_labels("team=shop, env!=dev,!legacy,tier in (web, api),x")
            .unwrap_or_else(|e| panic!("{e}"));
        let labels = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
        };
        assert!(selector.matches(&labels(&[("team", "shop"), ("tier", "web"), ("x", "")])));
        assert!(!selector.matches(&labels(&[("team", "shop"), ("tier", "web"), ("x", ""), ("legacy", "1")])));
        assert!(!selector.matches(&labels(&[("team", "shop"), ("tier", "db"), ("x", "")])));
        assert!(parse_labels("").is_err());
        assert!(parse_labels("a in b").is_err());
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn field_selectors_take_equality_and_inequality() {
        let terms = parse_fields("metadata.name=a, status.phase!=Running,spec.nodeName==n").expect("valid");
        let shown: Vec<(&str, &str, bool)> =
            terms.iter().map(|t| (t.key.as_str(), t.value.as_str(), t.negated)).collect();
        assert_eq!(
            shown,
            [("metadata.name", "a", false), ("status.phase", "Running", true), ("spec.nodeName", "n", false)]
        );
        assert!(parse_fields("").expect("empty").is_empty());
        assert!(parse_fields("metadata.name").is_err());
    }
}
