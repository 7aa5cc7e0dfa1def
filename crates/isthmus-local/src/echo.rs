//! `isthmus echo`: an HTTP/HTTPS test server for "outside" hosts that answers JSON with what
//! it saw — peer address, SNI, ALPN, TLS version, client certificate subject and SANs,
//! method, path, headers — like the echo server the seed documents used to check what an
//! egress gateway really sends.
//!
//! Paths: `/status/N` answers status N, `/delay/S` waits S seconds (at most
//! [`MAX_DELAY_SECS`]) before answering, anything else (e.g. `/get`) just echoes.
//! HTTPS optionally requires a client certificate verified against a CA bundle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest `/delay/S` honoured. Long enough that a test can hold upstream connections of a
/// proxy open while it drives other clients into that proxy's connection limits on a slow,
/// loaded machine (the two-pod pool test of issue 8), short enough that a stray request does
/// not pin a connection for long.
pub const MAX_DELAY_SECS: u64 = 60;
/// Largest request body echoed back.
pub const MAX_BODY: usize = 64 * 1024;

/// Errors of the echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// PEM content is unusable.
    #[error("{what}: {detail} (expected PEM)")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// TLS settings of the HTTPS listeners.
#[derive(Debug, Clone)]
pub struct EchoTls {
    /// Server certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Server private key (PEM).
    pub key_pem: Vec<u8>,
    /// CA bundle (PEM) client certificates are verified against.
    pub client_ca_pem: Option<Vec<u8>>,
    /// Reject clients without a valid certificate (needs `client_ca_pem`).
    pub require_client_cert: bool,
}

impl EchoTls {
    /// Reads the PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        require_client_cert: bool,
    ) -> Result<EchoTls, EchoError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| EchoError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Ok(EchoTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
            require_client_cert,
        })
    }

    /// The rustls server configuration (the workspace's provider, ALPN h2 + http/1.1).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, EchoError> {
        let provider = isthmus_tls::provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| EchoError::Pem {
                what: "server certificate",
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(EchoError::Pem {
                what: "server certificate",
                detail: "no CERTIFICATE block".to_string(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| EchoError::Pem {
            what: "server key",
            detail: e.to_string(),
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EchoError::Tls(e.to_string()))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca) {
                    let c = c.map_err(|e| EchoError::Pem {
                        what: "client CA",
                        detail: e.to_string(),
                    })?;
                    roots
                        .add(c)
                        .map_err(|e| EchoError::Tls(format!("client CA: {e}")))?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let v = if self.require_client_cert {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| EchoError::Tls(e.to_string()))?,
                )
            }
            None if self.require_client_cert => {
                return Err(EchoError::Tls(
                    "requiring a client certificate needs a client CA file".to_string(),
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| EchoError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// What the echo server serves.
#[derive(Debug, Clone, Default)]
pub struct EchoConfig {
    /// Name reported in every answer (tells backends apart).
    pub name: String,
    /// Plain HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (need `tls`).
    pub https: Vec<SocketAddr>,
    /// TLS settings.
    pub tls: Option<EchoTls>,
}

/// TLS facts of one connection.
#[derive(Debug, Clone, Default)]
struct TlsInfo {
    sni: Option<String>,
    alpn: Option<String>,
    version: Option<String>,
    client_subject: Option<String>,
    client_sans: Vec<String>,
}

/// Subject and SANs of a DER certificate (SANs as `DNS:x`, `URI:x`, `IP:x`, `email:x`).
pub fn cert_subject_and_sans(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject().to_string();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match n {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(&b[..])
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(&b[..])
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    Some((subject, sans))
}

/// A running echo server. Dropping it stops the listeners.
#[derive(Debug)]
pub struct EchoServer {
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds every configured address (in the caller's network namespace) and serves.
    pub async fn start(cfg: EchoConfig) -> Result<EchoServer, EchoError> {
        let mut http = Vec::new();
        for a in &cfg.http {
            http.push(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| EchoError::Bind { addr: *a, source })?,
            );
        }
        let mut https = Vec::new();
        for a in &cfg.https {
            https.push(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| EchoError::Bind { addr: *a, source })?,
            );
        }
        Self::serve(&cfg.name, http, https, cfg.tls.as_ref())
    }

    /// Serves on already-bound listeners (e.g. created inside a namespace).
    pub fn serve(
        name: &str,
        http: Vec<TcpListener>,
        https: Vec<TcpListener>,
        tls: Option<&EchoTls>,
    ) -> Result<EchoServer, EchoError> {
        let acceptor = match (https.is_empty(), tls) {
            (true, _) => None,
            (false, Some(t)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                t.server_config()?,
            ))),
            (false, None) => {
                return Err(EchoError::Tls(
                    "HTTPS ports need a certificate and key".to_string(),
                ))
            }
        };
        let name: Arc<str> = Arc::from(name);
        let mut out = EchoServer {
            http: Vec::new(),
            https: Vec::new(),
            tasks: Vec::new(),
        };
        for l in http {
            let addr = l.local_addr().map_err(|source| EchoError::Bind {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })?;
            out.http.push(addr);
            out.tasks
                .push(tokio::spawn(accept_loop(l, None, name.clone())));
        }
        for l in https {
            let addr = l.local_addr().map_err(|source| EchoError::Bind {
                addr: ([0, 0, 0, 0], 0).into(),
                source,
            })?;
            out.https.push(addr);
            out.tasks
                .push(tokio::spawn(accept_loop(l, acceptor.clone(), name.clone())));
        }
        tracing::info!(http = ?out.http, https = ?out.https, "echo server listening");
        Ok(out)
    }

    /// Bound HTTP addresses.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http
    }

    /// Bound HTTPS addresses.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https
    }

    /// Serves until the process ends (for `isthmus echo`).
    pub async fn wait(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, name: Arc<str>) {
    loop {
        let (sock, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "echo accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let local = sock.local_addr().ok();
        let tls = tls.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let svc = service(name, peer, local, None);
                    let _ = builder.serve_connection(TokioIo::new(sock), svc).await;
                }
                Some(acc) => {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "echo TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = stream.get_ref().1;
                    let mut info = TlsInfo {
                        sni: conn.server_name().map(|s| s.to_string()),
                        alpn: conn
                            .alpn_protocol()
                            .map(|a| String::from_utf8_lossy(a).into_owned()),
                        version: conn.protocol_version().map(|v| match v {
                            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
                            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
                            other => format!("{other:?}"),
                        }),
                        ..Default::default()
                    };
                    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
                        if let Some((subject, sans)) = cert_subject_and_sans(leaf.as_ref()) {
                            info.client_subject = Some(subject);
                            info.client_sans = sans;
                        }
                    }
                    let svc = service(name, peer, local, Some(Arc::new(info)));
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

fn service(
    name: Arc<str>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    tls: Option<Arc<TlsInfo>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let (name, tls) = (name.clone(), tls.clone());
        async move {
            Ok::<_, std::convert::Infallible>(handle(req, &name, peer, local, tls.as_deref()).await)
        }
    })
}

async fn handle(
    req: Request<Incoming>,
    name: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    tls: Option<&TlsInfo>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(|s| s.to_string());
    let version = format!("{:?}", req.version());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|s| s.to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::from("<body too large or unreadable>"),
    };
    let mut status = StatusCode::OK;
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["status", n] => match n
            .parse::<u16>()
            .ok()
            // 1xx are not final responses; anything outside 200..=599 is a bad request.
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(s) => status = s,
            None => status = StatusCode::BAD_REQUEST,
        },
        ["delay", s] => match s.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(secs.min(MAX_DELAY_SECS as f64))).await;
            }
            _ => status = StatusCode::BAD_REQUEST,
        },
        _ => {}
    }
    let tls_json = tls.map(|t| {
        json!({
            "sni": t.sni,
            "alpn": t.alpn,
            "version": t.version,
            "client_cert": t.client_subject.as_ref().map(|s| json!({"subject": s, "sans": t.client_sans})),
        })
    });
    let doc: Value = json!({
        "server": name,
        "peer": peer.to_string(),
        "peer_ip": peer.ip().to_string(),
        "local": local.map(|l| l.to_string()),
        "scheme": if tls.is_some() { "https" } else { "http" },
        "protocol": version,
        "method": method,
        "host": host,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body,
        "status": status.as_u16(),
        "tls": tls_json,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-echo-server", v);
    }
    resp
}
