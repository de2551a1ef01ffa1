//! Reading cluster objects from files: multi-document YAML, JSON, or a `kind: List` as
//! `kubectl get ns,pods,netpol -A -o yaml` prints it.
//!
//! Reading the files is the only I/O ([`read_sources`]); everything else works on text, so
//! tests and other front ends feed [`load`] directly. Every failure names the file, the line,
//! the document and its kind/name, and the field where one is to blame.

pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;

use crate::engine::{FieldError, validate_pod, validate_policy};
use crate::model::{Note, Snapshot};
use crate::validate::{validate_meta, validate_service};
use tree::{FieldPath, Node, Value};

/// The text of one input and the name to report it by.
#[derive(Debug, Clone)]
pub struct Source {
    /// A path, or `<stdin>`.
    pub name: String,
    pub text: String,
}

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// 1-based index among the file's non-empty documents.
    pub document: usize,
    /// Index in a List's `items`.
    pub item: Option<usize>,
    /// 1-based line of the object (0 when unknown).
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// Bad input. Each renders as one line; the CLI exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// A directory held nothing to read.
    #[error("{path}: no .yaml, .yml or .json files in this directory")]
    EmptyDirectory { path: String },
    /// The file holds no objects.
    #[error("{file}: the file is empty (expected Namespaces, Pods and NetworkPolicies as YAML or JSON)")]
    Empty { file: String },
    /// The text is not valid YAML/JSON.
    #[error("{file}:{line}:{column}: invalid YAML/JSON: {message}")]
    Syntax { file: String, line: u64, column: u64, message: String },
    /// A document is not a usable Kubernetes object, or one failed to deserialize or validate.
    #[error(transparent)]
    Object(Box<ObjectError>),
    /// Two different objects share a kind, namespace and name.
    #[error(
        "{kind} {name} is defined twice, differently: {}:{} ({}) and {}:{} ({})",
        .places[0].file, .places[0].line, .places[0], .places[1].file, .places[1].line, .places[1]
    )]
    Duplicate { kind: String, name: String, places: Box<[Origin; 2]> },
}

/// What is wrong with one object, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub origin: Origin,
    /// 1-based line of the failing field (or of the object).
    pub line: u64,
    /// `Kind namespace/name` when the object got that far.
    pub object: Option<String>,
    /// The field to blame, e.g. `spec.ingress[0].from[0].ipBlock.cidr`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.origin.file, self.line, self.origin)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ObjectError {}

impl ObjectError {
    fn at(
        node: &Node,
        origin: &Origin,
        kind: Option<&str>,
        path: Option<&FieldPath>,
        message: String,
    ) -> InputError {
        let line = path.map_or(node.line, |p| node.locate(p).line);
        InputError::Object(Box::new(ObjectError {
            origin: origin.clone(),
            line,
            object: kind.map(|kind| format!("{kind} {}", display_name(node))),
            field: path.filter(|p| !p.is_empty()).map(ToString::to_string),
            message,
        }))
    }
}

/// The objects read from every source, as a snapshot, plus notes on what was skipped or
/// assumed.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub notes: Vec<Note>,
}

/// Reads each path (`-` = standard input; a directory = its `.yaml`, `.yml` and `.json` files,
/// sorted by name).
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, InputError> {
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let text = std::io::read_to_string(std::io::stdin())
                .map_err(|source| InputError::Read { path: "<stdin>".into(), source })?;
            sources.push(Source { name: "<stdin>".into(), text });
        } else if path.is_dir() {
            let files = directory_files(path)?;
            if files.is_empty() {
                return Err(InputError::EmptyDirectory { path: path.display().to_string() });
            }
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(path)?);
        }
    }
    Ok(sources)
}

fn read_file(path: &Path) -> Result<Source, InputError> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| InputError::Read { path: name.clone(), source })?;
    Ok(Source { name, text })
}

fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let read_err = |source| InputError::Read { path: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let wanted =
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every source into one snapshot.
pub fn load(sources: &[Source]) -> Result<Loaded, InputError> {
    let mut collected = Collected::default();
    for source in sources {
        load_source(source, &mut collected)?;
    }
    let mut notes = collected.notes;
    if !collected.ignored.is_empty() {
        let total: usize = collected.ignored.values().sum();
        let kinds: Vec<String> = collected.ignored.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        notes.push(Note(format!(
            "ignored {total} object(s) of other kinds ({}); only Namespaces, Pods, Services, Nodes and NetworkPolicies matter here",
            kinds.join(", ")
        )));
    }
    let (snapshot, snapshot_notes) = Snapshot::new(
        collected.namespaces.into_values().map(|(o, _)| o).collect(),
        collected.pods.into_values().map(|(o, _)| o).collect(),
        collected.policies.into_values().map(|(o, _)| o).collect(),
    );
    let snapshot = snapshot
        .with_services(collected.services.into_values().map(|(o, _)| o).collect())
        .with_endpoint_slices(collected.endpoint_slices.into_values().map(|(o, _)| o).collect())
        .with_unmodelled(collected.unmodelled)
        .with_nodes(collected.nodes.into_values().map(|(o, _)| o).collect());
    for object in snapshot.unmodelled() {
        notes.push(Note(format!(
            "{object} is a policy the engine does not model: every connection it may touch is `unknown`, never a confident verdict"
        )));
    }
    notes.extend(snapshot_notes);
    Ok(Loaded { snapshot, notes })
}

type Placed<T> = BTreeMap<(String, String), (T, Origin)>;

#[derive(Default)]
struct Collected {
    namespaces: Placed<Namespace>,
    pods: Placed<Pod>,
    policies: Placed<NetworkPolicy>,
    services: Placed<Service>,
    endpoint_slices: Placed<k8s_openapi::api::discovery::v1::EndpointSlice>,
    unmodelled: Vec<crate::model::Unmodelled>,
    nodes: Placed<k8s_openapi::api::core::v1::Node>,
    ignored: BTreeMap<String, usize>,
    notes: Vec<Note>,
}

fn load_source(source: &Source, collected: &mut Collected) -> Result<(), InputError> {
    let file = source.name.as_str();
    let documents = tree::parse_documents(&source.text).map_err(|e| InputError::Syntax {
        file: file.into(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    if documents.is_empty() {
        return Err(InputError::Empty { file: file.into() });
    }
    for (index, document) in documents.iter().enumerate() {
        let origin = Origin { file: file.into(), document: index + 1, item: None, line: document.line };
        match document.get_str("kind") {
            Some(kind) if kind == "List" || kind.ends_with("List") => {
                let Some(Node { value: Value::Seq(items), .. }) = document.get("items") else {
                    if matches!(document.get("items").map(|n| &n.value), None | Some(Value::Null)) {
                        continue; // An empty list, as `kubectl get` prints when nothing matches.
                    }
                    return Err(not_an_object(&origin, document, format!("a {kind} needs an `items` list")));
                };
                // A typed list from the API (`PodList`, `kubectl get --raw`) omits its items' kind.
                let implied = kind.strip_suffix("List").filter(|k| !k.is_empty());
                for (i, item) in items.iter().enumerate() {
                    let origin = Origin { item: Some(i), line: item.line, ..origin.clone() };
                    load_object(item, origin, implied, collected)?;
                }
            }
            _ => load_object(document, origin, None, collected)?,
        }
    }
    Ok(())
}

fn not_an_object(origin: &Origin, node: &Node, message: String) -> InputError {
    ObjectError::at(node, origin, None, None, message)
}

fn load_object(
    node: &Node,
    origin: Origin,
    implied_kind: Option<&str>,
    collected: &mut Collected,
) -> Result<(), InputError> {
    if !matches!(node.value, Value::Map(_)) {
        return Err(not_an_object(
            &origin,
            node,
            "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
        ));
    }
    let Some(kind) = node.get_str("kind").or(implied_kind) else {
        return Err(not_an_object(
            &origin,
            node,
            "object has no `kind` (expected Namespace, Pod or NetworkPolicy)".into(),
        ));
    };
    let api_version = node.get_str("apiVersion").unwrap_or_default();
    if let Some(cluster_wide) = crate::model::Unmodelled::cluster_wide(api_version, kind) {
        let meta = node.get("metadata");
        let name = meta.and_then(|m| m.get_str("name")).unwrap_or_default().to_string();
        let namespace = (!cluster_wide).then(|| {
            meta.and_then(|m| m.get_str("namespace"))
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_string()
        });
        collected.unmodelled.push(crate::model::Unmodelled {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace,
            name,
        });
        return Ok(());
    }
    match kind {
        "Namespace" => {
            let ns: Namespace = typed(node, &origin, kind, UnknownFields::Note(&mut collected.notes))?;
            let key = (String::new(), required_name(node, &origin, kind, &ns.metadata)?);
            place(&mut collected.namespaces, kind, key, ns, origin)
        }
        "Pod" => {
            let pod: Pod = typed(node, &origin, kind, UnknownFields::Note(&mut collected.notes))?;
            let name = required_name(node, &origin, kind, &pod.metadata)?;
            validate_pod(&pod).map_err(|e| field_error(node, &origin, kind, e))?;
            let key = (namespace_or_default(&pod.metadata), name);
            place(&mut collected.pods, kind, key, pod, origin)
        }
        "Node" => {
            let node_object: k8s_openapi::api::core::v1::Node =
                typed(node, &origin, kind, UnknownFields::Note(&mut collected.notes))?;
            let key = (String::new(), required_name(node, &origin, kind, &node_object.metadata)?);
            place(&mut collected.nodes, kind, key, node_object, origin)
        }
        "Service" => {
            let service: Service = typed(node, &origin, kind, UnknownFields::Note(&mut collected.notes))?;
            let name = required_name(node, &origin, kind, &service.metadata)?;
            validate_service(&service).map_err(|e| field_error(node, &origin, kind, e))?;
            let key = (namespace_or_default(&service.metadata), name);
            place(&mut collected.services, kind, key, service, origin)
        }
        "EndpointSlice" => {
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                typed(node, &origin, kind, UnknownFields::Note(&mut collected.notes))?;
            let name = required_name(node, &origin, kind, &slice.metadata)?;
            let key = (namespace_or_default(&slice.metadata), name);
            place(&mut collected.endpoint_slices, kind, key, slice, origin)
        }
        "NetworkPolicy" => {
            // NB: unknown fields are errors here: a misspelt `podSelector` would otherwise
            // silently select every pod. The API server rejects them too (strict validation).
            let policy: NetworkPolicy = typed(node, &origin, kind, UnknownFields::Reject)?;
            let name = required_name(node, &origin, kind, &policy.metadata)?;
            let warnings = validate_policy(&policy).map_err(|e| field_error(node, &origin, kind, e))?;
            for warning in warnings {
                collected.notes.push(Note(field_error(node, &origin, kind, warning).to_string()));
            }
            let key = (namespace_or_default(&policy.metadata), name);
            place(&mut collected.policies, kind, key, policy, origin)
        }
        other => {
            *collected.ignored.entry(other.to_string()).or_default() += 1;
            Ok(())
        }
    }
}

/// The namespace an object lands in: its own, or `default` (see `Snapshot::new`).
fn namespace_or_default(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| "default".into())
}

fn required_name(
    node: &Node,
    origin: &Origin,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<String, InputError> {
    validate_meta(kind, meta).map_err(|e| field_error(node, origin, kind, e))
}

/// An object that failed validation, located at the failing field.
fn field_error(node: &Node, origin: &Origin, kind: &str, error: FieldError) -> InputError {
    ObjectError::at(node, origin, Some(kind), Some(&FieldPath::parse(&error.field)), error.message)
}

/// `namespace/name`, `name`, or `(unnamed)`, read from the raw tree so it works even when the
/// typed deserialization failed.
fn display_name(node: &Node) -> String {
    let meta = node.get("metadata");
    let name = meta.and_then(|m| m.get_str("name")).unwrap_or("(unnamed)");
    match meta.and_then(|m| m.get_str("namespace")) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

enum UnknownFields<'a> {
    Reject,
    Note(&'a mut Vec<Note>),
}

/// Deserializes a k8s-openapi type from the tree, reporting the failing field and its line.
fn typed<T: DeserializeOwned>(
    node: &Node,
    origin: &Origin,
    kind: &str,
    unknown: UnknownFields<'_>,
) -> Result<T, InputError> {
    let json = node.to_json();
    let mut ignored: Vec<FieldPath> = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| ignored.push(FieldPath::from_ignored(&path));
    let deserializer = serde_ignored::Deserializer::new(&json, &mut track);
    let value: T = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = FieldPath::from_serde(err.path());
        ObjectError::at(node, origin, Some(kind), Some(&path), err.into_inner().to_string())
    })?;
    // `status` and `metadata` of objects read from a cluster may carry fields newer than the
    // API version we model; they do not change any verdict.
    ignored.retain(|path| !path.starts_with_key("status") && !path.starts_with_key("metadata"));
    if let Some(first) = ignored.first() {
        match unknown {
            UnknownFields::Reject => {
                let message = "unknown field (check its spelling against the networking.k8s.io/v1 API)";
                return Err(ObjectError::at(node, origin, Some(kind), Some(first), message.into()));
            }
            UnknownFields::Note(notes) => notes.push(Note(format!(
                "{}:{}: {origin} ({kind} {}): ignored unknown field(s) {}",
                origin.file,
                node.locate(first).line,
                display_name(node),
                ignored.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
    Ok(value)
}

/// Keeps one object per (namespace, name); an identical repeat is dropped, a different one is
/// an error naming both places.
fn place<T: PartialEq>(
    map: &mut Placed<T>,
    kind: &str,
    key: (String, String),
    object: T,
    origin: Origin,
) -> Result<(), InputError> {
    match map.get(&key) {
        Some((existing, _)) if *existing == object => Ok(()),
        Some((_, first)) => Err(InputError::Duplicate {
            kind: kind.into(),
            name: if key.0.is_empty() { key.1.clone() } else { format!("{}/{}", key.0, key.1) },
            places: Box::new([first.clone(), origin]),
        }),
        None => {
            map.insert(key, (object, origin));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
