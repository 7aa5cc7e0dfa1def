//! Shared fixtures: rcgen certificates, loopback backends (HTTP, TLS-HTTPS, TCP echo), a
//! proxy with an in-memory access log, and a curl runner.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_proxy::config::LogEncoding;
use isthmus_proxy::{AccessLogSink, OrigDst, Proxy, ProxyConfig, ProxyOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (cert PEM, key PEM) for a leaf with DNS and URI SANs.
    pub fn leaf(&self, dns: &[&str], uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        p.distinguished_name.push(
            DnType::CommonName,
            dns.first().copied().unwrap_or("workload"),
        );
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn cert_secret(name: &str, cert: &(String, String)) -> serde_json::Value {
    serde_json::json!({"name": name, "certificateChain": {"inlineString": cert.0}, "privateKey": {"inlineString": cert.1}})
}

pub fn ca_secret(name: &str, ca: &Ca) -> serde_json::Value {
    serde_json::json!({"name": name, "trustedCa": {"inlineString": ca.pem}})
}

/// Counts connections a backend accepted.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<AtomicUsize>);
impl Counter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn backend_handler(
    name: String,
    sni: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = format!(
        "backend={name} method={} path={} host={} xff={} rid={} sni={} version={:?}\n",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        h("host"),
        h("x-forwarded-for"),
        h("x-request-id"),
        sni.as_deref().unwrap_or("-"),
        req.version()
    );
    let mut status = 200u16;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    // `/overloaded` answers like an Envoy whose circuit breaker overflowed.
    let overloaded = path == "/overloaded";
    if overloaded {
        status = 503;
    }
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if overloaded {
        r.headers_mut()
            .insert("x-envoy-overloaded", "true".parse().unwrap());
    }
    r.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    Ok(r)
}

/// Plain HTTP/1.1 + h2c backend. Paths: `/status/N` answers N, `/delay/MS` sleeps,
/// `/overloaded` answers 503 with `x-envoy-overloaded: true`.
pub async fn http_backend(name: &str) -> (SocketAddr, Counter) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Counter::default();
    let c = count.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.0.fetch_add(1, Ordering::SeqCst);
            let name = name.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |r| backend_handler(name.clone(), None, r));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

/// HTTPS backend with its own certificate; reports the SNI it saw. `client_ca` requires mTLS.
pub async fn https_backend(
    name: &str,
    cert: &(String, String),
    client_ca: Option<&Ca>,
) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let prov = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(prov.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match client_ca {
        None => b
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let v =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), prov)
                    .build()
                    .unwrap();
            b.with_client_cert_verifier(v)
                .with_single_cert(chain, key)
                .unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acc = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acc = acc.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let Ok(t) = acc.accept(s).await else { return };
                let sni = t.get_ref().1.server_name().map(|s| s.to_string());
                let svc = hyper::service::service_fn(move |r| {
                    backend_handler(name.clone(), sni.clone(), r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(t), svc)
                    .await;
            });
        }
    });
    addr
}

/// TCP echo backend.
pub async fn echo_backend() -> (SocketAddr, Counter) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Counter::default();
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

pub struct TestProxy {
    pub proxy: Proxy,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.proxy.listener_addr(listener).expect("listener bound")
    }
    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr().unwrap()
    }
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    /// Wait until at least `n` access log lines exist (logs are written at stream end).
    pub async fn wait_lines(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let l = self.lines();
            if l.len() >= n {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} access log lines, got {:?}", self.lines());
    }
}

pub async fn start(cfg: serde_json::Value) -> TestProxy {
    start_with(cfg, OrigDst::Socket, LogEncoding::Text).await
}

pub async fn start_with(cfg: serde_json::Value, od: OrigDst, enc: LogEncoding) -> TestProxy {
    let cfg: ProxyConfig = serde_json::from_value(cfg).expect("config JSON");
    let (sink, log) = AccessLogSink::memory(enc);
    let mut o = ProxyOptions::new(cfg);
    o.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    o.access_log = Some(sink);
    o.orig_dst = od;
    let proxy = Proxy::start(o).await.expect("proxy starts");
    TestProxy { proxy, log }
}

pub struct CurlOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the real curl binary (off the async runtime).
pub async fn curl(args: &[String]) -> CurlOut {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl installed");
        CurlOut {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    })
    .await
    .unwrap()
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Write a string to a temp file and return its path (kept alive by the returned handle).
pub fn temp_file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, content.as_bytes()).unwrap();
    f
}

/// Split an Istio TEXT access log line into its 22 fields (quoted groups kept whole).
pub fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim_end_matches('\n');
    while !rest.is_empty() {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        let (tok, r) = if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap();
            (&rest[..end + 2], &r[end + 1..])
        } else if rest.starts_with('[') {
            let end = rest.find(']').unwrap();
            (&rest[..=end], &rest[end + 1..])
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        out.push(tok.to_string());
        rest = r;
    }
    out
}

/// GET an admin path with curl.
pub async fn admin_get(p: &TestProxy, path: &str) -> String {
    curl(&[format!("http://{}{}", p.admin(), path)])
        .await
        .stdout
}
