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
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use crate::cluster::{ClusterRuntime, CxGuard, Host, UpstreamError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// Envoy's default upstream idle timeout (1h).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct ConnInfo {
    pub id: u64,
    pub local: Option<SocketAddr>,
    pub requests: AtomicU32,
    pub expired: AtomicBool,
    /// Wakes the connection's idle-timeout task when it leaves the idle list (checked out,
    /// found closed or removed), so that task ends at once instead of sleeping out the idle
    /// timeout (1h by default) once per request. Not the `ConnInfo` itself: the task must
    /// not keep the connection's `CxGuard` alive.
    idle_wake: Arc<Notify>,
    _guard: CxGuard,
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// A connection lent to one request.
pub struct Checkout {
    sender: Sender,
    pub info: Arc<ConnInfo>,
    pub key: PoolKey,
}

/// Pool key: endpoint address plus the SNI used (auto SNI makes it vary per request host).
pub type PoolKey = (SocketAddr, Option<String>);

type IdleList = Vec<(http1::SendRequest<ReqBody>, Arc<ConnInfo>)>;
type H2Conn = (http2::SendRequest<ReqBody>, Arc<ConnInfo>);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, IdleList>>,
    h2: Mutex<HashMap<PoolKey, H2Conn>>,
    /// Woken whenever a connection slot or an idle connection becomes available.
    pub notify: Notify,
    next_id: AtomicU64,
    /// Set when a new config version replaced this cluster: connections are not reused.
    draining: AtomicBool,
}

impl Pool {
    /// Envoy drains the pools of a cluster replaced by a changed version (e.g. its TLS
    /// settings): idle connections close now, busy ones finish their request and then
    /// close instead of returning to the pool. New requests use the new cluster's pool.
    /// Returns how many idle connections were closed.
    pub fn drain(&self) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let idle: Vec<(http1::SendRequest<ReqBody>, Arc<ConnInfo>)> = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, l)| l)
            .collect();
        let n = idle.len();
        for (_, info) in &idle {
            info.expired.store(true, Ordering::Release);
        }
        // Dropping the last sender of an idle HTTP/1 connection closes it; HTTP/2
        // connections close once their in-flight streams (which hold senders) end.
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

impl Pool {
    fn take_idle(&self, key: &PoolKey) -> Option<Checkout> {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = g.get_mut(key)?;
        while let Some((s, info)) = list.pop() {
            info.idle_wake.notify_one();
            if !s.is_closed() && s.is_ready() && !info.expired.load(Ordering::Acquire) {
                return Some(Checkout {
                    sender: Sender::H1(s),
                    info,
                    key: key.clone(),
                });
            }
        }
        None
    }

    fn take_h2(&self, key: &PoolKey) -> Option<Checkout> {
        let mut g = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, info)) = g.get(key) {
            if !s.is_closed() && !info.expired.load(Ordering::Acquire) {
                return Some(Checkout {
                    sender: Sender::H2(s.clone()),
                    info: info.clone(),
                    key: key.clone(),
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
            l.retain(|(_, i)| {
                if i.id == id {
                    i.idle_wake.notify_one();
                }
                i.id != id
            });
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
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut pending = false;
    let res = loop {
        let notified = cluster.pool.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = cluster
            .pool
            .take_h2(&key)
            .or_else(|| cluster.pool.take_idle(&key))
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
        idle_wake: Arc::new(Notify::new()),
        _guard: guard,
    });
    let io = TokioIo::new(io);
    let max_dur = cluster.spec.max_connection_duration.map(|d| d.0);
    let driver_cluster = cluster.clone();
    let driver_info = info.clone();
    let sender = if h2 {
        let (s, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| UpstreamError::Connect(key.0, std::io::Error::other(e)))?;
        spawn_driver(driver_cluster, driver_info, key.clone(), max_dur, conn);
        cluster
            .pool
            .h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (s.clone(), info.clone()));
        Sender::H2(s)
    } else {
        let (s, conn) = http1::handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(key.0, std::io::Error::other(e)))?;
        spawn_driver(driver_cluster, driver_info, key.clone(), max_dur, conn);
        Sender::H1(s)
    };
    Ok(Checkout { sender, info, key })
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
                    // Drain: no new requests; an in-flight request finishes, then the
                    // last sender handle drops and the connection closes.
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

impl Checkout {
    pub async fn send(
        &mut self,
        req: http::Request<ReqBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        self.info.requests.fetch_add(1, Ordering::AcqRel);
        match &mut self.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Give the connection back once the exchange is complete (HTTP/1: when `ready()` says
    /// the response body has been read), honouring maxRequestsPerConnection and idleTimeout.
    pub fn release(self, cluster: &Arc<ClusterRuntime>) {
        if cluster.pool.is_draining() {
            // Replaced cluster: finish this exchange, then close (dropping the sender).
            cluster.pool.remove_conn(&self.key, self.info.id);
            return;
        }
        let max_rq = cluster.spec.max_requests_per_connection.unwrap_or(0);
        let n = self.info.requests.load(Ordering::Acquire);
        match self.sender {
            Sender::H2(_) => {
                if max_rq > 0 && n >= max_rq {
                    cluster.inc("upstream_cx_max_requests");
                    cluster.pool.remove_conn(&self.key, self.info.id);
                }
            }
            Sender::H1(mut s) => {
                if max_rq > 0 && n >= max_rq {
                    cluster.inc("upstream_cx_max_requests");
                    return; // dropping the sender closes the connection
                }
                let cluster = cluster.clone();
                let info = self.info;
                let key = self.key;
                tokio::spawn(async move {
                    if s.ready().await.is_err()
                        || info.expired.load(Ordering::Acquire)
                        || cluster.pool.is_draining()
                    {
                        return;
                    }
                    let id = info.id;
                    let wake = info.idle_wake.clone();
                    cluster
                        .pool
                        .idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key.clone())
                        .or_default()
                        .push((s, info));
                    cluster.pool.notify.notify_waiters();
                    let idle = cluster
                        .spec
                        .idle_timeout
                        .map(|d| d.0)
                        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
                    tokio::select! {
                        // Left the idle list (reused or discarded): this idle period is over.
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(idle) => {
                            // Idle for the whole timeout: close it.
                            if cluster.pool.remove_idle(&key, id) {
                                cluster.inc("upstream_cx_idle_timeout");
                            }
                        }
                    }
                });
            }
        }
    }
}

impl Pool {
    /// Remove an idle connection (closing it); false if it is no longer in the idle list.
    fn remove_idle(&self, key: &PoolKey, id: u64) -> bool {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = g.get_mut(key) else {
            return false;
        };
        let before = l.len();
        l.retain(|(_, i)| i.id != id);
        l.len() != before
    }
}
