//! The supervisor process: builds the mesh from a [`MeshPlan`], keeps it running, answers the
//! socket API and tears everything down on `down` (or SIGTERM/SIGINT).
//!
//! Startup order: the socket is bound first so `isthmus status` works while pods are being
//! created; then the node network, the two DNS servers, every pod (network namespace with the
//! model's IP, sandbox with volumes, VIP rules, containers). The mesh is `Ready` once every
//! container has been started and every declared TCP containerPort accepts connections.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_api::{find_mesh_config, load_paths, LoadOptions, MeshConfig, Object};
use isthmus_local::dns;
use isthmus_local::net::{MeshNet, MeshNetConfig, PodNet};
use isthmus_local::process::{self, Backoff, ContainerState, PodSandbox, Supervised};
use isthmus_local::{netns, vip};
use isthmus_model::Snapshot;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::api::{ContainerInfo, ContainerTarget, MeshStatus, Phase, PodInfo, Request, Response};
use crate::plan::{MeshPlan, PlanError, PodPlan, PodProxy};
use crate::state::MeshDir;

/// Subnet of every mesh (private to its namespaces; the model hands out 10.244.0.10+).
pub const POD_SUBNET: &str = "10.244.0.0/16";
/// How long startup waits for containers and their ports before declaring the mesh ready
/// anyway (crash-looping pods are then visible in `get pods`).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the mesh DNS process may take to listen.
const DNS_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Port of the control plane's push endpoint on the node bridge address.
pub const CONTROL_PLANE_PORT: u16 = 15010;

/// Errors of loading and running a mesh, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Manifests could not be read.
    #[error(transparent)]
    Load(#[from] isthmus_api::LoadError),
    /// Manifests were rejected (each line is kubectl's message).
    #[error("the manifests were rejected; fix them and retry:\n{}", .0.join("\n"))]
    Rejected(Vec<String>),
    /// Nothing to run.
    #[error("no manifests given; pass files or directories: isthmus up PATH...")]
    NoPaths,
    /// Bad mesh config.
    #[error("mesh config {source_name}: {message}")]
    MeshConfig {
        /// File or object it came from.
        source_name: String,
        /// Parser message.
        message: String,
    },
    /// The plan failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A mesh with this name runs already.
    #[error("a mesh named `{name}` is already running (supervisor pid {pid}); use another --name or run `isthmus down --name {name}` first")]
    AlreadyRunning {
        /// Mesh name.
        name: String,
        /// Its supervisor.
        pid: u32,
    },
    /// Invalid mesh name.
    #[error(transparent)]
    Net(#[from] isthmus_local::net::NetError),
    /// Container problems.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// DNS server problems.
    #[error("cannot start the mesh DNS: {0}")]
    DnsProcess(String),
    /// nftables rules.
    #[error("cannot install service VIP rules: {0}")]
    Cmd(#[from] isthmus_local::cmd::CmdError),
    /// The host cannot run meshes.
    #[error(transparent)]
    Preflight(#[from] isthmus_local::PreflightError),
    /// Filesystem work.
    #[error("{action} {path}: {source}")]
    Io {
        /// What.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.to_path_buf();
    move |source| SupervisorError::Io {
        action,
        path,
        source,
    }
}

/// How to run one mesh.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Mesh name.
    pub name: String,
    /// State root (the mesh uses `<root>/<name>`).
    pub root: PathBuf,
    /// Manifest files/directories.
    pub paths: Vec<PathBuf>,
    /// DNS suffix.
    pub domain: String,
    /// Mesh config file (else the `istio` ConfigMap in the manifests, else defaults).
    pub mesh_config: Option<PathBuf>,
    /// Install profile (`demo` or `minimal`, see [`crate::profile`]).
    pub profile: String,
    /// Lifetime of workload certificates (default [`DEFAULT_WORKLOAD_CERT_TTL`]); they are
    /// rotated at half of it and pushed to the proxies live.
    pub workload_cert_ttl: Option<Duration>,
}

/// Default lifetime of workload certificates (Istio's 24h).
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the rotation task re-checks even when nothing is due (new identities).
const ROTATION_MAX_WAIT: Duration = Duration::from_secs(60);

/// Loaded and planned manifests.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Accepted objects.
    pub objects: Vec<Object>,
    /// The model.
    pub snapshot: Snapshot,
    /// What runs.
    pub plan: MeshPlan,
}

/// Loads, validates and plans the manifests (no system changes). `up` calls this before
/// spawning the supervisor so input errors are reported in the user's terminal.
pub fn load(
    paths: &[PathBuf],
    domain: &str,
    mesh_config: Option<&Path>,
    profile: &str,
) -> Result<Loaded, SupervisorError> {
    if paths.is_empty() {
        return Err(SupervisorError::NoPaths);
    }
    let mut loaded = load_paths(paths, &LoadOptions::default())?;
    if !loaded.rejections.is_empty() {
        return Err(SupervisorError::Rejected(
            loaded
                .rejections
                .iter()
                .map(|r| r.message.clone())
                .collect(),
        ));
    }
    let extra = crate::profile::objects(profile, &loaded.objects)
        .map_err(|m| SupervisorError::Rejected(vec![m]))?;
    loaded.objects.extend(extra);
    let mesh = match mesh_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(io_err("read", p))?;
            MeshConfig::from_yaml(&text).map_err(|message| SupervisorError::MeshConfig {
                source_name: p.display().to_string(),
                message,
            })?
        }
        None => match find_mesh_config(&loaded.objects) {
            Some((o, text)) => {
                MeshConfig::from_yaml(text).map_err(|message| SupervisorError::MeshConfig {
                    source_name: o.label(),
                    message,
                })?
            }
            None => {
                let mut m = MeshConfig::default();
                if profile == "demo" {
                    // Istio's demo profile turns access logging on.
                    m.access_log_file = "/dev/stdout".into();
                }
                m
            }
        },
    };
    let (snapshot, diags) = Snapshot::build(&loaded.objects, mesh, domain);
    for d in &diags {
        tracing::warn!(code = %d.code, "{}", d.message);
    }
    let plan = MeshPlan::build(&loaded.objects, &snapshot)?;
    Ok(Loaded {
        objects: loaded.objects,
        snapshot,
        plan,
    })
}

/// Claims `<root>/<name>` for a new mesh: creates it (mode 0700), or replaces the leftovers
/// of a supervisor that is no longer alive. Fails if a live supervisor owns it.
pub fn claim(dir: &MeshDir) -> Result<(), SupervisorError> {
    isthmus_local::net::validate_mesh_name(&dir.name)?;
    if let Some(parent) = dir.dir.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    for _ in 0..2 {
        match std::fs::create_dir(&dir.dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                // 0711: the sidecar (uid 1337) must reach its config under proxies/; pod
                // directories inside stay 0700 and nothing here is listable.
                std::fs::set_permissions(&dir.dir, std::fs::Permissions::from_mode(0o711))
                    .map_err(io_err("chmod", &dir.dir))?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(pid) = dir.live_pid() {
                    return Err(SupervisorError::AlreadyRunning {
                        name: dir.name.clone(),
                        pid,
                    });
                }
                // A pid file without a live process (or none yet): a crashed run.
                crate::cleanup_leftovers(dir);
            }
            Err(e) => return Err(io_err("create", &dir.dir)(e)),
        }
    }
    Err(SupervisorError::AlreadyRunning {
        name: dir.name.clone(),
        pid: dir.live_pid().unwrap_or(0),
    })
}

struct RunningPod {
    plan: PodPlan,
    net: PodNet,
    sandbox: Arc<PodSandbox>,
    containers: Vec<(process::ContainerSpec, Supervised)>,
    created: Instant,
}

struct Shared {
    name: String,
    dir: MeshDir,
    domain: String,
    started: Instant,
    phase: Mutex<Phase>,
    node_netns: Mutex<String>,
    dns: Mutex<(String, String)>,
    pods: Mutex<Vec<RunningPod>>,
    plan: MeshPlan,
    snapshot: Mutex<Snapshot>,
    objects: Mutex<Vec<Object>>,
    mesh_config: MeshConfig,
    push: isthmus_push::PushServer,
    /// The mesh DNS process (stopped at teardown).
    dns_proc: Mutex<Option<crate::dns_proc::DnsProcess>>,
    /// What the mesh DNS process serves (rewritten when applied ServiceEntries change it).
    dns_spec: Mutex<Option<crate::dns_proc::DnsSpec>>,
    /// Serialises compile+push sequences (apply, delete, certificate rotation).
    push_lock: Mutex<()>,
    proxies: Mutex<Vec<crate::proxies::ProxyReg>>,
    notes: Mutex<Vec<String>>,
    published: Mutex<Vec<String>>,
    shutdown: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still consistent enough to report.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kinds `apply`/`delete` may change on a running mesh.
fn live_kind(k: isthmus_api::Kind) -> bool {
    k.is_istio() || k == isthmus_api::Kind::Secret
}

fn same_object(a: &Object, b: &Object) -> bool {
    a.kind == b.kind && a.namespace() == b.namespace() && a.name() == b.name()
}

/// API group of an object (`networking.istio.io`; empty for the core group, `v1`).
fn api_group(o: &Object) -> &str {
    o.api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default()
}

/// kubectl's resource word in apply/delete lines: `virtualservice.networking.istio.io`,
/// `secret` (core group).
fn resource_kind(o: &Object) -> String {
    let kind = o.kind.as_str().to_ascii_lowercase();
    match api_group(o) {
        "" => kind,
        g => format!("{kind}.{g}"),
    }
}

/// kubectl's plural resource in NotFound errors: `destinationrules.networking.istio.io`,
/// `serviceentries.networking.istio.io`, `secrets`.
fn resource_plural(o: &Object) -> String {
    let kind = o.kind.as_str().to_ascii_lowercase();
    let plural = match kind.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{kind}s"),
    };
    match api_group(o) {
        "" => plural,
        g => format!("{plural}.{g}"),
    }
}

fn container_info(sandbox: &PodSandbox, st: &process::ContainerStatus) -> ContainerInfo {
    let (state, reason) = match &st.state {
        ContainerState::Running => ("Running", None),
        ContainerState::Waiting { reason } => ("Waiting", Some(reason.clone())),
        ContainerState::Terminated { reason, .. } => ("Terminated", Some(reason.clone())),
    };
    ContainerInfo {
        name: st.name.clone(),
        state: state.to_string(),
        reason,
        restarts: st.restarts,
        pid: st.pid,
        last_exit_code: st.last_exit_code,
        log: sandbox.log_path(&st.name),
    }
}

fn pod_status(containers: &[ContainerInfo]) -> String {
    if let Some(r) = containers
        .iter()
        .find_map(|c| c.reason.as_deref().filter(|r| *r == "CrashLoopBackOff"))
    {
        return r.to_string();
    }
    if containers.iter().all(|c| c.state == "Running") {
        return "Running".into();
    }
    if containers.iter().all(|c| c.state == "Terminated") {
        return if containers.iter().all(|c| c.last_exit_code == Some(0)) {
            "Completed".into()
        } else {
            "Error".into()
        };
    }
    if containers.iter().any(|c| c.state == "Waiting") {
        return "ContainerCreating".into();
    }
    "Running".into()
}

impl Shared {
    fn pods(&self) -> Vec<PodInfo> {
        lock(&self.pods)
            .iter()
            .map(|p| {
                let containers: Vec<ContainerInfo> = p
                    .containers
                    .iter()
                    .map(|(_, s)| container_info(&p.sandbox, &s.status()))
                    .collect();
                PodInfo {
                    namespace: p.plan.namespace.clone(),
                    name: p.plan.name.clone(),
                    deployment: p.plan.deployment.clone(),
                    ip: p.net.ip.to_string(),
                    netns: p.net.netns.clone(),
                    proxy: p.plan.proxy,
                    outside_hostnames: p.plan.outside_hostnames.clone(),
                    status: pod_status(&containers),
                    containers,
                    age_secs: p.created.elapsed().as_secs(),
                }
            })
            .collect()
    }

    fn status(&self) -> MeshStatus {
        let pods = self.pods();
        let (dns, outside) = lock(&self.dns).clone();
        let notes = lock(&self.notes).clone();
        let push = self.push.status();
        MeshStatus {
            name: self.name.clone(),
            phase: lock(&self.phase).clone(),
            pid: std::process::id(),
            node_netns: lock(&self.node_netns).clone(),
            domain: self.domain.clone(),
            pods: pods.len(),
            ready_pods: pods.iter().filter(|p| p.status == "Running").count(),
            services: self.plan.services.len(),
            dns,
            outside_dns: outside,
            uptime_secs: self.started.elapsed().as_secs(),
            proxies: push.len(),
            proxies_synced: push
                .values()
                .filter(|p| {
                    p.resources
                        .values()
                        .all(|r| r.state == isthmus_push::SyncState::Synced)
                })
                .count(),
            published: lock(&self.published).clone(),
            notes,
        }
    }

    fn container(&self, ns: &str, target: &str, container: Option<&str>) -> Response {
        let (kind, name) = match target.split_once('/') {
            Some((k, n)) => (k, n),
            None => ("pod", target),
        };
        let pods = lock(&self.pods);
        let found = pods.iter().find(|p| {
            p.plan.namespace == ns
                && match kind {
                    "pod" | "pods" | "po" => p.plan.name == name,
                    "deploy" | "deployment" | "deployments" => {
                        p.plan.deployment.as_deref() == Some(name)
                    }
                    _ => false,
                }
        });
        let Some(p) = found else {
            return Response::Error {
                message: format!(
                    "Error from server (NotFound): {} \"{name}\" not found in namespace {ns}",
                    if kind.starts_with("deploy") {
                        "deployments.apps"
                    } else {
                        "pods"
                    }
                ),
            };
        };
        let chosen = match container {
            None => p.containers.first(),
            Some(c) => p.containers.iter().find(|(s, _)| s.name == c),
        };
        let Some((spec, sup)) = chosen else {
            let c = container.unwrap_or_default();
            let names: Vec<&str> = p.containers.iter().map(|(s, _)| s.name.as_str()).collect();
            let hint = if c == crate::proxies::PROXY_CONTAINER {
                " (this pod runs no proxy: not injected, or its config could not be compiled — see `isthmus status`)"
            } else {
                ""
            };
            return Response::Error {
                message: format!(
                    "container {c} is not valid for pod {}; choose one of: [{}]{hint}",
                    p.plan.name,
                    names.join(" ")
                ),
            };
        };
        Response::Container(ContainerTarget {
            namespace: p.plan.namespace.clone(),
            pod: p.plan.name.clone(),
            container: spec.name.clone(),
            pid: sup.status().pid,
            env: spec.env.clone(),
            log: p.sandbox.log_path(&spec.name),
            netns: p.net.netns.clone(),
        })
    }

    /// Loads `files` as the API server would validate them (all or nothing) and checks that
    /// every object may change on a running mesh: Istio config and Secrets (gateway
    /// credentials). Pods, Services and the rest are fixed at `up`.
    fn load_changes(files: &[(String, String)], verb: &str) -> Result<Vec<Object>, String> {
        let mut loaded = isthmus_api::Loaded::default();
        for (name, text) in files {
            loaded.extend(isthmus_api::load_str(name, text, &LoadOptions::default()));
        }
        if !loaded.rejections.is_empty() {
            return Err(loaded
                .rejections
                .iter()
                .map(|r| r.message.clone())
                .collect::<Vec<_>>()
                .join("\n"));
        }
        if let Some(o) = loaded.objects.iter().find(|o| !live_kind(o.kind)) {
            return Err(format!(
                "{}: only Istio config (Gateway, VirtualService, DestinationRule, ServiceEntry, Sidecar, ...) and Secrets can be {verb} a running mesh; pods, services and the rest are fixed at `up` (run `isthmus down` and `isthmus up` again)",
                o.label()
            ));
        }
        Ok(loaded.objects)
    }

    /// `isthmus apply`: validates the files as the API server would (all or nothing), merges
    /// them into the config store, recompiles every proxy and pushes what changed. Secrets
    /// are accepted (a changed gateway credential reaches the gateways that reference it);
    /// Pods and Services are fixed at `up`; applying them is refused with that explanation.
    fn apply(&self, files: Vec<(String, String)>) -> Response {
        let changes = match Self::load_changes(&files, "applied to") {
            Ok(c) => c,
            Err(message) => return Response::Error { message },
        };
        let _push = lock(&self.push_lock);
        let mut objects = lock(&self.objects).clone();
        let mut next_seq = objects.iter().map(|o| o.seq + 1).max().unwrap_or(0);
        let mut lines = Vec::new();
        for mut o in changes {
            let what = format!("{}/{}", resource_kind(&o), o.name());
            match objects.iter().position(|x| same_object(x, &o)) {
                Some(i) if objects[i].raw == o.raw => lines.push(format!("{what} unchanged")),
                Some(i) => {
                    o.seq = objects[i].seq;
                    objects[i] = o;
                    lines.push(format!("{what} configured"));
                }
                None => {
                    o.seq = next_seq;
                    next_seq += 1;
                    objects.push(o);
                    lines.push(format!("{what} created"));
                }
            }
        }
        match self.commit(objects) {
            Ok(versions) => Response::Applied { lines, versions },
            Err(message) => Response::Error { message },
        }
    }

    /// `isthmus delete`: validates the files like `apply`, checks that every object exists
    /// (else kubectl's NotFound message and nothing changes), removes them and pushes.
    fn delete(&self, files: Vec<(String, String)>) -> Response {
        let gone = match Self::load_changes(&files, "deleted from") {
            Ok(c) => c,
            Err(message) => return Response::Error { message },
        };
        let _push = lock(&self.push_lock);
        let mut objects = lock(&self.objects).clone();
        let mut lines = Vec::new();
        let mut missing = Vec::new();
        for o in &gone {
            match objects.iter().position(|x| same_object(x, o)) {
                Some(i) => {
                    objects.remove(i);
                    lines.push(format!("{} \"{}\" deleted", resource_kind(o), o.name()));
                }
                None => missing.push(format!(
                    "Error from server (NotFound): error when deleting \"{}\": {} \"{}\" not found",
                    o.source.file,
                    resource_plural(o),
                    o.name()
                )),
            }
        }
        if !missing.is_empty() {
            missing.push("nothing was deleted (the mesh is unchanged)".into());
            return Response::Error {
                message: missing.join("\n"),
            };
        }
        match self.commit(objects) {
            Ok(versions) => Response::Applied { lines, versions },
            Err(message) => Response::Error { message },
        }
    }

    /// Makes `objects` the config store: rebuilds the model, recompiles every proxy (all or
    /// nothing) and pushes what changed. Callers hold `push_lock`, so a rotation push cannot
    /// interleave with an older compile. Returns proxy node id → version being pushed.
    fn commit(&self, objects: Vec<Object>) -> Result<BTreeMap<String, u64>, String> {
        let (snapshot, _) = Snapshot::build(&objects, self.mesh_config.clone(), &self.domain);
        let regs = lock(&self.proxies).clone();
        let mut configs = Vec::new();
        for r in &regs {
            match crate::proxies::render_config(&snapshot, &r.pod, &r.cert) {
                Ok(c) => configs.push((r.node_id.clone(), c)),
                Err(e) => return Err(format!("not applied (the mesh is unchanged): {e}")),
            }
        }
        self.refresh_sidecar_dns(&snapshot);
        *lock(&self.objects) = objects;
        *lock(&self.snapshot) = snapshot;
        let mut versions = BTreeMap::new();
        for (node, c) in configs {
            let v = self.push.set(isthmus_push::ResourceKind::Config, &node, c);
            versions.insert(node, v);
        }
        Ok(versions)
    }

    /// Keeps the sidecars' DNS in step with the ServiceEntries: hosts applied to (or deleted
    /// from) the running mesh resolve to their VIPs at once, as Istio's DNS proxy learns them
    /// from istiod, without restarting the DNS process.
    fn refresh_sidecar_dns(&self, snapshot: &Snapshot) {
        let table = self
            .plan
            .sidecar_dns_table(&crate::plan::service_entry_vips(snapshot));
        let spec = {
            let mut guard = lock(&self.dns_spec);
            let Some(spec) = guard.as_mut() else { return };
            let Some(server) = spec.servers.iter_mut().find(|s| s.role == "sidecar") else {
                return;
            };
            if server.table == table {
                return;
            }
            server.table = table;
            spec.clone()
        };
        if let Some(p) = lock(&self.dns_proc).as_mut() {
            match p.reload(&self.dir.dir, &spec) {
                Ok(()) => {
                    tracing::info!("sidecar DNS table updated for the applied ServiceEntries")
                }
                Err(e) => tracing::error!(error = %e, "cannot update the sidecar DNS table"),
            }
        }
    }

    /// Pushes rotated workload certificates: every proxy whose identity got a new
    /// certificate is recompiled with it and pushed (SDS `default`; no restart). Existing
    /// connections keep the certificate they were established with.
    fn rotated(&self, fresh: &[(isthmus_tls::Identity, Arc<isthmus_ca::IssuedCert>)]) {
        let _push = lock(&self.push_lock);
        let snapshot = lock(&self.snapshot).clone();
        let mut regs = lock(&self.proxies);
        for r in regs.iter_mut() {
            let Some((_, cert)) = fresh.iter().find(|(id, _)| *id == r.identity) else {
                continue;
            };
            match crate::proxies::render_config(&snapshot, &r.pod, cert) {
                Ok(c) => {
                    r.cert = cert.clone();
                    let v = self
                        .push
                        .set(isthmus_push::ResourceKind::Config, &r.node_id, c);
                    tracing::info!(proxy = %r.node_id, serial = %cert.serial_hex, version = v, "pushing rotated workload certificate");
                }
                Err(e) => {
                    tracing::error!(proxy = %r.node_id, error = %e, "cannot push the rotated certificate; the proxy keeps its current one")
                }
            }
        }
    }

    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(self.status()),
            Request::Pods => Response::Pods { pods: self.pods() },
            Request::Services => Response::Services {
                services: self.plan.services.clone(),
                service_entries: self
                    .plan
                    .service_entry_vips
                    .iter()
                    .map(|(h, ip)| (h.clone(), ip.to_string()))
                    .collect(),
            },
            Request::Objects { kind } => Response::Objects {
                objects: lock(&self.objects)
                    .iter()
                    .filter(|o| o.kind.as_str().eq_ignore_ascii_case(&kind))
                    .map(|o| o.raw.clone())
                    .collect(),
            },
            Request::Container {
                namespace,
                target,
                container,
            } => self.container(&namespace, &target, container.as_deref()),
            Request::Apply { files } => self.apply(files),
            Request::Delete { files } => self.delete(files),
            Request::Proxies => Response::Proxies {
                proxies: self
                    .push
                    .status()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or_default()))
                    .collect(),
            },
            Request::MeshConfig => Response::MeshConfig {
                mesh: self.mesh_config.clone(),
            },
            Request::Shutdown => {
                let _ = self.shutdown.send(true);
                Response::Ok
            }
        }
    }
}

async fn serve_conn(shared: Arc<Shared>, s: UnixStream) {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(r).read_line(&mut line),
    )
    .await;
    let resp = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => shared.handle(req),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        _ => return,
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|e| {
        format!("{{\"type\":\"error\",\"message\":\"cannot encode answer: {e}\"}}")
    });
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
    let _ = w.shutdown().await;
}

/// Runs a mesh until `down` or SIGTERM/SIGINT. `cfg.root/<name>` must have been claimed
/// (see [`claim`]); this writes the pid file and removes the directory when done.
pub async fn run(cfg: DaemonConfig) -> Result<(), SupervisorError> {
    let dir = MeshDir::new(&cfg.root, &cfg.name);
    std::fs::write(dir.pid_file(), std::process::id().to_string())
        .map_err(io_err("write", &dir.pid_file()))?;
    let result = run_inner(&cfg, &dir).await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir.dir);
        }
        Err(e) => {
            tracing::error!(error = %e, "supervisor failed");
            eprintln!("error: {e}");
            // Leave the log for `up` to show; everything else goes.
            crate::cleanup_leftovers_keep_log(&dir);
        }
    }
    result
}

async fn run_inner(cfg: &DaemonConfig, dir: &MeshDir) -> Result<(), SupervisorError> {
    let loaded = load(
        &cfg.paths,
        &cfg.domain,
        cfg.mesh_config.as_deref(),
        &cfg.profile,
    )?;
    let sock_path = dir.socket();
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path).map_err(io_err("bind", &sock_path))?;
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        name: cfg.name.clone(),
        dir: dir.clone(),
        domain: cfg.domain.clone(),
        started: Instant::now(),
        phase: Mutex::new(Phase::Starting),
        node_netns: Mutex::new(String::new()),
        dns: Mutex::new((String::new(), String::new())),
        pods: Mutex::new(Vec::new()),
        plan: loaded.plan.clone(),
        mesh_config: loaded.snapshot.mesh.clone(),
        snapshot: Mutex::new(loaded.snapshot.clone()),
        objects: Mutex::new(loaded.objects.clone()),
        push: isthmus_push::PushServer::new(),
        push_lock: Mutex::new(()),
        dns_proc: Mutex::new(None),
        dns_spec: Mutex::new(None),
        proxies: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
        published: Mutex::new(Vec::new()),
        shutdown: shutdown_tx.clone(),
    });
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve_conn(shared.clone(), s));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "socket accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    {
        let tx = shutdown_tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
    }

    let mut net_cfg = MeshNetConfig::new(&cfg.name);
    net_cfg.subnet = POD_SUBNET.parse().unwrap_or(net_cfg.subnet);
    let mesh = MeshNet::up(net_cfg)?;
    *lock(&shared.node_netns) = mesh.node_netns().to_string();
    let cert_ttl = cfg.workload_cert_ttl.unwrap_or(DEFAULT_WORKLOAD_CERT_TTL);
    let built = build(&shared, &mesh, &loaded.plan, cert_ttl, &mut shutdown_rx).await;
    let servers = match built {
        Ok(servers) => servers,
        Err(e) => {
            *lock(&shared.phase) = Phase::Failed(e.to_string());
            teardown(&shared, &mesh).await;
            return Err(e);
        }
    };
    if !*shutdown_rx.borrow() {
        *lock(&shared.phase) = Phase::Ready;
        tracing::info!(mesh = %cfg.name, "mesh ready");
        while !*shutdown_rx.borrow_and_update() {
            if shutdown_rx.changed().await.is_err() {
                break;
            }
        }
    }
    *lock(&shared.phase) = Phase::Stopping;
    drop(servers);
    teardown(&shared, &mesh).await;
    Ok(())
}

async fn build(
    shared: &Arc<Shared>,
    mesh: &MeshNet,
    plan: &MeshPlan,
    cert_ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Servers, SupervisorError> {
    let node = mesh.node_netns().to_string();
    // The sidecars' DNS proxy: mesh names plus ServiceEntry VIPs, on a 4th bridge address.
    let sidecar_ip = crate::proxies::sidecar_dns_ip(mesh.subnet());
    let sidecar_entries = plan.sidecar_dns_table(&plan.service_entry_vips);
    isthmus_local::cmd::ip(&[
        "-n",
        &node,
        "addr",
        "add",
        &format!("{sidecar_ip}/{}", mesh.subnet().prefix_len()),
        "dev",
        isthmus_local::net::BRIDGE,
    ])?;
    // Names the mesh does not know go to the outside world, as kube-dns forwards upstream.
    let spec = crate::dns_proc::DnsSpec {
        node_netns: node.clone(),
        servers: vec![
            crate::dns_proc::DnsServerSpec {
                role: "outside".into(),
                addr: SocketAddr::from((mesh.outside_dns_ip(), 53)),
                table: plan.outside_dns.clone(),
                forward: None,
            },
            crate::dns_proc::DnsServerSpec {
                role: "mesh".into(),
                addr: SocketAddr::from((mesh.dns_ip(), 53)),
                table: plan.mesh_dns.clone(),
                forward: Some(plan.outside_dns.clone()),
            },
            crate::dns_proc::DnsServerSpec {
                role: "sidecar".into(),
                addr: SocketAddr::from((sidecar_ip, 53)),
                table: sidecar_entries,
                forward: Some(plan.outside_dns.clone()),
            },
        ],
    };
    let exe = std::env::current_exe().map_err(io_err("locate", Path::new("/proc/self/exe")))?;
    let dns_proc =
        crate::dns_proc::DnsProcess::start(&exe, &shared.dir.dir, &spec, DNS_START_TIMEOUT)
            .await
            .map_err(SupervisorError::DnsProcess)?;
    tracing::info!(pid = dns_proc.pid(), "mesh DNS process started");
    *lock(&shared.dns_proc) = Some(dns_proc);
    *lock(&shared.dns_spec) = Some(spec);
    tokio::spawn(keep_dns_running(shared.clone(), exe.clone()));
    *lock(&shared.dns) = (
        SocketAddr::from((mesh.dns_ip(), 53)).to_string(),
        SocketAddr::from((mesh.outside_dns_ip(), 53)).to_string(),
    );

    let proxied = plan.pods.iter().any(|p| p.proxy != PodProxy::None);
    let ca = if proxied {
        match isthmus_ca::Ca::generate(&shared.mesh_config.trust_domain) {
            Ok(ca) => Some(Arc::new(isthmus_ca::WorkloadCertManager::new(
                Arc::new(ca),
                Some(cert_ttl),
            ))),
            Err(e) => {
                lock(&shared.notes).push(format!("no proxies: cannot create the mesh CA: {e}"));
                None
            }
        }
    } else {
        None
    };
    // The control plane's push endpoint: on the bridge address every pod routes to.
    let control_plane = SocketAddr::from((mesh.gateway_ip(), CONTROL_PLANE_PORT));
    if ca.is_some() {
        let listener = netns::listen_tcp_async(&node, control_plane)
            .await
            .map_err(|e| {
                io_err("listen on", Path::new(&control_plane.to_string()))(std::io::Error::other(
                    e.to_string(),
                ))
            })?;
        tokio::spawn(shared.push.clone().serve_tcp(listener));
    }
    for p in &plan.pods {
        if *shutdown.borrow() {
            return Ok(Servers {
                _relays: Vec::new(),
            });
        }
        let proxy = match (&ca, p.proxy) {
            (Some(ca), PodProxy::Sidecar | PodProxy::Gateway) => {
                let dir = crate::proxies::proxy_dir(&shared.dir.dir, &p.namespace, &p.name);
                let prepared = {
                    let snap = lock(&shared.snapshot);
                    crate::proxies::prepare(&snap, ca, p, &dir, &exe, control_plane)
                };
                match prepared {
                    Ok((c, reg, token, config)) => {
                        shared.push.register(&token, &reg.node_id);
                        shared
                            .push
                            .set(isthmus_push::ResourceKind::Config, &reg.node_id, config);
                        lock(&shared.proxies).push(reg);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::error!(pod = %p.key(), error = %e, "proxy left out");
                        lock(&shared.notes)
                            .push(format!("pod {} runs without its proxy: {e}", p.key()));
                        None
                    }
                }
            }
            _ => None,
        };
        start_pod(shared, mesh, plan, p, proxy)?;
    }
    if let Some(certs) = ca {
        tokio::spawn(rotate_certificates(shared.clone(), certs));
    }
    let relays = publish_ingress(shared, mesh).await;
    wait_ready(shared, &node, shutdown).await;
    Ok(Servers { _relays: relays })
}

/// Restarts the mesh DNS process if it dies while the mesh runs (it is not a pod, so nothing
/// else would).
async fn keep_dns_running(shared: Arc<Shared>, exe: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if *shared.shutdown.borrow() || matches!(*lock(&shared.phase), Phase::Stopping) {
            return;
        }
        let dead = match lock(&shared.dns_proc).as_mut() {
            Some(p) => p.exited(),
            None => return,
        };
        if !dead {
            continue;
        }
        tracing::warn!("mesh DNS process exited; restarting it");
        let Some(spec) = lock(&shared.dns_spec).clone() else {
            return;
        };
        match crate::dns_proc::DnsProcess::start(&exe, &shared.dir.dir, &spec, DNS_START_TIMEOUT)
            .await
        {
            Ok(p) => *lock(&shared.dns_proc) = Some(p),
            Err(e) => tracing::error!(error = %e, "cannot restart the mesh DNS"),
        }
    }
}

/// Rotates workload certificates at half their lifetime for as long as the mesh runs and
/// pushes each new certificate to the proxies holding that identity (istiod + istio-agent's
/// SDS rotation, without restarts).
async fn rotate_certificates(shared: Arc<Shared>, certs: Arc<isthmus_ca::WorkloadCertManager>) {
    loop {
        let fresh = certs.refresh_when_due(ROTATION_MAX_WAIT).await;
        if !fresh.is_empty() {
            shared.rotated(&fresh);
        }
    }
}

/// What runs in the supervisor itself for the mesh's lifetime (dropping stops it).
struct Servers {
    _relays: Vec<isthmus_local::relay::PortRelay>,
}

/// Publishes every port of Services that select an ingress gateway (`istio: ingressgateway`)
/// on host loopback (a free port each), so the host reaches the gateway as through a
/// LoadBalancer: `curl --resolve HOST:PORT:127.0.0.1 http://HOST:PORT/`.
async fn publish_ingress(
    shared: &Arc<Shared>,
    mesh: &MeshNet,
) -> Vec<isthmus_local::relay::PortRelay> {
    let mut relays = Vec::new();
    let services = lock(&shared.snapshot).services.clone();
    for svc in &services {
        if svc.registry != isthmus_model::Registry::Kubernetes
            || svc.selector.get("istio").map(String::as_str) != Some("ingressgateway")
        {
            continue;
        }
        for port in &svc.ports {
            let Some(ep) = svc.endpoints_for_port(port.port).next() else {
                continue;
            };
            let (Ok(ip), Ok(p)) = (ep.address.parse::<Ipv4Addr>(), u16::try_from(ep.port)) else {
                continue;
            };
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            match isthmus_local::relay::PortRelay::start(
                listen,
                mesh.node_netns(),
                SocketAddr::from((ip, p)),
            )
            .await
            {
                Ok(r) => {
                    lock(&shared.published).push(format!(
                        "{} -> {}/{}:{}",
                        r.local_addr(),
                        svc.namespace,
                        svc.name,
                        port.port
                    ));
                    relays.push(r);
                }
                Err(e) => lock(&shared.notes).push(format!(
                    "cannot publish {}/{}:{} on host loopback: {e}",
                    svc.namespace, svc.name, port.port
                )),
            }
        }
    }
    relays
}

fn hostname_of(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let h = h.trim_matches(|c| c == '-' || c == '.').to_string();
    if h.is_empty() {
        "pod".into()
    } else {
        h
    }
}

fn start_pod(
    shared: &Arc<Shared>,
    mesh: &MeshNet,
    plan: &MeshPlan,
    p: &PodPlan,
    proxy: Option<process::ContainerSpec>,
) -> Result<(), SupervisorError> {
    let key = p.key();
    let net = mesh.add_pod_with_ip(&key, p.ip)?;
    let outside = !p.outside_hostnames.is_empty();
    let (resolv, hosts) = if outside {
        // Outside hosts know nothing of the mesh: only the outside-world resolver.
        let names: Vec<(Ipv4Addr, String)> = vec![(p.ip, p.outside_hostnames.join(" "))];
        (
            dns::resolv_conf(mesh.outside_dns_ip(), &[], 1),
            process::hosts_file(p.ip, &hostname_of(&p.name), &names),
        )
    } else {
        (
            dns::resolv_conf(
                mesh.dns_ip(),
                &dns::search_domains(&p.namespace, &plan.domain),
                5,
            ),
            process::hosts_file(p.ip, &hostname_of(&p.name), &[]),
        )
    };
    let pod_dir = shared.dir.pod_dir(&p.namespace, &p.name);
    let sandbox = Arc::new(PodSandbox::prepare(
        &net.netns,
        &pod_dir,
        &hostname_of(&p.name),
        &resolv,
        &hosts,
        p.volumes.clone(),
    )?);
    let sidecar = proxy.is_some() && p.proxy == PodProxy::Sidecar;
    if sidecar {
        // Outbound TCP → 15001, inbound → 15006; the proxy (uid 1337) is exempt.
        let dns = (mesh.dns_ip(), crate::proxies::sidecar_dns_ip(mesh.subnet()));
        isthmus_local::cmd::nft_script(
            Some(&net.netns),
            &crate::proxies::capture_ruleset(Some(dns)),
        )?;
    } else if !outside {
        // kube-proxy: the pod's own connections to cluster IPs are DNATed to endpoints.
        vip::install_service_vips(&net.netns, &plan.vips, vip::VipMode::Pod)?;
    }
    let mut containers = Vec::new();
    let mut first_err = None;
    let mut specs = p.containers.clone();
    specs.extend(proxy);
    for c in &specs {
        match Supervised::start(
            sandbox.clone(),
            c.clone(),
            p.restart_policy,
            Backoff::default(),
        ) {
            Ok(s) => containers.push((c.clone(), s)),
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
    }
    lock(&shared.pods).push(RunningPod {
        plan: p.clone(),
        net,
        sandbox,
        containers,
        created: Instant::now(),
    });
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn wait_ready(shared: &Arc<Shared>, node: &str, shutdown: &mut watch::Receiver<bool>) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let probes: Vec<(String, SocketAddr)> = lock(&shared.pods)
        .iter()
        .flat_map(|p| {
            let key = p.plan.key();
            let ip = p.net.ip;
            p.plan
                .tcp_ports
                .iter()
                .map(move |port| (key.clone(), SocketAddr::from((ip, *port))))
        })
        .collect();
    let mut pending: BTreeMap<String, SocketAddr> = probes
        .into_iter()
        .map(|(k, a)| (format!("{k}@{a}"), a))
        .collect();
    loop {
        if *shutdown.borrow() || Instant::now() >= deadline {
            if !pending.is_empty() {
                tracing::warn!(ports = ?pending.keys().collect::<Vec<_>>(), "ports still not accepting connections; declaring the mesh ready anyway");
            }
            return;
        }
        let started = lock(&shared.pods).iter().all(|p| {
            p.containers.iter().all(|(_, s)| {
                let st = s.status();
                !matches!(&st.state, ContainerState::Waiting { reason } if reason == "ContainerCreating")
            })
        });
        let mut done = Vec::new();
        for (k, addr) in &pending {
            let probe = netns::connect_tcp(node, *addr, None);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), probe).await {
                done.push(k.clone());
            }
        }
        for k in done {
            pending.remove(&k);
        }
        // A proxy is ready once it runs the control plane's config (ACKed), as istio-proxy's
        // readiness follows its first xDS push.
        let proxies_synced = shared.push.status().values().all(|p| {
            p.resources
                .values()
                .all(|r| r.state == isthmus_push::SyncState::Synced)
        });
        if started && pending.is_empty() && proxies_synced {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn teardown(shared: &Arc<Shared>, mesh: &MeshNet) {
    let pods: Vec<RunningPod> = std::mem::take(&mut *lock(&shared.pods));
    let mut stops = Vec::new();
    let mut sandboxes = Vec::new();
    for p in pods {
        sandboxes.push(p.sandbox.clone());
        for (_, s) in p.containers {
            stops.push(tokio::spawn(s.stop(Duration::from_secs(2))));
        }
    }
    for s in stops {
        let _ = s.await;
    }
    for s in sandboxes {
        s.cleanup();
    }
    if let Some(mut d) = lock(&shared.dns_proc).take() {
        d.stop(Duration::from_secs(2));
    }
    if let Err(e) = mesh.down() {
        tracing::error!(error = %e, "mesh network teardown");
        // Last resort: by name, through the veth peers.
        let _ = isthmus_local::net::cleanup_mesh(&mesh.config().prefix, mesh.mesh());
    }
    tracing::info!(mesh = %shared.name, "mesh down");
}

/// Runs [`run`] on a fresh multi-threaded runtime (the `isthmus supervise` entry point).
pub fn run_blocking(cfg: DaemonConfig) -> Result<(), SupervisorError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("start runtime for", &cfg.root))?;
    rt.block_on(run(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_sanitised() {
        assert_eq!(hostname_of("web-abc"), "web-abc");
        assert_eq!(hostname_of("a_b"), "a-b");
        assert_eq!(hostname_of("__"), "pod");
        assert_eq!(hostname_of(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn pod_status_follows_kubectl() {
        let c = |state: &str, reason: Option<&str>, code: Option<i32>| ContainerInfo {
            name: "c".into(),
            state: state.into(),
            reason: reason.map(str::to_string),
            restarts: 0,
            pid: None,
            last_exit_code: code,
            log: PathBuf::new(),
        };
        assert_eq!(pod_status(&[c("Running", None, None)]), "Running");
        assert_eq!(
            pod_status(&[
                c("Running", None, None),
                c("Waiting", Some("CrashLoopBackOff"), Some(1))
            ]),
            "CrashLoopBackOff"
        );
        assert_eq!(
            pod_status(&[c("Terminated", Some("Completed"), Some(0))]),
            "Completed"
        );
        assert_eq!(
            pod_status(&[c("Terminated", Some("Error"), Some(2))]),
            "Error"
        );
        assert_eq!(
            pod_status(&[c("Waiting", Some("ContainerCreating"), None)]),
            "ContainerCreating"
        );
    }

    #[test]
    fn apply_and_delete_name_resources_as_kubectl_does() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: a}\nspec:\n  hosts: [x.example]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: a}\ntype: Opaque\ndata: {k: dg==}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n";
        let loaded = isthmus_api::load_str("t.yaml", text, &LoadOptions::default());
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let got: Vec<(String, String)> = loaded
            .objects
            .iter()
            .map(|o| (resource_kind(o), resource_plural(o)))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "serviceentry.networking.istio.io".to_string(),
                    "serviceentries.networking.istio.io".to_string()
                ),
                ("secret".to_string(), "secrets".to_string()),
                (
                    "gateway.networking.istio.io".to_string(),
                    "gateways.networking.istio.io".to_string()
                ),
            ]
        );
        assert!(loaded.objects.iter().all(|o| live_kind(o.kind)));
        let pod = isthmus_api::load_str(
            "p.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, command: [x]}]\n",
            &LoadOptions::default(),
        );
        let e = Shared::load_changes(&[("p.yaml".into(), "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, command: [x]}]\n".into())], "deleted from")
            .expect_err("pods are fixed");
        assert!(e.contains("fixed at `up`"), "{e}");
        assert!(pod.objects.iter().all(|o| !live_kind(o.kind)));
    }

    #[test]
    fn claim_refuses_a_live_mesh_and_replaces_a_dead_one() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = MeshDir::new(tmp.path(), "claimtest");
        claim(&d).expect("first claim");
        std::fs::write(d.pid_file(), std::process::id().to_string()).expect("pid");
        let e = claim(&d).expect_err("live");
        assert!(e.to_string().contains("already running"), "{e}");
        std::fs::write(d.pid_file(), "999999999").expect("pid");
        claim(&d).expect("stale claim");
        assert!(d.dir.is_dir());
        assert!(!d.pid_file().exists());
        assert!(claim(&MeshDir::new(tmp.path(), "Bad_Name")).is_err());
    }
}
