//! The API's streams: watches (one JSON event a line, from a resourceVersion or from the
//! current state, with objects entering and leaving the selection as ADDED and DELETED) and
//! container logs (`pods/log`, followed until the container stops).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::catalog::KindId;
use super::rest::Query;
use super::select::Selection;
use super::status::ApiError;
use super::store::{Change, Event, Key};
use super::{Api, table};

/// How long a watch lasts when the client sets no `timeoutSeconds`.
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);

/// The longest watch: a longer `timeoutSeconds` is cut to this (a deadline must stay a time).
const LONGEST_WATCH: Duration = Duration::from_secs(7 * 24 * 3600);

fn streaming(content_type: &str, rx: mpsc::Receiver<Result<Bytes, std::convert::Infallible>>) -> Response {
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// `GET ...?watch=true`.
pub fn watch(
    api: Arc<Api>,
    kind: KindId,
    namespace: Option<&str>,
    selection: Selection,
    query: &Query,
    accept: &str,
) -> Result<Response, ApiError> {
    let version = query.get("resourceVersion").map(String::as_str).unwrap_or_default();
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let limit = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH, Duration::from_secs)
        .min(LONGEST_WATCH);
    let tables = table::wanted(accept);
    let namespace = namespace.map(str::to_string);
    let (tx, rx) = mpsc::channel(256);
    // Where the stream starts: the current state (synthetic ADDED events), or after a version.
    let (initial, past, mut live, revision) = if version.is_empty() || version == "0" || initial_events {
        let (items, revision, live) = api.store.list_and_watch(kind, namespace.as_deref());
        (items, Vec::new(), live, revision)
    } else {
        let from: u64 = version
            .parse()
            .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {version:?}")))?;
        match api.store.watch(from) {
            Ok((past, live)) => (Vec::new(), past, live, api.store.revision()),
            Err(oldest) => {
                let gone =
                    ApiError::new(410, "Expired", format!("too old resource version: {from} ({oldest})"));
                let _ = tx.try_send(Ok(line("ERROR", &gone.to_status())));
                return Ok(streaming("application/json", rx));
            }
        }
    };
    let info = api.catalog.get(kind).clone();
    let shown = move |object: &Value| {
        if tables {
            table::table(&info, std::slice::from_ref(object), revision, None)
        } else {
            object.clone()
        }
    };
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        for object in initial.iter().filter(|o| selection.matches(o)) {
            if tx.send(Ok(line("ADDED", &shown(object)))).await.is_err() {
                return;
            }
        }
        if initial_events {
            let bookmark = json!({"kind": api.catalog.get(kind).kind, "apiVersion": api.catalog.get(kind).api_version(),
                "metadata": {"resourceVersion": revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(Ok(line("BOOKMARK", &bookmark))).await.is_err() {
                return;
            }
        }
        let relevant = |event: &Event| {
            event.key.kind == kind && namespace.as_deref().is_none_or(|ns| event.key.namespace == ns)
        };
        for event in past.iter().filter(|e| relevant(e)) {
            if let Some((change, object)) = seen(event, &selection)
                && tx.send(Ok(line(change, &shown(object)))).await.is_err()
            {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
                event = live.recv() => event,
            };
            let Some(event) = event else { return };
            if !relevant(&event) {
                continue;
            }
            if let Some((change, object)) = seen(&event, &selection)
                && tx.send(Ok(line(change, &shown(object)))).await.is_err()
            {
                return;
            }
        }
    });
    Ok(streaming("application/json", rx))
}

/// What a watch with `selection` sees of `event`: an object entering the selection is ADDED,
/// one leaving it DELETED.
fn seen<'a>(event: &'a Event, selection: &Selection) -> Option<(&'static str, &'a Value)> {
    let now = selection.matches(&event.object);
    let before = event.old.as_ref().is_some_and(|o| selection.matches(o));
    match (event.change, before, now) {
        (Change::Added, _, true) => Some(("ADDED", &event.object)),
        (Change::Deleted, _, true) => Some(("DELETED", &event.object)),
        (Change::Modified, true, true) => Some(("MODIFIED", &event.object)),
        (Change::Modified, false, true) => Some(("ADDED", &event.object)),
        (Change::Modified, true, false) => Some(("DELETED", &event.object)),
        _ => None,
    }
}

/// `GET .../pods/NAME/log`: `container`, `follow`, `previous`, `tailLines`, `limitBytes`.
pub async fn log(api: &Api, pod: &Value, query: &Query) -> Result<Response, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c.as_str()) => c.clone(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => match containers.as_slice() {
            [only] => only.to_string(),
            many => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                )));
            }
        },
    };
    // Where kube-apiserver would connect to the kubelet: an unscheduled pod has none, and its
    // log is no content (204); a node that is not there is refused as kube-apiserver refuses it (its
    // message names the node as a pod).
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Ok(Response::builder()
            .status(204)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::empty())
            .unwrap_or_else(|_| Response::new(Body::empty())));
    }
    if api.store.get(&Key::new(KindId::NODES, "", node)).is_none() {
        return Err(ApiError::not_found("pods", node));
    }
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true" || v == "1");
    let source = match api.logs.get() {
        Some(logs) => logs.open(pod, &container, flag("previous"))?,
        None => {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
    };
    let limit_bytes = query.get("limitBytes").and_then(|l| l.parse::<u64>().ok());
    let tail = query.get("tailLines").and_then(|l| l.parse::<usize>().ok());
    let text = |bytes: Vec<u8>| {
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(bytes))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    };
    let whole = tokio::fs::read(&source.path).await.unwrap_or_default();
    let start = tail.map_or(0, |n| tail_start(&whole, n));
    if !flag("follow") {
        let mut bytes = whole[start..].to_vec();
        if let Some(limit) = limit_bytes {
            bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        return Ok(text(bytes));
    }
    let (tx, rx) = mpsc::channel(64);
    let mut running = source.running;
    let path = source.path;
    tokio::spawn(async move {
        let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
        if file.seek(std::io::SeekFrom::Start(start as u64)).await.is_err() {
            return;
        }
        let mut sent: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        // Once the container stopped, what it wrote last is read to the end, then the stream ends.
        let mut stopped = false;
        loop {
            let n = file.read(&mut buf).await.unwrap_or(0);
            if n > 0 {
                let mut chunk = buf[..n].to_vec();
                if let Some(limit) = limit_bytes {
                    chunk.truncate(usize::try_from(limit.saturating_sub(sent)).unwrap_or(usize::MAX));
                }
                sent += chunk.len() as u64;
                let full = limit_bytes.is_some_and(|l| sent >= l);
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() || full {
                    return;
                }
                continue;
            }
            if stopped {
                return;
            }
            if !*running.borrow() {
                stopped = true;
                continue;
            }
            tokio::select! {
                () = tx.closed() => return,
                // The kubelet gone with the container still marked running: it runs no more.
                changed = running.changed() => stopped = changed.is_err(),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    Ok(streaming("text/plain", rx))
}

/// Where the last `lines` lines of `text` begin.
fn tail_start(text: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(lines - 1).map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_of_a_log_starts_at_a_line() {
        assert_eq!(tail_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_start(b"a\nb\nc", 1), 4);
        assert_eq!(tail_start(b"a\n", 5), 0);
        assert_eq!(tail_start(b"a\n", 0), 2);
    }
}
