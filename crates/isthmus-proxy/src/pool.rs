//! Upstream HTTP connection pool, one per cluster runtime and keyed by endpoint address.
//!
//! A cluster runtime carries its own TLS origination settings, so (cluster version, address)
//! is the pool key pingora recommends: a changed TLS setting means a new cluster runtime and
//! therefore fresh connections. Enforces Envoy's circuit breakers: `maxConnections` (then the
//! request waits as *pending*), `maxPendingRequests` (beyond: `UO`), plus
//! `maxRequestsPerConnection`, `idleTimeout` and `maxConnectionDuration`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use crate::cluster::{ClusterRuntime, CxGuard, Host, UpstreamError};
use crate::h1::client::{H1Body, H1Conn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// Envoy's default upstream idle timeout (1h).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct ConnInfo {
    pub id: u64,
    pub local: Option<SocketAddr>,
    pub requests: AtomicU32,
    pub expired: AtomicBool,
    /// When the connection was opened (`maxConnectionDuration`).
    created: Instant,
    _guard: CxGuard,
}

enum Sender {
    /// Taken by the exchange; the response body parks it again.
    H1(Option<H1Conn>),
    H2(http2::SendRequest<ReqBody>),
}

/// A connection lent to one request.
pub struct Checkout {
    sender: Sender,
    pub info: Arc<ConnInfo>,
    pub key: PoolKey,
    cluster: Arc<ClusterRuntime>,
}

/// Pool key: endpoint address plus the SNI used (auto SNI makes it vary per request host).
pub type PoolKey = (SocketAddr, Option<String>);

/// Where a finished HTTP/1.1 exchange returns its connection.
pub struct Returner {
    cluster: Arc<ClusterRuntime>,
    key: PoolKey,
}

type H2Conn = (http2::SendRequest<ReqBody>, Arc<ConnInfo>);

#[derive(Default)]
pub struct Pool {
    /// Idle HTTP/1.1 connections: bare sockets (no task, no buffer), most recent last.
    idle: Mutex<HashMap<PoolKey, Vec<H1Conn>>>,
    h2: Mutex<HashMap<PoolKey, H2Conn>>,
    /// Woken whenever a connection slot or an idle connection becomes available.
    pub notify: Notify,
    next_id: AtomicU64,
    /// Set when a new config version replaced this cluster: connections are not reused.
    draining: AtomicBool,
    /// Whether the idle sweeper task runs (one per pool, only while connections idle).
    sweeping: AtomicBool,
}

impl Pool {
    /// Envoy drains the pools of a cluster replaced by a changed version (e.g. its TLS
    /// settings): idle connections close now, busy ones finish their request and then
    /// close instead of returning to the pool. New requests use the new cluster's pool.
    /// Returns how many idle connections were closed.
    pub fn drain(&self) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let idle: Vec<H1Conn> = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, l)| l)
            .collect();
        let n = idle.len();
        for c in &idle {
            c.info.expired.store(true, Ordering::Release);
        }
        // Dropping an idle HTTP/1 connection closes it; HTTP/2 connections close once their
        // in-flight streams (which hold senders) end.
        drop(idle);
        for (_, (_, info)) in self.h2.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            info.expired.store(true, Ordering::Release);
        }
        n
    }

    /// Whether [`Pool::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Why an idle connection may no longer be used (counted like Envoy's close reasons).
fn idle_expiry(cluster: &ClusterRuntime, c: &H1Conn, now: Instant) -> Option<&'static str> {
    let max_dur = cluster.spec.max_connection_duration.map(|d| d.0);
    if c.info.expired.load(Ordering::Acquire)
        || max_dur.is_some_and(|d| now.saturating_duration_since(c.info.created) >= d)
    {
        return Some("upstream_cx_max_duration_reached");
    }
    if now.saturating_duration_since(c.parked_at) >= idle_timeout(cluster) {
        return Some("upstream_cx_idle_timeout");
    }
    None
}

fn idle_timeout(cluster: &ClusterRuntime) -> Duration {
    cluster
        .spec
        .idle_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_IDLE_TIMEOUT)
}

impl Pool {
    fn take_idle(&self, cluster: &Arc<ClusterRuntime>, key: &PoolKey) -> Option<Checkout> {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = g.get_mut(key)?;
        let now = Instant::now();
        while let Some(mut c) = list.pop() {
            if let Some(why) = idle_expiry(cluster, &c, now) {
                cluster.inc(why);
                continue;
            }
            if c.is_alive() {
                return Some(Checkout {
                    info: c.info.clone(),
                    sender: Sender::H1(Some(c)),
                    key: key.clone(),
                    cluster: cluster.clone(),
                });
            }
        }
        None
    }

    fn take_h2(&self, cluster: &Arc<ClusterRuntime>, key: &PoolKey) -> Option<Checkout> {
        let mut g = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, info)) = g.get(key) {
            if !s.is_closed() && !info.expired.load(Ordering::Acquire) {
                return Some(Checkout {
                    sender: Sender::H2(s.clone()),
                    info: info.clone(),
                    key: key.clone(),
                    cluster: cluster.clone(),
                });
            }
            g.remove(key);
        }
        None
    }

    fn remove_conn(&self, key: &PoolKey, id: u64) {
        if let Some(l) = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            l.retain(|c| c.info.id != id);
        }
        let mut g = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if g.get(key).is_some_and(|(_, i)| i.id == id) {
            g.remove(key);
        }
    }

    /// Number of idle HTTP/1 connections (for tests and /clusters).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| v.len())
            .sum()
    }

    /// Close idle connections past their idle timeout or maximum duration; the next
    /// deadline, or `None` (sweeper stops) when nothing idles.
    fn sweep(&self, cluster: &ClusterRuntime) -> Option<Instant> {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let idle = idle_timeout(cluster);
        let max_dur = cluster.spec.max_connection_duration.map(|d| d.0);
        let mut next: Option<Instant> = None;
        for list in g.values_mut() {
            list.retain(|c| match idle_expiry(cluster, c, now) {
                Some(why) => {
                    cluster.inc(why);
                    false
                }
                None => {
                    let mut t = c.parked_at + idle;
                    if let Some(d) = max_dur {
                        t = t.min(c.info.created + d);
                    }
                    next = Some(next.map_or(t, |n| n.min(t)));
                    true
                }
            });
        }
        g.retain(|_, l| !l.is_empty());
        if next.is_none() {
            self.sweeping.store(false, Ordering::Release);
        }
        next
    }
}

/// One timer task per pool while connections idle (instead of one per parked connection):
/// it sleeps until the earliest idle deadline and closes what expired.
fn ensure_sweeper(cluster: &Arc<ClusterRuntime>) {
    if cluster.pool.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            let next = match weak.upgrade() {
                Some(c) => c.pool.sweep(&c),
                None => return,
            };
            match next {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => return,
            }
        }
    });
}

/// Return a connection whose exchange completed to the idle list, honouring draining,
/// `maxRequestsPerConnection` and `maxConnectionDuration`.
pub fn park(ret: Returner, mut conn: H1Conn) {
    let Returner { cluster, key } = ret;
    if cluster.pool.is_draining() {
        return; // replaced cluster: this exchange finished, the connection closes
    }
    let max_rq = cluster.spec.max_requests_per_connection.unwrap_or(0);
    if max_rq > 0 && conn.info.requests.load(Ordering::Acquire) >= max_rq {
        cluster.inc("upstream_cx_max_requests");
        return;
    }
    let now = Instant::now();
    conn.parked_at = now;
    if let Some(why) = idle_expiry(&cluster, &conn, now) {
        cluster.inc(why);
        return;
    }
    conn.shrink();
    cluster
        .pool
        .idle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .push(conn);
    cluster.pool.notify.notify_waiters();
    ensure_sweeper(&cluster);
}

/// Get a connection to `host`: reuse an idle one, open a new one within `maxConnections`, or
/// wait as a pending request (bounded by `maxPendingRequests` and `wait`).
pub async fn acquire(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    addr: SocketAddr,
    sni: Option<String>,
    wait: Option<Duration>,
) -> Result<Checkout, UpstreamError> {
    let key: PoolKey = (addr, sni);
    // Fast path: an idle connection, without arming the wait notification.
    if let Some(c) = cluster
        .pool
        .take_h2(cluster, &key)
        .or_else(|| cluster.pool.take_idle(cluster, &key))
    {
        return Ok(c);
    }
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut pending = false;
    let res = loop {
        let notified = cluster.pool.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = cluster
            .pool
            .take_h2(cluster, &key)
            .or_else(|| cluster.pool.take_idle(cluster, &key))
        {
            break Ok(c);
        }
        match cluster.try_reserve_cx(host) {
            Ok(guard) => break open(cluster, key.clone(), guard).await,
            Err(UpstreamError::Overflow(_)) => {
                if !pending {
                    let max = cluster.spec.circuit_breakers.max_pending_requests as i64;
                    if cluster.rq_pending.fetch_add(1, Ordering::AcqRel) >= max {
                        cluster.rq_pending.fetch_sub(1, Ordering::AcqRel);
                        cluster.inc("upstream_rq_pending_overflow");
                        return Err(UpstreamError::Overflow(cluster.name().to_string()));
                    }
                    pending = true;
                    cluster.inc("upstream_rq_pending_total");
                }
                match deadline {
                    Some(d) => {
                        if tokio::time::timeout_at(d, notified).await.is_err() {
                            break Err(UpstreamError::Overflow(cluster.name().to_string()));
                        }
                    }
                    None => notified.await,
                }
            }
            Err(e) => break Err(e),
        }
    };
    if pending {
        cluster.rq_pending.fetch_sub(1, Ordering::AcqRel);
    }
    res
}

async fn open(
    cluster: &Arc<ClusterRuntime>,
    key: PoolKey,
    guard: CxGuard,
) -> Result<Checkout, UpstreamError> {
    let (io, local, h2) = cluster.connect(key.0, key.1.as_deref()).await?;
    let id = cluster.pool.next_id.fetch_add(1, Ordering::Relaxed);
    let info = Arc::new(ConnInfo {
        id,
        local,
        requests: AtomicU32::new(0),
        expired: AtomicBool::new(false),
        created: Instant::now(),
        _guard: guard,
    });
    let sender = if h2 {
        let max_dur = cluster.spec.max_connection_duration.map(|d| d.0);
        let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(key.0, std::io::Error::other(e)))?;
        spawn_driver(cluster.clone(), info.clone(), key.clone(), max_dur, conn);
        cluster
            .pool
            .h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (s.clone(), info.clone()));
        Sender::H2(s)
    } else {
        Sender::H1(Some(H1Conn::new(io, info.clone())))
    };
    Ok(Checkout {
        sender,
        info,
        key,
        cluster: cluster.clone(),
    })
}

fn spawn_driver<F>(
    cluster: Arc<ClusterRuntime>,
    info: Arc<ConnInfo>,
    key: PoolKey,
    max_dur: Option<Duration>,
    conn: F,
) where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        tokio::pin!(conn);
        if let Some(d) = max_dur {
            tokio::select! {
                _ = &mut conn => { drop(info); return; }
                _ = tokio::time::sleep(d) => {
                    // Drain: no new requests; in-flight streams finish, then the last
                    // sender handle drops and the connection closes.
                    info.expired.store(true, Ordering::Release);
                    cluster.inc("upstream_cx_max_duration_reached");
                    cluster.pool.remove_conn(&key, info.id);
                }
            }
        }
        drop(info);
        let _ = conn.await;
    });
}

/// A response body from either upstream protocol.
pub enum UpBody {
    H1(H1Body),
    H2(hyper::body::Incoming),
}

impl hyper::body::Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpBody::H2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::H2(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::H2(b) => b.size_hint(),
        }
    }
}

impl Checkout {
    /// Send a request and return the response head; an HTTP/1.1 response body returns the
    /// connection to the pool when it completes.
    pub async fn send(
        &mut self,
        req: http::Request<ReqBody>,
    ) -> Result<http::Response<UpBody>, BoxError> {
        self.info.requests.fetch_add(1, Ordering::AcqRel);
        match &mut self.sender {
            Sender::H1(c) => {
                let conn = c
                    .take()
                    .ok_or_else(|| -> BoxError { "connection already used".into() })?;
                let ret = Returner {
                    cluster: self.cluster.clone(),
                    key: self.key.clone(),
                };
                let r = conn.exchange(req, ret).await?;
                Ok(r.map(UpBody::H1))
            }
            Sender::H2(s) => Ok(s.send_request(req).await?.map(UpBody::H2)),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Done with the checkout. HTTP/1.1 connections went back with their response body
    /// ([`park`]); an HTTP/2 connection honours maxRequestsPerConnection here.
    pub fn release(self, cluster: &Arc<ClusterRuntime>) {
        if let Sender::H2(_) = self.sender {
            if cluster.pool.is_draining() {
                cluster.pool.remove_conn(&self.key, self.info.id);
                return;
            }
            let max_rq = cluster.spec.max_requests_per_connection.unwrap_or(0);
            if max_rq > 0 && self.info.requests.load(Ordering::Acquire) >= max_rq {
                cluster.inc("upstream_cx_max_requests");
                cluster.pool.remove_conn(&self.key, self.info.id);
            }
        }
    }
}
