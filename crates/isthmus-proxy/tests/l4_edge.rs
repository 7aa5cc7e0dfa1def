//! ClientHello edge cases on real sockets, timeouts and connection lifetimes.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_proxy::peek::{build_client_hello, split_records};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ep(a: SocketAddr) -> serde_json::Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

async fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("read");
    buf
}

#[tokio::test]
async fn hello_split_across_segments_and_records_is_routed_and_relayed_untouched() {
    let (echo_a, ca) = echo_backend().await;
    let (echo_b, cb) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"name": "a", "filterChainMatch": {"serverNames": ["a.example"]}, "action": {"tcpProxy": {"cluster": "a"}}},
            {"name": "b", "filterChainMatch": {"serverNames": ["*.b.example"]}, "action": {"tcpProxy": {"cluster": "b"}}}]}],
        "clusters": [{"name": "a", "endpoints": [ep(echo_a)]}, {"name": "b", "endpoints": [ep(echo_b)]}]
    }))
    .await;
    let hello = split_records(&build_client_hello(Some("x.b.example"), &["h2"]), 13);
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.set_nodelay(true).unwrap();
    for chunk in hello.chunks(5) {
        c.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    c.write_all(b"after-hello").await.unwrap();
    let back = read_n(&mut c, hello.len() + 11).await;
    assert_eq!(
        &back[..hello.len()],
        &hello[..],
        "peeked bytes relayed untouched"
    );
    assert_eq!(&back[hello.len()..], b"after-hello");
    assert_eq!((ca.get(), cb.get()), (0, 1));
    drop(c);
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(f[20], "x.b.example");
    assert_eq!(f[16], "b");
}

#[tokio::test]
async fn silent_client_falls_to_raw_chain_after_peek_timeout() {
    // Server-first protocol: the client sends nothing; after listenerFiltersTimeout the
    // connection is treated as raw_buffer and matched to the plain chain.
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "listenerFiltersTimeout": "150ms", "filterChains": [
            {"name": "tls", "filterChainMatch": {"transportProtocol": "tls"}, "action": {"tcpProxy": {"cluster": "nowhere"}}},
            {"name": "raw", "filterChainMatch": {"transportProtocol": "raw_buffer"}, "action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let t0 = Instant::now();
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(b"late").await.unwrap();
    assert_eq!(read_n(&mut c, 4).await, b"late");
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(p.proxy.stats().get("tls_inspector.tls_not_found"), 1);
}

#[tokio::test]
async fn plain_bytes_match_raw_chain_immediately() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"name": "tls", "filterChainMatch": {"transportProtocol": "tls"}, "action": {"tcpProxy": {"cluster": "nowhere"}}}],
            "defaultFilterChain": {"name": "PassthroughFilterChain", "action": {"tcpProxy": {"cluster": "echo"}}}}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(read_n(&mut c, 16).await, b"GET / HTTP/1.1\r\n");
}

#[tokio::test]
async fn tcp_idle_timeout_closes_quiet_connection() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo", "idleTimeout": "1s"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    // Traffic every 100ms keeps it open past the timeout (a 1s timeout, so a loaded machine's
    // scheduling hiccups between messages do not close it early)...
    let mut last = Instant::now();
    for _ in 0..15 {
        c.write_all(b"k").await.unwrap();
        assert_eq!(read_n(&mut c, 1).await, b"k");
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...then silence closes it, timed from the last byte.
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    let quiet = last.elapsed();
    // Never before the timeout; the upper bound is generous (CI runs the suite in parallel on
    // two loaded cores): the point is "closed by the idle timer", not by the read timeout.
    assert!(
        quiet >= Duration::from_millis(950) && quiet < Duration::from_millis(6000),
        "{quiet:?}"
    );
    p.wait_lines(1).await;
}

#[tokio::test]
async fn tcp_max_connection_duration_closes_with_dt() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)], "maxConnectionDuration": "300ms"}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    let t0 = Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        if c.write_all(b"k").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), c.read(&mut b))
            .await
            .unwrap()
        {
            Ok(1) => {}
            _ => {
                closed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "busy connection is still closed at the deadline");
    assert!(t0.elapsed() >= Duration::from_millis(280));
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(f[3], "DT");
}

#[tokio::test]
async fn tcp_proxy_max_downstream_connection_duration_is_dt() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo", "maxDownstreamConnectionDuration": "250ms"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"a").await.unwrap();
    assert_eq!(read_n(&mut c, 1).await, b"a");
    let t0 = Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    // Generous bound (loaded CI machines): the point is "closed at the deadline, not at the 3s read timeout".
    assert!(t0.elapsed() < Duration::from_millis(2500));
    assert_eq!(fields(&p.wait_lines(1).await[0])[3], "DT");
}

#[tokio::test]
async fn http_max_connection_duration_rotates_upstream_connections() {
    let (hb, conns) = http_backend("hb").await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"http": {"routeConfig": {"virtualHosts": [
            {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "hb"}}]}]}}}}]}],
        "clusters": [{"name": "hb", "endpoints": [ep(hb)], "maxConnectionDuration": "200ms"}]
    }))
    .await;
    let port = p.addr("l").port();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        curl(&s(&["-o", "/dev/null", "-w", "%{http_code}", &url]))
            .await
            .stdout,
        "200"
    );
    assert_eq!(
        curl(&s(&["-o", "/dev/null", "-w", "%{http_code}", &url]))
            .await
            .stdout,
        "200"
    );
    assert_eq!(conns.get(), 1, "reused within the duration");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        curl(&s(&["-o", "/dev/null", "-w", "%{http_code}", &url]))
            .await
            .stdout,
        "200"
    );
    assert_eq!(
        conns.get(),
        2,
        "a new connection after maxConnectionDuration"
    );
    assert_eq!(
        p.proxy
            .stats()
            .get("cluster.hb.upstream_cx_max_duration_reached"),
        1
    );
}

#[tokio::test]
async fn http_upstream_idle_timeout_closes_pooled_connection() {
    let (hb, conns) = http_backend("hb").await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"http": {"routeConfig": {"virtualHosts": [
            {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "hb"}}]}]}}}}]}],
        "clusters": [{"name": "hb", "endpoints": [ep(hb)], "idleTimeout": "150ms"}]
    }))
    .await;
    let url = format!("http://127.0.0.1:{}/", p.addr("l").port());
    assert_eq!(
        curl(&s(&["-o", "/dev/null", "-w", "%{http_code}", &url]))
            .await
            .stdout,
        "200"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        p.proxy.stats().get("cluster.hb.upstream_cx_idle_timeout"),
        1
    );
    assert_eq!(p.proxy.stats().get("cluster.hb.upstream_cx_active"), 0);
    assert_eq!(
        curl(&s(&["-o", "/dev/null", "-w", "%{http_code}", &url]))
            .await
            .stdout,
        "200"
    );
    assert_eq!(conns.get(), 2);
}

#[tokio::test]
async fn strict_dns_cluster_resolves_names() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"tcpProxy": {"cluster": "dns"}}}]}],
        "clusters": [{"name": "dns", "type": "STRICT_DNS", "endpoints": [{"address": "localhost", "port": echo.port()}]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"dns").await.unwrap();
    assert_eq!(read_n(&mut c, 3).await, b"dns");
}

#[tokio::test]
async fn capture_listener_hands_connections_to_virtual_listeners() {
    use isthmus_proxy::OrigDst;
    use std::sync::{Arc, Mutex};
    let (echo, count) = echo_backend().await;
    // The "original destination" each test connection pretends to have.
    let target: Arc<Mutex<SocketAddr>> = Arc::new(Mutex::new("10.99.0.2:8080".parse().unwrap()));
    let t2 = target.clone();
    let od = OrigDst::Injected(Arc::new(move |_, _| Some(*t2.lock().unwrap())));
    let p = start_with(
        json!({
            "listeners": [
                {"name": "virtualOutbound", "address": "127.0.0.1:0", "useOriginalDst": true, "filterChains": [
                    {"name": "virtualOutbound-catchall-tcp", "action": {"tcpProxy": {"cluster": "BlackHoleCluster"}}}]},
                {"name": "10.99.0.2_8080", "address": "10.99.0.2:8080", "bindToPort": false, "filterChains": [
                    {"action": {"tcpProxy": {"cluster": "outbound|8080||svc"}}}]},
                {"name": "0.0.0.0_9090", "address": "0.0.0.0:9090", "bindToPort": false, "filterChains": [
                    {"action": {"tcpProxy": {"cluster": "outbound|9090||any"}}}]}
            ],
            "clusters": [
                {"name": "BlackHoleCluster"},
                {"name": "outbound|8080||svc", "endpoints": [ep(echo)]},
                {"name": "outbound|9090||any", "endpoints": [ep(echo)]}
            ]
        }),
        od,
        isthmus_proxy::config::LogEncoding::Text,
    )
    .await;
    assert!(
        p.proxy.listener_addr("10.99.0.2_8080").is_none(),
        "virtual listeners are not bound"
    );
    let addr = p.addr("virtualOutbound");
    for (i, (dst, cluster)) in [
        ("10.99.0.2:8080", "outbound|8080||svc"),
        ("10.1.2.3:9090", "outbound|9090||any"),
    ]
    .into_iter()
    .enumerate()
    {
        *target.lock().unwrap() = dst.parse().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"v").await.unwrap();
        assert_eq!(read_n(&mut c, 1).await, b"v");
        drop(c);
        let lines = p.wait_lines(i + 1).await;
        let line = lines
            .iter()
            .find(|l| l.contains(cluster))
            .unwrap_or_else(|| panic!("{cluster}: {lines:?}"));
        assert_eq!(
            fields(line)[18],
            dst,
            "downstream local address = original destination"
        );
    }
    assert_eq!(count.get(), 2);
    *target.lock().unwrap() = "10.7.7.7:1234".parse().unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "unknown destination falls to the capture listener's own chain"
    );
    let lines = p.wait_lines(3).await;
    assert!(lines
        .iter()
        .any(|l| fields(l)[3] == "UH" && fields(l)[16] == "BlackHoleCluster"));
}

#[tokio::test]
async fn renamed_listener_on_same_address_takes_over() {
    let (echo, _) = echo_backend().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = |name: &str| {
        json!({
            "listeners": [{"name": name, "address": format!("127.0.0.1:{port}"), "filterChains": [{"action": {"tcpProxy": {"cluster": "echo"}}}]}],
            "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
        })
    };
    let p = start(cfg("old")).await;
    p.proxy
        .update(serde_json::from_value(cfg("new")).unwrap())
        .await
        .expect("rename on the same port is accepted");
    assert!(p.proxy.listener_addr("old").is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"r").await.unwrap();
    assert_eq!(read_n(&mut c, 1).await, b"r");
}

#[tokio::test]
async fn garbage_on_every_listener_kind_never_breaks_the_proxy() {
    let ca = Ca::new("root");
    let (hb, _) = http_backend("hb").await;
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [
            {"name": "http", "address": "127.0.0.1:0", "filterChains": [{"action": {"http": {"routeConfig": {"virtualHosts": [
                {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "hb"}}]}]}}}}]},
            {"name": "tls", "address": "127.0.0.1:0", "filterChains": [
                {"filterChainMatch": {"serverNames": ["a.example"]}, "tls": {"mode": "SIMPLE", "certificates": ["c"]},
                 "action": {"tcpProxy": {"cluster": "echo"}}}]}
        ],
        "clusters": [{"name": "hb", "endpoints": [ep(hb)]}, {"name": "echo", "endpoints": [ep(echo)]}],
        "secrets": [cert_secret("c", &ca.leaf(&["a.example"], &[]))]
    }))
    .await;
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let hello = build_client_hello(Some("a.example"), &["h2"]);
    for i in 0..60 {
        let target = if i % 2 == 0 {
            p.addr("http")
        } else {
            p.addr("tls")
        };
        let mut junk: Vec<u8> = (0..(next() % 700)).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // Start like a real hello, then go wrong.
            let cut = (next() as usize) % hello.len();
            junk.splice(0..0, hello[..cut].iter().copied());
        }
        if let Ok(mut c) = TcpStream::connect(target).await {
            let _ = c.write_all(&junk).await;
            let _ = c.shutdown().await;
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), c.read_to_end(&mut sink)).await;
        }
    }
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/status/200", p.addr("http")),
    ]))
    .await;
    assert_eq!(o.stdout, "200", "proxy still serves after garbage");
    let cafile = temp_file(&ca.pem);
    let port = p.addr("tls").port();
    let o = curl(&s(&[
        "--cacert",
        cafile.path().to_str().unwrap(),
        "--resolve",
        &format!("a.example:{port}:127.0.0.1"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://a.example:{port}/"),
    ]))
    .await;
    // TLS terminated into an echo server: curl gets its own request echoed back (not HTTP),
    // which proves the handshake still works.
    assert_ne!(o.code, 35, "{}", o.stderr);
}

#[tokio::test]
async fn keepalive_probes_do_not_reset_tcp_idle_timeout() {
    // Upstream sockets send keepalive probes every second; the idle timer counts only data,
    // so a silent connection still closes at the idle timeout.
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo", "idleTimeout": "2500ms"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)],
            "tcpKeepalive": {"keepaliveProbes": 3, "keepaliveTime": "1s", "keepaliveInterval": "1s"}}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut c, 1).await, b"x");
    let t0 = Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(6), c.read(&mut b))
        .await
        .expect("closed by idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2300) && waited < Duration::from_millis(4500),
        "{waited:?}"
    );
    let lines = p.wait_lines(1).await;
    assert_eq!(fields(&lines[0])[7], "1");
    assert_eq!(
        p.proxy.stats().get(&format!(
            "listener.127.0.0.1_{}.downstream_cx_active",
            p.addr("l").port()
        )),
        0
    );
}

#[tokio::test]
async fn original_dst_listener_filter_matches_port_without_handoff() {
    // Istio's virtualInbound: the original_dst listener filter restores the destination, the
    // chains match on its port, and an unbound listener on the same port is NOT used.
    use isthmus_proxy::OrigDst;
    use std::sync::Arc;
    let (app, count) = echo_backend().await;
    let od = OrigDst::Injected(Arc::new(|_, _| Some("10.0.0.7:9080".parse().unwrap())));
    let p = start_with(
        json!({
            "listeners": [
                {"name": "virtualInbound", "address": "127.0.0.1:0", "originalDstFilter": true, "direction": "INBOUND", "filterChains": [
                    {"name": "0.0.0.0_9080", "filterChainMatch": {"destinationPort": 9080}, "action": {"tcpProxy": {"cluster": "inbound|9080||"}}}],
                 "defaultFilterChain": {"name": "InboundPassthroughFilterChain", "action": {"tcpProxy": {"cluster": "BlackHoleCluster"}}}},
                {"name": "0.0.0.0_9080", "address": "0.0.0.0:9080", "bindToPort": false, "filterChains": [
                    {"action": {"tcpProxy": {"cluster": "BlackHoleCluster"}}}]}
            ],
            "clusters": [{"name": "inbound|9080||", "endpoints": [ep(app)]}, {"name": "BlackHoleCluster"}]
        }),
        od,
        isthmus_proxy::config::LogEncoding::Text,
    )
    .await;
    let mut c = TcpStream::connect(p.addr("virtualInbound")).await.unwrap();
    c.write_all(b"in").await.unwrap();
    assert_eq!(read_n(&mut c, 2).await, b"in");
    drop(c);
    assert_eq!(count.get(), 1);
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(f[16], "inbound|9080||");
    assert_eq!(f[18], "10.0.0.7:9080");
}
