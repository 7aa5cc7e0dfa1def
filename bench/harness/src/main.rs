//! Load generator used by `bench/run.sh`.
//!
//! Why a custom tool: the Debian `wrk` (4.1.0) has no constant-rate mode (`-R` is wrk2 only),
//! `h2load` reports no latency percentiles, and OpenSSL-based clients (wrk, curl, python ssl)
//! spend ~0.8 ms of client CPU per full handshake, which caps a handshake-rate test at the
//! client instead of at the proxy. This harness is a single-threaded tokio client using rustls
//! (aws-lc-rs, X25519 only, one shared ClientConfig, many connections in flight), so one pinned
//! core can drive several thousand TLS 1.3 handshakes per second; with `CAFILE = insecure` it
//! skips server verification like `h2load` (handshake-rate scenarios), so its cost per
//! handshake is one X25519 key pair + one shared secret, well below any server's.
//!
//! Subcommands (all print exactly one JSON object on stdout):
//! - `h1rate ADDR PATH CONNS SECS RATE`: open-loop HTTP/1.1 at a fixed request rate over CONNS
//!   keep-alive connections; latency is measured from each request's *scheduled* send time,
//!   so queueing behind a slow response counts (coordinated-omission corrected, like wrk2).
//! - `tls MODE ADDR SNI CAFILE PATH CONNS SECS` (CAFILE: PEM file or `insecure`) with MODE = `keepalive` (requests over kept-alive
//!   TLS connections), `new` (one full TLS 1.3 handshake per request, resumption disabled) or
//!   `bulk` (CONNS downloads of PATH, reports bytes).
//!
//! Every response is checked: status 200 and a complete body (Content-Length). Anything else
//! counts as an error; the runner voids runs with errors.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

static FIRST_ERROR: std::sync::Once = std::sync::Once::new();

/// Prints the first error of a run to stderr so a voided run says why.
fn note_err(e: &io::Error) {
    FIRST_ERROR.call_once(|| eprintln!("first error: {e}"));
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  harness h1rate ADDR PATH CONNS SECS RATE\n  harness tls keepalive|new|bulk ADDR SNI CAFILE PATH CONNS SECS"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    match args.get(i).map(|s| s.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => {
            eprintln!("bad or missing argument {i} ({what})");
            usage()
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            std::process::exit(1)
        }
    };
    let res = match args.get(1).map(String::as_str) {
        Some("h1rate") => rt.block_on(h1rate(
            arg(&args, 2, "addr"),
            arg(&args, 3, "path"),
            arg(&args, 4, "conns"),
            arg(&args, 5, "secs"),
            arg(&args, 6, "rate"),
        )),
        Some("tls") => rt.block_on(tls(
            arg(&args, 2, "mode"),
            arg(&args, 3, "addr"),
            arg(&args, 4, "sni"),
            arg(&args, 5, "cafile"),
            arg(&args, 6, "path"),
            arg(&args, 7, "conns"),
            arg(&args, 8, "secs"),
        )),
        _ => usage(),
    };
    if let Err(e) = res {
        eprintln!("harness: {e}");
        std::process::exit(1);
    }
}

/// Reads one HTTP/1.1 response (status line, headers, Content-Length body) from `s`, using and
/// refilling `buf`. Returns the body length. Leftover bytes stay in `buf` for the next response.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<u64> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        read_more(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(bad(&format!("status line {status:?}")));
    }
    let mut len: Option<u64> = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked responses are not supported by the harness"));
            }
        }
    }
    let len = len.ok_or_else(|| bad("no content-length"))?;
    buf.drain(..head_end);
    let mut remaining = len;
    let take = remaining.min(buf.len() as u64) as usize;
    buf.drain(..take);
    remaining -= take as u64;
    let mut chunk = vec![0u8; if remaining > 65536 { 256 * 1024 } else { 0 }];
    while remaining > 0 {
        if chunk.is_empty() {
            read_more(s, buf).await?;
            let take = remaining.min(buf.len() as u64) as usize;
            buf.drain(..take);
            remaining -= take as u64;
        } else {
            let want = remaining.min(chunk.len() as u64) as usize;
            let n = s.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(bad("eof in body"));
            }
            remaining -= n as u64;
        }
    }
    Ok(len)
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut tmp = [0u8; 16384];
    let n = s.read(&mut tmp).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn request(host: &str, path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").into_bytes()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Open-loop fixed-rate HTTP/1.1. A scheduler task emits request i at `start + i/rate`; idle
/// connections take the next due timestamp. Latency = response complete − scheduled time.
async fn h1rate(addr: SocketAddr, path: String, conns: usize, secs: f64, rate: f64) -> io::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let counters = Arc::new(Counters::default());
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::with_capacity((rate * secs) as usize + 16)));
    let req = Arc::new(request("bench.local", &path, false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (rx, counters, lat, req) = (rx.clone(), counters.clone(), lat.clone(), req.clone());
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                let r = async {
                    s.write_all(&req).await?;
                    read_response(&mut s, &mut buf).await
                }
                .await;
                match r {
                    Ok(_) => {
                        let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        counters.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = lat.lock() {
                            l.push(us);
                        }
                    }
                    Err(e) => {
                        note_err(&e);
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        // Reconnect so one failure does not stall the rest of the schedule.
                        match TcpStream::connect(addr).await {
                            Ok(n) => {
                                let _ = n.set_nodelay(true);
                                s = n;
                                buf.clear();
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        if tx.send(due).is_err() {
            break;
        }
    }
    drop(tx);
    let sent_done = start.elapsed().as_secs_f64();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    for t in tasks {
        tokio::select! {
            _ = t => {}
            _ = &mut deadline => { break; }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    let ok = counters.ok.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed) + total.saturating_sub(ok + counters.errors.load(Ordering::Relaxed));
    println!(
        "{{\"mode\":\"h1rate\",\"target_rate\":{rate},\"scheduled\":{total},\"ok\":{ok},\"errors\":{errors},\"send_secs\":{sent_done:.3},\"secs\":{elapsed:.3},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        percentile(&l, 50.0),
        percentile(&l, 90.0),
        percentile(&l, 99.0),
        percentile(&l, 99.9),
        percentile(&l, 100.0)
    );
    Ok(())
}

/// The client's crypto provider: aws-lc-rs restricted to X25519 key exchange, so every server
/// (rustls, OpenSSL in nginx and HAProxy) negotiates the same group in one round trip and the
/// client computes exactly one key share per handshake (the provider's default list starts with
/// the post-quantum hybrid X25519MLKEM768, which OpenSSL 3.0 does not know and rustls servers
/// would pick: a different, costlier handshake per peer).
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    Arc::new(p)
}

/// Server certificate "verifier" of `CAFILE = insecure`: accepts any chain and any handshake
/// signature, like `h2load`/`oha --insecure`. A handshake-rate load generator that verifies the
/// chain and the CertificateVerify signature spends more CPU per handshake (two ECDSA
/// verifications) than the server spends signing, so it, not the server, sets the rate. The
/// server still does its full handshake (key share, certificate, signature, Finished).
#[derive(Debug)]
struct AcceptAnyServer(Vec<rustls::SignatureScheme>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

/// One client config for the whole run (every connection shares it). `cafile` is a PEM CA file
/// to verify servers against, or `insecure` to skip verification (see [`AcceptAnyServer`]).
fn client_config(cafile: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = client_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io::Error::other(e.to_string()))?;
    let builder = if cafile == "insecure" {
        let schemes = provider.signature_verification_algorithms.supported_schemes();
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(schemes)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cafile)
            .map_err(|e| io::Error::other(format!("{cafile}: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| io::Error::other(format!("{cafile}: {e}")))?;
        for c in certs {
            roots.add(c).map_err(|e| io::Error::other(format!("{cafile}: {e}")))?;
        }
        builder.with_root_certificates(roots)
    };
    // HARNESS_CLIENT_CERT / HARNESS_CLIENT_KEY (PEM): present a client certificate, for servers
    // that require one (the ISTIO_MUTUAL hop's direct path).
    let mut cfg = match (std::env::var("HARNESS_CLIENT_CERT"), std::env::var("HARNESS_CLIENT_KEY")) {
        (Ok(cert), Ok(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| io::Error::other(format!("{cert}: {e}")))?
                .collect::<Result<_, _>>()
                .map_err(|e| io::Error::other(format!("{cert}: {e}")))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| io::Error::other(format!("{key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| io::Error::other(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    // Every `new` connection must pay a full handshake, as in the reference protocol
    // (origin has session cache and tickets off).
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

async fn one_tls_conn(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &ServerName<'static>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    connector.connect(sni.clone(), s).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &[u8], buf: &mut Vec<u8>) -> io::Result<u64> {
    s.write_all(req).await?;
    s.flush().await?;
    read_response(s, buf).await
}

#[allow(clippy::too_many_arguments)]
async fn tls(
    mode: String,
    addr: SocketAddr,
    sni_s: String,
    cafile: String,
    path: String,
    conns: usize,
    secs: f64,
) -> io::Result<()> {
    let cfg = client_config(&cafile)?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let sni = ServerName::try_from(sni_s.clone()).map_err(|e| io::Error::other(e.to_string()))?;
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (connector, sni, counters) = (connector.clone(), sni.clone(), counters.clone());
        let mode = mode.clone();
        let keep = request(&sni_s, &path, false);
        let close = request(&sni_s, &path, true);
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            match mode.as_str() {
                "keepalive" => {
                    let mut conn = None;
                    while Instant::now() < end {
                        if conn.is_none() {
                            buf.clear();
                            match one_tls_conn(&connector, addr, &sni).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    note_err(&e);
                                    counters.errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { continue };
                        match exchange(c, &keep, &mut buf).await {
                            Ok(n) => {
                                counters.ok.fetch_add(1, Ordering::Relaxed);
                                counters.bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                note_err(&e);
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                }
                "new" | "bulk" => {
                    while Instant::now() < end {
                        buf.clear();
                        let r = async {
                            let mut c = one_tls_conn(&connector, addr, &sni).await?;
                            let n = exchange(&mut c, &close, &mut buf).await?;
                            // Orderly close so every peer sees the same connection lifecycle.
                            let _ = c.shutdown().await;
                            Ok::<u64, io::Error>(n)
                        }
                        .await;
                        match r {
                            Ok(n) => {
                                counters.ok.fetch_add(1, Ordering::Relaxed);
                                counters.bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                note_err(&e);
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        if mode == "bulk" {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }));
    }
    if !matches!(mode.as_str(), "keepalive" | "new" | "bulk") {
        usage();
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = counters.ok.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"{mode}\",\"ok\":{ok},\"errors\":{errors},\"bytes\":{bytes},\"secs\":{elapsed:.3},\"per_sec\":{:.1},\"gib_per_sec\":{:.4}}}",
        ok as f64 / elapsed,
        bytes as f64 / elapsed / (1u64 << 30) as f64
    );
    Ok(())
}
