//! A small DNS server for the mesh: A records from a name table that can be updated at run
//! time, forwarding of unknown names to an upstream (the mesh's "outside world" resolver),
//! NXDOMAIN for the rest. UDP and TCP, hand-rolled wire format (RFC 1035) — the server only
//! ever answers single-question queries, which keeps the parser small and total.
//!
//! Names in the table are stored lowercased without the trailing dot. A name that exists
//! but has no record of the asked type gets an empty NOERROR answer (NODATA), not NXDOMAIN,
//! so resolvers asking A and AAAA in parallel (glibc) accept the A answer. Table entries
//! starting with `*.` match any name below that suffix (longest suffix wins).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::netns;

/// TTL of answers (seconds). Short, because the table changes with the mesh.
pub const TTL: u32 = 30;
const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Response codes used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// NOERROR.
    NoError = 0,
    /// FORMERR.
    FormErr = 1,
    /// SERVFAIL.
    ServFail = 2,
    /// NXDOMAIN.
    NxDomain = 3,
    /// NOTIMP.
    NotImp = 4,
}

/// Errors of the DNS layer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Socket setup failed.
    #[error("DNS server socket: {0}")]
    Io(#[from] std::io::Error),
    /// Namespace work failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A malformed message.
    #[error("malformed DNS message: {0}")]
    Malformed(&'static str),
}

/// A name -> IPv4 table shared between the server and its owner (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct DnsTable(Arc<RwLock<BTreeMap<String, Vec<Ipv4Addr>>>>);

/// Normalises a DNS name: lowercase, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl DnsTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table with these entries.
    pub fn from_entries<I: IntoIterator<Item = (String, Vec<Ipv4Addr>)>>(entries: I) -> Self {
        let t = Self::new();
        t.replace(entries);
        t
    }

    /// Replaces all entries at once (readers see the old or the new table, never a mix).
    pub fn replace<I: IntoIterator<Item = (String, Vec<Ipv4Addr>)>>(&self, entries: I) {
        let mut map = BTreeMap::new();
        for (k, mut v) in entries {
            v.sort();
            v.dedup();
            map.entry(normalize(&k)).or_insert_with(Vec::new).extend(v);
        }
        for v in map.values_mut() {
            v.sort();
            v.dedup();
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Sets the addresses of one name.
    pub fn insert(&self, name: &str, ips: Vec<Ipv4Addr>) {
        let mut ips = ips;
        ips.sort();
        ips.dedup();
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(normalize(name), ips);
    }

    /// Removes one name.
    pub fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&normalize(name));
    }

    /// A sorted copy of the table.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Ipv4Addr>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Looks a name up: exact match first, then the longest matching `*.suffix` entry.
    pub fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let n = normalize(name);
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(&n) {
            return Some(v.clone());
        }
        let mut rest = n.as_str();
        while let Some(idx) = rest.find('.') {
            rest = &rest[idx + 1..];
            if let Some(v) = map.get(&format!("*.{rest}")) {
                return Some(v.clone());
            }
        }
        None
    }
}

/// Where names not in the table go.
#[derive(Debug, Clone)]
pub enum Forward {
    /// Another in-process table (answers from it, NXDOMAIN otherwise).
    Table(DnsTable),
    /// A real DNS server reached over UDP. The forwarding socket is created in network
    /// namespace `netns` (or the server's caller namespace when `None`).
    Udp {
        /// Upstream address.
        addr: SocketAddr,
        /// Namespace to send from.
        netns: Option<String>,
    },
}

/// A parsed single-question query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Transaction id.
    pub id: u16,
    /// Flags word of the query.
    pub flags: u16,
    /// Queried name (normalised).
    pub name: String,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// Byte range of the question section in the query (copied into the answer).
    pub question_end: usize,
}

/// Parses a query; only the header and first question are looked at.
pub fn parse_query(msg: &[u8]) -> Result<Question, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 {
        return Err(DnsError::Malformed("not a query"));
    }
    if qd != 1 {
        return Err(DnsError::Malformed("expected exactly one question"));
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let len = *msg
            .get(pos)
            .ok_or(DnsError::Malformed("name runs past the end"))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(DnsError::Malformed(
                "compression or extended label in question",
            ));
        }
        let label = msg
            .get(pos..pos + len)
            .ok_or(DnsError::Malformed("label runs past the end"))?;
        total += len + 1;
        if total > 255 {
            return Err(DnsError::Malformed("name longer than 255 bytes"));
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let tail = msg
        .get(pos..pos + 4)
        .ok_or(DnsError::Malformed("question runs past the end"))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Question {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: pos + 4,
    })
}

/// Builds a response to `q` (whose raw bytes are `query`) with `answers` as A records.
pub fn build_response(
    query: &[u8],
    q: &Question,
    rcode: Rcode,
    authoritative: bool,
    answers: &[Ipv4Addr],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 16 * answers.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, opcode copied, AA as told, RD copied, RA=1.
    let mut flags: u16 = 0x8000 | (q.flags & 0x7800) | (q.flags & 0x0100) | 0x0080 | (rcode as u16);
    if authoritative {
        flags |= 0x0400;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&query[12..q.question_end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// Builds an A query for `name` (used by tests and health checks).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in normalize(name).split('.').filter(|l| !l.is_empty()) {
        let b = label.as_bytes();
        let len = b.len().min(63);
        out.push(len as u8);
        out.extend_from_slice(&b[..len]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// Reads rcode and A records out of a response (for tests and clients).
pub fn parse_response(msg: &[u8]) -> Result<(u16, Rcode, Vec<Ipv4Addr>), DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("short response"));
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = match msg[3] & 0x0f {
        0 => Rcode::NoError,
        1 => Rcode::FormErr,
        2 => Rcode::ServFail,
        3 => Rcode::NxDomain,
        _ => Rcode::NotImp,
    };
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    let skip_name = |mut pos: usize| -> Result<usize, DnsError> {
        loop {
            let len = *msg.get(pos).ok_or(DnsError::Malformed("name past end"))? as usize;
            if len == 0 {
                return Ok(pos + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Ok(pos + 2);
            }
            pos += 1 + len;
        }
    };
    for _ in 0..qd {
        pos = skip_name(pos)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        pos = skip_name(pos)?;
        let hdr = msg
            .get(pos..pos + 10)
            .ok_or(DnsError::Malformed("record past end"))?;
        let rtype = u16::from_be_bytes([hdr[0], hdr[1]]);
        let rdlen = u16::from_be_bytes([hdr[8], hdr[9]]) as usize;
        pos += 10;
        let rdata = msg
            .get(pos..pos + rdlen)
            .ok_or(DnsError::Malformed("rdata past end"))?;
        if rtype == TYPE_A && rdlen == 4 {
            ips.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        pos += rdlen;
    }
    Ok((id, rcode, ips))
}

/// Answers one query message. `None` means "drop" (not even a header to answer to).
pub async fn answer(table: &DnsTable, forward: Option<&Forward>, query: &[u8]) -> Option<Vec<u8>> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => {
            tracing::debug!(error = %e, "bad DNS query");
            if query.len() < 12 {
                return None;
            }
            let mut out = query[..12].to_vec();
            out[2] = 0x80 | (query[2] & 0x79);
            out[3] = 0x80 | Rcode::FormErr as u8;
            out[4..12].fill(0);
            return Some(out);
        }
    };
    if (q.flags >> 11) & 0xf != 0 {
        return Some(build_response(query, &q, Rcode::NotImp, false, &[]));
    }
    if let Some(ips) = table.lookup(&q.name) {
        let answers: &[Ipv4Addr] =
            if q.qclass == CLASS_IN && (q.qtype == TYPE_A || q.qtype == TYPE_ANY) {
                &ips
            } else {
                &[]
            };
        tracing::trace!(name = %q.name, ?answers, "dns answer");
        return Some(build_response(query, &q, Rcode::NoError, true, answers));
    }
    match forward {
        None => Some(build_response(query, &q, Rcode::NxDomain, true, &[])),
        Some(Forward::Table(t)) => match t.lookup(&q.name) {
            Some(ips) => {
                let answers: &[Ipv4Addr] =
                    if q.qclass == CLASS_IN && (q.qtype == TYPE_A || q.qtype == TYPE_ANY) {
                        &ips
                    } else {
                        &[]
                    };
                Some(build_response(query, &q, Rcode::NoError, false, answers))
            }
            None => Some(build_response(query, &q, Rcode::NxDomain, false, &[])),
        },
        Some(Forward::Udp { addr, netns: ns }) => {
            match forward_udp(*addr, ns.as_deref(), query).await {
                Ok(resp) => Some(resp),
                Err(e) => {
                    tracing::warn!(upstream = %addr, name = %q.name, error = %e, "DNS forward failed");
                    Some(build_response(query, &q, Rcode::ServFail, false, &[]))
                }
            }
        }
    }
}

async fn forward_udp(
    addr: SocketAddr,
    ns: Option<&str>,
    query: &[u8],
) -> Result<Vec<u8>, DnsError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match ns {
        Some(ns) => netns::bind_udp_async(ns, bind).await?,
        None => UdpSocket::bind(bind).await?,
    };
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream DNS timed out")
            })??;
        // Only accept a reply to this query (same id).
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
    Err(DnsError::Malformed("upstream sent mismatched replies"))
}

/// A running DNS server (UDP + TCP on the same address). Dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts serving on already-bound sockets (create them in a namespace with
    /// [`netns::bind_udp_async`] / [`netns::listen_tcp_async`]).
    pub fn serve(
        udp: UdpSocket,
        tcp: Option<TcpListener>,
        table: DnsTable,
        forward: Option<Forward>,
    ) -> Result<DnsServer, DnsError> {
        let addr = udp.local_addr()?;
        let udp = Arc::new(udp);
        let forward = Arc::new(forward);
        let mut tasks = Vec::new();
        {
            let (table, forward) = (table.clone(), forward.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, peer) = match udp.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "dns udp recv");
                            // Back off a little: persistent errors (e.g. EMFILE) must not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let query = buf[..n].to_vec();
                    let (udp, table, forward) = (udp.clone(), table.clone(), forward.clone());
                    tokio::spawn(async move {
                        if let Some(mut resp) =
                            answer(&table, forward.as_ref().as_ref(), &query).await
                        {
                            if resp.len() > 512 {
                                // Truncate and set TC so the client retries over TCP.
                                resp.truncate(12);
                                resp[2] |= 0x02;
                                resp[4..12].fill(0);
                            }
                            let _ = udp.send_to(&resp, peer).await;
                        }
                    });
                }
            }));
        }
        if let Some(tcp) = tcp {
            tasks.push(tokio::spawn(async move {
                loop {
                    let (mut s, _) = match tcp.accept().await {
                        Ok(x) => x,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let (table, forward) = (table.clone(), forward.clone());
                    tokio::spawn(async move {
                        loop {
                            let fut = async {
                                let len = s.read_u16().await? as usize;
                                let mut q = vec![0u8; len];
                                s.read_exact(&mut q).await?;
                                Ok::<_, std::io::Error>(q)
                            };
                            let q = match tokio::time::timeout(Duration::from_secs(10), fut).await {
                                Ok(Ok(q)) => q,
                                _ => return,
                            };
                            let Some(resp) = answer(&table, forward.as_ref().as_ref(), &q).await
                            else {
                                return;
                            };
                            let Ok(len) = u16::try_from(resp.len()) else {
                                return;
                            };
                            if s.write_u16(len).await.is_err() || s.write_all(&resp).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }));
        }
        tracing::info!(%addr, "DNS server listening");
        Ok(DnsServer { addr, tasks })
    }

    /// Binds UDP and TCP on `addr` inside network namespace `ns` (or the caller's namespace
    /// when `None`) and serves.
    pub async fn bind(
        ns: Option<&str>,
        addr: SocketAddr,
        table: DnsTable,
        forward: Option<Forward>,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = match ns {
            Some(ns) => {
                let udp = netns::bind_udp_async(ns, addr).await?;
                let addr = udp.local_addr()?;
                (udp, netns::listen_tcp_async(ns, addr).await?)
            }
            None => {
                let udp = UdpSocket::bind(addr).await?;
                let addr = udp.local_addr()?;
                (udp, TcpListener::bind(addr).await?)
            }
        };
        Self::serve(udp, Some(tcp), table, forward)
    }

    /// Address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Search domains of a pod in namespace `namespace` with DNS suffix `domain`, as the
/// kubelet writes them (`<ns>.svc.<domain> svc.<domain> <domain>`).
pub fn search_domains(namespace: &str, domain: &str) -> Vec<String> {
    let d = normalize(domain);
    vec![
        format!("{}.svc.{d}", normalize(namespace)),
        format!("svc.{d}"),
        d,
    ]
}

/// A pod's `/etc/resolv.conf`.
pub fn resolv_conf(nameserver: Ipv4Addr, search: &[String], ndots: u8) -> String {
    let mut s = format!("nameserver {nameserver}\n");
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    s.push_str(&format!("options ndots:{ndots}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        DnsTable::from_entries([
            (
                "httpbin.default.svc.cluster.local.".to_string(),
                vec![Ipv4Addr::new(10, 96, 0, 10)],
            ),
            (
                "*.wild.example".to_string(),
                vec![Ipv4Addr::new(240, 240, 0, 9)],
            ),
        ])
    }

    #[tokio::test]
    async fn answers_known_names_and_nxdomain_for_others() {
        let t = table();
        let q = build_query(7, "HTTPBIN.default.svc.cluster.local", TYPE_A);
        let r = answer(&t, None, &q).await.unwrap_or_default();
        assert_eq!(
            parse_response(&r).ok(),
            Some((7, Rcode::NoError, vec![Ipv4Addr::new(10, 96, 0, 10)]))
        );
        let q = build_query(8, "httpbin.default.svc.cluster.local", 28);
        let r = answer(&t, None, &q).await.unwrap_or_default();
        assert_eq!(
            parse_response(&r).ok(),
            Some((8, Rcode::NoError, vec![])),
            "AAAA of a known name is NODATA"
        );
        let q = build_query(9, "nope.example", TYPE_A);
        let r = answer(&t, None, &q).await.unwrap_or_default();
        assert_eq!(parse_response(&r).ok().map(|x| x.1), Some(Rcode::NxDomain));
        let q = build_query(10, "a.b.wild.example", TYPE_A);
        let r = answer(&t, None, &q).await.unwrap_or_default();
        assert_eq!(
            parse_response(&r).ok().map(|x| x.2),
            Some(vec![Ipv4Addr::new(240, 240, 0, 9)])
        );
    }

    #[tokio::test]
    async fn forwards_to_outside_table_and_survives_garbage() {
        let outside = DnsTable::from_entries([(
            "api.partner.example".to_string(),
            vec![Ipv4Addr::new(10, 244, 0, 50)],
        )]);
        let fwd = Forward::Table(outside);
        let q = build_query(1, "api.partner.example", TYPE_A);
        let r = answer(&table(), Some(&fwd), &q).await.unwrap_or_default();
        assert_eq!(
            parse_response(&r).ok().map(|x| x.2),
            Some(vec![Ipv4Addr::new(10, 244, 0, 50)])
        );
        assert!(answer(&table(), None, &[1, 2, 3]).await.is_none());
        let mut bad = build_query(2, "x", TYPE_A);
        bad.truncate(14);
        let r = answer(&table(), None, &bad).await.unwrap_or_default();
        assert_eq!(r[3] & 0x0f, Rcode::FormErr as u8);
        let mut ptr = build_query(3, "x", TYPE_A);
        ptr[12] = 0xc0;
        assert!(parse_query(&ptr).is_err());
    }

    #[test]
    fn resolv_conf_has_search_and_ndots() {
        let s = resolv_conf(
            Ipv4Addr::new(10, 244, 0, 2),
            &search_domains("default", "cluster.local"),
            5,
        );
        assert_eq!(s, "nameserver 10.244.0.2\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n");
    }
}
