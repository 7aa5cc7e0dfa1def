//! `isthmus trace -f PATH... -n NS SOURCE URL`: the path one request takes through the mesh,
//! hop by hop, computed from the compiled config of each proxy (see `isthmus-trace`).
//! Exit 0 when the request reaches its destination through the mesh, 1 when it fails or
//! bypasses the mesh (so scripts can assert a path), 2 on usage errors.

use crate::inputs::{self, MeshArgs};
use isthmus_trace::{render_text, trace, TraceRequest};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The calling proxy: `deploy/NAME`, `pod/NAME`, `POD.NS` or `POD` (with -n).
    pub source: String,
    /// What it calls: `http://HOST[:PORT]/PATH`, `https://...`, `tcp://HOST:PORT`, `tls://HOST:PORT`.
    pub url: String,
    /// Manifests (files or directories).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Namespace of SOURCE.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// SNI of the application's own TLS (https/tls URLs; default: the URL host).
    #[arg(long)]
    pub sni: Option<String>,
    /// Request header `Name: value` (repeatable); `Host:` overrides the authority.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// HTTP method.
    #[arg(short = 'X', long = "request")]
    pub method: Option<String>,
    /// text or json.
    #[arg(short = 'o', long = "output", default_value = "text")]
    pub output: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let json = match args.output.as_str() {
        "text" => false,
        "json" => true,
        other => anyhow::bail!("unknown output format {other:?} (use text or json)"),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("bad header {h:?}: use --header 'Name: value'"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let (loaded, mesh) = inputs::load(&args.files, &args.mesh)?;
    let snap = inputs::snapshot(&loaded, mesh, &args.mesh.domain);
    let req = TraceRequest {
        source: args.source.clone(),
        namespace: args.namespace.clone(),
        url: args.url.clone(),
        sni: args.sni.clone(),
        headers,
        method: args.method.clone(),
    };
    let t = trace(&snap, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", render_text(&t));
    }
    Ok(if t.verdict.status == "reached" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
