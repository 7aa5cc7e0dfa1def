//! `isthmus trace -f PATH... -n NS SOURCE URL`: the path one request takes through the mesh,
//! hop by hop, computed from the compiled config of each proxy (see `isthmus-trace`).
//! `isthmus trace --name MESH ...` traces on the live config of a running mesh, and with
//! `--confirm` runs the request in the SOURCE pod and checks the predicted path against every
//! proxy's access log.
//! Exit 0 when the request reaches its destination through the mesh (and, with `--confirm`,
//! the logs agree), 1 when it fails, bypasses the mesh or the logs disagree, 2 on usage errors.

use crate::analyze::{live_config, mesh_call};
use crate::inputs::{self, MeshArgs};
use isthmus_api::{find_mesh_config, load_str, LoadOptions, MeshConfig};
use isthmus_supervisor::api::{ContainerTarget, Request, Response};
use isthmus_supervisor::ops;
use isthmus_trace::{
    confirm, parse_url, render_confirmation, render_text, trace, ClientOutcome, Confirmation,
    Observed, Trace, TraceRequest,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The calling proxy: `deploy/NAME`, `pod/NAME`, `POD.NS` or `POD` (with -n).
    pub source: String,
    /// What it calls: `http://HOST[:PORT]/PATH`, `https://...`, `tcp://HOST:PORT`, `tls://HOST:PORT`.
    pub url: String,
    /// Manifests (files or directories).
    #[arg(short = 'f', long = "filename", required_unless_present = "name", num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Trace on the live config of this running mesh (`isthmus up --name`) instead of files.
    #[arg(long, conflicts_with = "files")]
    pub name: Option<String>,
    /// Also run the request (curl in the SOURCE pod) and confirm the predicted path from each
    /// hop's istio-proxy access log; fails loudly when they disagree. Needs --name.
    #[arg(long, requires = "name")]
    pub confirm: bool,
    /// Seconds to wait for the proxies' access-log lines after the request (--confirm).
    #[arg(long = "confirm-timeout", default_value_t = 20)]
    pub confirm_timeout: u64,
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
    if args.confirm {
        let u = parse_url(&args.url)?;
        if !u.http {
            anyhow::bail!(
                "--confirm runs curl in the source pod: use an http:// or https:// URL (got {:?})",
                u.scheme
            );
        }
        if args.sni.is_some() {
            anyhow::bail!("--confirm cannot send a different SNI than the URL host (curl sends the URL host); drop --sni");
        }
    }
    let snap = match &args.name {
        Some(name) => {
            let live = live_config(name)?;
            let loaded = load_str(
                "",
                &live.text,
                &LoadOptions {
                    default_namespace: Some("default".into()),
                    ..LoadOptions::default()
                },
            );
            let mesh = match &args.mesh.mesh_config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!("reading mesh config {}: {e}", path.display())
                    })?;
                    MeshConfig::from_yaml(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => match find_mesh_config(&loaded.objects) {
                    Some((o, text)) => MeshConfig::from_yaml(text)
                        .map_err(|e| anyhow::anyhow!("{}: mesh config: {e}", o.label()))?,
                    None => {
                        eprintln!("{}", crate::analyze::default_mesh_note(name));
                        MeshConfig::default()
                    }
                },
            };
            inputs::snapshot(&loaded, mesh, &live.domain)
        }
        None => {
            let (loaded, mesh) = inputs::load(&args.files, &args.mesh)?;
            inputs::snapshot(&loaded, mesh, &args.mesh.domain)
        }
    };
    let req = TraceRequest {
        source: args.source.clone(),
        namespace: args.namespace.clone(),
        url: args.url.clone(),
        sni: args.sni.clone(),
        headers,
        method: args.method.clone(),
    };
    let t = trace(&snap, &req)?;
    let confirmation = match (&args.name, args.confirm) {
        (Some(name), true) => Some(run_confirm(
            name,
            &t,
            &req,
            Duration::from_secs(args.confirm_timeout),
        )?),
        _ => None,
    };
    if json {
        let mut v = serde_json::to_value(&t)?;
        if let (Some(c), Some(m)) = (&confirmation, v.as_object_mut()) {
            m.insert("confirmation".into(), serde_json::to_value(c)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_text(&t));
        if let Some(c) = &confirmation {
            print!("{}", render_confirmation(c));
        }
    }
    if let Some(c) = &confirmation {
        if !c.agrees {
            eprintln!("error: {}", c.summary);
            return Ok(ExitCode::from(1));
        }
    }
    Ok(if t.verdict.status == "reached" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn container(
    mesh: &str,
    namespace: &str,
    target: &str,
    container: Option<&str>,
) -> anyhow::Result<ContainerTarget> {
    match mesh_call(
        mesh,
        &Request::Container {
            namespace: namespace.to_string(),
            target: target.to_string(),
            container: container.map(str::to_string),
        },
    )? {
        Response::Container(t) => Ok(t),
        _ => anyhow::bail!("unexpected answer from the supervisor (container)"),
    }
}

/// A log file read from an offset: only complete lines written after the request started.
struct LogTail {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    lines: Vec<String>,
}

impl LogTail {
    fn start(path: PathBuf) -> LogTail {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogTail {
            path,
            offset,
            pending: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn poll(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            self.pending.extend_from_slice(&buf);
        }
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.lines
                .push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    }
}

/// Runs the traced request with curl in the source pod (first container, as `isthmus exec`
/// does) and collects every proxy's new access-log lines until each predicted hop logged the
/// request or `timeout` passes.
fn run_confirm(
    mesh: &str,
    t: &Trace,
    req: &TraceRequest,
    timeout: Duration,
) -> anyhow::Result<Confirmation> {
    let url = parse_url(&req.url)?;
    let (src_ns, src_pod) = t
        .source
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("trace source {:?} is not ns/pod", t.source))?;
    // Every proxy of the mesh: hops the trace predicts and any that should stay silent.
    let Response::Pods { pods } = mesh_call(mesh, &Request::Pods)? else {
        anyhow::bail!("unexpected answer from the supervisor (pods)");
    };
    let mut tails: BTreeMap<String, LogTail> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.containers.iter().any(|c| c.name == "istio-proxy"))
    {
        let c = container(mesh, &p.namespace, &p.name, Some("istio-proxy"))?;
        tails.insert(format!("{}/{}", p.namespace, p.name), LogTail::start(c.log));
    }
    let source = container(mesh, src_ns, src_pod, None)?;
    // A request id of our own picks this request's lines out of busy logs (HTTP only: with
    // the application's TLS the proxies never see headers).
    let request_id = (!url.tls).then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("isthmus-trace-{}-{nanos}", std::process::id())
    });
    let mut argv: Vec<String> = [
        "curl",
        "-sS",
        "-k",
        "-o",
        "/dev/null",
        "-m",
        "10",
        "-w",
        "%{http_code}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(m) = &req.method {
        argv.extend(["-X".to_string(), m.clone()]);
    }
    for (k, v) in &req.headers {
        argv.extend(["-H".to_string(), format!("{k}: {v}")]);
    }
    if let Some(id) = &request_id {
        argv.extend(["-H".to_string(), format!("x-request-id: {id}")]);
    }
    argv.push(req.url.clone());
    let out = ops::exec_command(&source, &argv)?.output()?;
    let client = ClientOutcome {
        exit_code: ops::exit_code(out.status),
        http_code: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    };
    let observe = |tails: &BTreeMap<String, LogTail>| Observed {
        client: client.clone(),
        request_id: request_id.clone(),
        host: url.host.clone(),
        logs: tails
            .iter()
            .map(|(k, v)| (k.clone(), v.lines.clone()))
            .collect(),
    };
    // Access-log lines are written when a stream ends, possibly after curl returned.
    let deadline = Instant::now() + timeout;
    let mut settled_at: Option<Instant> = None;
    loop {
        for tail in tails.values_mut() {
            tail.poll();
        }
        let c = confirm(t, &observe(&tails));
        let complete = c.hops.iter().all(|h| h.status != "missing");
        let now = Instant::now();
        if complete && settled_at.is_none() {
            // One more second for lines from proxies the trace did not predict.
            settled_at = Some(now);
        }
        if settled_at.is_some_and(|s| now >= s + Duration::from_secs(1)) || now >= deadline {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
