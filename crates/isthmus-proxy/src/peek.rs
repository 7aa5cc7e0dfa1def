//! ClientHello inspection ("tls_inspector").
//!
//! The proxy must pick a filter chain by SNI / ALPN *before* it decides whether to terminate
//! TLS or relay bytes untouched, so it reads the first bytes of every connection, parses the
//! ClientHello without a TLS library, and later replays the exact bytes it read (see
//! [`PrefixedStream`]). The parser is pure and incremental: it is called again with more
//! bytes until it answers, which copes with hellos split across TCP segments and across TLS
//! records. It never panics on any input (proptest + replayed corpus in the tests).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest ClientHello we accept before giving up (Envoy's tls_inspector default is 64 KiB).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed to decide.
    NeedMore,
    /// The bytes are not a TLS ClientHello: transport protocol `raw_buffer`.
    NotTls,
    /// A complete ClientHello.
    Tls(ClientHelloInfo),
    /// The hello claims to be larger than [`MAX_CLIENT_HELLO`]; Envoy closes such connections.
    TooLarge,
}

/// What the filter-chain match needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// The `server_name` extension (host_name entry), as sent.
    pub sni: Option<String>,
    /// ALPN protocol names, in client order (non-UTF-8 names are dropped).
    pub alpn: Vec<String>,
}

/// Parse as much of a ClientHello as `buf` holds. Pure, bounded, panic-free.
pub fn parse_client_hello(buf: &[u8]) -> Peek {
    // Record layer: collect handshake bytes from consecutive handshake records.
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = &buf[pos..];
        if rest.is_empty() {
            return if pos == 0 {
                Peek::NeedMore
            } else {
                parse_handshake(&handshake, true)
            };
        }
        // Content type must be handshake (22) and the version major byte 3.
        if rest[0] != 0x16 {
            return if pos == 0 {
                Peek::NotTls
            } else {
                incomplete_or(&handshake)
            };
        }
        if rest.len() >= 2 && rest[1] != 0x03 {
            return Peek::NotTls;
        }
        if rest.len() < 5 {
            return Peek::NeedMore;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Peek::NotTls;
        }
        let avail = rest.len() - 5;
        let take = avail.min(len);
        handshake.extend_from_slice(&rest[5..5 + take]);
        match parse_handshake(&handshake, take == len) {
            Peek::NeedMore => {}
            other => return other,
        }
        if take < len {
            return Peek::NeedMore;
        }
        pos += 5 + len;
    }
}

fn incomplete_or(handshake: &[u8]) -> Peek {
    // A non-handshake record before the hello is complete: not something we can route on.
    match parse_handshake(handshake, true) {
        Peek::NeedMore => Peek::NotTls,
        other => other,
    }
}

fn parse_handshake(hs: &[u8], _record_complete: bool) -> Peek {
    if hs.is_empty() {
        return Peek::NeedMore;
    }
    if hs[0] != 0x01 {
        return Peek::NotTls;
    }
    if hs.len() < 4 {
        return Peek::NeedMore;
    }
    let len = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
    if len > MAX_CLIENT_HELLO {
        return Peek::TooLarge;
    }
    if hs.len() < 4 + len {
        return Peek::NeedMore;
    }
    match parse_body(&hs[4..4 + len]) {
        Some(info) => Peek::Tls(info),
        None => Peek::NotTls,
    }
}

/// Minimal cursor; every read is bounds-checked.
struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHelloInfo> {
    let mut c = Cur { b: body };
    let _version = c.u16()?;
    c.take(32)?; // random
    c.vec8()?; // session id
    c.vec16()?; // cipher suites
    c.vec8()?; // compression methods
    let mut info = ClientHelloInfo::default();
    if c.b.is_empty() {
        return Some(info); // no extensions at all
    }
    let mut exts = Cur { b: c.vec16()? };
    while !exts.b.is_empty() {
        let typ = exts.u16()?;
        let data = exts.vec16()?;
        match typ {
            0 => info.sni = parse_sni(data),
            16 => info.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(info)
}

fn parse_sni(data: &[u8]) -> Option<String> {
    let mut c = Cur { b: data };
    let mut list = Cur { b: c.vec16()? };
    while !list.b.is_empty() {
        let typ = list.u8()?;
        let name = list.vec16()?;
        if typ == 0 {
            let s = std::str::from_utf8(name).ok()?;
            if s.is_empty() {
                return None;
            }
            return Some(s.to_string());
        }
    }
    None
}

fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut c = Cur { b: data };
    let mut list = Cur { b: c.vec16()? };
    let mut out = Vec::new();
    while !list.b.is_empty() {
        let p = list.vec8()?;
        if let Ok(s) = std::str::from_utf8(p) {
            out.push(s.to_string());
        }
    }
    Some(out)
}

/// Result of [`peek_stream`]: what was seen and the bytes consumed (to be replayed).
#[derive(Debug)]
pub struct Peeked {
    pub result: Peek,
    pub bytes: Vec<u8>,
    /// True when the peek stopped because the timeout fired (result is then `NotTls`
    /// unless a hello was complete).
    pub timed_out: bool,
}

/// Read from `io` until the ClientHello is parsed, the bytes are clearly not TLS, EOF, the
/// size bound or the timeout. Like Envoy's `listener_filters_timeout`, a client that sends
/// nothing (server-first protocols) is treated as raw_buffer when the timeout fires.
pub async fn peek_stream<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> io::Result<Peeked> {
    // Reads go straight into `bytes` (no stack chunk: this future lives inside every
    // connection's task, so a 4 KiB array here would be carried by every idle connection).
    let mut bytes = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let res = parse_client_hello(&bytes);
        if res != Peek::NeedMore {
            return Ok(Peeked {
                result: res,
                bytes,
                timed_out: false,
            });
        }
        if bytes.len() > MAX_CLIENT_HELLO + 5 * 8 {
            return Ok(Peeked {
                result: Peek::TooLarge,
                bytes,
                timed_out: false,
            });
        }
        if bytes.capacity() - bytes.len() < 1024 {
            bytes.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut bytes)).await {
            Err(_) => {
                return Ok(Peeked {
                    result: Peek::NotTls,
                    bytes,
                    timed_out: true,
                });
            }
            Ok(Ok(0)) => {
                // EOF before a decision: whatever we have is not a usable hello.
                return Ok(Peeked {
                    result: Peek::NotTls,
                    bytes,
                    timed_out: false,
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream that first yields `prefix` (the peeked bytes) and then reads from `inner`.
/// Writes go straight to `inner`. This is how passthrough relays the hello untouched.
pub struct PrefixedStream<S> {
    prefix: Vec<u8>,
    off: usize,
    inner: S,
}

impl<S> PrefixedStream<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        PrefixedStream {
            prefix,
            off: 0,
            inner,
        }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.off < self.prefix.len() {
            let n = (self.prefix.len() - self.off).min(buf.remaining());
            let off = self.off;
            buf.put_slice(&self.prefix[off..off + n]);
            self.off += n;
            if self.off == self.prefix.len() {
                self.prefix = Vec::new();
                self.off = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Build a syntactically valid ClientHello (one record) for tests and corpus seeds.
pub fn build_client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(s) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(s.len() as u16).to_be_bytes());
        list.extend_from_slice(s.as_bytes());
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(&data);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(&data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Re-frame a single-record hello into records of at most `max` payload bytes each
/// (TLS permits a handshake message to span records).
pub fn split_records(hello: &[u8], max: usize) -> Vec<u8> {
    let payload = hello.get(5..).unwrap_or(&[]);
    let mut out = Vec::new();
    for chunk in payload.chunks(max.max(1)) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sni_and_alpn() {
        let h = build_client_hello(Some("api.partner.example"), &["h2", "http/1.1"]);
        assert_eq!(
            parse_client_hello(&h),
            Peek::Tls(ClientHelloInfo {
                sni: Some("api.partner.example".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        let h = build_client_hello(Some("a.example"), &["h2"]);
        for i in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..i]), Peek::NeedMore, "prefix {i}");
        }
    }

    #[test]
    fn split_across_records() {
        let h = build_client_hello(Some("split.example"), &["istio-peer-exchange", "h2"]);
        for max in [1, 3, 17, 64] {
            let s = split_records(&h, max);
            match parse_client_hello(&s) {
                Peek::Tls(i) => {
                    assert_eq!(i.sni.as_deref(), Some("split.example"));
                    assert_eq!(i.alpn, vec!["istio-peer-exchange", "h2"]);
                }
                other => panic!("max {max}: {other:?}"),
            }
            for i in 0..s.len() {
                assert_eq!(parse_client_hello(&s[..i]), Peek::NeedMore);
            }
        }
    }

    #[test]
    fn no_sni_no_alpn() {
        let h = build_client_hello(None, &[]);
        assert_eq!(
            parse_client_hello(&h),
            Peek::Tls(ClientHelloInfo::default())
        );
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(parse_client_hello(b"PRI * HTTP/2.0"), Peek::NotTls);
        assert_eq!(parse_client_hello(&[0x16, 0x01]), Peek::NotTls);
        assert_eq!(parse_client_hello(&[0x16]), Peek::NeedMore);
    }

    #[test]
    fn huge_declared_hello_is_too_large() {
        let buf = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff];
        assert_eq!(parse_client_hello(&buf), Peek::TooLarge);
    }

    #[test]
    fn truncated_body_is_not_tls() {
        // Declares a 4-byte hello body that cannot hold version+random.
        let buf = [
            0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0, 0,
        ];
        assert_eq!(parse_client_hello(&buf), Peek::NotTls);
    }

    #[tokio::test]
    async fn peek_stream_split_segments_and_replay() {
        let h = build_client_hello(Some("seg.example"), &["h2"]);
        let (mut a, mut b) = tokio::io::duplex(64);
        let h2 = h.clone();
        let w = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in h2.chunks(7) {
                a.write_all(c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            a.write_all(b"tail").await.unwrap();
            a
        });
        let p = peek_stream(&mut b, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(&p.result, Peek::Tls(i) if i.sni.as_deref() == Some("seg.example")));
        let _a = w.await.unwrap();
        let mut s = PrefixedStream::new(p.bytes, b);
        let mut all = vec![0u8; h.len() + 4];
        s.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..h.len()], &h[..]);
        assert_eq!(&all[h.len()..], b"tail");
    }

    #[tokio::test(start_paused = true)]
    async fn peek_times_out_on_silent_client() {
        let (_a, mut b) = tokio::io::duplex(64);
        let p = peek_stream(&mut b, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(p.timed_out);
        assert_eq!(p.result, Peek::NotTls);
    }
}
