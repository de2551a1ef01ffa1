//! `netpol-probe` with real packets: serve in one network namespace, connect/dns/batch in
//! another, nftables in between deciding what passes. Needs root.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::dns::{DnsServer, KNOWN_NAME};
use support::{COMMAND_LIMIT, Pair, SERVER_IP, SERVER_IP6, UNROUTED_IP, server, wait_output};

/// nftables in the server namespace: what each port does to arriving packets.
const FILTER: &str = r#"
table inet probe_test {
    set seen { type ipv4_addr; flags dynamic; }
    chain input {
        type filter hook input priority 0;
        tcp dport 7001 drop
        udp dport 7001 drop
        tcp dport 7002 reject with tcp reset
        tcp dport 7003 reject with icmpx type host-unreachable
        udp dport 7003 reject with icmpx type host-unreachable
        tcp dport 7005 reject with icmpx type admin-prohibited
        udp dport 7005 reject with icmpx type admin-prohibited
        udp dport 7004 ip saddr @seen accept
        udp dport 7004 add @seen { ip saddr } drop
        tcp dport 5301 drop
        udp dport 5301 drop
    }
}
"#;

fn outcome(line: &Value) -> &str {
    line["outcome"].as_str().unwrap_or("(none)")
}

#[test]
fn tcp_connect_reaches_a_server_and_reads_its_name() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--name", "x/a"]);
    let (code, lines, _) = pair.client.probe(&["connect", &server(8080)]);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 1, "one line");
    let line = &lines[0];
    assert_eq!(outcome(line), "connected");
    assert_eq!(line["name"], "x/a");
    assert_eq!(line["target"], SERVER_IP);
    assert_eq!(line["port"], 8080);
    assert_eq!(line["protocol"], "TCP");
    assert!(line["ms"].as_u64().is_some_and(|ms| ms < 500), "a handshake across a veth: {line}");
}

#[test]
fn a_closed_tcp_port_or_a_reset_is_refused() {
    let pair = Pair::new();
    pair.server.nft(FILTER);
    for port in [8090, 7002] {
        let (code, lines, _) = pair.client.probe(&["connect", &server(port), "--timeout", "2s"]);
        assert_eq!((code, outcome(&lines[0])), (1, "refused"), "port {port}: {lines:?}");
        assert!(lines[0]["ms"].as_u64().is_some_and(|ms| ms < 1000), "a reset is immediate: {lines:?}");
    }
}

#[test]
fn a_dropped_packet_is_a_timeout_after_the_timeout() {
    let mut pair = Pair::new();
    pair.server.nft(FILTER);
    pair.server.serve(&["--tcp", "7001", "--udp", "7001", "--name", "x/a"]);
    for transport in ["--tcp", "--udp"] {
        let (code, lines, _) =
            pair.client.probe(&["connect", &server(7001), transport, "--timeout", "600ms"]);
        assert_eq!((code, outcome(&lines[0])), (1, "timeout"), "{transport}: {lines:?}");
        let ms = lines[0]["ms"].as_u64().unwrap_or_default();
        assert!((590..2000).contains(&ms), "{transport}: waited {ms} ms for a 600 ms timeout");
    }
    let (_, lines, _) = pair.client.probe(&["connect", &server(7001), "--udp", "--timeout", "600ms"]);
    assert_eq!(lines[0]["attempts"], 3, "UDP tries three datagrams before giving up");
}

#[test]
fn icmp_host_unreachable_and_no_route_are_unreachable() {
    let mut pair = Pair::new();
    pair.server.nft(FILTER);
    pair.server.serve(&["--tcp", "7003", "--udp", "7003", "--name", "x/a"]);
    for transport in ["--tcp", "--udp"] {
        let (code, lines, _) = pair.client.probe(&["connect", &server(7003), transport, "--timeout", "2s"]);
        assert_eq!((code, outcome(&lines[0])), (1, "unreachable"), "{transport}: {lines:?}");
    }
    // No route at all: the kernel refuses to send, nothing leaves the namespace.
    for transport in ["--tcp", "--udp"] {
        let target = format!("{UNROUTED_IP}:80");
        let (code, lines, _) = pair.client.probe(&["connect", &target, transport, "--timeout", "2s"]);
        assert_eq!((code, outcome(&lines[0])), (1, "unreachable"), "{transport}: {lines:?}");
    }
}

#[test]
fn admin_prohibited_is_unreachable_over_ipv4_and_ipv6() {
    // ICMP "administratively prohibited": EHOSTUNREACH over IPv4, but EACCES over IPv6.
    let mut pair = Pair::new();
    pair.server.nft(FILTER);
    pair.server.serve(&["--tcp", "7005", "--udp", "7005", "--name", "x/a"]);
    for target in [server(7005), format!("[{SERVER_IP6}]:7005")] {
        for transport in ["--tcp", "--udp"] {
            let (code, lines, _) = pair.client.probe(&["connect", &target, transport, "--timeout", "2s"]);
            assert_eq!((code, outcome(&lines[0])), (1, "unreachable"), "{target} {transport}: {lines:?}");
        }
    }
}

#[test]
fn refused_unreachable_and_no_route_over_ipv6() {
    let mut pair = Pair::new();
    pair.server.nft(FILTER);
    pair.server.serve(&["--tcp", "7003", "--udp", "7003", "--name", "x/a"]);
    let cases = [
        (format!("[{SERVER_IP6}]:8099"), "refused"),
        (format!("[{SERVER_IP6}]:7003"), "unreachable"),
        ("[fd00:201::9]:80".to_string(), "unreachable"),
    ];
    for (target, expected) in cases {
        for transport in ["--tcp", "--udp"] {
            let (code, lines, _) = pair.client.probe(&["connect", &target, transport, "--timeout", "2s"]);
            assert_eq!((code, outcome(&lines[0])), (1, expected), "{target} {transport}: {lines:?}");
        }
    }
}

#[test]
fn udp_replies_leave_from_the_address_the_client_targeted() {
    // With two addresses, routing would answer from the primary one; the client's connected
    // socket would drop that reply and report a timeout.
    let mut pair = Pair::new();
    pair.add_server_address("10.200.0.3", 24);
    pair.server.serve(&["--udp", "8080", "--name", "x/a"]);
    let (code, lines, _) = pair.client.probe(&["connect", "10.200.0.3:8080", "--udp", "--timeout", "1s"]);
    assert_eq!((code, outcome(&lines[0])), (0, "connected"), "{lines:?}");
    assert_eq!(lines[0]["attempts"], 1);
}

#[test]
fn a_server_with_another_name_is_a_wrong_peer_error() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--udp", "8080", "--name", "x/a"]);
    for transport in ["--tcp", "--udp"] {
        let (code, lines, _) =
            pair.client.probe(&["connect", &server(8080), transport, "--expect-name", "x/b"]);
        assert_eq!((code, outcome(&lines[0])), (1, "error"), "{transport}");
        let message = lines[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("wrong-peer"), "{message}");
        assert_eq!(lines[0]["name"], "x/a");
        let (code, lines, _) =
            pair.client.probe(&["connect", &server(8080), transport, "--expect-name", "x/a"]);
        assert_eq!((code, outcome(&lines[0])), (0, "connected"), "{transport}");
    }
}

#[test]
fn udp_connect_gets_its_payload_echoed_and_a_closed_port_is_refused() {
    let mut pair = Pair::new();
    pair.server.serve(&["--udp", "5353,8080", "--name", "y/b"]);
    let (code, lines, _) = pair.client.probe(&["connect", &server(8080), "--udp"]);
    assert_eq!((code, outcome(&lines[0])), (0, "connected"));
    assert_eq!((lines[0]["name"].as_str(), lines[0]["attempts"].as_u64()), (Some("y/b"), Some(1)));
    // Nothing on UDP 8081: the kernel answers ICMP port unreachable.
    let (code, lines, _) = pair.client.probe(&["connect", &server(8081), "--udp", "--timeout", "2s"]);
    assert_eq!((code, outcome(&lines[0])), (1, "refused"), "{lines:?}");
}

#[test]
fn udp_retries_when_the_first_datagram_is_lost() {
    let mut pair = Pair::new();
    pair.server.nft(FILTER); // UDP 7004 drops the first datagram from each source
    pair.server.serve(&["--udp", "7004", "--name", "x/a"]);
    let (code, lines, _) = pair.client.probe(&["connect", &server(7004), "--udp", "--timeout", "1500ms"]);
    assert_eq!((code, outcome(&lines[0])), (0, "connected"), "{lines:?}");
    assert_eq!(lines[0]["attempts"], 2);
    let ms = lines[0]["ms"].as_u64().unwrap_or_default();
    assert!(ms >= 490, "the second datagram leaves after a third of the timeout, got {ms} ms");
}

#[test]
fn serve_answers_on_ipv6_too() {
    let mut pair = Pair::new();
    let ready = pair.server.serve(&["--tcp", "8080", "--udp", "8080", "--name", "x/a"]);
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["ipv6"], true);
    let target = format!("[{SERVER_IP6}]:8080");
    for transport in ["--tcp", "--udp"] {
        let (code, lines, _) = pair.client.probe(&["connect", &target, transport]);
        assert_eq!((code, outcome(&lines[0])), (0, "connected"), "{transport}: {lines:?}");
        assert_eq!(lines[0]["target"], SERVER_IP6);
    }
}

#[test]
fn dns_over_udp_and_tcp_counts_any_response_nxdomain_included() {
    let pair = Pair::new();
    let dns = DnsServer::start(&pair.server, 53);
    let server53 = server(53);
    for transport in [&[][..], &["--tcp"][..]] {
        let mut args = vec!["dns", KNOWN_NAME, "--server", server53.as_str()];
        args.extend_from_slice(transport);
        let (code, lines, _) = pair.client.probe(&args);
        assert_eq!((code, outcome(&lines[0])), (0, "connected"), "{transport:?}: {lines:?}");
        assert_eq!(lines[0]["rcode"], "NoError");
        assert_eq!(lines[0]["query"], KNOWN_NAME);
        assert_eq!(lines[0]["protocol"], if transport.is_empty() { "UDP" } else { "TCP" });

        let mut args = vec!["dns", "missing.test", "--server", server53.as_str()];
        args.extend_from_slice(transport);
        let (code, lines, _) = pair.client.probe(&args);
        assert_eq!((code, outcome(&lines[0])), (0, "connected"), "NXDOMAIN is a response: {lines:?}");
        assert_eq!(lines[0]["rcode"], "NXDomain");
    }
    assert_eq!(dns.answered.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[test]
fn dns_to_a_closed_port_is_refused_and_to_a_dropping_one_is_a_timeout() {
    let pair = Pair::new();
    pair.server.nft(FILTER);
    let _dns = DnsServer::start(&pair.server, 5301); // behind the drop rule
    for (port, expected) in [(5300, "refused"), (5301, "timeout")] {
        for transport in [&[][..], &["--tcp"][..]] {
            let target = server(port);
            let mut args = vec!["dns", KNOWN_NAME, "--server", target.as_str(), "--timeout", "600ms"];
            args.extend_from_slice(transport);
            let (code, lines, _) = pair.client.probe(&args);
            assert_eq!((code, outcome(&lines[0])), (1, expected), "port {port} {transport:?}: {lines:?}");
        }
    }
}

#[test]
fn dns_reads_its_server_from_resolv_conf() {
    let mut pair = Pair::new();
    let _dns = DnsServer::start(&pair.server, 53);
    pair.server.serve(&["--tcp", "8080", "--name", "x/a"]);
    // A resolv.conf of the test's own, mounted over /etc/resolv.conf in a private mount
    // namespace: nothing on the host is touched.
    let dir = support::WorldRunnable::new();
    let conf = std::path::Path::new(&dir.path).with_file_name("resolv.conf");
    std::fs::write(&conf, format!("search test\nnameserver {SERVER_IP}\noptions ndots:1\n"))
        .expect("resolv.conf");
    let run = |args: &str| {
        let script =
            format!("mount --bind {} /etc/resolv.conf && exec {} {args}", conf.display(), support::probe());
        let child = pair
            .client
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let output = wait_output(child, COMMAND_LIMIT);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{args}: {e}: {text} {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), line)
    };
    let (code, line) = run(&format!("dns {KNOWN_NAME}"));
    assert_eq!((code, outcome(&line)), (Some(0), "connected"), "{line}");
    assert_eq!(line["target"], SERVER_IP);
    // `connect` resolves names through it, search list included.
    let (code, line) = run("connect probe:8080");
    assert_eq!((code, outcome(&line)), (Some(0), "connected"), "{line}");
    assert_eq!(line["target"], "probe");
    // A name that does not resolve is an `error` result (exit 1), not a usage error.
    let (code, line) = run("connect nowhere.invalid:8080");
    assert_eq!((code, outcome(&line)), (Some(1), "error"), "{line}");
    assert!(line["message"].as_str().is_some_and(|m| m.contains("cannot resolve")), "{line}");
}

#[test]
fn batch_runs_every_probe_concurrently_and_reports_each_once() {
    let mut pair = Pair::new();
    pair.server.nft(FILTER);
    pair.server.serve(&["--tcp", "8080,7001", "--udp", "8080,7001", "--name", "x/a"]);
    let _dns = DnsServer::start(&pair.server, 53);
    let probe = |id: &str, port: u16, protocol: &str| json!({"id": id, "target": SERVER_IP, "port": port, "protocol": protocol, "timeout_ms": 800});
    let mut probes = vec![
        probe("tcp-ok", 8080, "TCP"),
        probe("udp-ok", 8080, "UDP"),
        probe("tcp-refused", 8099, "TCP"),
        probe("udp-refused", 8099, "UDP"),
        probe("tcp-timeout", 7001, "TCP"),
        probe("udp-timeout", 7001, "UDP"),
        probe("tcp-unreachable", 7003, "TCP"),
        json!({"id": "no-route", "target": UNROUTED_IP, "port": 80, "timeout_ms": 800}),
        json!({"id": "wrong-peer", "target": SERVER_IP, "port": 8080, "timeout_ms": 800, "expect_name": "y/b"}),
        json!({"id": "dns-udp", "kind": "dns", "target": SERVER_IP, "port": 53, "protocol": "UDP", "timeout_ms": 800, "query": "nope.test"}),
        json!({"id": "dns-tcp", "kind": "dns", "target": SERVER_IP, "port": 53, "protocol": "TCP", "timeout_ms": 800, "query": KNOWN_NAME}),
    ];
    // Ten more timeouts: run one after another they would take 8 s.
    probes.extend((0..10).map(|i| probe(&format!("slow-{i}"), 7001, "TCP")));
    let (code, lines, elapsed) = pair.client.batch(&json!({"schema": 1, "probes": probes}), &[]);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 22, "21 results and a summary");
    let summary = &lines[21]["summary"];
    let result =
        |id: &str| lines.iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("no line for {id}"));
    let expected = [
        ("tcp-ok", "connected"),
        ("udp-ok", "connected"),
        ("tcp-refused", "refused"),
        ("udp-refused", "refused"),
        ("tcp-timeout", "timeout"),
        ("udp-timeout", "timeout"),
        ("tcp-unreachable", "unreachable"),
        ("no-route", "unreachable"),
        ("wrong-peer", "error"),
        ("dns-udp", "connected"),
        ("dns-tcp", "connected"),
    ];
    for (id, want) in expected {
        assert_eq!(outcome(result(id)), want, "{id}: {}", result(id));
    }
    let ids: std::collections::HashSet<&str> = lines[..21].iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids.len(), 21, "every probe exactly once");
    assert_eq!(
        (summary["total"].as_u64(), summary["reached"].as_u64(), summary["timeout"].as_u64()),
        (Some(21), Some(4), Some(12))
    );
    assert!(elapsed < Duration::from_secs(4), "the timeouts overlap: took {elapsed:?}");
}

#[test]
fn a_repeating_batch_probes_in_rounds_and_ends_by_itself() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--name", "x/a"]);
    let plan = json!({"schema": 1, "probes": [
        {"id": "ok", "target": SERVER_IP, "port": 8080, "timeout_ms": 300, "expect_name": "x/a"},
        {"id": "closed", "target": SERVER_IP, "port": 8099, "timeout_ms": 300},
    ]});
    let (code, lines, elapsed) = pair.client.batch(&plan, &["--every", "100ms", "--for", "450ms"]);
    assert_eq!(code, 0);
    assert!((4..=5).contains(&lines.len()), "a round every 100 ms for 450 ms: {lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["round"], i, "{line}");
        let results = line["results"].as_array().expect("results");
        let seen: Vec<(&str, &str)> =
            results.iter().map(|r| (r["id"].as_str().unwrap_or(""), outcome(r))).collect();
        assert_eq!(seen, [("ok", "connected"), ("closed", "refused")], "{line}");
        assert_eq!(results[0]["name"], "x/a");
    }
    let at: Vec<u64> = lines.iter().filter_map(|l| l["at_ms"].as_u64()).collect();
    assert!(at.windows(2).all(|w| w[1] >= w[0] + 99), "{at:?}");
    assert!(elapsed < Duration::from_secs(2), "it ended by itself: {elapsed:?}");
}

#[test]
fn batch_rejects_a_bad_plan_with_status_2() {
    let pair = Pair::new();
    let cases = [
        (json!({"schema": 2, "probes": []}), "plan schema 2 is not supported"),
        (
            json!({"schema": 1, "probes": [{"id": "a", "target": SERVER_IP, "port": 80}]}),
            "missing field `timeout_ms`",
        ),
    ];
    for (plan, message) in cases {
        let mut child = pair
            .client
            .command(support::probe())
            .args(["batch", "--plan", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("batch starts");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), plan.to_string().as_bytes())
            .expect("write");
        drop(child.stdin.take());
        let output = child.wait_with_output().expect("batch ends");
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{stderr}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn serve_survives_misbehaving_clients_and_thousands_of_concurrent_ones() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--udp", "8080", "--name", "x/a"]);
    // Clients that connect and never read, half-close at once, or send garbage; the idle ones
    // stay connected while the load below runs.
    let idle = support::dns::in_netns(&pair.client.name, || {
        let idle: Vec<std::net::TcpStream> =
            (0..200).filter_map(|_| std::net::TcpStream::connect((SERVER_IP, 8080)).ok()).collect();
        for _ in 0..50 {
            let stream = std::net::TcpStream::connect((SERVER_IP, 8080)).expect("connects");
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for size in [0usize, 1, 1500, 65_000] {
            let _ = udp.send_to(&vec![0xff; size], (SERVER_IP, 8080));
        }
        idle
    });
    assert_eq!(idle.len(), 200, "every idle client connected");
    // Two thousand probes at once (concurrency 2000), over both transports.
    let probes: Vec<Value> = (0..2000)
        .map(|i| {
            let protocol = if i % 2 == 0 { "TCP" } else { "UDP" };
            json!({"id": format!("p{i}"), "target": SERVER_IP, "port": 8080, "protocol": protocol, "timeout_ms": 5000, "expect_name": "x/a"})
        })
        .collect();
    let (code, lines, _) =
        pair.client.batch(&json!({"schema": 1, "probes": probes}), &["--concurrency", "2000"]);
    assert_eq!(code, 0);
    let summary = &lines[lines.len() - 1]["summary"];
    assert_eq!(summary["reached"], 2000, "{summary}");
    drop(idle);
    // And it is still up.
    let (code, _, _) = pair.client.probe(&["connect", &server(8080)]);
    assert_eq!(code, 0);
}

#[test]
fn serve_explains_a_privileged_port_it_may_not_bind() {
    let mut pair = Pair::new();
    let copy = support::WorldRunnable::new();
    // As nobody, in a namespace where unprivileged ports start at 1024 (the default).
    let as_nobody = |port: &str| {
        let mut command = pair.server.command("setpriv");
        command
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                &copy.path,
                "serve",
                "--tcp",
                port,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    let output = wait_output(as_nobody("80").spawn().expect("setpriv runs"), COMMAND_LIMIT);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "TCP port 80",
        "permission denied",
        "root",
        "CAP_NET_BIND_SERVICE",
        "net.ipv4.ip_unprivileged_port_start",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
    // Lower the namespace's sysctl and the same user may bind port 80.
    pair.server.sysctl("net.ipv4.ip_unprivileged_port_start", "80");
    let child = pair.server.adopt(as_nobody("80").spawn().expect("setpriv runs"));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("a ready line within 10 s");
    assert!(line.contains("\"ready\""), "{line}");
}

#[test]
fn serve_stops_promptly_on_sigterm_and_refuses_to_serve_nothing() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--name", "x/a"]);
    let started = std::time::Instant::now();
    assert_eq!(pair.server.stop_all(), vec![Some(0)]);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (code, _, stderr) = pair.server.probe(&["serve"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("nothing to serve"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_status_2() {
    let pair = Pair::new();
    for args in [
        &["connect", "10.200.0.2"][..],
        &["connect", "10.200.0.2:80", "--timeout", "1h"],
        &["connect", "10.200.0.2:80", "--tcp", "--udp"],
        &["dns", "x", "--server", "nonsense"],
        &["serve", "--tcp", "0"],
        &["batch", "--plan", "/nonexistent/plan.json"],
        &["batch", "--every", "50ms"],
        &["batch", "--every", "50ms", "--for", "11m"],
        &["batch", "--every", "0ms", "--for", "1s"],
        &["frobnicate"],
    ] {
        let (code, lines, _) = pair.client.probe(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(lines.is_empty(), "{args:?}: no result line on a usage error");
    }
}

#[test]
fn batch_raises_a_low_open_file_limit_instead_of_failing_probes() {
    let mut pair = Pair::new();
    pair.server.serve(&["--tcp", "8080", "--name", "x/a"]);
    let probes: Vec<Value> = (0..500)
        .map(|i| json!({"id": format!("p{i}"), "target": SERVER_IP, "port": 8080, "timeout_ms": 5000}))
        .collect();
    let plan = json!({"schema": 1, "probes": probes}).to_string();
    let script = format!("ulimit -Sn 64 && exec {} batch --concurrency 500", support::probe());
    let mut child = pair
        .client
        .command("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("batch starts");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), plan.as_bytes()).expect("plan written");
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("batch ends");
    let text = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(text.lines().last().expect("summary")).expect("JSON");
    assert_eq!(summary["summary"]["reached"], 500, "{}", summary);
}
