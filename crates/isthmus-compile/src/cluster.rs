//! CDS/EDS: outbound service clusters with every DestinationRule field mapped as istiod maps it
//! (reference §3), plus BlackHole/Passthrough and sidecar inbound clusters.

use crate::policy::{merge_subset_ref, port_level, port_level_ref, PolicyRef};
use crate::scope::Ctx;
use crate::scope::FastMap;
use crate::tls;
use isthmus_api::istio::ConnectionPoolSettings;
use isthmus_model::{MergedDestinationRule, Protocol, Resolution, Service, ServicePort};
use isthmus_xds::cluster::{ClusterFilter, UseDownstreamProtocolConfig};
use isthmus_xds::core::Empty;
use isthmus_xds::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const MAX: u32 = u32::MAX;

fn default_thresholds() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: None,
            max_connections: Some(MAX),
            max_pending_requests: Some(MAX),
            max_requests: Some(MAX),
            max_retries: Some(MAX),
            track_remaining: true,
        }],
    }
}

fn clamp(v: Option<i64>) -> Option<u32> {
    v.filter(|x| *x > 0)
        .map(|x| u32::try_from(x).unwrap_or(MAX))
}

/// The outbound clusters (and EDS assignments) of one service, as one proxy kind builds them
/// with one DestinationRule.
struct ServiceClusters {
    clusters: Vec<Arc<Cluster>>,
    endpoints: Vec<Arc<ClusterLoadAssignment>>,
}

/// Per-snapshot cache of outbound service clusters, shared by every proxy compiled from the
/// snapshot (istiod keeps the same kind of CDS cache). A service's clusters are a pure function
/// of the service, the DestinationRule the proxy selected for it, and whether the proxy is a
/// gateway (everything else they read is mesh config, fixed per snapshot), so that triple is
/// the key; the snapshot being immutable keeps the addresses in the key stable. A service whose
/// build reported a diagnostic or referenced an SDS secret is not cached: those side effects
/// (some name the proxy) must happen on every compile.
#[derive(Default)]
pub(crate) struct ClusterCache {
    by_service: Mutex<FastMap<(usize, usize, bool), Arc<ServiceClusters>>>,
}

impl ClusterCache {
    fn get(&self, key: &(usize, usize, bool)) -> Option<Arc<ServiceClusters>> {
        let map = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }
    fn put(&self, key: (usize, usize, bool), v: ServiceClusters) {
        let mut map = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, Arc::new(v));
    }
}

pub fn build_clusters(ctx: &mut Ctx, cfg: &mut ProxyConfig) {
    let services = ctx.services.clone();
    let per_service = services.len() * 3;
    cfg.clusters.reserve(per_service + 4);
    cfg.endpoints.reserve(per_service);
    let cache = ctx.snap.extension::<ClusterCache>();
    let gateway = ctx.proxy.is_gateway();
    for svc in services {
        let dr = ctx.destination_rule(svc);
        if let Some(d) = dr {
            ctx.applied(d);
        }
        service_clusters(ctx, cfg, &cache, svc, dr, gateway);
    }
    cfg.clusters.push(Arc::new(blackhole(ctx)));
    cfg.clusters.push(Arc::new(passthrough(ctx, PASSTHROUGH)));
    if !ctx.proxy.is_gateway() {
        cfg.clusters
            .push(Arc::new(passthrough(ctx, INBOUND_PASSTHROUGH)));
        build_inbound(ctx, cfg);
    }
}

/// The outbound clusters of `svc` with `dr`, from the cache or built (and cached when the
/// build had no side effects).
fn service_clusters<'a>(
    ctx: &mut Ctx<'a>,
    cfg: &mut ProxyConfig,
    cache: &ClusterCache,
    svc: &'a Service,
    dr: Option<&'a MergedDestinationRule>,
    gateway: bool,
) {
    let key = (
        svc as *const Service as usize,
        dr.map_or(0, |d| d as *const MergedDestinationRule as usize),
        gateway,
    );
    if let Some(hit) = cache.get(&key) {
        cfg.clusters.extend(hit.clusters.iter().cloned());
        cfg.endpoints.extend(hit.endpoints.iter().cloned());
        return;
    }
    let (c0, e0) = (cfg.clusters.len(), cfg.endpoints.len());
    let (d0, s0) = (ctx.diags.len(), ctx.sds_ref_calls);
    for port in &svc.ports {
        if port.protocol == Protocol::Udp {
            continue;
        }
        let top = dr.and_then(|d| d.spec.traffic_policy.as_ref());
        let (base, _) = port_level_ref(top, port.port);
        build_one(ctx, cfg, svc, port, None, base, dr);
        if let Some(d) = dr {
            for s in &d.spec.subsets {
                let pol = merge_subset_ref(base, s.traffic_policy.as_ref(), port.port);
                build_one(ctx, cfg, svc, port, Some(s), pol, dr);
            }
        }
    }
    if ctx.diags.len() == d0 && ctx.sds_ref_calls == s0 {
        cache.put(
            key,
            ServiceClusters {
                clusters: cfg.clusters[c0..].to_vec(),
                endpoints: cfg.endpoints[e0..].to_vec(),
            },
        );
    }
}

/// Snapshot preparation ([`crate::prepare`]): the outbound clusters of every service, for
/// each namespace holding gateways or sidecars, with the DestinationRule a label-less proxy
/// there selects. A proxy that selects another DR (workloadSelector) misses the cache (the
/// key holds the DR) and builds its own, so this only moves work, never changes output.
pub(crate) fn prepare(snap: &isthmus_model::Snapshot) {
    let cache = snap.extension::<ClusterCache>();
    let no_labels = BTreeMap::new();
    for kind in [ProxyType::Router, ProxyType::Sidecar] {
        for ns in crate::proxy_namespaces(snap, kind) {
            let node = crate::synthetic_proxy(kind, &ns);
            let mut ctx = Ctx::new(snap, &node);
            let mut cfg = ProxyConfig::default();
            for svc in &snap.services {
                let dr = snap.destination_rule(&ns, &no_labels, svc);
                service_clusters(
                    &mut ctx,
                    &mut cfg,
                    &cache,
                    svc,
                    dr,
                    kind == ProxyType::Router,
                );
                cfg.clusters.clear();
                cfg.endpoints.clear();
            }
        }
    }
}

pub const PASSTHROUGH: &str = names::PASSTHROUGH_CLUSTER;
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

fn blackhole(ctx: &Ctx) -> Cluster {
    Cluster {
        name: names::BLACKHOLE_CLUSTER.into(),
        r#type: DiscoveryType::Static,
        connect_timeout: Some(ctx.connect_timeout),
        ..Default::default()
    }
}

fn passthrough(ctx: &Ctx, name: &str) -> Cluster {
    let mut c = Cluster {
        name: name.into(),
        r#type: DiscoveryType::OriginalDst,
        connect_timeout: Some(ctx.connect_timeout),
        lb_policy: "CLUSTER_PROVIDED".into(),
        circuit_breakers: Some(default_thresholds()),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS_KEY.into(),
        HttpProtocolOptions {
            use_downstream_protocol_config: Some(UseDownstreamProtocolConfig {
                http_protocol_options: Some(Empty {}),
                http2_protocol_options: Some(Default::default()),
            }),
            ..Default::default()
        },
    );
    c
}

fn endpoint_metadata(e: &isthmus_model::ServiceEndpoint) -> Metadata {
    let mut m = Metadata::default();
    if e.tls_mode == "istio" {
        m.filter_metadata
            .transport_socket_match
            .insert("tlsMode".into(), "istio".into());
    }
    if !e.workload.is_empty() {
        let app = e.labels.get("app").map(String::as_str).unwrap_or("");
        let version = e.labels.get("version").map(String::as_str).unwrap_or("");
        m.filter_metadata.istio = Some(IstioMetadata {
            workload: Some(format!(
                "{};{};{app};{version};Kubernetes",
                e.workload, e.namespace
            )),
            ..Default::default()
        });
    }
    m
}

fn load_assignment(
    name: &str,
    svc: &Service,
    port: u32,
    subset_labels: Option<&BTreeMap<String, String>>,
    dns: bool,
) -> ClusterLoadAssignment {
    let eps: Vec<LbEndpoint> = svc
        .endpoints_for_port(port)
        .filter(|e| subset_labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|e| LbEndpoint {
            endpoint: Endpoint {
                address: Address::new(e.address.clone(), e.port),
                hostname: if dns {
                    e.address.clone()
                } else {
                    String::new()
                },
            },
            health_status: None,
            metadata: if dns {
                Metadata::default()
            } else {
                endpoint_metadata(e)
            },
            load_balancing_weight: e.weight.filter(|w| *w > 0),
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: if eps.is_empty() {
            vec![]
        } else {
            vec![LocalityLbEndpoints {
                lb_endpoints: eps,
                ..Default::default()
            }]
        },
    }
}

/// The `istio.metadata_exchange` upstream filter every in-mesh cluster carries (built once).
fn metadata_exchange() -> ClusterFilter {
    static TEMPLATE: std::sync::OnceLock<ClusterFilter> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| ClusterFilter {
            name: "istio.metadata_exchange".into(),
            typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange", "protocol": "istio-peer-exchange"}),
        })
        .clone()
}

#[allow(clippy::too_many_arguments)]
fn build_one<'a>(
    ctx: &mut Ctx<'a>,
    cfg: &mut ProxyConfig,
    svc: &'a Service,
    port: &ServicePort,
    subset: Option<&'a isthmus_api::istio::Subset>,
    policy: Option<PolicyRef<'a>>,
    dr: Option<&'a MergedDestinationRule>,
) {
    let subset_name = subset.map(|s| s.name.as_str()).unwrap_or("");
    let name = crate::route::cluster_name(port.port, subset_name, &svc.hostname);
    let policy = policy.unwrap_or_default();
    let gateway = ctx.proxy.is_gateway();
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(ctx.connect_timeout),
        ..Default::default()
    };

    // Discovery type and load balancing.
    let lb_simple: Option<&str> = policy.load_balancer.and_then(|l| l.simple.as_deref());
    let mut resolution = svc.resolution;
    if resolution == Resolution::Passthrough && gateway {
        resolution = Resolution::ClientSideLb; // gateways cannot use the original destination
    }
    let orig_dst = resolution == Resolution::Passthrough || lb_simple == Some("PASSTHROUGH");
    if orig_dst {
        c.r#type = DiscoveryType::OriginalDst;
        c.lb_policy = "CLUSTER_PROVIDED".into();
    } else {
        match resolution {
            Resolution::Dns | Resolution::DnsRoundRobin => {
                c.r#type = if resolution == Resolution::Dns {
                    DiscoveryType::StrictDns
                } else {
                    DiscoveryType::LogicalDns
                };
                c.dns_lookup_family = "V4_ONLY".into();
                c.respect_dns_ttl = true;
                c.dns_refresh_rate = Duration::parse_go(&ctx.snap.mesh.dns_refresh_rate).ok();
                c.load_assignment = Some(load_assignment(
                    &name,
                    svc,
                    port.port,
                    subset.map(|s| &s.labels),
                    true,
                ));
            }
            _ => {
                c.r#type = DiscoveryType::Eds;
                c.eds_cluster_config = Some(EdsClusterConfig {
                    eds_config: ConfigSource::ads(),
                    service_name: name.clone(),
                });
                cfg.endpoints.push(Arc::new(load_assignment(
                    &name,
                    svc,
                    port.port,
                    subset.map(|s| &s.labels),
                    false,
                )));
            }
        }
        c.lb_policy = match lb_simple {
            Some("ROUND_ROBIN") => String::new(),
            Some("RANDOM") => "RANDOM".into(),
            _ => "LEAST_REQUEST".into(),
        };
        if let Some(ch) = policy
            .load_balancer
            .and_then(|l| l.consistent_hash.as_ref())
        {
            if ch.get("maglev").is_some() {
                c.lb_policy = "MAGLEV".into();
            } else {
                c.lb_policy = "RING_HASH".into();
                if let Some(min) = ch
                    .get("ringHash")
                    .and_then(|r| r.get("minimumRingSize"))
                    .or_else(|| ch.get("minimumRingSize"))
                {
                    c.ring_hash_lb_config =
                        Some(serde_json::json!({"minimumRingSize": min.clone()}));
                }
            }
        }
    }

    let no_meta = isthmus_model::ConfigMeta::default();
    let meta: Option<&isthmus_model::ConfigMeta> = dr.map(|d| &d.meta);
    let empty_pool = ConnectionPoolSettings::default();
    let pool = policy.connection_pool.unwrap_or(&empty_pool);

    // connectTimeout and circuit breakers (always emitted, Istio's MaxUint32 defaults).
    let mut th = default_thresholds();
    if let Some(tcp) = &pool.tcp {
        if let (Some(ct), Some(m)) = (&tcp.connect_timeout, meta) {
            if let Some(d) = ctx.parse_duration(
                m,
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
                ct,
            ) {
                c.connect_timeout = Some(d);
            }
        }
        if let Some(v) = clamp(tcp.max_connections) {
            th.thresholds[0].max_connections = Some(v);
        }
    }
    if let Some(http) = &pool.http {
        if let Some(v) = clamp(http.http1_max_pending_requests) {
            th.thresholds[0].max_pending_requests = Some(v);
        }
        if let Some(v) = clamp(http.http2_max_requests) {
            th.thresholds[0].max_requests = Some(v);
        }
        if let Some(v) = clamp(http.max_retries) {
            th.thresholds[0].max_retries = Some(v);
        }
    }
    c.circuit_breakers = Some(th);

    // TCP keepalive: mesh first, then the DR field by field.
    let mesh_ka = ctx.snap.mesh.tcp_keepalive.as_ref();
    let dr_ka = pool.tcp.as_ref().and_then(|t| t.tcp_keepalive.as_ref());
    if mesh_ka.is_some() || dr_ka.is_some() {
        let mut ka = TcpKeepalive::default();
        for (src, k) in [("mesh", mesh_ka), ("dr", dr_ka)] {
            let Some(k) = k else { continue };
            if let Some(p) = k.probes.filter(|p| *p > 0) {
                ka.keepalive_probes = Some(p);
            }
            let m = meta.unwrap_or(&no_meta);
            if let Some(t) = &k.time {
                if let Some(d) = if src == "dr" {
                    ctx.parse_duration(
                        m,
                        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
                        t,
                    )
                } else {
                    Duration::parse_go(t).ok()
                } {
                    ka.keepalive_time = Some(d.as_std().as_secs() as u32);
                }
            }
            if let Some(i) = &k.interval {
                if let Some(d) = if src == "dr" {
                    ctx.parse_duration(
                        m,
                        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval",
                        i,
                    )
                } else {
                    Duration::parse_go(i).ok()
                } {
                    ka.keepalive_interval = Some(d.as_std().as_secs() as u32);
                }
            }
        }
        c.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(ka),
        });
    }

    // HTTP protocol options.
    let mut opts = HttpProtocolOptions::default();
    let mut common = CommonHttpProtocolOptions::default();
    let m = meta.unwrap_or(&no_meta);
    if let Some(http) = &pool.http {
        if let Some(d) = http.idle_timeout.as_deref().and_then(|s| {
            ctx.parse_duration(m, "spec.trafficPolicy.connectionPool.http.idleTimeout", s)
        }) {
            common.idle_timeout = Some(d);
        }
        common.max_requests_per_connection = clamp(http.max_requests_per_connection);
    }
    if let Some(tcp) = &pool.tcp {
        if common.idle_timeout.is_none() {
            if let Some(d) = tcp.idle_timeout.as_deref().and_then(|s| {
                ctx.parse_duration(m, "spec.trafficPolicy.connectionPool.tcp.idleTimeout", s)
            }) {
                common.idle_timeout = Some(d);
            }
        }
        if let Some(d) = tcp.max_connection_duration.as_deref().and_then(|s| {
            ctx.parse_duration(
                m,
                "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
                s,
            )
        }) {
            common.max_connection_duration = Some(d);
        }
    }
    let h2_upgrade = pool
        .http
        .as_ref()
        .and_then(|h| h.h2_upgrade_policy.as_deref())
        .or(ctx.snap.mesh.h2_upgrade_policy.as_deref())
        == Some("UPGRADE")
        && port.protocol.is_http();
    let use_client = pool.http.as_ref().and_then(|h| h.use_client_protocol) == Some(true);
    let h2 = port.protocol.is_http2() || h2_upgrade;
    if use_client || (!gateway && port.protocol == Protocol::Unsupported) {
        opts.use_downstream_protocol_config = Some(UseDownstreamProtocolConfig {
            http_protocol_options: Some(Empty {}),
            http2_protocol_options: Some(Default::default()),
        });
    } else if h2 {
        let h2o = Http2ProtocolOptions {
            max_concurrent_streams: clamp(
                pool.http.as_ref().and_then(|h| h.max_concurrent_streams),
            ),
            connection_keepalive: None,
        };
        opts.explicit_http_config = Some(ExplicitHttpConfig {
            http_protocol_options: None,
            http2_protocol_options: Some(h2o),
        });
    }
    if common != CommonHttpProtocolOptions::default() {
        opts.common_http_protocol_options = Some(common);
    }

    // Outlier detection (only when the DR sets it) and the panic threshold.
    let mut lb_common = CommonLbConfig::default();
    if let Some(od) = policy.outlier_detection {
        let mut o = isthmus_xds::OutlierDetection {
            enforcing_success_rate: Some(0),
            ..Default::default()
        };
        if let Some(n) = od.consecutive_5xx_errors {
            let n = u32::try_from(n.max(0)).unwrap_or(MAX);
            o.consecutive_5xx = Some(n);
            o.enforcing_consecutive_5xx = Some(if n > 0 { 100 } else { 0 });
        }
        if let Some(n) = od.consecutive_gateway_errors {
            let n = u32::try_from(n.max(0)).unwrap_or(MAX);
            o.consecutive_gateway_failure = Some(n);
            o.enforcing_consecutive_gateway_failure = Some(if n > 0 { 100 } else { 0 });
        }
        if let Some(d) = od
            .interval
            .as_deref()
            .and_then(|s| ctx.parse_duration(m, "spec.trafficPolicy.outlierDetection.interval", s))
        {
            o.interval = Some(d);
        }
        if let Some(d) = od.base_ejection_time.as_deref().and_then(|s| {
            ctx.parse_duration(m, "spec.trafficPolicy.outlierDetection.baseEjectionTime", s)
        }) {
            o.base_ejection_time = Some(d);
        }
        o.max_ejection_percent = clamp(od.max_ejection_percent);
        if od.split_external_local_origin_errors == Some(true) {
            o.split_external_local_origin_errors = true;
            o.enforcing_local_origin_success_rate = Some(0);
            if let Some(n) = clamp(od.consecutive_local_origin_failures) {
                o.consecutive_local_origin_failure = Some(n);
                o.enforcing_consecutive_local_origin_failure = Some(100);
            }
        }
        lb_common.healthy_panic_threshold = Some(Percent {
            value: od.min_health_percent.unwrap_or(0).max(0) as f64,
        });
        c.outlier_detection = Some(o);
    }
    c.common_lb_config = Some(lb_common);

    // TLS: the DR's, else auto-mTLS.
    let mut istio_md = IstioMetadata::default();
    match (policy.tls, dr) {
        (Some(t), Some(d)) if t.mode() != "DISABLE" => {
            let up = tls::upstream(
                ctx,
                &d.meta,
                d.selector.is_some(),
                t,
                svc,
                port.port,
                subset_name,
                h2,
            );
            c.transport_socket = up.socket;
            if up.auto_sni {
                opts.upstream_http_protocol_options = Some(UpstreamHttpProtocolOptions {
                    auto_sni: true,
                    auto_san_validation: up.auto_san_validation,
                });
            }
            if up.alpn_override_false {
                istio_md.alpn_override = Some("false".into());
            }
        }
        (Some(_), _) => {}
        (None, _) => {
            if ctx.snap.mesh.enable_auto_mtls
                && !svc.mesh_external
                && c.r#type != DiscoveryType::OriginalDst
            {
                let sni = format!("outbound_.{}_.{subset_name}_.{}", port.port, svc.hostname);
                let ctxt = tls::istio_mutual_upstream(sni, &svc.service_accounts, h2);
                c.transport_socket_matches = vec![
                    TransportSocketMatch {
                        name: "tlsMode-istio".into(),
                        r#match: BTreeMap::from([("tlsMode".to_string(), "istio".to_string())]),
                        transport_socket: TransportSocket::upstream_tls(ctxt),
                    },
                    TransportSocketMatch {
                        name: "tlsMode-disabled".into(),
                        r#match: BTreeMap::new(),
                        transport_socket: TransportSocket::raw_buffer(),
                    },
                ];
            }
        }
    }
    // Explicit HTTP/1.1 when options exist but no protocol was chosen.
    if (opts.common_http_protocol_options.is_some()
        || opts.upstream_http_protocol_options.is_some())
        && opts.explicit_http_config.is_none()
        && opts.use_downstream_protocol_config.is_none()
    {
        opts.explicit_http_config = Some(ExplicitHttpConfig {
            http_protocol_options: Some(Empty {}),
            http2_protocol_options: None,
        });
    }
    if opts != HttpProtocolOptions::default() {
        c.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS_KEY.into(), opts);
    }

    // Metadata.
    if let Some(d) = dr {
        if !policy.is_empty() || subset.is_some() || d.spec.traffic_policy.is_some() {
            istio_md.config = Some(ctx.config_path(&d.meta));
        }
    }
    if subset.is_some() {
        istio_md.subset = Some(subset_name.to_string());
    }
    istio_md.services = vec![ServiceMetadata {
        host: svc.hostname.clone(),
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
    }];
    if svc.mesh_external {
        istio_md.external = Some(true);
    } else {
        c.filters = vec![metadata_exchange()];
    }
    c.metadata.filter_metadata.istio = Some(istio_md);
    cfg.clusters.push(Arc::new(c));
}

/// `inbound|PORT||` clusters for the Services selecting this sidecar's workload. Only the DR's
/// connectionPool applies (catch-all DR, port-level resolved); `Sidecar.ingress[].connectionPool`
/// overrides it.
fn build_inbound(ctx: &mut Ctx, cfg: &mut ProxyConfig) {
    let ports = crate::sidecar::inbound_ports(ctx);
    for (target, svc_port, svc) in ports {
        let name = format!("inbound|{target}||");
        if cfg.clusters.iter().any(|c| c.name == name) {
            continue;
        }
        let mut c = Cluster {
            name: name.clone(),
            r#type: DiscoveryType::Static,
            connect_timeout: Some(ctx.connect_timeout),
            lb_policy: String::new(),
            ..Default::default()
        };
        let cands = ctx
            .snap
            .dr_index
            .lookup(&ctx.proxy.namespace, &svc.namespace, &svc.hostname);
        let dr = isthmus_model::DestinationRuleIndex::select(
            &cands,
            &ctx.proxy.namespace,
            &ctx.proxy.labels,
            false,
        );
        let (pol, _) = port_level(dr.and_then(|d| d.spec.traffic_policy.as_ref()), svc_port);
        let mut pool = pol.and_then(|p| p.connection_pool);
        if let Some(sc) = ctx.sidecar {
            if let Some(ing) = sc
                .spec
                .ingress
                .iter()
                .find(|i| i.port.as_ref().is_some_and(|p| p.number == target))
            {
                if ing.connection_pool.is_some() {
                    pool = ing.connection_pool.clone();
                }
            } else if sc.spec.inbound_connection_pool.is_some() {
                pool = sc.spec.inbound_connection_pool.clone();
            }
        }
        let mut th = default_thresholds();
        if let Some(p) = &pool {
            if let Some(v) = p.tcp.as_ref().and_then(|t| clamp(t.max_connections)) {
                th.thresholds[0].max_connections = Some(v);
            }
            if let Some(v) = p
                .http
                .as_ref()
                .and_then(|h| clamp(h.http1_max_pending_requests))
            {
                th.thresholds[0].max_pending_requests = Some(v);
            }
            if let Some(v) = p.http.as_ref().and_then(|h| clamp(h.http2_max_requests)) {
                th.thresholds[0].max_requests = Some(v);
            }
            if let Some(d) = dr {
                c.metadata.filter_metadata.istio = Some(IstioMetadata {
                    config: Some(d.meta.config_path()),
                    ..Default::default()
                });
            }
        }
        c.circuit_breakers = Some(th);
        c.load_assignment = Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    endpoint: Endpoint {
                        address: Address::new("127.0.0.1", target),
                        hostname: String::new(),
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        cfg.clusters.push(Arc::new(c));
    }
}
