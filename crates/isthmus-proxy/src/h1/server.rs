//! Downstream HTTP/1.1 connections served by this crate's codec instead of hyper.
//!
//! One task per connection reads a head, routes it through [`crate::http::handle`] (the same
//! router, retries, faults, header edits, access log and metrics as the hyper path) and writes
//! the response. Between requests the connection parks on a zero-length read — a readiness
//! wait — with no read buffer, so an idle keep-alive connection costs its socket and a small
//! task, not hyper's 8 KiB buffer and dispatcher. Anything unusual (HTTP/2 preface, HTTP/1.0,
//! Upgrade/websocket, CONNECT, `Expect`) is handed to hyper with the bytes already read
//! replayed in front of the socket ([`Rewind`]), so those paths behave exactly as before.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{self, BodyState, Decoded, FrameError, ParseOutcome};
use crate::cluster::Upstream;
use crate::conn::ConnCtx;
use crate::http::{Activity, Edge};
use crate::pool::BoxError;
use crate::runtime::RoutesRt;

/// A client must send a complete request head within this time once it started (slowloris
/// guard; the hyper path used the same 60 s header-read timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// First read buffer for a request head (most heads are a few hundred bytes).
const HEAD_BUF: usize = 4096;
/// Read size while a body streams through.
const BODY_BUF: usize = 16 * 1024;
/// Response bytes gathered before a write (head plus small bodies go out in one write).
const WRITE_GATHER: usize = 16 * 1024;

/// The connection's socket and read state, shared with the request body while it is read
/// (the upstream side may poll the body from another task). Never locked across an await.
struct Conn {
    io: Option<Box<dyn Upstream>>,
    rbuf: BytesMut,
    body: BodyState,
    /// Bumped per request so a body object outliving its request cannot read the next one.
    generation: u64,
}

type Shared = Arc<Mutex<Conn>>;

fn lock(s: &Shared) -> MutexGuard<'_, Conn> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection handed off")
}

impl Conn {
    /// Read more bytes into the buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(want);
        }
        let io = self.io.as_mut().ok_or_else(gone)?;
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf)
    }

    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        w: &[u8],
        pos: &mut usize,
    ) -> Poll<io::Result<()>> {
        let io = self.io.as_mut().ok_or_else(gone)?;
        while *pos < w.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &w[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Pin::new(io).poll_flush(cx)
    }
}

/// Serve a downstream HTTP/1.1 connection (see the module docs).
pub async fn serve(
    ctx: Arc<ConnCtx>,
    io: Box<dyn Upstream>,
    routes: Arc<RoutesRt>,
    idle: Duration,
    edge: Edge,
) {
    // Only a plain TCP socket (behind the peeked-prefix replay) parks on a zero-length read:
    // tokio-rustls takes an empty read as end of stream. TLS connections keep their buffer
    // and wait in the read itself.
    let parkable = {
        let any: &dyn std::any::Any = &*io;
        any.is::<crate::peek::PrefixedStream<tokio::net::TcpStream>>()
    };
    let shared: Shared = Arc::new(Mutex::new(Conn {
        io: Some(io),
        rbuf: BytesMut::new(),
        body: BodyState::Done,
        generation: 0,
    }));
    let act = Arc::new(Activity::default());
    loop {
        // Idle: wait for readability holding no buffer (unless pipelined bytes are waiting).
        if lock(&shared).rbuf.is_empty() {
            let waited = if parkable {
                tokio::time::timeout(idle, wait_readable(&shared)).await
            } else {
                tokio::time::timeout(idle, fill_once(&shared)).await
            };
            match waited {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!("downstream HTTP connection idle; closing");
                    close(&shared).await;
                    return;
                }
            }
        }
        let head = match tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&shared)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) | Err(_) => return, // closed (or stalled) before a full head
            Ok(Err(HeadErr::Io(e))) => {
                tracing::debug!(error = %e, "downstream HTTP connection read failed");
                return;
            }
            Ok(Err(HeadErr::Frame(e))) => {
                tracing::debug!(error = %e, peer = %ctx.peer, "rejecting HTTP/1.1 request");
                reject(&shared, e.status()).await;
                return;
            }
        };
        let head = match head {
            Head::Handoff => {
                let (io, pre) = {
                    let mut c = lock(&shared);
                    (c.io.take(), std::mem::take(&mut c.rbuf).freeze())
                };
                if let Some(io) = io {
                    let io: Box<dyn Upstream> = Box::new(Rewind { pre, io });
                    Box::pin(crate::http::serve_hyper(ctx, io, routes, idle, edge)).await;
                }
                return;
            }
            Head::Request(h) => h,
        };
        let codec::RequestHead {
            parts,
            framing,
            keep_alive,
        } = *head;
        let is_head = parts.method == http::Method::HEAD;
        let generation = {
            let mut c = lock(&shared);
            c.generation += 1;
            c.body = BodyState::new(framing);
            c.generation
        };
        let body = DownBody {
            conn: (framing != codec::Framing::Length(0)).then(|| shared.clone()),
            generation,
        };
        let req = Request::from_parts(parts, body);
        let resp = Box::pin(crate::http::handle(
            ctx.clone(),
            routes.clone(),
            req,
            act.clone(),
            edge.clone(),
        ))
        .await;
        // The connection stays open only if the request body was read to its end (or what
        // is left of it is already buffered and can be skipped).
        let reusable = keep_alive;
        match Box::pin(write_response(&shared, resp, is_head, reusable)).await {
            Ok(()) if reusable && skip_unread_body(&shared) => {}
            Ok(()) => {
                close(&shared).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "downstream HTTP response write failed");
                return;
            }
        }
    }
}

enum Head {
    Request(Box<codec::RequestHead>),
    Handoff,
}

enum HeadErr {
    Io(io::Error),
    Frame(FrameError),
}

/// Park until the socket is readable, with no buffer held: a zero-length read waits for
/// read readiness on a TCP socket and returns at once when bytes are already buffered in
/// a wrapper (peeked prefix, TLS plaintext).
async fn wait_readable(shared: &Shared) -> io::Result<bool> {
    let mut released = false;
    poll_fn(|cx| {
        let mut c = lock(shared);
        let io = c.io.as_mut().ok_or_else(gone)?;
        let mut none = ReadBuf::new(&mut []);
        match Pin::new(io).poll_read(cx, &mut none) {
            Poll::Pending => {
                if !released {
                    // Nothing to read now: give the buffer back while the connection idles.
                    c.rbuf = BytesMut::new();
                    released = true;
                }
                Poll::Pending
            }
            Poll::Ready(r) => Poll::Ready(r.map(|()| true)),
        }
    })
    .await
}

/// The first read of a request on a connection that cannot park without a buffer; false at
/// end of stream.
async fn fill_once(shared: &Shared) -> io::Result<bool> {
    poll_fn(|cx| lock(shared).poll_fill(cx, HEAD_BUF).map_ok(|n| n > 0)).await
}

async fn read_head(shared: &Shared) -> Result<Option<Head>, HeadErr> {
    poll_fn(|cx| {
        let mut c = lock(shared);
        loop {
            if !c.rbuf.is_empty() {
                match codec::parse_request(&mut c.rbuf) {
                    Ok(ParseOutcome::Partial) => {}
                    Ok(ParseOutcome::Handoff) => return Poll::Ready(Ok(Some(Head::Handoff))),
                    Ok(ParseOutcome::Request(h)) => return Poll::Ready(Ok(Some(Head::Request(h)))),
                    Err(e) => return Poll::Ready(Err(HeadErr::Frame(e))),
                }
            }
            let want = if c.rbuf.is_empty() {
                HEAD_BUF
            } else {
                c.rbuf.len()
            };
            match ready!(c.poll_fill(cx, want)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(HeadErr::Io(e))),
            }
        }
    })
    .await
}

/// After the response: skip what is left of the request body if it is already buffered.
/// False when the body is incomplete (the connection must close, as Envoy does).
fn skip_unread_body(shared: &Shared) -> bool {
    let mut c = lock(shared);
    let c = &mut *c;
    loop {
        match c.body.decode(&mut c.rbuf) {
            Ok(Decoded::Data(_)) => {}
            Ok(Decoded::End) => return true,
            Ok(Decoded::NeedMore) | Err(_) => return false,
        }
    }
}

async fn write_all(shared: &Shared, w: &[u8]) -> io::Result<()> {
    let mut pos = 0;
    poll_fn(|cx| lock(shared).poll_write_all(cx, w, &mut pos)).await
}

/// Write the gathered bytes and keep the buffer's capacity for the next ones.
async fn flush_gather(shared: &Shared, w: &mut Vec<u8>) -> io::Result<()> {
    if !w.is_empty() {
        write_all(shared, w).await?;
        w.clear();
    }
    Ok(())
}

async fn close(shared: &Shared) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| {
            let mut c = lock(shared);
            match c.io.as_mut() {
                Some(io) => Pin::new(io).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            }
        }),
    )
    .await;
}

/// Local reply to a request this codec refused to parse; the connection closes after it.
async fn reject(shared: &Shared, status: u16) {
    let msg: &[u8] = if status == 431 {
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write_all(shared, msg)).await;
    close(shared).await;
}

/// Write the head and stream the body with this hop's framing: the response's
/// `content-length` if it has one, else the body's exact size, else chunked.
async fn write_response(
    shared: &Shared,
    resp: Response<crate::http::RespBody>,
    is_head: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let no_body = codec::bodyless(status, is_head);
    let mut w: Vec<u8> = Vec::with_capacity(4096);
    codec::encode_response_head(&mut w, parts.status, &parts.headers);
    let mut chunked = false;
    if !no_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(n) => codec::encode_len_field(&mut w, b"content-length", n),
            None => {
                w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    if !parts.headers.contains_key(http::header::DATE) {
        w.extend_from_slice(b"date: ");
        w.extend_from_slice(&codec::http_date());
        w.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        w.extend_from_slice(b"connection: close\r\n");
    }
    w.extend_from_slice(b"\r\n");
    loop {
        // Gather whatever the body has ready; write only when it would wait (or at the end).
        let frame = match poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
        {
            Some(f) => f,
            None => {
                flush_gather(shared, &mut w).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // Upstream reset mid-response: what arrived goes out, then the client sees
                // the connection close before the declared end (as with hyper).
                let _ = flush_gather(shared, &mut w).await;
                return Err(io::Error::other(e));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: not forwarded on HTTP/1.1
            },
        };
        if no_body || data.is_empty() {
            continue;
        }
        if chunked {
            codec::encode_chunk_header(&mut w, data.len());
        }
        if data.len() >= WRITE_GATHER {
            // Large pieces go out as they are, without a copy into the gather buffer.
            flush_gather(shared, &mut w).await?;
            write_all(shared, &data).await?;
        } else {
            w.extend_from_slice(&data);
        }
        if chunked {
            w.extend_from_slice(b"\r\n");
        }
        if w.len() >= WRITE_GATHER {
            flush_gather(shared, &mut w).await?;
        }
    }
    if chunked {
        w.extend_from_slice(b"0\r\n\r\n");
    }
    flush_gather(shared, &mut w).await
}

/// The request body, read from the downstream connection on demand (no copy: each frame is a
/// slice of the read buffer). `conn` is `None` for requests without a body.
pub struct DownBody {
    conn: Option<Shared>,
    generation: u64,
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(shared) = &self.conn else {
            return Poll::Ready(None);
        };
        let mut g = lock(shared);
        let c = &mut *g;
        if c.generation != self.generation {
            return Poll::Ready(None);
        }
        loop {
            match c.body.decode(&mut c.rbuf) {
                Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
            match ready!(c.poll_fill(cx, BODY_BUF)) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "downstream closed the connection before the end of the request body",
                    )))))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.conn {
            None => true,
            Some(s) => {
                let c = lock(s);
                c.generation != self.generation || c.body == BodyState::Done
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.conn {
            None => SizeHint::with_exact(0),
            Some(s) => {
                let c = lock(s);
                match c.body.remaining() {
                    Some(n) if c.generation == self.generation => SizeHint::with_exact(n),
                    _ => SizeHint::default(),
                }
            }
        }
    }
}

/// A stream that replays `pre` (bytes this codec read but hands on) before reading `io`.
pub struct Rewind {
    pre: Bytes,
    io: Box<dyn Upstream>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
