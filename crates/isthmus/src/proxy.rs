//! `isthmus proxy`: runs one proxy (sidecar or gateway) from a config file.

use isthmus_proxy::{load_config_file_with_dump, run_proxy, ProxyOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The proxy's runtime config (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// Admin server address (`/config_dump`, `/stats`, `/clusters`, `/ready`...).
    #[arg(long = "admin-address", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // `/config_dump` serves the file as given: for a compiled (xDS-shaped) bundle that is the
    // same JSON `isthmus proxy-config` prints, so live and offline views cannot disagree.
    let (config, dump) = load_config_file_with_dump(&args.config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let mut opts = ProxyOptions::new(config);
    opts.config_dump = Some(dump);
    opts.admin_addr = Some(args.admin_address);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_proxy(opts))?;
    Ok(ExitCode::SUCCESS)
}
