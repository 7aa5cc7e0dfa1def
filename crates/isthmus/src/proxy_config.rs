//! `isthmus proxy-config {cluster|listener|route|endpoint|secret|all} TARGET -f PATH...`:
//! what istiod would push to one proxy, printed as `istioctl proxy-config` prints it.
//!
//! Without `-f` it reads the RUNNING proxy of mesh `--name` instead: the proxy's admin
//! `/config_dump` (inside its pod's network namespace) holds the compiled bundle it runs, with
//! the live `default`/`ROOTCA` certificates, and is rendered by the very same
//! [`render_compiled`] — offline and live output cannot disagree in form, only in content.

use crate::inputs::{self, MeshArgs};
use isthmus_compile::{
    compile, render_compiled, CompiledProxy, ConfigKind, Filter, Format, SecretState, SecretStatus,
    SecretType,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// cluster, listener, route, endpoint, secret or all.
    pub kind: String,
    /// The proxy, as istioctl takes it: `deploy/NAME`, `pod/NAME`, `POD.NS` or `POD`.
    pub target: String,
    /// Manifests to compile (files or directories). Without `-f`: the running proxy of mesh
    /// `--name`.
    #[arg(short = 'f', long = "filename", num_args = 1..)]
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
    /// With `-f`: only the route/listener/secret of this name (istioctl's `--name`).
    /// Without `-f`: the mesh whose running proxy is read (default `default`); filter by
    /// resource name with `--resource-name` then.
    #[arg(long)]
    pub name: Option<String>,
    /// Only the route/listener/secret of this name (both modes).
    #[arg(long = "resource-name")]
    pub resource_name: Option<String>,
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
    let live = args.files.is_empty();
    let mut filter = Filter {
        fqdn: args.fqdn.clone(),
        port: args.port,
        subset: args.subset.clone(),
        direction: args.direction.clone(),
        name: args.resource_name.clone(),
        address: args.address.clone(),
    };
    let compiled = if live {
        let mesh = args
            .name
            .clone()
            .unwrap_or_else(|| isthmus_supervisor::state::DEFAULT_MESH.to_string());
        let ns = args.namespace.as_deref().unwrap_or("default");
        let t = crate::mesh_cmd::proxy_target(&mesh, ns, &args.target)?;
        let body = isthmus_supervisor::ops::proxy_admin_get(&t, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            anyhow::anyhow!(
                "the /config_dump of the proxy of pod {}/{} is not JSON: {e}",
                t.namespace,
                t.pod
            )
        })?;
        live_compiled(&dump, std::time::SystemTime::now())
            .map_err(|e| anyhow::anyhow!("the proxy of pod {}/{}: {e}", t.namespace, t.pod))?
    } else {
        if filter.name.is_none() {
            filter.name = args.name.clone();
        }
        let (loaded, mesh) = inputs::load(&args.files, &args.mesh)?;
        let snap = inputs::snapshot(&loaded, mesh, &args.mesh.domain);
        let node = snap.resolve_proxy(&args.target, args.namespace.as_deref())?;
        let compiled = compile(&snap, &node);
        for d in &compiled.diagnostics {
            eprintln!("{d}");
        }
        compiled
    };
    print!("{}", render_compiled(&compiled, kind, &filter, format)?);
    Ok(ExitCode::SUCCESS)
}

/// Rebuilds what [`render_compiled`] takes from a running proxy's `/config_dump`: the
/// compiled bundle as is, and each secret's status as the control plane judged it, with every
/// secret the proxy actually holds shown ACTIVE with its live certificates (validity judged at
/// `now`).
pub fn live_compiled(
    dump: &serde_json::Value,
    now: std::time::SystemTime,
) -> Result<CompiledProxy, String> {
    let statuses = dump
        .get(isthmus_supervisor::proxies::DUMP_SECRET_STATUSES)
        .and_then(|v| v.as_array())
        .ok_or("its /config_dump is not a compiled isthmus bundle (no secretStatuses); is it a mesh proxy run by `isthmus up`?")?;
    let config: isthmus_xds::ProxyConfig = serde_json::from_value(dump.clone())
        .map_err(|e| format!("its /config_dump is not a compiled bundle: {e}"))?;
    let mut secrets = Vec::new();
    for v in statuses {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let mut st = SecretStatus {
            type_: if v["type"] == "CA" {
                SecretType::Ca
            } else {
                SecretType::CertChain
            },
            state: match v["state"].as_str().unwrap_or_default() {
                "ACTIVE" => SecretState::Active,
                "ISSUED_AT_START" => SecretState::IssuedAtStart,
                "FILE_AT_START" => SecretState::FileAtStart,
                "INVALID" => SecretState::Invalid,
                _ => SecretState::Missing,
            },
            reason: text("reason"),
            identity: text("identity"),
            referenced_by: v["referencedBy"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            certs: Vec::new(),
            secret: None,
            name,
        };
        if let Some(held) = config.secret(&st.name) {
            st.state = SecretState::Active;
            st.certs = certs_of(held, &st.name, now);
            st.secret = Some(held.clone());
            if st.name == "default" || st.name == "ROOTCA" {
                st.reason = None;
            }
        }
        secrets.push(st);
    }
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CompiledProxy {
        config,
        secrets,
        diagnostics: Vec::new(),
    })
}

/// The certificates a held secret carries (chain, else trust bundle).
fn certs_of(
    s: &isthmus_xds::Secret,
    name: &str,
    now: std::time::SystemTime,
) -> Vec<isthmus_ca::CertInfo> {
    use base64::Engine;
    let source = s
        .tls_certificate
        .as_ref()
        .and_then(|t| t.certificate_chain.as_ref())
        .or_else(|| {
            s.validation_context
                .as_ref()
                .and_then(|v| v.trusted_ca.as_ref())
        });
    let pem: Vec<u8> = match source {
        Some(d) => match (&d.inline_string, &d.inline_bytes) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        },
        None => Vec::new(),
    };
    isthmus_ca::CertInfo::from_pem(&pem, name, now).unwrap_or_default()
}
