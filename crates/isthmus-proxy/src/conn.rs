//! Per-connection pipeline: accept → original destination → ClientHello peek → filter-chain
//! match → (TLS termination) → TCP proxy / passthrough / HTTP. Each connection reads the
//! runtime once at accept, so it finishes on the config version it started with.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accesslog::LogEntry;
use crate::cluster::{ClusterRuntime, CxGuard, Upstream, UpstreamError};
use crate::config::{ChainAction, Direction, WeightedCluster};
use crate::peek::{self, Peek, PrefixedStream};
pub use crate::relay::Down;
use crate::relay::{EndReason, Relay};
use crate::runtime::{ConnFacts, Runtime};
use crate::stats::Counter;
use crate::telemetry::{self, StreamFacts};
use crate::Shared;

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(15);
/// Downstream TLS handshake deadline (Istio's `transportSocketConnectTimeout`, 15s).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy tcp_proxy default idle timeout.
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);

pub async fn accept_loop(
    sh: Arc<Shared>,
    name: String,
    l: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Built once per listener, not per connection (stat names, the bound address).
    let names = Arc::new(ListenerNames::new(&sh, name, l.local_addr().ok()));
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    let rt = sh.runtime.load_full();
                    let setup = Box::pin(handle(sh.clone(), rt, names.clone(), s, peer));
                    tokio::spawn(conn_task(setup));
                }
                Err(e) => {
                    tracing::warn!(listener = %names.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// A connection's task. The setup (peek, TLS, upstream connect, or a whole HTTP connection)
/// runs boxed and is freed when it returns; an L4 connection then lives on as [`L4Conn`] plus
/// one timer, so the task of an idle passthrough connection holds only that (issue #10).
async fn conn_task<F: std::future::Future<Output = Option<L4Conn>>>(setup: Pin<Box<F>>) {
    let Some(mut c) = setup.await else {
        return;
    };
    let sleep = tokio::time::sleep_until(c.relay.next_timer());
    tokio::pin!(sleep);
    let why = std::future::poll_fn(|cx| c.relay.poll_relay(cx, sleep.as_mut())).await;
    c.finish(why);
}

/// Per-listener names, shared by its connections.
pub struct ListenerNames {
    pub name: String,
    /// `listener.<addr>_<port>.downstream_cx_total` and `..._active` (Envoy names listener
    /// stats after the bound address): the cells themselves, so a connection bumps atomics
    /// instead of looking names up under the stats lock.
    cx_total: Counter,
    cx_active: Counter,
    no_match: String,
    ssl_error: String,
    /// The bound address when it is a specific one: then it is every accepted socket's local
    /// address, and no `getsockname` is needed per connection.
    fixed_local: Option<SocketAddr>,
}

impl ListenerNames {
    fn new(sh: &Shared, name: String, bound: Option<SocketAddr>) -> ListenerNames {
        let prefix = match bound {
            Some(a) => format!("listener.{}_{}", a.ip(), a.port()),
            None => format!("listener.{name}"),
        };
        ListenerNames {
            cx_total: sh.stats.counter(&format!("{prefix}.downstream_cx_total")),
            cx_active: sh.stats.gauge(&format!("{prefix}.downstream_cx_active")),
            no_match: format!("{prefix}.no_filter_chain_match"),
            ssl_error: format!("{prefix}.ssl.connection_error"),
            fixed_local: bound.filter(|a| !a.ip().is_unspecified() && a.port() != 0),
            name,
        }
    }
}

/// Everything known about a downstream connection.
#[derive(Clone)]
pub struct ConnCtx {
    pub sh: Arc<Shared>,
    pub rt: Arc<Runtime>,
    pub listener: String,
    pub direction: Direction,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
    pub sni: Option<String>,
    pub peer_principal: Option<String>,
    pub tls_terminated: bool,
    pub start: SystemTime,
    pub started: Instant,
}

impl ConnCtx {
    fn tcp_entry(&self) -> LogEntry {
        LogEntry {
            start_time: Some(self.start),
            downstream_local_address: Some(self.local),
            downstream_remote_address: Some(self.peer),
            requested_server_name: self.sni.clone(),
            ..Default::default()
        }
    }
}

/// Setup of one connection. Returns the L4 relay to run when the chain is an L4 one (the HTTP
/// path serves the whole connection inside and returns `None`).
async fn handle(
    sh: Arc<Shared>,
    rt: Arc<Runtime>,
    names: Arc<ListenerNames>,
    s: TcpStream,
    peer: SocketAddr,
) -> Option<L4Conn> {
    let l = rt.listeners.get(&names.name).cloned()?;
    let _ = s.set_nodelay(true);
    let sock_local = match names.fixed_local {
        Some(a) => a,
        None => s.local_addr().unwrap_or(l.spec.address),
    };
    let orig = if l.spec.use_original_dst || l.spec.original_dst_filter {
        sh.orig_dst.lookup(&s, sock_local, peer)
    } else {
        None
    };
    // Envoy restores the original destination as the downstream local address.
    let local = orig.unwrap_or(sock_local);
    // A capture listener hands the connection to the (unbound) listener owning the original
    // destination, exact address first, then the wildcard address on that port.
    let l = match orig {
        Some(dst) if l.spec.use_original_dst => rt.virtual_listener_for(dst).unwrap_or(l),
        _ => l,
    };
    names.cx_total.fetch_add(1, Ordering::Relaxed);
    let active = ActiveCx::new(&names.cx_active);
    let mut ctx = ConnCtx {
        sh: sh.clone(),
        rt: rt.clone(),
        listener: names.name.clone(),
        direction: l.spec.direction,
        local,
        peer,
        orig_dst: orig,
        sni: None,
        peer_principal: None,
        tls_terminated: false,
        start: SystemTime::now(),
        started: Instant::now(),
    };
    let mut s = s;
    let mut facts = ConnFacts {
        dst_port: local.port(),
        dst_ip: Some(local.ip()),
        src_ip: Some(peer.ip()),
        ..Default::default()
    };
    let mut prefix = Vec::new();
    if l.needs_peek {
        let timeout = l
            .spec
            .listener_filters_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_PEEK_TIMEOUT);
        // Boxed, like the TLS handshake and the upstream connect below: this setup future is
        // sized for its largest await point.
        match Box::pin(peek::peek_stream(&mut s, timeout)).await {
            Ok(p) => {
                match p.result {
                    Peek::Tls(info) => {
                        facts.tls = true;
                        facts.sni = info.sni.clone();
                        facts.alpn = info.alpn;
                        ctx.sni = info.sni;
                    }
                    Peek::TooLarge => {
                        sh.stats.inc("tls_inspector.client_hello_too_large", 1);
                        return None;
                    }
                    _ => sh.stats.inc("tls_inspector.tls_not_found", 1),
                }
                prefix = p.bytes;
            }
            Err(_) => return None,
        }
    }
    let Some(chain) = l.select(&facts) else {
        sh.stats.inc(&names.no_match, 1);
        let mut e = ctx.tcp_entry();
        e.add_flag("NR");
        e.bytes_received = prefix.len() as u64;
        e.duration_ms = ctx.started.elapsed().as_millis() as u64;
        sh.log.load().write(&e);
        // Reset rather than FIN: the client sees the handshake fail (curl exit 35).
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        return None;
    };
    drop(facts);
    let is_http = matches!(chain.spec.action, ChainAction::Http(_));
    let down: Down = match &chain.tls {
        // Nothing terminates TLS on an L4 chain: keep the raw socket so the relay can splice.
        None if !is_http => Down::Tcp(s, prefix),
        None => Down::Io(Box::new(PrefixedStream::new(prefix, s))),
        Some(cfg) => {
            let down: Box<dyn Upstream> = Box::new(PrefixedStream::new(prefix, s));
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, Box::pin(cfg.accept(down)))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                }) {
                Ok(t) => {
                    let conn = t.get_ref().1;
                    ctx.peer_principal = isthmus_tls::peer_spiffe_id(conn);
                    if ctx.sni.is_none() {
                        ctx.sni = conn.server_name().map(|s| s.to_string());
                    }
                    ctx.tls_terminated = true;
                    Down::Io(Box::new(t))
                }
                Err(e) => {
                    sh.stats.inc(&names.ssl_error, 1);
                    tracing::debug!(error = %e, peer = %peer, "downstream TLS handshake failed");
                    return None;
                }
            }
        }
    };
    // The HTTP path is boxed so L4 setups do not carry hyper's connection state.
    match &chain.spec.action {
        ChainAction::TcpProxy(t) => {
            let cluster = pick_weighted(t.cluster.as_deref(), &t.weighted_clusters);
            let attempts = t.max_connect_attempts.unwrap_or(1).max(1);
            let idle = t.idle_timeout.map(|d| d.0).unwrap_or(DEFAULT_TCP_IDLE);
            let max = t.max_downstream_connection_duration.map(|d| d.0);
            tcp_open(ctx, active, down, &cluster, attempts, idle, max).await
        }
        ChainAction::Passthrough(_) => {
            tcp_open(
                ctx,
                active,
                down,
                "PassthroughCluster",
                1,
                DEFAULT_TCP_IDLE,
                None,
            )
            .await
        }
        ChainAction::Http(h) => {
            if let (Some(routes), Down::Io(down)) = (chain.routes.clone(), down) {
                Box::pin(crate::http::serve(
                    ctx,
                    down,
                    routes,
                    h.idle_timeout.map(|d| d.0),
                ))
                .await;
            }
            drop(active);
            None
        }
    }
}

/// `listener.<addr>.downstream_cx_active` for the lifetime of a connection (drain visibility).
struct ActiveCx(Counter);

impl ActiveCx {
    fn new(gauge: &Counter) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        ActiveCx(gauge.clone())
    }
}

impl Drop for ActiveCx {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Weighted random choice (Envoy weighted_clusters).
pub fn pick_weighted(single: Option<&str>, w: &[WeightedCluster]) -> String {
    if let Some(c) = single {
        return c.to_string();
    }
    let total: u64 = w.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return w.first().map(|c| c.name.clone()).unwrap_or_default();
    }
    let mut r = rand::random_range(0..total);
    for c in w {
        if r < c.weight as u64 {
            return c.name.clone();
        }
        r -= c.weight as u64;
    }
    w.last().map(|c| c.name.clone()).unwrap_or_default()
}

/// Pick and connect the upstream of an L4 chain. Failures are logged here; success returns the
/// connection's compact long-lived state.
async fn tcp_open(
    ctx: ConnCtx,
    active: ActiveCx,
    down: Down,
    cluster_name: &str,
    attempts: u32,
    idle: Duration,
    max_downstream: Option<Duration>,
) -> Option<L4Conn> {
    let sh = ctx.sh.clone();
    let cluster = ctx.rt.clusters.get(cluster_name).cloned().or_else(|| {
        // PassthroughCluster is implicit for the Passthrough action.
        (cluster_name == "PassthroughCluster").then(|| {
            let mut c = crate::config::Cluster::new_static("PassthroughCluster", &[]);
            c.discovery = crate::config::DiscoveryType::OriginalDst;
            Arc::new(ClusterRuntime::new(c, None, sh.stats.clone()))
        })
    });
    // The log entry exists only on the failure paths; a relayed connection keeps compact facts.
    let failed = |flags: &[&'static str], host: Option<SocketAddr>, reason: Option<String>| {
        let mut e = ctx.tcp_entry();
        e.upstream_cluster = Some(cluster_name.to_string());
        for f in flags {
            e.add_flag(f);
        }
        e.upstream_host = host;
        e.upstream_transport_failure_reason = reason;
        e
    };
    let Some(cluster) = cluster else {
        drop(active);
        finish_tcp(&ctx, failed(&["NC"], None, None), None);
        return None;
    };
    let dst = ctx.orig_dst.or(Some(ctx.local));
    let mut tries = 0;
    let mut last_host = None;
    let (up, guard, upstream_host, local) = loop {
        tries += 1;
        let host = match cluster.pick(dst) {
            Ok(h) => h,
            Err(err) => {
                drop(active);
                finish_tcp(&ctx, failed(&[err.flag()], last_host, None), Some(&cluster));
                return None;
            }
        };
        let guard = match cluster.try_reserve_cx(&host) {
            Ok(g) => g,
            Err(err) => {
                drop(active);
                finish_tcp(&ctx, failed(&[err.flag()], last_host, None), Some(&cluster));
                return None;
            }
        };
        let res: Result<_, UpstreamError> = Box::pin(async {
            let addr = cluster.resolve(&host).await?;
            let (io, local, _) = cluster.connect(addr, None).await?;
            Ok((io, addr, local))
        })
        .await;
        match res {
            Ok((io, addr, local)) => {
                cluster.record_result(&host, 200);
                break (io, guard, addr, local);
            }
            Err(err) => {
                cluster.record_result(&host, 503);
                tracing::debug!(error = %err, "tcp upstream connect failed");
                if let Ok(a) = Box::pin(cluster.resolve(&host)).await {
                    last_host = Some(a);
                }
                if tries >= attempts {
                    drop(guard);
                    drop(active);
                    let flags: &[&'static str] = if attempts > 1 {
                        &[err.flag(), "URX"]
                    } else {
                        &[err.flag()]
                    };
                    let e = failed(flags, last_host, err.transport_reason());
                    finish_tcp(&ctx, e, Some(&cluster));
                    return None;
                }
            }
        }
    };
    let opened = StreamFacts {
        node: &ctx.rt.config.node,
        direction: ctx.direction,
        cluster_name: Some(cluster.name()),
        cluster: Some(&cluster),
        route_name: None,
        authority: ctx.sni.as_deref(),
        peer_principal: ctx.peer_principal.as_deref(),
        protocol: "tcp",
        response_code: None,
        flags: "-".into(),
    };
    telemetry::record_tcp_opened(&sh.stats, &opened);
    // The sooner of the cluster's maxConnectionDuration and the filter's downstream limit.
    let max_dur = match (
        cluster.spec.max_connection_duration.map(|d| d.0),
        max_downstream,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let ConnCtx {
        rt,
        direction,
        local: down_local,
        peer,
        sni,
        peer_principal,
        started,
        ..
    } = ctx;
    Some(L4Conn {
        relay: Relay::new(
            down,
            up,
            tokio::time::Instant::from_std(started),
            idle,
            max_dur,
        ),
        close: TcpClose {
            sh,
            active,
            rt,
            cluster,
            _guard: guard,
            log: Box::new(LogFacts {
                local: Addr::from(down_local),
                peer: Addr::from(peer),
                upstream_host: Addr::from(upstream_host),
                upstream_local: local.map(Addr::from),
                sni: sni.map(String::into_boxed_str),
                peer_principal: peer_principal.map(String::into_boxed_str),
            }),
            direction,
        },
    })
}

/// An established L4 connection: the relay and what its close needs. This is what every idle
/// passthrough connection holds, so it is kept compact (no log entry, no connection context,
/// no buffers); the size test in this module keeps it from growing back.
pub(crate) struct L4Conn {
    relay: Relay,
    close: TcpClose,
}

/// The facts the access-log line and the close metrics need, gathered at connect time.
struct TcpClose {
    sh: Arc<Shared>,
    /// Dropped before the line is written, so the gauge is settled when the line appears.
    active: ActiveCx,
    /// The config version the connection started with (node identity for the metrics).
    rt: Arc<Runtime>,
    cluster: Arc<ClusterRuntime>,
    /// The `maxConnections` slot.
    _guard: CxGuard,
    /// Boxed: the connection's task then fits tokio's 512-byte task size class (a task is its
    /// future plus ~104 bytes, allocated in 128-byte steps); these 96 bytes cost 96 apart.
    log: Box<LogFacts>,
    direction: Direction,
}

/// Addresses and names for the log line and the labels, read only at close.
struct LogFacts {
    local: Addr,
    peer: Addr,
    upstream_host: Addr,
    upstream_local: Option<Addr>,
    sni: Option<Box<str>>,
    peer_principal: Option<Box<str>>,
}

impl L4Conn {
    /// Counters, metrics and the access-log line once the relay ended.
    fn finish(self, why: EndReason) {
        let L4Conn { relay, close } = self;
        let (rx, tx) = (relay.rx, relay.tx);
        let elapsed = relay.elapsed();
        let duration_ms = elapsed.as_millis() as u64;
        // The start time is derived, not held: one clock read at close instead of 16 bytes
        // per connection.
        let start = SystemTime::now()
            .checked_sub(elapsed)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // Close both sockets first (as the relay ending does in Envoy), then the slots.
        drop(relay);
        let TcpClose {
            sh,
            active,
            rt,
            cluster,
            _guard,
            log,
            direction,
        } = close;
        let LogFacts {
            local,
            peer,
            upstream_host,
            upstream_local,
            sni,
            peer_principal,
        } = *log;
        drop(_guard);
        drop(active);
        cluster.stats.inc(
            &crate::cluster::stat(cluster.name(), "upstream_cx_tx_bytes_total"),
            rx,
        );
        cluster.stats.inc(
            &crate::cluster::stat(cluster.name(), "upstream_cx_rx_bytes_total"),
            tx,
        );
        let mut e = LogEntry {
            start_time: Some(start),
            downstream_local_address: Some(local.get()),
            downstream_remote_address: Some(peer.get()),
            requested_server_name: sni.as_deref().map(str::to_string),
            upstream_cluster: Some(cluster.name().to_string()),
            upstream_host: Some(upstream_host.get()),
            upstream_local_address: upstream_local.map(|a| a.get()),
            bytes_received: rx,
            bytes_sent: tx,
            duration_ms,
            ..Default::default()
        };
        if why == Some("DT") {
            e.add_flag("DT");
        }
        let f = StreamFacts {
            node: &rt.config.node,
            direction,
            cluster_name: Some(cluster.name()),
            cluster: Some(&cluster),
            route_name: None,
            authority: sni.as_deref(),
            peer_principal: peer_principal.as_deref(),
            protocol: "tcp",
            response_code: None,
            flags: e.flags(),
        };
        telemetry::record_tcp_closed(&sh.stats, &f, rx, tx);
        sh.log.load().write(&e);
    }
}

/// A socket address in 16 bytes instead of 32: IPv4 inline, IPv6 boxed. Four of them live as
/// long as each L4 connection.
enum Addr {
    V4([u8; 4], u16),
    V6(Box<std::net::SocketAddrV6>),
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Addr {
        match a {
            SocketAddr::V4(v4) => Addr::V4(v4.ip().octets(), v4.port()),
            SocketAddr::V6(v6) => Addr::V6(Box::new(v6)),
        }
    }
}

impl Addr {
    fn get(&self) -> SocketAddr {
        match self {
            Addr::V4(ip, port) => SocketAddr::from((*ip, *port)),
            Addr::V6(v6) => SocketAddr::V6(**v6),
        }
    }
}

/// Record TCP metrics and write the access log line for a connection that never relayed.
fn finish_tcp(ctx: &ConnCtx, mut e: LogEntry, cluster: Option<&Arc<ClusterRuntime>>) {
    e.duration_ms = ctx.started.elapsed().as_millis() as u64;
    let f = StreamFacts {
        node: &ctx.rt.config.node,
        direction: ctx.direction,
        cluster_name: e.upstream_cluster.as_deref(),
        cluster: cluster.map(|c| c.as_ref()),
        route_name: None,
        authority: ctx.sni.as_deref(),
        peer_principal: ctx.peer_principal.as_deref(),
        protocol: "tcp",
        response_code: None,
        flags: e.flags(),
    };
    if e.upstream_local_address.is_some() {
        telemetry::record_tcp_closed(&ctx.sh.stats, &f, e.bytes_received, e.bytes_sent);
    }
    ctx.sh.log.load().write(&e);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle L4 connection is this task plus two socket registrations (tokio: 256 bytes
    /// each) and its boxed log facts; issue #10's budget is 1.1 KiB per idle passthrough
    /// connection in all. A tokio task is its future plus 104 bytes, allocated in 128-byte
    /// steps, so the future must stay within 408 bytes to keep the task at 512 (measured:
    /// 392). Deterministic: it fails when the idle state grows back instead of flaking.
    #[test]
    fn idle_connection_state_stays_small() {
        let l4 = std::mem::size_of::<L4Conn>();
        let close = std::mem::size_of::<TcpClose>();
        let task = std::mem::size_of_val(&conn_task(Box::pin(async { None::<L4Conn> })));
        assert!(std::mem::size_of::<Addr>() <= 16);
        assert!(std::mem::size_of::<LogFacts>() <= 96);
        assert!(close <= 64, "TcpClose is {close} bytes");
        assert!(l4 <= 256, "L4Conn is {l4} bytes");
        assert!(task <= 408, "the connection task's future is {task} bytes");
    }
}
