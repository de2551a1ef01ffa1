//! The lab's cluster DNS: what its kube-dns pods run (`netpol-verify lab serve-dns`). Answers
//! A queries for the lab's names (Services, pods, `kubernetes.default`), NXDOMAIN for the rest,
//! over UDP and TCP on the ports the kube-dns Service sends to (53 unless the objects say
//! otherwise). It resolves nothing outside the lab.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// Lowercased fully qualified name → address.
type Records = BTreeMap<String, Ipv4Addr>;

/// Serves until killed. Errors only when it cannot start.
pub fn serve(records: &Path, tcp_ports: &[u16], udp_ports: &[u16]) -> Result<(), String> {
    if tcp_ports.is_empty() && udp_ports.is_empty() {
        return Err("give the DNS server at least one --tcp or --udp port".into());
    }
    let text =
        std::fs::read_to_string(records).map_err(|e| format!("cannot read {}: {e}", records.display()))?;
    let records: Records = serde_json::from_str::<Records>(&text)
        .map_err(|e| format!("{} is not a records file: {e}", records.display()))?
        .into_iter()
        .map(|(name, ip)| (name.to_ascii_lowercase(), ip))
        .collect();
    let records = Arc::new(records);
    let mut udp = Vec::new();
    for port in udp_ports {
        udp.push(
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *port))
                .map_err(|e| format!("cannot listen on UDP port {port}: {e}"))?,
        );
    }
    let mut tcp = Vec::new();
    for port in tcp_ports {
        tcp.push(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port))
                .map_err(|e| format!("cannot listen on TCP port {port}: {e}"))?,
        );
    }
    let _ =
        writeln!(std::io::stderr(), "{{\"event\":\"ready\",\"name\":\"dns\",\"records\":{}}}", records.len());

    let mut threads = Vec::new();
    for listener in tcp {
        let records = records.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let records = records.clone();
                std::thread::spawn(move || answer_tcp(stream, &records));
            }
        }));
    }
    for socket in udp {
        let records = records.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&buf[..n], &records) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn answer_tcp(mut stream: TcpStream, records: &Records) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    loop {
        let mut length = [0u8; 2];
        if stream.read_exact(&mut length).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Some(reply) = answer(&query, records) else { return };
        let Ok(length) = u16::try_from(reply.len()) else { return };
        if stream.write_all(&length.to_be_bytes()).and_then(|()| stream.write_all(&reply)).is_err() {
            return;
        }
    }
}

/// The response to one query message, `None` for what is not a query.
pub fn answer(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.authoritative = true;
    let mut known = false;
    for question in &query.queries {
        response.add_query(question.clone());
        let name = question.name().to_ascii().to_ascii_lowercase();
        if let Some(ip) = records.get(&name) {
            known = true;
            if question.query_type() == RecordType::A {
                response.add_answer(Record::from_rdata(question.name().clone(), 30, RData::A(A(*ip))));
            }
        }
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn ask(name: &str, record_type: RecordType, records: &Records) -> Message {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_str(name).expect("name"), record_type));
        let reply = answer(&query.to_vec().expect("encodes"), records).expect("an answer");
        Message::from_vec(&reply).expect("decodes")
    }

    #[test]
    fn lab_names_resolve_and_others_are_nxdomain() {
        let records: Records = BTreeMap::from([(
            "kube-dns.kube-system.svc.cluster.local.".into(),
            Ipv4Addr::new(10, 96, 0, 10),
        )]);
        let known = ask("KUBE-DNS.kube-system.svc.cluster.local.", RecordType::A, &records);
        assert_eq!(known.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(known.answers[0].data, RData::A(A(ip)) if ip == Ipv4Addr::new(10, 96, 0, 10)));
        let aaaa = ask("kube-dns.kube-system.svc.cluster.local.", RecordType::AAAA, &records);
        assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0));
        let missing = ask("example.com.", RecordType::A, &records);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    }
}
