//! Upstream HTTP/1.1 exchanges with this crate's codec (the pool's client side).
//!
//! hyper's client runs a driver task per connection, a dispatch channel and (for pooling) a
//! readiness task per request; here a pooled connection is a plain value: the request is
//! written from the caller's task, the response head is read there, and the response body
//! owns the connection until its last byte, when it goes straight back to the idle list
//! ([`crate::pool::park`]). An idle connection is its socket and a few words: no task, no
//! buffer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::codec::{self, BodyState, Decoded};
use crate::cluster::Upstream;
use crate::pool::{BoxError, ConnInfo, ReqBody, Returner};

/// Read size for response heads and bodies.
const READ_BUF: usize = 16 * 1024;
/// Request bytes gathered before a write (head plus small bodies go out in one write).
const WRITE_GATHER: usize = 16 * 1024;

/// An upstream HTTP/1.1 connection between exchanges.
pub struct H1Conn {
    io: Box<dyn Upstream>,
    rbuf: BytesMut,
    pub info: Arc<ConnInfo>,
    /// A plain TCP socket: liveness can be probed with a zero-length read (no syscall when
    /// nothing arrived since the last read).
    plain: bool,
    /// When it was put in the idle list (idle timeout).
    pub parked_at: std::time::Instant,
}

/// Why an exchange failed (the router answers 503 UC, as for a reset).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection failed during the exchange: {0}")]
    Io(#[from] io::Error),
    #[error("upstream sent an invalid response: {0}")]
    Frame(#[from] codec::FrameError),
    #[error("upstream closed the connection before a complete response head")]
    Closed,
    #[error("request body failed: {0}")]
    Body(BoxError),
}

impl H1Conn {
    pub fn new(io: Box<dyn Upstream>, info: Arc<ConnInfo>) -> H1Conn {
        let plain = {
            let any: &dyn std::any::Any = &*io;
            any.is::<tokio::net::TcpStream>()
        };
        H1Conn {
            io,
            rbuf: BytesMut::new(),
            info,
            plain,
            parked_at: std::time::Instant::now(),
        }
    }

    /// Whether an idle connection still looks usable: the upstream has neither closed it nor
    /// sent stray bytes. Never waits.
    pub fn is_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.plain {
            // Readiness only: Pending means nothing arrived since the last read.
            let mut none = ReadBuf::new(&mut []);
            if Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut none)
                .is_pending()
            {
                return true;
            }
        }
        let mut one = [0u8; 1];
        let mut b = ReadBuf::new(&mut one);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut b),
            Poll::Pending
        )
    }

    /// Give the idle connection's read buffer back (it is re-created by the next exchange).
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_BUF);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    async fn write_all(&mut self, w: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(w).await?;
        self.io.flush().await
    }

    async fn flush_gather(&mut self, w: &mut Vec<u8>) -> io::Result<()> {
        if !w.is_empty() {
            self.write_all(w).await?;
            w.clear();
        }
        Ok(())
    }

    /// Send `req` (origin-form target) and read the response head. The response body owns
    /// the connection and parks it with `ret` once complete, if it can be reused.
    pub async fn exchange(
        mut self,
        req: Request<ReqBody>,
        ret: Returner,
    ) -> Result<Response<H1Body>, ExchangeError> {
        let (parts, mut body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut w: Vec<u8> = Vec::with_capacity(4096);
        codec::encode_request_head(&mut w, &parts.method, target, &parts.headers);
        let mut chunked = false;
        if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            match body.size_hint().exact() {
                Some(0) if body.is_end_stream() => {
                    // Methods that define a body say so even when it is empty (hyper did).
                    if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                        w.extend_from_slice(b"content-length: 0\r\n");
                    }
                }
                Some(n) => codec::encode_len_field(&mut w, b"content-length", n),
                None => {
                    w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
            }
        }
        w.extend_from_slice(b"\r\n");
        if !body.is_end_stream() {
            loop {
                let frame = match poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(f) => Poll::Ready(Some(f)),
                    Poll::Pending => Poll::Ready(None),
                })
                .await
                {
                    Some(f) => f,
                    None => {
                        self.flush_gather(&mut w).await?;
                        body.frame().await
                    }
                };
                let data = match frame {
                    None => break,
                    Some(Err(e)) => return Err(ExchangeError::Body(e)),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue, // request trailers are not forwarded
                    },
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    codec::encode_chunk_header(&mut w, data.len());
                }
                if data.len() >= WRITE_GATHER {
                    self.flush_gather(&mut w).await?;
                    self.write_all(&data).await?;
                } else {
                    w.extend_from_slice(&data);
                }
                if chunked {
                    w.extend_from_slice(b"\r\n");
                }
                if w.len() >= WRITE_GATHER {
                    self.flush_gather(&mut w).await?;
                }
            }
            if chunked {
                w.extend_from_slice(b"0\r\n\r\n");
            }
        }
        self.flush_gather(&mut w).await?;
        drop(w);
        let is_head = parts.method == Method::HEAD;
        let head = loop {
            let parsed = poll_fn(|cx| loop {
                if !self.rbuf.is_empty() {
                    match codec::parse_response(&mut self.rbuf, is_head) {
                        Ok(Some(h)) => return Poll::Ready(Ok(h)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(ExchangeError::Frame(e))),
                    }
                }
                match ready!(self.poll_fill(cx)) {
                    Ok(0) => return Poll::Ready(Err(ExchangeError::Closed)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
                }
            })
            .await?;
            // Interim responses (100 Continue, 103 Early Hints) are consumed here.
            if parsed.parts.status.is_informational()
                && parsed.parts.status != http::StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            break parsed;
        };
        let codec::ResponseHead {
            parts,
            body: state,
            keep_alive,
        } = head;
        let mut b = H1Body {
            conn: Some(std::sync::Mutex::new(Box::new(self))),
            state,
            reusable: keep_alive,
            ret: Some(ret),
        };
        if state == BodyState::Done {
            b.finish();
        }
        Ok(Response::from_parts(parts, b))
    }
}

/// A response body read from the upstream connection it owns (each frame is a slice of the
/// read buffer, no copy). At its end the connection returns to the pool; dropped early, the
/// connection closes.
pub struct H1Body {
    /// In a mutex only so the body is `Sync` (boxed bodies must be); it is reached through
    /// `&mut self` with `get_mut`, which takes no lock.
    conn: Option<std::sync::Mutex<Box<H1Conn>>>,
    state: BodyState,
    reusable: bool,
    ret: Option<Returner>,
}

impl H1Body {
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let (Some(c), Some(ret)) = (self.conn.take(), self.ret.take()) {
            let c = c.into_inner().unwrap_or_else(|e| e.into_inner());
            if self.reusable && c.rbuf.is_empty() {
                crate::pool::park(ret, *c);
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let c = c.get_mut().unwrap_or_else(|e| e.into_inner());
            match this.state.decode(&mut c.rbuf) {
                Ok(Decoded::Data(d)) => {
                    if this.state == BodyState::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            match ready!(c.poll_fill(cx)) {
                Ok(0) if this.state == BodyState::UntilClose => {
                    this.state = BodyState::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the response body",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
