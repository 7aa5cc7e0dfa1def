//! `isthmus up | down | status | get | exec | logs` (and the hidden `supervise`): the local
//! runtime's command line, a thin layer over `isthmus-supervisor`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use isthmus_supervisor::api::{self, MeshStatus, Phase, Request, Response};
use isthmus_supervisor::{ops, render, state};

const CALL: Duration = Duration::from_secs(10);

/// Local-runtime subcommands (flattened into the top-level command list).
#[derive(clap::Subcommand, Debug)]
pub enum MeshCommand {
    /// Run a whole mesh on this host (root): pods, DNS, service VIPs, outside hosts.
    Up(UpArgs),
    /// Tear a mesh down and verify nothing is left (`--all`: every mesh and leftovers).
    Down(DownArgs),
    /// Show running meshes.
    Status(StatusArgs),
    /// List pods, services or loaded config of a running mesh.
    Get(GetArgs),
    /// Run a command in a pod's container: isthmus exec [-n NS] TARGET [-c C] -- CMD...
    Exec(ExecArgs),
    /// Print a container's logs.
    Logs(LogsArgs),
    /// Apply Istio config or Secrets to a running mesh (validated atomically, pushed live).
    Apply(ApplyArgs),
    /// Delete Istio config or Secrets from a running mesh (all must exist; pushed live).
    Delete(ApplyArgs),
    /// Stats of a running proxy (its admin /stats), optionally filtered by a regex.
    #[command(name = "proxy-stats")]
    ProxyStats(ProxyStatsArgs),
    /// Internal: the mesh DNS servers (a process of their own, in the node namespace).
    #[command(hide = true, name = "mesh-dns")]
    MeshDns(MeshDnsArgs),
    /// Internal: the supervisor process `up` starts.
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// Internal: a pod's proxy plus its control-plane client (the istio-proxy container).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Files or directories of manifests; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Mesh name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Seconds to wait for every proxy to acknowledge the new config.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct MeshDnsArgs {
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ProxyStatsArgs {
    /// The proxy: `POD`, `pod/NAME`, `deploy/NAME` or `POD.NAMESPACE`.
    pub target: String,
    /// Mesh name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Only stats whose name matches this regular expression (Envoy's `/stats?filter=`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Prometheus text format instead of Envoy's `name: value` lines.
    #[arg(short = 'o', long = "output", value_parser = ["text", "prom"])]
    pub output: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[arg(long)]
    pub bootstrap: PathBuf,
    #[arg(long = "token-file")]
    pub token_file: PathBuf,
    #[arg(long = "control-plane")]
    pub control_plane: std::net::SocketAddr,
    #[arg(long = "admin-address", default_value = "127.0.0.1:15000")]
    pub admin_address: std::net::SocketAddr,
}

fn default_name() -> String {
    state::DEFAULT_MESH.to_string()
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Manifest files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Mesh name (namespaces are named isth-<name>-...).
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// DNS suffix of services.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// MeshConfig YAML (default: the `istio` ConfigMap in the manifests, else Istio's defaults).
    #[arg(long = "mesh-config")]
    pub mesh_config: Option<PathBuf>,
    /// Seconds to wait for the mesh to become ready.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
    /// Install profile: `demo` adds istio-system with the ingress and egress gateways
    /// (Services 80→8080, 443→8443); `minimal` adds nothing.
    #[arg(long, default_value = "demo", value_parser = ["demo", "minimal"])]
    pub profile: String,
    /// Lifetime of workload certificates (e.g. `30s`, `1h`; default 24h). They are rotated at
    /// half of it and pushed to the proxies without restarts.
    #[arg(long = "workload-cert-ttl", value_parser = parse_ttl)]
    pub workload_cert_ttl: Option<Duration>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 24h)"))?;
    if d < Duration::from_secs(2) {
        return Err("must be at least 2s".into());
    }
    Ok(d)
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Mesh name.
    #[arg(long, default_value_t = default_name(), conflicts_with = "all")]
    pub name: String,
    /// Every mesh, plus namespaces left by crashed runs.
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Only this mesh.
    #[arg(long)]
    pub name: Option<String>,
    /// Output format (json).
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// pods | svc | gateway | virtualservice | destinationrule | serviceentry | sidecar | all
    pub resource: String,
    /// Mesh name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Output format: json | yaml | wide.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// `pod`, `pod/NAME` or `deploy/NAME`.
    pub target: String,
    /// Mesh name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Container (default: the first).
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Accepted for kubectl habits; stdin is always passed through.
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Accepted for kubectl habits.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// `pod`, `pod/NAME` or `deploy/NAME`.
    pub target: String,
    /// Mesh name.
    #[arg(long, default_value_t = default_name())]
    pub name: String,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Container (default: the first).
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Keep printing new lines.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long = "state-root")]
    pub state_root: PathBuf,
    #[arg(long)]
    pub domain: String,
    #[arg(long = "mesh-config")]
    pub mesh_config: Option<PathBuf>,
    #[arg(long, default_value = "demo")]
    pub profile: String,
    #[arg(long = "workload-cert-ttl", value_parser = parse_ttl)]
    pub workload_cert_ttl: Option<Duration>,
    #[arg(last = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(cmd: MeshCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MeshCommand::Up(a) => up(a),
        MeshCommand::Down(a) => down(a),
        MeshCommand::Status(a) => status(a),
        MeshCommand::Get(a) => get(a),
        MeshCommand::Exec(a) => exec(a),
        MeshCommand::Logs(a) => logs(a),
        MeshCommand::Apply(a) => apply(a, false),
        MeshCommand::Delete(a) => apply(a, true),
        MeshCommand::ProxyStats(a) => proxy_stats(a),
        MeshCommand::MeshDns(a) => {
            isthmus_supervisor::dns_proc::run(&a.config).map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Agent(a) => {
            isthmus_supervisor::agent::run(isthmus_supervisor::agent::AgentConfig {
                bootstrap: a.bootstrap,
                token_file: a.token_file,
                control_plane: a.control_plane,
                admin: a.admin_address,
            })
            .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Supervise(a) => {
            isthmus_supervisor::run_blocking(isthmus_supervisor::DaemonConfig {
                name: a.name,
                root: a.state_root,
                paths: a.paths,
                domain: a.domain,
                mesh_config: a.mesh_config,
                profile: a.profile,
                workload_cert_ttl: a.workload_cert_ttl,
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let root = state::state_root();
    let opts = ops::UpOptions {
        name: a.name.clone(),
        root: root.clone(),
        paths: a.paths,
        domain: a.domain,
        mesh_config: a.mesh_config,
        profile: a.profile,
        exe: std::env::current_exe()?,
        exe_args: vec!["supervise".into()],
        timeout: Duration::from_secs(a.timeout),
        workload_cert_ttl: a.workload_cert_ttl,
    };
    let r = ops::up(&opts)?;
    let n = &a.name;
    println!(
        "mesh \"{n}\" is up: {} pod(s), {} service(s) (supervisor pid {}, state {})",
        r.status.pods,
        r.status.services,
        r.status.pid,
        root.join(n).display()
    );
    print!("{}", render::pods(&r.pods, true, true));
    println!(
        "mesh DNS {} · outside-world resolver {}",
        r.status.dns, r.status.outside_dns
    );
    for p in &r.status.published {
        println!("ingress published on host loopback: {p}");
    }
    for note in &r.status.notes {
        println!("note: {note}");
    }
    println!("next: isthmus get pods -A --name {n} · isthmus exec --name {n} POD -- CMD · isthmus down --name {n}");
    Ok(ExitCode::SUCCESS)
}

fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let root = state::state_root();
    let (reports, foreign) = if a.all {
        let r = ops::down_all(&root)?;
        (r.meshes, r.foreign)
    } else {
        (vec![ops::down(&root, &a.name)?], Vec::new())
    };
    if reports.is_empty() {
        println!("nothing to take down under {}", root.display());
    }
    for r in reports {
        println!(
            "mesh \"{}\" down{}: removed {} network namespace(s), stopped {} container process(es); verified nothing is left",
            r.name,
            if r.stopped_supervisor { "" } else { " (leftovers of a crashed run)" },
            r.namespaces.len(),
            r.processes
        );
    }
    for ns in foreign {
        let mesh = ops::mesh_of_node_netns(&ns).unwrap_or("?");
        println!(
            "note: mesh \"{mesh}\" ({ns}) has no state under {} and was left alone; if it is a leftover, remove it with `isthmus down --name {mesh}` (with its own ISTHMUS_STATE_DIR if it has one)",
            root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mesh_call(name: &str, req: &Request) -> anyhow::Result<Response> {
    let dir = state::MeshDir::new(&state::state_root(), name);
    Ok(api::call(name, &dir.socket(), req, CALL)?)
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let root = state::state_root();
    let names: Vec<String> = match &a.name {
        Some(n) => vec![n.clone()],
        None => state::list_meshes(&root)
            .into_iter()
            .map(|m| m.name)
            .collect(),
    };
    let mut rows: Vec<MeshStatus> = Vec::new();
    for n in &names {
        match mesh_call(n, &Request::Status) {
            Ok(Response::Status(s)) => rows.push(s),
            Ok(_) => {}
            Err(e) if a.name.is_some() => return Err(e),
            Err(_) => {}
        }
    }
    if a.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no meshes running (state root {})", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                match &s.phase {
                    Phase::Failed(m) => format!("Failed: {m}"),
                    p => format!("{p:?}"),
                },
                format!("{}/{}", s.ready_pods, s.pods),
                format!("{}/{}", s.proxies_synced, s.proxies),
                s.services.to_string(),
                s.dns.clone(),
                s.pid.to_string(),
                render::age(s.uptime_secs),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &["NAME", "PHASE", "PODS", "PROXIES", "SERVICES", "DNS", "PID", "AGE",],
            &table
        )
    );
    for s in &rows {
        for note in &s.notes {
            println!("note ({}): {note}", s.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn config_kind(resource: &str) -> Option<&'static str> {
    Some(match resource.to_ascii_lowercase().as_str() {
        "gateway" | "gateways" | "gw" => "Gateway",
        "virtualservice" | "virtualservices" | "vs" => "VirtualService",
        "destinationrule" | "destinationrules" | "dr" => "DestinationRule",
        "serviceentry" | "serviceentries" | "se" => "ServiceEntry",
        "sidecar" | "sidecars" => "Sidecar",
        "deployment" | "deployments" | "deploy" => "Deployment",
        "secret" | "secrets" => "Secret",
        "configmap" | "configmaps" | "cm" => "ConfigMap",
        _ => return None,
    })
}

fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let fmt = a.output.as_deref();
    let in_ns = |ns: &str| a.all_namespaces || ns == a.namespace;
    let resources: Vec<String> = if a.resource == "all" {
        [
            "pods",
            "svc",
            "gateway",
            "virtualservice",
            "destinationrule",
            "serviceentry",
            "sidecar",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        a.resource.split(',').map(str::to_string).collect()
    };
    let mut out = String::new();
    let mut json_items: Vec<serde_json::Value> = Vec::new();
    for res in &resources {
        match res.to_ascii_lowercase().as_str() {
            "pods" | "pod" | "po" => {
                let Response::Pods { pods } = mesh_call(&a.name, &Request::Pods)? else {
                    anyhow::bail!("unexpected answer from the supervisor");
                };
                let pods: Vec<_> = pods.into_iter().filter(|p| in_ns(&p.namespace)).collect();
                if matches!(fmt, Some("json") | Some("yaml")) {
                    json_items.extend(
                        pods.iter()
                            .map(|p| serde_json::to_value(p).unwrap_or_default()),
                    );
                } else {
                    out.push_str(&render::pods(&pods, a.all_namespaces, fmt == Some("wide")));
                }
            }
            "svc" | "service" | "services" => {
                let Response::Services { services, .. } = mesh_call(&a.name, &Request::Services)?
                else {
                    anyhow::bail!("unexpected answer from the supervisor");
                };
                let svcs: Vec<_> = services
                    .into_iter()
                    .filter(|s| in_ns(&s.namespace))
                    .collect();
                if matches!(fmt, Some("json") | Some("yaml")) {
                    json_items.extend(
                        svcs.iter()
                            .map(|s| serde_json::to_value(s).unwrap_or_default()),
                    );
                } else {
                    out.push_str(&render::services(&svcs, a.all_namespaces));
                }
            }
            other => {
                let Some(kind) = config_kind(other) else {
                    eprintln!("error: the server doesn't have a resource type \"{other}\"");
                    return Ok(ExitCode::from(1));
                };
                let Response::Objects { objects } =
                    mesh_call(&a.name, &Request::Objects { kind: kind.into() })?
                else {
                    anyhow::bail!("unexpected answer from the supervisor");
                };
                let objs: Vec<_> = objects
                    .into_iter()
                    .filter(|o| {
                        in_ns(
                            o.pointer("/metadata/namespace")
                                .and_then(|v| v.as_str())
                                .unwrap_or("default"),
                        )
                    })
                    .collect();
                if matches!(fmt, Some("json") | Some("yaml")) {
                    json_items.extend(objs);
                } else {
                    out.push_str(&render::objects(&objs, a.all_namespaces));
                }
            }
        }
    }
    match fmt {
        Some("json") | Some("yaml") => {
            print!("{}", render::list(json_items, fmt.unwrap_or("json")).map_err(anyhow::Error::msg)?)
        }
        Some("wide") | None => {
            if out.is_empty() {
                if a.all_namespaces {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {} namespace.", a.namespace);
                }
            }
            print!("{out}");
        }
        Some(other) => anyhow::bail!(
            "unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,yaml,wide"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn target(
    name: &str,
    ns: &str,
    target: &str,
    container: Option<String>,
) -> anyhow::Result<api::ContainerTarget> {
    match mesh_call(
        name,
        &Request::Container {
            namespace: ns.to_string(),
            target: target.to_string(),
            container,
        },
    )? {
        Response::Container(t) => Ok(t),
        _ => anyhow::bail!("unexpected answer from the supervisor"),
    }
}

fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    let t = target(&a.name, &a.namespace, &a.target, a.container)?;
    let status = ops::exec_command(&t, &a.command)?.status()?;
    let code = isthmus_supervisor::ops::exit_code(status);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let t = target(&a.name, &a.namespace, &a.target, a.container)?;
    print!("{}", ops::read_log(&t.log, a.tail)?);
    if a.follow {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::File::open(&t.log)?;
        let mut pos = f.seek(SeekFrom::End(0))?;
        let mut buf = Vec::new();
        while t.log.exists() {
            buf.clear();
            f.seek(SeekFrom::Start(pos))?;
            let n = f.read_to_end(&mut buf)?;
            if n > 0 {
                pos += n as u64;
                std::io::stdout().write_all(&buf)?;
                std::io::stdout().flush()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `apply` / `delete -f FILE...` (`-` reads stdin): the supervisor validates everything
/// first and changes nothing on any error; then this waits until every proxy acknowledged.
fn apply(a: ApplyArgs, delete: bool) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in isthmus_api::expand_paths(&a.files)? {
        let text = if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        };
        files.push((p.display().to_string(), text));
    }
    let req = if delete {
        Request::Delete { files }
    } else {
        Request::Apply { files }
    };
    let (lines, versions) = match mesh_call(&a.name, &req) {
        Ok(Response::Applied { lines, versions }) => (lines, versions),
        Ok(_) => anyhow::bail!("unexpected answer from the supervisor"),
        Err(e) => {
            // kubectl's message as is (e.g. `The DestinationRule "x" is invalid: ...`).
            eprintln!("{e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    for l in &lines {
        println!("{l}");
    }
    wait_acked(&a.name, &versions, a.timeout)
}

/// Waits until every proxy acknowledged (or refused) its new version.
fn wait_acked(
    name: &str,
    versions: &std::collections::BTreeMap<String, u64>,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let Response::Proxies { proxies } = mesh_call(name, &Request::Proxies)? else {
            anyhow::bail!("unexpected answer from the supervisor");
        };
        let mut pending = Vec::new();
        let mut nacked = Vec::new();
        for (node, want) in versions {
            let r = &proxies.get(node).cloned().unwrap_or_default()["resources"]["config"];
            let acked = r["acked"].as_u64().unwrap_or(0);
            if r["state"] == "Nacked" || r["nack_error"].is_string() {
                nacked.push(format!(
                    "{node}: {}",
                    r["nack_error"].as_str().unwrap_or("refused")
                ));
            } else if acked < *want {
                pending.push(node.clone());
            }
        }
        if !nacked.is_empty() {
            eprintln!("error: proxies refused the new config (they keep their last good one):");
            for n in nacked {
                eprintln!("  {n}");
            }
            return Ok(ExitCode::from(1));
        }
        if pending.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "error: not acknowledged after {timeout}s by: {}",
                pending.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resolves a proxy target (`POD`, `pod/NAME`, `deploy/NAME`, `POD.NAMESPACE`) of a running
/// mesh to its `istio-proxy` container (for its network namespace).
pub fn proxy_target(mesh: &str, ns: &str, target: &str) -> anyhow::Result<api::ContainerTarget> {
    let (ns, target) = match target.split_once('.') {
        Some((pod, n)) if !target.contains('/') => (n.to_string(), pod.to_string()),
        _ => (ns.to_string(), target.to_string()),
    };
    let t = self::target(
        mesh,
        &ns,
        &target,
        Some(isthmus_supervisor::proxies::PROXY_CONTAINER.to_string()),
    )?;
    if t.netns.is_empty() {
        anyhow::bail!("the supervisor of mesh `{mesh}` did not say where pod {ns}/{} runs; restart the mesh with this isthmus version", t.pod);
    }
    Ok(t)
}

fn proxy_stats(a: ProxyStatsArgs) -> anyhow::Result<ExitCode> {
    let t = proxy_target(&a.name, &a.namespace, &a.target)?;
    let mut path = "/stats".to_string();
    let mut query = Vec::new();
    if let Some(f) = &a.filter {
        query.push(format!("filter={}", ops::percent_encode(f)));
    }
    if a.output.as_deref() == Some("prom") {
        query.push("format=prometheus".to_string());
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    print!("{}", ops::proxy_admin_get(&t, &path)?);
    Ok(ExitCode::SUCCESS)
}
