//! Sidecar traffic capture with nftables inside a pod's network namespace, plus the socket
//! helpers the proxy needs on the other side of it (`SO_ORIGINAL_DST`, `SO_MARK`).
//!
//! Rules (table `ip isthmus_capture`, replaced atomically on every install):
//! * inbound TCP (nat prerouting) is redirected to the inbound port (15006), except traffic
//!   arriving on loopback and the proxy's own admin/metrics ports;
//! * outbound TCP (nat output) is redirected to the outbound port (15001), except packets
//!   carrying the proxy's socket mark (the proxy's own upstream connections), loopback,
//!   excluded ports and excluded CIDRs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use ipnet::Ipv4Net;

use crate::cmd::{self, CmdError};

/// nftables table used for capture.
pub const CAPTURE_TABLE: &str = "isthmus_capture";
/// Default outbound capture port (Envoy/Istio `virtualOutbound`).
pub const OUTBOUND_PORT: u16 = 15001;
/// Default inbound capture port (Istio `virtualInbound`).
pub const INBOUND_PORT: u16 = 15006;
/// Default socket mark of the proxy's own traffic (Istio uses 1337 as well).
pub const PROXY_MARK: u32 = 1337;
/// Proxy ports never captured: admin, agent/merged metrics, health, Envoy prometheus.
pub const PROXY_PORTS: [u16; 4] = [15000, 15020, 15021, 15090];

/// What to capture in one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Port the proxy listens on for redirected outbound connections.
    pub outbound_port: u16,
    /// Port the proxy listens on for redirected inbound connections.
    pub inbound_port: u16,
    /// Socket mark of the proxy's own traffic; such packets are never captured.
    pub proxy_mark: u32,
    /// Extra inbound destination ports left alone (`traffic.sidecar.istio.io/excludeInboundPorts`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Extra outbound destination ports left alone (`excludeOutboundPorts`).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (`excludeOutboundIPRanges`).
    pub exclude_outbound_cidrs: Vec<Ipv4Net>,
    /// When set, DNS (UDP and TCP port 53) leaving the pod is redirected to this local port
    /// (Istio's DNS capture to 15053); the proxy's marked traffic is exempt.
    pub dns_redirect_port: Option<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            proxy_mark: PROXY_MARK,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            dns_redirect_port: None,
        }
    }
}

fn port_set(ports: &[u16]) -> String {
    let mut v: Vec<u16> = ports.to_vec();
    v.sort_unstable();
    v.dedup();
    v.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl CaptureConfig {
    /// The nftables script installing these rules (idempotent: it replaces the table).
    pub fn ruleset(&self) -> String {
        let mut inbound_skip: Vec<u16> = PROXY_PORTS.to_vec();
        inbound_skip.extend(&self.exclude_inbound_ports);
        let mut outbound_skip: Vec<u16> = PROXY_PORTS.to_vec();
        outbound_skip.extend(&self.exclude_outbound_ports);
        let mark = self.proxy_mark;
        let mut s = String::new();
        s.push_str(&format!(
            "table ip {CAPTURE_TABLE}\ndelete table ip {CAPTURE_TABLE}\n"
        ));
        s.push_str(&format!("table ip {CAPTURE_TABLE} {{\n"));
        s.push_str(
            "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n",
        );
        s.push_str("    iifname \"lo\" return\n");
        s.push_str(&format!(
            "    tcp dport {{ {} }} return\n",
            port_set(&inbound_skip)
        ));
        s.push_str(&format!(
            "    meta l4proto tcp redirect to :{}\n  }}\n",
            self.inbound_port
        ));
        s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
        s.push_str(&format!("    meta mark {mark} return\n"));
        if let Some(dns) = self.dns_redirect_port {
            s.push_str(&format!(
                "    ip daddr != 127.0.0.0/8 udp dport 53 redirect to :{dns}\n"
            ));
            s.push_str(&format!(
                "    ip daddr != 127.0.0.0/8 tcp dport 53 redirect to :{dns}\n"
            ));
        }
        s.push_str("    oifname \"lo\" return\n    ip daddr 127.0.0.0/8 return\n");
        s.push_str(&format!(
            "    tcp dport {{ {} }} return\n",
            port_set(&outbound_skip)
        ));
        if !self.exclude_outbound_cidrs.is_empty() {
            let mut cidrs: Vec<String> = self
                .exclude_outbound_cidrs
                .iter()
                .map(|c| c.trunc().to_string())
                .collect();
            cidrs.sort();
            cidrs.dedup();
            s.push_str(&format!("    ip daddr {{ {} }} return\n", cidrs.join(", ")));
        }
        s.push_str(&format!(
            "    meta l4proto tcp redirect to :{}\n  }}\n}}\n",
            self.outbound_port
        ));
        s
    }
}

/// Installs (or replaces) the capture rules in pod namespace `netns`.
pub fn install_capture(netns: &str, cfg: &CaptureConfig) -> Result<(), CmdError> {
    cmd::nft_script(Some(netns), &cfg.ruleset())?;
    tracing::info!(
        netns,
        outbound = cfg.outbound_port,
        inbound = cfg.inbound_port,
        mark = cfg.proxy_mark,
        "capture installed"
    );
    Ok(())
}

/// Removes the capture rules from pod namespace `netns` (no error if absent).
pub fn remove_capture(netns: &str) -> Result<(), CmdError> {
    cmd::nft_script(
        Some(netns),
        &format!("table ip {CAPTURE_TABLE}\ndelete table ip {CAPTURE_TABLE}\n"),
    )?;
    Ok(())
}

/// Lists the nftables tables of namespace `netns` (or of the caller's namespace), as
/// `family name` lines, sorted.
pub fn list_tables(netns: Option<&str>) -> Result<Vec<String>, CmdError> {
    let out = cmd::nft(netns, &["list", "tables"])?;
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(|s| s.to_string())
        .collect();
    v.sort();
    Ok(v)
}

/// The original destination of a connection redirected by nftables/iptables (IPv4),
/// read with `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the accepted socket.
///
/// Returns an error (ENOENT) for connections that were not redirected.
pub fn original_dst<F: AsFd>(sock: &F) -> std::io::Result<SocketAddrV4> {
    // nix wraps the getsockopt(2) call (the only unsafe part) and returns the raw sockaddr_in.
    let sa = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::OriginalDst)
        .map_err(std::io::Error::from)?;
    // Both fields are in network byte order.
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    let port = u16::from_be(sa.sin_port);
    Ok(SocketAddrV4::new(ip, port))
}

/// Sets `SO_MARK` on a socket (needs CAP_NET_ADMIN), so capture rules let it through.
pub fn set_mark<F: AsFd>(sock: &F, mark: u32) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_exempts_mark_loopback_and_proxy_ports() {
        let cfg = CaptureConfig {
            exclude_inbound_ports: vec![22, 22],
            exclude_outbound_cidrs: vec!["10.1.2.3/16".parse().unwrap_or_default()],
            ..Default::default()
        };
        let r = cfg.ruleset();
        assert!(r.contains("meta mark 1337 return"), "{r}");
        assert!(
            r.contains("tcp dport { 22, 15000, 15020, 15021, 15090 } return"),
            "{r}"
        );
        assert!(r.contains("ip daddr { 10.1.0.0/16 } return"), "{r}");
        assert!(r.contains("redirect to :15001"), "{r}");
        assert!(r.contains("redirect to :15006"), "{r}");
        assert!(!r.contains("udp dport 53"), "{r}");
        // Mark check comes before any redirect in the output chain.
        let out = &r[r.find("chain output").unwrap_or(0)..];
        assert!(out.find("meta mark").unwrap_or(usize::MAX) < out.find("redirect").unwrap_or(0));
    }
}
