//! The state directory of a mesh: `<root>/<name>/` with the socket, pid file, supervisor log
//! and one directory per pod (logs, volumes). Root is `$ISTHMUS_STATE_DIR` or `/run/isthmus`
//! (a tmpfs: a reboot cannot leave stale state behind).

use std::path::{Path, PathBuf};

/// Environment variable overriding the state root.
pub const STATE_DIR_ENV: &str = "ISTHMUS_STATE_DIR";
/// Default state root.
pub const DEFAULT_STATE_ROOT: &str = "/run/isthmus";
/// Default mesh name.
pub const DEFAULT_MESH: &str = "default";

/// The state root to use.
pub fn state_root() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
}

/// Paths of one mesh's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshDir {
    /// Mesh name.
    pub name: String,
    /// `<root>/<name>`.
    pub dir: PathBuf,
}

impl MeshDir {
    /// Mesh `name` under `root`.
    pub fn new(root: &Path, name: &str) -> MeshDir {
        MeshDir {
            name: name.to_string(),
            dir: root.join(name),
        }
    }
    /// Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }
    /// Supervisor pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
    /// Supervisor log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// Directory of pod `ns/name`.
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.dir.join("pods").join(ns).join(name)
    }
    /// The supervisor's pid, if the pid file names a live process.
    pub fn live_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if p <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err() {
        return false;
    }
    // A zombie still "exists" for kill(0); it is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Meshes with a state directory under `root` (sorted).
pub fn list_meshes(root: &Path) -> Vec<MeshDir> {
    let mut out: Vec<MeshDir> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .map(|n| MeshDir::new(root, &n))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_liveness() {
        let tmp = tempfile::tempdir().expect("tmp");
        let m = MeshDir::new(tmp.path(), "demo");
        assert_eq!(m.socket(), tmp.path().join("demo/sock"));
        assert_eq!(m.pod_dir("ns", "p"), tmp.path().join("demo/pods/ns/p"));
        assert_eq!(m.live_pid(), None);
        std::fs::create_dir_all(&m.dir).expect("mkdir");
        std::fs::write(m.pid_file(), std::process::id().to_string()).expect("write");
        assert_eq!(m.live_pid(), Some(std::process::id()));
        std::fs::write(m.pid_file(), "999999999").expect("write");
        assert_eq!(m.live_pid(), None);
        assert_eq!(list_meshes(tmp.path()), vec![m]);
        assert!(!pid_alive(0));
    }
}
