//! Client-side operations: `up` (validate, claim, spawn the supervisor detached, wait for
//! Ready) and `down` (shut the supervisor down, then verify nothing is left).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_local::net::{node_netns_name, DEFAULT_PREFIX};
use isthmus_local::netns;

use crate::api::{
    self, ClientError, ContainerTarget, MeshStatus, Phase, PodInfo, Request, Response,
};
use crate::daemon::{self, SupervisorError};
use crate::state::{self, MeshDir};

/// Errors of `up`/`down`, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Loading, planning, claiming.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// Socket API.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The supervisor could not be started.
    #[error("cannot start the supervisor `{exe}`: {source}")]
    Spawn {
        /// Program.
        exe: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The supervisor failed during startup.
    #[error("mesh `{name}` failed to start: {message}\n--- {log} ---\n{tail}")]
    StartFailed {
        /// Mesh.
        name: String,
        /// Why.
        message: String,
        /// Log file.
        log: String,
        /// Last lines of it.
        tail: String,
    },
    /// Nothing to take down.
    #[error("no mesh named `{0}` (no supervisor, no state, no namespaces); `isthmus status` lists running meshes")]
    NoSuchMesh(String),
    /// `down` found leftovers after teardown.
    #[error("mesh `{name}` is down but these were left behind: {}; run `isthmus down --all` (as root)", .leftovers.join(", "))]
    Leftovers {
        /// Mesh.
        name: String,
        /// What remains.
        leftovers: Vec<String>,
    },
}

/// How to bring a mesh up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Mesh name.
    pub name: String,
    /// State root.
    pub root: PathBuf,
    /// Manifests.
    pub paths: Vec<PathBuf>,
    /// DNS suffix.
    pub domain: String,
    /// Mesh config file.
    pub mesh_config: Option<PathBuf>,
    /// Install profile (`demo`, `minimal`).
    pub profile: String,
    /// Program that runs the supervisor, and its leading arguments (e.g. the `isthmus`
    /// binary and `["supervise"]`); [`supervise_args`] are appended.
    pub exe: PathBuf,
    /// Leading arguments.
    pub exe_args: Vec<String>,
    /// How long to wait for Ready.
    pub timeout: Duration,
    /// Workload certificate lifetime (default: the supervisor's 24h).
    pub workload_cert_ttl: Option<Duration>,
}

/// What `up` brought up.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// Final status.
    pub status: MeshStatus,
    /// Pods.
    pub pods: Vec<PodInfo>,
}

/// Arguments the supervisor entry point receives after `exe_args`:
/// `--name N --state-root R --domain D [--mesh-config F] -- PATH...` (paths made absolute).
pub fn supervise_args(o: &UpOptions) -> Vec<String> {
    let abs = |p: &Path| -> String {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let mut a = vec![
        "--name".to_string(),
        o.name.clone(),
        "--state-root".to_string(),
        abs(&o.root),
        "--domain".to_string(),
        o.domain.clone(),
        "--profile".to_string(),
        o.profile.clone(),
    ];
    if let Some(m) = &o.mesh_config {
        a.push("--mesh-config".into());
        a.push(abs(m));
    }
    if let Some(t) = o.workload_cert_ttl {
        a.push("--workload-cert-ttl".into());
        a.push(format!("{}s", t.as_secs().max(1)));
    }
    a.push("--".into());
    a.extend(o.paths.iter().map(|p| abs(p)));
    a
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `isthmus up`: checks the host, validates and plans the manifests, claims the state
/// directory, spawns the supervisor detached and waits until the mesh is Ready.
pub fn up(o: &UpOptions) -> Result<UpReport, OpsError> {
    isthmus_local::preflight().map_err(SupervisorError::from)?;
    isthmus_local::net::validate_mesh_name(&o.name).map_err(SupervisorError::from)?;
    daemon::load(&o.paths, &o.domain, o.mesh_config.as_deref(), &o.profile)?;
    let dir = MeshDir::new(&o.root, &o.name);
    if let Some(pid) = dir.live_pid() {
        return Err(SupervisorError::AlreadyRunning {
            name: o.name.clone(),
            pid,
        }
        .into());
    }
    daemon::claim(&dir)?;
    let log_path = dir.log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| SupervisorError::Io {
            action: "open",
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| SupervisorError::Io {
        action: "open",
        path: log_path.clone(),
        source,
    })?;
    let mut c = match isthmus_local::cmd::which("setsid") {
        // A new session: the supervisor outlives the terminal that ran `up`.
        Some(setsid) => {
            let mut c = Command::new(setsid);
            c.arg(&o.exe);
            c
        }
        None => {
            use std::os::unix::process::CommandExt;
            let mut c = Command::new(&o.exe);
            c.process_group(0);
            c
        }
    };
    c.args(&o.exe_args)
        .args(supervise_args(o))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    if std::env::var_os("ISTHMUS_LOG").is_none() {
        c.env("ISTHMUS_LOG", "info");
    }
    let mut child = c.spawn().map_err(|source| OpsError::Spawn {
        exe: o.exe.display().to_string(),
        source,
    })?;
    let deadline = Instant::now() + o.timeout;
    let fail = |message: String| {
        let t = tail(&log_path, 30);
        let _ = std::fs::remove_dir_all(&dir.dir);
        OpsError::StartFailed {
            name: o.name.clone(),
            message,
            log: log_path.display().to_string(),
            tail: t,
        }
    };
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(fail(format!("the supervisor exited ({st})")));
        }
        match api::call(&o.name, &dir.socket(), &Request::Status, CALL_TIMEOUT) {
            Ok(Response::Status(s)) => match &s.phase {
                Phase::Ready => {
                    let pods =
                        match api::call(&o.name, &dir.socket(), &Request::Pods, CALL_TIMEOUT)? {
                            Response::Pods { pods } => pods,
                            _ => Vec::new(),
                        };
                    return Ok(UpReport { status: s, pods });
                }
                Phase::Failed(m) => {
                    let m = m.clone();
                    // It tears itself down; wait for that so the failure leaves nothing.
                    let until = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < until && !matches!(child.try_wait(), Ok(Some(_))) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return Err(fail(m));
                }
                _ => {}
            },
            Ok(_) | Err(ClientError::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "not ready after {}s; the supervisor keeps running — inspect with `isthmus get pods --name {}` and stop it with `isthmus down --name {}`",
                o.timeout.as_secs(),
                o.name,
                o.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `down` removed.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// Mesh.
    pub name: String,
    /// Whether a live supervisor was stopped (else: leftovers of a crashed run were removed).
    pub stopped_supervisor: bool,
    /// Namespaces that existed and are gone now.
    pub namespaces: Vec<String>,
    /// Container processes that were running and are gone now.
    pub processes: usize,
}

fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if !state::pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    !state::pid_alive(pid)
}

/// `isthmus down --name N`: asks the supervisor to tear the mesh down (or removes the
/// leftovers of a crashed one), then verifies that its namespaces, container processes and
/// state directory are gone.
pub fn down(root: &Path, name: &str) -> Result<DownReport, OpsError> {
    isthmus_local::net::validate_mesh_name(name).map_err(SupervisorError::from)?;
    let dir = MeshDir::new(root, name);
    let node = node_netns_name(DEFAULT_PREFIX, name);
    let mut report = DownReport {
        name: name.to_string(),
        ..Default::default()
    };
    let mut pids: Vec<u32> = Vec::new();
    match dir.live_pid() {
        Some(pid) => {
            if let Ok(Response::Pods { pods }) =
                api::call(name, &dir.socket(), &Request::Pods, CALL_TIMEOUT)
            {
                for p in &pods {
                    report.namespaces.push(p.netns.clone());
                    pids.extend(p.containers.iter().filter_map(|c| c.pid));
                }
            }
            report.namespaces.push(node.clone());
            report.stopped_supervisor = true;
            let asked = api::call(name, &dir.socket(), &Request::Shutdown, CALL_TIMEOUT).is_ok();
            if !asked {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if !wait_dead(pid, Duration::from_secs(30)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_dead(pid, Duration::from_secs(5));
                // It could not clean up after itself; do it here.
                report.namespaces.extend(crate::cleanup_leftovers(&dir));
            }
        }
        None => {
            if !dir.dir.exists() && !netns::exists(&node) {
                return Err(OpsError::NoSuchMesh(name.to_string()));
            }
            report.namespaces = crate::cleanup_leftovers(&dir);
        }
    }
    report.namespaces.sort();
    report.namespaces.dedup();
    report.processes = pids.len();

    // Verify: nothing of the mesh is left.
    let mut leftovers = Vec::new();
    for n in &report.namespaces {
        if netns::exists(n) {
            leftovers.push(format!("network namespace {n}"));
        }
    }
    if netns::exists(&node) && !report.namespaces.contains(&node) {
        leftovers.push(format!("network namespace {node}"));
    }
    for p in &pids {
        if state::pid_alive(*p) {
            leftovers.push(format!("process {p}"));
        }
    }
    if dir.dir.exists() {
        leftovers.push(format!("state directory {}", dir.dir.display()));
    }
    if leftovers.is_empty() {
        Ok(report)
    } else {
        Err(OpsError::Leftovers {
            name: name.to_string(),
            leftovers,
        })
    }
}

/// What `down --all` did.
#[derive(Debug, Clone, Default)]
pub struct DownAllReport {
    /// One report per mesh of the state root that was taken down.
    pub meshes: Vec<DownReport>,
    /// Mesh namespaces on this host that belong to no mesh of this state root (another
    /// root's meshes, or leftovers whose state is gone); never touched by `down --all`.
    pub foreign: Vec<String>,
}

/// `isthmus down --all`: takes down every mesh with state under `root` — running ones and
/// leftovers of crashed runs (their namespaces, processes, DNS and state) — and nothing else,
/// so meshes of other state roots (parallel tests, other users) are never touched. Mesh
/// namespaces of no mesh under `root` are listed in [`DownAllReport::foreign`] with the
/// mesh names, for `isthmus down --name N` (which works without state).
pub fn down_all(root: &Path) -> Result<DownAllReport, OpsError> {
    let mut out = DownAllReport::default();
    let mut first_err = None;
    let meshes = state::list_meshes(root);
    for m in &meshes {
        match down(root, &m.name) {
            Ok(r) => out.meshes.push(r),
            Err(OpsError::NoSuchMesh(_)) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    out.foreign = isthmus_local::net::list_netns(&format!("{DEFAULT_PREFIX}-"))
        .into_iter()
        .filter(|n| {
            mesh_of_node_netns(n).is_some_and(|mesh| !meshes.iter().any(|m| m.name == mesh))
        })
        .collect();
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The mesh name of a node namespace `isth-<mesh>-node`.
pub fn mesh_of_node_netns(ns: &str) -> Option<&str> {
    ns.strip_prefix(&format!("{DEFAULT_PREFIX}-"))?
        .strip_suffix("-node")
}

/// The command `isthmus exec` runs: `argv` inside the running container `t` (its mount, UTS
/// and network namespaces, its working directory and environment). stdio is inherited.
pub fn exec_command(t: &ContainerTarget, argv: &[String]) -> Result<Command, OpsError> {
    let Some(pid) = t.pid else {
        return Err(ClientError::Refused(format!(
            "container {} in pod {}/{} is not running (see `isthmus get pods`); exec needs a running container",
            t.container, t.namespace, t.pod
        ))
        .into());
    };
    if argv.is_empty() {
        return Err(ClientError::Refused(
            "you must specify at least one command for the container (isthmus exec POD -- CMD...)"
                .into(),
        )
        .into());
    }
    let nsenter = isthmus_local::cmd::require("nsenter").map_err(SupervisorError::from)?;
    let mut c = Command::new(nsenter);
    c.arg(format!("--target={pid}"))
        .args(["--mount", "--uts", "--net", "--wd", "--"])
        .args(argv);
    c.env_clear();
    c.env("PATH", isthmus_local::process::DEFAULT_PATH);
    c.env("HOSTNAME", &t.pod);
    c.env("HOME", "/root");
    for (k, v) in &t.env {
        c.env(k, v);
    }
    Ok(c)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET path` on the admin port ([`crate::proxies::ADMIN_ADDR`]) of the running proxy of
/// `t`, from inside its pod's network namespace: what live `proxy-config` and `proxy-stats`
/// read (`/config_dump`, `/stats`). Returns the body of a 200 answer.
pub fn proxy_admin_get(t: &ContainerTarget, path: &str) -> Result<String, OpsError> {
    use std::io::{Read, Write};
    let refused = |m: String| OpsError::Client(ClientError::Refused(m));
    let addr: std::net::SocketAddr = crate::proxies::ADMIN_ADDR
        .parse()
        .map_err(|e| refused(format!("admin address: {e}")))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = netns::run_in(&t.netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .map_err(|e| {
        refused(format!(
            "cannot reach the admin port of the proxy of pod {}/{} ({addr} in {}): {e}; is it running? see `isthmus get pods`",
            t.namespace, t.pod, t.netns
        ))
    })?;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(refused(format!(
            "the proxy of pod {}/{} sent no HTTP answer on {path}",
            t.namespace, t.pod
        )));
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        String::from_utf8_lossy(&dechunk(body)).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    if status != "200" {
        return Err(refused(format!(
            "the proxy of pod {}/{} answered {path} with {status}: {}",
            t.namespace,
            t.pod,
            body.trim_end()
        )));
    }
    Ok(body)
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body (stops at the last chunk or at
/// anything malformed).
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Exit code of a finished process (128+N when killed by signal N), for `exec`.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    isthmus_local::process::exit_code(status)
}

/// The last `tail` lines of a log file (all when `None`), kubectl's `logs --tail`.
pub fn read_log(path: &Path, tail: Option<usize>) -> Result<String, OpsError> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(SupervisorError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }
            .into())
        }
    };
    Ok(match tail {
        None => text,
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervise_args_are_absolute_and_ordered() {
        let o = UpOptions {
            name: "m".into(),
            root: "rel-root".into(),
            paths: vec!["a.yaml".into(), "/abs/b".into()],
            domain: "cluster.local".into(),
            mesh_config: Some("mesh.yaml".into()),
            profile: "minimal".into(),
            exe: "/bin/true".into(),
            exe_args: vec!["supervise".into()],
            timeout: Duration::from_secs(1),
            workload_cert_ttl: None,
        };
        let a = supervise_args(&o);
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(a[0..2], ["--name", "m"]);
        assert_eq!(a[3], cwd.join("rel-root").display().to_string());
        assert_eq!(a[6..8], ["--profile", "minimal"]);
        assert_eq!(
            a[8..10],
            [
                "--mesh-config".to_string(),
                cwd.join("mesh.yaml").display().to_string()
            ]
        );
        assert_eq!(a[10], "--");
        assert_eq!(
            a[11..],
            [
                cwd.join("a.yaml").display().to_string(),
                "/abs/b".to_string()
            ]
        );
    }

    #[test]
    fn log_tail_and_exec_of_a_stopped_container() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("c.log");
        assert_eq!(read_log(&p, Some(2)).expect("missing is empty"), "");
        std::fs::write(&p, "a\nb\nc\n").expect("write");
        assert_eq!(read_log(&p, Some(2)).expect("tail"), "b\nc\n");
        assert_eq!(read_log(&p, None).expect("all"), "a\nb\nc\n");
        assert_eq!(read_log(&p, Some(0)).expect("none"), "");
        let t = ContainerTarget {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            pid: None,
            env: vec![],
            log: p,
            netns: String::new(),
        };
        let e = exec_command(&t, &["true".into()]).expect_err("not running");
        assert!(e.to_string().contains("is not running"), "{e}");
    }

    #[test]
    fn query_values_are_percent_encoded_and_chunks_joined() {
        assert_eq!(percent_encode("a.b|c d"), "a.b%7Cc%20d");
        assert_eq!(percent_encode("upstream_rq_\\d+"), "upstream_rq_%5Cd%2B");
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"zz\r\n"), b"");
        assert_eq!(mesh_of_node_netns("isth-t1a-node"), Some("t1a"));
        assert_eq!(mesh_of_node_netns("isth-t1a-demo-web"), None);
    }

    #[test]
    fn down_of_an_unknown_mesh_says_so() {
        let tmp = tempfile::tempdir().expect("tmp");
        match down(tmp.path(), "nothing-here-xyz") {
            Err(OpsError::NoSuchMesh(n)) => assert_eq!(n, "nothing-here-xyz"),
            other => panic!("{other:?}"),
        }
    }
}
