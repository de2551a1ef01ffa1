//! `dns`: one DNS query, and name resolution for `connect HOST:PORT`.
//!
//! Messages are built and parsed with hickory-proto. The transport is our own: hickory's UDP
//! client sends from an unconnected socket, so an ICMP port unreachable from a closed DNS port
//! never reaches it and would pass for silence; a connected socket reports it as `refused`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::connect::{Exchange, Observation, udp_exchange};
use crate::net::classify;
use crate::wire::{Outcome, Transport};

/// What a DNS exchange saw: the outcome, and the reply when one came.
#[derive(Debug)]
pub struct DnsObservation {
    pub observation: Observation,
    pub reply: Option<Reply>,
}

/// A DNS response to our query.
#[derive(Debug)]
pub struct Reply {
    /// The response code in its short form: `NoError`, `NXDomain`, `ServFail`, ...
    pub rcode: String,
    /// The whole message, when hickory-proto could decode it.
    pub message: Option<Message>,
}

/// The system resolver's first nameserver (`/etc/resolv.conf`), on port 53.
pub fn system_server() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("cannot read /etc/resolv.conf ({e}): pass --server IP:PORT"))?;
    resolv_conf(&text)
        .map(|c| c.server)
        .ok_or_else(|| "no nameserver in /etc/resolv.conf: pass --server IP:PORT".into())
}

/// The parts of resolv.conf that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub server: SocketAddr,
    pub search: Vec<String>,
    pub ndots: usize,
}

/// Parses `nameserver`, `search` and `options ndots:N` (the last of each wins, as glibc does).
pub fn resolv_conf(text: &str) -> Option<ResolvConf> {
    let (mut server, mut search, mut ndots) = (None, Vec::new(), 1);
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with(['#', ';'])) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") if server.is_none() => {
                server =
                    words.next().and_then(|ip| ip.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, 53));
            }
            Some("search" | "domain") => search = words.map(str::to_string).collect(),
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        ndots = n;
                    }
                }
            }
            _ => {}
        }
    }
    Some(ResolvConf { server: server?, search, ndots })
}

/// Sends one query for `name` (type A) to `server`; any DNS response is `connected`,
/// NXDOMAIN included.
pub async fn query(server: SocketAddr, name: &str, transport: Transport, limit: Duration) -> DnsObservation {
    query_type(server, name, RecordType::A, transport, limit).await
}

async fn query_type(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    transport: Transport,
    limit: Duration,
) -> DnsObservation {
    let started = Instant::now();
    let fail = |outcome, message: String| DnsObservation {
        observation: Observation {
            outcome,
            name: None,
            message: Some(message),
            elapsed: started.elapsed(),
            attempts: None,
        },
        reply: None,
    };
    let request = match encode_query(name, record_type) {
        Ok(request) => request,
        Err(message) => return fail(Outcome::Error, message),
    };
    let id = request.metadata.id;
    let bytes = match request.to_vec() {
        Ok(bytes) => bytes,
        Err(e) => return fail(Outcome::Error, format!("cannot encode the query: {e}")),
    };
    match transport {
        Transport::Udp => over_udp(server, &bytes, id, limit, started).await,
        Transport::Tcp => over_tcp(server, &bytes, id, limit, started).await,
    }
}

fn encode_query(name: &str, record_type: RecordType) -> Result<Message, String> {
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    let name = Name::from_str(&fqdn).map_err(|e| format!("invalid DNS name {name:?}: {e}"))?;
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, record_type));
    Ok(message)
}

/// A reply counts when its header says it is a response (QR set) to our id. NB: only the
/// header decides: any DNS response is reachability, even one hickory-proto cannot decode in
/// full (an unusual record type, a server's quirk). The code comes from the header then.
fn parse_reply(bytes: &[u8], id: u16) -> Option<Reply> {
    let header = bytes.get(..12)?;
    let is_ours = u16::from_be_bytes([header[0], header[1]]) == id && header[2] & 0x80 != 0;
    if !is_ours {
        return None;
    }
    let message = Message::from_vec(bytes).ok();
    let code = match &message {
        Some(message) => message.metadata.response_code,
        None => hickory_proto::op::ResponseCode::from_low(header[3] & 0x0f),
    };
    Some(Reply { rcode: format!("{code:?}"), message })
}

fn answered(started: Instant, attempts: Option<u32>, reply: Reply) -> DnsObservation {
    let observation = Observation {
        outcome: Outcome::Connected,
        name: None,
        message: None,
        elapsed: started.elapsed(),
        attempts,
    };
    DnsObservation { observation, reply: Some(reply) }
}

async fn over_udp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    limit: Duration,
    started: Instant,
) -> DnsObservation {
    let (ended, attempts) =
        udp_exchange(server, request, limit, started, |reply| parse_reply(reply, id)).await;
    match ended {
        Exchange::Reply(reply) => answered(started, attempts, reply),
        Exchange::Failed(outcome, message) => DnsObservation {
            observation: Observation { message, attempts, ..Observation::new(outcome, started) },
            reply: None,
        },
    }
}

async fn over_tcp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
    limit: Duration,
    started: Instant,
) -> DnsObservation {
    let failed = |outcome, message: Option<String>| DnsObservation {
        observation: Observation { message, ..Observation::new(outcome, started) },
        reply: None,
    };
    let mut stream = match timeout(limit, TcpStream::connect(server)).await {
        Err(_) => return failed(Outcome::Timeout, None),
        Ok(Err(e)) => return failed(classify(&e), Some(e.to_string())),
        Ok(Ok(stream)) => stream,
    };
    let exchange = async {
        let length = u16::try_from(request.len()).map_err(|_| "query too long".to_string())?;
        let sent =
            |e: std::io::Error| format!("connected, but the server closed before taking the query: {e}");
        stream.write_all(&length.to_be_bytes()).await.map_err(sent)?;
        stream.write_all(request).await.map_err(sent)?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.map_err(|e| format!("connected, but no DNS response: {e}"))?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut reply).await.map_err(|e| format!("truncated DNS response: {e}"))?;
        parse_reply(&reply, id).ok_or_else(|| "the reply is not a DNS response to our query".to_string())
    };
    match timeout(limit.saturating_sub(started.elapsed()), exchange).await {
        Err(_) => failed(Outcome::Timeout, Some("connected, but no DNS response in time".into())),
        Ok(Err(message)) => failed(Outcome::Error, Some(message)),
        Ok(Ok(reply)) => answered(started, None, reply),
    }
}

/// Resolves a host name as the system resolver would: the nameserver, search list and ndots
/// of /etc/resolv.conf, A records first, then AAAA, over UDP with a 2 s limit per query.
pub async fn resolve(host: &str) -> Result<IpAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let conf = resolv_conf(&text)
        .ok_or_else(|| format!("cannot resolve {host:?}: no nameserver in /etc/resolv.conf"))?;
    for candidate in candidates(host, &conf) {
        for record_type in [RecordType::A, RecordType::AAAA] {
            let seen =
                query_type(conf.server, &candidate, record_type, Transport::Udp, Duration::from_secs(2))
                    .await;
            let Some(message) = seen.reply.and_then(|r| r.message) else {
                return Err(format!(
                    "cannot resolve {host:?}: the nameserver {} did not answer ({})",
                    conf.server,
                    seen.observation.outcome.as_str()
                ));
            };
            let address = message.answers.iter().find_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            });
            if let Some(address) = address {
                return Ok(address);
            }
        }
    }
    Err(format!("cannot resolve {host:?}: no A or AAAA record"))
}

/// The names glibc would try for `host`, in order.
fn candidates(host: &str, conf: &ResolvConf) -> Vec<String> {
    if host.ends_with('.') {
        return vec![host.to_string()];
    }
    let searched = conf.search.iter().map(|domain| format!("{host}.{domain}"));
    if host.matches('.').count() >= conf.ndots {
        std::iter::once(host.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(host.to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE: &str = "# generated\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\n\
                        nameserver 10.96.0.10\noptions ndots:5\n";

    #[test]
    fn resolv_conf_gives_server_search_and_ndots() {
        let conf = resolv_conf(KUBE).expect("valid");
        assert_eq!(conf.server, "10.96.0.10:53".parse().expect("addr"));
        assert_eq!(conf.search.len(), 3);
        assert_eq!(conf.ndots, 5);
        assert_eq!(resolv_conf("search a\n"), None);
    }

    #[test]
    fn short_names_try_the_search_list_first() {
        let conf = resolv_conf(KUBE).expect("valid");
        assert_eq!(
            candidates("kube-dns.kube-system", &conf),
            [
                "kube-dns.kube-system.ns1.svc.cluster.local",
                "kube-dns.kube-system.svc.cluster.local",
                "kube-dns.kube-system.cluster.local",
                "kube-dns.kube-system",
            ]
        );
        assert_eq!(candidates("example.org.", &conf), ["example.org."]);
    }

    #[test]
    fn only_responses_to_our_id_count() {
        let query = encode_query("a.example", RecordType::A).expect("valid");
        let id = query.metadata.id;
        let response =
            Message::error_msg(id, query.metadata.op_code, hickory_proto::op::ResponseCode::NXDomain);
        let bytes = response.to_vec().expect("encodes");
        let reply = parse_reply(&bytes, id).expect("our response");
        assert_eq!(reply.rcode, "NXDomain");
        assert!(reply.message.is_some());
        assert!(parse_reply(&bytes, id.wrapping_add(1)).is_none());
        assert!(parse_reply(&query.to_vec().expect("encodes"), id).is_none(), "a query is not a response");
        assert!(parse_reply(b"{\"name\":\"x\"}", id).is_none());
    }

    #[test]
    fn a_response_hickory_cannot_decode_still_counts_by_its_header() {
        let [hi, lo] = 0x1234u16.to_be_bytes();
        // Header: our id, QR set, RCODE 2 (ServFail), one question... and then nothing.
        let bytes = [hi, lo, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = parse_reply(&bytes, 0x1234).expect("a response by its header");
        assert_eq!(reply.rcode, "ServFail");
        assert!(reply.message.is_none());
    }
}
