//! `serve`: answer on every address, on each TCP and UDP port, with this pod's identity.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::wire::{Identity, Transport};

/// How long a client gets to take our one line before we hang up on it.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// UDP echoes are cut to this many bytes of payload.
const ECHO_LIMIT: usize = 1024;

/// What to serve.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// Every socket, bound before anything is announced.
#[derive(Debug)]
pub struct Listeners {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    /// Whether IPv6 sockets could be opened (a pod may have IPv6 disabled).
    pub ipv6: bool,
}

/// Binds every port on `0.0.0.0` and `[::]` (IPv6-only, so the two never clash). IPv6 is
/// skipped when the kernel has none. A port that cannot be bound is an error naming it and,
/// for privileged ports, the three ways to allow them.
pub fn bind(config: &Config) -> Result<Listeners, String> {
    let mut listeners = Listeners { tcp: Vec::new(), udp: Vec::new(), ipv6: true };
    for (transport, ports) in [(Transport::Tcp, &config.tcp), (Transport::Udp, &config.udp)] {
        for &port in ports {
            for v6 in [false, true] {
                if v6 && !listeners.ipv6 {
                    continue;
                }
                let socket = match open(transport, port, v6) {
                    Ok(socket) => socket,
                    Err(e) if v6 && no_ipv6(&e) => {
                        listeners.ipv6 = false;
                        continue;
                    }
                    Err(e) => return Err(bind_error(transport, port, &e)),
                };
                let registered = match transport {
                    Transport::Tcp => TcpListener::from_std(socket.into()).map(|l| listeners.tcp.push(l)),
                    Transport::Udp => UdpSocket::from_std(socket.into()).map(|s| listeners.udp.push(s)),
                };
                registered.map_err(|e| bind_error(transport, port, &e))?;
            }
        }
    }
    Ok(listeners)
}

fn open(transport: Transport, port: u16, v6: bool) -> io::Result<Socket> {
    let (domain, addr): (Domain, SocketAddr) = if v6 {
        (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, port).into())
    } else {
        (Domain::IPV4, (Ipv4Addr::UNSPECIFIED, port).into())
    };
    let socket = match transport {
        Transport::Tcp => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
        Transport::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
    };
    if v6 {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if transport == Transport::Tcp {
        socket.listen(4096)?;
    }
    Ok(socket)
}

fn no_ipv6(error: &io::Error) -> bool {
    // EAFNOSUPPORT (97): no IPv6 in this kernel; EADDRNOTAVAIL (99): disabled on the interface.
    matches!(error.raw_os_error(), Some(97 | 99))
}

fn bind_error(transport: Transport, port: u16, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied => {
            let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "cannot listen on {transport} port {port}: permission denied. Ports below \
                 net.ipv4.ip_unprivileged_port_start (here {start}) need one of: running as root, \
                 the CAP_NET_BIND_SERVICE capability, or lowering that sysctl to {port} or less \
                 (on Kubernetes, a pod securityContext sysctl)"
            )
        }
        io::ErrorKind::AddrInUse => format!("cannot listen on {transport} port {port}: already in use"),
        _ => format!("cannot listen on {transport} port {port}: {error}"),
    }
}

/// Serves until the process is told to stop (SIGTERM or SIGINT). Announces itself with one
/// line on standard error once every listener is up.
pub async fn run(config: Config, listeners: Listeners) -> io::Result<()> {
    let line = {
        let mut line = serde_json::to_vec(&Identity { name: config.name.clone(), echo: None })
            .map_err(io::Error::other)?;
        line.push(b'\n');
        std::sync::Arc::<[u8]>::from(line)
    };
    for listener in listeners.tcp {
        tokio::spawn(accept_loop(listener, line.clone()));
    }
    for socket in listeners.udp {
        tokio::spawn(echo_loop(socket, config.name.clone()));
    }
    let ready = serde_json::json!({
        "event": "ready",
        "name": config.name,
        "tcp": config.tcp,
        "udp": config.udp,
        "ipv6": listeners.ipv6,
    });
    eprintln!("{ready}");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, line: std::sync::Arc<[u8]>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, line.clone()));
            }
            // NB: out of file descriptors (or another transient failure): wait a moment and go
            // on; one flood of clients must not end the server.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn answer(mut stream: TcpStream, line: std::sync::Arc<[u8]>) {
    let _ = tokio::time::timeout(WRITE_LIMIT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
}

async fn echo_loop(socket: UdpSocket, name: String) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
        let payload = &buf[..n.min(ECHO_LIMIT)];
        let reply =
            Identity { name: name.clone(), echo: Some(String::from_utf8_lossy(payload).into_owned()) };
        if let Ok(bytes) = serde_json::to_vec(&reply) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}
