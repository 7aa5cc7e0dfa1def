//! `isthmus agent`: the proxy of one pod plus its control-plane client (pilot-agent's role).
//!
//! It starts the proxy from the bootstrap config written at `up` (so a proxy starts, and
//! keeps serving, even while the control plane is unreachable), then follows the
//! supervisor's push stream: every `Config` push is applied whole (ACK) or refused whole
//! (NACK, the last good config stays), exactly like xDS.

use std::net::SocketAddr;
use std::path::PathBuf;

use isthmus_proxy::{Proxy, ProxyConfig, ProxyOptions};
use isthmus_push::ResourceKind;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Bootstrap runtime config (JSON).
    pub bootstrap: PathBuf,
    /// File holding this proxy's push token.
    pub token_file: PathBuf,
    /// Push server address.
    pub control_plane: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

/// Runs the agent until SIGTERM/SIGINT. Errors are messages for the container log.
pub fn run(cfg: AgentConfig) -> Result<(), String> {
    let text = std::fs::read_to_string(&cfg.bootstrap)
        .map_err(|e| format!("read {}: {e}", cfg.bootstrap.display()))?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid proxy config: {e}", cfg.bootstrap.display()))?;
    let (config, dump): (ProxyConfig, _) = crate::proxies::split_body(&body)
        .map_err(|e| format!("{}: invalid proxy config: {e}", cfg.bootstrap.display()))?;
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| format!("read {}: {e}", cfg.token_file.display()))?
        .trim()
        .to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let mut opts = ProxyOptions::new(config.clone());
        opts.admin_addr = Some(cfg.admin);
        let proxy = Proxy::start(opts).await.map_err(|e| format!("proxy: {e}"))?;
        if let Some(d) = &dump {
            proxy.set_config_dump(crate::proxies::live_dump(d, &config));
        }
        let p = proxy.clone();
        let applier = move |kind: ResourceKind, version: u64, body: &serde_json::Value| {
            if kind != ResourceKind::Config {
                return Ok(());
            }
            let (cfg, dump) = crate::proxies::split_body(body)
                .map_err(|e| format!("config version {version}: {e}"))?;
            let live = dump.map(|d| crate::proxies::live_dump(&d, &cfg));
            // The push client's applier is synchronous; the proxy's update is async.
            let p = p.clone();
            let r = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(p.update(cfg))
            });
            match r {
                Ok(()) => {
                    // `/config_dump` follows what the proxy now runs, never what it refused.
                    if let Some(d) = live {
                        p.set_config_dump(d);
                    }
                    tracing::info!(version, "pushed config applied");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(version, error = %e, "pushed config refused (NACK)");
                    Err(e.to_string())
                }
            }
        };
        let client = tokio::spawn(isthmus_push::run_with_reconnect(
            cfg.control_plane,
            token,
            applier,
        ));
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = proxy.wait() => {}
            _ = tokio::signal::ctrl_c() => proxy.shutdown(),
            _ = term => proxy.shutdown(),
            r = client => {
                // Only a refused token ends the client; keep serving the last config.
                if let Ok(e) = r {
                    tracing::error!(error = %e, "control plane refused this proxy; serving the last config");
                }
                proxy.wait().await;
            }
        }
        Ok(())
    })
}
