//! `serve`: answer on every address, on each TCP and UDP port, with this pod's identity.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};

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
    raise_bind_service();
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

/// Makes CAP_NET_BIND_SERVICE effective when the process holds it. NB: the image's binary
/// carries it as a file capability without the effective bit (`cap_net_bind_service=+p`): with
/// the effective bit, the kernel refuses to run the binary at all in a pod whose capabilities
/// do not include it (every probe but a server given NET_BIND_SERVICE). So a pod granted it
/// gets it permitted, and the probe raises it here; elsewhere this does nothing.
fn raise_bind_service() {
    use caps::{CapSet, Capability};
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_BIND_SERVICE).unwrap_or(false) {
        let _ = caps::raise(None, CapSet::Effective, Capability::CAP_NET_BIND_SERVICE);
    }
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
    match transport {
        // NB: for TCP, SO_REUSEADDR only lets a restarted server rebind past TIME_WAIT; on UDP
        // it would let two servers share a port silently.
        Transport::Tcp => socket.set_reuse_address(true)?,
        // Learn each datagram's destination address, to answer from it (see `echo_loop`).
        Transport::Udp if v6 => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?,
        Transport::Udp => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?,
    }
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
    // NB: handlers first: whoever reads the ready line may send SIGTERM at once, and a signal
    // without a handler would kill us (or, as PID 1 in a container, be ignored).
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
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
    let _ = writeln!(io::stderr(), "{ready}");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
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

/// Answers every datagram from the address it was sent to. NB: a reply from the wildcard
/// socket would leave from whatever address routing picks; on a host with several addresses
/// that can differ from the one the client targeted, and its connected socket would drop it.
async fn echo_loop(socket: UdpSocket, name: String) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = socket.async_io(Interest::READABLE, || receive(socket.as_raw_fd(), &mut buf)).await;
        let Ok((n, peer, destination)) = received else { continue };
        let payload = &buf[..n.min(ECHO_LIMIT)];
        let reply =
            Identity { name: name.clone(), echo: Some(String::from_utf8_lossy(payload).into_owned()) };
        let Ok(bytes) = serde_json::to_vec(&reply) else { continue };
        let sent = socket
            .async_io(Interest::WRITABLE, || reply_to(socket.as_raw_fd(), &bytes, &peer, destination))
            .await;
        if sent.is_err() {
            // E.g. a datagram to a broadcast address, which we cannot answer from: let routing
            // pick the source instead.
            let _ = socket
                .async_io(Interest::WRITABLE, || reply_to(socket.as_raw_fd(), &bytes, &peer, None))
                .await;
        }
    }
}

/// Where a datagram was addressed.
#[derive(Clone, Copy)]
enum Destination {
    V4(libc::in_addr),
    V6(libc::in6_addr, u32),
}

fn receive(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SockaddrStorage, Option<Destination>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(libc::in6_pktinfo);
    let message = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control), MsgFlags::empty())?;
    let mut destination = None;
    for cmsg in message.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => destination = Some(Destination::V4(info.ipi_addr)),
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                destination = Some(Destination::V6(info.ipi6_addr, info.ipi6_ifindex));
            }
            _ => {}
        }
    }
    let peer = message.address.ok_or_else(|| io::Error::other("a datagram without a sender"))?;
    Ok((message.bytes, peer, destination))
}

fn reply_to(fd: i32, bytes: &[u8], peer: &SockaddrStorage, from: Option<Destination>) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let v4 = match from {
        Some(Destination::V4(addr)) => Some(libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: addr,
            ipi_addr: libc::in_addr { s_addr: 0 },
        }),
        _ => None,
    };
    let v6 = match from {
        Some(Destination::V6(addr, ifindex)) => {
            Some(libc::in6_pktinfo { ipi6_addr: addr, ipi6_ifindex: ifindex })
        }
        _ => None,
    };
    let mut control = Vec::new();
    if let Some(info) = &v4 {
        control.push(ControlMessage::Ipv4PacketInfo(info));
    }
    if let Some(info) = &v6 {
        control.push(ControlMessage::Ipv6PacketInfo(info));
    }
    Ok(sendmsg(fd, &iov, &control, MsgFlags::empty(), Some(peer))?)
}
