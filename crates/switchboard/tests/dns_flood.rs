//! End-to-end tests of the DNS interface's own UDP path through the real binary: one source
//! floods UDP queries, another is still answered, and the flooder gets no more answers
//! than its rate allows; an answer too long for UDP is truncated and fetched over TCP.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, send_json, start_with, Server};
use serde_json::json;

/// The DNS address `serve` printed.
fn dns_address(server: &Server) -> String {
    common::wait_for_line(&server.stdout, "its dns address", |lines| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("switchboard: dns on "))
            .map(|r| r.split(' ').next().unwrap().to_owned())
    })
}

/// Registers a persistent instance of `service` on port 8080; it must succeed.
async fn register(http: &reqwest::Client, server: &Server, token: &str, service: &str, ip: &str) {
    let url = server.url(&format!("/api/v1/namespaces/public/services/{service}/instances"));
    let body = json!({"ip": ip, "port": 8080, "ephemeral": false});
    let (status, value) = send_json(http.post(url).bearer_auth(token), &body).await;
    assert!(status.is_success(), "{value}");
}

/// A DNS query for `name` type A, as bytes on the wire.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// `dig` from a given source address (one try, so a lost query shows).
fn dig_from(source: &str, dns: &str, name: &str) -> String {
    let (host, port) = dns.rsplit_once(':').expect("host:port");
    let output = std::process::Command::new("dig")
        .args(["-b", source, &format!("@{host}"), "-p", port, "+time=1", "+tries=1", "+short", name, "A"])
        .output()
        .expect("dig runs (Debian's bind9-dnsutils; scripts/test installs it)");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_flood_from_one_source_does_not_stop_another_sources_answers() {
    const QPS: u64 = 200;
    let (_dir, server, token) = start_with(&[
        "--dns-listen",
        "127.0.0.1:0",
        "--dns-per-source-qps",
        "200",
        "--dns-per-source-burst",
        "50",
    ]);
    let dns = dns_address(&server);
    let http = client();
    register(&http, &server, &token, "orders", "10.0.0.1").await;
    assert_eq!(dig_from("127.0.0.3", &dns, "orders.svc.switchboard").trim(), "10.0.0.1");

    // The flood: 127.0.0.2 sends as fast as one thread can, and counts the answers it gets.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
    socket.connect(&dns).unwrap();
    let receiver = socket.try_clone().unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // 20k queries/s, 100 times the source's rate: more than the rate allows, less
            // than a debug build's one worker drains (beyond what the workers drain, the
            // kernel drops datagrams from every source alike).
            let mut id = 0u16;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    id = id.wrapping_add(1);
                    if socket.send(&query(id, "orders.svc.switchboard")).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let counter = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if receiver.recv(&mut buf).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another source asks 20 times, one at a time: every query is answered.
    let mut misses = 0;
    for _ in 0..20 {
        let answer = tokio::task::spawn_blocking({
            let dns = dns.clone();
            move || dig_from("127.0.0.3", &dns, "orders.svc.switchboard")
        })
        .await
        .unwrap();
        if answer.trim() != "10.0.0.1" {
            misses += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    counter.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let (sent, answered) = (sent.load(Ordering::Relaxed), answered.load(Ordering::Relaxed));
    assert_eq!(misses, 0, "the quiet source lost {misses} of 20 queries during the flood");
    assert!(sent > 20 * answered, "the flood outran the rate: {sent} sent, {answered} answered");
    let allowed = (QPS as f64 * (secs + 1.0)) as u64 + 50;
    assert!(
        answered <= allowed,
        "the flooder got {answered} answers in {secs:.1} s, over its rate ({allowed})"
    );

    // The node counts what it held back.
    let limited = common::metric(&http, &server, "switchboard_dns_queries_rate_limited_total").await;
    assert!(limited > 0.0, "{limited}");
}

/// `dig` with extra arguments against the node's DNS address.
fn dig(dns: &str, args: &[&str]) -> String {
    let (host, port) = dns.rsplit_once(':').expect("host:port");
    let output = std::process::Command::new("dig")
        .args([&format!("@{host}"), "-p", port, "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig runs (Debian's bind9-dnsutils; scripts/test installs it)");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test]
async fn a_udp_answer_too_long_is_truncated_and_the_client_gets_it_over_tcp() {
    let (_dir, server, token) = start_with(&["--dns-listen", "127.0.0.1:0"]);
    let dns = dns_address(&server);
    let http = client();
    for i in 1..=60 {
        register(&http, &server, &token, "wide", &format!("10.1.0.{i}")).await;
    }
    // Without EDNS the limit is 512 bytes: 60 SRV records do not fit, so the UDP answer
    // comes back with TC set and the question only.
    let udp = dig(&dns, &["+noedns", "+ignore", "+noall", "+comments", "wide.svc.switchboard", "SRV"]);
    assert!(udp.contains(" tc"), "no TC flag: {udp}");
    assert!(udp.contains("ANSWER: 0"), "{udp}");
    // dig follows TC to TCP and gets all of them.
    let full = dig(&dns, &["+noedns", "+short", "wide.svc.switchboard", "SRV"]);
    assert_eq!(full.lines().count(), 60, "{full}");
    // A short answer fits over UDP, EDNS or not.
    let small = dig(&dns, &["+noedns", "+ignore", "+noall", "+comments", "10-1-0-1.addr.switchboard", "A"]);
    assert!(!small.contains(" tc") && small.contains("ANSWER: 1"), "{small}");
}
