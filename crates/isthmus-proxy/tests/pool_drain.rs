//! Connection pools drain when a pushed cluster changes (Envoy): switching DR hop 2 from
//! MUTUAL to SIMPLE must make the next request go out on a new connection without a client
//! certificate; pooled idle connections of the old version close, in-flight ones finish.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_proxy::ProxyConfig;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the partner server observed.
#[derive(Default)]
struct Seen {
    open: AtomicIsize,
    holds: AtomicUsize,
    release: Notify,
    released: AtomicBool,
}

/// A TLS server that accepts clients with or without a certificate (from `client_ca`) and
/// answers `cert=yes|no`; `/hold` waits until the test releases it.
async fn recording_tls_server(cert: &(String, String), client_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let prov = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let v =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), prov.clone())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(prov)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(v)
        .with_single_cert(chain, key)
        .unwrap();
    let acc = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let st = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acc = acc.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(t) = acc.accept(s).await else { return };
                let has_cert = t.get_ref().1.peer_certificates().is_some();
                st.open.fetch_add(1, Ordering::SeqCst);
                let st2 = st.clone();
                let svc = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let st = st2.clone();
                    async move {
                        if r.uri().path() == "/hold" {
                            st.holds.fetch_add(1, Ordering::SeqCst);
                            while !st.released.load(Ordering::SeqCst) {
                                let n = st.release.notified();
                                if st.released.load(Ordering::SeqCst) {
                                    break;
                                }
                                n.await;
                            }
                        }
                        let body = format!("cert={}", if has_cert { "yes" } else { "no" });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(t), svc)
                    .await;
                st.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

fn cfg(
    partner: SocketAddr,
    mutual: bool,
    server_ca: &Ca,
    client: &(String, String),
) -> ProxyConfig {
    let mut tls = json!({"mode": "SIMPLE", "sni": "partner.example", "validation": "kubernetes://partner-cacert"});
    if mutual {
        tls["mode"] = json!("MUTUAL");
        tls["certificate"] = json!("kubernetes://partner-client");
    }
    serde_json::from_value(json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": "partner", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "outbound|443||partner.example", "timeout": "0s"}}]}
            ]}}}}]}],
        "clusters": [{"name": "outbound|443||partner.example",
                      "endpoints": [{"address": partner.ip().to_string(), "port": partner.port()}],
                      "tls": tls}],
        "secrets": [ca_secret("kubernetes://partner-cacert", server_ca),
                    cert_secret("kubernetes://partner-client", client)]
    }))
    .unwrap()
}

type Client = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One persistent downstream HTTP/1.1 connection to the proxy.
async fn client(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

async fn get(c: &mut Client, path: &str) -> (u16, String) {
    c.ready().await.unwrap();
    let req = Request::builder()
        .uri(path)
        .header("host", "partner.example")
        .body(Empty::new())
        .unwrap();
    let r = c.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Idle HTTP/1 connections in the current version's pool of the partner cluster.
fn idle(p: &TestProxy) -> usize {
    p.proxy.shared.runtime.load().clusters["outbound|443||partner.example"]
        .pool
        .idle_count()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn mutual_to_simple_drains_pool_next_request_sends_no_cert() {
    let server_ca = Ca::new("partner-server-root");
    let client_ca = Ca::new("partner-client-root");
    let (partner, seen) =
        recording_tls_server(&server_ca.leaf(&["partner.example"], &[]), &client_ca).await;
    let client_cert = client_ca.leaf(&["gateway.example"], &[]);
    let p =
        start(serde_json::to_value(cfg(partner, true, &server_ca, &client_cert)).unwrap()).await;
    let addr = p.addr("http");

    // U1: first request, then idle in the pool.
    let mut a = client(addr).await;
    assert_eq!(get(&mut a, "/get").await, (200, "cert=yes".into()));
    // U1 busy with an in-flight request on another downstream connection...
    let mut b = client(addr).await;
    let hold = tokio::spawn(async move { get(&mut b, "/hold").await });
    wait_for("the held request", || {
        seen.holds.load(Ordering::SeqCst) == 1
    })
    .await;
    // ...so this one opens U2, which then sits idle.
    assert_eq!(get(&mut a, "/get").await, (200, "cert=yes".into()));
    assert_eq!(seen.open.load(Ordering::SeqCst), 2);

    // DR hop 2 switches to SIMPLE.
    p.proxy
        .update(cfg(partner, false, &server_ca, &client_cert))
        .await
        .expect("ACK");
    assert_eq!(p.proxy.stats().get("cluster_manager.cluster_modified"), 1);
    // The idle connection of the old version closes; the in-flight one stays.
    wait_for("idle U2 to close", || seen.open.load(Ordering::SeqCst) == 1).await;

    // Same downstream connection, next request: a new upstream connection, no certificate.
    assert_eq!(get(&mut a, "/get").await, (200, "cert=no".into()));
    assert_eq!(seen.open.load(Ordering::SeqCst), 2, "U1 (held) + U3");

    // The in-flight request finishes on its old connection (with the old certificate),
    // which then closes instead of going back to a pool.
    seen.released.store(true, Ordering::SeqCst);
    seen.release.notify_waiters();
    assert_eq!(hold.await.unwrap(), (200, "cert=yes".into()));
    wait_for("U1 to close after its request", || {
        seen.open.load(Ordering::SeqCst) == 1
    })
    .await;
    // U3 is pooled and reused: still no certificate, no new connection.
    wait_for("U3 back in the pool", || idle(&p) == 1).await;
    assert_eq!(get(&mut a, "/get").await, (200, "cert=no".into()));
    assert_eq!(seen.open.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unchanged_cluster_keeps_its_pool_across_updates() {
    let server_ca = Ca::new("partner-server-root");
    let client_ca = Ca::new("partner-client-root");
    let (partner, seen) =
        recording_tls_server(&server_ca.leaf(&["partner.example"], &[]), &client_ca).await;
    let client_cert = client_ca.leaf(&["gateway.example"], &[]);
    let p =
        start(serde_json::to_value(cfg(partner, true, &server_ca, &client_cert)).unwrap()).await;
    let mut a = client(p.addr("http")).await;
    assert_eq!(get(&mut a, "/get").await, (200, "cert=yes".into()));
    wait_for("the connection back in the pool", || idle(&p) == 1).await;
    p.proxy
        .update(cfg(partner, true, &server_ca, &client_cert))
        .await
        .expect("ACK");
    assert_eq!(p.proxy.stats().get("cluster_manager.cluster_modified"), 0);
    assert_eq!(get(&mut a, "/get").await, (200, "cert=yes".into()));
    assert_eq!(
        seen.open.load(Ordering::SeqCst),
        1,
        "pooled connection reused"
    );
}
