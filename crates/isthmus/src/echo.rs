//! `isthmus echo`: the built-in test server for hosts outside the mesh. It answers JSON with
//! what it saw (peer, SNI, ALPN, TLS version, client certificate, method, path, headers).

use isthmus_local::echo::{EchoConfig, EchoServer, EchoTls};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Plain HTTP port(s).
    #[arg(long = "http-port")]
    pub http_port: Vec<u16>,
    /// HTTPS port(s); needs --cert and --key.
    #[arg(long = "https-port")]
    pub https_port: Vec<u16>,
    /// Server certificate chain (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA bundle that client certificates are verified against.
    #[arg(long = "client-ca")]
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS handshakes without a valid client certificate.
    #[arg(long = "require-client-cert")]
    pub require_client_cert: bool,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// Name reported in responses.
    #[arg(long, default_value = "echo")]
    pub name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.http_port.is_empty() && args.https_port.is_empty() {
        anyhow::bail!("nothing to serve: give --http-port and/or --https-port");
    }
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some(EchoTls::from_files(
            c,
            k,
            args.client_ca.as_deref(),
            args.require_client_cert,
        )?),
        (None, None) if args.https_port.is_empty() => None,
        _ => anyhow::bail!("--https-port needs both --cert and --key"),
    };
    let cfg = EchoConfig {
        name: args.name,
        http: args
            .http_port
            .iter()
            .map(|p| SocketAddr::new(args.address, *p))
            .collect(),
        https: args
            .https_port
            .iter()
            .map(|p| SocketAddr::new(args.address, *p))
            .collect(),
        tls,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = EchoServer::start(cfg).await?;
        for a in server.http_addrs() {
            eprintln!("echo: http on {a}");
        }
        for a in server.https_addrs() {
            eprintln!("echo: https on {a}");
        }
        server.wait().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
