//! # isthmus-local — the one-host runtime substrate
//!
//! Everything `isthmus up` needs from the operating system to run a whole mesh on one Linux
//! host without Kubernetes, as a library (the supervisor, control plane and proxy call it):
//!
//! | module | what it does |
//! |---|---|
//! | [`net`] | per-mesh private "node" namespace with a bridge, one namespace per pod on a veth pair; `down` and [`net::cleanup_all`] remove everything |
//! | [`capture`] | nftables sidecar capture (outbound → 15001, inbound → 15006, proxy mark 1337 exempt) and [`capture::original_dst`] / [`capture::set_mark`] |
//! | [`vip`] | Service VIPs "as through kube-proxy" (nftables DNAT with `numgen`) and the ServiceEntry VIP allocator (240.240.0.0/16) |
//! | [`process`] | containers as local processes: pod namespace + private mount namespace with secret/configMap/emptyDir volumes, `/etc/resolv.conf` and `/etc/hosts`; restart supervision; `exec` |
//! | [`dns`] | mesh DNS server (UDP+TCP, A records, runtime-updatable table, forwarding to the "outside world" resolver) and `resolv.conf` helpers |
//! | [`relay`] | published ports: host `127.0.0.1:PORT` → address inside a mesh namespace |
//! | [`echo`] | `isthmus echo`: HTTP/HTTPS server answering JSON with what it saw |
//! | [`netns`] | creating sockets inside a named namespace from a multi-threaded program |
//!
//! Nothing is added to the host's own network except the published relay listeners: links,
//! addresses, routes and nftables tables all live inside namespaces named
//! `<prefix>-<mesh>-…` (prefix [`net::DEFAULT_PREFIX`]). Needs root (CAP_NET_ADMIN +
//! CAP_SYS_ADMIN), `ip` (iproute2), `nft` (nftables) and util-linux (`nsenter`, `unshare`,
//! `mount`); [`preflight`] checks all of that and says how to fix what is missing.
//!
//! ## Address plan (inside each mesh's namespaces only)
//!
//! Default pod subnet 10.244.0.0/24 ([`net::MeshNetConfig::subnet`]); every mesh has its own
//! isolated copy, so meshes never see each other. On the node namespace's bridge `br0`:
//! `.1` gateway of every pod ([`net::MeshNet::gateway_ip`]), `.2` reserved for the mesh DNS
//! server ([`net::MeshNet::dns_ip`]), `.3` for the "outside world" resolver
//! ([`net::MeshNet::outside_dns_ip`]); pods get `.10` upwards. Pods with a sidecar (and mesh
//! pods in general) use the mesh DNS in `resolv.conf`; hosts outside the mesh use the
//! outside resolver only, so they resolve exactly the published outside names. Service VIPs
//! (e.g. 10.96.0.0/16) and ServiceEntry VIPs (240.240.0.0/16, [`vip::allocate_vips`]) are
//! never on any interface: they reach the default route and are rewritten by
//! [`vip::install_service_vips`] (pods without sidecar) or captured by the sidecar.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use isthmus_local::{capture, dns, net, process, relay};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! isthmus_local::preflight()?;
//! let mesh = net::MeshNet::up(net::MeshNetConfig::new("demo"))?;
//! let web = mesh.add_pod("default/web")?;
//!
//! // Mesh DNS in the node namespace; pods point their resolv.conf at it.
//! let table = dns::DnsTable::new();
//! table.insert("web.default.svc.cluster.local", vec![web.ip]);
//! let _dns = dns::DnsServer::bind(Some(mesh.node_netns()), (mesh.dns_ip(), 53).into(), table.clone(), None).await?;
//!
//! // A container process in the pod, restarted if it crashes.
//! let resolv = dns::resolv_conf(mesh.dns_ip(), &dns::search_domains("default", "cluster.local"), 5);
//! let hosts = process::hosts_file(web.ip, "web", &[]);
//! let pod = Arc::new(process::PodSandbox::prepare(&web.netns, "/tmp/demo/web".as_ref(), "web", &resolv, &hosts, vec![])?);
//! let spec = process::ContainerSpec {
//!     name: "web".into(),
//!     argv: vec!["python3".into(), "-m".into(), "http.server".into(), "8080".into()],
//!     env: vec![], working_dir: None, mounts: vec![],
//! };
//! let c = process::Supervised::start(pod.clone(), spec, process::RestartPolicy::Always, Default::default())?;
//!
//! // Sidecar capture (the proxy listens on 15001/15006 and marks its own sockets with 1337).
//! capture::install_capture(&web.netns, &capture::CaptureConfig::default())?;
//!
//! // Reach port 8080 of the pod from the host at 127.0.0.1:18080.
//! let _published = relay::PortRelay::start("127.0.0.1:18080".parse()?, &web.netns, (web.ip, 8080).into()).await?;
//!
//! c.stop(std::time::Duration::from_secs(2)).await;
//! pod.cleanup();
//! mesh.down()?; // every namespace, link, rule and remaining process is gone
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod capture;
pub mod cmd;
pub mod dns;
pub mod echo;
pub mod net;
pub mod netns;
pub mod process;
pub mod relay;
pub mod vip;

pub use capture::{original_dst, set_mark, CaptureConfig};
pub use net::{cleanup_all, MeshNet, MeshNetConfig, PodNet};

/// Why the local runtime cannot run here, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Not root.
    #[error(
        "the local runtime needs root (network and mount namespaces, nftables); run it with sudo"
    )]
    NotRoot,
    /// A tool is missing.
    #[error(transparent)]
    Missing(#[from] cmd::CmdError),
    /// The kernel refused a namespace or nftables operation.
    #[error("this kernel does not support what the local runtime needs ({what}): {detail}")]
    Kernel {
        /// The feature.
        what: &'static str,
        /// Details.
        detail: String,
    },
}

/// Checks root, the tools (`ip`, `nft`, `nsenter`, `unshare`, `mount`) and that the kernel
/// supports network namespaces and nftables NAT, by creating and removing a scratch
/// namespace `<prefix>-preflight-<pid>`.
pub fn preflight() -> Result<(), PreflightError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(PreflightError::NotRoot);
    }
    for tool in ["ip", "nft", "nsenter", "unshare", "mount"] {
        cmd::require(tool)?;
    }
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(
        "{}-preflight-{}-{seq}",
        net::DEFAULT_PREFIX,
        std::process::id()
    );
    cmd::ip(&["netns", "add", &name]).map_err(|e| PreflightError::Kernel {
        what: "network namespaces",
        detail: e.to_string(),
    })?;
    let nat = cmd::nft_script(
        Some(&name),
        "table ip isthmus_preflight {\n chain o {\n  type nat hook output priority -100; policy accept;\n  meta mark 1 return\n  meta l4proto tcp redirect to :1\n }\n}\n",
    );
    let _ = net::delete_netns(&name);
    nat.map_err(|e| PreflightError::Kernel {
        what: "nftables NAT (nf_tables, nft_redir)",
        detail: e.to_string(),
    })?;
    Ok(())
}

/// Helpers for tests that need root and namespaces.
#[doc(hidden)]
pub mod testing {
    /// Whether namespace tests can run here. When they cannot: panics if `CI=true` (CI must
    /// never silently skip them), otherwise prints a loud SKIPPED line and returns false.
    pub fn namespaces_available(test: &str) -> bool {
        static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        match RESULT.get_or_init(|| super::preflight().map_err(|e| e.to_string())) {
            Ok(()) => true,
            Err(e) => {
                let ci = std::env::var("CI")
                    .map(|v| v == "true" || v == "1")
                    .unwrap_or(false);
                if ci {
                    panic!("{test}: namespace test cannot run in CI: {e}");
                }
                eprintln!("\n*** SKIPPED: {test}: needs root + namespaces + nftables: {e} ***\n");
                false
            }
        }
    }
}
