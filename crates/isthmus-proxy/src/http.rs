//! HTTP connection manager and router (HTTP/1.1, HTTP/2 over ALPN h2, prior-knowledge h2c).
//!
//! Per request: virtual host by Host/:authority, first matching route, then a direct response
//! or a cluster (weighted) with timeout, retries, circuit breakers and a pooled upstream
//! connection. The access log line and Istio metrics are emitted when the response body has
//! been fully sent (or the stream dropped), like Envoy's stream-end logging.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::accesslog::LogEntry;
use crate::cluster::{ClusterRuntime, Upstream, UpstreamError};
use crate::config::{RetryPolicy, RouteAction};
use crate::conn::{pick_weighted, ConnCtx};
use crate::pool::{self, BoxError, ReqBody};
use crate::runtime::RoutesRt;
use crate::telemetry::{self, StreamFacts};

/// Envoy's default route timeout when none is configured (Istio always sets one, often 0s).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bodies are buffered only when a retry policy may replay them; beyond this, no retries.
pub const MAX_RETRY_BUFFER: usize = 1 << 20;

pub(crate) type RespBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Serve a downstream HTTP connection: HTTP/1.1 with this crate's codec
/// ([`crate::h1::server`]), which hands HTTP/2 (prior knowledge or ALPN `h2`, both start with
/// the preface) and unusual HTTP/1 requests to hyper ([`serve_hyper`]).
pub async fn serve(
    ctx: ConnCtx,
    io: Box<dyn Upstream>,
    routes: Arc<RoutesRt>,
    idle: Option<Duration>,
) {
    let edge = Edge::of(&ctx, &routes);
    let idle = idle.unwrap_or(DEFAULT_HTTP_IDLE);
    crate::h1::server::serve(Arc::new(ctx), io, routes, idle, edge).await
}

/// hyper's HTTP/1 + HTTP/2 server for a connection (HTTP/2, Upgrade, CONNECT, `Expect`,
/// HTTP/1.0); `io` replays any bytes the HTTP/1.1 codec already read.
pub(crate) async fn serve_hyper(
    ctx: Arc<ConnCtx>,
    io: Box<dyn Upstream>,
    routes: Arc<RoutesRt>,
    idle: Duration,
    edge: Edge,
) {
    let act = Arc::new(Activity::default());
    let act2 = act.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let routes = routes.clone();
        let act = act2.clone();
        let edge = edge.clone();
        async move { Ok::<_, Infallible>(handle(ctx, routes, req, act, edge).await) }
    });
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client must send its request headers in time (slowloris guard).
    b.http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60));
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // HCM idle timeout: close (gracefully) once no stream has been active for `idle`.
    let mut closing = false;
    let res = loop {
        // Timed from the end of the last stream (or the connection start).
        let last = act.base + Duration::from_millis(act.last_end_ms.load(Ordering::Acquire));
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = tokio::time::sleep_until(last + idle), if !closing => {
                let last = act.base + Duration::from_millis(act.last_end_ms.load(Ordering::Acquire));
                if act.active.load(Ordering::Acquire) == 0 && tokio::time::Instant::now() >= last + idle {
                    tracing::debug!("downstream HTTP connection idle; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if act.active.load(Ordering::Acquire) > 0 {
                    // Busy: look again one idle period from now.
                    act.last_end_ms.store(act.base.elapsed().as_millis() as u64, Ordering::Release);
                }
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "downstream HTTP connection ended with error");
    }
}

/// The connection manager's edge settings (Envoy `use_remote_address`,
/// `xff_num_trusted_hops`), looked up once per downstream connection.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    /// The HCM's stat prefix (`http.<prefix>.fault.*` counters).
    pub stat_prefix: Arc<str>,
}

impl Edge {
    /// The settings of the HTTP chain whose compiled route table is `routes` (route tables
    /// are compiled per chain, so identity finds the chain).
    fn of(ctx: &ConnCtx, routes: &Arc<RoutesRt>) -> Edge {
        for l in ctx.rt.listeners.values() {
            for c in l.chains.iter().chain(l.default_chain.iter()) {
                if !c.routes.as_ref().is_some_and(|r| Arc::ptr_eq(r, routes)) {
                    continue;
                }
                if let crate::config::ChainAction::Http(h) = &c.spec.action {
                    return Edge {
                        use_remote_address: h.use_remote_address,
                        xff_num_trusted_hops: h.xff_num_trusted_hops,
                        stat_prefix: Arc::from(h.stat_prefix.as_str()),
                    };
                }
            }
        }
        Edge::default()
    }
}

/// Envoy's request header mutation for `x-forwarded-for`: with `use_remote_address`
/// (Istio gateways) the downstream peer is appended; without it (Istio sidecars) XFF passes
/// through untouched. `x-forwarded-proto` is set from the downstream connection either way
/// (isthmus keeps its earlier behaviour here; Envoy keeps an existing XFP on sidecars).
/// Returns the XFF value forwarded (for the access log).
pub fn forwarded_headers(
    h: &mut HeaderMap,
    edge: &Edge,
    peer: std::net::IpAddr,
    tls: bool,
) -> Option<String> {
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    let existing = hdr(h, X_FORWARDED_FOR).filter(|x| !x.is_empty());
    if !edge.use_remote_address {
        return existing;
    }
    let xff = match existing {
        Some(x) => format!("{x}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    Some(xff)
}

/// Whether a fault with this percentage (0-100) applies to this request.
fn fault_hit(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && rand::random::<f64>() * 100.0 < pct)
}

/// Envoy's default HCM idle timeout (1h).
pub const DEFAULT_HTTP_IDLE: Duration = Duration::from_secs(3600);

/// Streams in flight on one downstream connection (for the idle timeout).
pub struct Activity {
    active: std::sync::atomic::AtomicI64,
    base: tokio::time::Instant,
    last_end_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: Default::default(),
            base: tokio::time::Instant::now(),
            last_end_ms: AtomicU64::new(0),
        }
    }
}

struct ActiveStream(Arc<Activity>);

impl ActiveStream {
    fn new(a: Arc<Activity>) -> Self {
        a.active.fetch_add(1, Ordering::AcqRel);
        ActiveStream(a)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0
            .last_end_ms
            .store(self.0.base.elapsed().as_millis() as u64, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One slot of the cluster's `maxRetries` breaker (concurrent retries), held until the
/// request finishes; beyond the limit Envoy skips the retry and counts `upstream_rq_retry_overflow`.
struct RetryBudget {
    cluster: Arc<ClusterRuntime>,
    held: bool,
}

impl RetryBudget {
    fn take(&mut self) -> bool {
        if self.held {
            return true;
        }
        let max = self.cluster.spec.circuit_breakers.max_retries as i64;
        if self.cluster.retries_active.fetch_add(1, Ordering::AcqRel) >= max {
            self.cluster.retries_active.fetch_sub(1, Ordering::AcqRel);
            self.cluster.inc("upstream_rq_retry_overflow");
            return false;
        }
        self.held = true;
        true
    }
}

impl Drop for RetryBudget {
    fn drop(&mut self) {
        if self.held {
            self.cluster.retries_active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counts a request on a host (least-request balancing, `/clusters` rq_active/rq_total).
struct HostRq(Arc<crate::cluster::Host>);

impl HostRq {
    fn new(h: Arc<crate::cluster::Host>) -> Self {
        h.rq_active.fetch_add(1, Ordering::AcqRel);
        h.rq_total.fetch_add(1, Ordering::Relaxed);
        HostRq(h)
    }
}

impl Drop for HostRq {
    fn drop(&mut self) {
        self.0.rq_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones Envoy strips), as pre-parsed
/// names so stripping them costs no parsing or allocation per request.
static HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TE,
    http::header::TRAILER,
    http::header::PROXY_AUTHENTICATE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (collected only when one is present;
    // `Vec::new` does not allocate). HeaderName parsing lower-cases the tokens.
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(http::header::CONNECTION) {
        for t in v.as_bytes().split(|b| *b == b',') {
            if let Ok(n) = HeaderName::from_bytes(t.trim_ascii()) {
                // `keep-alive`/`close` (the usual tokens) need no extra removal.
                if n != "close" && !HOP_BY_HOP.contains(&n) {
                    named.push(n);
                }
            }
        }
    }
    // `TE: trailers` survives (gRPC needs it).
    let keep_te = h
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // One pass over the (few) names present instead of a hashed removal per hop-by-hop name:
    // most messages carry none or one of them.
    let mut present: [bool; HOP_BY_HOP.len()] = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for k in h.keys() {
        // Names of other lengths cannot match: most keys cost one length check.
        let s = k.as_str();
        if !matches!(s.len(), 2 | 7 | 10 | 16 | 17 | 18) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n.as_str() == s) {
            present[i] = true;
            any = true;
        }
    }
    if !any && named.is_empty() {
        return;
    }
    let found = HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p);
    for n in found.map(|(n, _)| n).chain(named.iter()) {
        if keep_te && n == http::header::TE {
            continue;
        }
        h.remove(n);
    }
}

/// A random (v4) UUID for `x-request-id`, formatted on the stack.
fn uuid_v4() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut o = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1; // the '-' already there
        }
        out[o] = HEX[(x >> 4) as usize];
        out[o + 1] = HEX[(x & 0x0f) as usize];
        o += 2;
    }
    out
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Header names the request path touches, pre-parsed (a `&str` key is parsed and
/// validated on every lookup).
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn hdr<K: http::header::AsHeaderName>(h: &HeaderMap, n: K) -> Option<String> {
    // Header values are almost always ASCII: take the fast exact path before the lossy one.
    h.get(n).map(|v| match std::str::from_utf8(v.as_bytes()) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    })
}

/// Emits the access log and metrics when the response stream ends.
struct Finisher {
    ctx: Arc<ConnCtx>,
    entry: LogEntry,
    started: Instant,
    received: Arc<AtomicU64>,
    cluster: Option<Arc<ClusterRuntime>>,
    _rq: Option<RqGuard>,
    _stream: ActiveStream,
}

impl Finisher {
    fn finish(mut self, sent: u64) {
        self.entry.bytes_sent = sent;
        self.entry.bytes_received = self.received.load(Ordering::Relaxed);
        let dur = self.started.elapsed();
        self.entry.duration_ms = dur.as_millis() as u64;
        let f = StreamFacts {
            node: &self.ctx.rt.config.node,
            direction: self.ctx.direction,
            cluster_name: self.entry.upstream_cluster.as_deref(),
            cluster: self.cluster.as_deref(),
            route_name: self.entry.route_name.as_deref(),
            authority: self.entry.authority.as_deref(),
            peer_principal: self.ctx.peer_principal.as_deref(),
            protocol: "http",
            response_code: Some(self.entry.response_code),
            flags: self.entry.flags(),
        };
        telemetry::record_http(
            &self.ctx.sh.stats,
            &f,
            dur.as_secs_f64() * 1000.0,
            self.entry.bytes_received,
            self.entry.bytes_sent,
        );
        self.ctx.sh.log.load().write(&self.entry);
    }
}

/// Response body wrapper counting bytes sent; finishing the log on end or drop.
struct Tracked {
    inner: RespBody,
    sent: u64,
    fin: Option<Finisher>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(f) = self.fin.take() {
                    let sent = self.sent;
                    f.finish(sent);
                }
            }
            Poll::Pending => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(mut f) = self.fin.take() {
            if !self.inner.is_end_stream() {
                // The downstream went away before the response was complete.
                f.entry.add_flag("DC");
            }
            f.finish(self.sent);
        }
    }
}

/// Request body wrapper counting bytes received.
struct Counting<B> {
    inner: B,
    n: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counting<B>
where
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.n.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds one `maxRequests` slot.
struct RqGuard(Arc<ClusterRuntime>);

impl Drop for RqGuard {
    fn drop(&mut self) {
        self.0.rq_active.fetch_sub(1, Ordering::AcqRel);
        self.0.add_rq_active(-1);
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn local_reply(status: u16, body: &str) -> Response<RespBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !body.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r
}

/// A gRPC local reply as Envoy sends it for gRPC requests: "trailers-only", i.e. HTTP 200 with
/// `grpc-status`/`grpc-message` in the headers and no body.
fn grpc_local_reply(code: u32, message: &str) -> Response<RespBody> {
    let mut r = Response::new(full(Bytes::new()));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    r
}

/// Envoy's router marks the local reply of a circuit-breaker overflow (flag UO) with
/// `x-envoy-overloaded: true`, and no Envoy retries a response carrying it: an overloaded
/// gateway's 503 must reach the caller instead of being multiplied by every sidecar's retries.
fn mark_overloaded(mut r: Response<RespBody>, entry: &LogEntry) -> Response<RespBody> {
    if entry.response_flags.contains(&"UO") {
        r.headers_mut()
            .insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    }
    r
}

/// `x-envoy-overloaded` (see [`mark_overloaded`]).
const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

fn redirect_reply(code: u16, location: &str) -> Response<RespBody> {
    let mut r = local_reply(code, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

/// Apply a route's header edits (set/append, then remove).
fn apply_ops(h: &mut HeaderMap, ops: &crate::config::HeaderOps) {
    for (name, value, append) in &ops.set {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if *append {
            h.append(n, v);
        } else {
            h.insert(n, v);
        }
    }
    for name in &ops.remove {
        h.remove(name.as_str());
    }
}

fn wrap(resp: Response<RespBody>, fin: Finisher) -> Response<RespBody> {
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Tracked {
            inner: body,
            sent: 0,
            fin: Some(fin),
        }
        .boxed(),
    )
}

/// Route and forward one request (any downstream codec: the body type is the codec's).
pub(crate) async fn handle<B>(
    ctx: Arc<ConnCtx>,
    routes: Arc<RoutesRt>,
    req: Request<B>,
    act: Arc<Activity>,
    edge: Edge,
) -> Response<RespBody>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let stream = ActiveStream::new(act);
    let (mut parts, body) = req.into_parts();
    let received = Arc::new(AtomicU64::new(0));
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| hdr(&parts.headers, http::header::HOST))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let method = parts.method.clone();
    let method = method.as_str();
    let downstream_version = parts.version;
    // Fields only the access log shows are built only when a log is written.
    let log_on = ctx.sh.log.load().is_on();
    // Header handling a proxy owes: hop-by-hop removal, x-request-id, x-forwarded-for/proto.
    // HTTP/1.1 Upgrade (websocket): remembered before hop-by-hop headers go.
    let upgrade = if parts.version == Version::HTTP_11
        && parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
            }) {
        parts.headers.get(http::header::UPGRADE).cloned()
    } else {
        None
    };
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(X_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_bytes(&uuid_v4()) {
            parts.headers.insert(X_REQUEST_ID, v);
        }
    }
    let xff = forwarded_headers(&mut parts.headers, &edge, ctx.peer.ip(), ctx.tls_terminated);
    let scheme = if ctx.tls_terminated { "https" } else { "http" };
    let mut entry = LogEntry {
        start_time: Some(ctx.start.max(SystemTime::now())),
        method: log_on.then(|| method.to_string()),
        path: log_on.then(|| path.clone()),
        protocol: log_on.then(|| proto(downstream_version).to_string()),
        x_forwarded_for: xff,
        user_agent: log_on
            .then(|| hdr(&parts.headers, http::header::USER_AGENT))
            .flatten(),
        request_id: log_on.then(|| hdr(&parts.headers, X_REQUEST_ID)).flatten(),
        authority: Some(authority.clone()),
        downstream_local_address: Some(ctx.local),
        downstream_remote_address: Some(ctx.peer),
        requested_server_name: ctx.sni.clone(),
        ..Default::default()
    };
    let fin =
        |entry: LogEntry, cluster: Option<Arc<ClusterRuntime>>, rq: Option<RqGuard>| Finisher {
            ctx: ctx.clone(),
            entry,
            started,
            received: received.clone(),
            cluster,
            _rq: rq,
            _stream: stream,
        };
    let vhost = routes.vhost(&authority);
    if vhost.is_some_and(|v| v.require_tls) && !ctx.tls_terminated {
        // Gateway `httpsRedirect`: Envoy's requireTls answers 301 to the https URL.
        entry.response_code = 301;
        entry.response_code_details = Some("direct_response".into());
        let loc = format!(
            "https://{}{}",
            crate::runtime::host_without_port(&authority),
            path
        );
        return wrap(redirect_reply(301, &loc), fin(entry, None, None));
    }
    let route = vhost.and_then(|v| v.route(method, &authority, &path, &parts.headers));
    let Some(route) = route else {
        entry.response_code = 404;
        entry.add_flag("NR");
        entry.response_code_details = Some("route_not_found".into());
        return wrap(local_reply(404, ""), fin(entry, None, None));
    };
    if !route.spec.name.is_empty() {
        entry.route_name = Some(route.spec.name.clone());
    }
    // CORS filter (before fault and router, Istio's order): may answer a preflight itself.
    let cors = crate::cors::on_request(route.spec.cors.as_ref(), &parts.method, &parts.headers);
    if cors.is_reply() {
        entry.response_code = 200;
        entry.response_code_details = Some("cors_response".into());
        let mut resp = local_reply(200, "");
        cors.apply(resp.headers_mut());
        return wrap(resp, fin(entry, None, None));
    }
    let target = match &route.spec.action {
        RouteAction::DirectResponse(d) => {
            entry.response_code = d.status;
            entry.response_code_details = Some("direct_response".into());
            // Envoy applies the route's response header edits to direct responses too.
            let mut resp = local_reply(d.status, d.body.as_deref().unwrap_or(""));
            apply_ops(resp.headers_mut(), &route.spec.response_headers);
            cors.apply(resp.headers_mut());
            return wrap(resp, fin(entry, None, None));
        }
        RouteAction::Redirect(r) => {
            let code = r.response_code.unwrap_or(301);
            entry.response_code = code;
            entry.response_code_details = Some("direct_response".into());
            let scheme = r.scheme.clone().unwrap_or_else(|| scheme.to_string());
            let host = r
                .host
                .clone()
                .unwrap_or_else(|| crate::runtime::host_without_port(&authority).to_string());
            let port = match r.port {
                Some(p) => format!(":{p}"),
                None if r.host.is_some() || r.scheme.is_some() => String::new(),
                None => authority
                    .strip_prefix(crate::runtime::host_without_port(&authority))
                    .unwrap_or("")
                    .to_string(),
            };
            let p = r.path.clone().unwrap_or_else(|| path.clone());
            let mut resp = redirect_reply(code, &format!("{scheme}://{host}{port}{p}"));
            apply_ops(resp.headers_mut(), &route.spec.response_headers);
            cors.apply(resp.headers_mut());
            return wrap(resp, fin(entry, None, None));
        }
        RouteAction::Route(t) => t,
    };
    if let Some(f) = &route.spec.fault {
        // Envoy's fault filter runs before the router: delay first, then maybe abort.
        let fault_stat = |what: &str| format!("http.{}.fault.{what}", edge.stat_prefix);
        if let Some(d) = f.delay.as_ref().filter(|d| fault_hit(d.percentage)) {
            entry.add_flag("DI");
            ctx.sh.stats.inc(&fault_stat("delays_injected"), 1);
            tokio::time::sleep(d.fixed_delay.0).await;
        }
        if let Some(a) = f.abort.as_ref().filter(|a| fault_hit(a.percentage)) {
            ctx.sh.stats.inc(&fault_stat("aborts_injected"), 1);
            let cname = pick_weighted(target.cluster.as_deref(), &target.weighted_clusters);
            let cluster = ctx.sh.runtime.load().clusters.get(&cname).cloned();
            entry.upstream_cluster = Some(cname);
            entry.response_code = a.http_status;
            entry.add_flag("FI");
            entry.response_code_details = Some("fault_filter_abort".into());
            let mut resp = match a.grpc_status {
                Some(code) => grpc_local_reply(code, "fault filter abort"),
                None => local_reply(a.http_status, "fault filter abort"),
            };
            apply_ops(resp.headers_mut(), &route.spec.response_headers);
            cors.apply(resp.headers_mut());
            return wrap(resp, fin(entry, cluster, None));
        }
    }
    apply_ops(&mut parts.headers, &route.spec.request_headers);
    let cname = pick_weighted(target.cluster.as_deref(), &target.weighted_clusters);
    entry.upstream_cluster = Some(cname.clone());
    // The cluster of the *current* config version (as Envoy's cluster manager): a request on
    // a long-lived downstream connection must not use a cluster a later version replaced.
    let Some(cluster) = ctx.sh.runtime.load().clusters.get(&cname).cloned() else {
        entry.response_code = 503;
        entry.add_flag("NC");
        entry.response_code_details = Some("cluster_not_found".into());
        return wrap(local_reply(503, ""), fin(entry, None, None));
    };
    cluster.inc_rq_total();
    // maxRequests breaker (mostly HTTP/2): beyond it, 503 UO.
    let max_rq = cluster.spec.circuit_breakers.max_requests as i64;
    if cluster.rq_active.fetch_add(1, Ordering::AcqRel) >= max_rq {
        cluster.rq_active.fetch_sub(1, Ordering::AcqRel);
        cluster.inc("upstream_rq_pending_overflow");
        entry.response_code = 503;
        entry.add_flag("UO");
        entry.response_code_details =
            Some("upstream_reset_before_response_started{overflow}".into());
        let reply = mark_overloaded(
            local_reply(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            &entry,
        );
        return wrap(reply, fin(entry, Some(cluster), None));
    }
    cluster.add_rq_active(1);
    let rq = RqGuard(cluster.clone());
    if let (Some(proto), Some(on_upgrade)) = (upgrade, on_upgrade) {
        return match upgrade_tunnel(
            &ctx, &cluster, &parts, proto, on_upgrade, &authority, &path, &mut entry,
        )
        .await
        {
            Ok(resp) => wrap(resp, fin(entry, Some(cluster), Some(rq))),
            Err((status, body)) => {
                entry.response_code = status;
                let reply = mark_overloaded(local_reply(status, body), &entry);
                wrap(reply, fin(entry, Some(cluster), Some(rq)))
            }
        };
    }

    if let Some(h) = &target.host_rewrite {
        if let Ok(v) = HeaderValue::from_str(h) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let mut upstream_path = std::borrow::Cow::Borrowed(path.as_str());
    if let (Some(rw), Some(prefix)) = (&target.prefix_rewrite, &route.spec.matcher.prefix) {
        if let Some(rest) = path.get(prefix.len()..) {
            upstream_path = std::borrow::Cow::Owned(format!("{rw}{rest}"));
        }
    }
    let up_authority = hdr(&parts.headers, http::header::HOST)
        .filter(|_| target.host_rewrite.is_some())
        .unwrap_or_else(|| authority.clone());
    let no_retry = RetryPolicy::default();
    let retry = target.retry_policy.as_ref().unwrap_or(&no_retry);
    // Buffer the body only if a retry may need it and its size is known to fit; otherwise
    // stream it (Envoy likewise gives up retries when the retry buffer would overflow).
    let fits = body.is_end_stream()
        || body
            .size_hint()
            .upper()
            .is_some_and(|u| u <= MAX_RETRY_BUFFER as u64);
    let body_src: BodySrc = if retry.num_retries > 0 && fits {
        match Limited::collect(body, &received).await {
            Some(b) => BodySrc::Buffered(b),
            None => {
                entry.response_code = 413;
                entry.response_code_details = Some("request_payload_too_large".into());
                return wrap(
                    local_reply(413, "payload too large"),
                    fin(entry, Some(cluster), Some(rq)),
                );
            }
        }
    } else {
        BodySrc::Stream(Some(
            Counting {
                inner: body,
                n: received.clone(),
            }
            .boxed(),
        ))
    };
    let timeout = match target.timeout {
        Some(d) if d.0.is_zero() => None,
        Some(d) => Some(d.0),
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let result = forward(
        &ctx,
        &cluster,
        parts,
        body_src,
        retry,
        deadline,
        &up_authority,
        &upstream_path,
        scheme,
        &mut entry,
    )
    .await;
    match result {
        Ok(mut resp) => {
            apply_ops(resp.headers_mut(), &route.spec.response_headers);
            cors.apply(resp.headers_mut());
            wrap(resp, fin(entry, Some(cluster), Some(rq)))
        }
        Err((status, body)) => {
            entry.response_code = status;
            let reply = mark_overloaded(local_reply(status, &body), &entry);
            wrap(reply, fin(entry, Some(cluster), Some(rq)))
        }
    }
}

/// Forward an Upgrade request on a dedicated upstream connection; on `101` splice the two
/// upgraded streams together (websockets; Istio enables the upgrade on every HCM).
#[allow(clippy::too_many_arguments)]
async fn upgrade_tunnel(
    ctx: &ConnCtx,
    cluster: &Arc<ClusterRuntime>,
    parts: &http::request::Parts,
    proto: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    authority: &str,
    path: &str,
    e: &mut LogEntry,
) -> Result<Response<RespBody>, (u16, &'static str)> {
    const CF: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
    let host = cluster
        .pick(ctx.orig_dst.or(Some(ctx.local)))
        .map_err(|err| {
            e.add_flag(err.flag());
            (503, "no healthy upstream")
        })?;
    let addr = cluster.resolve(&host).await.map_err(|err| {
        e.add_flag(err.flag());
        (503, "dns resolution failure")
    })?;
    e.upstream_host = Some(addr);
    let guard = cluster.try_reserve_cx(&host).map_err(|err| {
        e.add_flag(err.flag());
        (
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        )
    })?;
    let (io, local, _) = cluster
        .connect(addr, auto_sni(cluster, authority).as_deref())
        .await
        .map_err(|err| {
            cluster.record_result(&host, 503);
            e.add_flag(err.flag());
            e.upstream_transport_failure_reason = err.transport_reason();
            (503, CF)
        })?;
    e.upstream_local_address = local;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(io))
        .await
        .map_err(|_| {
            e.add_flag("UF");
            (503, CF)
        })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .version(Version::HTTP_11)
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|_| (400, "bad request"))?;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    req.headers_mut().insert(http::header::UPGRADE, proto);
    if let Ok(v) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let mut resp = sender.send_request(req).await.map_err(|_| {
        e.add_flag("UC");
        (503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
    })?;
    let status = resp.status().as_u16();
    cluster.record_result(&host, status);
    e.response_code = status;
    e.response_code_details = Some("via_upstream".into());
    if status == 101 {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _slot = guard;
            if let (Ok(u), Ok(d)) = (upstream.await, on_upgrade.await) {
                let mut u = TokioIo::new(u);
                let mut d = TokioIo::new(d);
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
        });
    }
    let (rp, rb) = resp.into_parts();
    Ok(Response::from_parts(
        rp,
        rb.map_err(|err| -> BoxError { Box::new(err) }).boxed(),
    ))
}

/// Envoy `autoSni`: with TLS origination and no configured SNI, use the request's host.
fn auto_sni(cluster: &ClusterRuntime, authority: &str) -> Option<String> {
    (cluster.spec.auto_sni
        && cluster.tls.is_some()
        && cluster.spec.tls.as_ref().is_some_and(|t| t.sni.is_none()))
    .then(|| crate::runtime::host_without_port(authority).to_string())
    .filter(|h| !h.is_empty())
}

enum BodySrc {
    Buffered(Bytes),
    Stream(Option<ReqBody>),
}

struct Limited;

impl Limited {
    async fn collect<B>(body: B, received: &AtomicU64) -> Option<Bytes>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let limited = http_body_util::Limited::new(body, MAX_RETRY_BUFFER);
        let b = limited.collect().await.ok()?.to_bytes();
        received.fetch_add(b.len() as u64, Ordering::Relaxed);
        Some(b)
    }
}

fn retry_on(p: &RetryPolicy, what: &str) -> bool {
    p.retry_on.split(',').any(|s| s.trim() == what)
}

fn retriable_status(p: &RetryPolicy, s: u16) -> bool {
    (retry_on(p, "5xx") && s >= 500)
        || (retry_on(p, "gateway-error") && matches!(s, 502..=504))
        || (retry_on(p, "retriable-status-codes") && p.retriable_status_codes.contains(&s))
}

fn retriable_connect(p: &RetryPolicy) -> bool {
    ["connect-failure", "5xx", "gateway-error", "reset"]
        .iter()
        .any(|w| retry_on(p, w))
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &ConnCtx,
    cluster: &Arc<ClusterRuntime>,
    mut parts: http::request::Parts,
    mut body: BodySrc,
    retry: &RetryPolicy,
    deadline: Option<tokio::time::Instant>,
    authority: &str,
    path: &str,
    scheme: &str,
    e: &mut LogEntry,
) -> Result<Response<RespBody>, (u16, std::borrow::Cow<'static, str>)> {
    let max_attempts = 1 + retry.num_retries;
    let mut budget = RetryBudget {
        cluster: cluster.clone(),
        held: false,
    };
    let mut attempt = 0;
    let st = |s: &str| crate::cluster::stat(cluster.name(), s);
    loop {
        attempt += 1;
        let last = attempt >= max_attempts;
        let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let host = match cluster.pick(ctx.orig_dst.or(Some(ctx.local))) {
            Ok(h) => h,
            Err(err) => {
                e.add_flag(err.flag());
                e.response_code_details = Some("no_healthy_upstream".into());
                return Err((503, "no healthy upstream".into()));
            }
        };
        let addr = match cluster.resolve(&host).await {
            Ok(a) => a,
            Err(err) => {
                e.add_flag(err.flag());
                e.response_code_details = Some("dns_resolution_failure".into());
                return Err((503, "dns resolution failure".into()));
            }
        };
        e.upstream_host = Some(addr);
        let _host_rq = HostRq::new(host.clone());
        let acquired = match remaining {
            Some(r) => {
                match tokio::time::timeout(
                    r,
                    pool::acquire(cluster, &host, addr, auto_sni(cluster, authority), Some(r)),
                )
                .await
                {
                    Ok(x) => x,
                    Err(_) => Err(UpstreamError::Overflow(cluster.name().to_string())),
                }
            }
            None => pool::acquire(cluster, &host, addr, auto_sni(cluster, authority), None).await,
        };
        let mut co = match acquired {
            Ok(c) => c,
            Err(UpstreamError::Overflow(_)) => {
                e.add_flag("UO");
                e.response_code_details =
                    Some("upstream_reset_before_response_started{overflow}".into());
                return Err((503, "upstream connect error or disconnect/reset before headers. reset reason: overflow".into()));
            }
            Err(err) => {
                cluster.record_result(&host, 503);
                e.upstream_transport_failure_reason = err.transport_reason();
                if !last && retriable_connect(retry) && budget.take() {
                    cluster.stats.inc(&st("upstream_rq_retry"), 1);
                    continue;
                }
                e.add_flag(err.flag());
                if retry.num_retries > 0 && retriable_connect(retry) {
                    e.add_flag("URX");
                    cluster
                        .stats
                        .inc(&st("upstream_rq_retry_limit_exceeded"), 1);
                }
                // Envoy: `{connection_failure,<reason>}` in the details, and TLS reasons
                // appended to the local reply body.
                e.response_code_details = Some(match &e.upstream_transport_failure_reason {
                    // Details never contain spaces (Envoy replaces them).
                    Some(r) => format!(
                        "upstream_reset_before_response_started{{connection_failure,{}}}",
                        r.replace(' ', "_")
                    ),
                    None => "upstream_reset_before_response_started{connection_failure}".into(),
                });
                let mut body = String::from("upstream connect error or disconnect/reset before headers. reset reason: connection failure");
                if let Some(r) = err.body_reason() {
                    body.push_str(", transport failure reason: ");
                    body.push_str(&r);
                }
                return Err((503, body.into()));
            }
        };
        e.upstream_local_address = co.info.local;
        let req_body: ReqBody = match &mut body {
            BodySrc::Buffered(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            BodySrc::Stream(s) => s.take().unwrap_or_else(|| {
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed()
            }),
        };
        let mut b = Request::builder().method(parts.method.clone());
        if co.is_h2() {
            b = b
                .version(Version::HTTP_2)
                .uri(format!("{scheme}://{authority}{path}"));
        } else {
            b = b.version(Version::HTTP_11).uri(path);
        }
        let mut req = match b.body(req_body) {
            Ok(r) => r,
            Err(_) => {
                e.add_flag("DPE");
                return Err((400, "bad request".into()));
            }
        };
        // A single attempt takes the headers; only a possible retry needs a copy.
        *req.headers_mut() = if max_attempts == 1 {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        if co.is_h2() {
            req.headers_mut().remove(http::header::HOST);
        } else if let Ok(v) = HeaderValue::from_str(authority) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let per_try = retry.per_try_timeout.map(|d| d.0).filter(|d| !d.is_zero());
        let limit = match (
            per_try,
            deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now())),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sent_at = Instant::now();
        let res = match limit {
            Some(l) => tokio::time::timeout(l, co.send(req)).await,
            None => Ok(co.send(req).await),
        };
        match res {
            Err(_) => {
                // Timed out: per-try (retry if allowed) or the whole route timeout.
                cluster.record_result(&host, 504);
                let global_left =
                    deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                if !last
                    && per_try.is_some()
                    && global_left.is_none_or(|g| !g.is_zero())
                    && (retry_on(retry, "5xx")
                        || retry_on(retry, "gateway-error")
                        || retry_on(retry, "reset"))
                    && matches!(body, BodySrc::Buffered(_))
                    && budget.take()
                {
                    cluster.stats.inc(&st("upstream_rq_retry"), 1);
                    cluster.stats.inc(&st("upstream_rq_per_try_timeout"), 1);
                    continue;
                }
                cluster.stats.inc(&st("upstream_rq_timeout"), 1);
                e.add_flag("UT");
                e.response_code_details = Some("upstream_response_timeout".into());
                return Err((504, "upstream request timeout".into()));
            }
            Ok(Err(err)) => {
                cluster.record_result(&host, 503);
                let retriable = retry_on(retry, "reset")
                    || retry_on(retry, "5xx")
                    || retry_on(retry, "gateway-error");
                if !last && retriable && matches!(body, BodySrc::Buffered(_)) && budget.take() {
                    cluster.stats.inc(&st("upstream_rq_retry"), 1);
                    continue;
                }
                tracing::debug!(error = %err, "upstream request failed");
                e.add_flag("UC");
                e.response_code_details =
                    Some("upstream_reset_before_response_started{connection_termination}".into());
                return Err((503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()));
            }
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                cluster.record_result(&host, status);
                cluster.inc_rq_status(status);
                // Envoy never retries a response an upstream Envoy marked overloaded.
                let overloaded = resp.headers().contains_key(X_ENVOY_OVERLOADED);
                if retriable_status(retry, status) && retry.num_retries > 0 && !overloaded {
                    if !last && matches!(body, BodySrc::Buffered(_)) && budget.take() {
                        cluster.stats.inc(&st("upstream_rq_retry"), 1);
                        drop(resp);
                        continue;
                    }
                    e.add_flag("URX");
                    cluster
                        .stats
                        .inc(&st("upstream_rq_retry_limit_exceeded"), 1);
                }
                let service_ms = sent_at.elapsed().as_millis() as u64;
                e.upstream_service_time = Some(service_ms);
                e.response_code = status;
                e.response_code_details = Some("via_upstream".into());
                co.release(cluster);
                let (mut rp, rb) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                rp.headers.insert(
                    HeaderName::from_static("x-envoy-upstream-service-time"),
                    HeaderValue::from(service_ms),
                );
                let rb: RespBody = rb.boxed();
                return Ok(Response::from_parts(rp, rb));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "close"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-secret", "1"),
            ("x-kept", "2"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("te"), "te: trailers survives (gRPC)");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = String::from_utf8(uuid_v4().to_vec()).unwrap();
        assert_eq!(a.len(), 36);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12],
            "{a}"
        );
        assert!(a
            .bytes()
            .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid_v4(), uuid_v4());
    }
}
