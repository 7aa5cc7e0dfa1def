//! Running a pod's containers as local processes.
//!
//! A container process is started as
//! `nsenter --net=/run/netns/<pod> -- unshare --mount --uts --propagation private -- /bin/sh -c <setup> isthmus-init <argv...>`:
//! it joins the pod's network namespace, gets a private mount and UTS namespace, and a short
//! generated shell script mounts the pod's volumes at their `mountPath`, bind-mounts the
//! pod's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, sets the hostname, changes to `workingDir` and
//! finally `exec`s the container command — so the PID we supervise is the command itself.
//! Using the util-linux tools keeps every step reproducible by hand and keeps `unsafe`
//! `pre_exec` hooks out of this crate.
//!
//! Mounts never leak to the host: the mount namespace is private. A `mountPath` whose parent
//! does not exist is created inside an overlay (upper layer on a tmpfs) of its nearest
//! existing ancestor, so no directory appears on the host — except when that ancestor is `/`
//! itself, where the top-level directory is created on the host and removed again by
//! [`PodSandbox::cleanup`].
//!
//! Volumes: `secret` and `configMap` content is copied into a fresh tmpfs at the mount path
//! (read-only unless told otherwise); `emptyDir` is a per-pod directory bind-mounted into
//! every container that mounts it, so containers of one pod share it as in Kubernetes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::cmd;
use crate::netns;

/// Default PATH for container processes whose env does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH of container processes: [`DEFAULT_PATH`] plus, last, the directory of the running
/// executable. Pods of the bundled examples run `isthmus echo` as their "image"; with this the
/// name resolves to the binary that runs the mesh wherever it was installed (`cargo install`
/// puts it in `~/.cargo/bin`, which is not on a container's PATH) or built, while system tools
/// keep precedence (the directory comes last).
pub fn container_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.to_string_lossy().into_owned()));
        match dir {
            Some(d)
                if !d.is_empty()
                    && !d.contains(':')
                    && !DEFAULT_PATH.split(':').any(|p| p == d) =>
            {
                format!("{DEFAULT_PATH}:{d}")
            }
            _ => DEFAULT_PATH.to_string(),
        }
    })
}

/// Errors of the process layer.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Invalid input (paths, keys, names).
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A volume mount names a volume the pod does not have.
    #[error("container `{container}` mounts volume `{volume}`, which the pod does not define")]
    UnknownVolume {
        /// Container name.
        container: String,
        /// Volume name.
        volume: String,
    },
    /// Filesystem work in the pod directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The pod's network namespace is missing.
    #[error(
        "network namespace `{0}` does not exist (pod network not created or already torn down)"
    )]
    NoNetns(String),
    /// A required tool is missing.
    #[error(transparent)]
    Cmd(#[from] cmd::CmdError),
    /// The process could not be started.
    #[error("cannot start container `{container}`: {source}")]
    Spawn {
        /// Container name.
        container: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProcessError {
    let path = path.to_path_buf();
    move |source| ProcessError::Io {
        action,
        path,
        source,
    }
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A Secret's data (key -> bytes).
    Secret(BTreeMap<String, Vec<u8>>),
    /// A ConfigMap's data (key -> bytes).
    ConfigMap(BTreeMap<String, Vec<u8>>),
    /// An empty, writable directory shared by the pod's containers.
    EmptyDir,
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Volume name (referenced by [`VolumeMount::name`]).
    pub name: String,
    /// Content.
    pub source: VolumeSource,
    /// File mode of projected files (Kubernetes `defaultMode`, default 0644).
    pub default_mode: Option<u32>,
}

/// A container's use of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// Absolute path inside the container.
    pub mount_path: String,
    /// Mount only this key/sub-directory of the volume.
    pub sub_path: Option<String>,
    /// Read-only mount. Secret and ConfigMap volumes are always read-only.
    pub read_only: bool,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (log file `<pod dir>/logs/<name>.log`).
    pub name: String,
    /// `command` + `args`; `argv[0]` is looked up in the container's PATH.
    pub argv: Vec<String>,
    /// Environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// `workingDir` (default `/`).
    pub working_dir: Option<String>,
    /// Volume mounts.
    pub mounts: Vec<VolumeMount>,
}

/// Per-pod runtime state: network namespace, state directory, generated `/etc` files and
/// volume content. Create with [`PodSandbox::prepare`].
#[derive(Debug)]
pub struct PodSandbox {
    netns: String,
    dir: PathBuf,
    hostname: String,
    volumes: BTreeMap<String, Volume>,
    created_dirs: Mutex<Vec<PathBuf>>,
}

fn validate_abs_path(what: &'static str, p: &str) -> Result<(), ProcessError> {
    let bad = |reason: &str| {
        Err(ProcessError::Invalid {
            what,
            value: p.to_string(),
            reason: reason.to_string(),
        })
    };
    if !p.starts_with('/') {
        return bad("must be an absolute path");
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return bad("must not contain `.` or `..` components");
    }
    if p.chars()
        .any(|c| c.is_control() || c == ',' || c == ':' || c == '\\')
    {
        return bad("must not contain control characters, `,`, `:` or `\\`");
    }
    if p.trim_end_matches('/').is_empty() {
        return bad("must not be `/`");
    }
    Ok(())
}

fn validate_rel(what: &'static str, p: &str) -> Result<(), ProcessError> {
    let bad = |reason: &str| {
        Err(ProcessError::Invalid {
            what,
            value: p.to_string(),
            reason: reason.to_string(),
        })
    };
    if p.is_empty() || p.starts_with('/') {
        return bad("must be a non-empty relative path");
    }
    if p.split('/').any(|c| c.is_empty() || c == ".." || c == ".") {
        return bad("must not contain empty, `.` or `..` components");
    }
    if p.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

fn validate_name(what: &'static str, n: &str) -> Result<(), ProcessError> {
    if n.is_empty()
        || n.len() > 253
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        || n.starts_with('.')
    {
        return Err(ProcessError::Invalid {
            what,
            value: n.to_string(),
            reason: "use letters, digits, `-`, `_` and `.` (not leading)".to_string(),
        });
    }
    Ok(())
}

/// Quotes a string for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/etc/hosts` of a pod, as the kubelet writes it.
pub fn hosts_file(
    pod_ip: std::net::Ipv4Addr,
    hostname: &str,
    extra: &[(std::net::Ipv4Addr, String)],
) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file (isthmus).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str(&format!("{pod_ip}\t{hostname}\n"));
    for (ip, names) in extra {
        s.push_str(&format!("{ip}\t{names}\n"));
    }
    s
}

impl PodSandbox {
    /// Prepares the pod directory `dir` (created if missing, mode 0700): writes `resolv.conf`,
    /// `hosts`, the content of Secret/ConfigMap volumes and the emptyDir directories, and a
    /// `logs/` directory. The pod's network namespace `netns` must exist.
    pub fn prepare(
        netns: &str,
        dir: &Path,
        hostname: &str,
        resolv_conf: &str,
        hosts: &str,
        volumes: Vec<Volume>,
    ) -> Result<PodSandbox, ProcessError> {
        if !netns::exists(netns) {
            return Err(ProcessError::NoNetns(netns.to_string()));
        }
        validate_name("hostname", hostname)?;
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dir))?;
        for sub in ["logs", "volumes", ".stage"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let write = |p: PathBuf, data: &[u8], mode: u32| -> Result<(), ProcessError> {
            std::fs::write(&p, data).map_err(io_err("write", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &p))
        };
        write(dir.join("resolv.conf"), resolv_conf.as_bytes(), 0o644)?;
        write(dir.join("hosts"), hosts.as_bytes(), 0o644)?;
        write(
            dir.join("hostname"),
            format!("{hostname}\n").as_bytes(),
            0o644,
        )?;
        let mut map = BTreeMap::new();
        for v in volumes {
            validate_name("volume name", &v.name)?;
            let vdir = dir.join("volumes").join(&v.name);
            if vdir.exists() {
                std::fs::remove_dir_all(&vdir).map_err(io_err("remove", &vdir))?;
            }
            std::fs::create_dir_all(&vdir).map_err(io_err("create", &vdir))?;
            match &v.source {
                VolumeSource::Secret(data) | VolumeSource::ConfigMap(data) => {
                    for (k, bytes) in data {
                        validate_name("volume key", k)?;
                        write(vdir.join(k), bytes, v.default_mode.unwrap_or(0o644) & 0o777)?;
                    }
                }
                VolumeSource::EmptyDir => {
                    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o777))
                        .map_err(io_err("chmod", &vdir))?;
                }
            }
            if map.insert(v.name.clone(), v).is_some() {
                return Err(ProcessError::Invalid {
                    what: "volume name",
                    value: vdir.display().to_string(),
                    reason: "defined twice".to_string(),
                });
            }
        }
        Ok(PodSandbox {
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            hostname: hostname.to_string(),
            volumes: map,
            created_dirs: Mutex::new(Vec::new()),
        })
    }

    /// The pod's network namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The pod directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log file of container `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Replaces the content of a Secret/ConfigMap volume (seen by containers started later).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// Removes host directories created for top-level mount paths (only if still empty).
    pub fn cleanup(&self) {
        let dirs =
            std::mem::take(&mut *self.created_dirs.lock().unwrap_or_else(|p| p.into_inner()));
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        cleanup_pod_dir(&self.dir);
    }

    /// The shell script that sets up a container's mount namespace and execs `"$@"`.
    pub fn setup_script(&self, spec: &ContainerSpec) -> Result<String, ProcessError> {
        let q = shell_quote;
        let stage = self.dir.join(".stage");
        let stage_s = stage.to_string_lossy().to_string();
        let mut s = String::new();
        s.push_str("set -e\n");
        s.push_str(&format!("S={}\n", q(&stage_s)));
        s.push_str("mount -t tmpfs -o mode=0700 isthmus-stage \"$S\"\n");
        // isthmus_mkpoint PATH dir|file: create a missing mount point without touching the
        // host: overlay the nearest existing ancestor (once; later points under it reuse
        // the overlay), then create the point in the overlay's tmpfs upper layer. A dangling
        // symlink (e.g. /etc/resolv.conf -> a resolver file that does not exist) is removed
        // inside the overlay first, so nothing is ever written through it onto the host.
        s.push_str(
            "OV='|'\nn=0\nisthmus_mkpoint() {\n  [ -e \"$1\" ] && return 0\n  a=\"$1\"\n  \
             while [ ! -e \"$a\" ]; do a=$(dirname \"$a\"); done\n  b=\"$a\"; covered=\n  \
             while :; do case \"$OV\" in *\"|$b|\"*) covered=1; break;; esac; [ \"$b\" = / ] && break; b=$(dirname \"$b\"); done\n  \
             if [ -z \"$covered\" ]; then\n    \
             if [ \"$a\" = / ]; then echo \"isthmus: cannot create $1 (parent is /)\" >&2; exit 126; fi\n    \
             n=$((n+1)); mkdir \"$S/u$n\" \"$S/w$n\"\n    \
             mount -t overlay isthmus-overlay -o \"lowerdir=$a,upperdir=$S/u$n,workdir=$S/w$n\" \"$a\"\n    OV=\"$OV$a|\"\n  fi\n  \
             [ -L \"$1\" ] && rm -f \"$1\"\n  \
             if [ \"$2\" = dir ]; then mkdir -p \"$1\"; else mkdir -p \"$(dirname \"$1\")\"; : > \"$1\"; fi\n}\n",
        );
        s.push_str(&format!(
            "echo {} > /proc/sys/kernel/hostname\n",
            q(&self.hostname)
        ));
        let mut mounts = spec.mounts.clone();
        // Parents before children, so nested mount paths stack correctly.
        mounts.sort_by(|a, b| {
            a.mount_path
                .len()
                .cmp(&b.mount_path.len())
                .then(a.mount_path.cmp(&b.mount_path))
        });
        // Phase 1 creates every mount point (overlays hide later-made submounts, so all of
        // them must exist before anything is mounted); phase 2 mounts.
        let mut points = String::new();
        let mut binds = String::new();
        for m in &mounts {
            validate_abs_path("mountPath", &m.mount_path)?;
            let vol = self
                .volumes
                .get(&m.name)
                .ok_or_else(|| ProcessError::UnknownVolume {
                    container: spec.name.clone(),
                    volume: m.name.clone(),
                })?;
            self.ensure_top_level(&m.mount_path)?;
            let mut src = self.volume_dir(&m.name);
            if let Some(sp) = &m.sub_path {
                validate_rel("subPath", sp)?;
                src = src.join(sp);
            }
            let projected = matches!(
                vol.source,
                VolumeSource::Secret(_) | VolumeSource::ConfigMap(_)
            );
            if m.sub_path.is_some() && !src.exists() {
                if projected {
                    return Err(ProcessError::Invalid {
                        what: "subPath",
                        value: m.sub_path.clone().unwrap_or_default(),
                        reason: format!("volume `{}` has no such key", m.name),
                    });
                }
                std::fs::create_dir_all(&src).map_err(io_err("create", &src))?;
            }
            let is_dir = m.sub_path.is_none() || src.is_dir();
            let src_s = q(&src.to_string_lossy());
            let mp = q(m.mount_path.trim_end_matches('/'));
            points.push_str(&format!(
                "isthmus_mkpoint {mp} {}\n",
                if is_dir { "dir" } else { "file" }
            ));
            if projected && m.sub_path.is_none() {
                binds.push_str(&format!(
                    "mount -t tmpfs -o mode=0755 isthmus-{} {mp}\n",
                    q(&m.name)
                ));
                binds.push_str(&format!("cp -a {src_s}/. {mp}/\n"));
                binds.push_str(&format!("mount -o remount,ro {mp}\n"));
            } else {
                binds.push_str(&format!("mount --bind {src_s} {mp}\n"));
                if projected || m.read_only {
                    binds.push_str(&format!("mount -o remount,bind,ro {mp}\n"));
                }
            }
        }
        for f in ["resolv.conf", "hosts", "hostname"] {
            let src = self.dir.join(f);
            points.push_str(&format!("isthmus_mkpoint /etc/{f} file\n"));
            binds.push_str(&format!(
                "mount --bind {} /etc/{f}\n",
                q(&src.to_string_lossy())
            ));
        }
        let wd = spec.working_dir.clone().unwrap_or_else(|| "/".to_string());
        if wd != "/" {
            validate_abs_path("workingDir", &wd)?;
            self.ensure_top_level(&wd)?;
            points.push_str(&format!("isthmus_mkpoint {} dir\n", q(&wd)));
        }
        s.push_str(&points);
        s.push_str(&binds);
        s.push_str(&format!("cd {}\n", q(&wd)));
        s.push_str("exec \"$@\"\n");
        Ok(s)
    }

    /// Creates the top-level directory of `path` on the host when it is missing (an overlay
    /// cannot be put on `/`), remembering it for [`PodSandbox::cleanup`].
    fn ensure_top_level(&self, path: &str) -> Result<(), ProcessError> {
        let first = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        if first.is_empty() {
            return Ok(());
        }
        let top = PathBuf::from("/").join(first);
        if !top.exists() {
            std::fs::create_dir(&top).map_err(io_err("create top-level mount point", &top))?;
            tracing::warn!(path = %top.display(), "created a top-level directory on the host for a mountPath; it is removed when the pod is deleted");
            // Also on disk, so a later `cleanup_pod_dir` can undo it after a crash.
            let record = self.dir.join(CREATED_DIRS_FILE);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&record)
                .map_err(io_err("record", &record))?;
            std::io::Write::write_all(&mut f, format!("{}\n", top.display()).as_bytes())
                .map_err(io_err("record", &record))?;
            self.created_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(top);
        }
        Ok(())
    }

    /// A command that runs `spec` inside the pod (new private mount + UTS namespace, pod's
    /// network namespace). stdio is left to the caller; the process gets its own process group.
    pub fn command(&self, spec: &ContainerSpec) -> Result<tokio::process::Command, ProcessError> {
        if spec.argv.is_empty() {
            return Err(ProcessError::Invalid {
                what: "command",
                value: spec.name.clone(),
                reason: "container has no command/args; images are informational, so a command is required".to_string(),
            });
        }
        if !netns::exists(&self.netns) {
            return Err(ProcessError::NoNetns(self.netns.clone()));
        }
        let nsenter = cmd::require("nsenter")?;
        let unshare = cmd::require("unshare")?;
        cmd::require("mount")?;
        let script = self.setup_script(spec)?;
        let mut c = tokio::process::Command::new(nsenter);
        c.arg(format!(
            "--net={}",
            netns::netns_path(&self.netns).display()
        ))
        .arg("--")
        .arg(unshare)
        .args([
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        .arg("isthmus-init")
        .args(&spec.argv);
        c.env_clear();
        c.env("PATH", container_path());
        c.env("HOSTNAME", &self.hostname);
        c.env("HOME", "/root");
        for (k, v) in &spec.env {
            c.env(k, v);
        }
        c.process_group(0);
        c.stdin(Stdio::null());
        Ok(c)
    }

    /// A command running `argv` inside a running container (`kubectl exec`): it joins the
    /// mount, UTS and network namespaces of process `pid`. Without a pid (container not
    /// running) it builds a fresh container environment from `spec` instead.
    pub fn exec_command(
        &self,
        pid: Option<u32>,
        spec: &ContainerSpec,
        argv: &[String],
    ) -> Result<std::process::Command, ProcessError> {
        if argv.is_empty() {
            return Err(ProcessError::Invalid {
                what: "exec command",
                value: String::new(),
                reason: "empty".to_string(),
            });
        }
        let nsenter = cmd::require("nsenter")?;
        let mut c = match pid {
            Some(pid) => {
                let mut c = std::process::Command::new(nsenter);
                c.arg(format!("--target={pid}"))
                    .args(["--mount", "--uts", "--net"]);
                // `--wd` without a value: the target's current directory (its workingDir),
                // resolved after entering its mount namespace.
                c.arg("--wd");
                c.arg("--").args(argv);
                c
            }
            None => {
                let mut s = spec.clone();
                s.argv = argv.to_vec();
                let t = self.command(&s)?;
                let std = t.as_std();
                let mut c = std::process::Command::new(std.get_program());
                c.args(std.get_args());
                c
            }
        };
        c.env_clear();
        c.env("PATH", container_path());
        c.env("HOSTNAME", &self.hostname);
        c.env("HOME", "/root");
        for (k, v) in &spec.env {
            c.env(k, v);
        }
        Ok(c)
    }

    /// Runs `argv` in the container (see [`PodSandbox::exec_command`]) with the caller's
    /// stdin/stdout/stderr and returns its exit code (128+signal when killed by a signal).
    pub fn exec(
        &self,
        pid: Option<u32>,
        spec: &ContainerSpec,
        argv: &[String],
    ) -> Result<i32, ProcessError> {
        let mut c = self.exec_command(pid, spec, argv)?;
        let status = c.status().map_err(|source| ProcessError::Spawn {
            container: spec.name.clone(),
            source,
        })?;
        Ok(exit_code(status))
    }
}

/// File in a pod directory listing top-level host directories created for mount paths.
pub const CREATED_DIRS_FILE: &str = "created-dirs";

/// Removes the top-level host directories recorded in pod directory `dir` (only those still
/// empty), e.g. after a crashed supervisor. The pod directory itself is left to its owner.
pub fn cleanup_pod_dir(dir: &Path) {
    let record = dir.join(CREATED_DIRS_FILE);
    if let Ok(text) = std::fs::read_to_string(&record) {
        for line in text.lines().rev() {
            let p = Path::new(line.trim());
            // Only single-component absolute paths were ever recorded; refuse anything else.
            if p.is_absolute() && p.components().count() == 2 {
                let _ = std::fs::remove_dir(p);
            }
        }
        let _ = std::fs::remove_file(&record);
    }
}

/// The last `n` lines of a log file (all of it when `n` is `None`); a missing file is empty.
pub fn tail_log(path: &Path, n: Option<usize>) -> std::io::Result<String> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let Some(n) = n else { return Ok(text) };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    Ok(lines[lines.len().saturating_sub(n)..].concat())
}

/// Exit code of a finished process; 128+N when it was killed by signal N (shell convention).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Kubernetes `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restart.
    Always,
    /// Restart on non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

/// Restart backoff (Kubernetes: 10s doubling to 5 min, reset after 10 min of running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Upper bound.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// Faster than the kubelet (1s doubling to 30s) because local meshes are for quick loops.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Observable state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running; waiting to (re)start. `reason` is e.g. `ContainerCreating`, `CrashLoopBackOff`.
    Waiting {
        /// Why.
        reason: String,
    },
    /// Running.
    Running,
    /// Finished and not restarted (or stopped).
    Terminated {
        /// Last exit code.
        exit_code: i32,
        /// Why (`Completed`, `Error`, `Stopped`, or a start failure).
        reason: String,
    },
}

/// Status of a supervised container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// Current state.
    pub state: ContainerState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// PID (= process group id) while running.
    pub pid: Option<u32>,
    /// Exit code of the previous run.
    pub last_exit_code: Option<i32>,
    /// When the current run started.
    pub started_at: Option<SystemTime>,
}

/// A container process kept alive per its restart policy. Dropping it kills the process group.
#[derive(Debug)]
pub struct Supervised {
    status: watch::Receiver<ContainerStatus>,
    stop: watch::Sender<Option<Duration>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pid: Arc<Mutex<Option<u32>>>,
}

fn kill_group(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        if p > 1 {
            let _ = killpg(Pid::from_raw(p), sig);
        }
    }
}

impl Supervised {
    /// Starts supervising `spec` in `pod`. Must be called inside a tokio runtime. stdout and
    /// stderr go (appended) to [`PodSandbox::log_path`].
    pub fn start(
        pod: Arc<PodSandbox>,
        spec: ContainerSpec,
        policy: RestartPolicy,
        backoff: Backoff,
    ) -> Result<Supervised, ProcessError> {
        validate_name("container name", &spec.name)?;
        // Fail fast on bad specs instead of crash-looping on them.
        pod.setup_script(&spec)?;
        pod.command(&spec)?;
        let initial = ContainerStatus {
            name: spec.name.clone(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".to_string(),
            },
            restarts: 0,
            pid: None,
            last_exit_code: None,
            started_at: None,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = watch::channel(None);
        let pid = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run_loop(
            pod,
            spec,
            policy,
            backoff,
            status_tx,
            stop_rx,
            pid.clone(),
        ));
        Ok(Supervised {
            status: status_rx,
            stop: stop_tx,
            task: Some(task),
            pid,
        })
    }

    /// Current status.
    pub fn status(&self) -> ContainerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<ContainerStatus> {
        self.status.clone()
    }

    /// Stops the container: SIGTERM to its process group, SIGKILL after `grace`, no restart.
    pub async fn stop(mut self, grace: Duration) -> ContainerStatus {
        let _ = self.stop.send(Some(grace));
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.status()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            if let Some(p) = *self.pid.lock().unwrap_or_else(|p| p.into_inner()) {
                kill_group(p, Signal::SIGKILL);
            }
        }
    }
}

async fn run_loop(
    pod: Arc<PodSandbox>,
    spec: ContainerSpec,
    policy: RestartPolicy,
    backoff: Backoff,
    status: watch::Sender<ContainerStatus>,
    mut stop: watch::Receiver<Option<Duration>>,
    pid_slot: Arc<Mutex<Option<u32>>>,
) {
    let mut delay = backoff.initial;
    let log_path = pod.log_path(&spec.name);
    loop {
        let started = Instant::now();
        let spawned = (|| -> Result<tokio::process::Child, String> {
            let mut c = pod.command(&spec).map_err(|e| e.to_string())?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("open {}: {e}", log_path.display()))?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            c.stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .kill_on_drop(false);
            c.spawn().map_err(|e| e.to_string())
        })();
        let (code, reason) = match spawned {
            Ok(mut child) => {
                let pid = child.id();
                *pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = pid;
                status.send_modify(|s| {
                    s.state = ContainerState::Running;
                    s.pid = pid;
                    s.started_at = Some(SystemTime::now());
                });
                tracing::info!(container = %spec.name, pid = ?pid, netns = %pod.netns(), "container started");
                let waited = tokio::select! {
                    r = child.wait() => Some(r),
                    _ = wait_stop(&mut stop) => None,
                };
                let result = match waited {
                    Some(r) => r,
                    None => {
                        let grace = (*stop.borrow()).unwrap_or_default();
                        if let Some(p) = pid {
                            kill_group(p, Signal::SIGTERM);
                        }
                        match tokio::time::timeout(grace, child.wait()).await {
                            Ok(r) => r,
                            Err(_) => {
                                if let Some(p) = pid {
                                    kill_group(p, Signal::SIGKILL);
                                }
                                child.wait().await
                            }
                        }
                    }
                };
                // Children the command left behind in its group die with it.
                if let Some(p) = pid {
                    kill_group(p, Signal::SIGKILL);
                }
                *pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                match result {
                    Ok(st) => {
                        let c = exit_code(st);
                        (
                            c,
                            if c == 0 {
                                "Completed".to_string()
                            } else {
                                "Error".to_string()
                            },
                        )
                    }
                    Err(e) => (1, format!("wait failed: {e}")),
                }
            }
            Err(e) => {
                tracing::warn!(container = %spec.name, error = %e, "container failed to start");
                (128, format!("StartError: {e}"))
            }
        };
        let stopping = stop.borrow().is_some();
        let restart = !stopping
            && match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
        if !restart {
            let reason = if stopping {
                "Stopped".to_string()
            } else {
                reason
            };
            status.send_modify(|s| {
                s.state = ContainerState::Terminated {
                    exit_code: code,
                    reason,
                };
                s.pid = None;
                s.last_exit_code = Some(code);
            });
            tracing::info!(container = %spec.name, exit_code = code, "container terminated");
            return;
        }
        if started.elapsed() >= backoff.reset_after {
            delay = backoff.initial;
        }
        status.send_modify(|s| {
            s.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".to_string(),
            };
            s.pid = None;
            s.last_exit_code = Some(code);
        });
        tracing::info!(container = %spec.name, exit_code = code, delay = ?delay, "container exited; restarting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_stop(&mut stop) => {
                status.send_modify(|s| s.state = ContainerState::Terminated { exit_code: code, reason: "Stopped".to_string() });
                return;
            }
        }
        delay = (delay * 2).min(backoff.max);
        status.send_modify(|s| s.restarts += 1);
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Option<Duration>>) {
    loop {
        if stop.borrow_and_update().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            // Sender gone: the Supervised handle was dropped; Drop kills the group.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_path_appends_the_running_executables_directory() {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .expect("exe dir")
            .to_string_lossy()
            .into_owned();
        let path = container_path();
        assert!(path.starts_with(DEFAULT_PATH), "{path}");
        assert_eq!(path.split(':').next_back(), Some(dir.as_str()), "{path}");
    }

    #[test]
    fn tail_takes_last_lines() {
        let dir = std::env::temp_dir().join(format!("isthmus-tail-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("c.log");
        let _ = std::fs::write(&f, "a\nb\nc\n");
        assert_eq!(tail_log(&f, Some(2)).ok().as_deref(), Some("b\nc\n"));
        assert_eq!(tail_log(&f, Some(10)).ok().as_deref(), Some("a\nb\nc\n"));
        assert_eq!(tail_log(&f, None).ok().as_deref(), Some("a\nb\nc\n"));
        assert_eq!(
            tail_log(&dir.join("missing"), Some(1)).ok().as_deref(),
            Some("")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn paths_are_validated() {
        assert!(validate_abs_path("p", "/etc/certs").is_ok());
        assert!(validate_abs_path("p", "etc").is_err());
        assert!(validate_abs_path("p", "/etc/../x").is_err());
        assert!(validate_abs_path("p", "/").is_err());
        assert!(validate_abs_path("p", "/a,b").is_err());
        assert!(validate_rel("s", "a/b").is_ok());
        assert!(validate_rel("s", "../b").is_err());
        assert!(validate_name("n", "tls.crt").is_ok());
        assert!(validate_name("n", "../x").is_err());
    }
}
