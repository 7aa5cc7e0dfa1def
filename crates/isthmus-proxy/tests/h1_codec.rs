//! The proxy's own HTTP/1.1 codec driven by raw sockets and real curl: keep-alive reuse,
//! pipelining, chunked bodies both ways, large bodies, malformed heads (400/431), half-close,
//! client abort mid-body, upstream closing mid-response, and the hyper hand-off (HTTP/1.0).

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

fn ep(a: SocketAddr) -> Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

fn cfg(backend: SocketAddr) -> Value {
    json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"http": {
            "routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "b", "timeout": "15s"}}]}]}}}}]}],
        "clusters": [{"name": "b", "endpoints": [ep(backend)]}]
    })
}

/// Echoes the request body (streamed: hyper answers with the request's framing, so a chunked
/// request comes back chunked) and reports method, path and selected headers in headers.
async fn echo_backend_http() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let mut r = hyper::Response::new(req.into_body().boxed());
                    r.headers_mut().insert("x-seen", "1".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A backend that reads one request head and answers with `raw`, then closes.
async fn raw_backend(raw: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(raw).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from a raw connection (Content-Length, chunked or to EOF), keeping any
/// bytes of the next response in `buf`. `None` if the connection ended first.
async fn read_resp<R: tokio::io::AsyncRead + Unpin>(
    c: &mut R,
    buf: &mut Vec<u8>,
    head_req: bool,
) -> Option<Resp> {
    async fn more<R: tokio::io::AsyncRead + Unpin>(c: &mut R, buf: &mut Vec<u8>) -> bool {
        let mut b = [0u8; 65536];
        match tokio::time::timeout(T, c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&b[..n]);
                true
            }
            Err(_) => panic!("no response within {T:?}"),
        }
    }
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if !more(c, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if head_req || status == 204 || status == 304 {
        return Some(r);
    }
    if let Some(cl) = r.header("content-length") {
        let n: usize = cl.parse().ok()?;
        while buf.len() < n {
            if !more(c, buf).await {
                return None;
            }
        }
        r.body = buf.drain(..n).collect();
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let eol = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if !more(c, buf).await {
                    return None;
                }
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..eol])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..eol + 2);
            while buf.len() < size + 2 {
                if !more(c, buf).await {
                    return None;
                }
            }
            r.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        while more(c, buf).await {}
        r.body = std::mem::take(buf);
    }
    Some(r)
}

/// Whether the proxy closes the connection (EOF) within the deadline.
async fn closed(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn keepalive_reuse_pipelining_and_case_insensitive_names() {
    let b = echo_backend_http().await;
    let p = start(cfg(b)).await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..3 {
        c.write_all(format!("GET /k{i} HTTP/1.1\r\nHOST: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_resp(&mut c, &mut buf, false).await.expect("response");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-seen"), Some("1"));
        assert!(r.header("date").is_some(), "{r:?}");
    }
    // Three pipelined requests in one write (one with a body): answered in order.
    c.write_all(
        b"POST /p1 HTTP/1.1\r\nHost: a\r\nContent-LENGTH: 5\r\n\r\nhelloGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /p3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let bodies: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = read_resp(&mut c, &mut buf, false).await.expect("response");
            assert_eq!(r.status, 200);
            v.push(r.body);
        }
        v
    };
    assert_eq!(bodies, vec![b"hello".to_vec(), Vec::new(), b"abc".to_vec()]);
    assert!(buf.is_empty());
    let lines = p.wait_lines(6).await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (l, path) in lines.iter().zip(["/k0", "/k1", "/k2", "/p1", "/p2", "/p3"]) {
        assert!(l.contains(&format!(" {path} ")), "{l}");
        assert!(l.contains("\" 200 "), "{l}");
    }
}

#[tokio::test]
async fn chunked_both_ways_and_large_bodies_stream_intact() {
    let b = echo_backend_http().await;
    let p = start(cfg(b)).await;
    let c = TcpStream::connect(p.addr("l")).await.unwrap();
    // 300 chunks of varying sizes (~700 KiB): comes back chunked and byte-identical.
    let mut want = Vec::new();
    let mut wire = b"PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for i in 0..300usize {
        let chunk: Vec<u8> = (0..(i * 7 % 4000 + 1))
            .map(|j| (i * 31 + j) as u8)
            .collect();
        wire.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(&chunk);
        wire.extend_from_slice(b"\r\n");
        want.extend_from_slice(&chunk);
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let (mut rd, mut wr) = c.into_split();
    let w = tokio::spawn(async move {
        for piece in wire.chunks(1000) {
            wr.write_all(piece).await.unwrap();
        }
        wr
    });
    let mut buf = Vec::new();
    let resp = read_resp(&mut rd, &mut buf, false).await.expect("response");
    let _wr = w.await.unwrap();
    let mut c2 = TcpStream::connect(p.addr("l")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), want.len());
    assert!(resp.body == want, "chunked echo differs");

    // A 3 MiB Content-Length body through real curl (no Expect, so this codec serves it).
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &data).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let o = curl(&s(&[
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", f.path().display()),
        "-o",
        &out.path().display().to_string(),
        "-w",
        "%{http_code} %{num_connects}",
        &format!("http://{}/upload", p.addr("l")),
    ]))
    .await;
    assert_eq!(o.stdout.trim(), "200 1", "{} {}", o.stdout, o.stderr);
    assert!(
        std::fs::read(out.path()).unwrap() == data,
        "CL echo differs"
    );
    // The first connection still works for a HEAD (no body, length kept).
    c2.write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut c2, &mut buf, true)
        .await
        .expect("HEAD response");
    assert_eq!(r.status, 200);
    c2.write_all(b"GET /after-head HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut c2, &mut buf, false).await.expect("response");
    assert_eq!(r.status, 200, "no stray body bytes after HEAD: {r:?}");
}

#[tokio::test]
async fn malformed_heads_are_rejected_and_closed() {
    let b = echo_backend_http().await;
    let p = start(cfg(b)).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n".to_vec(), 400),
        (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400),
        (big.into_bytes(), 431),
    ];
    for (wire, want) in cases {
        let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
        // The proxy may answer before reading everything of an oversized head.
        let _ = c.write_all(&wire).await;
        let mut buf = Vec::new();
        let r = read_resp(&mut c, &mut buf, false)
            .await
            .unwrap_or_else(|| panic!("no reply to {:?}", String::from_utf8_lossy(&wire[..40])));
        assert_eq!(
            r.status,
            want,
            "{:?}",
            String::from_utf8_lossy(&wire[..40.min(wire.len())])
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closed(&mut c).await, "connection closed after {want}");
    }
    // The proxy still serves.
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut c, &mut Vec::new(), false).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn half_close_client_abort_and_http10_handoff() {
    let b = echo_backend_http().await;
    let p = start(cfg(b)).await;
    // Half-close: the request, then FIN; the whole response still arrives, then EOF.
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"POST /hc HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut c, &mut buf, false).await.expect("response");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
    assert!(closed(&mut c).await);

    // Client abort mid-body: the proxy logs the stream and keeps serving others.
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"POST /abort HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let lines = p.wait_lines(2).await;
    assert!(lines.iter().any(|l| l.contains(" /abort ")), "{lines:?}");

    // HTTP/1.0 goes to hyper (with the bytes already read replayed) and is answered.
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET /ten HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut c, &mut Vec::new(), false)
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    // After some keep-alive requests on this codec, an Upgrade request is handed over too.
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_resp(&mut c, &mut buf, false).await.unwrap().status,
        200
    );
    c.write_all(
        b"GET /two HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_resp(&mut c, &mut buf, false).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn upstream_closing_before_or_during_the_response() {
    // Closes after a complete head but before the declared body end: the client sees the
    // connection end early (never a clean keep-alive response).
    let short = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly-this").await;
    let p = start(cfg(short)).await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, c.read(&mut b))
            .await
            .expect("closed")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 1000"),
        "{text}"
    );
    assert!(raw.len() < 1000, "truncated: {text}");

    // Closes without any response: 503 UC with Envoy's reset text.
    let none = raw_backend(b"").await;
    let p = start(cfg(none)).await;
    let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut c, &mut Vec::new(), false).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    let lines = p.wait_lines(1).await;
    assert!(lines[0].contains(" UC "), "{lines:?}");
}

#[tokio::test]
async fn curl_keepalive_reuses_one_connection() {
    let b = echo_backend_http().await;
    let p = start(cfg(b)).await;
    let url = format!("http://{}/x", p.addr("l"));
    let o = curl(&s(&[
        "-w",
        "%{http_code} %{num_connects}\n",
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        "-d",
        "form=1",
        &url,
    ]))
    .await;
    assert_eq!(o.stdout, "200 1\n200 0\n200 0\n", "{}", o.stderr);
    let stats = admin_get(&p, "/stats").await;
    let cx = stats
        .lines()
        .find(|l| l.contains("downstream_cx_total"))
        .unwrap_or_default()
        .to_string();
    assert!(cx.ends_with(": 1"), "{cx}");
}

#[tokio::test]
async fn upstream_framings_interim_responses_and_closed_pooled_connections() {
    // (raw upstream response, expected status, expected body seen by the client)
    let cases: [(&'static [u8], u16, &[u8]); 4] = [
        (b"HTTP/1.1 200 OK\r\n\r\nbody-until-close", 200, b"body-until-close"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\nx-trailer: 1\r\n\r\n",
            200,
            b"abcdefg",
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            b"ok",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    ];
    for (raw, status, body) in cases {
        // The backend closes every connection after its one response (without saying so):
        // the second request must not be sent on the pooled, now closed connection.
        let b = raw_backend(raw).await;
        let p = start(cfg(b)).await;
        for i in 0..2 {
            let mut c = TcpStream::connect(p.addr("l")).await.unwrap();
            c.write_all(format!("GET /f{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let r = read_resp(&mut c, &mut Vec::new(), false)
                .await
                .expect("response");
            assert_eq!(
                (r.status, r.body.as_slice()),
                (status, body),
                "request {i} for {:?}: {r:?}",
                String::from_utf8_lossy(raw)
            );
            // Let the upstream's close reach the proxy before the next request.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
