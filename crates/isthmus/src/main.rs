//! The `isthmus` command line: kubectl/istioctl habits (`-f`, `-n`, `-o`), exit codes
//! 0 ok, 1 invalid input or failed check, 2 usage error.

mod analyze;
mod echo;
mod inputs;
mod mesh_cmd;
mod proxy;
mod proxy_config;
mod trace_cmd;
mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "isthmus",
    version,
    about = "A service mesh that runs Istio's networking API on its own control plane and proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate manifests exactly as the CRD schemas and Istio's webhook would.
    Validate(validate::Args),
    /// Show the configuration compiled for one proxy, as istioctl proxy-config prints it.
    #[command(name = "proxy-config", alias = "pc")]
    ProxyConfig(proxy_config::Args),
    /// Istio's analyzers plus isthmus's checks for silent failures.
    Analyze(analyze::Args),
    /// Run one proxy (sidecar or gateway) from its config.
    Proxy(proxy::Args),
    /// Built-in HTTP/HTTPS test server that answers with what it saw.
    Echo(echo::Args),
    /// The path one request takes, hop by hop, from the compiled config (or where it fails).
    Trace(trace_cmd::Args),
    #[command(flatten)]
    Mesh(mesh_cmd::MeshCommand),
}

/// Common input flags: `-f` paths (files, directories, `-` for stdin).
#[derive(clap::Args, Debug, Clone)]
pub struct InputArgs {
    /// Files or directories (recursive) of YAML/JSON manifests; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
}

fn main() -> ExitCode {
    // Before anything grows the heap (see the function's doc); failure only costs memory.
    let thp = isthmus_proxy::alloc::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = thp {
        tracing::debug!("transparent huge pages stay on: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Trace(args) => trace_cmd::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::ProxyConfig(args) => proxy_config::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Echo(args) => echo::run(args),
        Command::Mesh(cmd) => mesh_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
