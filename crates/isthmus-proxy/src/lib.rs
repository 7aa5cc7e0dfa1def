//! isthmus-proxy: the data plane.
//!
//! Runs the proxy's runtime config ([`config::ProxyConfig`]): listeners with filter chains
//! matched on destination port / SNI / transport protocol / ALPN (ClientHello peek in
//! [`peek`]), L4 TCP proxying and SNI passthrough, TLS termination and origination, an
//! HTTP/1.1 + HTTP/2 router with upstream pools, Envoy circuit breakers and outlier
//! detection, Istio-format access logs, Istio standard metrics and an Envoy-like admin API.
//!
//! # Public API
//! * [`run_proxy`]`(`[`ProxyOptions`]`)` — what `isthmus proxy` calls; serves until
//!   `POST /quitquitquit`, SIGINT or SIGTERM.
//! * [`Proxy::start`] → handle: [`Proxy::update`] (ACK, or NACK with [`ConfigError`] and the
//!   old config keeps serving), [`Proxy::listener_addr`] (port-0 binds), [`Proxy::admin_addr`],
//!   [`Proxy::stats`], [`Proxy::set_config_dump`], [`Proxy::shutdown`], [`Proxy::wait`].
//! * Config: [`config::ProxyConfig`] (own JSON, see `examples/egress-gateway.json`), loaded by
//!   [`load_config_file`] / [`load_config_file_with_dump`], which also accept a compiled
//!   `isthmus-xds` bundle and convert it with [`xds::from_xds`]. SDS secrets the bundle does
//!   not carry (`default`, `ROOTCA`) must be appended to `ProxyConfig::secrets` by the caller.
//! * Tests/embedding: [`OrigDst::Injected`] replaces `SO_ORIGINAL_DST`;
//!   [`AccessLogSink::memory`] captures access log lines.
//!
//! Listeners with `bindToPort: false` receive connections from a `useOriginalDst` listener
//! whose original destination matches their address (Envoy's virtual listeners).

pub mod accesslog;
pub mod admin;

/// The global allocator for binaries that run the proxy (`isthmus` declares it as its
/// `#[global_allocator]`; a library must not impose one). mimalloc's per-thread free lists
/// make the proxy's many short-lived small allocations (headers, request state) several times
/// cheaper than glibc malloc, which took ~20% of the instructions per proxied request.
pub mod alloc {
    pub use mimalloc::MiMalloc as Allocator;

    /// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). mimalloc
    /// madvises its arenas for huge pages, so the heap grows in 2 MiB steps: a proxy holding
    /// 1000 idle connections (~1 MB of state) reads as 2 MiB more RSS and starts ~5 MB larger.
    /// Call it first thing in `main`, before the heap grows: pages already faulted in as huge
    /// pages stay so. Returns the OS error if the kernel refuses (memory use is then only less
    /// tight; nothing else depends on it).
    pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers; it only sets a
        // per-process flag inherited by children.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn thp_disable_flag_is_set_for_the_process() {
            super::disable_transparent_huge_pages().expect("prctl");
            // SAFETY: PR_GET_THP_DISABLE takes no pointers and returns the flag.
            let v = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(v, 1);
        }
    }
}
pub mod cluster;
pub mod config;
pub mod conn;
pub mod cors;
pub mod fuzz_logic;
pub mod h1;
pub mod http;
pub mod origdst;
pub mod peek;
pub mod pool;
pub mod relay;
pub mod runtime;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod xds;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use accesslog::AccessLogSink;
pub use config::{ConfigError, ProxyConfig};
pub use origdst::OrigDst;
use runtime::Runtime;
use stats::Stats;

/// Applies a `/logging?level=` request; returns the new level description.
pub type LogLevelHook = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Errors from starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {what} on {addr}: {source} (hint: is another proxy or Envoy running? ports < 1024 need root)")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open access log: {0}")]
    AccessLog(std::io::Error),
}

/// How to run the proxy.
#[derive(Clone)]
pub struct ProxyOptions {
    pub config: ProxyConfig,
    /// Admin server address (Envoy default 127.0.0.1:15000); `None` disables it.
    pub admin_addr: Option<SocketAddr>,
    /// JSON served on `/config_dump` (e.g. the compiled xDS config); defaults to the runtime config.
    pub config_dump: Option<serde_json::Value>,
    /// Override the access log destination (tests); else `config.access_log` (or off).
    pub access_log: Option<AccessLogSink>,
    pub orig_dst: OrigDst,
    /// Called by `POST /logging?level=...`; return the new level description or an error.
    pub log_level_hook: Option<LogLevelHook>,
}

impl ProxyOptions {
    pub fn new(config: ProxyConfig) -> Self {
        ProxyOptions {
            config,
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 15000))),
            config_dump: None,
            access_log: None,
            orig_dst: OrigDst::Socket,
            log_level_hook: None,
        }
    }
}

struct RunningListener {
    address: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

/// State shared by every task of one proxy.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub stats: Arc<Stats>,
    pub log: ArcSwap<AccessLogSink>,
    log_override: bool,
    pub orig_dst: OrigDst,
    listeners: Mutex<BTreeMap<String, RunningListener>>,
    pub config_dump: Mutex<Option<serde_json::Value>>,
    pub ready: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub log_level_hook: Option<LogLevelHook>,
    update_lock: tokio::sync::Mutex<()>,
}

/// Handle to a running proxy. Dropping it does not stop the proxy; call [`Proxy::shutdown`].
#[derive(Clone)]
pub struct Proxy {
    pub shared: Arc<Shared>,
    admin: Option<SocketAddr>,
}

impl Proxy {
    /// Bind everything and start serving. Fails (binding nothing) if the config is refused.
    pub async fn start(opts: ProxyOptions) -> Result<Proxy, ProxyError> {
        let (tx, _) = watch::channel(false);
        let log = match (&opts.access_log, &opts.config.access_log) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => AccessLogSink::from_config(c).map_err(ProxyError::AccessLog)?,
            (None, None) => AccessLogSink::off(),
        };
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            stats: Arc::new(Stats::default()),
            log: ArcSwap::from_pointee(log),
            log_override: opts.access_log.is_some(),
            orig_dst: opts.orig_dst.clone(),
            listeners: Mutex::new(BTreeMap::new()),
            config_dump: Mutex::new(opts.config_dump.clone()),
            ready: AtomicBool::new(false),
            shutdown: tx,
            log_level_hook: opts.log_level_hook.clone(),
            update_lock: tokio::sync::Mutex::new(()),
        });
        let admin = match opts.admin_addr {
            Some(a) => {
                let l = TcpListener::bind(a).await.map_err(|e| ProxyError::Bind {
                    what: "admin".into(),
                    addr: a,
                    source: e,
                })?;
                let bound = l.local_addr().unwrap_or(a);
                tokio::spawn(admin::serve(shared.clone(), l));
                Some(bound)
            }
            None => None,
        };
        let p = Proxy { shared, admin };
        p.apply(opts.config).await?;
        p.shared.ready.store(true, Ordering::Release);
        Ok(p)
    }

    /// Apply a new config version (ACK) or refuse it whole (NACK): on error nothing changes.
    pub async fn update(&self, cfg: ProxyConfig) -> Result<(), ProxyError> {
        self.apply(cfg).await
    }

    async fn apply(&self, cfg: ProxyConfig) -> Result<(), ProxyError> {
        let _g = self.shared.update_lock.lock().await;
        let sh = &self.shared;
        let prev = sh.runtime.load_full();
        let rt = Runtime::build(cfg, Some(&prev), &sh.stats)?;
        // Bind new / moved listeners first so a bind failure refuses the whole config.
        let mut fresh: BTreeMap<String, (SocketAddr, TcpListener)> = BTreeMap::new();
        {
            let running: Vec<(String, SocketAddr)> = lock(&sh.listeners)
                .iter()
                .map(|(k, v)| (k.clone(), v.address))
                .collect();
            for (name, l) in rt.listeners.iter().filter(|(_, l)| l.spec.bind_to_port) {
                if running
                    .iter()
                    .any(|(n, a)| n == name && *a == l.spec.address)
                {
                    continue;
                }
                let tl = bind_listener(l.spec.address).map_err(|e| ProxyError::Bind {
                    what: format!("listener {name}"),
                    addr: l.spec.address,
                    source: e,
                })?;
                fresh.insert(name.clone(), (l.spec.address, tl));
            }
        }
        if !sh.log_override {
            if let Some(c) = &rt.config.access_log {
                if prev.config.access_log.as_ref() != Some(c) {
                    sh.log.store(Arc::new(
                        AccessLogSink::from_config(c).map_err(ProxyError::AccessLog)?,
                    ));
                }
            }
        }
        let version = rt.config.version.clone();
        let names: Vec<String> = rt
            .listeners
            .iter()
            .filter(|(_, l)| l.spec.bind_to_port)
            .map(|(n, _)| n.clone())
            .collect();
        let rt = Arc::new(rt);
        sh.runtime.store(rt.clone());
        // Clusters this version replaced drain their connection pools (as Envoy does).
        cluster::drain_replaced(&prev.clusters, &rt.clusters);
        let mut running = lock(&sh.listeners);
        // Removed or moved listeners stop accepting; their connections drain on their own.
        running.retain(|name, r| {
            let keep = names.contains(name) && !fresh.contains_key(name);
            if !keep {
                let _ = r.stop.send(true);
                tracing::info!(listener = %name, "listener removed; draining in-flight connections");
            }
            keep
        });
        for (name, (address, tl)) in fresh {
            let bound = tl.local_addr().unwrap_or(address);
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(conn::accept_loop(
                sh.clone(),
                name.clone(),
                tl,
                stop_rx,
                sh.shutdown.subscribe(),
            ));
            tracing::info!(listener = %name, %bound, "listener started");
            running.insert(
                name,
                RunningListener {
                    address,
                    bound,
                    stop,
                },
            );
        }
        sh.stats.inc("listener_manager.lds.update_success", 1);
        tracing::info!(version = %version, "config applied");
        Ok(())
    }

    /// The address a listener actually bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.shared.listeners).get(name).map(|r| r.bound)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// Replace the JSON served on `/config_dump`.
    pub fn set_config_dump(&self, v: serde_json::Value) {
        *lock(&self.shared.config_dump) = Some(v);
    }

    /// Stop all listeners and the admin server.
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }

    /// Resolves when shutdown was requested (e.g. `/quitquitquit`).
    pub async fn wait(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    // Like Envoy's default `enable_reuse_port`: a renamed or re-addressed listener can bind its
    // port while the old socket is still draining.
    #[cfg(unix)]
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// The binary's entry point: start, serve until `/quitquitquit` or Ctrl-C, then stop.
pub async fn run_proxy(opts: ProxyOptions) -> Result<(), ProxyError> {
    let p = Proxy::start(opts).await?;
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = p.wait() => {}
        _ = tokio::signal::ctrl_c() => { p.shutdown(); }
        _ = term => { p.shutdown(); }
    }
    Ok(())
}

/// Load a config file: either the proxy's runtime config (JSON) or a compiled Envoy-shaped
/// bundle (`isthmus-xds` JSON, as `/config_dump` of the control plane prints it), which is
/// converted with [`xds::from_xds`].
pub fn load_config_file(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
    load_config_file_with_dump(path).map(|(c, _)| c)
}

/// Like [`load_config_file`], also returning the file's JSON for `/config_dump`.
pub fn load_config_file_with_dump(
    path: &std::path::Path,
) -> Result<(ProxyConfig, serde_json::Value), ConfigError> {
    let s = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![format!("cannot read {}: {e}", path.display())],
    })?;
    let raw: serde_json::Value = serde_json::from_str(&s).map_err(|e| ConfigError {
        problems: vec![format!(
            "{}: invalid proxy config JSON: {e}",
            path.display()
        )],
    })?;
    let own = ProxyConfig::from_json(&s);
    match own {
        Ok(c) => Ok((c, raw)),
        Err(own_err) => {
            // Not our runtime shape: an xDS bundle has `routes`/`endpoints` or Envoy filter chains.
            let looks_xds = raw.get("routes").is_some()
                || raw.get("endpoints").is_some()
                || raw.pointer("/listeners/0/filterChains/0/filters").is_some();
            if !looks_xds {
                return Err(own_err);
            }
            let x: isthmus_xds::ProxyConfig =
                serde_json::from_value(raw.clone()).map_err(|e| ConfigError {
                    problems: vec![format!("{}: invalid xDS bundle JSON: {e}", path.display())],
                })?;
            Ok((xds::from_xds(&x)?, raw))
        }
    }
}
