//! # isthmus-supervisor — `isthmus up`: a whole mesh on one Linux host
//!
//! `isthmus up PATH...` loads the manifests, plans the mesh ([`plan::MeshPlan`]: pods with the
//! model's IPs, containers with argv/env/volumes, service VIPs, DNS tables) and starts a
//! supervisor process (the hidden `isthmus supervise` subcommand, spawned detached with
//! `setsid`) that owns everything the mesh runs:
//!
//! - a private node network namespace with a bridge, one namespace per pod
//!   ([`isthmus_local::net`]);
//! - the mesh DNS (service FQDNs, search domains as the kubelet writes them) forwarding to
//!   the "outside world" resolver, which knows only hosts published by pods annotated
//!   [`plan::OUTSIDE_HOSTNAMES`] — outside pods resolve through it alone;
//! - kube-proxy-style VIP DNAT in every mesh pod ([`isthmus_local::vip`]);
//! - every container as a supervised local process, restarted per `restartPolicy`, restart
//!   counts visible in `get pods` ([`isthmus_local::process`]).
//!
//! State lives in `<root>/<name>/` ([`state`]; root `$ISTHMUS_STATE_DIR` or `/run/isthmus`):
//! `sock` (the JSON-lines API in [`api`]), `pid`, `supervisor.log`, `pods/<ns>/<pod>/logs/`.
//! [`ops::up`] returns once every container runs and every declared TCP containerPort accepts
//! connections; [`ops::down`] stops the supervisor and then *verifies* that no namespace,
//! process or state file of the mesh is left.
//!
//! Control plane and proxies: sidecar and gateway pods get an `istio-proxy` container
//! ([`proxies`], running `isthmus agent`, [`agent`]). The supervisor compiles each proxy's
//! config (isthmus-compile → `isthmus_proxy::xds::from_xds`), issues its workload certificate
//! from a per-mesh CA (isthmus-ca, SDS `default`/`ROOTCA`), and pushes it over isthmus-push
//! (TCP on the node bridge address, port [`daemon::CONTROL_PLANE_PORT`], one token per proxy)
//! with ACK/NACK; the agent starts from a bootstrap file so proxies keep serving when the
//! control plane is gone. Sidecar pods get nftables capture (15001/15006; the proxy runs as
//! uid 1337, exempt like istio-iptables' `--uid-owner`) instead of VIP rules. `isthmus apply`
//! validates Istio config (and Secrets) atomically, recompiles every proxy and pushes what
//! changed; pods and Services are fixed at `up` (Secret *volumes* keep the content they had
//! at `up`). Ingress gateway Services are published on host
//! loopback. `--profile demo` (default) adds istio-system's ingress and egress gateways
//! ([`profile`]).
//!
//! DNS: pods without a sidecar ask kube-dns (service names); sidecar pods' queries are
//! DNATed to the sidecar DNS proxy ([`proxies::sidecar_dns_ip`]), which also answers
//! ServiceEntry hosts with their VIPs (declared, or auto-allocated from 240.240.0.0/16 when the
//! mesh turns DNS capture on: `ISTIO_META_DNS_CAPTURE`), while the proxy's own
//! lookups (uid 1337) still reach kube-dns — Istio's DNS capture. Unknown names go to the
//! outside-world resolver.
//!
//! `isthmus apply` / `isthmus delete` also take Secrets: a changed gateway credential
//! (`credentialName`) is recompiled into the gateways that reference it and pushed live.
//! Workload certificates come from isthmus-ca's `WorkloadCertManager` (lifetime `up
//! --workload-cert-ttl`, default 24h), rotated at half their lifetime and pushed to every
//! proxy of that identity without a restart; connections keep the certificate they were
//! opened with. Each proxy's `/config_dump` serves the compiled bundle it runs (with its live
//! `default`/`ROOTCA`), which live `isthmus proxy-config` renders with the offline code.
//!
//! The DNS servers run in a process of their own ([`dns_proc`], inside the node namespace),
//! so names keep resolving when the supervisor dies; `down` removes it with the namespace.

#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod daemon;
pub mod dns_proc;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod proxies;
pub mod render;
pub mod state;

pub use daemon::{claim, load, run, run_blocking, DaemonConfig, SupervisorError};
pub use ops::{down, down_all, up, DownReport, OpsError, UpOptions, UpReport};
pub use state::{state_root, MeshDir};

use isthmus_local::net::DEFAULT_PREFIX;

fn pod_dirs(dir: &MeshDir) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(nss) = std::fs::read_dir(dir.dir.join("pods")) {
        for ns in nss.filter_map(|e| e.ok()) {
            if let Ok(pods) = std::fs::read_dir(ns.path()) {
                out.extend(pods.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    out.sort();
    out
}

/// Removes what a crashed supervisor of mesh `dir` left: its namespaces (with their
/// processes and nftables tables), host directories created for mount paths, and the state
/// directory. Returns the namespaces removed.
pub fn cleanup_leftovers(dir: &MeshDir) -> Vec<String> {
    let removed = cleanup_system(dir);
    let _ = std::fs::remove_dir_all(&dir.dir);
    removed
}

fn cleanup_system(dir: &MeshDir) -> Vec<String> {
    for p in pod_dirs(dir) {
        isthmus_local::process::cleanup_pod_dir(&p);
    }
    if isthmus_local::net::validate_mesh_name(&dir.name).is_err() {
        return Vec::new();
    }
    isthmus_local::net::cleanup_mesh(DEFAULT_PREFIX, &dir.name).unwrap_or_default()
}

/// Like [`cleanup_leftovers`] but keeps `supervisor.log` (for `up` to show why startup failed).
pub(crate) fn cleanup_leftovers_keep_log(dir: &MeshDir) {
    cleanup_system(dir);
    if let Ok(rd) = std::fs::read_dir(&dir.dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p == dir.log() {
                continue;
            }
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
