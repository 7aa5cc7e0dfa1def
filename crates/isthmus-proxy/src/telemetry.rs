//! Istio standard metric labels for one request or connection.
//!
//! Building the ~25 labels of a series costs about 30 allocations and a map lookup keyed by
//! all of them; doing that on every request was the largest single cost of the L7 path
//! (bench/analysis.md). So the series of a stream are resolved once per distinct set of
//! *facts* the labels derive from ([`SeriesCache`]) and requests only bump atomic cells.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cluster::ClusterRuntime;
use crate::config::{Direction, NodeInfo, ServiceMeta};
use crate::stats::{Hist, IstioCounter, Labels, Stats};

/// Facts about one finished stream that the labels are derived from.
pub struct StreamFacts<'a> {
    pub node: &'a NodeInfo,
    pub direction: Direction,
    pub cluster_name: Option<&'a str>,
    pub cluster: Option<&'a ClusterRuntime>,
    pub route_name: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub peer_principal: Option<&'a str>,
    pub protocol: &'static str,
    pub response_code: Option<u16>,
    pub flags: String,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

pub fn labels(f: &StreamFacts<'_>) -> Labels {
    let n = f.node;
    let inbound = f.direction == Direction::Inbound;
    let svc = f
        .cluster
        .map(|c| c.spec.service.clone())
        .unwrap_or_default();
    let special = match (f.cluster_name, f.route_name) {
        (Some("BlackHoleCluster"), _) | (_, Some("block_all")) => Some("BlackHoleCluster"),
        (Some("PassthroughCluster"), _) | (_, Some("allow_any")) => Some("PassthroughCluster"),
        (Some(c), _) if c.starts_with("InboundPassthroughCluster") => {
            Some("InboundPassthroughCluster")
        }
        _ => None,
    };
    let dest_service = if !svc.host.is_empty() {
        svc.host.clone()
    } else {
        match (special, f.authority) {
            (Some(s), _) => s.to_string(),
            (None, Some(a)) if !a.is_empty() => crate::runtime::host_without_port(a).to_string(),
            _ => "unknown".to_string(),
        }
    };
    let dest_service_name = match special {
        Some(s) => s.to_string(),
        None if !svc.name.is_empty() => svc.name.clone(),
        None => dest_service
            .split('.')
            .next()
            .map(or_unknown)
            .unwrap_or_else(|| "unknown".into()),
    };
    let (sw, sns, sp, sapp, sver, scs, scr, scl) = if inbound {
        let p = f
            .peer_principal
            .map(or_unknown)
            .unwrap_or_else(|| "unknown".into());
        (
            "unknown".into(),
            "unknown".into(),
            p,
            "unknown".into(),
            "unknown".into(),
            "unknown".into(),
            "latest".into(),
            "unknown".into(),
        )
    } else {
        (
            or_unknown(&n.workload_name),
            or_unknown(&n.namespace),
            or_unknown(&n.principal),
            or_unknown(&n.app),
            or_unknown(&n.version),
            or_unknown(&n.canonical_service),
            if n.canonical_revision.is_empty() {
                "latest".into()
            } else {
                n.canonical_revision.clone()
            },
            or_unknown(&n.cluster_id),
        )
    };
    let (dw, dns_, dp, dapp, dver, dcs, dcr, dcl) = if inbound {
        (
            or_unknown(&n.workload_name),
            or_unknown(&n.namespace),
            or_unknown(&n.principal),
            or_unknown(&n.app),
            or_unknown(&n.version),
            or_unknown(&n.canonical_service),
            if n.canonical_revision.is_empty() {
                "latest".into()
            } else {
                n.canonical_revision.clone()
            },
            or_unknown(&n.cluster_id),
        )
    } else {
        (
            "unknown".into(),
            or_unknown(&svc.namespace),
            "unknown".into(),
            "unknown".into(),
            "unknown".into(),
            or_unknown(&svc.name),
            "latest".into(),
            "unknown".into(),
        )
    };
    let security = if inbound {
        if f.peer_principal.is_some() {
            "mutual_tls"
        } else {
            "none"
        }
    } else {
        "unknown"
    };
    let mut l: Labels = vec![
        (
            "reporter",
            if inbound { "destination" } else { "source" }.to_string(),
        ),
        ("source_workload", sw),
        ("source_canonical_service", scs),
        ("source_canonical_revision", scr),
        ("source_workload_namespace", sns),
        ("source_principal", sp),
        ("source_app", sapp),
        ("source_version", sver),
        ("source_cluster", scl),
        ("destination_workload", dw),
        ("destination_workload_namespace", dns_),
        ("destination_principal", dp),
        ("destination_app", dapp),
        ("destination_version", dver),
        ("destination_service", dest_service),
        ("destination_canonical_service", dcs),
        ("destination_canonical_revision", dcr),
        ("destination_service_name", dest_service_name),
        ("destination_service_namespace", or_unknown(&svc.namespace)),
        ("destination_cluster", dcl),
        ("request_protocol", f.protocol.to_string()),
    ];
    if let Some(code) = f.response_code {
        l.push(("response_code", code.to_string()));
        l.push(("grpc_response_status", String::new()));
    }
    l.push(("response_flags", f.flags.clone()));
    l.push(("connection_security_policy", security.to_string()));
    l
}

/// Record one finished HTTP request: count, duration and body sizes (Istio's histograms use
/// Envoy's default bucket boundaries unless a workload overrides them).
pub fn record_http(
    stats: &Stats,
    f: &StreamFacts<'_>,
    duration_ms: f64,
    request_bytes: u64,
    response_bytes: u64,
) {
    let s = series(stats, f);
    s.counter(stats, 0, "istio_requests_total")
        .fetch_add(1, Ordering::Relaxed);
    s.hist(stats, 0, "istio_request_duration_milliseconds")
        .observe(duration_ms);
    s.hist(stats, 1, "istio_request_bytes")
        .observe(request_bytes as f64);
    s.hist(stats, 2, "istio_response_bytes")
        .observe(response_bytes as f64);
}

/// Count an opened TCP connection (`istio_tcp_connections_opened_total`).
pub fn record_tcp_opened(stats: &Stats, f: &StreamFacts<'_>) {
    series(stats, f)
        .counter(stats, 0, "istio_tcp_connections_opened_total")
        .fetch_add(1, Ordering::Relaxed);
}

/// Count a closed TCP connection and its bytes (received from / sent to downstream).
pub fn record_tcp_closed(stats: &Stats, f: &StreamFacts<'_>, received: u64, sent: u64) {
    let s = series(stats, f);
    s.counter(stats, 1, "istio_tcp_connections_closed_total")
        .fetch_add(1, Ordering::Relaxed);
    s.counter(stats, 2, "istio_tcp_received_bytes_total")
        .fetch_add(received, Ordering::Relaxed);
    s.counter(stats, 3, "istio_tcp_sent_bytes_total")
        .fetch_add(sent, Ordering::Relaxed);
}

/// Beyond this many cached fact sets the cache starts over (the series themselves stay in
/// [`Stats`]; only their lookup shortcut is dropped). Bounds memory when facts churn, e.g.
/// many authorities or config versions.
const SERIES_CACHE_MAX: usize = 4096;

/// Stream facts → resolved series, for one [`Stats`] registry.
#[derive(Default)]
pub struct SeriesCache {
    map: Mutex<HashMap<u64, Vec<Arc<Series>>, std::hash::BuildHasherDefault<FxHasher>>>,
}

/// The facts [`labels`] reads, owned. Two streams with equal keys have equal labels.
#[derive(PartialEq)]
struct FactsKey {
    node: NodeInfo,
    direction: Direction,
    cluster_name: Option<String>,
    service: Option<ServiceMeta>,
    route_name: Option<String>,
    /// Only when it feeds `destination_service` (no service host on the cluster).
    authority: Option<String>,
    peer_principal: Option<String>,
    protocol: &'static str,
    response_code: Option<u16>,
    flags: String,
}

/// The label set of one fact set, with its metric cells created on first use (so a series
/// that never moved is not rendered, exactly as before the cache).
pub struct Series {
    key: FactsKey,
    labels: Labels,
    counters: [OnceLock<IstioCounter>; 4],
    hists: [OnceLock<Arc<Hist>>; 3],
}

impl Series {
    fn counter(&self, stats: &Stats, slot: usize, metric: &'static str) -> &IstioCounter {
        self.counters[slot].get_or_init(|| stats.istio_counter(metric, &self.labels))
    }

    fn hist(&self, stats: &Stats, slot: usize, metric: &'static str) -> &Arc<Hist> {
        self.hists[slot].get_or_init(|| stats.istio_hist(metric, &self.labels))
    }
}

/// The authority only matters for `destination_service` when the cluster names no host.
fn authority_fact<'a>(f: &StreamFacts<'a>) -> Option<&'a str> {
    if f.cluster.is_some_and(|c| !c.spec.service.host.is_empty()) {
        return None;
    }
    f.authority
        .filter(|a| !a.is_empty())
        .map(crate::runtime::host_without_port)
}

impl FactsKey {
    fn matches(&self, f: &StreamFacts<'_>) -> bool {
        self.direction == f.direction
            && self.protocol == f.protocol
            && self.response_code == f.response_code
            && self.flags == f.flags
            && self.cluster_name.as_deref() == f.cluster_name
            && self.route_name.as_deref() == f.route_name
            && self.peer_principal.as_deref() == f.peer_principal
            && self.authority.as_deref() == authority_fact(f)
            && self.service.as_ref() == f.cluster.map(|c| &c.spec.service)
            && self.node == *f.node
    }

    fn of(f: &StreamFacts<'_>) -> FactsKey {
        FactsKey {
            node: f.node.clone(),
            direction: f.direction,
            cluster_name: f.cluster_name.map(str::to_string),
            service: f.cluster.map(|c| c.spec.service.clone()),
            route_name: f.route_name.map(str::to_string),
            authority: authority_fact(f).map(str::to_string),
            peer_principal: f.peer_principal.map(str::to_string),
            protocol: f.protocol,
            response_code: f.response_code,
            flags: f.flags.clone(),
        }
    }
}

/// Hash of the per-stream facts (the node is compared on lookup, not hashed: it is the
/// same for every stream of a config version).
fn facts_hash(f: &StreamFacts<'_>) -> u64 {
    let mut h = FxHasher(0);
    std::mem::discriminant(&f.direction).hash(&mut h);
    f.cluster_name.hash(&mut h);
    f.route_name.hash(&mut h);
    authority_fact(f).hash(&mut h);
    f.peer_principal.hash(&mut h);
    f.protocol.hash(&mut h);
    f.response_code.hash(&mut h);
    f.flags.hash(&mut h);
    h.finish()
}

/// The Fx hash (rustc's): a multiply per word, far cheaper than SipHash for a key that is
/// hashed on every request. Only a cache index: every hit is confirmed by comparing facts.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The series of a stream: a cache hit takes one short lock and allocates nothing.
pub fn series(stats: &Stats, f: &StreamFacts<'_>) -> Arc<Series> {
    let h = facts_hash(f);
    let cache = &stats.series_cache;
    {
        let g = cache.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.get(&h).and_then(|v| v.iter().find(|s| s.key.matches(f))) {
            return s.clone();
        }
    }
    let s = Arc::new(Series {
        key: FactsKey::of(f),
        labels: labels(f),
        counters: Default::default(),
        hists: Default::default(),
    });
    let mut g = cache.map.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() >= SERIES_CACHE_MAX {
        g.clear();
    }
    let list = g.entry(h).or_default();
    match list.iter().find(|x| x.key.matches(f)) {
        Some(x) => x.clone(),
        None => {
            list.push(s.clone());
            s
        }
    }
}
