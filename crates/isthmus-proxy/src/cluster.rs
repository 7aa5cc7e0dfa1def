//! Upstream clusters at runtime: endpoint choice (round robin / least request / random),
//! circuit breakers, outlier detection and connection establishment (connect timeout,
//! keepalive socket options, optional TLS origination).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::config::{Cluster, DiscoveryType, LbPolicy};
use crate::stats::Stats;
use crate::tls::Origination;

/// Istio's default connect timeout when none is configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-endpoint state.
#[derive(Debug)]
pub struct Host {
    /// Configured address (IP or DNS name) and port.
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub rq_active: AtomicU64,
    pub rq_total: AtomicU64,
    pub cx_active: AtomicI64,
    outlier: Mutex<OutlierState>,
}

/// Envoy's per-host outlier monitor.
#[derive(Debug, Default)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gw: u32,
    /// `FAILED_OUTLIER_CHECK`: set on ejection, cleared only by an interval tick.
    ejected: bool,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    /// Multiplier of `baseEjectionTime`: +1 per ejection (while below the max ejection
    /// time), -1 per interval the host spends healthy.
    backoff: u32,
    num_ejections: u32,
}

impl Host {
    /// Whether the host is ejected. Ejection ends on an interval tick, not at an instant,
    /// so `now` is not consulted (kept for callers that pass it).
    pub fn ejected(&self, _now: Instant) -> bool {
        self.outlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ejected
    }

    /// How many times outlier detection ejected this host.
    pub fn num_ejections(&self) -> u32 {
        self.outlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .num_ejections
    }

    pub fn display(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port).to_string(),
            Err(_) => format!("{}:{}", self.address, self.port),
        }
    }
}

/// Why no upstream connection was made, with its Envoy response flag.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy upstream in cluster {0}")]
    NoHealthy(String),
    #[error("circuit breaker open: max connections reached for cluster {0}")]
    Overflow(String),
    #[error("upstream connect timeout after {1:?} to {0}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("upstream connect error to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS handshake with upstream {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("DNS resolution of {0} failed: {1}")]
    Dns(String, String),
    /// The cluster's TLS context waits for an SDS secret that was not supplied (Envoy's
    /// `NotReadySslSocket`): flag `UF`, reason "TLS error: Secret is not supplied by SDS".
    #[error("TLS to upstream {0} not possible: secret {1:?} is not supplied (hint: check the credentialName Secret's name, namespace and keys)")]
    SecretNotReady(SocketAddr, String),
}

impl UpstreamError {
    pub fn flag(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthy(_) => "UH",
            UpstreamError::Overflow(_) => "UO",
            UpstreamError::Dns(..) => "DF",
            _ => "UF",
        }
    }
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_reason(&self) -> Option<String> {
        match self {
            UpstreamError::Tls(_, e) => Some(isthmus_tls::failure_reason_io(e)),
            UpstreamError::Connect(_, e) => Some(format!(
                "delayed_connect_error:_{}",
                e.to_string().replace(' ', "_")
            )),
            UpstreamError::ConnectTimeout(..) => Some("connect_timeout".into()),
            UpstreamError::SecretNotReady(..) => {
                Some(crate::tls::SECRET_NOT_SUPPLIED.replace(' ', "_"))
            }
            _ => None,
        }
    }

    /// What Envoy appends to a local 503 body as `, transport failure reason: ...` (TLS
    /// failures only; the access log field carries the underscored form).
    pub fn body_reason(&self) -> Option<String> {
        match self {
            UpstreamError::SecretNotReady(..) => Some(crate::tls::SECRET_NOT_SUPPLIED.into()),
            UpstreamError::Tls(_, e) => Some(isthmus_tls::failure_reason_io(e)),
            _ => None,
        }
    }
}

pub struct ClusterRuntime {
    pub spec: Cluster,
    pub hosts: Vec<Arc<Host>>,
    pub tls: Option<Origination>,
    pub stats: Arc<Stats>,
    rr: AtomicUsize,
    pub cx_active: AtomicI64,
    pub rq_active: AtomicI64,
    pub rq_pending: AtomicI64,
    /// Concurrent retries (the `maxRetries` breaker).
    pub retries_active: AtomicI64,
    pub pool: crate::pool::Pool,
    /// When the outlier detector was created: its interval timer ticks at
    /// `created + k * interval`, as Envoy arms it with the cluster.
    created: Instant,
    /// Whether the interval-timer task runs (it stops when nothing is ejected or backed off).
    ticker_on: std::sync::atomic::AtomicBool,
    /// The per-request stat cells, resolved on this cluster's first request (a sidecar holds
    /// thousands of clusters that never see one, so nothing is allocated up front).
    hot: std::sync::OnceLock<Box<HotStats>>,
}

/// Cells of the stats every proxied request touches. Looking them up by name cost a string
/// build, a lock and a map search each, five times per request; the cells themselves are the
/// same atomics `/stats` renders, and each is created on first use as before.
#[derive(Default)]
struct HotStats {
    rq_total: std::sync::OnceLock<crate::stats::Counter>,
    rq_active: std::sync::OnceLock<crate::stats::Counter>,
    /// `upstream_rq_{1..5}xx`.
    class: [std::sync::OnceLock<crate::stats::Counter>; 6],
    /// `upstream_rq_<code>` for the (few) codes seen.
    codes: std::sync::Mutex<Vec<(u16, crate::stats::Counter)>>,
}

/// Envoy names the stat prefix `cluster.<name>.`.
pub fn stat(cluster: &str, s: &str) -> String {
    // Built with one exact-size allocation: `format!` cost ~1.4k instructions per call on the
    // request path (perf, bench/analysis.md).
    let mut out = String::with_capacity(9 + cluster.len() + s.len());
    out.push_str("cluster.");
    out.push_str(cluster);
    out.push('.');
    out.push_str(s);
    out
}

impl ClusterRuntime {
    pub fn new(spec: Cluster, tls: Option<Origination>, stats: Arc<Stats>) -> Self {
        let hosts = spec
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(Host {
                    address: e.address.clone(),
                    port: e.port,
                    weight: e.weight.max(1),
                    rq_active: AtomicU64::new(0),
                    rq_total: AtomicU64::new(0),
                    cx_active: AtomicI64::new(0),
                    outlier: Mutex::new(OutlierState::default()),
                })
            })
            .collect();
        for s in [
            "upstream_cx_total",
            "upstream_cx_overflow",
            "upstream_cx_connect_fail",
            "upstream_rq_total",
            "upstream_rq_pending_overflow",
        ] {
            stats.touch(&stat(&spec.name, s));
        }
        stats.gauge_add(&stat(&spec.name, "upstream_cx_active"), 0);
        ClusterRuntime {
            spec,
            hosts,
            tls,
            stats,
            rr: AtomicUsize::new(0),
            cx_active: AtomicI64::new(0),
            rq_active: AtomicI64::new(0),
            rq_pending: AtomicI64::new(0),
            retries_active: AtomicI64::new(0),
            pool: crate::pool::Pool::default(),
            created: Instant::now(),
            ticker_on: std::sync::atomic::AtomicBool::new(false),
            hot: std::sync::OnceLock::new(),
        }
    }

    fn hot(&self) -> &HotStats {
        self.hot.get_or_init(Box::default)
    }

    /// `upstream_rq_total` += 1.
    pub fn inc_rq_total(&self) {
        self.hot()
            .rq_total
            .get_or_init(|| {
                self.stats
                    .counter(&stat(&self.spec.name, "upstream_rq_total"))
            })
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The `upstream_rq_active` gauge += `d`.
    pub fn add_rq_active(&self, d: i64) {
        self.hot()
            .rq_active
            .get_or_init(|| {
                self.stats
                    .gauge(&stat(&self.spec.name, "upstream_rq_active"))
            })
            .fetch_add(d, Ordering::Relaxed);
    }

    /// `upstream_rq_<code>` and `upstream_rq_<N>xx` += 1 for a response from upstream.
    pub fn inc_rq_status(&self, status: u16) {
        let hot = self.hot();
        let class = usize::from(status / 100).min(5);
        hot.class[class]
            .get_or_init(|| {
                let mut n = *b"upstream_rq_0xx";
                n[12] = b'0' + class as u8;
                self.stats.counter(&stat(
                    &self.spec.name,
                    std::str::from_utf8(&n).unwrap_or(""),
                ))
            })
            .fetch_add(1, Ordering::Relaxed);
        let mut codes = hot.codes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = codes.iter().find(|(c, _)| *c == status) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let c = self
            .stats
            .counter(&stat(&self.spec.name, &format!("upstream_rq_{status}")));
        c.fetch_add(1, Ordering::Relaxed);
        codes.push((status, c));
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn inc(&self, s: &str) {
        self.stats.inc(&stat(&self.spec.name, s), 1);
    }

    pub fn connect_timeout(&self) -> Duration {
        self.spec
            .connect_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Pick a healthy host. ORIGINAL_DST clusters use `orig_dst` instead of endpoints.
    pub fn pick(&self, orig_dst: Option<SocketAddr>) -> Result<Arc<Host>, UpstreamError> {
        if self.spec.discovery == DiscoveryType::OriginalDst {
            let dst = orig_dst.ok_or_else(|| UpstreamError::NoHealthy(self.spec.name.clone()))?;
            return Ok(Arc::new(Host {
                address: dst.ip().to_string(),
                port: dst.port(),
                weight: 1,
                rq_active: AtomicU64::new(0),
                rq_total: AtomicU64::new(0),
                cx_active: AtomicI64::new(0),
                outlier: Mutex::new(OutlierState::default()),
            }));
        }
        let now = Instant::now();
        let healthy: Vec<&Arc<Host>> = self.hosts.iter().filter(|h| !h.ejected(now)).collect();
        if healthy.is_empty() {
            self.inc("upstream_cx_none_healthy");
            return Err(UpstreamError::NoHealthy(self.spec.name.clone()));
        }
        let h = match self.spec.lb_policy {
            LbPolicy::RoundRobin => {
                // Weighted round robin over the expanded list.
                let total: u64 = healthy.iter().map(|h| h.weight as u64).sum();
                let mut i = (self.rr.fetch_add(1, Ordering::Relaxed) as u64) % total.max(1);
                let mut pick = healthy[0];
                for h in &healthy {
                    if i < h.weight as u64 {
                        pick = h;
                        break;
                    }
                    i -= h.weight as u64;
                }
                pick
            }
            LbPolicy::Random => healthy[rand::random_range(0..healthy.len())],
            LbPolicy::LeastRequest => {
                // Power of two choices, as Envoy does by default.
                let a = healthy[rand::random_range(0..healthy.len())];
                let b = healthy[rand::random_range(0..healthy.len())];
                if b.rq_active.load(Ordering::Relaxed) < a.rq_active.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        Ok(h.clone())
    }

    /// Resolve a host to a socket address (DNS clusters resolve at connect time).
    pub async fn resolve(&self, h: &Host) -> Result<SocketAddr, UpstreamError> {
        if let Ok(ip) = h.address.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, h.port));
        }
        let q = format!("{}:{}", h.address, h.port);
        match tokio::net::lookup_host(q).await {
            Ok(mut it) => it
                .next()
                .ok_or_else(|| UpstreamError::Dns(h.address.clone(), "no addresses".into())),
            Err(e) => Err(UpstreamError::Dns(h.address.clone(), e.to_string())),
        }
    }

    /// Reserve a connection slot (maxConnections breaker). Dropping the guard releases it.
    pub fn try_reserve_cx(self: &Arc<Self>, host: &Arc<Host>) -> Result<CxGuard, UpstreamError> {
        let max = self.spec.circuit_breakers.max_connections as i64;
        let prev = self.cx_active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.cx_active.fetch_sub(1, Ordering::AcqRel);
            self.inc("upstream_cx_overflow");
            return Err(UpstreamError::Overflow(self.spec.name.clone()));
        }
        host.cx_active.fetch_add(1, Ordering::Relaxed);
        self.stats
            .gauge_add(&stat(&self.spec.name, "upstream_cx_active"), 1);
        self.inc("upstream_cx_total");
        Ok(CxGuard {
            cluster: self.clone(),
            host: host.clone(),
        })
    }

    /// Open a TCP connection (and TLS if configured) to `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: Option<&str>,
    ) -> Result<(Box<dyn Upstream>, Option<SocketAddr>, bool), UpstreamError> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| UpstreamError::Connect(addr, e))?;
        if let Some(ka) = &self.spec.tcp_keepalive {
            if let Err(e) = apply_keepalive(&sock, ka) {
                tracing::warn!(error = %e, "setting TCP keepalive failed");
            }
        }
        let _ = sock.set_nodelay(true);
        let timeout = self.connect_timeout();
        let stream = match tokio::time::timeout(timeout, sock.connect(addr)).await {
            Err(_) => {
                self.inc("upstream_cx_connect_timeout");
                self.inc("upstream_cx_connect_fail");
                return Err(UpstreamError::ConnectTimeout(addr, timeout));
            }
            Ok(Err(e)) => {
                self.inc("upstream_cx_connect_fail");
                return Err(UpstreamError::Connect(addr, e));
            }
            Ok(Ok(s)) => s,
        };
        let local = stream.local_addr().ok();
        let tls = match &self.tls {
            None => None,
            Some(o) => match o.ready() {
                Ok(t) => Some(t),
                Err(secret) => {
                    // Envoy connects, then its not-ready TLS socket closes at once.
                    drop(stream);
                    self.inc("upstream_cx_connect_fail");
                    self.inc("client_ssl_socket_factory.upstream_context_secrets_not_ready");
                    tracing::debug!(cluster = %self.spec.name, %secret, "upstream TLS secret not supplied");
                    return Err(UpstreamError::SecretNotReady(addr, secret));
                }
            },
        };
        match tls {
            None => Ok((Box::new(stream), local, self.spec.http2)),
            Some(t) => match tokio::time::timeout(timeout, t.connect(stream, sni)).await {
                Err(_) => {
                    self.inc("upstream_cx_connect_fail");
                    Err(UpstreamError::ConnectTimeout(addr, timeout))
                }
                Ok(Err(e)) => {
                    self.inc("upstream_cx_connect_fail");
                    Err(UpstreamError::Tls(addr, e))
                }
                Ok(Ok(s)) => {
                    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2") || self.spec.http2;
                    Ok((Box::new(s), local, h2))
                }
            },
        }
    }

    /// Feed one result into outlier detection. `status` is the HTTP status, or 503 for a
    /// connect failure (Envoy maps local-origin failures to 5xx when not split). Ejection is
    /// immediate; the return to service happens on the detector's interval tick.
    pub fn record_result(self: &Arc<Self>, host: &Host, status: u16) {
        let Some(od) = &self.spec.outlier_detection else {
            return;
        };
        let now = Instant::now();
        let mut eject_reason = None;
        {
            let mut g = host.outlier.lock().unwrap_or_else(|e| e.into_inner());
            if status >= 500 {
                g.consecutive_5xx += 1;
            } else {
                g.consecutive_5xx = 0;
            }
            if matches!(status, 502..=504) {
                g.consecutive_gw += 1;
            } else {
                g.consecutive_gw = 0;
            }
            if g.ejected {
                return;
            }
            if od
                .consecutive_gateway_failure
                .is_some_and(|n| n > 0 && g.consecutive_gw >= n)
            {
                eject_reason = Some("consecutive_gateway_failure");
            } else if od
                .consecutive_5xx
                .is_some_and(|n| n > 0 && g.consecutive_5xx >= n)
            {
                eject_reason = Some("consecutive_5xx");
            }
        }
        let Some(reason) = eject_reason else { return };
        self.inc(&format!("outlier_detection.ejections_detected_{reason}"));
        let n = self.hosts.len().max(1);
        let ejected = self.hosts.iter().filter(|h| h.ejected(now)).count();
        // Envoy ejects at least one host even when maxEjectionPercent rounds down to zero.
        let allowed = ejected == 0 || (ejected + 1) * 100 <= n * od.max_ejection_percent as usize;
        if !allowed {
            self.inc("outlier_detection.ejections_overflow");
            return;
        }
        let base = od.base_ejection_time.0;
        let max = od.max_ejection_time.0.max(base);
        let mut g = host.outlier.lock().unwrap_or_else(|e| e.into_inner());
        g.ejected = true;
        g.num_ejections += 1;
        g.last_ejection = Some(now);
        // Longer each time, until base * backoff reaches the max ejection time.
        if base * g.backoff < max {
            g.backoff += 1;
        }
        g.consecutive_5xx = 0;
        g.consecutive_gw = 0;
        let backoff = g.backoff;
        drop(g);
        self.inc("outlier_detection.ejections_enforced_total");
        self.inc("outlier_detection.ejections_total");
        self.inc(&format!("outlier_detection.ejections_enforced_{reason}"));
        tracing::info!(cluster = %self.spec.name, host = %host.display(), reason,
            ejection_time = ?(base * backoff).min(max), "outlier ejected");
        self.refresh_ejection_gauge();
        self.ensure_ticker();
    }

    /// One interval tick of the outlier detector (Envoy `onIntervalTimer` →
    /// `checkHostForUneject`): an ejected host returns once
    /// `now - ejection >= min(base * backoff, max(base, maxEjectionTime))`; a healthy host
    /// that stayed healthy a whole interval lowers its backoff by one.
    /// Returns whether anything is left for later ticks.
    pub fn outlier_tick(&self, now: Instant) -> bool {
        let Some(od) = &self.spec.outlier_detection else {
            return false;
        };
        let base = od.base_ejection_time.0;
        let max = od.max_ejection_time.0.max(base);
        let mut pending = false;
        for h in &self.hosts {
            let mut g = h.outlier.lock().unwrap_or_else(|e| e.into_inner());
            if !g.ejected {
                if g.backoff > 0
                    && g.last_unejection
                        .is_some_and(|t| now.saturating_duration_since(t) >= od.interval.0)
                {
                    g.backoff -= 1;
                }
                pending |= g.backoff > 0;
                continue;
            }
            let ejected_for = g
                .last_ejection
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            if ejected_for >= (base * g.backoff).min(max) {
                g.ejected = false;
                g.consecutive_5xx = 0;
                g.consecutive_gw = 0;
                g.last_unejection = Some(now);
                pending |= g.backoff > 0;
                drop(g);
                tracing::info!(cluster = %self.spec.name, host = %h.display(), "outlier ejection ended; host back in service");
            } else {
                pending = true;
            }
        }
        self.refresh_ejection_gauge();
        pending
    }

    /// Start the interval timer if it is not running. It holds only a weak reference and
    /// stops once no host is ejected or backed off, so idle clusters cost nothing.
    fn ensure_ticker(self: &Arc<Self>) {
        let Some(od) = &self.spec.outlier_detection else {
            return;
        };
        if self
            .ticker_on
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.ticker_on.store(false, Ordering::Release);
            return;
        };
        let interval = od.interval.0.max(Duration::from_millis(1));
        let created = self.created;
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                let since = Instant::now().saturating_duration_since(created);
                let k = since.as_nanos() / interval.as_nanos() + 1;
                let next = u32::try_from(k)
                    .ok()
                    .and_then(|k| interval.checked_mul(k))
                    .and_then(|d| created.checked_add(d))
                    .unwrap_or_else(|| Instant::now() + interval);
                tokio::time::sleep_until(next).await;
                let Some(c) = weak.upgrade() else { return };
                if c.outlier_tick(Instant::now()) {
                    continue;
                }
                c.ticker_on.store(false, Ordering::Release);
                // An ejection may have raced the decision to stop: keep ticking then.
                let busy = c.hosts.iter().any(|h| h.ejected(Instant::now()));
                if !busy
                    || c.ticker_on
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    return;
                }
            }
        });
    }

    pub fn refresh_ejection_gauge(&self) {
        let now = Instant::now();
        let n = self.hosts.iter().filter(|h| h.ejected(now)).count();
        self.stats.gauge_set(
            &stat(&self.spec.name, "outlier_detection.ejections_active"),
            n as i64,
        );
    }
}

/// After a config version was applied: every cluster of the previous version that the new
/// one removed or replaced (changed spec or TLS material) drains its connection pool, so
/// pooled connections of the old version (old TLS context, old certificate choice) are not
/// reused and idle ones close now; in-flight requests finish. Counts Envoy's
/// `cluster_manager.cluster_modified` / `cluster_manager.cluster_removed`.
pub fn drain_replaced(
    old: &std::collections::BTreeMap<String, Arc<ClusterRuntime>>,
    new: &std::collections::BTreeMap<String, Arc<ClusterRuntime>>,
) {
    for (name, o) in old {
        let what = match new.get(name) {
            Some(n) if Arc::ptr_eq(n, o) => continue,
            Some(_) => "cluster_manager.cluster_modified",
            None => "cluster_manager.cluster_removed",
        };
        o.stats.inc(what, 1);
        let closed = o.pool.drain();
        tracing::info!(cluster = %name, idle_closed = closed, "cluster replaced; draining its connection pool");
    }
}

/// Set SO_KEEPALIVE and TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT (Envoy `upstreamConnectionOptions.tcpKeepalive`).
pub fn apply_keepalive(sock: &TcpSocket, ka: &crate::config::TcpKeepalive) -> std::io::Result<()> {
    let sref = socket2::SockRef::from(sock);
    let mut k = socket2::TcpKeepalive::new();
    if let Some(t) = ka.keepalive_time {
        k = k.with_time(t.0);
    }
    if let Some(i) = ka.keepalive_interval {
        k = k.with_interval(i.0);
    }
    if let Some(p) = ka.keepalive_probes {
        k = k.with_retries(p);
    }
    sref.set_tcp_keepalive(&k)
}

/// Holds one `maxConnections` slot; releasing updates `upstream_cx_active`/`_destroy`.
pub struct CxGuard {
    cluster: Arc<ClusterRuntime>,
    host: Arc<Host>,
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        self.cluster.cx_active.fetch_sub(1, Ordering::AcqRel);
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
        self.cluster
            .stats
            .gauge_add(&stat(&self.cluster.spec.name, "upstream_cx_active"), -1);
        self.cluster.inc("upstream_cx_destroy");
        self.cluster.pool.notify.notify_waiters();
    }
}

/// A bidirectional byte stream to an upstream (plain TCP or TLS).
/// `Any` so the L4 relay can recognise a plain `TcpStream` and splice it (crate::relay).
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin + std::any::Any {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Upstream for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, OutlierDetection};

    fn cluster(n: usize, od: Option<OutlierDetection>) -> Arc<ClusterRuntime> {
        Arc::new(cluster_rt(n, od))
    }

    /// Advance paused time one second at a time so the interval ticker runs at each tick.
    async fn step(secs: u64) {
        for _ in 0..secs {
            tokio::time::advance(Duration::from_secs(1)).await;
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
    }

    fn cluster_rt(n: usize, od: Option<OutlierDetection>) -> ClusterRuntime {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        let mut c = Cluster::new_static("c", &addrs);
        c.outlier_detection = od;
        ClusterRuntime::new(c, None, Arc::new(Stats::default()))
    }

    #[test]
    fn keepalive_socket_options_are_set() {
        let sock = TcpSocket::new_v4().unwrap();
        let ka = crate::config::TcpKeepalive {
            keepalive_probes: Some(3),
            keepalive_time: Some(Dur::from_secs(7)),
            keepalive_interval: Some(Dur::from_secs(2)),
        };
        apply_keepalive(&sock, &ka).unwrap();
        let r = socket2::SockRef::from(&sock);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(r.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn round_robin_cycles() {
        let c = cluster(3, None);
        let ports: Vec<u16> = (0..6).map(|_| c.pick(None).unwrap().port).collect();
        assert_eq!(ports, vec![1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[tokio::test(start_paused = true)]
    async fn single_host_ejected_means_no_traffic_then_returns() {
        let od = OutlierDetection {
            consecutive_5xx: Some(2),
            base_ejection_time: Dur::from_secs(30),
            max_ejection_percent: 10,
            ..Default::default()
        };
        let c = cluster(1, Some(od));
        let h = c.pick(None).unwrap();
        c.record_result(&h, 500);
        assert!(c.pick(None).is_ok());
        c.record_result(&h, 503);
        assert!(matches!(c.pick(None), Err(UpstreamError::NoHealthy(_))));
        assert_eq!(
            c.stats.get("cluster.c.outlier_detection.ejections_active"),
            1
        );
        assert_eq!(
            c.stats
                .get("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"),
            1
        );
        // Back at the first interval tick at or after the ejection time (ticks every 10s).
        step(29).await;
        assert!(c.pick(None).is_err(), "still ejected before the 30s tick");
        step(2).await;
        assert!(c.pick(None).is_ok());
        assert_eq!(
            c.stats.get("cluster.c.outlier_detection.ejections_active"),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_gateway_errors_eject_and_backoff_grows() {
        let od = OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway_failure: Some(3),
            base_ejection_time: Dur::from_secs(10),
            max_ejection_percent: 100,
            ..Default::default()
        };
        let c = cluster(2, Some(od));
        let h = c.hosts[0].clone();
        // 500s are not gateway errors; a success resets the streak.
        for s in [500, 500, 500, 502, 503, 200, 502, 503] {
            c.record_result(&h, s);
        }
        assert!(!h.ejected(Instant::now()));
        c.record_result(&h, 504);
        assert!(h.ejected(Instant::now()));
        assert_eq!(
            c.stats
                .get("cluster.c.outlier_detection.ejections_enforced_consecutive_gateway_failure"),
            1
        );
        // Traffic goes to the other host only.
        for _ in 0..4 {
            assert_eq!(c.pick(None).unwrap().port, 1001);
        }
        step(11).await;
        assert!(!h.ejected(Instant::now()));
        for s in [502, 502, 502] {
            c.record_result(&h, s);
        }
        // Second ejection (at t=11) lasts base * 2 = 20s: back at the t=40 tick.
        step(28).await;
        assert!(h.ejected(Instant::now()), "t=39");
        step(2).await;
        assert!(!h.ejected(Instant::now()), "t=41");
        assert_eq!(h.num_ejections(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_limits() {
        let od = OutlierDetection {
            consecutive_5xx: Some(1),
            max_ejection_percent: 50,
            ..Default::default()
        };
        let c = cluster(4, Some(od));
        for h in c.hosts.clone() {
            c.record_result(&h, 500);
        }
        let now = Instant::now();
        assert_eq!(c.hosts.iter().filter(|h| h.ejected(now)).count(), 2);
        assert_eq!(
            c.stats
                .get("cluster.c.outlier_detection.ejections_overflow"),
            2
        );
    }

    #[test]
    fn max_connections_breaker() {
        let mut c = cluster_rt(1, None);
        c.spec.circuit_breakers.max_connections = 1;
        let c = Arc::new(c);
        let h = c.pick(None).unwrap();
        let g = c.try_reserve_cx(&h).unwrap();
        assert!(matches!(
            c.try_reserve_cx(&h),
            Err(UpstreamError::Overflow(_))
        ));
        assert_eq!(c.stats.get("cluster.c.upstream_cx_overflow"), 1);
        drop(g);
        assert!(c.try_reserve_cx(&h).is_ok());
    }

    /// Envoy un-ejects on the interval timer, which ticks from the detector's creation:
    /// ejected at t=3 for 15s, the host is still out at t=19 and back after the t=20 tick.
    #[tokio::test(start_paused = true)]
    async fn uneject_happens_on_the_interval_tick() {
        let od = OutlierDetection {
            consecutive_5xx: Some(1),
            interval: Dur::from_secs(10),
            base_ejection_time: Dur::from_secs(15),
            max_ejection_percent: 100,
            ..Default::default()
        };
        let c = cluster(2, Some(od));
        let h = c.hosts[0].clone();
        step(3).await;
        c.record_result(&h, 503);
        assert!(h.ejected(Instant::now()));
        let active = || c.stats.get("cluster.c.outlier_detection.ejections_active");
        assert_eq!(active(), 1);
        step(16).await; // t=19: 16s ejected, but no tick since t=10
        assert!(h.ejected(Instant::now()));
        assert_eq!(active(), 1);
        step(2).await; // t=21: the t=20 tick returned it
        assert!(!h.ejected(Instant::now()));
        assert_eq!(active(), 0);
        assert_eq!(
            c.stats
                .get("cluster.c.outlier_detection.ejections_enforced_total"),
            1
        );
    }

    /// The multiplier grows per ejection but the ejection never exceeds maxEjectionTime
    /// (when that is above the base), and healthy intervals lower it again.
    #[tokio::test(start_paused = true)]
    async fn max_ejection_time_caps_and_healthy_intervals_decay_backoff() {
        let od = OutlierDetection {
            consecutive_5xx: Some(1),
            interval: Dur::from_secs(1),
            base_ejection_time: Dur::from_secs(10),
            max_ejection_time: Dur::from_secs(15),
            max_ejection_percent: 100,
            ..Default::default()
        };
        let c = cluster(1, Some(od));
        let h = c.hosts[0].clone();
        // Ejection 1: 10s.
        c.record_result(&h, 500);
        step(9).await;
        assert!(h.ejected(Instant::now()));
        step(1).await; // the t=10 tick returns it
        assert!(!h.ejected(Instant::now()));
        // Ejection 2 in the same interval (a healthy interval would lower the multiplier):
        // min(10 * 2, 15) = 15s, not 20s.
        c.record_result(&h, 500);
        step(14).await;
        assert!(h.ejected(Instant::now()));
        step(2).await;
        assert!(!h.ejected(Instant::now()), "capped at maxEjectionTime");
        // Healthy for many intervals: the multiplier decays to zero, so the next ejection
        // is the base time again.
        step(30).await;
        c.record_result(&h, 500);
        step(9).await;
        assert!(h.ejected(Instant::now()));
        step(2).await;
        assert!(!h.ejected(Instant::now()), "back to baseEjectionTime");
        assert_eq!(h.num_ejections(), 3);
    }
}
