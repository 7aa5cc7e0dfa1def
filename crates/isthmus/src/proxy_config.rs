//! `isthmus proxy-config {cluster|listener|route|endpoint|secret|all} TARGET -f PATH...`:
//! what istiod would push to one proxy, printed as `istioctl proxy-config` prints it.

use crate::inputs::{self, MeshArgs};
use isthmus_compile::{compile, render_compiled, ConfigKind, Filter, Format};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// cluster, listener, route, endpoint, secret or all.
    pub kind: String,
    /// The proxy, as istioctl takes it: `deploy/NAME`, `pod/NAME`, `POD.NS` or `POD`.
    pub target: String,
    /// Manifests to compile (files or directories).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    #[arg(long)]
    pub fqdn: Option<String>,
    #[arg(long)]
    pub port: Option<u32>,
    #[arg(long)]
    pub subset: Option<String>,
    #[arg(long)]
    pub direction: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub address: Option<String>,
    /// json, yaml or short (istioctl's tables).
    #[arg(short = 'o', long = "output", default_value = "short")]
    pub output: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kind: ConfigKind = args.kind.parse()?;
    let format: Format = args.output.parse()?;
    let (loaded, mesh) = inputs::load(&args.files, &args.mesh)?;
    let snap = inputs::snapshot(&loaded, mesh, &args.mesh.domain);
    let node = snap.resolve_proxy(&args.target, args.namespace.as_deref())?;
    let compiled = compile(&snap, &node);
    for d in &compiled.diagnostics {
        eprintln!("{d}");
    }
    let filter = Filter {
        fqdn: args.fqdn,
        port: args.port,
        subset: args.subset,
        direction: args.direction,
        name: args.name,
        address: args.address,
    };
    print!("{}", render_compiled(&compiled, kind, &filter, format)?);
    Ok(ExitCode::SUCCESS)
}
