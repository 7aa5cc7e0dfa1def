//! The L4 relay through a running proxy: splice-auto must move bulk and small data correctly in
//! both directions, keep the peeked ClientHello first, forward half-closes, and count bytes.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_proxy::peek::build_client_hello;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn ep(a: SocketAddr) -> serde_json::Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

/// Generous deadline for log lines (the suite runs in parallel on 2 loaded cores).
async fn wait_lines(p: &TestProxy, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let l = p.lines();
        if l.len() >= n {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} access log lines, got {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One-connection backend: reads everything until the client's half-close, reports it, then
/// answers with `reply` and closes.
async fn sink_then_source(reply: Vec<u8>) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = tx.send(got);
        s.write_all(&reply).await.unwrap();
        s.shutdown().await.unwrap();
    });
    (addr, rx)
}

#[tokio::test]
async fn bulk_both_ways_after_a_peeked_hello_with_half_close() {
    let reply = pattern(7 << 20, 0x5a);
    let (backend, got_rx) = sink_then_source(reply.clone()).await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"filterChainMatch": {"serverNames": ["bulk.example"]}, "action": {"tcpProxy": {"cluster": "b"}}}]}],
        "clusters": [{"name": "b", "endpoints": [ep(backend)]}]
    }))
    .await;
    let hello = build_client_hello(Some("bulk.example"), &["h2"]);
    let body = pattern(9 << 20, 0xa7);
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&body).await.unwrap();
        // Half-close: the backend sees EOF and only then answers.
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut back));
    let (_, n) = tokio::join!(send, recv);
    n.expect("reply within 120s").unwrap();
    let got = got_rx.await.unwrap();
    assert_eq!(got.len(), hello.len() + body.len());
    assert!(
        got[..hello.len()] == hello[..],
        "the hello goes first, untouched"
    );
    assert!(
        got[hello.len()..] == body[..],
        "downstream → upstream bytes differ"
    );
    assert!(back == reply, "upstream → downstream bytes differ");
    let f = fields(&wait_lines(&p, 1).await[0]);
    assert_eq!(f[3], "-", "{f:?}");
    assert_eq!(f[7], (hello.len() + body.len()).to_string());
    assert_eq!(f[8], reply.len().to_string());
    assert_eq!(f[20], "bulk.example");
}

#[tokio::test]
async fn small_messages_round_trip_then_half_close() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.set_nodelay(true).unwrap();
    let mut total = 0usize;
    for i in 0..300usize {
        // 1 B .. ~3 KiB: all below the copy buffer, as interactive traffic is.
        let msg = pattern(1 + (i * 37) % 3000, i as u8);
        c.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg, "message {i}");
        total += msg.len();
    }
    // The client half-closes; the echo backend closes in turn; the client sees EOF.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .unwrap();
    assert!(rest.is_empty());
    let f = fields(&wait_lines(&p, 1).await[0]);
    assert_eq!(f[7], total.to_string());
    assert_eq!(f[8], total.to_string());
    assert_eq!(f[16], "echo");
}

#[tokio::test]
async fn bulk_then_interactive_on_one_connection() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.set_nodelay(true).unwrap();
    let (mut r, mut w) = c.into_split();
    // 4 MiB each way through the echo (bulk: spliced), read concurrently so nothing stalls...
    let bulk = pattern(4 << 20, 0x33);
    let expect = bulk.clone();
    let reader = tokio::spawn(async move {
        let mut back = vec![0u8; expect.len()];
        tokio::time::timeout(Duration::from_secs(120), r.read_exact(&mut back))
            .await
            .expect("bulk echo in time")
            .unwrap();
        assert!(back == expect, "bulk echo differs");
        r
    });
    w.write_all(&bulk).await.unwrap();
    let mut r = reader.await.unwrap();
    // ...then small messages again on the same connection (copied), in order.
    for i in 0..100u8 {
        let msg = [i; 64];
        w.write_all(&msg).await.unwrap();
        let mut back = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(w);
    drop(r);
    let f = fields(&wait_lines(&p, 1).await[0]);
    assert_eq!(f[7], ((4 << 20) + 6400).to_string());
}
