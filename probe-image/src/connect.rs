//! `connect`: one TCP connection or UDP exchange with a `netpol-probe serve`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::net::classify;
use crate::wire::{Identity, Outcome};

/// UDP sends up to this many datagrams within the timeout.
pub const UDP_ATTEMPTS: u32 = 3;

/// The least time a TCP probe waits for the server's name after the handshake.
pub const NAME_READ_FLOOR: Duration = Duration::from_millis(200);

/// What one probe saw, before it is dressed up as a result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub outcome: Outcome,
    pub name: Option<String>,
    pub message: Option<String>,
    pub elapsed: Duration,
    pub attempts: Option<u32>,
}

impl Observation {
    /// An `error` before any packet left (e.g. the target's name did not resolve).
    pub fn failed(message: String) -> Self {
        Observation {
            outcome: Outcome::Error,
            name: None,
            message: Some(message),
            elapsed: Duration::ZERO,
            attempts: None,
        }
    }

    pub(crate) fn new(outcome: Outcome, started: Instant) -> Self {
        Observation { outcome, name: None, message: None, elapsed: started.elapsed(), attempts: None }
    }

    fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Applies `--expect-name`: a reply from anyone else is an `error` (`wrong-peer`).
    fn expecting(mut self, expected: Option<&str>) -> Self {
        if let (Outcome::Connected, Some(expected)) = (self.outcome, expected)
            && self.name.as_deref() != Some(expected)
        {
            self.outcome = Outcome::Error;
            self.message = Some(match &self.name {
                Some(name) => format!("wrong-peer: expected {expected}, reached {name}"),
                None => format!("wrong-peer: expected {expected}, the server sent no name"),
            });
        }
        self
    }
}

/// Opens a TCP connection; the handshake completing is `connected`, and `ms` is the time it
/// took. The server's identity line is then read within what is left of the timeout, but for
/// at least [`NAME_READ_FLOOR`]: a slow handshake must not turn the right server into a
/// wrong peer.
pub async fn tcp(addr: SocketAddr, limit: Duration, expect_name: Option<&str>) -> Observation {
    let started = Instant::now();
    let mut stream = match timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => return Observation::new(Outcome::Timeout, started),
        Ok(Err(e)) => return Observation::new(classify(&e), started).message(e.to_string()),
        Ok(Ok(stream)) => stream,
    };
    let mut observation = Observation::new(Outcome::Connected, started);
    let left = limit.saturating_sub(started.elapsed()).max(NAME_READ_FLOOR);
    let mut buf = Vec::with_capacity(256);
    // NB: the name is best effort: anything listening completes the handshake, and only
    // `--expect-name` makes a missing or different name a failure.
    let read = timeout(left, async {
        let mut chunk = [0u8; 256];
        while buf.len() < 4096 && !buf.contains(&b'\n') {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_ok() {
        let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
        observation.name = serde_json::from_slice::<Identity>(line).ok().map(|i| i.name);
    }
    observation.expecting(expect_name)
}

/// Sends a datagram carrying a fresh token and waits for the server to echo it (see
/// [`udp_exchange`]).
pub async fn udp(addr: SocketAddr, limit: Duration, expect_name: Option<&str>) -> Observation {
    let started = Instant::now();
    let token = token();
    // A late answer to an earlier datagram of ours carries the same token, and counts; a reply
    // without it (someone else's) does not.
    let (ended, attempts) = udp_exchange(addr, token.as_bytes(), limit, started, |reply| {
        serde_json::from_slice::<Identity>(reply)
            .ok()
            .filter(|i| i.echo.as_deref() == Some(&token))
            .map(|i| i.name)
    })
    .await;
    let mut observation = match ended {
        Exchange::Reply(name) => {
            Observation { name: Some(name), ..Observation::new(Outcome::Connected, started) }
        }
        Exchange::Failed(outcome, message) => Observation { message, ..Observation::new(outcome, started) },
    };
    observation.attempts = attempts;
    observation.expecting(expect_name)
}

/// How a UDP exchange ended: with the reply `accept` took, or with the outcome that ended it.
#[derive(Debug)]
pub enum Exchange<T> {
    Reply(T),
    Failed(Outcome, Option<String>),
}

/// Sends `payload` from a connected socket (see [`bind_and_connect`]) up to [`UDP_ATTEMPTS`]
/// times, each datagram given a third of `limit` (the last one what is left), until `accept`
/// takes a reply; replies it refuses are ignored. Returns how it ended and the datagrams sent
/// (`None` when no socket could be opened).
pub async fn udp_exchange<T>(
    addr: SocketAddr,
    payload: &[u8],
    limit: Duration,
    started: Instant,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> (Exchange<T>, Option<u32>) {
    let failed = |e: std::io::Error| Exchange::Failed(classify(&e), Some(e.to_string()));
    let socket = match bind_and_connect(addr).await {
        Ok(socket) => socket,
        Err(e) => return (failed(e), None),
    };
    let per_attempt = limit / UDP_ATTEMPTS;
    let mut buf = vec![0u8; 65_536];
    for attempt in 1..=UDP_ATTEMPTS {
        let attempt_started = Instant::now();
        if let Err(e) = socket.send(payload).await {
            return (failed(e), Some(attempt));
        }
        let deadline =
            if attempt == UDP_ATTEMPTS { limit.saturating_sub(started.elapsed()) } else { per_attempt };
        loop {
            let left = deadline.saturating_sub(attempt_started.elapsed());
            match timeout(left, socket.recv(&mut buf)).await {
                Err(_) => break, // this datagram's share of the time is up
                Ok(Err(e)) => return (failed(e), Some(attempt)),
                Ok(Ok(n)) => {
                    if let Some(reply) = accept(&buf[..n]) {
                        return (Exchange::Reply(reply), Some(attempt));
                    }
                }
            }
        }
    }
    (Exchange::Failed(Outcome::Timeout, None), Some(UDP_ATTEMPTS))
}

/// A UDP socket bound to the unspecified address of the target's family, connected to it,
/// that hears every ICMP error about its datagrams.
///
/// NB: without IP_RECVERR, Linux reports only "hard" ICMP errors (port unreachable) to a UDP
/// socket; a host or network unreachable (a REJECT rule, a router's answer) would pass for
/// silence and be misreported as a timeout.
pub async fn bind_and_connect(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    let (local, recv_err): (SocketAddr, fn(&UdpSocket) -> nix::Result<()>) = match addr.ip() {
        IpAddr::V4(_) => ((Ipv4Addr::UNSPECIFIED, 0).into(), |s| setsockopt(s, sockopt::Ipv4RecvErr, &true)),
        IpAddr::V6(_) => ((Ipv6Addr::UNSPECIFIED, 0).into(), |s| setsockopt(s, sockopt::Ipv6RecvErr, &true)),
    };
    let socket = UdpSocket::bind(local).await?;
    recv_err(&socket).map_err(std::io::Error::from)?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// A token no other probe (in this process or another) sends: pid, time and a counter.
pub fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("netpol-probe-{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}
