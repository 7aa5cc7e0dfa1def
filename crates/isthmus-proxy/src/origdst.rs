//! Original destination of a captured connection (iptables/nftables REDIRECT).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

/// How the proxy learns a connection's original destination.
#[derive(Clone, Default)]
pub enum OrigDst {
    /// `getsockopt(SO_ORIGINAL_DST)` on the accepted socket (production).
    #[default]
    Socket,
    /// Injected by tests: (local, peer) -> original destination.
    Injected(Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<SocketAddr> + Send + Sync>),
}

impl OrigDst {
    pub fn lookup(&self, s: &TcpStream, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        match self {
            OrigDst::Socket => so_original_dst(s).ok(),
            OrigDst::Injected(f) => f(local, peer),
        }
    }
}

/// Read SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6) from a socket.
#[cfg(target_os = "linux")]
pub fn so_original_dst(s: &TcpStream) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = s.as_raw_fd();
    let v6 = s.local_addr()?.is_ipv6();
    // SAFETY: sockaddr_storage is large enough for either family and fully owned here;
    // getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let (level, opt) = if v6 {
            (libc::SOL_IPV6, SO_ORIGINAL_DST)
        } else {
            (libc::SOL_IP, SO_ORIGINAL_DST)
        };
        let rc = libc::getsockopt(
            fd,
            level,
            opt,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        match addr.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Ok(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in6);
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Ok(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
            }
            f => Err(std::io::Error::other(format!(
                "unexpected address family {f}"
            ))),
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn so_original_dst(_s: &TcpStream) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::other("SO_ORIGINAL_DST is Linux-only"))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn not_redirected_socket_reports_error() {
        // Without a NAT redirect the kernel has no original destination (ENOENT/ENOPROTOOPT).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(a).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(super::so_original_dst(&s).is_err());
    }
}
