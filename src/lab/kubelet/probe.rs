//! Readiness as the kubelet sees it: `tcpSocket` probes dial the pod from the node (a thread
//! that lives in the lab's node network namespace, so its sockets do too), `exec` probes run
//! their command in the container (a container process of their own, built the same way).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// A dial from the node.
struct Dial {
    to: SocketAddr,
    timeout: Duration,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The node's network: dials made from it.
#[derive(Debug, Clone)]
pub struct NodeNet {
    dials: mpsc::UnboundedSender<Dial>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial").field("to", &self.to).finish_non_exhaustive()
    }
}

impl NodeNet {
    /// Starts the node's thread in network namespace `netns` (`/run/netns/...`). NB: `setns`
    /// moves only the calling thread, and this one runs its own runtime, so every socket it
    /// makes is the node's.
    pub fn start(netns: &Path) -> Result<NodeNet, String> {
        let file = std::fs::File::open(netns).map_err(|e| format!("cannot open {}: {e}", netns.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Dial>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lab-node-net".into())
            .spawn(move || {
                let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("cannot enter the node's network namespace: {e}"));
                let runtime = entered.and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("cannot start the node's runtime: {e}"))
                });
                let runtime = match runtime {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(()));
                        runtime
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    while let Some(dial) = rx.recv().await {
                        spawn_dial(dial);
                    }
                });
            })
            .map_err(|e| format!("cannot start the node's thread: {e}"))?;
        ready_rx.recv().map_err(|_| "the node's thread ended".to_string())??;
        Ok(NodeNet { dials: tx })
    }

    /// Connects to `to` over TCP from the node within `timeout`.
    pub async fn dial(&self, to: SocketAddr, timeout: Duration) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.dials.send(Dial { to, timeout, reply }).map_err(|_| "the node's thread ended".to_string())?;
        answer.await.map_err(|_| "the node's thread ended".to_string())?
    }
}

/// `tokio::spawn` of a dial on the node's current-thread runtime.
fn spawn_dial(dial: Dial) {
    tokio::spawn(async move {
        let result = match tokio::time::timeout(dial.timeout, tokio::net::TcpStream::connect(dial.to)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {}: connect: {}", dial.to, connect_error(&e))),
            Err(_) => Err(format!("dial tcp {}: i/o timeout", dial.to)),
        };
        let _ = dial.reply.send(result);
    });
}

/// A connect error as Go's net package words it (the kubelet's probe messages).
fn connect_error(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::HostUnreachable => "no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "network is unreachable".into(),
        _ => error.to_string(),
    }
}
