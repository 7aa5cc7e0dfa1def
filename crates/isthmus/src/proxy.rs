//! `isthmus proxy`: runs one proxy (sidecar or gateway) from a config file.

use isthmus_proxy::{load_config_file_with_dump, run_proxy, ProxyOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// The whole `isthmus` binary allocates with mimalloc (see `isthmus_proxy::alloc`): the data
/// plane's per-request allocations dominate its cost otherwise, and the control plane's
/// compile is allocation-heavy too.
#[global_allocator]
static GLOBAL: isthmus_proxy::alloc::Allocator = isthmus_proxy::alloc::Allocator;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The proxy's runtime config (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// Admin server address (`/config_dump`, `/stats`, `/clusters`, `/ready`...).
    #[arg(long = "admin-address", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Worker threads (Envoy's `--concurrency`). 1 runs everything on one thread (a
    /// current-thread runtime: no cross-thread wake-ups or work stealing), which is what a
    /// sidecar pinned to one CPU wants; benchmarks match the peers' single worker with it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // `/config_dump` serves the file as given: for a compiled (xDS-shaped) bundle that is the
    // same JSON `isthmus proxy-config` prints, so live and offline views cannot disagree.
    let (config, dump) = load_config_file_with_dump(&args.config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let mut opts = ProxyOptions::new(config);
    opts.config_dump = Some(dump);
    opts.admin_addr = Some(args.admin_address);
    let rt = match args.concurrency {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build()?,
    };
    rt.block_on(run_proxy(opts))?;
    Ok(ExitCode::SUCCESS)
}
