//! A YAML/JSON document as a tree that remembers where each node stood in the file.
//!
//! Objects are deserialized in two steps: the text becomes a [`Node`] tree (any valid YAML,
//! so a typo in a field never fails the parse), then the tree becomes a k8s-openapi type. When
//! the second step fails, the error's field path is looked up in the tree to name the line.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One node of a parsed document and its 1-based position (0 when unknown). A mapping's value
/// is positioned at its key, so errors point at the field's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: u64,
    pub column: u64,
    pub value: Value,
}

/// The value of a [`Node`]: the JSON data model, with mapping order kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn from_spanned(spanned: Spanned<Value>) -> Self {
        Node { line: spanned.referenced.line(), column: spanned.referenced.column(), value: spanned.value }
    }

    fn shift_lines(&mut self, by: u64) {
        self.line += by;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.shift_lines(by)),
            Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| n.shift_lines(by)),
            _ => {}
        }
    }

    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string under `key` when this node is a mapping holding one there.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key).map(|n| &n.value) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The deepest node along `path` (the nearest existing ancestor when the path runs out).
    pub fn locate(&self, path: &FieldPath) -> &Node {
        let mut node = self;
        for segment in &path.0 {
            let next = match (segment, &node.value) {
                (Segment::Key(key), Value::Map(_)) => node.get(key),
                (Segment::Index(i), Value::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// The tree as a `serde_json::Value`, the form k8s-openapi types deserialize from.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            // NB: NaN and infinities have no JSON form; no Kubernetes field accepts them anyway.
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

/// A path to a field, in the API's own spelling: `spec.ingress[0].from[1].ipBlock.cidr`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Segment>);

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// Parses the dotted form used throughout the engine (`spec.ingress[0].ports[1].port`).
    pub fn parse(text: &str) -> FieldPath {
        let mut segments = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                if open > 0 {
                    segments.push(Segment::Key(rest[..open].to_string()));
                }
                rest = &rest[open..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let Some(close) = stripped.find(']') else { break };
                    match stripped[..close].parse() {
                        Ok(i) => segments.push(Segment::Index(i)),
                        Err(_) => segments.push(Segment::Key(stripped[..close].to_string())),
                    }
                    rest = &stripped[close + 1..];
                }
            } else {
                segments.push(Segment::Key(rest.to_string()));
            }
        }
        FieldPath(segments)
    }

    /// The path serde_path_to_error reports, in the same form.
    pub fn from_serde(path: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment as S;
        FieldPath(
            path.iter()
                .filter_map(|segment| match segment {
                    S::Seq { index } => Some(Segment::Index(*index)),
                    S::Map { key } => Some(Segment::Key(key.clone())),
                    S::Enum { variant } => Some(Segment::Key(variant.clone())),
                    S::Unknown => None,
                })
                .collect(),
        )
    }

    /// The path serde_ignored reports for an unknown field, in the same form.
    pub fn from_ignored(path: &serde_ignored::Path<'_>) -> FieldPath {
        use serde_ignored::Path as P;
        let mut segments = Vec::new();
        let mut at = path;
        loop {
            match at {
                P::Root => break,
                P::Seq { parent, index } => {
                    segments.push(Segment::Index(*index));
                    at = parent;
                }
                P::Map { parent, key } => {
                    segments.push(Segment::Key(key.clone()));
                    at = parent;
                }
                P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                    at = parent
                }
            }
        }
        segments.reverse();
        FieldPath(segments)
    }

    /// Whether the path starts with the top-level field `key`.
    pub fn starts_with_key(&self, key: &str) -> bool {
        matches!(self.0.first(), Some(Segment::Key(k)) if k == key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node::from_spanned(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            // A field is where its key is: for a block value that is the line before it.
            let mut value = Node::from_spanned(map.next_value::<Spanned<Value>>()?);
            value.line = key.referenced.line();
            value.column = key.referenced.column();
            let Key(key) = key.value;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key. Like kubectl's YAML-to-JSON step, scalar keys of other types become strings.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".to_string()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// A document parse failure: the message and, when known, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Parses every document of a YAML stream (JSON is YAML too), or a stream of concatenated JSON
/// values (`jq -c '.items[]'` prints one object per line). Empty documents are skipped, as
/// kubectl skips them.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    match parse_yaml(text) {
        Ok(documents) => Ok(documents),
        // NB: YAML has no place for a second root value without `---`, so a JSON stream fails
        // as YAML; split it at value boundaries instead (and report JSON's own error if that
        // fails too: it is the better message for a JSON file).
        Err(_) if text.trim_start().starts_with(['{', '[']) => parse_json_stream(text),
        Err(error) => Err(error),
    }
}

fn parse_yaml(text: &str) -> Result<Vec<Node>, SyntaxError> {
    // NB: YAML 1.2 core booleans only. Under YAML 1.1 rules `namespace: y` or `name: on` would
    // become booleans; kubectl keeps them as the strings their fields expect.
    //
    // The default budget suits config files (1,024 documents, 250,000 nodes); a cluster dump is
    // far bigger. Every document, node and event costs at least one byte of input, so limits
    // scaled to the input's size reject nothing honest; the alias limits that stop "billion
    // laughs" expansion keep their defaults.
    let room = text.len().saturating_mul(4).saturating_add(4096);
    let budget = serde_saphyr::budget! {
        max_documents: room,
        max_nodes: room,
        max_events: room,
        max_total_scalar_bytes: room,
    };
    let options = serde_saphyr::options! {
        budget: budget,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
    };
    match serde_saphyr::from_multiple_with_options::<Spanned<Value>>(text, options) {
        Ok(docs) => Ok(docs.into_iter().map(Node::from_spanned).collect()),
        Err(err) => {
            let location = err.location();
            let options = serde_saphyr::render_options! {
                snippets: serde_saphyr::SnippetMode::Off,
            };
            let rendered = err.without_snippet().render_with_options(options);
            Err(SyntaxError {
                line: location.map_or(0, |l| l.line()),
                column: location.map_or(0, |l| l.column()),
                message: first_line_without_location(&rendered),
            })
        }
    }
}

/// Concatenated JSON values: each is cut out at its boundaries and parsed on its own, then its
/// lines are shifted to where it stood in the file.
fn parse_json_stream(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut documents = Vec::new();
    let (mut start, mut lines_before) = (0, 0);
    while let Some(item) = stream.next() {
        item.map_err(|e| SyntaxError {
            line: e.line() as u64,
            column: e.column() as u64,
            message: first_line_without_location(&e.to_string()),
        })?;
        let end = stream.byte_offset();
        let value = &text[start..end];
        let parsed = parse_yaml(value).map_err(|e| SyntaxError { line: e.line + lines_before, ..e })?;
        for mut node in parsed {
            node.shift_lines(lines_before);
            documents.push(node);
        }
        lines_before += value.matches('\n').count() as u64;
        start = end;
    }
    Ok(documents)
}

/// serde-saphyr appends " at line L column C"; we print the position ourselves.
fn first_line_without_location(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or_default().trim();
    match line.rfind(" at line ") {
        Some(at) => line[..at].to_string(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Node> {
        parse_documents(text).expect("valid YAML")
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let docs = parse("namespace: y\nname: on\nflag: true\n");
        assert_eq!(docs[0].get_str("namespace"), Some("y"));
        assert_eq!(docs[0].get_str("name"), Some("on"));
        assert_eq!(docs[0].get("flag").map(|n| &n.value), Some(&Value::Bool(true)));
    }

    #[test]
    fn every_node_knows_its_line() {
        let docs = parse("a: 1\nb:\n  c:\n  - x\n  - y: 2\n---\nd: true\n");
        assert_eq!(docs.len(), 2);
        let path = FieldPath::parse("b.c[1].y");
        let node = docs[0].locate(&path);
        assert_eq!(node.line, 5);
        assert_eq!(node.to_json(), serde_json::json!(2));
        assert_eq!(docs[1].get("d").map(|n| n.line), Some(7));
    }

    #[test]
    fn locate_stops_at_the_deepest_existing_node() {
        let docs = parse("spec:\n  ingress:\n  - from: []\n");
        let node = docs[0].locate(&FieldPath::parse("spec.ingress[0].ports[3]"));
        assert_eq!(node.line, 3);
    }

    #[test]
    fn large_streams_are_not_cut_off_by_the_default_budget() {
        let text = "a: 1\n---\n".repeat(5000);
        assert_eq!(parse_documents(&text).expect("5,000 documents").len(), 5000);
    }

    #[test]
    fn alias_bombs_are_still_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        assert!(parse_documents(&text).is_err(), "10^12 expansions must be refused");
    }

    #[test]
    fn empty_documents_are_skipped() {
        let docs = parse("---\n---\na: 1\n---\n");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn json_documents_parse_with_positions() {
        let docs = parse("{\n    \"kind\": \"Pod\",\n    \"spec\": {\"x\": [1, 2]}\n}\n");
        assert_eq!(docs[0].get_str("kind"), Some("Pod"));
        assert_eq!(docs[0].locate(&FieldPath::parse("spec.x[1]")).line, 3);
    }

    #[test]
    fn concatenated_json_values_are_documents_with_their_own_lines() {
        let docs = parse("{\"kind\": \"Namespace\"}\n{\"kind\": \"Pod\",\n \"spec\": {\"x\": 1}}\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].get_str("kind"), Some("Pod"));
        assert_eq!(docs[1].locate(&FieldPath::parse("spec.x")).line, 3);
        let err = parse_documents("{\"kind\": \"Namespace\"}\n{\"kind\": }\n").expect_err("bad second value");
        assert_eq!(err.line, 2, "{err:?}");
        assert!(!err.message.contains(" at line "), "{err:?}");
        // JSON allows what YAML refuses (a repeated key): the error is still at the file's line.
        let err =
            parse_documents("{\"a\": 1}\n{\"a\": 1}\n{\"b\": 1,\n \"b\": 2}\n").expect_err("duplicate key");
        assert_eq!(err.line, 4, "{err:?}");
    }

    #[test]
    fn non_string_keys_become_strings_like_kubectl_does() {
        let docs = parse("labels:\n  1: one\n  true: yes\n");
        let json = docs[0].to_json();
        assert_eq!(json["labels"]["1"], "one");
        assert_eq!(json["labels"]["true"], "yes");
    }

    #[test]
    fn duplicate_keys_are_a_syntax_error_with_a_line() {
        let err = parse_documents("a: 1\nb: 2\na: 3\n").expect_err("duplicate key");
        assert_eq!(err.line, 3, "{err:?}");
        assert!(err.message.contains("duplicate"), "{err:?}");
    }

    #[test]
    fn broken_yaml_reports_line_and_message() {
        let err = parse_documents("a: [1, 2\nb: 3\n").expect_err("unclosed flow sequence");
        assert!(err.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
        assert!(!err.message.contains('\n'));
    }

    #[test]
    fn field_paths_round_trip_through_display() {
        for text in ["spec.ingress[0].from[1].ipBlock.except[2]", "metadata.name", "items[3]"] {
            assert_eq!(FieldPath::parse(text).to_string(), text);
        }
    }
}
