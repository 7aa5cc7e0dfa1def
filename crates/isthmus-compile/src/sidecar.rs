//! Sidecar listeners and routes: per-port outbound listeners (HTTP `0.0.0.0_PORT` with RDS
//! `PORT`, TCP/TLS `VIP_PORT`), `virtualOutbound` 15001 with the outbound traffic policy,
//! `virtualInbound` 15006 terminating mesh mTLS, and the `allow_any` / `block_all` vhosts
//! (reference §5, §6).

use crate::route::{default_route, l4_applies, tcp_proxy_for, translate_http, RouteCtx};
use crate::routecache::{http_routes, sidecar_vhost};
use crate::scope::{Ctx, OutboundMode};
use crate::{diag, tls};
use isthmus_api::Severity;
use isthmus_model::host::host_matches;
use isthmus_model::{Protocol, Registry, Service, ServicePort, TargetPort, VirtualServiceConfig};
use isthmus_xds::listener::HttpFilter;
use isthmus_xds::route::MaxStreamDuration;
use isthmus_xds::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn catch_all_cluster(ctx: &Ctx) -> &'static str {
    match ctx.mode {
        OutboundMode::AllowAny => names::PASSTHROUGH_CLUSTER,
        OutboundMode::RegistryOnly => names::BLACKHOLE_CLUSTER,
    }
}

fn tcp(cluster: &str) -> Filter {
    Filter::tcp_proxy(TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster: Some(cluster.to_string()),
        ..Default::default()
    })
}

/// Inbound ports: (targetPort, service port, service) for Services selecting this workload.
pub fn inbound_ports<'a>(ctx: &Ctx<'a>) -> Vec<(u32, u32, &'a Service)> {
    let snap = ctx.snap;
    let Some(w) = snap
        .workloads
        .iter()
        .find(|w| w.namespace == ctx.proxy.namespace && w.name == ctx.proxy.name)
    else {
        return vec![];
    };
    let mut out: Vec<(u32, u32, &Service)> = Vec::new();
    for svc in snap.services_selecting(w) {
        for p in &svc.ports {
            if p.protocol == Protocol::Udp {
                continue;
            }
            let t = match &p.target_port {
                Some(TargetPort::Number(n)) if *n > 0 => *n,
                Some(TargetPort::Name(n)) => match w.container_ports.get(n) {
                    Some(x) => *x,
                    None => continue,
                },
                _ => p.port,
            };
            if !out.iter().any(|(x, _, _)| *x == t) {
                out.push((t, p.port, svc));
            }
        }
    }
    out.sort_by_key(|(t, _, _)| *t);
    out
}

fn mesh_set() -> BTreeSet<String> {
    BTreeSet::from(["mesh".to_string()])
}

/// Mesh routing that silently does nothing on this sidecar: a second VS for a host, or a route
/// matching a port the host's service does not declare (seed 001 trap 3: traffic then bypasses
/// the intended path via allow_any).
fn mesh_vs_diagnostics(ctx: &mut Ctx) {
    let mut hosts: Vec<&str> = ctx.mesh_vs_exact.keys().copied().collect();
    hosts.sort_unstable();
    let mut out = Vec::new();
    for h in hosts {
        let list = &ctx.mesh_vs_exact[h];
        let Some(svc) = ctx.service(h) else { continue };
        for later in list.iter().skip(1) {
            out.push(diag(&later.meta, Severity::Warning, "DuplicateDomain", Some("spec.hosts"), format!("duplicate domain from virtual service: {h} (VirtualService {}/{} is older and wins on sidecars)", list[0].meta.namespace, list[0].meta.name)));
        }
        let vs = list[0];
        for (i, r) in vs.spec.http.iter().enumerate() {
            for m in &r.matches {
                if let Some(p) = m.port {
                    let gws = if m.gateways.is_empty() {
                        crate::route::vs_gateways(vs)
                    } else {
                        m.gateways.clone()
                    };
                    // Port 80 is exempt: istiod gives such hosts a vhost there anyway.
                    if p != 80
                        && gws.iter().any(|g| g == "mesh")
                        && !svc.port(p).is_some_and(|sp| sp.protocol.is_http())
                    {
                        out.push(diag(&vs.meta, Severity::Warning, "RoutePortNotDeclared", Some(&format!("spec.http[{i}].match.port")), format!("mesh route for {h} matches port {p}, but {h} declares no HTTP port {p}; sidecars install no route for it and the traffic falls through to {}", if ctx.mode == OutboundMode::AllowAny { "PassthroughCluster (allow_any): it bypasses this VirtualService" } else { "block_all (502)" })));
                    }
                }
            }
        }
    }
    ctx.diags.extend(out);
}

pub fn build(ctx: &mut Ctx, cfg: &mut ProxyConfig) {
    mesh_vs_diagnostics(ctx);
    let services = ctx.services.clone();
    let mut http_ports: BTreeSet<u32> = BTreeSet::new();
    let mut tcp_listeners: BTreeMap<String, (Listener, String)> = BTreeMap::new();
    for &svc in &services {
        for p in &svc.ports {
            if p.protocol == Protocol::Udp {
                continue;
            }
            if p.protocol.is_http() {
                http_ports.insert(p.port);
                continue;
            }
            let addr = svc.vip().unwrap_or("0.0.0.0").to_string();
            let name = format!("{addr}_{}", p.port);
            if let Some((l, owner)) = tcp_listeners.get_mut(&name) {
                // Address-less TLS services share `0.0.0.0_PORT`, told apart by SNI (Istio's
                // sniHosts = [hostname] when the service has no VIP); anything else collides.
                let chains = tcp_chains(ctx, svc, p);
                if sni_chains_merge(l, &chains) {
                    l.filter_chains.extend(chains);
                    continue;
                }
                ctx.diags.push(diag(&svc.meta, Severity::Warning, "OutboundListenerConflict", Some("spec.ports"), format!("{} port {} has no address of its own and {owner} already owns listener {name}; traffic to it goes to {owner}", svc.hostname, p.port)));
                continue;
            }
            let chains = tcp_chains(ctx, svc, p);
            let mut l = outbound_listener(ctx, &name, &addr, p.port);
            if chains.iter().any(|c| !c.server_names().is_empty()) {
                l.listener_filters.push(ListenerFilter::tls_inspector());
            }
            l.filter_chains = chains;
            tcp_listeners.insert(name, (l, svc.hostname.clone()));
        }
    }
    for (name, (l, owner)) in tcp_listeners {
        // An address-less TCP port that is also an HTTP port elsewhere: the HTTP listener owns
        // `0.0.0.0_PORT` (Envoy refuses two listeners with one name).
        if l.address.socket_address.address == "0.0.0.0" && http_ports.contains(&l.port()) {
            if let Some(svc) = ctx.service(&owner) {
                ctx.diags.push(diag(&svc.meta, Severity::Warning, "OutboundListenerConflict", Some("spec.ports"), format!("{owner} port {} has no address and port {} is an HTTP port of another service; listener {name} is HTTP and TCP traffic to {owner} is handled by its fall-through chain", l.port(), l.port())));
            }
            continue;
        }
        cfg.listeners.push(l);
    }
    for port in &http_ports {
        let name = format!("0.0.0.0_{port}");
        let mut l = outbound_listener(ctx, &name, "0.0.0.0", *port);
        l.listener_filters.push(ListenerFilter::http_inspector());
        l.filter_chains.push(FilterChain {
            filters: vec![Filter::http_connection_manager(HttpConnectionManager {
                stat_prefix: format!("outbound_0.0.0.0_{port}"),
                rds: Some(Rds {
                    config_source: ConfigSource::ads(),
                    route_config_name: port.to_string(),
                }),
                http_filters: HttpFilter::istio_chain(),
                use_remote_address: Some(false),
                forward_client_cert_details: "APPEND_FORWARD".into(),
                normalize_path: Some(true),
                path_with_escaped_slashes_action: "KEEP_UNCHANGED".into(),
                ..Default::default()
            })],
            name: String::new(),
            ..Default::default()
        });
        cfg.listeners.push(l);
        let rc = http_route_config(ctx, *port);
        cfg.routes.push(rc);
    }
    cfg.listeners.push(virtual_outbound(ctx));
    let inbound = virtual_inbound(ctx, cfg);
    cfg.listeners.push(inbound);
}

/// Whether `chains` can join listener `l`: every chain on both sides matches on SNI and no
/// server name is claimed twice (Envoy refuses overlapping filter chain matches).
fn sni_chains_merge(l: &Listener, chains: &[FilterChain]) -> bool {
    let all_sni = |cs: &[FilterChain]| cs.iter().all(|c| !c.server_names().is_empty());
    if !all_sni(&l.filter_chains) || !all_sni(chains) {
        return false;
    }
    let taken: BTreeSet<&String> = l
        .filter_chains
        .iter()
        .flat_map(|c| c.server_names())
        .collect();
    chains
        .iter()
        .flat_map(|c| c.server_names())
        .all(|n| !taken.contains(n))
}

fn outbound_listener(ctx: &Ctx, name: &str, addr: &str, port: u32) -> Listener {
    Listener {
        name: name.to_string(),
        address: Address::new(addr, port),
        bind_to_port: Some(false),
        traffic_direction: "OUTBOUND".into(),
        default_filter_chain: Some(FilterChain {
            filters: vec![tcp(catch_all_cluster(ctx))],
            name: names::PASSTHROUGH_FILTER_CHAIN.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Filter chains of a TCP/TLS service port: SNI chains from VS `tls` routes, then the first
/// applicable `tcp` route, else straight to the service's own cluster.
fn tcp_chains<'a>(ctx: &mut Ctx<'a>, svc: &'a Service, p: &ServicePort) -> Vec<FilterChain> {
    let mut out = Vec::new();
    let own = format!("outbound|{}||{}", p.port, svc.hostname);
    let mesh = mesh_set();
    let rc = RouteCtx {
        port: p.port,
        gateways: &mesh,
    };
    if let Some(vs) = ctx.mesh_vs_for(&svc.hostname) {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for r in &vs.spec.tls {
            for m in &r.matches {
                if !l4_applies(
                    ctx,
                    vs,
                    m.port,
                    &m.gateways,
                    &m.source_labels,
                    m.source_namespace.as_deref(),
                    &rc,
                ) {
                    continue;
                }
                let mut sni: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .filter(|s| !seen.contains(*s))
                    .cloned()
                    .collect();
                if sni.is_empty() {
                    continue;
                }
                sni.sort();
                seen.extend(sni.iter().cloned());
                let t = tcp_proxy_for(ctx, vs, &r.route, p.port, &own);
                out.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: sni,
                        ..Default::default()
                    }),
                    filters: vec![Filter::tcp_proxy(t)],
                    ..Default::default()
                });
            }
        }
        for r in &vs.spec.tcp {
            let applies = if r.matches.is_empty() {
                true
            } else {
                r.matches.iter().any(|m| {
                    l4_applies(
                        ctx,
                        vs,
                        m.port,
                        &m.gateways,
                        &m.source_labels,
                        m.source_namespace.as_deref(),
                        &rc,
                    )
                })
            };
            if applies {
                let t = tcp_proxy_for(ctx, vs, &r.route, p.port, &own);
                out.push(FilterChain {
                    filters: vec![Filter::tcp_proxy(t)],
                    ..Default::default()
                });
                return out;
            }
        }
    }
    // Idle timeout from the DR's tcp.idleTimeout applies to the tcp_proxy.
    let mut t = TcpProxy {
        stat_prefix: own.clone(),
        cluster: Some(own.clone()),
        ..Default::default()
    };
    if let Some(dr) = ctx.destination_rule(svc) {
        let (pol, _) = crate::policy::port_level(dr.spec.traffic_policy.as_ref(), p.port);
        if let Some(it) = pol
            .and_then(|p| p.connection_pool)
            .and_then(|c| c.tcp)
            .and_then(|t| t.idle_timeout)
        {
            t.idle_timeout = ctx.parse_duration(
                &dr.meta,
                "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
                &it,
            );
        }
    }
    // A TLS port without a VIP is reached on `0.0.0.0_PORT`: only SNI tells its services
    // apart, so the default chain matches the service's own hostname (Istio's
    // buildSidecarOutboundTLSFilterChainOpts: sniHosts = [hostname] when there is no VIP).
    let filter_chain_match =
        (p.protocol.is_tls() && svc.vip().is_none()).then(|| FilterChainMatch {
            server_names: vec![svc.hostname.clone()],
            ..Default::default()
        });
    if filter_chain_match.is_some() && seen_sni_covers(&out, &svc.hostname) {
        return out;
    }
    out.push(FilterChain {
        filter_chain_match,
        filters: vec![Filter::tcp_proxy(t)],
        ..Default::default()
    });
    out
}

/// Whether a VS `tls` chain already matches `host` (its default chain would overlap).
fn seen_sni_covers(chains: &[FilterChain], host: &str) -> bool {
    chains
        .iter()
        .any(|c| c.server_names().iter().any(|n| n == host))
}

/// Domains of a service's vhost (`generateVirtualHostDomains`): FQDN, the short forms a client
/// in the proxy's namespace can use, and the VIP.
fn domains_for(ctx: &Ctx, svc: &Service, short: bool) -> Vec<String> {
    let mut d = Vec::with_capacity(5);
    d.push(svc.hostname.clone());
    if svc.registry == Registry::Kubernetes {
        if let Some(base) = svc.hostname.strip_suffix(ctx.svc_suffix.as_str()) {
            if let Some((name, ns)) = base.split_once('.') {
                if short {
                    d.push(name.to_string());
                }
                d.push(crate::route::concat(&[name, ".", ns, ".svc"]));
                d.push(crate::route::concat(&[name, ".", ns]));
            }
        }
    }
    if let Some(v) = svc.vip() {
        d.push(v.to_string());
    }
    d
}

/// Whether a client in the proxy's namespace reaches `svc` by its bare name (the one domain of
/// a service vhost that depends on the proxy).
fn short_name_applies(ctx: &Ctx, svc: &Service) -> bool {
    svc.registry == Registry::Kubernetes
        && svc
            .hostname
            .strip_suffix(ctx.svc_suffix.as_str())
            .and_then(|base| base.split_once('.'))
            .is_some_and(|(_, ns)| ns == ctx.proxy.namespace)
}

fn http_route_config(ctx: &mut Ctx, port: u32) -> RouteConfiguration {
    let mut rc = RouteConfiguration {
        name: port.to_string(),
        validate_clusters: Some(false),
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    let mesh = mesh_set();
    let rctx = RouteCtx {
        port,
        gateways: &mesh,
    };
    // Services with this HTTP port: the owning VS's routes (exact host beats wildcard, then
    // oldest), else the default route.
    let services = ctx.services.clone();
    for svc in services {
        let Some(p) = svc.port(port) else { continue };
        if !p.protocol.is_http() {
            continue;
        }
        // The VS's routes (shared with other proxies when they depend on nothing that differs),
        // else the default route (a function of the service and port: table id 0).
        let (routes, table) = match ctx
            .mesh_vs_for(&svc.hostname)
            .filter(|v| !v.spec.http.is_empty())
        {
            Some(vs) => {
                let r = http_routes(ctx, vs, &rctx, port);
                (Some(r.routes), r.shared)
            }
            None => (None, Some(0)),
        };
        let short = short_name_applies(ctx, svc);
        let vh = sidecar_vhost(ctx, svc, port, short, table, || VirtualHost {
            name: crate::route::concat(&[
                &svc.hostname,
                ":",
                crate::route::itoa_u32(port).as_str(),
            ]),
            domains: domains_for(ctx, svc, short),
            routes: routes.unwrap_or_else(|| {
                Arc::new(vec![default_route(
                    &crate::route::cluster_name(port, "", &svc.hostname),
                    &svc.hostname,
                    port,
                )])
            }),
            include_request_attempt_count_in_response: true,
            ..Default::default()
        });
        rc.virtual_hosts.push(vh);
    }
    // Hosts that are not services get a vhost on port 80 only (istiod's defaulting for unknown
    // hosts); a wildcard that covers a known service has already been applied to it.
    if port == 80 {
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let vss: Vec<&VirtualServiceConfig> = ctx
            .virtual_services
            .iter()
            .copied()
            .filter(|v| !v.spec.http.is_empty())
            .collect();
        for vs in vss {
            if !(vs.spec.gateways.is_empty()
                || vs.spec.gateways.iter().any(|g| g == "mesh")
                || vs.spec.http.iter().any(|h| {
                    h.matches
                        .iter()
                        .any(|m| m.gateways.iter().any(|g| g == "mesh"))
                }))
            {
                continue;
            }
            for h in &vs.spec.hosts {
                // istiod's "hack to keep consistent with previous behavior": on port 80 every
                // mesh VS is used, and a host not backed by a service *on port 80* (e.g. a
                // ServiceEntry declaring only 443, as in seed 001's double-mTLS egress) still
                // gets its own vhost here.
                if ctx.snap.services_by_host(h).any(|s| s.port(80).is_some()) {
                    continue;
                }
                if h.starts_with('*') && ctx.services.iter().any(|s| host_matches(h, &s.hostname)) {
                    continue;
                }
                if !claimed.insert(h.clone()) {
                    ctx.diags.push(diag(&vs.meta, Severity::Warning, "DuplicateDomain", Some("spec.hosts"), format!("duplicate domain from virtual service: {h} (an older VirtualService already claims it); this one is ignored on sidecars")));
                    continue;
                }
                let (routes, _) = translate_http(ctx, vs, &rctx, port);
                rc.virtual_hosts.push(Arc::new(VirtualHost {
                    name: format!("{h}:{port}"),
                    domains: vec![h.clone()],
                    routes: Arc::new(routes),
                    include_request_attempt_count_in_response: true,
                    ..Default::default()
                }));
            }
        }
    }
    let catch = match ctx.mode {
        OutboundMode::AllowAny => VirtualHost {
            name: names::ALLOW_ANY.into(),
            domains: vec!["*".into()],
            routes: Arc::new(vec![Route {
                name: names::ALLOW_ANY.into(),
                r#match: RouteMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                },
                route: Some(RouteAction {
                    cluster: Some(names::PASSTHROUGH_CLUSTER.into()),
                    timeout: Some(Duration::ZERO),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: None,
                        grpc_timeout_header_max: Some(Duration::ZERO),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            include_request_attempt_count_in_response: true,
            ..Default::default()
        },
        OutboundMode::RegistryOnly => VirtualHost {
            name: names::BLOCK_ALL.into(),
            domains: vec!["*".into()],
            routes: Arc::new(vec![Route {
                name: names::BLOCK_ALL.into(),
                r#match: RouteMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                },
                direct_response: Some(DirectResponseAction {
                    status: 502,
                    body: None,
                }),
                ..Default::default()
            }]),
            include_request_attempt_count_in_response: true,
            ..Default::default()
        },
    };
    rc.virtual_hosts.push(Arc::new(catch));
    rc
}

/// Snapshot preparation ([`crate::prepare`]): the mesh route tables and vhosts of every
/// namespace holding sidecars, built for a label-less sidecar there (proxies with other
/// lookups or source labels miss and build their own; the shared entries are keyed exactly,
/// see `routecache`).
pub(crate) fn prepare(snap: &isthmus_model::Snapshot) {
    for ns in crate::proxy_namespaces(snap, ProxyType::Sidecar) {
        let node = crate::synthetic_proxy(ProxyType::Sidecar, &ns);
        let mut ctx = Ctx::new(snap, &node);
        let ports: BTreeSet<u32> = ctx
            .services
            .iter()
            .flat_map(|s| s.ports.iter())
            .filter(|p| p.protocol.is_http())
            .map(|p| p.port)
            .collect();
        for port in ports {
            http_route_config(&mut ctx, port);
        }
    }
}

fn virtual_outbound(ctx: &Ctx) -> Listener {
    Listener {
        name: names::VIRTUAL_OUTBOUND.into(),
        address: Address::new("0.0.0.0", names::VIRTUAL_OUTBOUND_PORT),
        use_original_dst: Some(true),
        traffic_direction: "OUTBOUND".into(),
        filter_chains: vec![
            FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(names::VIRTUAL_OUTBOUND_PORT),
                    ..Default::default()
                }),
                filters: vec![tcp(names::BLACKHOLE_CLUSTER)],
                name: names::VIRTUAL_OUTBOUND_BLACKHOLE.into(),
                ..Default::default()
            },
            FilterChain {
                filters: vec![tcp(catch_all_cluster(ctx))],
                name: names::VIRTUAL_OUTBOUND_CATCHALL_TCP.into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn inbound_filters(target: u32, http: bool, cfg_name: &str) -> Vec<Filter> {
    if !http {
        return vec![tcp(cfg_name)];
    }
    let route = RouteConfiguration {
        name: cfg_name.to_string(),
        validate_clusters: Some(false),
        virtual_hosts: vec![Arc::new(VirtualHost {
            name: format!("inbound|http|{target}"),
            domains: vec!["*".into()],
            routes: Arc::new(vec![Route {
                name: "default".into(),
                r#match: RouteMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                },
                route: Some(RouteAction {
                    cluster: Some(cfg_name.to_string()),
                    timeout: Some(Duration::ZERO),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(Duration::ZERO),
                        grpc_timeout_header_max: Some(Duration::ZERO),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })],
        ..Default::default()
    };
    vec![Filter::http_connection_manager(HttpConnectionManager {
        stat_prefix: format!("inbound_0.0.0.0_{target}"),
        route_config: Some(route),
        http_filters: HttpFilter::istio_chain(),
        use_remote_address: Some(false),
        forward_client_cert_details: "APPEND_FORWARD".into(),
        set_current_client_cert_details: Some(
            serde_json::json!({"subject": true, "dns": true, "uri": true}),
        ),
        normalize_path: Some(true),
        path_with_escaped_slashes_action: "KEEP_UNCHANGED".into(),
        ..Default::default()
    })]
}

fn mesh_alpn() -> Vec<String> {
    tls::ALPN_MESH
        .iter()
        .map(|s| s.to_string())
        .chain(["istio-http/1.0", "istio-http/1.1", "istio-h2"].map(String::from))
        .collect()
}

fn virtual_inbound(ctx: &Ctx, _cfg: &ProxyConfig) -> Listener {
    let mut chains = Vec::new();
    for (target, svc_port, svc) in inbound_ports(ctx) {
        let http = svc.port(svc_port).is_some_and(|p| p.protocol.is_http());
        let cluster = format!("inbound|{target}||");
        let name = format!("inbound_0.0.0.0_{target}");
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(target),
                transport_protocol: "tls".into(),
                application_protocols: mesh_alpn(),
                ..Default::default()
            }),
            filters: inbound_filters(target, http, &cluster),
            transport_socket: Some(TransportSocket::downstream_tls(tls::inbound_mtls())),
            name: name.clone(),
            ..Default::default()
        });
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(target),
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: vec![tcp(&cluster)],
            name: name.clone(),
            ..Default::default()
        });
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(target),
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            }),
            filters: inbound_filters(target, http, &cluster),
            name,
            ..Default::default()
        });
    }
    chains.push(FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            application_protocols: mesh_alpn(),
            ..Default::default()
        }),
        filters: vec![tcp(crate::cluster::INBOUND_PASSTHROUGH)],
        transport_socket: Some(TransportSocket::downstream_tls(tls::inbound_mtls())),
        name: "virtualInbound-catchall-tls".into(),
        ..Default::default()
    });
    chains.push(FilterChain {
        filters: vec![tcp(crate::cluster::INBOUND_PASSTHROUGH)],
        name: "virtualInbound".into(),
        ..Default::default()
    });
    Listener {
        name: names::VIRTUAL_INBOUND.into(),
        address: Address::new("0.0.0.0", names::VIRTUAL_INBOUND_PORT),
        filter_chains: chains,
        listener_filters: vec![
            ListenerFilter::original_dst(),
            ListenerFilter::tls_inspector(),
            ListenerFilter::http_inspector(),
        ],
        traffic_direction: "INBOUND".into(),
        ..Default::default()
    }
}
