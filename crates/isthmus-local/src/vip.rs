//! Service VIPs "as through kube-proxy" (for pods without a sidecar) and the ServiceEntry VIP
//! allocator.
//!
//! Each VIP:port gets its own chain that picks an endpoint with `numgen random mod N` and
//! DNATs to it, the same shape as kube-proxy's nftables mode. Rules can be installed in a
//! pod's namespace (nat output: the pod's own connections are rewritten before they leave,
//! so replies come straight back) or in the node namespace (nat prerouting on the bridge,
//! plus masquerade so a pod talking to its own service through the node gets the reply back
//! through the node — the classic hairpin case). The whole table is replaced atomically on
//! every update. VIP:port with no endpoints are rejected (TCP reset / ICMP unreachable), as
//! kube-proxy does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::cmd::{self, CmdError};

/// nftables table holding service VIP rules.
pub const SERVICE_TABLE: &str = "isthmus_services";

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4 {
    fn nft(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// One service port: `vip:port` balanced over `endpoints` (pod IP : targetPort).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceVip {
    /// Cluster IP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: L4,
    /// Ready endpoints.
    pub endpoints: Vec<SocketAddrV4>,
}

/// Where the rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipMode {
    /// In a pod's namespace, rewriting the pod's own outgoing connections.
    Pod,
    /// In the node namespace, rewriting traffic routed through the bridge address.
    Node,
}

/// The nftables script for `services` in `mode` (deterministic: sorted input).
pub fn vip_ruleset(services: &[ServiceVip], mode: VipMode) -> String {
    let mut svcs: Vec<ServiceVip> = services.to_vec();
    for s in &mut svcs {
        s.endpoints.sort();
        s.endpoints.dedup();
    }
    svcs.sort();
    svcs.dedup_by(|a, b| a.vip == b.vip && a.port == b.port && a.protocol == b.protocol);
    let (hook, filter_hook) = match mode {
        VipMode::Pod => ("output", "output"),
        VipMode::Node => ("prerouting", "forward"),
    };
    let mut s = format!(
        "table ip {SERVICE_TABLE}\ndelete table ip {SERVICE_TABLE}\ntable ip {SERVICE_TABLE} {{\n"
    );
    let mut dispatch = String::new();
    let mut reject = String::new();
    for (i, svc) in svcs.iter().enumerate() {
        let proto = svc.protocol.nft();
        let matcher = format!("ip daddr {} {proto} dport {}", svc.vip, svc.port);
        if svc.endpoints.is_empty() {
            let action = match svc.protocol {
                L4::Tcp => "reject with tcp reset",
                L4::Udp => "reject",
            };
            reject.push_str(&format!("    {matcher} {action}\n"));
            continue;
        }
        dispatch.push_str(&format!("    {matcher} goto svc{i}\n"));
        let arms: Vec<String> = (0..svc.endpoints.len())
            .map(|j| format!("{j} : goto svc{i}ep{j}"))
            .collect();
        s.push_str(&format!(
            "  chain svc{i} {{\n    numgen random mod {} vmap {{ {} }}\n  }}\n",
            svc.endpoints.len(),
            arms.join(", ")
        ));
        for (j, ep) in svc.endpoints.iter().enumerate() {
            s.push_str(&format!(
                "  chain svc{i}ep{j} {{\n    meta l4proto {proto} dnat to {ep}\n  }}\n"
            ));
        }
    }
    s.push_str(&format!("  chain nat_{hook} {{\n    type nat hook {hook} priority -100; policy accept;\n{dispatch}  }}\n"));
    s.push_str(&format!(
        "  chain filter_{filter_hook} {{\n    type filter hook {filter_hook} priority 0; policy accept;\n{reject}  }}\n"
    ));
    if mode == VipMode::Node {
        s.push_str("  chain nat_postrouting {\n    type nat hook postrouting priority 100; policy accept;\n    ct status dnat masquerade\n  }\n");
    }
    s.push_str("}\n");
    s
}

/// Installs (replaces) the service VIP rules in namespace `netns`.
pub fn install_service_vips(
    netns: &str,
    services: &[ServiceVip],
    mode: VipMode,
) -> Result<(), CmdError> {
    cmd::nft_script(Some(netns), &vip_ruleset(services, mode))?;
    tracing::debug!(
        netns,
        services = services.len(),
        ?mode,
        "service VIPs installed"
    );
    Ok(())
}

/// Removes the service VIP rules from namespace `netns` (no error if absent).
pub fn remove_service_vips(netns: &str) -> Result<(), CmdError> {
    cmd::nft_script(
        Some(netns),
        &format!("table ip {SERVICE_TABLE}\ndelete table ip {SERVICE_TABLE}\n"),
    )?;
    Ok(())
}

/// First address of the ServiceEntry auto-allocation range (Istio: 240.240.0.0/16).
pub const AUTO_VIP_BASE: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 0);

/// Allocates VIPs for ServiceEntry hosts from 240.240.0.0/16, deterministically: hosts are
/// lowercased, deduplicated and sorted, then numbered from 240.240.0.1 upwards, skipping
/// addresses ending in .0 or .255. Wildcard hosts (`*.x`) get none, as in Istio. Hosts
/// beyond the range's capacity get none either.
pub fn allocate_vips<'a, I: IntoIterator<Item = &'a str>>(hosts: I) -> BTreeMap<String, Ipv4Addr> {
    let mut names: Vec<String> = hosts
        .into_iter()
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| !h.is_empty() && !h.starts_with('*'))
        .collect();
    names.sort();
    names.dedup();
    let base = u32::from(AUTO_VIP_BASE);
    let mut out = BTreeMap::new();
    let mut n: u32 = 0;
    for h in names {
        loop {
            n += 1;
            if n >= 1 << 16 {
                return out;
            }
            let last = n & 0xff;
            if last != 0 && last != 255 {
                break;
            }
        }
        out.insert(h, Ipv4Addr::from(base + n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_sorted_and_deterministic() {
        let a = allocate_vips([
            "b.example.com",
            "A.example.com",
            "*.wild.com",
            "a.example.com.",
        ]);
        assert_eq!(a.len(), 2);
        assert_eq!(a["a.example.com"], Ipv4Addr::new(240, 240, 0, 1));
        assert_eq!(a["b.example.com"], Ipv4Addr::new(240, 240, 0, 2));
        let hosts: Vec<String> = (0..300).map(|i| format!("h{i:03}.x")).collect();
        let m = allocate_vips(hosts.iter().map(|s| s.as_str()));
        assert_eq!(m.len(), 300);
        assert!(m
            .values()
            .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
        let set: std::collections::BTreeSet<_> = m.values().collect();
        assert_eq!(set.len(), 300);
        assert_eq!(m["h254.x"], Ipv4Addr::new(240, 240, 1, 1));
    }

    #[test]
    fn ruleset_balances_and_rejects() {
        let svcs = vec![
            ServiceVip {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: L4::Tcp,
                endpoints: vec![
                    "10.244.0.12:8080"
                        .parse()
                        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
                    "10.244.0.11:8080"
                        .parse()
                        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
                ],
            },
            ServiceVip {
                vip: Ipv4Addr::new(10, 96, 0, 11),
                port: 81,
                protocol: L4::Tcp,
                endpoints: vec![],
            },
        ];
        let r = vip_ruleset(&svcs, VipMode::Pod);
        assert!(
            r.contains("numgen random mod 2 vmap { 0 : goto svc0ep0, 1 : goto svc0ep1 }"),
            "{r}"
        );
        assert!(r.contains("dnat to 10.244.0.11:8080"), "{r}");
        assert!(
            r.contains("ip daddr 10.96.0.11 tcp dport 81 reject with tcp reset"),
            "{r}"
        );
        assert!(r.contains("type nat hook output"), "{r}");
        let n = vip_ruleset(&svcs, VipMode::Node);
        assert!(
            n.contains("type nat hook prerouting") && n.contains("masquerade"),
            "{n}"
        );
    }
}
