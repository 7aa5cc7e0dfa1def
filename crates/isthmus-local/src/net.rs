//! Network topology of one mesh: a private "node" namespace with a bridge, one namespace per
//! pod attached by a veth pair.
//!
//! Everything is created *inside* namespaces owned by the mesh: the veth pair is created in
//! the node namespace and its peer moved straight into the pod namespace, so the host's own
//! network never sees a new link, address or route. Names are `<prefix>-<mesh>-node` and
//! `<prefix>-<mesh>-<pod>`, so parallel meshes never collide and `cleanup_all(prefix)` can
//! find leftovers of crashed runs. Interface names only need to be unique inside their
//! namespace (`br0`, `vp<N>` in the node namespace, `eth0` in a pod), well under IFNAMSIZ.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::cmd::{self, CmdError};
use crate::netns;

/// Default name prefix of everything the runtime creates.
pub const DEFAULT_PREFIX: &str = "isth";
/// Name of the bridge inside the node namespace.
pub const BRIDGE: &str = "br0";
/// Name of the pod's interface inside its namespace.
pub const POD_IFACE: &str = "eth0";
/// First host number handed to pods (lower ones are reserved for node-side services).
pub const FIRST_POD_HOST: u32 = 10;

/// Errors of the topology layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A name does not fit the rules.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The mesh already exists.
    #[error("a mesh named `{mesh}` already exists (namespace `{netns}`); pick another --name, or run `isthmus down --name {mesh}` (leftovers of crashed runs: `isthmus down --all`)")]
    MeshExists {
        /// Mesh name.
        mesh: String,
        /// Node namespace found.
        netns: String,
    },
    /// The node bridge is not as `ip` created it.
    #[error("mesh bridge in `{node}`: {reason}")]
    Bridge {
        /// Node namespace.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// A pod with this key already exists.
    #[error("pod `{0}` already has a network namespace in this mesh")]
    PodExists(String),
    /// Unknown pod.
    #[error("pod `{0}` has no network namespace in this mesh")]
    UnknownPod(String),
    /// The subnet is full or the address is unusable.
    #[error("cannot give pod `{pod}` an address: {reason}")]
    Address {
        /// Pod key.
        pod: String,
        /// Why.
        reason: String,
    },
    /// The subnet is too small.
    #[error("subnet {0} is too small; use a /24 or larger (e.g. 10.244.0.0/24)")]
    SubnetTooSmall(Ipv4Net),
    /// A tool failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// Namespace entry failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

/// Settings of one mesh's network.
#[derive(Debug, Clone)]
pub struct MeshNetConfig {
    /// Prefix of every namespace name (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Mesh name (lowercase letters, digits, `-`; at most 24 characters).
    pub mesh: String,
    /// Pod subnet, visible only inside the mesh's namespaces (default 10.244.0.0/24).
    pub subnet: Ipv4Net,
}

impl MeshNetConfig {
    /// Defaults for mesh `mesh`.
    pub fn new(mesh: &str) -> Self {
        MeshNetConfig {
            prefix: DEFAULT_PREFIX.to_string(),
            mesh: mesh.to_string(),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 24).unwrap_or_default(),
        }
    }
}

/// The network side of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    /// Caller's key for the pod (e.g. `default/sleep-1`).
    pub key: String,
    /// Network namespace name (`ip netns exec <netns> ...`).
    pub netns: String,
    /// The pod's IPv4 address on the mesh bridge.
    pub ip: Ipv4Addr,
    /// Default gateway (the bridge address in the node namespace).
    pub gateway: Ipv4Addr,
    /// Prefix length of the pod subnet.
    pub prefix_len: u8,
    /// Name of the node-side veth end.
    pub veth: String,
}

/// Pins the bridge's MAC address. A Linux bridge whose address was never set takes the lowest
/// MAC of its ports and changes it whenever a pod's veth joins; pods that already resolved the
/// bridge address (the control plane, the DNS) then keep sending to the old MAC, and a TCP
/// connection that still receives data never re-resolves: an agent's ACK is retransmitted into
/// the void while its push session looks alive. Setting the address explicitly (to the one it
/// has now) freezes it (`addr_assign_type` 3, "set").
fn pin_bridge_address(node: &str) -> Result<(), NetError> {
    let shown = cmd::ip(&["-n", node, "-o", "link", "show", BRIDGE])?;
    let mut words = shown.split_whitespace();
    let mac = words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .ok_or_else(|| NetError::Bridge {
            node: node.to_string(),
            reason: format!("no MAC address on {BRIDGE}: {shown}"),
        })?;
    cmd::ip(&["-n", node, "link", "set", BRIDGE, "address", mac])?;
    Ok(())
}

/// One mesh's network: node namespace, bridge, and pods. Dropping it does NOT tear anything
/// down (a supervisor may hand it over); call [`MeshNet::down`].
#[derive(Debug)]
pub struct MeshNet {
    cfg: MeshNetConfig,
    node: String,
    pods: Mutex<BTreeMap<String, PodNet>>,
}

fn validate(what: &'static str, value: &str, max: usize) -> Result<(), NetError> {
    let bad = |reason| {
        Err(NetError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > max {
        return bad("too long");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Validates a mesh name (used in namespace names).
pub fn validate_mesh_name(mesh: &str) -> Result<(), NetError> {
    validate("mesh name", mesh, 24)
}

fn fnv32(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Turns a pod key such as `default/httpbin-7f9c` into a namespace-name-safe slug.
fn slug(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() || out.len() > 40 || out == "node" {
        let head: String = out.chars().take(30).collect();
        format!("{}-{:08x}", head.trim_matches('-'), fnv32(key))
            .trim_start_matches('-')
            .to_string()
    } else {
        out
    }
}

/// Name of the node namespace of `mesh`.
pub fn node_netns_name(prefix: &str, mesh: &str) -> String {
    format!("{prefix}-{mesh}-node")
}

/// Lists the named network namespaces whose name starts with `prefix` (sorted).
pub fn list_netns(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(netns::NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Kills every process whose network namespace is `name` (SIGKILL, repeated until none is
/// left or after a few rounds). Returns how many were signalled.
pub fn kill_netns_processes(name: &str) -> usize {
    let mut total = 0;
    for _ in 0..10 {
        let pids: Vec<i32> = match cmd::ip(&["netns", "pids", name]) {
            Ok(out) => out
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => return total,
        };
        let me = std::process::id() as i32;
        let pids: Vec<i32> = pids.into_iter().filter(|p| *p != me && *p > 1).collect();
        if pids.is_empty() {
            return total;
        }
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        total += pids.len();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    total
}

/// Deletes a named namespace after killing its processes. Missing namespaces are fine.
pub fn delete_netns(name: &str) -> Result<(), NetError> {
    if !netns::exists(name) {
        return Ok(());
    }
    kill_netns_processes(name);
    match cmd::ip(&["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !netns::exists(name) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes every namespace whose name starts with `<prefix>-` (with its processes, links and
/// nftables tables, which die with the namespace). For leftovers of crashed runs. Returns the
/// names removed.
pub fn cleanup_all(prefix: &str) -> Result<Vec<String>, NetError> {
    validate("prefix", prefix, 16)?;
    let names = list_netns(&format!("{prefix}-"));
    // Pods first, node namespaces last, so veth ends disappear with their pod.
    let (nodes, pods): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| n.ends_with("-node"));
    for n in pods.iter().chain(nodes.iter()) {
        delete_netns(n)?;
    }
    Ok(names)
}

/// Removes one mesh's namespaces without its `MeshNet` handle (e.g. `isthmus down --name N`
/// after the supervisor crashed). Pods are found through the veth pairs in the node
/// namespace (each peer names its pod namespace), so other meshes whose names merely share a
/// prefix are never touched. Returns the names removed; an absent mesh is not an error.
pub fn cleanup_mesh(prefix: &str, mesh: &str) -> Result<Vec<String>, NetError> {
    validate("prefix", prefix, 16)?;
    validate_mesh_name(mesh)?;
    let node = node_netns_name(prefix, mesh);
    if !netns::exists(&node) {
        return Ok(Vec::new());
    }
    let links = cmd::ip(&["-n", &node, "-o", "link", "show"]).unwrap_or_default();
    let mut pods: Vec<String> = links
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words
                .find(|w| *w == "link-netns")
                .and_then(|_| words.next())
                .map(|s| s.to_string())
        })
        .filter(|n| n.starts_with(&format!("{prefix}-{mesh}-")))
        .collect();
    pods.sort();
    pods.dedup();
    for p in &pods {
        delete_netns(p)?;
    }
    delete_netns(&node)?;
    pods.push(node);
    Ok(pods)
}

impl MeshNet {
    /// Creates the node namespace and bridge of a new mesh. Fails if one with this name
    /// exists. On error, whatever was created is removed again.
    pub fn up(cfg: MeshNetConfig) -> Result<MeshNet, NetError> {
        validate("prefix", &cfg.prefix, 16)?;
        validate_mesh_name(&cfg.mesh)?;
        if cfg.subnet.prefix_len() > 24 {
            return Err(NetError::SubnetTooSmall(cfg.subnet));
        }
        if cfg.subnet.prefix_len() < 8 {
            return Err(NetError::InvalidName {
                what: "subnet",
                value: cfg.subnet.to_string(),
                reason: "use a private range between /8 and /24, e.g. 10.244.0.0/24",
            });
        }
        let cfg = MeshNetConfig {
            subnet: cfg.subnet.trunc(),
            ..cfg
        };
        let node = node_netns_name(&cfg.prefix, &cfg.mesh);
        if netns::exists(&node) {
            return Err(NetError::MeshExists {
                mesh: cfg.mesh.clone(),
                netns: node,
            });
        }
        let net = MeshNet {
            cfg,
            node,
            pods: Mutex::new(BTreeMap::new()),
        };
        if let Err(e) = net.create_node() {
            let _ = delete_netns(&net.node);
            return Err(e);
        }
        tracing::info!(mesh = %net.cfg.mesh, netns = %net.node, subnet = %net.cfg.subnet, "mesh network up");
        Ok(net)
    }

    fn create_node(&self) -> Result<(), NetError> {
        let n = self.node.as_str();
        cmd::ip(&["netns", "add", n])?;
        cmd::ip(&["-n", n, "link", "set", "lo", "up"])?;
        cmd::ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge"])?;
        pin_bridge_address(n)?;
        let len = self.cfg.subnet.prefix_len().to_string();
        for ip in [self.gateway_ip(), self.dns_ip(), self.outside_dns_ip()] {
            cmd::ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{ip}/{len}"),
                "dev",
                BRIDGE,
            ])?;
        }
        cmd::ip(&["-n", n, "link", "set", BRIDGE, "up"])?;
        // Forwarding inside the node namespace only: needed for node-level service VIPs.
        cmd::run(
            "ip",
            &["netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            None,
        )?;
        // If the host loaded br_netfilter, bridged frames would run through this namespace's
        // ip hooks; a DNAT'd service connection from a pod to itself would then be bridged
        // back out of the port it came from and dropped. The switch is per namespace (Linux
        // >= 5.3), so turning it off here leaves the host alone. Absent module: nothing to do.
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ] {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if std::path::Path::new(&path).exists() {
                let _ = cmd::run(
                    "ip",
                    &["netns", "exec", n, "sysctl", "-qw", &format!("{key}=0")],
                    None,
                );
            }
        }
        Ok(())
    }

    /// Mesh name.
    pub fn mesh(&self) -> &str {
        &self.cfg.mesh
    }

    /// Settings used.
    pub fn config(&self) -> &MeshNetConfig {
        &self.cfg
    }

    /// Node namespace name.
    pub fn node_netns(&self) -> &str {
        &self.node
    }

    /// Pod subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.cfg.subnet
    }

    fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.subnet.network()) + n)
    }

    /// Bridge address in the node namespace; every pod's default gateway.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Address (on the node namespace's bridge) reserved for the mesh DNS server.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.host(2)
    }

    /// Address (on the node namespace's bridge) reserved for the "outside world" resolver.
    pub fn outside_dns_ip(&self) -> Ipv4Addr {
        self.host(3)
    }

    /// A snapshot of the pods, sorted by key.
    pub fn pods(&self) -> Vec<PodNet> {
        self.lock().values().cloned().collect()
    }

    /// The pod with key `key`.
    pub fn pod(&self, key: &str) -> Option<PodNet> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodNet>> {
        // A poisoned lock only means another thread panicked mid-update; the map is still usable.
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a pod with the next free address.
    pub fn add_pod(&self, key: &str) -> Result<PodNet, NetError> {
        self.add_pod_inner(key, None)
    }

    /// Adds a pod with a chosen address (must be inside the subnet and free).
    pub fn add_pod_with_ip(&self, key: &str, ip: Ipv4Addr) -> Result<PodNet, NetError> {
        self.add_pod_inner(key, Some(ip))
    }

    fn add_pod_inner(&self, key: &str, want: Option<Ipv4Addr>) -> Result<PodNet, NetError> {
        let pod = {
            let mut pods = self.lock();
            if pods.contains_key(key) {
                return Err(NetError::PodExists(key.to_string()));
            }
            let used: std::collections::BTreeSet<Ipv4Addr> = pods.values().map(|p| p.ip).collect();
            let base = u32::from(self.cfg.subnet.network());
            let size = 1u32 << (32 - u32::from(self.cfg.subnet.prefix_len()));
            let ip = match want {
                Some(ip) => {
                    let off = u32::from(ip).wrapping_sub(base);
                    if !self.cfg.subnet.contains(&ip) || off < FIRST_POD_HOST || off >= size - 1 {
                        return Err(NetError::Address {
                            pod: key.to_string(),
                            reason: format!("{ip} is outside the pod range of {}", self.cfg.subnet),
                        });
                    }
                    if used.contains(&ip) {
                        return Err(NetError::Address {
                            pod: key.to_string(),
                            reason: format!("{ip} is taken"),
                        });
                    }
                    ip
                }
                None => (FIRST_POD_HOST..size - 1)
                    .map(|n| Ipv4Addr::from(base + n))
                    .find(|ip| !used.contains(ip))
                    .ok_or_else(|| NetError::Address {
                        pod: key.to_string(),
                        reason: format!("subnet {} is full", self.cfg.subnet),
                    })?,
            };
            let mut name = format!("{}-{}-{}", self.cfg.prefix, self.cfg.mesh, slug(key));
            if pods.values().any(|p| p.netns == name) {
                name = format!("{name}-{:08x}", fnv32(key));
            }
            let host_no = u32::from(ip) - base;
            let pod = PodNet {
                key: key.to_string(),
                netns: name,
                ip,
                gateway: self.gateway_ip(),
                prefix_len: self.cfg.subnet.prefix_len(),
                veth: format!("vp{host_no}"),
            };
            pods.insert(key.to_string(), pod.clone());
            pod
        };
        if let Err(e) = self.create_pod(&pod) {
            let _ = delete_netns(&pod.netns);
            self.lock().remove(key);
            return Err(e);
        }
        tracing::info!(mesh = %self.cfg.mesh, pod = %key, netns = %pod.netns, ip = %pod.ip, "pod network up");
        Ok(pod)
    }

    fn create_pod(&self, p: &PodNet) -> Result<(), NetError> {
        if netns::exists(&p.netns) {
            return Err(NetError::PodExists(format!(
                "{} (namespace {} is left over; run cleanup)",
                p.key, p.netns
            )));
        }
        let ns = p.netns.as_str();
        let node = self.node.as_str();
        cmd::ip(&["netns", "add", ns])?;
        cmd::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        cmd::ip(&[
            "-n", node, "link", "add", &p.veth, "type", "veth", "peer", "name", POD_IFACE, "netns",
            ns,
        ])?;
        cmd::ip(&["-n", node, "link", "set", &p.veth, "master", BRIDGE])?;
        cmd::ip(&["-n", node, "link", "set", &p.veth, "up"])?;
        cmd::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{}", p.ip, p.prefix_len),
            "dev",
            POD_IFACE,
        ])?;
        cmd::ip(&["-n", ns, "link", "set", POD_IFACE, "up"])?;
        cmd::ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &p.gateway.to_string(),
        ])?;
        Ok(())
    }

    /// Removes a pod's namespace (its processes are killed, its veth pair disappears).
    pub fn remove_pod(&self, key: &str) -> Result<(), NetError> {
        let pod = self
            .lock()
            .remove(key)
            .ok_or_else(|| NetError::UnknownPod(key.to_string()))?;
        self.delete_pod(&pod)
    }

    fn delete_pod(&self, pod: &PodNet) -> Result<(), NetError> {
        // The kernel destroys a namespace (and its veth end) only when the last reference
        // goes, which an open socket can delay; delete the pair explicitly so the node
        // namespace is clean right away.
        let _ = cmd::ip(&["-n", &self.node, "link", "del", &pod.veth]);
        delete_netns(&pod.netns)
    }

    /// Tears the whole mesh network down: every pod namespace, then the node namespace.
    /// Processes still running in them are killed. Idempotent.
    pub fn down(&self) -> Result<(), NetError> {
        let pods: Vec<PodNet> = std::mem::take(&mut *self.lock()).into_values().collect();
        let mut first_err = None;
        for p in pods {
            if let Err(e) = self.delete_pod(&p) {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = delete_netns(&self.node) {
            first_err.get_or_insert(e);
        }
        tracing::info!(mesh = %self.cfg.mesh, "mesh network down");
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_and_bounded() {
        assert_eq!(slug("default/sleep-1"), "default-sleep-1");
        assert_eq!(
            slug("Istio-System/istio-ingressgateway.x"),
            "istio-system-istio-ingressgateway-x"
        );
        let long = slug(&"a".repeat(100));
        assert!(long.len() <= 40, "{long}");
        assert_ne!(slug(&"a".repeat(100)), slug(&"a".repeat(101)));
        assert!(slug("node").ends_with(&format!("{:08x}", fnv32("node"))));
        assert!(!slug("///").starts_with('-'));
    }

    #[test]
    fn bad_subnets_and_names_are_refused_before_touching_anything() {
        for net in ["0.0.0.0/0", "10.0.0.0/30"] {
            let mut cfg = MeshNetConfig::new("unit-never-created");
            cfg.subnet = net.parse().unwrap_or_default();
            assert!(MeshNet::up(cfg).is_err(), "{net}");
        }
        let cfg = MeshNetConfig::new("Bad Name");
        assert!(matches!(
            MeshNet::up(cfg),
            Err(NetError::InvalidName { .. })
        ));
        assert!(!netns::exists(&node_netns_name(
            DEFAULT_PREFIX,
            "unit-never-created"
        )));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_mesh_name("demo-1").is_ok());
        assert!(validate_mesh_name("Demo").is_err());
        assert!(validate_mesh_name("-x").is_err());
        assert!(validate_mesh_name(&"x".repeat(25)).is_err());
        assert!(validate_mesh_name("").is_err());
    }
}
