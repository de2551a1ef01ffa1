//! Following pods as they change, the way controllers do: one list, then a watch from its
//! resourceVersion, relisting whenever the watch ends (its timeout, a 410, a dropped
//! connection). Each change is seen as it happens, not at the next poll; a busy or unreachable
//! API server is asked again within the caller's bound.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::time::Instant;

use super::{api_error, transient};
use crate::cluster::ClusterError;
use crate::model::{ObjectKey, key_of};

/// What a follower makes of the pods as they are now.
#[derive(Debug)]
pub enum Step<T> {
    Done(T),
    Failed(ClusterError),
    /// Not yet; said when the bound runs out.
    Waiting(String),
}

/// Which pods to follow: a label and a field selector.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub labels: Option<String>,
    pub fields: Option<String>,
}

impl Selection {
    fn list(&self) -> ListParams {
        let mut params = ListParams::default();
        if let Some(labels) = &self.labels {
            params = params.labels(labels);
        }
        if let Some(fields) = &self.fields {
            params = params.fields(fields);
        }
        params
    }

    fn watch(&self, timeout: Duration) -> WatchParams {
        // kube refuses watch timeouts from 295 s on.
        let mut params = WatchParams::default().timeout(timeout.as_secs().clamp(1, 290) as u32);
        if let Some(labels) = &self.labels {
            params = params.labels(labels);
        }
        if let Some(fields) = &self.fields {
            params = params.fields(fields);
        }
        params
    }
}

/// Follows the pods `selection` picks in `api` until `decide` is done with them, fails, or
/// `limit` passes (`Err(Timeout)` with what it last waited for).
pub async fn follow<T>(
    api: &Api<Pod>,
    selection: &Selection,
    limit: Duration,
    mut decide: impl FnMut(&BTreeMap<ObjectKey, Pod>) -> Step<T>,
) -> Result<T, ClusterError> {
    let deadline = Instant::now() + limit;
    let mut waiting = String::new();
    // NB: at least one look, however short the bound.
    let mut first = true;
    while first || Instant::now() < deadline {
        first = false;
        let list = match api.list(&selection.list()).await {
            Ok(list) => list,
            Err(e) if transient(&e) => {
                waiting = format!("the API server did not answer ({e})");
                tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
                continue;
            }
            Err(e) => return Err(api_error("list", "pods", "(the tool's)", e)),
        };
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let mut pods: BTreeMap<ObjectKey, Pod> =
            list.items.into_iter().map(|p| (key_of(&p.metadata), p)).collect();
        match decide(&pods) {
            Step::Done(done) => return Ok(done),
            Step::Failed(e) => return Err(e),
            Step::Waiting(why) => waiting = why,
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let stream = match api.watch(&selection.watch(remaining + Duration::from_secs(1)), &version).await {
            Ok(stream) => stream,
            Err(e) if transient(&e) => {
                waiting = format!("the API server did not answer ({e})");
                tokio::time::sleep(Duration::from_millis(500).min(remaining)).await;
                continue;
            }
            Err(e) => return Err(api_error("watch", "pods", "(the tool's)", e)),
        };
        let mut stream = stream.boxed();
        let watched = Instant::now();
        loop {
            let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(ClusterError::Timeout { what: waiting, limit }),
                // The watch ended (its timeout, the server going away): list again, not at
                // once if it ended as it began.
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WatchEvent::Error(_)))) => {
                    if watched.elapsed() < Duration::from_millis(100) {
                        tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
                    }
                    break;
                }
                Ok(Some(Ok(event))) => event,
            };
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    pods.insert(key_of(&pod.metadata), pod);
                }
                WatchEvent::Deleted(pod) => {
                    pods.remove(&key_of(&pod.metadata));
                }
                WatchEvent::Bookmark(_) | WatchEvent::Error(_) => continue,
            }
            match decide(&pods) {
                Step::Done(done) => return Ok(done),
                Step::Failed(e) => return Err(e),
                Step::Waiting(why) => waiting = why,
            }
        }
    }
    Err(ClusterError::Timeout { what: waiting, limit })
}
