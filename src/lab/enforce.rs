//! The lab's CNI at work: the lab record as the API changes it (namespaces and their labels,
//! pods and their labels and addresses, NetworkPolicies), and the nftables ruleset that
//! enforces it — at once, as a CNI that programs a pod's rules before its containers start,
//! or `--enforce-delay` after each change, in order, like a slow one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::topology::LabPod;
use super::{Lab, LabError};
use crate::model::{ObjectKey, key_of};

/// A running lab and its CNI, shared by the kubelet and the API's mirror.
#[derive(Debug)]
pub struct Network {
    lab: Mutex<Lab>,
    delay: Duration,
    applier: Option<mpsc::UnboundedSender<(Instant, Lab)>>,
    /// Without a delay: changes made so far (counted under the lab's mutex), the last one
    /// enforced and how that went, and the applier's wake-up.
    requested: AtomicU64,
    enforced: watch::Sender<(u64, Option<String>)>,
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Network {
    /// Drives `lab`; with an enforcement delay, a task of the current runtime applies changes.
    pub fn new(lab: Lab) -> Arc<Network> {
        let delay = lab.enforce_delay();
        let (applier, receiver) = if delay.is_zero() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel::<(Instant, Lab)>();
            (Some(tx), Some(rx))
        };
        let network = Arc::new(Network {
            lab: Mutex::new(lab),
            delay,
            applier,
            requested: AtomicU64::new(0),
            enforced: watch::channel((0, None)).0,
            wake: Notify::new(),
        });
        if delay.is_zero() {
            tokio::spawn(apply_at_once(Arc::downgrade(&network)));
        }
        if let Some(mut rx) = receiver {
            let weak = Arc::downgrade(&network);
            tokio::spawn(async move {
                // In order: every change waits the same delay, so due times only grow.
                while let Some((due, lab)) = rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    let applied = tokio::task::spawn_blocking(move || {
                        let _lock = super::state::lock(&lab.state.name).map_err(|e| e.to_string())?;
                        lab.apply_policies(&lab.state.policies).map_err(|e| e.to_string())
                    })
                    .await;
                    if weak.strong_count() == 0 {
                        break;
                    }
                    let failure = match applied {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(e) => e.to_string(),
                    };
                    eprintln!("netpol-verify lab: a delayed policy change failed: {failure}");
                }
            });
        }
        network
    }

    /// The lab as it is now.
    pub fn lab(&self) -> Lab {
        lock(&self.lab).clone()
    }

    /// Makes `change` to the lab (on a blocking thread: it runs `ip` and `nft`) and has the
    /// result enforced: at once (this returns once a ruleset that includes the change is in
    /// place; changes made together share one), or queued for the delay, in order.
    pub async fn change<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Lab) -> Result<T, LabError> + Send + 'static,
    ) -> Result<T, LabError> {
        let network = self.clone();
        let (out, generation) = tokio::task::spawn_blocking(move || {
            let mut lab = lock(&network.lab);
            lab.locked(|lab| {
                let out = change(lab)?;
                let generation = match &network.applier {
                    None => network.requested.fetch_add(1, Ordering::SeqCst) + 1,
                    Some(applier) => {
                        applier
                            .send((Instant::now() + network.delay, lab.clone()))
                            .map_err(|_| LabError::State("the lab's policy applier has stopped".into()))?;
                        0
                    }
                };
                Ok::<_, LabError>((out, generation))
            })
        })
        .await
        .map_err(|e| LabError::State(format!("a change to the lab failed: {e}")))??;
        if generation > 0 {
            self.wake.notify_one();
            let mut enforced = self.enforced.subscribe();
            let waited = tokio::time::timeout(
                ENFORCE_TIMEOUT,
                enforced.wait_for(|(applied, _)| *applied >= generation),
            )
            .await
            .map_err(|_| {
                LabError::State(format!(
                    "the lab's CNI did not enforce a change within {} s (nft is stuck?)",
                    ENFORCE_TIMEOUT.as_secs()
                ))
            })?;
            let done = waited.map_err(|_| LabError::State("the lab's policy applier has stopped".into()))?;
            if let Some(e) = &done.1 {
                return Err(LabError::State(format!("enforcing the lab's policies failed: {e}")));
            }
        }
        Ok(out)
    }

    /// A pod's sandbox: its network namespace, address and link. Its rules are enforced (or
    /// queued) before this returns, as a CNI's ADD does before the containers start.
    /// `current` reads the pod and its namespace as the API has them now, under the lab's
    /// lock: a label change the API's mirror made before the sandbox existed is not lost.
    pub async fn add_sandbox(
        self: &Arc<Self>,
        current: impl FnOnce() -> (Option<Pod>, Option<Namespace>) + Send + 'static,
    ) -> Result<LabPod, LabError> {
        self.change(move |lab| {
            let (pod, namespace) = current();
            let pod = pod.ok_or_else(|| LabError::State("the pod was deleted".into()))?;
            if let Some(namespace) = namespace {
                upsert_namespace(lab, namespace);
            }
            lab.add_sandbox(pod)
        })
        .await
    }

    /// Removes a pod's sandbox (and, for a pod the lab emulates, its server).
    pub async fn remove_pod(self: &Arc<Self>, key: ObjectKey) -> Result<bool, LabError> {
        self.change(move |lab| lab.remove_pod(&key)).await
    }

    /// The namespace as the API now has it (labels matter to namespaceSelectors).
    pub async fn put_namespace(self: &Arc<Self>, namespace: Namespace) -> Result<(), LabError> {
        self.change(move |lab| {
            upsert_namespace(lab, namespace);
            lab.save()
        })
        .await
    }

    pub async fn remove_namespace(self: &Arc<Self>, name: String) -> Result<(), LabError> {
        self.change(move |lab| {
            lab.state.namespaces.retain(|n| n.metadata.name.as_deref() != Some(name.as_str()));
            lab.save()
        })
        .await
    }

    /// A pod's labels as the API now has them.
    pub async fn relabel_pod(self: &Arc<Self>, pod: Pod) -> Result<(), LabError> {
        let key = key_of(&pod.metadata);
        self.change(move |lab| {
            let found = lab.state.pod_objects.iter_mut().find(|p| key_of(&p.metadata) == key);
            if let Some(object) = found {
                object.metadata.labels = pod.metadata.labels.clone();
            }
            lab.save()
        })
        .await
    }

    pub async fn put_policy(self: &Arc<Self>, policy: NetworkPolicy) -> Result<(), LabError> {
        self.change(move |lab| lab.add_policy(policy)).await
    }

    pub async fn remove_policy(self: &Arc<Self>, key: ObjectKey) -> Result<bool, LabError> {
        self.change(move |lab| lab.remove_policy(&key)).await
    }
}

/// The longest a change waits for the ruleset that enforces it.
const ENFORCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Puts `namespace` in the lab's record, in place of any of its name.
fn upsert_namespace(lab: &mut Lab, namespace: Namespace) {
    let name = namespace.metadata.name.clone();
    lab.state.namespaces.retain(|n| n.metadata.name != name);
    lab.state.namespaces.push(namespace);
    lab.state.namespaces.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
}

/// The applier of a CNI without delay: whenever changes wait, it enforces the lab as it is
/// now, which holds every change counted so far, and tells the waiters. NB: one apply at a
/// time, each of the latest state: many pods started together cost a few applies, not one each.
async fn apply_at_once(network: std::sync::Weak<Network>) {
    let mut applied = 0;
    loop {
        let Some(strong) = network.upgrade() else { return };
        let (lab, generation) = {
            let lab = lock(&strong.lab);
            (lab.clone(), strong.requested.load(Ordering::SeqCst))
        };
        if generation <= applied {
            // Woken by the next change; at the latest a second later, to see whether the
            // network is still there.
            let _ = tokio::time::timeout(Duration::from_secs(1), strong.wake.notified()).await;
            continue;
        }
        drop(strong);
        let result = tokio::task::spawn_blocking(move || {
            let _lock = super::state::lock(&lab.state.name).map_err(|e| e.to_string())?;
            lab.apply_policies(&lab.state.policies).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let Some(strong) = network.upgrade() else { return };
        if let Err(e) = &result {
            eprintln!("netpol-verify lab: enforcing the policies failed: {e}");
        }
        applied = generation;
        strong.enforced.send_replace((applied, result.err()));
    }
}
