//! Istio standard metric labels for one request or connection.

use crate::cluster::ClusterRuntime;
use crate::config::{Direction, NodeInfo};
use crate::stats::{Labels, Stats};

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
    let l = labels(f);
    stats.istio_inc("istio_requests_total", &l, 1);
    stats.istio_observe("istio_request_duration_milliseconds", &l, duration_ms);
    stats.istio_observe("istio_request_bytes", &l, request_bytes as f64);
    stats.istio_observe("istio_response_bytes", &l, response_bytes as f64);
}
