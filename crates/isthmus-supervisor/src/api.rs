//! The supervisor's Unix socket API: one JSON request line, one JSON response line per
//! connection. Plain JSON keeps it scriptable (`socat - UNIX:/run/isthmus/demo/sock`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{PodProxy, ServicePlan};

/// A request to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Mesh status.
    Status,
    /// Pods (all namespaces; the client filters).
    Pods,
    /// Services.
    Services,
    /// Loaded objects of one kind (`Gateway`, `VirtualService`, ...), raw JSON.
    Objects {
        /// Kind name as in manifests.
        kind: String,
    },
    /// Where to run `exec` / read logs for a pod's container.
    Container {
        /// Namespace.
        namespace: String,
        /// `pod-name`, `pod/name`, `deploy/name`, `deployment/name`.
        target: String,
        /// Container name (default: the first).
        container: Option<String>,
    },
    /// Apply Istio config (file name, text) atomically and push it to the proxies.
    Apply {
        /// (name for messages, YAML/JSON text).
        files: Vec<(String, String)>,
    },
    /// Delete Istio config / Secrets (file name, text) atomically and push the result: every
    /// object must exist, else nothing changes.
    Delete {
        /// (name for messages, YAML/JSON text).
        files: Vec<(String, String)>,
    },
    /// Push status of every proxy.
    Proxies,
    /// The mesh config the control plane compiles with (from `--mesh-config FILE`, the
    /// `istio` ConfigMap, or Istio's defaults), so live analysis and trace use the same one.
    MeshConfig,
    /// Tear the mesh down and exit.
    Shutdown,
}

/// Phase of the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Pods being created.
    Starting,
    /// Every container has started.
    Ready,
    /// Startup failed (the supervisor is tearing down and exiting).
    Failed(String),
    /// Teardown in progress.
    Stopping,
}

/// `status` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStatus {
    /// Mesh name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// Supervisor PID.
    pub pid: u32,
    /// Node network namespace.
    pub node_netns: String,
    /// DNS suffix.
    pub domain: String,
    /// Pods total / ready.
    pub pods: usize,
    /// Pods whose containers are all running.
    pub ready_pods: usize,
    /// Number of Kubernetes Services.
    pub services: usize,
    /// Mesh DNS server address.
    pub dns: String,
    /// Outside-world resolver address.
    pub outside_dns: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Proxies registered with the control plane.
    #[serde(default)]
    pub proxies: usize,
    /// Proxies running the latest config (acknowledged).
    #[serde(default)]
    pub proxies_synced: usize,
    /// Host loopback addresses published for ingress gateways (`127.0.0.1:P -> ns/svc:port`).
    #[serde(default)]
    pub published: Vec<String>,
    /// Problems worth knowing (proxies left out, ports not published).
    pub notes: Vec<String>,
}

/// One container in `get pods`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Name.
    pub name: String,
    /// `Running`, `Waiting`, `Terminated`.
    pub state: String,
    /// Reason for Waiting/Terminated.
    pub reason: Option<String>,
    /// Restart count.
    pub restarts: u32,
    /// PID while running.
    pub pid: Option<u32>,
    /// Last exit code.
    pub last_exit_code: Option<i32>,
    /// Log file.
    pub log: PathBuf,
}

/// One pod in `get pods`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning Deployment.
    pub deployment: Option<String>,
    /// Pod IP.
    pub ip: String,
    /// Network namespace.
    pub netns: String,
    /// Proxy kind wanted by the manifests.
    pub proxy: PodProxy,
    /// Published outside-world hostnames.
    pub outside_hostnames: Vec<String>,
    /// `Running`, `Pending`, `Succeeded`, `Failed`, `CrashLoopBackOff`.
    pub status: String,
    /// Containers.
    pub containers: Vec<ContainerInfo>,
    /// Seconds since the pod was created.
    pub age_secs: u64,
}

impl PodInfo {
    /// Containers running / total, as kubectl's READY column.
    pub fn ready(&self) -> String {
        let n = self
            .containers
            .iter()
            .filter(|c| c.state == "Running")
            .count();
        format!("{n}/{}", self.containers.len())
    }
    /// Total restarts.
    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }
}

/// What `exec`/`logs` need about a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerTarget {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// PID while running.
    pub pid: Option<u32>,
    /// The container's environment.
    pub env: Vec<(String, String)>,
    /// Log file.
    pub log: PathBuf,
    /// The pod's network namespace (live `proxy-config` / `proxy-stats` read the proxy's
    /// admin port there).
    #[serde(default)]
    pub netns: String,
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Response {
    /// Status.
    Status(MeshStatus),
    /// Pods.
    Pods {
        /// Pods.
        pods: Vec<PodInfo>,
    },
    /// Services.
    Services {
        /// Services.
        services: Vec<ServicePlan>,
        /// ServiceEntry host → VIP.
        service_entries: std::collections::BTreeMap<String, String>,
    },
    /// Raw objects.
    Objects {
        /// Objects as written.
        objects: Vec<serde_json::Value>,
    },
    /// Container target.
    Container(ContainerTarget),
    /// Config applied (or deleted).
    Applied {
        /// kubectl-style lines (`virtualservice.networking.istio.io/x configured`,
        /// `destinationrule.networking.istio.io "x" deleted`).
        lines: Vec<String>,
        /// Proxy node id → config version now being pushed.
        versions: std::collections::BTreeMap<String, u64>,
    },
    /// Push status per proxy (isthmus-push `ProxyStatus` as JSON).
    Proxies {
        /// Node id → status.
        proxies: std::collections::BTreeMap<String, serde_json::Value>,
    },
    /// The mesh config in force.
    MeshConfig {
        /// As Istio's MeshConfig (camelCase JSON).
        mesh: isthmus_api::MeshConfig,
    },
    /// Request accepted (shutdown).
    Ok,
    /// Error with a message for the user.
    Error {
        /// Message.
        message: String,
    },
}

/// Errors talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No supervisor is listening.
    #[error("no mesh `{name}` is running (no supervisor at {path}); start one with `isthmus up --name {name} PATH...`")]
    NotRunning {
        /// Mesh name.
        name: String,
        /// Socket path.
        path: PathBuf,
    },
    /// I/O on the socket.
    #[error("talking to the supervisor at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Bad answer.
    #[error("the supervisor at {path} sent an unreadable answer: {detail}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// Details.
        detail: String,
    },
    /// The supervisor refused.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the supervisor listening at `sock` (mesh `name` for messages).
pub fn call(
    name: &str,
    sock: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let mut s = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                name: name.to_string(),
                path: sock.to_path_buf(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol {
        path: sock.to_path_buf(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    let resp: Response = serde_json::from_str(&answer).map_err(|e| ClientError::Protocol {
        path: sock.to_path_buf(),
        detail: format!("{e}: {:?}", answer.chars().take(200).collect::<String>()),
    })?;
    match resp {
        Response::Error { message } => Err(ClientError::Refused(message)),
        r => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_json_lines() {
        let reqs = [
            Request::Status,
            Request::Container {
                namespace: "default".into(),
                target: "deploy/web".into(),
                container: None,
            },
        ];
        for r in reqs {
            let s = serde_json::to_string(&r).expect("ser");
            assert!(!s.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&s).expect("de"), r);
        }
        let s = serde_json::to_string(&Request::Objects {
            kind: "Gateway".into(),
        })
        .expect("ser");
        assert_eq!(s, r#"{"op":"objects","kind":"Gateway"}"#);
        let e = Response::Error {
            message: "x".into(),
        };
        let s = serde_json::to_string(&e).expect("ser");
        assert_eq!(serde_json::from_str::<Response>(&s).expect("de"), e);
    }

    #[test]
    fn a_missing_socket_means_not_running() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = call(
            "m",
            &dir.path().join("sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .expect_err("no socket");
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("isthmus up --name m"));
    }
}
