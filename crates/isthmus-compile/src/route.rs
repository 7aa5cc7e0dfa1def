//! VirtualService → Envoy routes (reference §5): first match wins, nothing after a catch-all,
//! per-match-block routes, gateways/port/sourceLabels filtering, weights, subsets, timeouts,
//! retries, redirects and direct responses.

use crate::diag;
use crate::scope::Ctx;
use isthmus_api::istio::{Destination, HttpMatchRequest, HttpRoute, RouteDestination, StringMatch};
use isthmus_api::Severity;
use isthmus_model::VirtualServiceConfig;
use isthmus_xds::core::{DataSource, RegexMatcher};
use isthmus_xds::listener::{TcpClusterWeight, TcpWeightedClusters};
use isthmus_xds::route::{
    ClusterWeight, Decorator, HeaderMatcher, HeaderValue, HeaderValueOption, MaxStreamDuration,
    QueryParameterMatcher, RedirectAction, RequestMirrorPolicy, RetryPolicy,
};
use isthmus_xds::*;
use std::collections::{BTreeMap, BTreeSet};

/// Where routes are being built.
pub struct RouteCtx<'b> {
    /// Port VS `match.port` is compared with (service port on sidecars, server port on gateways).
    pub port: u32,
    /// `mesh` for sidecars; `ns/name` of the gateways whose servers share this port.
    pub gateways: &'b BTreeSet<String>,
}

/// The VS-level gateways (`mesh` when none are listed).
pub fn vs_gateways(vs: &VirtualServiceConfig) -> Vec<String> {
    if vs.spec.gateways.is_empty() {
        vec!["mesh".to_string()]
    } else {
        vs.spec.gateways.clone()
    }
}

/// Whether a match block (its own `gateways`, else the VS's, else `mesh`) is bound to one of
/// `rc.gateways`; borrowed, because it runs for every match block of every visible VS.
fn gateways_hit(vs: &VirtualServiceConfig, match_gateways: &[String], rc: &RouteCtx) -> bool {
    let gws: &[String] = if match_gateways.is_empty() {
        &vs.spec.gateways
    } else {
        match_gateways
    };
    if gws.is_empty() {
        rc.gateways.contains("mesh")
    } else {
        gws.iter().any(|g| rc.gateways.contains(g))
    }
}

fn source_matches(ctx: &Ctx, labels: &BTreeMap<String, String>, ns: Option<&str>) -> bool {
    labels
        .iter()
        .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
        && ns.is_none_or(|n| n == ctx.proxy.namespace)
}

fn match_applies(
    ctx: &Ctx,
    vs: &VirtualServiceConfig,
    m: &HttpMatchRequest,
    rc: &RouteCtx,
) -> bool {
    if m.port.is_some_and(|p| p != rc.port) {
        return false;
    }
    if !gateways_hit(vs, &m.gateways, rc) {
        return false;
    }
    source_matches(ctx, &m.source_labels, m.source_namespace.as_deref())
}

fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    if let Some(e) = &m.exact {
        return Some(StringMatcher::exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        return Some(StringMatcher::prefix(p.clone()));
    }
    if let Some(r) = &m.regex {
        return Some(StringMatcher::regex(r.clone()));
    }
    None
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    let sm = string_matcher(m);
    let present = sm.is_none() || m.regex.as_deref() == Some("*");
    HeaderMatcher {
        name: name.to_string(),
        string_match: if present { None } else { sm },
        present_match: if present { Some(true) } else { None },
        invert_match: invert,
        treat_missing_header_as_empty: invert,
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        case_sensitive: Some(true),
        ..Default::default()
    };
    let Some(m) = m else {
        out.prefix = Some("/".into());
        return out;
    };
    match &m.uri {
        Some(u) if u.exact.is_some() => out.path = u.exact.clone(),
        Some(u) if u.prefix.is_some() => out.prefix = u.prefix.clone(),
        Some(u) if u.regex.is_some() => {
            out.safe_regex = Some(RegexMatcher {
                regex: u.regex.clone().unwrap_or_default(),
            })
        }
        _ => out.prefix = Some("/".into()),
    }
    if m.ignore_uri_case {
        out.case_sensitive = Some(false);
    }
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        headers.push(header_matcher(&k.to_ascii_lowercase(), v, false));
    }
    for (k, v) in &m.without_headers {
        headers.push(header_matcher(&k.to_ascii_lowercase(), v, true));
    }
    if let Some(v) = &m.method {
        headers.push(header_matcher(":method", v, false));
    }
    if let Some(v) = &m.authority {
        headers.push(header_matcher(":authority", v, false));
    }
    if let Some(v) = &m.scheme {
        headers.push(header_matcher(":scheme", v, false));
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    out.headers = headers;
    out.query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| {
            let sm = string_matcher(v);
            QueryParameterMatcher {
                name: k.clone(),
                present_match: if sm.is_none() { Some(true) } else { None },
                string_match: sm,
            }
        })
        .collect();
    out
}

/// `IsCatchAllRoute`: matches every request (prefix `/` or regex `.*`, nothing else).
pub fn is_catch_all(m: &RouteMatch) -> bool {
    let path_all = m.prefix.as_deref() == Some("/")
        || m.safe_regex
            .as_ref()
            .is_some_and(|r| r.regex == "*" || r.regex == ".*");
    path_all && m.headers.is_empty() && m.query_parameters.is_empty()
}

/// The cluster a destination maps to: `outbound|PORT|SUBSET|HOST`.
pub fn destination_cluster<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    d: &'a Destination,
    default_port: u32,
) -> String {
    let svc = ctx.service(&d.host);
    let port = d
        .port
        .as_ref()
        .map(|p| p.number)
        .filter(|p| *p > 0)
        .or_else(|| svc.filter(|s| s.ports.len() == 1).map(|s| s.ports[0].port))
        .unwrap_or(default_port);
    let subset: &'a str = d.subset.as_deref().unwrap_or("");
    match svc {
        None => ctx.diags.push(diag(&vs.meta, Severity::Warning, "DestinationHostNotFound", Some("spec.route.destination.host"), format!("destination host {:?} is not a service visible to {}/{}; requests routed to it fail with 503 NC (no cluster)", d.host, ctx.proxy.namespace, ctx.proxy.name))),
        Some(s) => {
            if !subset.is_empty() {
                ctx.used_subsets.insert((s.hostname.as_str(), subset));
                let dr = ctx.destination_rule(s);
                if !dr.is_some_and(|dr| dr.spec.subsets.iter().any(|x| x.name == subset)) {
                    ctx.diags.push(diag(&vs.meta, Severity::Warning, "SubsetNotFound", Some("spec.route.destination.subset"), format!("subset {subset:?} of {:?} is defined by no DestinationRule visible to {}/{}; requests routed to it fail with 503 NC", d.host, ctx.proxy.namespace, ctx.proxy.name)));
                }
            }
            if s.port(port).is_none() {
                ctx.diags.push(diag(&vs.meta, Severity::Warning, "DestinationPortNotFound", Some("spec.route.destination.port"), format!("service {:?} has no port {port}; requests routed to it fail with 503 NC", d.host)));
            }
        }
    }
    cluster_name(port, subset, &d.host)
}

/// `outbound|PORT|SUBSET|HOST`, built with one exact allocation (this runs for every cluster
/// and route destination of every proxy).
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    let buf = itoa_u32(port);
    let p = buf.as_str();
    let mut s = String::with_capacity(11 + p.len() + subset.len() + host.len());
    s.push_str("outbound|");
    s.push_str(p);
    s.push('|');
    s.push_str(subset);
    s.push('|');
    s.push_str(host);
    s
}

/// The concatenation of `parts` with one exact allocation (`format!` costs ~10x as much on the
/// per-route and per-vhost names).
pub fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// A port number as decimal text on the stack.
pub struct PortText {
    buf: [u8; 10],
    start: usize,
}

impl PortText {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

pub fn itoa_u32(mut n: u32) -> PortText {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    PortText { buf, start: i }
}

/// Istio's default retry policy. Built once and cloned: the `json!` host predicate costs a map
/// insert per route otherwise, and every route without `retries` carries this policy.
fn default_retry() -> std::sync::Arc<RetryPolicy> {
    static TEMPLATE: std::sync::OnceLock<std::sync::Arc<RetryPolicy>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| std::sync::Arc::new(build_default_retry()))
        .clone()
}

fn build_default_retry() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(2),
        per_try_timeout: None,
        retry_host_predicate: vec![
            serde_json::json!({"name": "envoy.retry_host_predicates.previous_hosts", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}),
        ],
        host_selection_retry_max_attempts: "5".into(),
        retriable_status_codes: vec![503],
    }
}

fn headers_to_add(ops: &isthmus_api::istio::HeaderOperations) -> Vec<HeaderValueOption> {
    let mut v: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, val)| HeaderValueOption {
            header: HeaderValue {
                key: k.clone(),
                value: val.clone(),
            },
            append_action: "OVERWRITE_IF_EXISTS_OR_ADD".into(),
        })
        .collect();
    v.extend(ops.add.iter().map(|(k, val)| HeaderValueOption {
        header: HeaderValue {
            key: k.clone(),
            value: val.clone(),
        },
        append_action: String::new(),
    }));
    v
}

fn action<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    h: &'a HttpRoute,
    default_port: u32,
    route: &mut Route,
) {
    if let Some(dr) = &h.direct_response {
        route.direct_response = Some(DirectResponseAction {
            status: dr.status,
            body: dr.body.as_ref().map(|b| DataSource {
                inline_string: b.string.clone(),
                inline_bytes: b.bytes.clone(),
                filename: None,
            }),
        });
        return;
    }
    if let Some(r) = &h.redirect {
        route.redirect = Some(RedirectAction {
            https_redirect: None,
            scheme_redirect: r.scheme.clone(),
            host_redirect: r.authority.clone(),
            port_redirect: r.port,
            path_redirect: r.uri.clone(),
            response_code: match r.redirect_code {
                Some(302) => "FOUND".into(),
                Some(303) => "SEE_OTHER".into(),
                Some(307) => "TEMPORARY_REDIRECT".into(),
                Some(308) => "PERMANENT_REDIRECT".into(),
                _ => String::new(),
            },
        });
        return;
    }
    let mut a = RouteAction::default();
    let timeout = h
        .timeout
        .as_deref()
        .and_then(|t| ctx.parse_duration(&vs.meta, "spec.http.timeout", t))
        .unwrap_or(Duration::ZERO);
    a.timeout = Some(timeout);
    a.max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: Some(timeout),
        grpc_timeout_header_max: Some(timeout),
    });
    a.retry_policy = match &h.retries {
        None => Some(default_retry()),
        Some(r) if r.attempts <= 0 => None,
        Some(r) => {
            let mut p = build_default_retry();
            p.num_retries = Some(u32::try_from(r.attempts).unwrap_or(u32::MAX));
            if let Some(on) = &r.retry_on {
                p.retry_on = on.clone();
                p.retriable_status_codes = on
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
            }
            p.per_try_timeout = r
                .per_try_timeout
                .as_deref()
                .and_then(|t| ctx.parse_duration(&vs.meta, "spec.http.retries.perTryTimeout", t));
            Some(std::sync::Arc::new(p))
        }
    };
    if let Some(rw) = &h.rewrite {
        a.prefix_rewrite = rw.uri.clone();
        a.host_rewrite_literal = rw.authority.clone();
    }
    if let Some(m) = &h.mirror {
        let c = destination_cluster(ctx, vs, m, default_port);
        a.request_mirror_policies = vec![RequestMirrorPolicy { cluster: c, runtime_fraction: h.mirror_percentage.as_ref().map(|p| serde_json::json!({"defaultValue": {"numerator": (p.value * 10000.0) as u64, "denominator": "MILLION"}})) }];
    }
    // A single destination (the common case) needs no list.
    let single = match h.route.as_slice() {
        [d] => Some(destination_cluster(ctx, vs, &d.destination, default_port)),
        _ => None,
    };
    let mut dests: Vec<(String, i64)> = if single.is_some() {
        Vec::new()
    } else {
        h.route
            .iter()
            .map(|d| {
                (
                    destination_cluster(ctx, vs, &d.destination, default_port),
                    d.weight,
                )
            })
            .collect()
    };
    if let Some(first) = h.route.first() {
        let port = first
            .destination
            .port
            .as_ref()
            .map(|p| p.number)
            .unwrap_or(default_port);
        route.decorator = Some(Decorator {
            operation: concat(&[&first.destination.host, ":", itoa_u32(port).as_str(), "/*"]),
        });
    }
    if single.is_some() {
        a.cluster = single;
    } else if dests.len() == 1 {
        a.cluster = dests.pop().map(|(n, _)| n);
    } else if dests.len() > 1 {
        a.weighted_clusters = Some(WeightedCluster {
            clusters: dests
                .into_iter()
                .filter(|(_, w)| *w > 0)
                .map(|(n, w)| ClusterWeight {
                    name: n,
                    weight: u32::try_from(w).unwrap_or(0),
                })
                .collect(),
            total_weight: None,
        });
    }
    for rd in &h.route {
        if let Some(hd) = &rd.headers {
            if let Some(req) = &hd.request {
                route.request_headers_to_add.extend(headers_to_add(req));
                route
                    .request_headers_to_remove
                    .extend(req.remove.iter().cloned());
            }
            // Istio folds a single destination's response headers into the route (with
            // several destinations they belong to the weighted cluster entry, which the IR
            // does not carry yet).
            if let (Some(resp), 1) = (&hd.response, h.route.len()) {
                route.response_headers_to_add.extend(headers_to_add(resp));
                route
                    .response_headers_to_remove
                    .extend(resp.remove.iter().cloned());
            }
        }
    }
    route.route = Some(a);
}

/// Translates one VirtualService's `http` routes for one listener/server port. Returns the
/// routes and whether a catch-all route ended the list.
pub fn translate_http<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    rc: &RouteCtx,
    default_port: u32,
) -> (Vec<Route>, bool) {
    let mut out = Vec::new();
    let mut config_path: Option<String> = None;
    for (i, h) in vs.spec.http.iter().enumerate() {
        if h.delegate.is_some() {
            ctx.diags.push(diag(&vs.meta, Severity::Warning, "DelegateUnsupported", Some("spec.http.delegate"), format!("http[{i}] delegates; delegation is not compiled by isthmus yet, the route is skipped")));
            continue;
        }
        // One route per applicable match block; a rule without matches is one block.
        let blocks = if h.matches.is_empty() {
            usize::from(gateways_hit(vs, &[], rc))
        } else {
            h.matches.len()
        };
        for b in 0..blocks {
            let m: Option<&HttpMatchRequest> = match h.matches.get(b) {
                None => None,
                Some(m) if match_applies(ctx, vs, m, rc) => Some(m),
                Some(_) => continue,
            };
            let mut r = Route {
                r#match: route_match(m),
                ..Default::default()
            };
            r.name = match (h.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
                (Some(a), Some(b)) => format!("{a}.{b}"),
                (Some(a), None) => a.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => String::new(),
            };
            let path = config_path
                .get_or_insert_with(|| vs.meta.config_path())
                .clone();
            r.metadata.filter_metadata.istio = Some(IstioMetadata {
                config: Some(path),
                ..Default::default()
            });
            action(ctx, vs, h, default_port, &mut r);
            if let Some(hd) = &h.headers {
                if let Some(req) = &hd.request {
                    r.request_headers_to_add.extend(headers_to_add(req));
                    r.request_headers_to_remove
                        .extend(req.remove.iter().cloned());
                }
                if let Some(resp) = &hd.response {
                    r.response_headers_to_add.extend(headers_to_add(resp));
                    r.response_headers_to_remove
                        .extend(resp.remove.iter().cloned());
                }
            }
            let catch_all = is_catch_all(&r.r#match);
            out.push(r);
            if catch_all {
                let shadowed = vs.spec.http[i + 1..]
                    .iter()
                    .filter(|later| {
                        if later.matches.is_empty() {
                            gateways_hit(vs, &[], rc)
                        } else {
                            later.matches.iter().any(|m| match_applies(ctx, vs, m, rc))
                        }
                    })
                    .count();
                if shadowed > 0 {
                    ctx.diags.push(diag(&vs.meta, Severity::Info, "RoutesAfterCatchAll", Some("spec.http"), format!("http[{i}] matches every request; the {shadowed} route(s) after it that apply here (port {}) are never used", rc.port)));
                }
                return (out, true);
            }
        }
    }
    (out, false)
}

/// The default route istiod writes for a service without a VirtualService.
pub fn default_route(cluster: &str, host: &str, port: u32) -> Route {
    Route {
        name: "default".into(),
        r#match: RouteMatch {
            prefix: Some("/".into()),
            case_sensitive: None,
            ..Default::default()
        },
        route: Some(RouteAction {
            cluster: Some(cluster.to_string()),
            timeout: Some(Duration::ZERO),
            retry_policy: Some(default_retry()),
            max_stream_duration: Some(MaxStreamDuration {
                max_stream_duration: Some(Duration::ZERO),
                grpc_timeout_header_max: Some(Duration::ZERO),
            }),
            ..Default::default()
        }),
        decorator: Some(Decorator {
            operation: concat(&[host, ":", itoa_u32(port).as_str(), "/*"]),
        }),
        ..Default::default()
    }
}

/// tcp_proxy for a list of L4 route destinations.
pub fn tcp_proxy_for<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    route: &'a [RouteDestination],
    default_port: u32,
    stat_prefix_fallback: &str,
) -> TcpProxy {
    let dests: Vec<(String, i64)> = route
        .iter()
        .map(|d| {
            (
                destination_cluster(ctx, vs, &d.destination, default_port),
                d.weight,
            )
        })
        .collect();
    let mut t = TcpProxy {
        stat_prefix: stat_prefix_fallback.to_string(),
        ..Default::default()
    };
    if dests.len() == 1 {
        t.stat_prefix = dests[0].0.clone();
        t.cluster = Some(dests[0].0.clone());
    } else {
        t.weighted_clusters = Some(TcpWeightedClusters {
            clusters: dests
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(n, w)| TcpClusterWeight {
                    name: n.clone(),
                    weight: u32::try_from(*w).unwrap_or(0),
                })
                .collect(),
        });
    }
    t
}

/// Whether a L4 (tcp/tls) match block applies here.
pub fn l4_applies(
    ctx: &Ctx,
    vs: &VirtualServiceConfig,
    port: Option<u32>,
    gateways: &[String],
    source_labels: &BTreeMap<String, String>,
    source_ns: Option<&str>,
    rc: &RouteCtx,
) -> bool {
    if port.is_some_and(|p| p != rc.port) {
        return false;
    }
    gateways_hit(vs, gateways, rc) && source_matches(ctx, source_labels, source_ns)
}

/// The VirtualService `headers` mapping (route level and per destination), compiled for a
/// gateway from YAML as users write it.
#[cfg(test)]
mod headers_mapping_tests {
    const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ingressgateway, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy, image: auto}]}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - headers:
      request: {set: {x-route: r}}
      response: {remove: [server]}
    route:
    - destination: {host: app.example.com, port: {number: 80}}
      headers:
        request: {add: {x-dest: d}}
        response: {set: {x-dest-resp: dr}, remove: [x-internal]}
"#;

    #[test]
    fn single_destination_headers_fold_into_the_route() {
        let loaded =
            isthmus_api::load_str("inline.yaml", YAML, &isthmus_api::LoadOptions::default());
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let snap = isthmus_model::Snapshot::build(
            &loaded.objects,
            isthmus_api::MeshConfig::default(),
            "cluster.local",
        )
        .0;
        let node = snap
            .resolve_proxy("ingressgateway.istio-system", None)
            .expect("gateway proxy");
        let cfg = crate::compile(&snap, &node).config;
        let route = cfg
            .routes
            .iter()
            .flat_map(|rc| rc.virtual_hosts.iter())
            .flat_map(|vh| vh.routes.iter())
            .find(|r| r.route.is_some())
            .expect("a routed route");
        let kv = |v: &[isthmus_xds::route::HeaderValueOption]| -> Vec<(String, String, String)> {
            v.iter()
                .map(|h| {
                    (
                        h.header.key.clone(),
                        h.header.value.clone(),
                        h.append_action.clone(),
                    )
                })
                .collect()
        };
        let req = kv(&route.request_headers_to_add);
        assert!(
            req.contains(&("x-dest".into(), "d".into(), String::new())),
            "{req:?}"
        );
        assert!(
            req.contains(&(
                "x-route".into(),
                "r".into(),
                "OVERWRITE_IF_EXISTS_OR_ADD".into()
            )),
            "{req:?}"
        );
        let resp = kv(&route.response_headers_to_add);
        assert!(
            resp.contains(&(
                "x-dest-resp".into(),
                "dr".into(),
                "OVERWRITE_IF_EXISTS_OR_ADD".into()
            )),
            "{resp:?}"
        );
        assert!(route
            .response_headers_to_remove
            .contains(&"x-internal".to_string()));
        assert!(route
            .response_headers_to_remove
            .contains(&"server".to_string()));
    }
}
