//! Per-connection pipeline: accept → original destination → ClientHello peek → filter-chain
//! match → (TLS termination) → TCP proxy / passthrough / HTTP. Each connection reads the
//! runtime once at accept, so it finishes on the config version it started with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accesslog::LogEntry;
use crate::cluster::{ClusterRuntime, Upstream, UpstreamError};
use crate::config::{ChainAction, Direction, WeightedCluster};
use crate::peek::{self, Peek, PrefixedStream};
pub use crate::relay::Down;
use crate::runtime::{ConnFacts, Runtime};
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
    // Envoy names listener stats after the bound address: `listener.0.0.0.0_15001.`.
    let lstat: Arc<str> = match l.local_addr() {
        Ok(a) => Arc::from(format!("listener.{}_{}", a.ip(), a.port()).as_str()),
        Err(_) => Arc::from(format!("listener.{name}").as_str()),
    };
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    let rt = sh.runtime.load_full();
                    let sh = sh.clone();
                    let name = name.clone();
                    let lstat = lstat.clone();
                    tokio::spawn(async move { handle(sh, rt, name, lstat, s, peer).await });
                }
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
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

async fn handle(
    sh: Arc<Shared>,
    rt: Arc<Runtime>,
    name: String,
    lstat: Arc<str>,
    s: TcpStream,
    peer: SocketAddr,
) {
    let Some(l) = rt.listeners.get(&name).cloned() else {
        return;
    };
    let _ = s.set_nodelay(true);
    let sock_local = s.local_addr().unwrap_or(l.spec.address);
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
    sh.stats.inc(&format!("{lstat}.downstream_cx_total"), 1);
    let _active = ActiveCx::new(sh.clone(), format!("{lstat}.downstream_cx_active"));
    let mut ctx = ConnCtx {
        sh: sh.clone(),
        rt: rt.clone(),
        listener: name.clone(),
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
        // Boxed (like the TLS handshake and the upstream connect below): a connection's task
        // is sized for its largest await point, and these states are over before the
        // connection settles into its long (mostly idle) relay or keep-alive phase.
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
                        return;
                    }
                    _ => sh.stats.inc("tls_inspector.tls_not_found", 1),
                }
                prefix = p.bytes;
            }
            Err(_) => return,
        }
    }
    let Some(chain) = l.select(&facts) else {
        sh.stats.inc(&format!("{lstat}.no_filter_chain_match"), 1);
        let mut e = ctx.tcp_entry();
        e.add_flag("NR");
        e.bytes_received = prefix.len() as u64;
        e.duration_ms = ctx.started.elapsed().as_millis() as u64;
        sh.log.load().write(&e);
        // Reset rather than FIN: the client sees the handshake fail (curl exit 35).
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        return;
    };
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
                    sh.stats.inc(&format!("{lstat}.ssl.connection_error"), 1);
                    tracing::debug!(error = %e, peer = %peer, "downstream TLS handshake failed");
                    return;
                }
            }
        }
    };
    // The L4 and HTTP paths are boxed so a connection's task is only as large as the path it
    // takes (an idle passthrough connection should not carry hyper's connection state).
    match &chain.spec.action {
        ChainAction::TcpProxy(t) => {
            let cluster = pick_weighted(t.cluster.as_deref(), &t.weighted_clusters);
            let attempts = t.max_connect_attempts.unwrap_or(1).max(1);
            let idle = t.idle_timeout.map(|d| d.0).unwrap_or(DEFAULT_TCP_IDLE);
            let max = t.max_downstream_connection_duration.map(|d| d.0);
            Box::pin(tcp_proxy(ctx, down, &cluster, attempts, idle, max)).await;
        }
        ChainAction::Passthrough(_) => {
            Box::pin(tcp_proxy(
                ctx,
                down,
                "PassthroughCluster",
                1,
                DEFAULT_TCP_IDLE,
                None,
            ))
            .await;
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
        }
    }
}

/// `listener.<addr>.downstream_cx_active` for the lifetime of a connection (drain visibility).
struct ActiveCx(Arc<Shared>, String);

impl ActiveCx {
    fn new(sh: Arc<Shared>, name: String) -> Self {
        sh.stats.gauge_add(&name, 1);
        ActiveCx(sh, name)
    }
}

impl Drop for ActiveCx {
    fn drop(&mut self) {
        self.0.stats.gauge_add(&self.1, -1);
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

async fn tcp_proxy(
    ctx: ConnCtx,
    down: Down,
    cluster_name: &str,
    attempts: u32,
    idle: Duration,
    max_downstream: Option<Duration>,
) {
    let sh = ctx.sh.clone();
    let mut e = ctx.tcp_entry();
    e.upstream_cluster = Some(cluster_name.to_string());
    let cluster = ctx.rt.clusters.get(cluster_name).cloned().or_else(|| {
        // PassthroughCluster is implicit for the Passthrough action.
        (cluster_name == "PassthroughCluster").then(|| {
            let mut c = crate::config::Cluster::new_static("PassthroughCluster", &[]);
            c.discovery = crate::config::DiscoveryType::OriginalDst;
            Arc::new(ClusterRuntime::new(c, None, sh.stats.clone()))
        })
    });
    let Some(cluster) = cluster else {
        e.add_flag("NC");
        finish_tcp(&ctx, e, None);
        return;
    };
    let dst = ctx.orig_dst.or(Some(ctx.local));
    let mut tries = 0;
    let (up, guard, host, local) = loop {
        tries += 1;
        let host = match cluster.pick(dst) {
            Ok(h) => h,
            Err(err) => {
                e.add_flag(err.flag());
                finish_tcp(&ctx, e, Some(&cluster));
                return;
            }
        };
        let guard = match cluster.try_reserve_cx(&host) {
            Ok(g) => g,
            Err(err) => {
                e.add_flag(err.flag());
                finish_tcp(&ctx, e, Some(&cluster));
                return;
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
                e.upstream_host = Some(addr);
                break (io, guard, host, local);
            }
            Err(err) => {
                cluster.record_result(&host, 503);
                tracing::debug!(error = %err, "tcp upstream connect failed");
                if let Ok(a) = Box::pin(cluster.resolve(&host)).await {
                    e.upstream_host = Some(a);
                }
                if tries >= attempts {
                    e.add_flag(err.flag());
                    if attempts > 1 {
                        e.add_flag("URX");
                    }
                    e.upstream_transport_failure_reason = err.transport_reason();
                    finish_tcp(&ctx, e, Some(&cluster));
                    return;
                }
            }
        }
    };
    e.upstream_local_address = local;
    cluster.record_result(&host, 200);
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
    let (rx, tx, why) = crate::relay::relay(down, up, idle, max_dur).await;
    drop(guard);
    e.bytes_received = rx;
    e.bytes_sent = tx;
    if why == Some("DT") {
        e.add_flag("DT");
    }
    cluster.stats.inc(
        &crate::cluster::stat(cluster.name(), "upstream_cx_tx_bytes_total"),
        rx,
    );
    cluster.stats.inc(
        &crate::cluster::stat(cluster.name(), "upstream_cx_rx_bytes_total"),
        tx,
    );
    finish_tcp(&ctx, e, Some(&cluster));
}

/// Record TCP metrics and write the access log line for a finished connection.
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
