//! The mesh DNS as a process of its own (`isthmus mesh-dns`), so names keep resolving when
//! the supervisor (the control plane) dies — issue #6's "kill the control plane, traffic keeps
//! flowing on the last config" includes name resolution, as kube-dns does not die with istiod.
//!
//! The supervisor writes a [`DnsSpec`] (every server's address, table and forward table) to
//! `<state>/dns.json` and starts `isthmus mesh-dns --config <state>/dns.json`. The process
//! enters the node network namespace with its *main* thread before anything else runs, so
//! the whole process lives there: `ip netns pids <node>` lists it and every cleanup path that
//! removes the node namespace (`down`, `down` of a crashed mesh, the next `up`) kills it too.
//! A normal `down` stops it first (SIGTERM from the supervisor).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_local::dns::{DnsServer, DnsTable, Forward};
use serde::{Deserialize, Serialize};

/// One DNS server of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsServerSpec {
    /// What it is (for logs): `mesh`, `outside`, `sidecar`.
    pub role: String,
    /// UDP+TCP address in the node namespace.
    pub addr: SocketAddr,
    /// Names it answers.
    pub table: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Table it forwards unknown names to (answered from there, NXDOMAIN otherwise).
    pub forward: Option<BTreeMap<String, Vec<Ipv4Addr>>>,
}

/// What `isthmus mesh-dns` serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSpec {
    /// Node network namespace to serve in.
    pub node_netns: String,
    /// Servers.
    pub servers: Vec<DnsServerSpec>,
}

/// Path of the spec under a mesh state directory.
pub fn spec_path(mesh_dir: &Path) -> PathBuf {
    mesh_dir.join("dns.json")
}

/// Entry point of `isthmus mesh-dns --config FILE`: serves until SIGTERM/SIGINT. Errors are
/// messages for `dns.log`.
pub fn run(config: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let spec: DnsSpec = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid DNS spec: {e}", config.display()))?;
    // Main thread first, before the runtime's threads exist: the whole process moves.
    let ns = isthmus_local::netns::netns_path(&spec.node_netns);
    let f = std::fs::File::open(&ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter network namespace {}: {e}", spec.node_netns))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: SIGHUP's default action would kill a process that is reloaded
        // before it finished binding.
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return Err("cannot install signal handlers".to_string());
        };
        let mut servers = Vec::new();
        let mut tables = Vec::new();
        for s in &spec.servers {
            let forward = s
                .forward
                .clone()
                .map(|t| Forward::Table(DnsTable::from_entries(t)));
            let table = DnsTable::from_entries(s.table.clone());
            tables.push((s.role.clone(), table.clone()));
            let server = DnsServer::bind(None, s.addr, table, forward)
            .await
            .map_err(|e| format!("{} DNS on {}: {e}", s.role, s.addr))?;
            tracing::info!(role = %s.role, addr = %s.addr, names = s.table.len(), "mesh DNS serving");
            servers.push(server);
        }
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload_tables(config, &tables),
            }
        }
        drop(servers);
        Ok(())
    })
}

/// SIGHUP: re-reads the spec and swaps each server's table in place (matched by role), so
/// names of a ServiceEntry applied to the running mesh resolve without a restart. A bad
/// spec keeps the tables being served.
fn reload_tables(config: &Path, tables: &[(String, DnsTable)]) {
    let spec = match std::fs::read_to_string(config)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<DnsSpec>(&t).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(config = %config.display(), error = %e, "DNS reload refused; serving the previous tables");
            return;
        }
    };
    for (role, table) in tables {
        if let Some(s) = spec.servers.iter().find(|s| &s.role == role) {
            table.replace(s.table.clone());
            tracing::info!(role = %role, names = s.table.len(), "mesh DNS table reloaded");
        }
    }
}

/// The running `isthmus mesh-dns` of a mesh, owned by the supervisor. Dropping it stops it.
#[derive(Debug)]
pub struct DnsProcess {
    child: Child,
}

impl DnsProcess {
    /// Writes `spec` under `mesh_dir` and starts `exe mesh-dns`; returns once every server
    /// accepts TCP connections (at most `timeout`), or an error with the log tail.
    pub async fn start(
        exe: &Path,
        mesh_dir: &Path,
        spec: &DnsSpec,
        timeout: Duration,
    ) -> Result<DnsProcess, String> {
        let path = spec_path(mesh_dir);
        let json = serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
        let log_path = mesh_dir.join("dns.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let mut c = Command::new(exe);
        c.arg("mesh-dns")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        {
            // Its own process group: a signal to the supervisor's group does not reach it;
            // only `down` (or the node namespace's removal) ends it.
            use std::os::unix::process::CommandExt;
            c.process_group(0);
        }
        let child = c
            .spawn()
            .map_err(|e| format!("start {} mesh-dns: {e}", exe.display()))?;
        let mut p = DnsProcess { child };
        let deadline = Instant::now() + timeout;
        for s in &spec.servers {
            loop {
                if let Ok(Some(st)) = p.child.try_wait() {
                    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!("mesh DNS exited ({st}): {}", tail.trim_end()));
                }
                let probe = isthmus_local::netns::connect_tcp(&spec.node_netns, s.addr, None);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "mesh DNS not listening on {} after {}s (log {})",
                        s.addr,
                        timeout.as_secs(),
                        log_path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(p)
    }

    /// Rewrites the spec under `mesh_dir` and tells the process to reload its tables.
    pub fn reload(&mut self, mesh_dir: &Path, spec: &DnsSpec) -> Result<(), String> {
        let path = spec_path(mesh_dir);
        let json = serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| format!("signal mesh DNS (pid {pid}): {e}"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DnsProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_round_trips_as_json() {
        let spec = DnsSpec {
            node_netns: "isth-m-node".into(),
            servers: vec![DnsServerSpec {
                role: "mesh".into(),
                addr: "10.244.0.2:53".parse().expect("addr"),
                table: BTreeMap::from([(
                    "web.default.svc.cluster.local".to_string(),
                    vec![Ipv4Addr::new(10, 96, 0, 10)],
                )]),
                forward: Some(BTreeMap::new()),
            }],
        };
        let s = serde_json::to_string(&spec).expect("ser");
        assert_eq!(serde_json::from_str::<DnsSpec>(&s).expect("de"), spec);
        assert_eq!(
            spec_path(Path::new("/run/isthmus/m")),
            Path::new("/run/isthmus/m/dns.json")
        );
    }
}
