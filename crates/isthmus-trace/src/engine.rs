//! The hop-by-hop walk. Each proxy is compiled with [`isthmus_compile::compile`] and the call is
//! matched against its listeners with [`isthmus_compile::simulate`]'s matchers; what leaves the
//! proxy (cluster, endpoint, TLS stack) becomes the call into the next proxy.

use crate::url::parse_url;
use crate::*;
use isthmus_compile::simulate::{match_filter_chain, route_matches, Call};
use isthmus_model::host::{host_matches, resolve_short_name};
use isthmus_model::{DestinationRuleIndex, ProxyKind, ProxyNode, Snapshot, Workload};
use isthmus_xds::listener::NetworkFilterConfig;
use isthmus_xds::names::*;
use isthmus_xds::route::HeaderMatcher;
use isthmus_xds::{
    Cluster, DiscoveryType, DownstreamTlsContext, FilterChain, FilterChainMatch, Listener,
    ProxyConfig, ProxyType, RouteMatch, StringMatcher, TransportSocket, UpstreamTlsContext,
};

/// Annotation naming the hostnames an outside (no-proxy) pod answers for (set by `isthmus up`).
const OUTSIDE_HOSTNAMES: &str = "isthmus.dev/outside-hostnames";
/// A route loop or a gateway chain longer than this is reported instead of followed.
const MAX_HOPS: usize = 8;
/// Documentation address (RFC 5737) standing in for a host the registry does not know: the
/// app's DNS lookup would return some outside IP that no listener is bound to.
const OUTSIDE_IP: &str = "203.0.113.10";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Outbound,
    Inbound,
    Gateway,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Outbound => "sidecar outbound",
            Role::Inbound => "sidecar inbound",
            Role::Gateway => "gateway",
        }
    }
}

/// What is on the wire into a proxy.
#[derive(Debug, Clone)]
struct Wire {
    address: Option<String>,
    port: u32,
    /// Outermost first.
    layers: Vec<TlsLayer>,
    http: bool,
    host: String,
    path: String,
    method: String,
    headers: Vec<(String, String)>,
}

/// How a hop ends.
#[allow(clippy::large_enum_variant)] // short-lived, one per hop
enum Next {
    Fail(Failure),
    /// Reached a final destination (`host:port`, what serves it).
    Reached {
        destination: String,
    },
    /// Left the mesh through PassthroughCluster.
    Passthrough {
        destination: String,
    },
    Continue {
        node: ProxyNode,
        role: Role,
        wire: Wire,
    },
}

/// Traces `req` through the snapshot's proxies.
pub fn trace(snap: &Snapshot, req: &TraceRequest) -> Result<Trace, TraceError> {
    let url = parse_url(&req.url)?;
    let source = snap.resolve_proxy(&req.source, req.namespace.as_deref())?;
    let mut headers = Vec::new();
    let mut host = if url.port == 80 && !url.tls || url.port == 443 && url.tls {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    for (k, v) in &req.headers {
        if k.is_empty() {
            return Err(TraceError::Header(format!("{k}: {v}")));
        }
        if k.eq_ignore_ascii_case("host") {
            host = v.clone();
        } else {
            headers.push((k.to_ascii_lowercase(), v.clone()));
        }
    }
    let mut layers = Vec::new();
    if url.tls {
        layers.push(TlsLayer {
            kind: LayerKind::AppTls,
            sni: req.sni.clone().unwrap_or_else(|| url.host.clone()),
            opened_by: "app".into(),
            alpn: if url.http {
                vec!["h2".into(), "http/1.1".into()]
            } else {
                vec![]
            },
            client_cert: None,
            trust: None,
            verify_sans: vec![],
        });
    }
    let (role, address, port) = if source.is_gateway() {
        (
            Role::Gateway,
            None,
            gateway_target_port(snap, &source, url.port),
        )
    } else {
        (
            Role::Outbound,
            Some(resolve_address(snap, &url.host, &source.namespace)),
            url.port,
        )
    };
    let mut wire = Wire {
        address,
        port,
        layers,
        http: url.http,
        host,
        path: url.path.clone(),
        method: req.method.clone().unwrap_or_else(|| "GET".into()),
        headers,
    };
    let mut node = source.clone();
    let mut role = role;
    let mut hops: Vec<Hop> = Vec::new();
    let outcome = loop {
        if hops.len() >= MAX_HOPS {
            break Next::Fail(Failure {
                kind: "loop".into(),
                client_sees: "a timeout or 508-style loop".into(),
                detail: format!("the path is longer than {MAX_HOPS} proxies: a routing loop"),
            });
        }
        let cfg = isthmus_compile::compile(snap, &node).config;
        let (hop, next) = run_hop(snap, &cfg, &node, role, &wire, hops.is_empty());
        hops.push(hop);
        match next {
            Next::Continue {
                node: n,
                role: r,
                wire: w,
            } => {
                node = n;
                role = r;
                wire = w;
            }
            other => break other,
        }
    };
    if let Some(h) = hops.first_mut() {
        if h.role == Role::Gateway.label() && port != url.port {
            h.listener_note = Some(format!("Service port {} → targetPort {port}", url.port));
        }
    }
    let verdict = verdict(snap, &hops, outcome, &url.host);
    Ok(Trace {
        source: format!("{}/{}", source.namespace, source.name),
        url: req.url.clone(),
        method: wire_method(req),
        headers: req.headers.iter().cloned().collect(),
        hops,
        verdict,
    })
}

fn wire_method(req: &TraceRequest) -> String {
    req.method.clone().unwrap_or_else(|| "GET".into())
}

/// The IP the application connects to: the service VIP (declared or auto-allocated), the first
/// endpoint of a headless service, the literal IP, or an outside address.
fn resolve_address(snap: &Snapshot, host: &str, ns: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_string();
    }
    let domain = &snap.domain_suffix;
    let mut names = vec![host.to_string(), resolve_short_name(host, ns, domain)];
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() == 2 {
        names.push(format!("{host}.svc.{domain}"));
    }
    if parts.len() == 3 && parts[2] == "svc" {
        names.push(format!("{host}.{domain}"));
    }
    for n in names {
        if let Some(s) = snap.service_for(&n, ns) {
            if let Some(v) = s.vip() {
                return v.to_string();
            }
            if let Some(e) = s.endpoints.first() {
                if e.address.parse::<std::net::IpAddr>().is_ok() {
                    return e.address.clone();
                }
            }
        }
    }
    OUTSIDE_IP.to_string()
}

/// A gateway's Service port maps to its pod's targetPort, which is where the listener is.
fn gateway_target_port(snap: &Snapshot, node: &ProxyNode, port: u32) -> u32 {
    let Some(w) = snap
        .workloads
        .iter()
        .find(|w| w.namespace == node.namespace && w.name == node.name)
    else {
        return port;
    };
    for s in snap.services_selecting(w) {
        if let Some(p) = s.port(port) {
            match &p.target_port {
                Some(isthmus_model::TargetPort::Number(n)) => return *n,
                Some(isthmus_model::TargetPort::Name(n)) => {
                    if let Some(n) = w.container_ports.get(n) {
                        return *n;
                    }
                }
                None => return port,
            }
        }
    }
    port
}

fn fail(kind: &str, client_sees: impl Into<String>, detail: impl Into<String>) -> Failure {
    Failure {
        kind: kind.into(),
        client_sees: client_sees.into(),
        detail: detail.into(),
    }
}

/// What the client sees when a connection is reset at a proxy: inside the app's own TLS the
/// handshake is still in flight (curl exit 35); behind an HTTP hop the first sidecar answers
/// 503 UF; a reset at the first proxy itself is a plain reset.
fn reset_sees(wire: &Wire, first: bool) -> String {
    if wire.layers.iter().any(|l| l.kind == LayerKind::AppTls) {
        "connection reset during the TLS handshake (curl exit 35)".into()
    } else if wire.http && !first {
        "503 UF (upstream connect error: connection reset)".into()
    } else if wire.http {
        "connection reset (curl exit 56)".into()
    } else {
        "connection reset".into()
    }
}

fn pick_listener<'a>(
    cfg: &'a ProxyConfig,
    role: Role,
    wire: &Wire,
) -> (Option<&'a Listener>, Option<String>) {
    match role {
        Role::Inbound => (
            cfg.listener(VIRTUAL_INBOUND),
            Some(format!("captured to virtualInbound ({VIRTUAL_INBOUND_PORT}), chain picked by destination port {}", wire.port)),
        ),
        Role::Gateway => (
            cfg.listeners.iter().find(|l| l.port() == wire.port && l.binds()),
            None,
        ),
        Role::Outbound => {
            let addr = wire.address.as_deref().unwrap_or("0.0.0.0");
            let exact = cfg
                .listeners
                .iter()
                .find(|l| l.port() == wire.port && l.address.socket_address.address == addr && l.use_original_dst != Some(true));
            let any = || {
                cfg.listeners.iter().find(|l| {
                    l.port() == wire.port && l.address.socket_address.address == "0.0.0.0" && l.use_original_dst != Some(true)
                })
            };
            if let Some(l) = exact.or_else(any) {
                return (
                    Some(l),
                    Some(format!(
                        "captured by virtualOutbound ({VIRTUAL_OUTBOUND_PORT}), handed to {} by original destination {addr}:{}",
                        l.name, wire.port
                    )),
                );
            }
            (
                cfg.listeners.iter().find(|l| l.use_original_dst == Some(true)),
                Some(format!(
                    "captured by virtualOutbound ({VIRTUAL_OUTBOUND_PORT}); no listener for {addr}:{}, so it stays there",
                    wire.port
                )),
            )
        }
    }
}

fn describe_chain_match(m: Option<&FilterChainMatch>, default: bool) -> String {
    if default {
        return "default chain: no filter chain matched".into();
    }
    let Some(m) = m.filter(|m| !m.is_empty()) else {
        return "any connection (the chain sets no match criteria)".into();
    };
    let mut v = Vec::new();
    if let Some(p) = m.destination_port {
        v.push(format!("destination port {p}"));
    }
    if !m.server_names.is_empty() {
        v.push(format!("SNI {}", m.server_names.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        v.push(format!("transport {}", m.transport_protocol));
    }
    if !m.application_protocols.is_empty() {
        v.push(format!("ALPN {}", m.application_protocols.join(",")));
    }
    if !m.prefix_ranges.is_empty() {
        v.push(format!(
            "destination {}",
            m.prefix_ranges
                .iter()
                .map(|c| format!("{}/{}", c.address_prefix, c.prefix_len.unwrap_or(32)))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    v.join(", ")
}

fn is_mesh_ctx(c: &isthmus_xds::CommonTlsContext) -> bool {
    c.tls_certificate_sds_secret_configs
        .iter()
        .any(|s| s.name == SDS_DEFAULT)
}

fn describe_termination(d: &DownstreamTlsContext) -> String {
    let c = &d.common_tls_context;
    if is_mesh_ctx(c) {
        return "mesh mTLS (ISTIO_MUTUAL: workload certificate, client certificate required)"
            .into();
    }
    let cert = c
        .tls_certificate_sds_secret_configs
        .first()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "inline certificate".into());
    if d.require_client_certificate == Some(true) {
        format!("TLS MUTUAL with {cert} (client certificate required)")
    } else {
        format!("TLS SIMPLE with {cert}")
    }
}

fn upstream_layer(
    ctx: &UpstreamTlsContext,
    opened_by: &str,
    auto_sni_host: Option<&str>,
) -> TlsLayer {
    let c = &ctx.common_tls_context;
    let cert = c
        .tls_certificate_sds_secret_configs
        .first()
        .map(|s| s.name.clone())
        .or_else(|| (!c.tls_certificates.is_empty()).then(|| "inline certificate".to_string()));
    let kind = if is_mesh_ctx(c) && c.validation_sds_name() == Some(SDS_ROOTCA) {
        LayerKind::MeshMtls
    } else if cert.is_some() {
        LayerKind::MutualOrigination
    } else {
        LayerKind::SimpleOrigination
    };
    let sni = if ctx.sni.is_empty() {
        auto_sni_host.unwrap_or("").to_string()
    } else {
        ctx.sni.clone()
    };
    TlsLayer {
        kind,
        sni,
        opened_by: opened_by.to_string(),
        alpn: c.alpn_protocols.clone(),
        client_cert: cert,
        trust: c.validation_sds_name().map(str::to_string),
        verify_sans: c
            .match_subject_alt_names()
            .iter()
            .map(describe_string_match)
            .collect(),
    }
}

fn describe_string_match(m: &StringMatcher) -> String {
    let ic = if m.ignore_case { " (any case)" } else { "" };
    if let Some(e) = &m.exact {
        return format!("{e}{ic}");
    }
    if let Some(p) = &m.prefix {
        return format!("{p}*{ic}");
    }
    if let Some(s) = &m.suffix {
        return format!("*{s}{ic}");
    }
    if let Some(c) = &m.contains {
        return format!("*{c}*{ic}");
    }
    if let Some(r) = &m.safe_regex {
        return format!("~{}", r.regex);
    }
    "any".into()
}

fn describe_header(h: &HeaderMatcher) -> String {
    let neg = if h.invert_match { "not " } else { "" };
    if h.present_match == Some(true) {
        return format!("{neg}header {} present", h.name);
    }
    match &h.string_match {
        Some(m) => format!("{neg}header {}={}", h.name, describe_string_match(m)),
        None => format!("{neg}header {} present", h.name),
    }
}

fn describe_route_match(m: &RouteMatch) -> String {
    let mut v = Vec::new();
    if let Some(p) = &m.prefix {
        v.push(format!("prefix {p}"));
    } else if let Some(p) = &m.path {
        v.push(format!("path {p}"));
    } else if let Some(r) = &m.safe_regex {
        v.push(format!("path ~{}", r.regex));
    } else if let Some(p) = &m.path_separated_prefix {
        v.push(format!("path prefix {p}/"));
    }
    if m.case_sensitive == Some(false) {
        v.push("any case".into());
    }
    v.extend(m.headers.iter().map(describe_header));
    for q in &m.query_parameters {
        v.push(format!(
            "query {}{}",
            q.name,
            q.string_match
                .as_ref()
                .map(|s| format!("={}", describe_string_match(s)))
                .unwrap_or_default()
        ));
    }
    if v.is_empty() {
        "any request".into()
    } else {
        v.join(", ")
    }
}

fn config_label(path: &str) -> Option<String> {
    // /apis/networking.istio.io/v1/namespaces/NS/KIND/NAME
    let rest = path.split("/namespaces/").nth(1)?;
    let mut it = rest.split('/');
    let ns = it.next()?;
    let kind = it.next()?;
    let name = it.next()?;
    let kind = match kind {
        "virtual-service" => "VirtualService",
        "destination-rule" => "DestinationRule",
        "gateway" => "Gateway",
        other => other,
    };
    Some(format!("{kind} {ns}/{name}"))
}

fn matched_domain(domains: &[String], host: &str) -> Option<String> {
    let h = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
        .to_ascii_lowercase();
    domains
        .iter()
        .find(|d| d.eq_ignore_ascii_case(&h) || d.eq_ignore_ascii_case(host))
        .or_else(|| {
            domains.iter().find(|d| {
                d.starts_with('*') && d.len() > 1 && h.ends_with(&d[1..].to_ascii_lowercase())
            })
        })
        .or_else(|| domains.iter().find(|d| d.as_str() == "*"))
        .cloned()
}

fn pool_limits(cluster: &Cluster, fc: &FilterChain) -> PoolLimits {
    let mut p = PoolLimits::default();
    let keep = |v: Option<u32>| v.filter(|n| *n != u32::MAX);
    if let Some(t) = cluster.default_thresholds() {
        p.max_connections = keep(t.max_connections);
        p.max_pending_requests = keep(t.max_pending_requests);
        p.max_requests = keep(t.max_requests);
        p.max_retries = keep(t.max_retries);
    }
    p.connect_timeout = cluster.connect_timeout.as_ref().map(|d| d.to_string());
    if let Some(k) = cluster
        .upstream_connection_options
        .as_ref()
        .and_then(|u| u.tcp_keepalive.as_ref())
    {
        let f = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        p.tcp_keepalive = Some(format!(
            "time {}s / interval {}s / probes {}",
            f(k.keepalive_time),
            f(k.keepalive_interval),
            f(k.keepalive_probes)
        ));
    }
    if let Some(o) = cluster.http_protocol_options() {
        if let Some(c) = &o.common_http_protocol_options {
            p.http_idle_timeout = c.idle_timeout.as_ref().map(|d| d.to_string());
            p.max_requests_per_connection = c.max_requests_per_connection;
            p.max_connection_duration = c.max_connection_duration.as_ref().map(|d| d.to_string());
        }
        if o.is_h2() {
            p.h2 = Some(true);
        }
    }
    if let Some(o) = &cluster.outlier_detection {
        let mut v = Vec::new();
        if let Some(n) = o.consecutive_5xx {
            v.push(format!("consecutive5xx={n}"));
        }
        if let Some(n) = o.consecutive_gateway_failure {
            v.push(format!("consecutiveGatewayErrors={n}"));
        }
        if let Some(d) = &o.interval {
            v.push(format!("interval={d}"));
        }
        if let Some(d) = &o.base_ejection_time {
            v.push(format!("baseEjectionTime={d}"));
        }
        if let Some(n) = o.max_ejection_percent {
            v.push(format!("maxEjectionPercent={n}"));
        }
        p.outlier_detection = Some(if v.is_empty() {
            "on (Envoy defaults)".to_string()
        } else {
            v.join(" ")
        });
    }
    if let Some(t) = fc.tcp_proxy() {
        p.tcp_idle_timeout = t.idle_timeout.as_ref().map(|d| d.to_string());
    }
    p
}

/// The DR lookup for an outbound cluster: Istio's client ns → service ns → root ns search,
/// the workloadSelector pick, and every other same-host rule with why it lost.
fn dr_info(snap: &Snapshot, node: &ProxyNode, cluster: &Cluster) -> (Option<DrInfo>, Vec<String>) {
    let mut notes = Vec::new();
    let Some((_, _, subset, host)) = cluster.parse_name() else {
        return (None, notes);
    };
    let applied_path = cluster
        .metadata
        .filter_metadata
        .istio
        .as_ref()
        .and_then(|i| i.config.clone());
    let svc = snap
        .service_for(host, &node.namespace)
        .or_else(|| snap.services_by_host(host).next());
    let svc_ns = svc.map(|s| s.namespace.as_str()).unwrap_or("");
    let cands = snap.dr_index.lookup(&node.namespace, svc_ns, host);
    let chosen = DestinationRuleIndex::select(&cands, &node.namespace, &node.labels, true);
    let label = |ns: &str, name: &str| format!("{ns}/{name}");
    let mut info = DrInfo {
        subset: (!subset.is_empty()).then(|| subset.to_string()),
        ..Default::default()
    };
    let mut in_chosen: Vec<(String, String)> = Vec::new();
    if let Some(c) = chosen {
        info.applied = label(&c.meta.namespace, &c.meta.name);
        in_chosen = c
            .from
            .iter()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .collect();
        let policy_owner = c.from.iter().find(|m| {
            snap.destination_rules.iter().any(|d| {
                d.meta.namespace == m.namespace
                    && d.meta.name == m.name
                    && d.spec.traffic_policy.is_some()
            })
        });
        for m in c.from.iter().skip(1) {
            let has_policy = snap.destination_rules.iter().any(|d| {
                d.meta.namespace == m.namespace
                    && d.meta.name == m.name
                    && d.spec.traffic_policy.is_some()
            });
            let lost = if has_policy
                && policy_owner.is_some_and(|o| o.name != m.name || o.namespace != m.namespace)
            {
                " (its top-level trafficPolicy is ignored: the oldest rule's wins; only its subsets are kept)"
            } else {
                " (subsets merged)"
            };
            info.merged
                .push(format!("{}{lost}", label(&m.namespace, &m.name)));
        }
    } else if let Some(p) = applied_path.as_deref().and_then(config_label) {
        info.applied = p.trim_start_matches("DestinationRule ").to_string();
    }
    for d in &snap.destination_rules {
        let dr_host = resolve_short_name(&d.spec.host, &d.meta.namespace, &snap.domain_suffix);
        if !(dr_host == host || host_matches(&dr_host, host)) {
            continue;
        }
        let key = (d.meta.namespace.clone(), d.meta.name.clone());
        if in_chosen.contains(&key) {
            continue;
        }
        let is_cand = cands.iter().any(|c| {
            c.from
                .iter()
                .any(|m| m.namespace == key.0 && m.name == key.1)
        });
        let reason = if let Some(sel) = &d.spec.workload_selector {
            if d.meta.namespace != node.namespace {
                "its workloadSelector only applies to proxies in its own namespace".to_string()
            } else if !sel
                .match_labels
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            {
                "its workloadSelector does not match this proxy".to_string()
            } else {
                "a workloadSelector rule was picked first".to_string()
            }
        } else if is_cand {
            "another rule for the same host with a different exportTo was picked".to_string()
        } else if dr_host != host && cands.iter().any(|c| c.host == host) {
            format!("its host {dr_host} is less specific than {host}")
        } else if !isthmus_model::export_visible(
            &d.spec.export_to,
            &d.meta.namespace,
            &node.namespace,
        ) {
            format!(
                "exportTo {:?} hides it from namespace {}",
                d.spec.export_to, node.namespace
            )
        } else if chosen.is_some() {
            format!(
                "lookup stops at the first namespace with a match (client {} → service {} → root {})",
                node.namespace, svc_ns, snap.mesh.root_namespace
            )
        } else {
            "not visible to this proxy".to_string()
        };
        info.beaten.push(format!(
            "{}: {reason}",
            label(&d.meta.namespace, &d.meta.name)
        ));
    }
    if info.applied.is_empty() {
        if !info.beaten.is_empty() {
            notes.push(format!(
                "no DestinationRule applies to {host} here although {} exist(s): {}",
                info.beaten.len(),
                info.beaten.join("; ")
            ));
        }
        return (None, notes);
    }
    (Some(info), notes)
}

/// The VirtualService `tls`/`tcp` routes that produce a TCP proxy chain to `cluster` on this
/// proxy (TCP chains carry no route metadata, so this is matched on the destination: host,
/// port and subset, and on the route's gateways binding this proxy).
fn l4_route_source(snap: &Snapshot, node: &ProxyNode, cluster: &Cluster) -> Option<String> {
    let (_, cport, csubset, chost) = cluster.parse_name()?;
    let my_gateways: Vec<String> = if node.is_gateway() {
        snap.gateways_for(&node.labels)
            .iter()
            .map(|g| format!("{}/{}", g.meta.namespace, g.meta.name))
            .collect()
    } else {
        vec!["mesh".to_string()]
    };
    let mut found = Vec::new();
    for vs in &snap.virtual_services {
        let ns = &vs.meta.namespace;
        let gws: Vec<String> = if vs.spec.gateways.is_empty() {
            vec!["mesh".to_string()]
        } else {
            vs.spec
                .gateways
                .iter()
                .map(|g| isthmus_model::resolve_gateway_name(g, ns))
                .collect()
        };
        if !gws.iter().any(|g| my_gateways.contains(g)) {
            continue;
        }
        let routes = vs
            .spec
            .tls
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("tls[{i}]"), &r.route))
            .chain(
                vs.spec
                    .tcp
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("tcp[{i}]"), &r.route)),
            );
        for (label, dests) in routes {
            let hit = dests.iter().any(|d| {
                let dh = resolve_short_name(&d.destination.host, ns, &snap.domain_suffix);
                dh == chost
                    && d.destination
                        .port
                        .as_ref()
                        .is_none_or(|p| p.number == cport)
                    && d.destination.subset.as_deref().unwrap_or("") == csubset
            });
            if hit {
                found.push(format!("VirtualService {ns}/{} {label}", vs.meta.name));
            }
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// `credentialName` SDS resources (`kubernetes://NAME[-cacert]`) the context needs but istiod
/// does not send to this proxy (the Secret is missing, or in another namespace).
fn missing_secrets(cfg: &ProxyConfig, c: &isthmus_xds::CommonTlsContext) -> Vec<String> {
    c.sds_names()
        .into_iter()
        .filter(|n| n.starts_with("kubernetes://") || n.starts_with("kubernetes-gateway://"))
        .filter(|n| cfg.secret(n).is_none())
        .map(str::to_string)
        .collect()
}

fn missing_secret_detail(node: &ProxyNode, missing: &[String]) -> String {
    let mut secrets: Vec<String> = missing
        .iter()
        .map(|n| {
            let name = n.rsplit("://").next().unwrap_or(n);
            name.strip_suffix("-cacert").unwrap_or(name).to_string()
        })
        .collect();
    secrets.dedup();
    format!(
        "SDS {} never arrives: Secret {} not found in namespace {} (credentialName secrets must live in the proxy's own namespace)",
        missing.join(", "),
        secrets.join(", "),
        node.namespace
    )
}

fn find_workload_by_ip<'a>(snap: &'a Snapshot, ip: &str) -> Option<&'a Workload> {
    snap.workloads.iter().find(|w| w.ip == ip)
}

fn outside_server(snap: &Snapshot, hostname: &str) -> Option<String> {
    snap.workloads.iter().find_map(|w| {
        w.annotations.get(OUTSIDE_HOSTNAMES).and_then(|v| {
            v.split(',')
                .map(|h| h.trim().trim_end_matches('.'))
                .any(|h| h.eq_ignore_ascii_case(hostname))
                .then(|| format!("{}/{}", w.namespace, w.name))
        })
    })
}

fn pick_transport_socket<'a>(
    cluster: &'a Cluster,
    ep_meta: &isthmus_xds::Metadata,
) -> Option<&'a TransportSocket> {
    if !cluster.transport_socket_matches.is_empty() {
        let m = &ep_meta.filter_metadata.transport_socket_match;
        if let Some(t) = cluster
            .transport_socket_matches
            .iter()
            .find(|t| t.r#match.iter().all(|(k, v)| m.get(k) == Some(v)))
        {
            return Some(&t.transport_socket);
        }
    }
    cluster.transport_socket.as_ref()
}

fn run_hop(
    snap: &Snapshot,
    cfg: &ProxyConfig,
    node: &ProxyNode,
    role: Role,
    wire: &Wire,
    first: bool,
) -> (Hop, Next) {
    let proxy_label = format!("{}/{}", node.namespace, node.name);
    let mut hop = Hop {
        proxy: proxy_label.clone(),
        role: role.label().into(),
        arrives: Arrival {
            address: wire.address.clone(),
            port: wire.port,
            sni: wire.layers.first().map(|l| l.sni.clone()),
            host: wire.http.then(|| wire.host.clone()),
            payload: if wire.http {
                "http".into()
            } else {
                "tcp".into()
            },
            layers: wire.layers.clone(),
        },
        ..Default::default()
    };
    macro_rules! stop {
        ($f:expr) => {{
            let f: Failure = $f;
            hop.failure = Some(f.clone());
            return (hop, Next::Fail(f));
        }};
    }
    let (listener, note) = pick_listener(cfg, role, wire);
    hop.listener_note = note;
    let Some(listener) = listener else {
        stop!(fail(
            "no_listener",
            if first { "connection refused (curl exit 7)".to_string() } else { "503 UF (upstream connect error: connection refused)".to_string() },
            format!("{proxy_label} has no listener on port {}: no Gateway server (or Service targetPort) for it", wire.port)
        ));
    };
    hop.listener = Some(listener.name.clone());
    // Listener filters decide what the chain match can see (as Istio's simulation does):
    // without a TLS inspector neither SNI nor ALPN is read and the transport is raw_buffer;
    // the HTTP inspector marks plaintext HTTP/1.1 as `http/1.1`.
    let has_filter = |name: &str| listener.listener_filters.iter().any(|f| f.name == name);
    let tls_inspector = has_filter(isthmus_xds::listener::TLS_INSPECTOR);
    let outer = wire.layers.first().filter(|_| tls_inspector);
    let alpn = match outer {
        // Istio's ALPN filter replaces the mesh ALPN by the inner protocol's.
        Some(l) if l.kind == LayerKind::MeshMtls && wire.http && wire.layers.len() == 1 => {
            vec!["istio-http/1.1".to_string()]
        }
        Some(l) if l.kind == LayerKind::MeshMtls => vec!["istio".to_string()],
        Some(l) => l.alpn.clone(),
        None if wire.layers.is_empty()
            && wire.http
            && has_filter(isthmus_xds::listener::HTTP_INSPECTOR) =>
        {
            vec!["http/1.1".to_string()]
        }
        None => Vec::new(),
    };
    if !tls_inspector
        && !wire.layers.is_empty()
        && listener
            .filter_chains
            .iter()
            .any(|c| !c.server_names().is_empty())
    {
        hop.notes.push(format!(
            "{} has no TLS inspector: the SNI cannot be read, SNI chains never match",
            listener.name
        ));
    }
    let call = Call {
        address: wire.address.clone(),
        port: wire.port,
        http: wire.http && wire.layers.is_empty(),
        tls_sni: outer.map(|l| l.sni.clone()),
        alpn,
        host: wire.host.clone(),
        path: wire.path.clone(),
        method: wire.method.clone(),
        headers: wire.headers.clone(),
    };
    let (idx, fc) = match match_filter_chain(listener, &call) {
        Ok(x) => x,
        Err(e) => {
            let offered: Vec<String> = listener
                .filter_chains
                .iter()
                .flat_map(|c| c.server_names().to_vec())
                .collect();
            let what = match &call.tls_sni {
                Some(s) => format!("SNI {s:?}"),
                None => "a plaintext connection".to_string(),
            };
            let detail = if matches!(e, isthmus_compile::simulate::SimError::MultipleFilterChain) {
                format!(
                    "several filter chains of {} match {what}: Envoy rejects the listener",
                    listener.name
                )
            } else if offered.is_empty() {
                format!("no filter chain of {} matches {what}", listener.name)
            } else {
                format!(
                    "no filter chain of {} matches {what}; its chains accept SNI {}",
                    listener.name,
                    offered.join(", ")
                )
            };
            let where_ = if role == Role::Gateway {
                " at the gateway"
            } else {
                ""
            };
            stop!(fail(
                "no_filter_chain",
                reset_sees(wire, first),
                format!("no filter chain{where_}: {detail}")
            ));
        }
    };
    let default = idx == usize::MAX;
    hop.filter_chain = Some(if !fc.name.is_empty() {
        fc.name.clone()
    } else if default {
        "default".into()
    } else {
        format!("#{idx}")
    });
    hop.chain_match = Some(describe_chain_match(
        fc.filter_chain_match.as_ref(),
        default,
    ));
    let mut layers = wire.layers.clone();
    if let Some(d) = fc
        .transport_socket
        .as_ref()
        .and_then(|t| t.as_downstream_tls())
    {
        let term = describe_termination(d);
        let Some(outer) = layers.first().cloned() else {
            stop!(fail(
                "tls_mismatch",
                reset_sees(wire, first),
                format!(
                    "{} expects TLS ({term}) but the connection is plaintext",
                    hop.filter_chain.clone().unwrap_or_default()
                )
            ));
        };
        let mesh_chain = is_mesh_ctx(&d.common_tls_context);
        if mesh_chain && outer.kind != LayerKind::MeshMtls {
            stop!(fail(
                "tls_mismatch",
                "TLS handshake fails: client certificate required (curl exit 35/56)",
                format!("the chain terminates mesh mTLS (ISTIO_MUTUAL) but {} arrives ({} by {}): no workload certificate", outer.kind.as_str(), outer.kind.as_str(), outer.opened_by)
            ));
        }
        if !mesh_chain && outer.kind == LayerKind::MeshMtls {
            stop!(fail(
                "tls_mismatch",
                "503 UF (the client proxy rejects the server certificate: CERTIFICATE_VERIFY_FAILED)",
                format!("mesh mTLS arrives but the chain presents {term}, not a workload certificate")
            ));
        }
        if d.require_client_certificate == Some(true) && outer.client_cert.is_none() {
            stop!(fail(
                "tls_mismatch",
                "TLS alert: certificate required (curl exit 56)",
                format!(
                    "the chain requires a client certificate ({term}) and {} sends none",
                    outer.opened_by
                )
            ));
        }
        let missing = missing_secrets(cfg, &d.common_tls_context);
        if !missing.is_empty() {
            stop!(fail(
                "missing_secret",
                "connection reset during the TLS handshake (curl exit 35)",
                missing_secret_detail(node, &missing)
            ));
        }
        layers.remove(0);
        hop.terminated = Some(format!(
            "{} opened by {} — {term}",
            outer.kind.as_str(),
            outer.opened_by
        ));
    }
    let mut host = wire.host.clone();
    let mut path = wire.path.clone();
    let mut cluster_name: Option<String> = None;
    let mut http_here = false;
    // The terminal network filter (the last one) decides where the bytes go.
    if let Some(f) = fc.filters.last() {
        match &f.typed_config {
            NetworkFilterConfig::TcpProxy(t) => {
                cluster_name = t.cluster.clone().or_else(|| {
                    t.weighted_clusters
                        .as_ref()
                        .and_then(|w| w.clusters.first().map(|c| c.name.clone()))
                });
                if let Some(w) = &t.weighted_clusters {
                    if w.clusters.len() > 1 {
                        hop.notes.push(format!(
                            "weighted: {}; following the first",
                            w.clusters
                                .iter()
                                .map(|c| format!("{} {}", c.name, c.weight))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
            NetworkFilterConfig::HttpConnectionManager(h) => {
                http_here = true;
                if let Some(l) = layers.first() {
                    stop!(fail(
                        "tls_into_http",
                        reset_sees(wire, first),
                        format!("the HTTP connection manager of {} receives {} bytes (SNI {:?}) it cannot parse: the connection is closed", hop.filter_chain.clone().unwrap_or_default(), l.kind.as_str(), l.sni)
                    ));
                }
                if !wire.http {
                    stop!(fail("tls_into_http", "connection closed (curl exit 52)", "a raw TCP stream reaches an HTTP connection manager: not HTTP, the connection is closed"));
                }
                let rc = match (&h.rds, &h.route_config) {
                    (Some(r), _) => cfg.route(&r.route_config_name),
                    (None, Some(inline)) => Some(inline),
                    _ => None,
                };
                hop.route_config =
                    h.rds
                        .as_ref()
                        .map(|r| r.route_config_name.clone())
                        .or_else(|| {
                            h.route_config
                                .as_ref()
                                .map(|r| format!("{} (inline)", r.name))
                        });
                let Some(rc) = rc else {
                    stop!(fail(
                        "no_route",
                        "404 NR",
                        format!(
                            "route configuration {:?} was not sent to the proxy",
                            hop.route_config.clone().unwrap_or_default()
                        )
                    ));
                };
                let Some(vh) = rc.find_virtual_host(&host) else {
                    let known: Vec<String> = rc
                        .virtual_hosts
                        .iter()
                        .flat_map(|v| v.domains.iter().take(1).cloned())
                        .collect();
                    stop!(fail(
                        "no_route",
                        "404 NR (no route)",
                        format!(
                            "no virtual host of route {} matches Host {host:?}; it serves {}",
                            rc.name,
                            if known.is_empty() {
                                "nothing".to_string()
                            } else {
                                known.join(", ")
                            }
                        )
                    ));
                };
                hop.virtual_host = Some(match matched_domain(&vh.domains, &host) {
                    Some(d) => format!("{} (domain {d:?} matches Host {host:?})", vh.name),
                    None => vh.name.clone(),
                });
                if vh.require_tls == "ALL" && wire.layers.is_empty() {
                    stop!(fail(
                        "redirect",
                        "301 to https:// (httpsRedirect)",
                        format!("virtual host {} requires TLS", vh.name)
                    ));
                }
                let mut skipped = Vec::new();
                let mut matched = None;
                for (i, r) in vh.routes.iter().enumerate() {
                    if route_matches(&r.r#match, &call_with(&call, &host, &path)) {
                        matched = Some((i, r));
                        break;
                    }
                    let n = if r.name.is_empty() {
                        format!("#{i}")
                    } else {
                        r.name.clone()
                    };
                    skipped.push(format!("{n} ({})", describe_route_match(&r.r#match)));
                }
                let Some((i, r)) = matched else {
                    stop!(fail(
                        "no_route",
                        "404 NR (no route)",
                        format!(
                            "virtual host {} has {} route(s), none matches {} {path}",
                            vh.name,
                            vh.routes.len(),
                            wire.method
                        )
                    ));
                };
                hop.route = Some(RouteInfo {
                    name: if r.name.is_empty() {
                        format!("#{i}")
                    } else {
                        r.name.clone()
                    },
                    index: i,
                    matched: describe_route_match(&r.r#match),
                    from: r
                        .metadata
                        .filter_metadata
                        .istio
                        .as_ref()
                        .and_then(|m| m.config.as_deref())
                        .and_then(config_label),
                    skipped,
                });
                if let Some(d) = &r.direct_response {
                    let detail = if vh.name == BLOCK_ALL {
                        format!("virtual host block_all answers {} itself: outboundTrafficPolicy REGISTRY_ONLY and no service for {host:?}", d.status)
                    } else {
                        format!("the route answers {} itself (direct response)", d.status)
                    };
                    stop!(fail("direct_response", format!("{}", d.status), detail));
                }
                if let Some(rd) = &r.redirect {
                    stop!(fail(
                        "redirect",
                        "301 redirect",
                        format!("the route redirects ({rd:?})")
                    ));
                }
                if let Some(a) = &r.route {
                    cluster_name = a.cluster.clone().or_else(|| {
                        a.weighted_clusters
                            .as_ref()
                            .and_then(|w| w.clusters.first().map(|c| c.name.clone()))
                    });
                    if let Some(w) = &a.weighted_clusters {
                        if w.clusters.len() > 1 {
                            hop.notes.push(format!(
                                "weighted: {}; following the first",
                                w.clusters
                                    .iter()
                                    .map(|c| format!("{} {}", c.name, c.weight))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                    if let Some(h) = &a.host_rewrite_literal {
                        hop.notes.push(format!("Host rewritten to {h:?}"));
                        host = h.clone();
                    }
                    if let (Some(pre), Some(rp)) = (&r.r#match.prefix, &a.prefix_rewrite) {
                        path = format!("{rp}{}", path.strip_prefix(pre.as_str()).unwrap_or(&path));
                    }
                }
            }
        }
    }
    let Some(cname) = cluster_name else {
        stop!(fail(
            "no_route",
            reset_sees(wire, first),
            "the filter chain forwards nowhere (no cluster)"
        ));
    };
    hop.cluster = Some(cname.clone());
    if cname == BLACKHOLE_CLUSTER {
        let why = if listener.use_original_dst == Some(true) || default {
            "outboundTrafficPolicy REGISTRY_ONLY and no service for this destination"
        } else {
            "the route sends it to BlackHoleCluster"
        };
        stop!(fail(
            "blackhole",
            if http_here {
                "502 (BlackHoleCluster)".to_string()
            } else {
                reset_sees(wire, first)
            },
            format!("BlackHoleCluster: {why}")
        ));
    }
    if cname == PASSTHROUGH_CLUSTER {
        let dest = format!(
            "{}:{}",
            wire.address.clone().unwrap_or_else(|| host.clone()),
            wire.port
        );
        hop.endpoint = Some(EndpointInfo {
            address: dest.clone(),
            count: 1,
            workload: None,
            kind: "original destination".into(),
        });
        hop.wire_out = layers.clone();
        let why = if default {
            format!("default chain {} of {}", fc.name, listener.name)
        } else if hop.route.is_some() {
            "the allow_any virtual host".to_string()
        } else {
            format!("{} catch-all", listener.name)
        };
        hop.notes.push(format!("PassthroughCluster via {why}: outboundTrafficPolicy ALLOW_ANY sends it out as is, no mesh mTLS, no DestinationRule"));
        let dest_host = if wire.http {
            strip_port(&host)
        } else {
            dest.clone()
        };
        return (
            hop,
            Next::Passthrough {
                destination: format!("{dest_host} ({dest})"),
            },
        );
    }
    let Some(cluster) = cfg.cluster(&cname) else {
        stop!(fail("cluster_not_found", if http_here { "503 NC (cluster not found)".to_string() } else { reset_sees(wire, first) }, format!("cluster {cname} does not exist on {proxy_label}: the destination host/port/subset has no service or DestinationRule subset")));
    };
    if hop.route.is_none() && !http_here {
        hop.l4_route = l4_route_source(snap, node, cluster);
    }
    let (dr, notes) = dr_info(snap, node, cluster);
    hop.destination_rule = dr;
    hop.notes.extend(notes);
    hop.pool = Some(pool_limits(cluster, fc));
    // Inbound clusters end at the workload.
    if cname.starts_with("inbound|") || cname.starts_with("InboundPassthroughCluster") {
        let port = cluster
            .parse_name()
            .map(|(_, p, _, _)| p)
            .unwrap_or(wire.port);
        let dest = format!("{}:{}", node.ip, if port == 0 { wire.port } else { port });
        hop.endpoint = Some(EndpointInfo {
            address: dest.clone(),
            count: 1,
            workload: Some(proxy_label.clone()),
            kind: "application container".into(),
        });
        hop.wire_out = layers.clone();
        return (
            hop,
            Next::Reached {
                destination: format!("{} ({proxy_label})", dest),
            },
        );
    }
    // Endpoint.
    let (ep_addr, ep_port, ep_hostname, ep_meta, count) = if cluster.r#type
        == DiscoveryType::OriginalDst
    {
        (
            wire.address.clone().unwrap_or_default(),
            wire.port,
            String::new(),
            isthmus_xds::Metadata::default(),
            1,
        )
    } else {
        let Some(cla) = cfg.cluster_endpoints(cluster) else {
            stop!(fail(
                "no_endpoints",
                if http_here {
                    "503 UH (no healthy upstream)".to_string()
                } else {
                    reset_sees(wire, first)
                },
                format!("cluster {cname} has no endpoints")
            ));
        };
        let eps: Vec<_> = cla.lb_endpoints().collect();
        let Some(ep) = eps.first() else {
            stop!(fail("no_endpoints", if http_here { "503 UH (no healthy upstream)".to_string() } else { reset_sees(wire, first) }, format!("cluster {cname} has no endpoints (no pod behind the service, or a subset's labels match no pod)")));
        };
        let sa = &ep.endpoint.address.socket_address;
        (
            sa.address.clone(),
            sa.port_value,
            ep.endpoint.hostname.clone(),
            ep.metadata.clone(),
            eps.len(),
        )
    };
    let auto_sni = cluster
        .http_protocol_options()
        .and_then(|o| o.upstream_http_protocol_options.as_ref())
        .is_some_and(|u| u.auto_sni)
        .then(|| strip_port(&host));
    let up_ctx = pick_transport_socket(cluster, &ep_meta).and_then(|t| t.as_upstream_tls());
    let up = up_ctx.map(|c| upstream_layer(c, &proxy_label, auto_sni.as_deref()));
    hop.upstream_tls = up.clone();
    if let Some(c) = up_ctx {
        let missing = missing_secrets(cfg, &c.common_tls_context);
        if !missing.is_empty() {
            stop!(fail(
                "missing_secret",
                if http_here {
                    "503 UF (upstream TLS handshake fails: no client certificate)".to_string()
                } else {
                    reset_sees(wire, first)
                },
                missing_secret_detail(node, &missing)
            ));
        }
    }
    // HTTP is re-originated by the HCM; TCP carries whatever is left of the stack.
    let mut out: Vec<TlsLayer> = if http_here {
        Vec::new()
    } else {
        layers.clone()
    };
    if let Some(u) = &up {
        out.insert(0, u.clone());
    }
    hop.wire_out = out.clone();
    let ep_display = format!(
        "{}:{ep_port}",
        if ep_addr.is_empty() {
            ep_hostname.as_str()
        } else {
            ep_addr.as_str()
        }
    );
    let next_wire = Wire {
        address: Some(ep_addr.clone()),
        port: ep_port,
        layers: out.clone(),
        http: wire.http,
        host: host.clone(),
        path,
        method: wire.method.clone(),
        headers: wire.headers.clone(),
    };
    let mesh_out = out.first().filter(|l| l.kind == LayerKind::MeshMtls);
    if let Some(w) = find_workload_by_ip(snap, &ep_addr) {
        let wl = format!("{}/{}", w.namespace, w.name);
        let kind = match w.proxy {
            ProxyKind::Router => "gateway",
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::None => "no proxy",
        };
        hop.endpoint = Some(EndpointInfo {
            address: ep_display.clone(),
            count,
            workload: Some(wl.clone()),
            kind: kind.into(),
        });
        let Some(next_node) = ProxyNode::from_workload(w) else {
            if mesh_out.is_some() {
                stop!(fail(
                    "no_terminator",
                    "503 UF (upstream connect error: TLS handshake fails)",
                    format!("{wl} has no proxy to terminate mesh mTLS")
                ));
            }
            return (
                hop,
                Next::Reached {
                    destination: format!("{ep_display} ({wl}, no proxy)"),
                },
            );
        };
        if let Some(m) = mesh_out {
            let id = snap.spiffe_id(&next_node.namespace, &next_node.service_account);
            if !m.verify_sans.is_empty() && !m.verify_sans.iter().any(|s| s == &id) {
                stop!(fail(
                    "tls_mismatch",
                    "503 UF (CERTIFICATE_VERIFY_FAILED: SAN mismatch)",
                    format!(
                        "{wl} presents {id} but the cluster accepts only {}",
                        m.verify_sans.join(", ")
                    )
                ));
            }
        }
        let role = if next_node.kind == ProxyType::Router {
            Role::Gateway
        } else {
            Role::Inbound
        };
        if role == Role::Inbound && mesh_out.is_none() && !out.is_empty() {
            hop.notes
                .push(format!("{wl}'s sidecar receives TLS that is not mesh mTLS"));
        }
        return (
            hop,
            Next::Continue {
                node: next_node,
                role,
                wire: next_wire,
            },
        );
    }
    let outside = if ep_hostname.is_empty() {
        None
    } else {
        outside_server(snap, &ep_hostname)
    }
    .or_else(|| outside_server(snap, &ep_addr));
    hop.endpoint = Some(EndpointInfo {
        address: ep_display.clone(),
        count,
        workload: outside.clone(),
        kind: "outside the mesh".into(),
    });
    if mesh_out.is_some() {
        stop!(fail("no_terminator", "503 UF (upstream connect error: TLS handshake fails)", format!("mesh mTLS is sent to {ep_display}, outside the mesh: nothing there holds a workload certificate")));
    }
    let name = if ep_hostname.is_empty() {
        ep_display.clone()
    } else {
        format!("{ep_hostname}:{ep_port}")
    };
    (hop, Next::Reached { destination: name })
}

fn strip_port(h: &str) -> String {
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => a.to_string(),
        _ => h.to_string(),
    }
}

fn call_with(c: &Call, host: &str, path: &str) -> Call {
    Call {
        host: host.to_string(),
        path: path.to_string(),
        ..c.clone()
    }
}

/// Hosts routed through a gateway by some VirtualService (`host` → `ns/vs via gateways`).
fn gateway_routes_for(snap: &Snapshot, host: &str) -> Vec<String> {
    snap.virtual_services
        .iter()
        .filter(|v| {
            v.spec
                .hosts
                .iter()
                .any(|h| host_matches(h, host) || h.eq_ignore_ascii_case(host))
        })
        .filter(|v| v.spec.gateways.iter().any(|g| g != "mesh"))
        .map(|v| format!("VirtualService {}/{}", v.meta.namespace, v.meta.name))
        .collect()
}

fn verdict(snap: &Snapshot, hops: &[Hop], outcome: Next, url_host: &str) -> Verdict {
    let via: Vec<String> = hops
        .iter()
        .filter(|h| h.role == "gateway")
        .map(|h| h.proxy.clone())
        .collect();
    // Every TLS layer seen, in opening order, with the hops (segments) it spans.
    let mut seen: Vec<(TlsLayer, Vec<usize>)> = Vec::new();
    let mut add = |l: &TlsLayer, seg: usize| {
        let key = |x: &TlsLayer| (x.kind, x.opened_by.clone(), x.sni.clone());
        if let Some(e) = seen.iter_mut().find(|(s, _)| key(s) == key(l)) {
            if !e.1.contains(&seg) {
                e.1.push(seg);
            }
        } else {
            seen.push((l.clone(), vec![seg]));
        }
    };
    for (i, h) in hops.iter().enumerate() {
        if i == 0 {
            for l in &h.arrives.layers {
                add(l, 0);
            }
        }
        for l in &h.wire_out {
            add(l, i + 1);
        }
    }
    // App TLS never terminated by a proxy is end to end: it is still on the last wire.
    let last_wire: &[TlsLayer] = hops
        .last()
        .map(|h| {
            if h.failure.is_some() {
                h.arrives.layers.as_slice()
            } else {
                h.wire_out.as_slice()
            }
        })
        .unwrap_or(&[]);
    let phrase: Vec<String> = seen
        .iter()
        .map(|(l, segs)| {
            if l.kind == LayerKind::AppTls && last_wire.contains(l) {
                "app TLS end to end".to_string()
            } else {
                let hs: Vec<String> = segs
                    .iter()
                    .filter(|s| **s > 0)
                    .map(|s| s.to_string())
                    .collect();
                if hs.is_empty() {
                    format!("{} (into hop 1 only)", l.kind.as_str())
                } else {
                    format!("{} (leaving hop {})", l.kind.as_str(), hs.join(", "))
                }
            }
        })
        .collect();
    let tls_layers: Vec<String> = seen
        .iter()
        .map(|(l, _)| {
            format!(
                "{} sni={} by {}",
                l.kind.as_str(),
                if l.sni.is_empty() { "-" } else { &l.sni },
                l.opened_by
            )
        })
        .collect();
    let n = seen.len();
    let layers_txt = if n == 0 {
        "0 TLS layers on the wire (plaintext all the way)".to_string()
    } else {
        format!(
            "{n} TLS layer{} on the wire ({})",
            if n == 1 { "" } else { "s" },
            phrase.join(", then ")
        )
    };
    let mesh_layers = seen
        .iter()
        .filter(|(l, _)| l.kind == LayerKind::MeshMtls)
        .count();
    match outcome {
        Next::Fail(f) => {
            let at = hops
                .last()
                .map(|h| format!("{} ({})", h.proxy, h.role))
                .unwrap_or_default();
            Verdict {
                status: "failed".into(),
                summary: format!("FAILS at {at}: {} — {}", f.client_sees, f.detail),
                destination: None,
                via,
                tls_layers,
                failure: Some(f),
            }
        }
        Next::Passthrough { destination } => {
            let gw = gateway_routes_for(snap, url_host);
            let extra = if gw.is_empty() {
                String::new()
            } else {
                format!("; {} routes this host through a gateway, but not for this caller (no mesh route)", gw.join(", "))
            };
            Verdict {
                status: "bypass".into(),
                summary: format!(
                    "BYPASS: leaves the mesh from {} through PassthroughCluster (ALLOW_ANY) to {destination} — {mesh_layers} mesh mTLS layers, {layers_txt}{extra}",
                    hops.last().map(|h| h.proxy.as_str()).unwrap_or("?")
                ),
                destination: Some(destination),
                via,
                tls_layers,
                failure: None,
            }
        }
        Next::Reached { destination } => {
            let left_mesh_direct = via.is_empty()
                && hops.len() == 1
                && hops[0]
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| e.kind == "outside the mesh");
            let gw = if left_mesh_direct {
                gateway_routes_for(snap, url_host)
            } else {
                vec![]
            };
            let (status, route) = if !gw.is_empty() {
                (
                    "bypass",
                    format!(
                        "directly from {}'s sidecar, BYPASSING the egress gateway that {} sets up (no mesh route for this caller)",
                        hops[0].proxy,
                        gw.join(", ")
                    ),
                )
            } else if via.is_empty() {
                (
                    "reached",
                    format!(
                        "directly from {}",
                        hops.first().map(|h| h.proxy.as_str()).unwrap_or("?")
                    ),
                )
            } else {
                (
                    "reached",
                    format!(
                        "through {}",
                        via.iter()
                            .map(|v| gateway_label(snap, v))
                            .collect::<Vec<_>>()
                            .join(" then ")
                    ),
                )
            };
            Verdict {
                status: status.into(),
                summary: format!("reaches {destination} {route} — {layers_txt}"),
                destination: Some(destination),
                via,
                tls_layers,
                failure: None,
            }
        }
        Next::Continue { .. } => Verdict {
            status: "failed".into(),
            summary: "trace stopped".into(),
            destination: None,
            via,
            tls_layers,
            failure: None,
        },
    }
}

/// `ns/deployment` for a gateway pod (the name people use), else `ns/pod`.
fn gateway_label(snap: &Snapshot, pod: &str) -> String {
    let Some((ns, name)) = pod.split_once('/') else {
        return pod.to_string();
    };
    snap.workloads
        .iter()
        .find(|w| w.namespace == ns && w.name == name)
        .and_then(|w| w.deployment.as_ref())
        .map(|d| format!("{ns}/{d}"))
        .unwrap_or_else(|| pod.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_match_descriptions_name_every_criterion() {
        let m = RouteMatch {
            prefix: Some("/api".into()),
            case_sensitive: Some(false),
            headers: vec![HeaderMatcher {
                name: "x-user".into(),
                string_match: Some(StringMatcher::exact("jason")),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            describe_route_match(&m),
            "prefix /api, any case, header x-user=jason"
        );
        assert_eq!(describe_route_match(&RouteMatch::default()), "any request");
        let inv = HeaderMatcher {
            name: "x-a".into(),
            present_match: Some(true),
            invert_match: true,
            ..Default::default()
        };
        assert_eq!(describe_header(&inv), "not header x-a present");
    }

    #[test]
    fn vhost_domain_and_config_labels() {
        let d = vec![
            "a.example".to_string(),
            "*.example".to_string(),
            "*".to_string(),
        ];
        assert_eq!(
            matched_domain(&d, "a.example:80").as_deref(),
            Some("a.example")
        );
        assert_eq!(
            matched_domain(&d, "b.example").as_deref(),
            Some("*.example")
        );
        assert_eq!(matched_domain(&d, "other").as_deref(), Some("*"));
        assert_eq!(
            config_label("/apis/networking.istio.io/v1/namespaces/ns1/virtual-service/vs")
                .as_deref(),
            Some("VirtualService ns1/vs")
        );
        assert_eq!(config_label("garbage"), None);
        assert_eq!(strip_port("h.example:8080"), "h.example");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn reset_wording_follows_what_the_client_is_doing() {
        let mut w = Wire {
            address: None,
            port: 443,
            layers: vec![],
            http: true,
            host: "h".into(),
            path: "/".into(),
            method: "GET".into(),
            headers: vec![],
        };
        assert_eq!(reset_sees(&w, true), "connection reset (curl exit 56)");
        assert!(reset_sees(&w, false).starts_with("503 UF"));
        w.layers.push(TlsLayer {
            kind: LayerKind::AppTls,
            sni: "h".into(),
            opened_by: "app".into(),
            alpn: vec![],
            client_cert: None,
            trust: None,
            verify_sans: vec![],
        });
        assert!(reset_sees(&w, false).ends_with("(curl exit 35)"));
        w.layers.clear();
        w.http = false;
        assert_eq!(reset_sees(&w, true), "connection reset");
    }
}
