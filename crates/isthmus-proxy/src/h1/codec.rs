//! HTTP/1.1 message framing (RFC 9112): request-head parsing into `http` types that share the
//! read buffer, chunked transfer decoding, and head encoding.
//!
//! Why not hyper's codec: hyper keeps an 8 KiB read buffer and a dispatch state machine per
//! connection for its whole life and costs tens of thousands of instructions per proxied
//! request; this codec parses with `httparse` straight out of the connection's buffer, slices
//! header values out of it without copying, and lets an idle connection hold no buffer at all.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

/// Largest request head accepted (Envoy's `max_request_headers_kb` default, 60 KiB).
pub const MAX_HEAD: usize = 60 * 1024;
/// Most header fields accepted in one head (Envoy's `max_headers_count` default).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions) accepted before the body is rejected.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a head (or a chunked body) was rejected; `status` is the local reply Envoy sends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("malformed HTTP/1.1 message: {0} (the client sent bytes RFC 9112 does not allow)")]
    Malformed(&'static str),
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} header fields")]
    TooLarge,
}

impl FrameError {
    /// The status of the local reply for this error (400, or 431 for oversized heads).
    pub fn status(&self) -> u16 {
        match self {
            FrameError::Malformed(_) => 400,
            FrameError::TooLarge => 431,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (0 = no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head, ready for the router.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// HTTP/1.1 persistent connection (no `Connection: close`).
    pub keep_alive: bool,
}

/// Outcome of looking at the bytes buffered at the start of a request.
#[derive(Debug)]
pub enum ParseOutcome {
    /// The head is not complete yet.
    Partial,
    /// A request this codec does not serve itself (HTTP/2 preface, HTTP/1.0, Upgrade,
    /// CONNECT, Expect): the connection goes to hyper with the buffered bytes replayed.
    Handoff,
    /// A complete head; its bytes have been taken out of the buffer.
    Request(Box<RequestHead>),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Offsets of one header field inside the buffer (name start, name len, value start, len).
type Span = [u32; 4];

/// Parse a request head at the front of `buf`. On success the head's bytes are split off the
/// buffer (header values and the URI keep slices of them; nothing is copied).
pub fn parse_request(buf: &mut BytesMut) -> Result<ParseOutcome, FrameError> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return Ok(if n < H2_PREFACE.len() {
            ParseOutcome::Partial
        } else {
            ParseOutcome::Handoff
        });
    }
    let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
    let (head_len, nh, method, path, version) = {
        // Uninitialised slots: initialising 100 empty headers per parse was a 3 KiB copy.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let base = buf.as_ptr() as usize;
        let off = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let len = match req.parse_with_uninit_headers(&buf[..], &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(FrameError::TooLarge);
                }
                return Ok(ParseOutcome::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::TooLarge),
            Err(httparse::Error::Version) => {
                return Err(FrameError::Malformed("unsupported HTTP version"))
            }
            Err(_) => return Err(FrameError::Malformed("invalid request head")),
        };
        if len > MAX_HEAD {
            return Err(FrameError::TooLarge);
        }
        let method = match req.method {
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| FrameError::Malformed("invalid method"))?,
            None => return Err(FrameError::Malformed("missing method")),
        };
        let path = req
            .path
            .map(|p| (off(p.as_bytes()), p.len() as u32))
            .ok_or(FrameError::Malformed("missing request target"))?;
        let version = match req.version {
            Some(1) => Version::HTTP_11,
            _ => return Ok(ParseOutcome::Handoff), // HTTP/1.0: hyper's keep-alive rules
        };
        let nh = req.headers.len();
        for (s, h) in spans.iter_mut().zip(req.headers.iter()) {
            *s = [
                off(h.name.as_bytes()),
                h.name.len() as u32,
                off(h.value),
                h.value.len() as u32,
            ];
        }
        (len, nh, method, path, version)
    };
    if method == Method::CONNECT {
        return Ok(ParseOutcome::Handoff);
    }
    // Framing and connection-management fields, checked on the raw bytes before anything is
    // allocated (RFC 9112 §6.3: conflicting lengths and CL + TE are rejected, like Envoy).
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut keep_alive = true;
    for s in &spans[..nh] {
        let name = &buf[s[0] as usize..(s[0] + s[1]) as usize];
        let value = &buf[s[2] as usize..(s[2] + s[3]) as usize];
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_length(value)?;
            if length.is_some_and(|l| l != v) {
                return Err(FrameError::Malformed("conflicting content-length values"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding must be `chunked` (RFC 9112 §6.3 rule 4); other codings stay on
            // the message but this codec only serves plain chunked, the common case.
            te_seen = true;
            chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked") && !chunked;
            if !chunked {
                return Err(FrameError::Malformed("unsupported transfer-encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Ok(ParseOutcome::Handoff);
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return Ok(ParseOutcome::Handoff);
        }
    }
    if te_seen && length.is_some() {
        return Err(FrameError::Malformed(
            "both content-length and transfer-encoding",
        ));
    }
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Length(length.unwrap_or(0))
    };
    let head = buf.split_to(head_len).freeze();
    let slice = |off: u32, len: u32| head.slice(off as usize..(off + len) as usize);
    let uri = Uri::from_maybe_shared(slice(path.0, path.1))
        .map_err(|_| FrameError::Malformed("invalid request target"))?;
    // Room for what the proxy adds (x-request-id, x-forwarded-*, route edits) without a grow.
    let mut headers = HeaderMap::with_capacity(nh + 6);
    for s in &spans[..nh] {
        let name = HeaderName::from_bytes(&head[s[0] as usize..(s[0] + s[1]) as usize])
            .map_err(|_| FrameError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(slice(s[2], s[3]))
            .map_err(|_| FrameError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(ParseOutcome::Request(Box::new(RequestHead {
        parts,
        framing,
        keep_alive,
    })))
}

/// A parsed response head (interim 1xx responses are skipped by the caller).
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    /// The body's framing; `None` = delimited by close.
    pub body: BodyState,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parse a response head at the front of `buf` (taking its bytes out of the buffer when
/// complete). `head_request`: the request was HEAD, so the response has no body whatever its
/// fields say (RFC 9112 §6.3).
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, FrameError> {
    let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
    let (head_len, nh, status, version) = {
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let off = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &buf[..],
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(FrameError::TooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::TooLarge),
            Err(_) => return Err(FrameError::Malformed("invalid response head")),
        };
        let status = http::StatusCode::from_u16(resp.code.unwrap_or(0))
            .map_err(|_| FrameError::Malformed("invalid status code"))?;
        let version = match resp.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let nh = resp.headers.len();
        for (s, h) in spans.iter_mut().zip(resp.headers.iter()) {
            *s = [
                off(h.name.as_bytes()),
                h.name.len() as u32,
                off(h.value),
                h.value.len() as u32,
            ];
        }
        (len, nh, status, version)
    };
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None; // Some(final coding is chunked)
    let mut keep_alive = version == Version::HTTP_11;
    for s in &spans[..nh] {
        let name = &buf[s[0] as usize..(s[0] + s[1]) as usize];
        let value = &buf[s[2] as usize..(s[2] + s[3]) as usize];
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_length(value)?;
            if length.is_some_and(|l| l != v) {
                return Err(FrameError::Malformed("conflicting content-length values"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            te = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        }
    }
    let code = status.as_u16();
    let body = if bodyless(code, head_request) {
        BodyState::Done
    } else {
        match (te, length) {
            (Some(true), _) => BodyState::ChunkSize,
            (Some(false), _) => BodyState::UntilClose,
            (None, Some(n)) => BodyState::new(Framing::Length(n)),
            (None, None) => BodyState::UntilClose,
        }
    };
    if body == BodyState::UntilClose {
        keep_alive = false;
    }
    let head = buf.split_to(head_len).freeze();
    let mut headers = HeaderMap::with_capacity(nh + 4);
    for s in &spans[..nh] {
        let name = HeaderName::from_bytes(&head[s[0] as usize..(s[0] + s[1]) as usize])
            .map_err(|_| FrameError::Malformed("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(s[2] as usize..(s[2] + s[3]) as usize))
                .map_err(|_| FrameError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(ResponseHead {
        parts,
        body,
        keep_alive,
    }))
}

/// Append a request head (request line and fields) without the final CRLF.
pub fn encode_request_head(w: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    w.extend_from_slice(method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in headers {
        if k == http::header::TRANSFER_ENCODING {
            continue;
        }
        w.extend_from_slice(k.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(v.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
}

/// A `Content-Length` value: ASCII digits only (no sign, no list), at most 19 of them.
fn parse_length(v: &[u8]) -> Result<u64, FrameError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::Malformed("invalid content-length"));
    }
    Ok(v.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')))
}

/// Incremental decoder of a request body; lives with the connection so whatever part of a
/// body nobody read can still be skipped (keep-alive) or detected (close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// No body left to read.
    Done,
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields until an empty line (bytes seen so far).
    Trailers(usize),
    /// A response delimited by the connection closing (no length, not chunked).
    UntilClose,
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes must be read first.
    NeedMore,
    End,
}

impl BodyState {
    pub fn new(f: Framing) -> BodyState {
        match f {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
        }
    }

    /// Bytes of body data still expected when known (`Content-Length` framing).
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyState::Done => Some(0),
            BodyState::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// Take the next piece of body data out of `buf` (without copying it). The state turns
    /// `Done` as soon as the last data has been returned, so `is_end_stream` is exact.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FrameError> {
        loop {
            match *self {
                BodyState::Done => return Ok(Decoded::End),
                BodyState::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                BodyState::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = split_bounded(buf, n);
                    *self = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                BodyState::ChunkSize => {
                    let Some(eol) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(FrameError::Malformed("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    *self = if size == 0 {
                        BodyState::Trailers(0)
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                BodyState::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = split_bounded(buf, n);
                    *self = if left == 0 {
                        BodyState::ChunkEnd
                    } else {
                        BodyState::ChunkData(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                BodyState::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FrameError::Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = BodyState::ChunkSize;
                }
                BodyState::Trailers(seen) => {
                    // Trailer fields are read and dropped (hop-by-hop for a proxy that does
                    // not forward them, as Envoy without trailer forwarding).
                    let Some(eol) = find_crlf(buf) else {
                        if seen + buf.len() > MAX_HEAD {
                            return Err(FrameError::TooLarge);
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(eol + 2);
                    *self = if eol == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Trailers(seen + eol + 2)
                    };
                }
            }
        }
    }
}

/// Splits off at most `n` bytes of body from `buf`; returns them and how many of `n` remain.
fn split_bounded(buf: &mut BytesMut, n: u64) -> (Bytes, u64) {
    let take = (buf.len() as u64).min(n);
    (buf.split_to(take as usize).freeze(), n - take)
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// `chunk-size [ chunk-ext ]`: hex digits (at most 15, so no overflow), then optional
/// extensions, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, FrameError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FrameError::Malformed("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(FrameError::Malformed("invalid chunk size"));
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

/// Whether a response with this status to this request method carries no body.
pub fn bodyless(status: u16, head_request: bool) -> bool {
    head_request || (100..200).contains(&status) || status == 204 || status == 304
}

/// Append a response head (status line and fields, in the map's order) without the final
/// CRLF, so the caller can add framing fields.
pub fn encode_response_head(w: &mut Vec<u8>, status: http::StatusCode, headers: &HeaderMap) {
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(status.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    w.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        if k == http::header::TRANSFER_ENCODING {
            continue; // framing is this hop's own
        }
        w.extend_from_slice(k.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(v.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
}

/// Append `name: <decimal>\r\n` without going through the formatter.
pub fn encode_len_field(w: &mut Vec<u8>, name: &[u8], n: u64) {
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
    w.extend_from_slice(b"\r\n");
}

/// Append a chunk header (`<hex size>\r\n`).
pub fn encode_chunk_header(w: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = HEX[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
    w.extend_from_slice(b"\r\n");
}

/// The `date` field value (IMF-fixdate), formatted once per second per thread (hyper's
/// server added it to every response; clients and tests see the same field from this codec).
pub fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let (s, v) = c.get();
        if s == now {
            return v;
        }
        let v = format_date(now);
        c.set((now, v));
        v
    })
}

fn format_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |o: &mut [u8], v: u64| {
        o[0] = b'0' + (v / 10) as u8;
        o[1] = b'0' + (v % 10) as u8;
    };
    two(&mut out[5..7], d as u64);
    out[8..11].copy_from_slice(MONTHS[(mo - 1) as usize]);
    let y = y.clamp(0, 9999) as u64;
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], h);
    two(&mut out[20..22], m);
    two(&mut out[23..25], s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<ParseOutcome, FrameError> {
        parse_request(&mut BytesMut::from(s))
    }

    fn req(s: &[u8]) -> RequestHead {
        match parse(s) {
            Ok(ParseOutcome::Request(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_head_and_leaves_pipelined_bytes() {
        let mut b = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\nGET /next"[..],
        );
        let ParseOutcome::Request(r) = parse_request(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(r.parts.method, Method::GET);
        assert_eq!(r.parts.uri.path_and_query().unwrap().as_str(), "/a?b=1");
        let multi: Vec<_> = r.parts.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, vec!["1", "2"]);
        assert_eq!(r.framing, Framing::Length(0));
        assert!(r.keep_alive);
        assert_eq!(&b[..], b"GET /next");
        assert!(matches!(parse_request(&mut b), Ok(ParseOutcome::Partial)));
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
        ] {
            let e = parse(bad).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(bad));
        }
        assert!(!req(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn unusual_requests_are_handed_off() {
        for h in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert!(
                matches!(parse(h), Ok(ParseOutcome::Handoff)),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
        assert!(matches!(parse(b"PRI * HT"), Ok(ParseOutcome::Partial)));
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"x-fill: 0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(parse(&big).unwrap_err().status(), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err().status(), 431);
    }

    fn decode_all(state: BodyState, input: &[&[u8]]) -> Result<Vec<u8>, FrameError> {
        let mut st = state;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut feed = input.iter();
        loop {
            match st.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok(out),
                Decoded::NeedMore => match feed.next() {
                    Some(b) => buf.extend_from_slice(b),
                    None => return Err(FrameError::Malformed("eof")),
                },
            }
        }
    }

    #[test]
    fn chunked_decoding_split_anywhere() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let out = decode_all(
                BodyState::ChunkSize,
                &[&wire[..cut], &wire[cut..cut + 1], &wire[cut + 1..]],
            )
            .unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let mut buf = BytesMut::from(&b"0\r\n\r\nGET"[..]);
        let mut st = BodyState::ChunkSize;
        assert_eq!(st.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET", "pipelined bytes stay");
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffff\r\n"] {
            assert!(decode_all(BodyState::ChunkSize, &[bad]).is_err());
        }
    }

    #[test]
    fn length_decoding_stops_at_the_length() {
        let mut buf = BytesMut::from(&b"abcdefGET"[..]);
        let mut st = BodyState::new(Framing::Length(6));
        assert_eq!(
            st.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from("abcdef")))
        );
        assert_eq!(st, BodyState::Done);
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn response_framing() {
        let p = |s: &[u8], head: bool| parse_response(&mut BytesMut::from(s), head);
        let r = p(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.parts.status.as_u16(), r.body, r.keep_alive),
            (200, BodyState::Length(3), true)
        );
        let r = p(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyState::Done, "HEAD has no body");
        let r = p(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyState::ChunkSize);
        let r = p(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.body, r.keep_alive), (BodyState::UntilClose, false));
        let r = p(b"HTTP/1.0 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.body, r.keep_alive), (BodyState::Done, false));
        assert!(p(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false
        )
        .is_err());
        assert!(p(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        let mut w = Vec::new();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        encode_request_head(&mut w, &Method::POST, "/x?y", &h);
        assert_eq!(w, b"POST /x?y HTTP/1.1\r\nhost: a\r\n".to_vec());
    }

    #[test]
    fn encoders() {
        let mut w = Vec::new();
        encode_len_field(&mut w, b"content-length", 0);
        encode_len_field(&mut w, b"content-length", 1234567);
        encode_chunk_header(&mut w, 0x1a2f);
        assert_eq!(
            w,
            b"content-length: 0\r\ncontent-length: 1234567\r\n1a2f\r\n".to_vec()
        );
        assert_eq!(&format_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_date(1_784_000_000),
            b"Tue, 14 Jul 2026 03:33:20 GMT"
        );
        assert_eq!(&format_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
