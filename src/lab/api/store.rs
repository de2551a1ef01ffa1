//! The lab API's objects: one map of JSON objects by kind, namespace and name, a global
//! resourceVersion, and the events every change makes, kept for watches that resume and sent
//! to the controllers that subscribe (the kubelet, the CNI, the namespace controller).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::mpsc;

use super::catalog::KindId;
use super::status::ApiError;

/// The changes a subscriber receives, in order.
pub type Events = mpsc::UnboundedReceiver<Arc<Event>>;

/// How many events a watch can resume from: older resourceVersions are gone (410).
const HISTORY: usize = 20_000;

/// Where an object lives. Cluster-scoped objects have an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: KindId,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: KindId, namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key { kind, namespace: namespace.into(), name: name.into() }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One change: the object after it (for a deletion, as it was last), and before it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub change: Change,
    pub key: Key,
    pub object: Value,
    pub old: Option<Value>,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
}

/// The objects. Every method takes the lock once: each change is atomic.
#[derive(Debug, Default)]
pub struct Store {
    state: Mutex<State>,
}

/// The current time as the API writes it (RFC 3339, seconds).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// The objects of `kind` (in `namespace`, or everywhere), sorted by namespace and name, and
    /// the resourceVersion they are at.
    pub fn list(&self, kind: KindId, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let state = self.lock();
        (of_kind(&state, kind, namespace), state.rv)
    }

    /// Stores a new object, stamping its uid, creationTimestamp and resourceVersion.
    pub fn create(&self, key: Key, mut object: Value, what: &str) -> Result<Value, ApiError> {
        let mut state = self.lock();
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(what, &key.name));
        }
        state.rv += 1;
        state.uids += 1;
        let (rv, uid) = (state.rv, state.uids);
        let meta = metadata(&mut object);
        meta.insert("uid".into(), Value::from(uid_of(uid)));
        meta.insert("resourceVersion".into(), Value::from(rv.to_string()));
        meta.entry("creationTimestamp").or_insert_with(|| Value::from(now()));
        state.objects.insert(key.clone(), object.clone());
        publish(&mut state, Event { rv, change: Change::Added, key, object: object.clone(), old: None });
        Ok(object)
    }

    /// Replaces an object with what `change` makes of it (under the lock, so a check of the
    /// current resourceVersion inside is atomic). No event and no new resourceVersion when
    /// nothing changed.
    pub fn update(
        &self,
        key: &Key,
        what: &str,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let Some(old) = state.objects.get(key).cloned() else {
            return Err(ApiError::not_found(what, &key.name));
        };
        let mut object = change(&old)?;
        // What the caller may not change.
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            let kept = old["metadata"].get(field).cloned();
            let meta = metadata(&mut object);
            match kept {
                Some(value) => meta.insert(field.into(), value),
                None => meta.remove(field),
            };
        }
        if object == old {
            return Ok(old);
        }
        state.rv += 1;
        let rv = state.rv;
        metadata(&mut object).insert("resourceVersion".into(), Value::from(rv.to_string()));
        state.objects.insert(key.clone(), object.clone());
        let event =
            Event { rv, change: Change::Modified, key: key.clone(), object: object.clone(), old: Some(old) };
        publish(&mut state, event);
        Ok(object)
    }

    /// Removes an object; what it was.
    pub fn delete(&self, key: &Key, what: &str) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let Some(mut object) = state.objects.remove(key) else {
            return Err(ApiError::not_found(what, &key.name));
        };
        state.rv += 1;
        let rv = state.rv;
        metadata(&mut object).insert("resourceVersion".into(), Value::from(rv.to_string()));
        publish(
            &mut state,
            Event { rv, change: Change::Deleted, key: key.clone(), object: object.clone(), old: None },
        );
        Ok(object)
    }

    /// Removes an object if `check` accepts it as it is now (a precondition, e.g. its uid).
    pub fn delete_if(
        &self,
        key: &Key,
        what: &str,
        check: impl FnOnce(&Value) -> bool,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        match state.objects.get(key) {
            Some(object) if check(object) => {}
            Some(_) => return Err(ApiError::conflict(what, &key.name)),
            None => return Err(ApiError::not_found(what, &key.name)),
        }
        let Some(mut object) = state.objects.remove(key) else {
            return Err(ApiError::not_found(what, &key.name));
        };
        state.rv += 1;
        let rv = state.rv;
        metadata(&mut object).insert("resourceVersion".into(), Value::from(rv.to_string()));
        publish(
            &mut state,
            Event { rv, change: Change::Deleted, key: key.clone(), object: object.clone(), old: None },
        );
        Ok(object)
    }

    /// Every change after resourceVersion `from`, then each later one as it happens. `Err`
    /// with the oldest resourceVersion still known when `from` is older than that.
    pub fn watch(&self, from: u64) -> Result<(Vec<Arc<Event>>, Events), u64> {
        let mut state = self.lock();
        let oldest = state.history.front().map_or(state.rv, |e| e.rv.saturating_sub(1));
        if from < oldest {
            return Err(oldest);
        }
        let past = state.history.iter().filter(|e| e.rv > from).cloned().collect();
        let (tx, rx) = mpsc::unbounded_channel();
        state.subscribers.push(tx);
        Ok((past, rx))
    }

    /// The objects of `kind` now (as [`Store::list`]), and every change from then on: a watch
    /// that starts with the current state.
    pub fn list_and_watch(&self, kind: KindId, namespace: Option<&str>) -> (Vec<Value>, u64, Events) {
        let mut state = self.lock();
        let items = of_kind(&state, kind, namespace);
        let (tx, rx) = mpsc::unbounded_channel();
        state.subscribers.push(tx);
        (items, state.rv, rx)
    }

    /// Every change from now on (controllers).
    pub fn subscribe(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        rx
    }
}

/// The objects of `kind` in `namespace` (or everywhere), in key order.
fn of_kind(state: &State, kind: KindId, namespace: Option<&str>) -> Vec<Value> {
    state
        .objects
        .iter()
        .filter(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
        .map(|(_, v)| v.clone())
        .collect()
}

fn publish(state: &mut State, event: Event) {
    let event = Arc::new(event);
    state.subscribers.retain(|s| s.send(event.clone()).is_ok());
    state.history.push_back(event);
    if state.history.len() > HISTORY {
        state.history.pop_front();
    }
}

/// `object.metadata` as a map, made if missing.
pub fn metadata(object: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(serde_json::Map::new());
    }
    let map = object.as_object_mut().expect("just made an object");
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(serde_json::Map::new());
    }
    meta.as_object_mut().expect("just made an object")
}

/// A uid in the UUID form the API uses, unique in this lab.
fn uid_of(n: u64) -> String {
    let seed = std::process::id() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        seed as u32,
        (n >> 48) as u16,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_bump_the_version_and_watches_resume_from_it() {
        let store = Store::default();
        let key = Key::new(KindId::CONFIG_MAPS, "x", "a");
        let created =
            store.create(key.clone(), json!({"metadata": {"name": "a"}}), "configmaps").expect("new");
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        assert!(created["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
        let again = store.create(key.clone(), json!({}), "configmaps").expect_err("taken");
        assert_eq!(again.code, 409);
        let same = store.update(&key, "configmaps", |o| Ok(o.clone())).expect("no change");
        assert_eq!(same["metadata"]["resourceVersion"], "1", "nothing changed, nothing bumped");
        let changed = store
            .update(&key, "configmaps", |o| {
                let mut o = o.clone();
                o["data"] = json!({"k": "v"});
                o["metadata"]["uid"] = json!("forged");
                Ok(o)
            })
            .expect("changed");
        assert_eq!(changed["metadata"]["resourceVersion"], "2");
        assert_eq!(changed["metadata"]["uid"], created["metadata"]["uid"], "the uid stays");
        let (past, mut live) = store.watch(1).expect("known");
        assert_eq!(past.iter().map(|e| e.change).collect::<Vec<_>>(), [Change::Modified]);
        store.delete(&key, "configmaps").expect("gone");
        let deleted = live.try_recv().expect("the deletion");
        assert_eq!((deleted.change, deleted.rv), (Change::Deleted, 3));
        assert_eq!(store.delete(&key, "configmaps").expect_err("twice").code, 404);
        assert_eq!(store.list(KindId::CONFIG_MAPS, None), (vec![], 3));
    }
}
