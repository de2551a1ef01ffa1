//! A DNS server for tests, started inside a namespace: `probe.test.` has an A record
//! (10.200.0.2), every other name is NXDOMAIN. UDP and TCP on one port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};

use super::{Netns, SERVER_IP};

pub const KNOWN_NAME: &str = "probe.test.";

/// Runs `f` on a thread that has entered namespace `name`; sockets it opens stay there.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

/// The server; stops when dropped.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Queries answered so far (UDP and TCP).
    pub answered: Arc<AtomicUsize>,
}

impl DnsServer {
    pub fn start(ns: &Netns, port: u16) -> DnsServer {
        let (udp, tcp) = in_netns(&ns.name, move || {
            let udp = UdpSocket::bind((SERVER_IP, port)).expect("bind DNS/UDP");
            let tcp = TcpListener::bind((SERVER_IP, port)).expect("bind DNS/TCP");
            (udp, tcp)
        });
        udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let udp_thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else { continue };
                    if let Some(reply) = answer(&buf[..n]) {
                        let _ = udp.send_to(&reply, peer);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let tcp_thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut length = [0u8; 2];
                    if stream.read_exact(&mut length).is_err() {
                        continue;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                    if stream.read_exact(&mut query).is_err() {
                        continue;
                    }
                    if let Some(reply) = answer(&query) {
                        let len = u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes();
                        let _ = stream.write_all(&len).and_then(|()| stream.write_all(&reply));
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        DnsServer { stop, threads: vec![udp_thread, tcp_thread], answered }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    let known = Name::from_str(KNOWN_NAME).ok()?;
    for q in &query.queries {
        response.add_query(q.clone());
        if q.name() == &known {
            response.add_answer(Record::from_rdata(
                known.clone(),
                60,
                RData::A(A(Ipv4Addr::new(10, 200, 0, 2))),
            ));
        }
    }
    if response.answers.is_empty() {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}
