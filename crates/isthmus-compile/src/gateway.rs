//! Gateway listeners and routes (reference §4): Service port → targetPort translation, server
//! merging and conflicts, one filter chain per TLS server, PASSTHROUGH chains from VS `tls`
//! routes, terminating TLS/TCP servers from `tcp` routes, RDS `http.<port>` /
//! `https.<port>.<name>.<gw>.<ns>`, and the 404 `blackhole` virtual host.

use crate::route::{is_catch_all, l4_applies, tcp_proxy_for, RouteCtx};
use crate::routecache::{gateway_vhost, http_routes};
use crate::scope::Ctx;
use crate::{diag, tls};
use isthmus_api::istio::Server;
use isthmus_api::Severity;
use isthmus_model::host::{host_matches, hosts_intersect};
use isthmus_model::{GatewayConfig, Protocol, TargetPort, VirtualServiceConfig};
use isthmus_xds::listener::HttpFilter;
use isthmus_xds::ProxyType;
use isthmus_xds::*;
use std::collections::{BTreeMap, BTreeSet};

struct Entry<'a> {
    gw: &'a GatewayConfig,
    index: usize,
    server: &'a Server,
    port: u32,
    port_name: String,
    protocol: Protocol,
    target: u32,
    bind: String,
    /// `ns/name` of the Gateway and [`Entry::host_pairs`], computed once: every visible
    /// VirtualService is checked against every server (10k VSs on one gateway).
    gw_key: String,
    pairs: Vec<(Option<String>, String)>,
}

impl Entry<'_> {
    fn gw_name(&self) -> String {
        format!("{}/{}", self.gw.meta.namespace, self.gw.meta.name)
    }
    fn mode(&self) -> Option<&str> {
        self.server.tls.as_ref().map(|t| t.mode())
    }
    fn is_plain_http(&self) -> bool {
        self.protocol.is_http()
            && self
                .server
                .tls
                .as_ref()
                .is_none_or(|t| t.https_redirect && t.mode.is_none())
    }
    fn is_passthrough(&self) -> bool {
        matches!(self.mode(), Some("PASSTHROUGH") | Some("AUTO_PASSTHROUGH"))
            && !self.is_plain_http()
    }
    fn field(&self) -> String {
        format!("spec.servers[{}]", self.index)
    }
    /// Server hosts with `./` → `<gw ns>/` and `*/h` → `h`.
    fn hosts(&self) -> Vec<String> {
        self.server
            .hosts
            .iter()
            .map(|h| {
                if let Some(r) = h.strip_prefix("./") {
                    format!("{}/{r}", self.gw.meta.namespace)
                } else if let Some(r) = h.strip_prefix("*/") {
                    r.to_string()
                } else {
                    h.clone()
                }
            })
            .collect()
    }
    /// (namespace restriction, dns name) pairs.
    fn host_pairs(&self) -> Vec<(Option<String>, String)> {
        self.hosts()
            .into_iter()
            .map(|h| match h.split_once('/') {
                Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
                None => (None, h),
            })
            .collect()
    }
    /// serverNames: hosts without namespace, sorted, de-duplicated; none when `*` is among them.
    fn server_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.host_pairs().into_iter().map(|(_, h)| h).collect();
        if names.contains("*") {
            return vec![];
        }
        names.into_iter().collect()
    }
}

/// VS hosts of `vs` that this server exposes (VS host, narrowed to the server host when the VS
/// host is the broader wildcard).
fn bound_hosts(e: &Entry, vs: &VirtualServiceConfig) -> Vec<String> {
    let gw = e.gw_key.as_str();
    let has = |list: &[String]| list.iter().any(|g| g == gw);
    let bound = has(&vs.spec.gateways)
        || vs
            .spec
            .http
            .iter()
            .any(|h| h.matches.iter().any(|m| has(&m.gateways)))
        || vs
            .spec
            .tcp
            .iter()
            .any(|h| h.matches.iter().any(|m| has(&m.gateways)))
        || vs
            .spec
            .tls
            .iter()
            .any(|h| h.matches.iter().any(|m| has(&m.gateways)));
    if !bound {
        return vec![];
    }
    let mut out = Vec::new();
    for (ns, sh) in &e.pairs {
        if ns
            .as_deref()
            .is_some_and(|n| n != "*" && n != vs.meta.namespace)
        {
            continue;
        }
        for vh in &vs.spec.hosts {
            let h = if host_matches(sh, vh) {
                vh.clone()
            } else if host_matches(vh, sh) {
                sh.clone()
            } else {
                continue;
            };
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

pub fn build(ctx: &mut Ctx, cfg: &mut ProxyConfig) {
    let snap = ctx.snap;
    let gws = snap.gateways_for(&ctx.proxy.labels);
    let workload = snap
        .workloads
        .iter()
        .find(|w| w.namespace == ctx.proxy.namespace && w.name == ctx.proxy.name);
    let svcs = workload
        .map(|w| snap.services_selecting(w))
        .unwrap_or_default();
    let mut groups: BTreeMap<(u32, String), Vec<Entry>> = BTreeMap::new();
    let mut tls_hosts: BTreeMap<(u32, String), BTreeSet<String>> = BTreeMap::new();
    for gw in gws {
        for (i, s) in gw.spec.servers.iter().enumerate() {
            let Some(p) = &s.port else { continue };
            let mut target = p.number;
            'svc: for svc in &svcs {
                for sp in &svc.ports {
                    if sp.port == p.number {
                        target = match &sp.target_port {
                            Some(TargetPort::Number(n)) if *n > 0 => *n,
                            Some(TargetPort::Name(n)) => workload
                                .and_then(|w| w.container_ports.get(n).copied())
                                .unwrap_or(p.number),
                            _ => p.number,
                        };
                        break 'svc;
                    }
                }
            }
            let mut e = Entry {
                gw,
                index: i,
                server: s,
                port: p.number,
                port_name: p.name.clone(),
                protocol: Protocol::parse(&p.protocol),
                target,
                bind: s.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                gw_key: String::new(),
                pairs: Vec::new(),
            };
            e.gw_key = e.gw_name();
            e.pairs = e.host_pairs();
            let key = (target, e.bind.clone());
            if let Some(first) = groups.get(&key).and_then(|v| v.first()) {
                // Only plain-text HTTP servers merge with each other, and TLS servers with TLS
                // servers; anything else on an occupied port is dropped (canMergeProtocols).
                let tls_server = |x: &Entry| x.server.tls.is_some() && !x.is_plain_http();
                let mergeable = (first.is_plain_http() && e.is_plain_http())
                    || (tls_server(first) && tls_server(&e));
                if !mergeable {
                    ctx.diags.push(diag(&gw.meta, Severity::Warning, "GatewayPortConflict", Some(&e.field()), format!("skipping server on gateway {} port {}.{}.{}: conflict with existing server {}.{} (plain-text HTTP and {} cannot share a port)", gw.meta.name, p.name, p.number, p.protocol, first.port, first.port_name, if e.is_plain_http() { first.protocol.as_str() } else { e.protocol.as_str() })));
                    continue;
                }
            }
            if s.tls.is_some() && !e.is_plain_http() {
                let set = tls_hosts.entry(key.clone()).or_default();
                let dup: Vec<String> = e.hosts().into_iter().filter(|h| set.contains(h)).collect();
                if !dup.is_empty() {
                    ctx.diags.push(diag(&gw.meta, Severity::Warning, "GatewayDuplicateHosts", Some(&e.field()), format!("skipping server on gateway {}, duplicate host names: {:?} (another server already serves them on port {}); this server is dropped entirely", gw.meta.name, dup, p.number)));
                    continue;
                }
                set.extend(e.hosts());
            }
            groups.entry(key).or_default().push(e);
        }
    }

    for ((target, bind), entries) in &groups {
        let lname = format!("{bind}_{target}");
        let mut listener = Listener {
            name: lname.clone(),
            address: Address::new(bind.clone(), *target),
            ..Default::default()
        };
        if entries.iter().all(|e| e.is_plain_http()) {
            let rds = format!("http.{target}");
            listener.filter_chains.push(FilterChain {
                filters: vec![Filter::http_connection_manager(hcm(
                    &format!("outbound_{bind}_{target}"),
                    &rds,
                ))],
                ..Default::default()
            });
            let rc = route_config(ctx, &rds, entries.iter().collect());
            cfg.routes.push(rc);
        } else {
            let mut passthrough_sni: BTreeSet<String> = BTreeSet::new();
            for e in entries {
                let chains = server_chains(ctx, cfg, e, *target, bind, &mut passthrough_sni);
                listener.filter_chains.extend(chains);
            }
        }
        if listener.filter_chains.is_empty() {
            if let Some(e) = entries.first() {
                ctx.diags.push(diag(&e.gw.meta, Severity::Warning, "GatewayListenerEmpty", Some(&e.field()), format!("listener {lname} has no filter chains (no VirtualService route compiled for its servers); it is not created and connections to port {target} are refused")));
            }
            continue;
        }
        if listener
            .filter_chains
            .iter()
            .any(|c| !c.server_names().is_empty() || c.transport_socket.is_some())
        {
            listener
                .listener_filters
                .push(ListenerFilter::tls_inspector());
        }
        cfg.listeners.push(listener);
    }
}

fn hcm(stat: &str, rds: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat.to_string(),
        rds: Some(Rds {
            config_source: ConfigSource::ads(),
            route_config_name: rds.to_string(),
        }),
        http_filters: HttpFilter::istio_chain(),
        use_remote_address: Some(true),
        forward_client_cert_details: "SANITIZE_SET".into(),
        normalize_path: Some(true),
        path_with_escaped_slashes_action: "KEEP_UNCHANGED".into(),
        ..Default::default()
    }
}

fn server_chains(
    ctx: &mut Ctx,
    cfg: &mut ProxyConfig,
    e: &Entry,
    target: u32,
    bind: &str,
    passthrough_sni: &mut BTreeSet<String>,
) -> Vec<FilterChain> {
    let mut out = Vec::new();
    let Some(tls) = &e.server.tls else {
        // Plain TCP server: VS tcp routes.
        if let Some(t) = tcp_route(ctx, e) {
            out.push(FilterChain {
                filters: vec![Filter::tcp_proxy(t)],
                ..Default::default()
            });
        } else {
            missed(ctx, e, "tcp");
        }
        return out;
    };
    if e.is_passthrough() {
        if tls.mode() == "AUTO_PASSTHROUGH" {
            // SNI-DNAT: one chain per visible service port whose host the server covers.
            let services = ctx.services.clone();
            for svc in services {
                if svc.mesh_external || !e.pairs.iter().any(|(_, h)| host_matches(h, &svc.hostname))
                {
                    continue;
                }
                for p in &svc.ports {
                    if p.protocol == Protocol::Udp {
                        continue;
                    }
                    let sni = format!("outbound_.{}_._.{}", p.port, svc.hostname);
                    let cluster = format!("outbound|{}||{}", p.port, svc.hostname);
                    out.push(FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: vec![sni],
                            application_protocols: tls::ALPN_MESH
                                .iter()
                                .map(|s| s.to_string())
                                .chain(
                                    ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
                                        .map(String::from),
                                )
                                .collect(),
                            ..Default::default()
                        }),
                        filters: vec![Filter::tcp_proxy(TcpProxy {
                            stat_prefix: cluster.clone(),
                            cluster: Some(cluster),
                            ..Default::default()
                        })],
                        ..Default::default()
                    });
                }
            }
            return out;
        }
        let gw_set: BTreeSet<String> = BTreeSet::from([e.gw_name()]);
        let rc = RouteCtx {
            port: e.port,
            gateways: &gw_set,
        };
        let vss = ctx.virtual_services.clone();
        for vs in vss {
            let hosts = bound_hosts(e, vs);
            if hosts.is_empty() {
                continue;
            }
            for (ri, r) in vs.spec.tls.iter().enumerate() {
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
                    let sni: Vec<String> = m
                        .sni_hosts
                        .iter()
                        .filter(|s| e.pairs.iter().any(|(_, h)| hosts_intersect(h, s)))
                        .cloned()
                        .collect();
                    let dup: Vec<String> = sni
                        .iter()
                        .filter(|s| passthrough_sni.contains(*s))
                        .cloned()
                        .collect();
                    if !dup.is_empty() {
                        ctx.diags.push(diag(&vs.meta, Severity::Warning, "DuplicateSniHost", Some(&format!("spec.tls[{ri}].match.sniHosts")), format!("skipping VirtualService {} rule #{ri} on server port {} of gateway {}, duplicate SNI host names: {dup:?}", vs.meta.name, e.port, e.gw.meta.name)));
                        continue;
                    }
                    if sni.is_empty() {
                        continue;
                    }
                    passthrough_sni.extend(sni.iter().cloned());
                    let mut names = sni.clone();
                    names.sort();
                    let t = tcp_proxy_for(ctx, vs, &r.route, e.port, &format!("{bind}_{target}"));
                    out.push(FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: names,
                            ..Default::default()
                        }),
                        filters: vec![Filter::tcp_proxy(t)],
                        ..Default::default()
                    });
                }
            }
        }
        if out.is_empty() {
            missed(ctx, e, "tls");
        }
        return out;
    }
    // Terminating servers.
    let http = e.protocol == Protocol::Https || e.protocol.is_http();
    let Some(ds) = tls::downstream(ctx, &e.gw.meta, tls, http) else {
        return out;
    };
    let names = e.server_names();
    let fcm = if names.is_empty() {
        None
    } else {
        Some(FilterChainMatch {
            server_names: names,
            ..Default::default()
        })
    };
    if http {
        let mut rds = format!(
            "https.{}.{}.{}.{}",
            e.port, e.port_name, e.gw.meta.name, e.gw.meta.namespace
        );
        if bind != "0.0.0.0" {
            rds.push('.');
            rds.push_str(bind);
        }
        if cfg.routes.iter().any(|r| r.name == rds) {
            ctx.diags.push(diag(
                &e.gw.meta,
                Severity::Warning,
                "NonUniquePortName",
                Some(&e.field()),
                format!(
                    "non unique port name for HTTPS port: {:?}; servers need distinct port names",
                    e.port_name
                ),
            ));
        } else {
            let rc = route_config(ctx, &rds, vec![e]);
            cfg.routes.push(rc);
        }
        out.push(FilterChain {
            filter_chain_match: fcm,
            filters: vec![Filter::http_connection_manager(hcm(
                &format!("outbound_{bind}_{target}"),
                &rds,
            ))],
            transport_socket: Some(TransportSocket::downstream_tls(ds)),
            transport_socket_connect_timeout: Some(Duration::from_secs(15)),
            name: String::new(),
            ..Default::default()
        });
    } else {
        match tcp_route(ctx, e) {
            Some(t) => out.push(FilterChain {
                filter_chain_match: fcm,
                filters: vec![Filter::tcp_proxy(t)],
                transport_socket: Some(TransportSocket::downstream_tls(ds)),
                transport_socket_connect_timeout: Some(Duration::from_secs(15)),
                ..Default::default()
            }),
            None => missed(ctx, e, "tcp"),
        }
    }
    out
}

/// First VS `tcp` route bound to this server whose L4 match applies.
fn tcp_route(ctx: &mut Ctx, e: &Entry) -> Option<TcpProxy> {
    let gw_set: BTreeSet<String> = BTreeSet::from([e.gw_name()]);
    let rc = RouteCtx {
        port: e.port,
        gateways: &gw_set,
    };
    let vss = ctx.virtual_services.clone();
    for vs in vss {
        if bound_hosts(e, vs).is_empty() {
            continue;
        }
        for r in &vs.spec.tcp {
            let applies = r.matches.is_empty()
                && crate::route::vs_gateways(vs).contains(&e.gw_name())
                || r.matches.iter().any(|m| {
                    l4_applies(
                        ctx,
                        vs,
                        m.port,
                        &m.gateways,
                        &m.source_labels,
                        m.source_namespace.as_deref(),
                        &rc,
                    )
                });
            if applies {
                return Some(tcp_proxy_for(
                    ctx,
                    vs,
                    &r.route,
                    e.port,
                    &format!("{}_{}", e.bind, e.target),
                ));
            }
        }
    }
    None
}

fn missed(ctx: &mut Ctx, e: &Entry, wanted: &str) {
    let gw = e.gw_name();
    // Name the VS whose routes are of the wrong kind: the classic `tls` route on a terminating server.
    let mut culprit = None;
    for vs in &ctx.virtual_services {
        if bound_hosts(e, vs).is_empty() {
            continue;
        }
        if wanted == "tcp" && !vs.spec.tls.is_empty() && vs.spec.tcp.is_empty() {
            culprit = Some(*vs);
            break;
        }
    }
    match culprit {
        Some(vs) => ctx.diags.push(diag(&vs.meta, Severity::Warning, "TlsRouteOnTerminatingServer", Some("spec.tls"), format!("gateway {gw} server {} terminates TLS ({}), so only `tcp` routes apply; this VirtualService's `tls` routes compile to zero filter chains on {}_{} — use a `tcp` route", e.port_name, e.mode().unwrap_or("-"), e.bind, e.target))),
        None => ctx.diags.push(diag(&e.gw.meta, Severity::Warning, "GatewayServerNoRoutes", Some(&e.field()), format!("gateway {}:{} listener missed network filter: no VirtualService `{wanted}` route is bound to server {} (hosts {:?}); the server gets no filter chain", gw, e.port, e.port_name, e.server.hosts))),
    }
}

fn route_config(ctx: &mut Ctx, name: &str, entries: Vec<&Entry>) -> RouteConfiguration {
    // host → (port, route tables of the VSs bound to it, each shared or this proxy's own).
    type Tables = Vec<(std::sync::Arc<Vec<Route>>, Option<usize>)>;
    let mut vhosts: BTreeMap<String, (u32, Tables)> = BTreeMap::new();
    let vss = ctx.virtual_services.clone();
    for e in &entries {
        let gw_set: BTreeSet<String> = BTreeSet::from([e.gw_name()]);
        let rc = RouteCtx {
            port: e.port,
            gateways: &gw_set,
        };
        for vs in &vss {
            let hosts = bound_hosts(e, vs);
            if hosts.is_empty() {
                continue;
            }
            if vs.spec.http.is_empty() {
                if !vs.spec.tls.is_empty() || !vs.spec.tcp.is_empty() {
                    ctx.diags.push(diag(&vs.meta, Severity::Warning, "NonHttpRoutesOnHttpServer", Some("spec"), format!("gateway {} server {} is HTTP/HTTPS; only `http` routes apply, this VirtualService's tls/tcp routes are ignored there", e.gw_name(), e.port_name)));
                }
                continue;
            }
            let r = http_routes(ctx, vs, &rc, e.port);
            if r.routes.is_empty() {
                continue;
            }
            for h in hosts {
                vhosts
                    .entry(h)
                    .or_insert_with(|| (e.port, Vec::new()))
                    .1
                    .push((r.routes.clone(), r.shared));
            }
        }
    }
    // httpsRedirect: every host of such a server answers with a redirect; routes are elided.
    let mut redirect: BTreeMap<String, u32> = BTreeMap::new();
    for e in &entries {
        if e.server.tls.as_ref().is_some_and(|t| t.https_redirect) && e.is_plain_http() {
            for (_, h) in e.host_pairs() {
                redirect.insert(h, e.port);
            }
        }
    }
    for (h, port) in &redirect {
        vhosts.insert(h.clone(), (*port, Vec::new()));
    }
    let mut out = RouteConfiguration {
        name: name.to_string(),
        validate_clusters: Some(false),
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    for (host, (port, tables)) in vhosts {
        let require_tls = if redirect.contains_key(&host) {
            "ALL".to_string()
        } else {
            String::new()
        };
        // One shared table (the common case: one VS per host) makes a shareable vhost.
        if let ([(routes, Some(table))], true) = (tables.as_slice(), require_tls.is_empty()) {
            let vh = gateway_vhost(ctx, &host, port, *table, || {
                gateway_vhost_of(&host, port, routes.clone(), String::new())
            });
            out.virtual_hosts.push(vh);
            continue;
        }
        let routes = vhost_routes(&tables);
        out.virtual_hosts.push(std::sync::Arc::new(gateway_vhost_of(
            &host,
            port,
            routes,
            require_tls,
        )));
    }
    if out.virtual_hosts.is_empty() {
        let port = entries.first().map(|e| e.port).unwrap_or(0);
        out.virtual_hosts.push(std::sync::Arc::new(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            ..Default::default()
        }));
    }
    out
}

/// The routes of one gateway vhost: its VSs' tables in order; with several, catch-all routes
/// move to the end (SortVHostRoutes). One table is used as is (shared): a VS's own routes end
/// at its first catch-all.
fn vhost_routes(
    tables: &[(std::sync::Arc<Vec<Route>>, Option<usize>)],
) -> std::sync::Arc<Vec<Route>> {
    if let [(only, _)] = tables {
        return only.clone();
    }
    let mut routes: Vec<Route> = tables.iter().flat_map(|(t, _)| t.iter().cloned()).collect();
    let catch_first = routes
        .iter()
        .position(|r| is_catch_all(&r.r#match))
        .is_some_and(|i| routes[i + 1..].iter().any(|r| !is_catch_all(&r.r#match)));
    if catch_first {
        let (mut normal, catch): (Vec<Route>, Vec<Route>) =
            routes.drain(..).partition(|r| !is_catch_all(&r.r#match));
        normal.extend(catch);
        routes = normal;
    }
    std::sync::Arc::new(routes)
}

fn gateway_vhost_of(
    host: &str,
    port: u32,
    routes: std::sync::Arc<Vec<Route>>,
    require_tls: String,
) -> VirtualHost {
    VirtualHost {
        name: crate::route::concat(&[host, ":", crate::route::itoa_u32(port).as_str()]),
        domains: vec![host.to_string()],
        routes,
        require_tls,
        ..Default::default()
    }
}

/// Snapshot preparation ([`crate::prepare`]): the route tables and vhosts of every HTTP(S)
/// server of every Gateway, one server at a time, for a label-less gateway proxy in each
/// namespace holding gateway workloads. A gateway proxy whose lookups differ, or that merges
/// several servers on one port into one vhost, builds what it misses itself.
pub(crate) fn prepare(snap: &isthmus_model::Snapshot) {
    for ns in crate::proxy_namespaces(snap, ProxyType::Router) {
        let node = crate::synthetic_proxy(ProxyType::Router, &ns);
        let mut ctx = Ctx::new(snap, &node);
        for gw in &snap.gateways {
            for (i, s) in gw.spec.servers.iter().enumerate() {
                let Some(p) = &s.port else { continue };
                let mut e = Entry {
                    gw,
                    index: i,
                    server: s,
                    port: p.number,
                    port_name: p.name.clone(),
                    protocol: Protocol::parse(&p.protocol),
                    target: p.number,
                    bind: s.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    gw_key: String::new(),
                    pairs: Vec::new(),
                };
                e.gw_key = e.gw_name();
                e.pairs = e.host_pairs();
                let terminating_http = s.tls.is_some()
                    && !e.is_passthrough()
                    && (e.protocol == Protocol::Https || e.protocol.is_http());
                if e.is_plain_http() || terminating_http {
                    route_config(&mut ctx, "", vec![&e]);
                }
            }
        }
    }
}
