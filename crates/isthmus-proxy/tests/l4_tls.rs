//! L4, SNI passthrough, TLS termination and origination, with real curl / openssl clients.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_proxy::config::LogEncoding;
use isthmus_proxy::OrigDst;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARTNER: &str = "api.partner.example";
const PARTNER_CLUSTER: &str = "outbound|443||api.partner.example";

fn ep(a: SocketAddr) -> serde_json::Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

/// Egress-gateway style listener: SNI passthrough for the partner, nothing else.
fn passthrough_cfg(backend: SocketAddr) -> serde_json::Value {
    json!({
        "listeners": [{"name": "0.0.0.0_443", "address": "127.0.0.1:0", "filterChains": [
            {"name": "partner", "filterChainMatch": {"serverNames": [PARTNER]},
             "action": {"tcpProxy": {"cluster": PARTNER_CLUSTER}}}
        ]}],
        "clusters": [{"name": PARTNER_CLUSTER, "endpoints": [ep(backend)]}]
    })
}

#[tokio::test]
async fn passthrough_keeps_server_cert_and_original_sni() {
    let ca = Ca::new("partner-root");
    let backend = https_backend("partner", &ca.leaf(&[PARTNER], &[]), None).await;
    let p = start(passthrough_cfg(backend)).await;
    let port = p.addr("0.0.0.0_443").port();
    let cafile = temp_file(&ca.pem);
    // curl trusts ONLY the partner's CA: success proves the proxy relayed the partner's own cert.
    let out = curl(&s(&[
        "--cacert",
        cafile.path().to_str().unwrap(),
        "--resolve",
        &format!("{PARTNER}:{port}:127.0.0.1"),
        &format!("https://{PARTNER}:{port}/hello"),
    ]))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("backend=partner"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("sni={PARTNER}")),
        "partner must see the app's SNI: {}",
        out.stdout
    );

    // openssl s_client shows the partner's certificate subject through the proxy.
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                PARTNER,
                "-CAfile",
            ])
            .arg(cafile.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("CN={PARTNER}")) || text.contains(&format!("CN = {PARTNER}")),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let lines = p.wait_lines(2).await;
    let f = fields(&lines[0]);
    assert_eq!(f.len(), 22, "{:?}", f);
    assert_eq!(f[1], "\"- - -\"");
    assert_eq!(f[2], "0");
    assert_eq!(f[3], "-", "no response flags");
    assert_eq!(f[4], "-");
    assert_eq!(f[5], "-");
    assert_eq!(f[6], "\"-\"");
    assert!(f[7].parse::<u64>().unwrap() > 0, "bytes received");
    assert!(f[8].parse::<u64>().unwrap() > 0, "bytes sent");
    assert_eq!(f[10], "-");
    assert_eq!(f[11..15], ["\"-\"", "\"-\"", "\"-\"", "\"-\""]);
    assert_eq!(f[15], format!("\"{backend}\""));
    assert_eq!(f[16], PARTNER_CLUSTER);
    assert!(f[17].starts_with("127.0.0.1:"));
    assert_eq!(f[18], format!("127.0.0.1:{port}"));
    assert!(f[19].starts_with("127.0.0.1:"));
    assert_eq!(f[20], PARTNER);
    assert_eq!(f[21], "-");
    // L4 traffic shows up in istio_tcp_* metrics, without response_code.
    let prom = admin_get(&p, "/stats/prometheus").await;
    let opened: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .collect();
    assert!(!opened.is_empty(), "{prom}");
    assert!(opened[0].contains("request_protocol=\"tcp\""));
    assert!(opened[0].contains("reporter=\"source\""));
    assert!(
        !opened[0].contains("response_code"),
        "TCP metrics carry no response_code: {}",
        opened[0]
    );
    assert!(prom.contains("istio_tcp_sent_bytes_total{"));
    assert!(prom.contains("istio_tcp_received_bytes_total{"));
    assert!(
        prom.contains(&format!(
            "envoy_cluster_upstream_cx_total{{cluster_name=\"{PARTNER_CLUSTER}\"}} 2"
        )),
        "{prom}"
    );
}

#[tokio::test]
async fn unknown_sni_is_reset_curl_35_and_logged_nr() {
    let ca = Ca::new("partner-root");
    let backend = https_backend("partner", &ca.leaf(&[PARTNER], &[]), None).await;
    let p = start(passthrough_cfg(backend)).await;
    let port = p.addr("0.0.0.0_443").port();
    let out = curl(&s(&[
        "-k",
        "--resolve",
        &format!("evil.example:{port}:127.0.0.1"),
        &format!("https://evil.example:{port}/"),
    ]))
    .await;
    assert_eq!(
        out.code, 35,
        "unknown SNI must fail the handshake (exit 35), got {}: {}",
        out.code, out.stderr
    );
    let lines = p.wait_lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[1], "\"- - -\"");
    assert_eq!(f[3], "NR");
    assert_eq!(f[16], "-", "no upstream cluster");
    assert_eq!(f[20], "evil.example");
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("listener.127.0.0.1_{port}.no_filter_chain_match")),
        1
    );
}

fn tls_term_cfg(mode: &str, backend: SocketAddr) -> serde_json::Value {
    let mut tls = json!({"mode": mode, "certificates": ["kubernetes://gw-cert"]});
    if mode != "SIMPLE" {
        tls["validation"] = json!("kubernetes://gw-cert-cacert");
    }
    json!({
        "listeners": [{"name": "gw", "address": "127.0.0.1:0", "filterChains": [
            {"name": "https", "filterChainMatch": {"serverNames": ["app.example"]}, "tls": tls,
             "action": {"http": {"routeConfig": {"name": "https.443.https.gw.istio-system", "virtualHosts": [
                {"name": "app.example:443", "domains": ["app.example"], "routes": [
                    {"name": "app", "match": {"prefix": "/"}, "route": {"cluster": "outbound|80||app"}}]}]}}}}
        ]}],
        "clusters": [{"name": "outbound|80||app", "endpoints": [ep(backend)],
                      "service": {"host": "app.default.svc.cluster.local", "name": "app", "namespace": "default"}}]
    })
}

struct TermFixture {
    p: TestProxy,
    port: u16,
    ca_file: tempfile::NamedTempFile,
    client_good: (tempfile::NamedTempFile, tempfile::NamedTempFile),
    client_other_root: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

async fn term_fixture(mode: &str) -> TermFixture {
    let server_ca = Ca::new("gw-root");
    let client_ca = Ca::new("client-root");
    let other = Ca::new("other-root");
    let (backend, _) = http_backend("app").await;
    let mut cfg = tls_term_cfg(mode, backend);
    cfg["secrets"] = json!([
        cert_secret(
            "kubernetes://gw-cert",
            &server_ca.leaf(&["app.example"], &[])
        ),
        ca_secret("kubernetes://gw-cert-cacert", &client_ca),
    ]);
    let p = start(cfg).await;
    let port = p.addr("gw").port();
    let good = client_ca.leaf(
        &["client.example"],
        &["spiffe://cluster.local/ns/default/sa/sleep"],
    );
    let bad = other.leaf(
        &["client.example"],
        &["spiffe://cluster.local/ns/default/sa/sleep"],
    );
    TermFixture {
        p,
        port,
        ca_file: temp_file(&server_ca.pem),
        client_good: (temp_file(&good.0), temp_file(&good.1)),
        client_other_root: (temp_file(&bad.0), temp_file(&bad.1)),
    }
}

fn curl_args(
    f: &TermFixture,
    cert: Option<&(tempfile::NamedTempFile, tempfile::NamedTempFile)>,
    extra: &[&str],
) -> Vec<String> {
    let mut a = s(&[
        "--cacert",
        f.ca_file.path().to_str().unwrap(),
        "--resolve",
        &format!("app.example:{}:127.0.0.1", f.port),
    ]);
    if let Some((c, k)) = cert {
        a.extend(s(&[
            "--cert",
            c.path().to_str().unwrap(),
            "--key",
            k.path().to_str().unwrap(),
        ]));
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(format!("https://app.example:{}/status/200", f.port));
    a
}

#[tokio::test]
async fn simple_termination_http1_and_h2_by_alpn() {
    let f = term_fixture("SIMPLE").await;
    let o = curl(&curl_args(&f, None, &["--http1.1"])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("backend=app"));
    let o = curl(&curl_args(&f, None, &["--http2"])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines = f.p.wait_lines(2).await;
    assert!(fields(&lines[0])[1].ends_with("HTTP/1.1\""), "{}", lines[0]);
    assert!(fields(&lines[1])[1].ends_with("HTTP/2\""), "{}", lines[1]);
    assert_eq!(fields(&lines[1])[20], "app.example");
}

#[tokio::test]
async fn mutual_without_client_cert_fails_handshake() {
    let f = term_fixture("MUTUAL").await;
    let o = curl(&curl_args(&f, None, &[])).await;
    assert_ne!(o.code, 0, "MUTUAL must reject a client without certificate");
    assert!(
        matches!(o.code, 35 | 55 | 56),
        "TLS failure expected, got {} {}",
        o.code,
        o.stderr
    );
    let o = curl(&curl_args(&f, Some(&f.client_good), &[])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("backend=app"));
    // openssl s_client without a cert: the server's alert shows up.
    let port = f.port;
    let ca = f.ca_file.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("(sleep 1; printf 'GET / HTTP/1.0\\r\\n\\r\\n') | openssl s_client -connect 127.0.0.1:{port} -servername app.example -CAfile {} 2>&1", ca.display()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("alert") && text.contains("certificate required"),
        "{text}"
    );
}

#[tokio::test]
async fn istio_mutual_rejects_other_root_and_keeps_peer_identity() {
    let f = term_fixture("ISTIO_MUTUAL").await;
    let o = curl(&curl_args(&f, Some(&f.client_other_root), &[])).await;
    assert_ne!(o.code, 0, "a cert from another root must be rejected");
    let o = curl(&curl_args(&f, Some(&f.client_good), &[])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    f.p.wait_lines(1).await;
}

#[tokio::test]
async fn blackhole_closes_with_uh() {
    let p = start(json!({
        "listeners": [{"name": "virtualOutbound", "address": "127.0.0.1:0", "filterChains": [
            {"name": "virtualOutbound-catchall-tcp", "action": {"tcpProxy": {"cluster": "BlackHoleCluster"}}}]}],
        "clusters": [{"name": "BlackHoleCluster"}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("virtualOutbound")).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    let lines = p.wait_lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[3], "UH");
    assert_eq!(f[16], "BlackHoleCluster");
    assert_eq!(f[15], "\"-\"");
    let prom = admin_get(&p, "/stats/prometheus").await;
    assert!(
        !prom.contains("istio_tcp_connections_opened_total"),
        "no upstream, no opened connection"
    );
}

#[tokio::test]
async fn passthrough_cluster_uses_original_destination() {
    let (echo, count) = echo_backend().await;
    let od = OrigDst::Injected(Arc::new(move |_local, _peer| Some(echo)));
    let p = start_with(
        json!({
            "listeners": [{"name": "virtualOutbound", "address": "127.0.0.1:0", "useOriginalDst": true, "filterChains": [
                {"name": "virtualOutbound-catchall-tcp", "action": {"passthrough": {}}}]}]
        }),
        od,
        LogEncoding::Text,
    )
    .await;
    let mut c = TcpStream::connect(p.addr("virtualOutbound")).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(c);
    assert_eq!(count.get(), 1);
    let lines = p.wait_lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[16], "PassthroughCluster");
    assert_eq!(f[15], format!("\"{echo}\""));
    assert_eq!(
        f[18],
        echo.to_string(),
        "downstream local address is the original destination"
    );
    assert_eq!((f[7].as_str(), f[8].as_str()), ("4", "4"));
}

#[tokio::test]
async fn long_lived_connection_survives_config_update_and_removed_listener_drains() {
    let (echo, _) = echo_backend().await;
    let cfg = json!({
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    });
    let p = start(cfg).await;
    let addr = p.addr("tcp");
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).await.unwrap();
    // New version: the listener is gone.
    p.proxy
        .update(
            serde_json::from_value(
                json!({"clusters": [{"name": "echo", "endpoints": [ep(echo)]}]}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "removed listener stops accepting"
    );
    c.write_all(b"two").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"two",
        "in-flight connection keeps working on its config"
    );
}

#[tokio::test]
async fn bad_config_is_refused_whole() {
    let (echo, _) = echo_backend().await;
    let cfg = json!({
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}]
    });
    let p = start(cfg).await;
    let addr = p.addr("tcp");
    // Bad material (not a missing secret, which Envoy accepts and fails at use).
    let bad = json!({
        "listeners": [{"name": "new", "address": "127.0.0.1:0", "filterChains": [
            {"tls": {"mode": "SIMPLE", "certificates": ["broken"]}, "action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}],
        "secrets": [{"name": "broken", "certificateChain": {"inlineString": "not a PEM"}, "privateKey": {"inlineString": "nope"}}]
    });
    let err = p
        .proxy
        .update(serde_json::from_value(bad).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("secret \"broken\""), "{err}");
    assert!(p.proxy.listener_addr("new").is_none());
    assert_eq!(p.addr("tcp"), addr);
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
}

#[tokio::test]
async fn tcp_max_connections_overflow_is_uo() {
    let (echo, _) = echo_backend().await;
    let p = start(json!({
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)], "circuitBreakers": {"maxConnections": 1}}]
    }))
    .await;
    let mut c1 = TcpStream::connect(p.addr("tcp")).await.unwrap();
    c1.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    c1.read_exact(&mut b).await.unwrap();
    let mut c2 = TcpStream::connect(p.addr("tcp")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), c2.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "second connection closed");
    let lines = p.wait_lines(1).await;
    assert_eq!(fields(&lines[0])[3], "UO");
    assert_eq!(p.proxy.stats().get("cluster.echo.upstream_cx_overflow"), 1);
    let st = admin_get(&p, "/stats?filter=upstream_cx_overflow").await;
    assert_eq!(st, "cluster.echo.upstream_cx_overflow: 1\n");
}

#[tokio::test]
async fn tcp_connect_failure_with_retries_is_uf_urx() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = start(json!({
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "dead", "maxConnectAttempts": 2}}}]}],
        "clusters": [{"name": "dead", "endpoints": [ep(dead)]}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("tcp")).await.unwrap();
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
        .await
        .unwrap();
    let lines = p.wait_lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[3], "UF,URX");
    assert_eq!(f[15], format!("\"{dead}\""));
    assert_eq!(
        p.proxy.stats().get("cluster.dead.upstream_cx_connect_fail"),
        2
    );
}

#[tokio::test]
async fn connect_timeout_is_uf_and_counted() {
    // A listener whose accept backlog is full drops further SYNs: connects hang.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let full: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await
        {
            fillers.push(s);
        }
    }
    let p = start(json!({
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"tcpProxy": {"cluster": "slow"}}}]}],
        "clusters": [{"name": "slow", "endpoints": [ep(full)], "connectTimeout": "300ms"}]
    }))
    .await;
    let mut c = TcpStream::connect(p.addr("tcp")).await.unwrap();
    let mut b = [0u8; 1];
    let t0 = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap();
    let lines = p.wait_lines(1).await;
    assert_eq!(fields(&lines[0])[3], "UF");
    assert_eq!(
        p.proxy
            .stats()
            .get("cluster.slow.upstream_cx_connect_timeout"),
        1
    );
    assert!(t0.elapsed() >= Duration::from_millis(250));
    drop(sock);
}

#[tokio::test]
async fn tls_origination_simple_and_istio_mutual() {
    let ca = Ca::new("mesh-root");
    let server = ca.leaf(
        &["reviews.default.svc.cluster.local"],
        &["spiffe://cluster.local/ns/default/sa/reviews"],
    );
    let simple_backend = https_backend("simple", &ca.leaf(&["api.example"], &[]), None).await;
    let mtls_backend = https_backend("mtls", &server, Some(&ca)).await;
    let (plain, _) = http_backend("plain").await;
    let client = ca.leaf(&[], &["spiffe://cluster.local/ns/default/sa/sleep"]);
    let cfg = json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": "api", "domains": ["api.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "simple"}}]},
                {"name": "reviews", "domains": ["reviews"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "mtls"}}]},
                {"name": "wrong", "domains": ["wrong"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "mtls-wrong-san"}}]},
                {"name": "plain", "domains": ["plain"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "plain"}}]}
            ]}}}}]}],
        "clusters": [
            {"name": "simple", "endpoints": [ep(simple_backend)],
             "tls": {"mode": "SIMPLE", "sni": "api.example", "validation": "ca"}},
            {"name": "mtls", "endpoints": [ep(mtls_backend)],
             "tls": {"mode": "ISTIO_MUTUAL", "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
                     "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/reviews"], "certificate": "default", "validation": "ROOTCA"}},
            {"name": "mtls-wrong-san", "endpoints": [ep(mtls_backend)],
             "tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/other"], "certificate": "default", "validation": "ROOTCA"}},
            {"name": "plain", "endpoints": [ep(plain)]}
        ],
        "secrets": [ca_secret("ca", &ca), ca_secret("ROOTCA", &ca), cert_secret("default", &client)]
    });
    let p = start(cfg).await;
    let port = p.addr("http").port();
    let get = |host: &str| {
        s(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{port}/x"),
        ])
    };
    let o = curl(&get("api.example")).await;
    assert!(
        o.stdout.contains("backend=simple") && o.stdout.contains("sni=api.example"),
        "{}",
        o.stdout
    );
    let o = curl(&get("reviews")).await;
    assert!(
        o.stdout.contains("backend=mtls") && o.stdout.contains("sni=outbound_.9080_._.reviews"),
        "{}",
        o.stdout
    );
    let o = curl(&[s(&["-o", "/dev/null", "-w", "%{http_code}"]), get("wrong")].concat()).await;
    assert_eq!(o.stdout, "503", "SAN mismatch must fail origination");
    let o = curl(&get("plain")).await;
    assert!(o.stdout.contains("backend=plain"));
    let lines = p.wait_lines(4).await;
    let wrong = lines.iter().find(|l| l.contains("mtls-wrong-san")).unwrap();
    assert_eq!(fields(wrong)[3], "UF");
    assert!(fields(wrong)[6].starts_with("\"TLS_error"), "{wrong}");
}

/// A TLS client (rustls) trusting `ca`; returns the stream and the server's leaf certificate.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    sni: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (s, leaf)
}

#[tokio::test]
async fn certificate_rotation_applies_to_new_handshakes_only() {
    let ca = Ca::new("gw-root");
    let (echo, _) = echo_backend().await;
    let cfg = |cert: &(String, String)| {
        json!({
            "listeners": [{"name": "tls", "address": "127.0.0.1:0", "filterChains": [
                {"tls": {"mode": "SIMPLE", "certificates": ["kubernetes://cred"]}, "action": {"tcpProxy": {"cluster": "echo"}}}]}],
            "clusters": [{"name": "echo", "endpoints": [ep(echo)]}],
            "secrets": [cert_secret("kubernetes://cred", cert)]
        })
    };
    let first = ca.leaf(&["app.example"], &[]);
    let p = start(cfg(&first)).await;
    let addr = p.addr("tls");
    let (mut old, leaf1) = tls_connect(addr, &ca, "app.example").await;
    let second = ca.leaf(&["app.example"], &[]);
    p.proxy
        .update(serde_json::from_value(cfg(&second)).unwrap())
        .await
        .unwrap();
    assert_eq!(p.addr("tls"), addr, "same listener keeps serving");
    let (_new, leaf2) = tls_connect(addr, &ca, "app.example").await;
    assert_ne!(
        leaf1, leaf2,
        "new handshake presents the rotated certificate"
    );
    old.write_all(b"still").await.unwrap();
    let mut b = [0u8; 5];
    old.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"still", "open connection keeps working");
}

#[tokio::test]
async fn certificate_chosen_by_sni_among_servers_on_one_chain() {
    let ca = Ca::new("gw-root");
    let (echo, _) = echo_backend().await;
    let a = ca.leaf(&["a.example"], &[]);
    let b = ca.leaf(&["*.b.example"], &[]);
    let p = start(json!({
        "listeners": [{"name": "tls", "address": "127.0.0.1:0", "filterChains": [
            {"tls": {"mode": "SIMPLE", "certificates": ["a", "b"]}, "action": {"tcpProxy": {"cluster": "echo"}}}]}],
        "clusters": [{"name": "echo", "endpoints": [ep(echo)]}],
        "secrets": [cert_secret("a", &a), cert_secret("b", &b)]
    }))
    .await;
    let (_s1, l1) = tls_connect(p.addr("tls"), &ca, "a.example").await;
    let (_s2, l2) = tls_connect(p.addr("tls"), &ca, "x.b.example").await;
    let pem_der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_eq!(l1, pem_der(&a.0));
    assert_eq!(l2, pem_der(&b.0));
}

#[tokio::test]
async fn istio_mutual_tcp_records_peer_principal_inbound() {
    let ca = Ca::new("mesh-root");
    let (echo, _) = echo_backend().await;
    let server = ca.leaf(&[], &["spiffe://cluster.local/ns/default/sa/reviews"]);
    let p = start(json!({
        "node": {"workloadName": "reviews-v1", "namespace": "default", "principal": "spiffe://cluster.local/ns/default/sa/reviews"},
        "listeners": [{"name": "virtualInbound", "address": "127.0.0.1:0", "direction": "INBOUND", "filterChains": [
            {"tls": {"mode": "ISTIO_MUTUAL", "certificates": ["default"], "validation": "ROOTCA", "trustDomains": ["cluster.local"]},
             "action": {"tcpProxy": {"cluster": "inbound|9080||"}}}]}],
        "clusters": [{"name": "inbound|9080||", "endpoints": [ep(echo)]},
                     {"name": "out", "endpoints": [{"address": "127.0.0.1", "port": 1}],
                      "tls": {"mode": "ISTIO_MUTUAL", "certificate": "default", "validation": "ROOTCA"}}],
        "secrets": [cert_secret("default", &server), ca_secret("ROOTCA", &ca)]
    }))
    .await;
    // A mesh client with its own SVID from the same root.
    let client = ca.leaf(&[], &["spiffe://cluster.local/ns/default/sa/productpage"]);
    let (chain, key) = (client.0.clone(), client.1.clone());
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_client_auth_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
    let tcp = TcpStream::connect(p.addr("virtualInbound")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(
        "outbound_.9080_._.reviews.default.svc.cluster.local",
    )
    .unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    p.wait_lines(1).await;
    let prom = admin_get(&p, "/stats/prometheus").await;
    let l = prom
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap();
    assert!(l.contains("reporter=\"destination\""), "{l}");
    assert!(
        l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/productpage\""),
        "{l}"
    );
    assert!(
        l.contains("destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews\""),
        "{l}"
    );
    assert!(l.contains("destination_workload=\"reviews-v1\""), "{l}");
    assert!(
        l.contains("connection_security_policy=\"mutual_tls\""),
        "{l}"
    );
}

/// Test-only verifier: the mesh client does not check the server in this test.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn auto_sni_uses_request_host_and_keys_the_pool() {
    let ca = Ca::new("ext-root");
    let backend = https_backend("ext", &ca.leaf(&["a.example", "b.example"], &[]), None).await;
    let p = start(json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "ext"}}]}]}}}}]}],
        "clusters": [{"name": "ext", "endpoints": [ep(backend)], "autoSni": true,
                      "tls": {"mode": "SIMPLE", "validation": "ca"}}],
        "secrets": [ca_secret("ca", &ca)]
    }))
    .await;
    let port = p.addr("http").port();
    for host in ["a.example", "b.example", "a.example:8080"] {
        let o = curl(&s(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{port}/"),
        ]))
        .await;
        let want = host.split(':').next().unwrap();
        assert!(
            o.stdout.contains(&format!("sni={want} ")),
            "{host}: {}",
            o.stdout
        );
    }
    // A host the certificate does not cover fails verification (autoSanValidation).
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: c.example",
        &format!("http://127.0.0.1:{port}/"),
    ]))
    .await;
    assert_eq!(o.stdout, "503");
}
