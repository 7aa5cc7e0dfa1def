//! VirtualService → Envoy routes (reference §5): first match wins, nothing after a catch-all,
//! per-match-block routes, gateways/port/sourceLabels filtering, weights, subsets, timeouts,
//! retries, redirects and direct responses.

use crate::diag;
use crate::scope::Ctx;
use isthmus_api::istio::{
    grpc_status_code, CorsPolicy, Destination, Headers, HttpFaultInjection, HttpMatchRequest,
    HttpRetry, HttpRewrite, HttpRoute, RouteDestination, StringMatch,
};
use isthmus_api::Severity;
use isthmus_model::VirtualServiceConfig;
use isthmus_xds::core::{DataSource, RegexMatcher};
use isthmus_xds::listener::{TcpClusterWeight, TcpWeightedClusters};
use isthmus_xds::route::{
    ClusterWeight, CorsPolicy as XCorsPolicy, Decorator, FaultAbort as XFaultAbort,
    FaultDelay as XFaultDelay, FractionalPercent, HeaderMatcher, HeaderValue, HeaderValueOption,
    HttpFault, MaxStreamDuration, PerFilterConfig, QueryParameterMatcher, RedirectAction,
    RequestMirrorPolicy, RetryPolicy, RuntimeFractionalPercent, CORS_FILTER, FAULT_FILTER,
};
use isthmus_xds::*;
use std::borrow::Cow;
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
    let port = d.port.as_ref().map(|p| p.number).filter(|p| *p > 0);
    cluster_for(
        ctx,
        vs,
        &d.host,
        d.subset.as_deref().unwrap_or(""),
        port,
        default_port,
    )
}

/// [`destination_cluster`] for a destination that does not live in the snapshot (decoded
/// `mirrors`): the subset is recorded as used under the DestinationRule's own copy of its name.
fn cluster_for<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    host: &str,
    subset: &str,
    port: Option<u32>,
    default_port: u32,
) -> String {
    let svc = ctx.service(host);
    let port = port
        .or_else(|| svc.filter(|s| s.ports.len() == 1).map(|s| s.ports[0].port))
        .unwrap_or(default_port);
    match svc {
        None => ctx.diags.push(diag(&vs.meta, Severity::Warning, "DestinationHostNotFound", Some("spec.route.destination.host"), format!("destination host {host:?} is not a service visible to {}/{}; requests routed to it fail with 503 NC (no cluster)", ctx.proxy.namespace, ctx.proxy.name))),
        Some(s) => {
            if !subset.is_empty() {
                let dr = ctx.destination_rule(s);
                match dr.and_then(|dr| dr.spec.subsets.iter().find(|x| x.name == subset)) {
                    Some(x) => {
                        ctx.used_subsets.insert((s.hostname.as_str(), x.name.as_str()));
                    }
                    None => ctx.diags.push(diag(&vs.meta, Severity::Warning, "SubsetNotFound", Some("spec.route.destination.subset"), format!("subset {subset:?} of {host:?} is defined by no DestinationRule visible to {}/{}; requests routed to it fail with 503 NC", ctx.proxy.namespace, ctx.proxy.name))),
                }
            }
            if s.port(port).is_none() {
                ctx.diags.push(diag(&vs.meta, Severity::Warning, "DestinationPortNotFound", Some("spec.route.destination.port"), format!("service {host:?} has no port {port}; requests routed to it fail with 503 NC")));
            }
        }
    }
    cluster_name(port, subset, host)
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

/// One HTTP route as it is compiled: a VirtualService `http` entry, or a delegate's entry
/// merged into the root's (Istio `mergeHTTPRoute`). Everything borrows from the snapshot except
/// a merged route's name and matches, so destinations keep the snapshot's lifetime.
struct HttpView<'a> {
    name: Option<Cow<'a, str>>,
    matches: Cow<'a, [HttpMatchRequest]>,
    /// Where `route`, `redirect` and `directResponse` come from (always the leaf route).
    leaf: &'a HttpRoute,
    /// The VS whose namespace resolved the leaf's short names (root or delegate); destination
    /// diagnostics name it.
    leaf_vs: &'a VirtualServiceConfig,
    rewrite: Option<&'a HttpRewrite>,
    timeout: Option<&'a str>,
    retries: Option<&'a HttpRetry>,
    /// Routes whose `fault` / `corsPolicy` / `headers` / mirror settings apply (leaf, or the
    /// root's when the leaf leaves them unset).
    fault_from: &'a HttpRoute,
    cors_from: &'a HttpRoute,
    headers: Option<&'a Headers>,
    mirror_from: &'a HttpRoute,
    mirror_pct_from: &'a HttpRoute,
    mirror_percent_from: &'a HttpRoute,
    mirrors_from: (&'a HttpRoute, &'a VirtualServiceConfig),
}

impl<'a> HttpView<'a> {
    fn plain(vs: &'a VirtualServiceConfig, h: &'a HttpRoute) -> Self {
        HttpView {
            name: h.name.as_deref().map(Cow::Borrowed),
            matches: Cow::Borrowed(&h.matches),
            leaf: h,
            leaf_vs: vs,
            rewrite: h.rewrite.as_ref(),
            timeout: h.timeout.as_deref(),
            retries: h.retries.as_ref(),
            fault_from: h,
            cors_from: h,
            headers: h.headers.as_ref(),
            mirror_from: h,
            mirror_pct_from: h,
            mirror_percent_from: h,
            mirrors_from: (h, vs),
        }
    }

    /// Istio `mergeHTTPRoute(root, delegate)`: `None` when a delegate match conflicts with
    /// every root match (the delegate route is dropped).
    fn merged(
        root_vs: &'a VirtualServiceConfig,
        root: &'a HttpRoute,
        dvs: &'a VirtualServiceConfig,
        leaf: &'a HttpRoute,
    ) -> Option<Self> {
        let matches = merge_matches(&root.matches, &leaf.matches)?;
        let name = match (leaf.name.as_deref(), root.name.as_deref()) {
            (None | Some(""), r) => r.map(Cow::Borrowed),
            (Some(l), None | Some("")) => Some(Cow::Borrowed(l)),
            (Some(l), Some(r)) => Some(Cow::Owned(concat(&[r, "-", l]))),
        };
        let pick = |has: fn(&HttpRoute) -> bool| if has(leaf) { leaf } else { root };
        Some(HttpView {
            name,
            matches: Cow::Owned(matches),
            leaf,
            leaf_vs: dvs,
            rewrite: leaf.rewrite.as_ref().or(root.rewrite.as_ref()),
            timeout: leaf.timeout.as_deref().or(root.timeout.as_deref()),
            retries: leaf.retries.as_ref().or(root.retries.as_ref()),
            fault_from: pick(|h| h.fault.is_some()),
            cors_from: pick(|h| h.cors_policy.is_some()),
            headers: leaf.headers.as_ref().or(root.headers.as_ref()),
            mirror_from: pick(|h| h.mirror.is_some()),
            mirror_pct_from: pick(|h| h.mirror_percentage.is_some()),
            mirror_percent_from: pick(|h| h.mirror_percent.is_some()),
            mirrors_from: if leaf.mirrors.is_empty() {
                (root, root_vs)
            } else {
                (leaf, dvs)
            },
        })
    }
}

/// Istio `mergeHTTPMatchRequests`: every delegate match must fit inside at least one root
/// match (it yields one merged match per root match it fits); one that fits none drops the
/// whole delegate route.
fn merge_matches(
    root: &[HttpMatchRequest],
    leaf: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in leaf {
        let mut found = false;
        for r in root {
            if match_conflict(r, sub) {
                continue;
            }
            out.push(merge_match(r, sub));
            found = true;
        }
        if !found {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Istio `mergeHTTPMatchRequest`: the delegate's fields win; unset ones come from the root.
/// Source labels, source namespace and gateways are the delegate's (they do not apply to
/// delegates, whose root decides where they are bound).
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = match (leaf.name.as_deref(), root.name.as_deref()) {
        (None | Some(""), r) => r.map(String::from),
        (Some(l), None | Some("")) => Some(l.to_string()),
        (Some(l), Some(r)) => Some(concat(&[r, "-", l])),
    };
    out.uri = leaf.uri.clone().or_else(|| root.uri.clone());
    out.scheme = leaf.scheme.clone().or_else(|| root.scheme.clone());
    out.method = leaf.method.clone().or_else(|| root.method.clone());
    out.authority = leaf.authority.clone().or_else(|| root.authority.clone());
    let union = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        let mut m = r.clone();
        m.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    if out.port.is_none_or(|p| p == 0) {
        out.port = root.port;
    }
    out
}

/// Istio `hasConflict`: whether the delegate match can match a request the root match cannot.
fn match_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    if leaf
        .headers
        .iter()
        .any(|(k, l)| string_match_conflict(root.headers.get(k), Some(l)))
        || leaf
            .without_headers
            .iter()
            .any(|(k, l)| string_match_conflict(root.without_headers.get(k), Some(l)))
        || leaf
            .query_params
            .iter()
            .any(|(k, l)| string_match_conflict(root.query_params.get(k), Some(l)))
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    matches!((root.port, leaf.port), (Some(r), Some(l)) if r > 0 && l > 0 && r != l)
}

/// Istio `stringMatchConflict`: regexes always conflict; an exact root needs the same exact
/// leaf; a prefix root needs a leaf (exact or prefix) that starts with it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(r), Some(l)) = (root, leaf) else {
        return false;
    };
    let nz = |o: &Option<String>| o.as_deref().filter(|s| !s.is_empty()).map(String::from);
    if nz(&r.regex).is_some() || nz(&l.regex).is_some() {
        return true;
    }
    if let Some(exact) = nz(&r.exact) {
        return nz(&l.prefix).is_some() || nz(&l.exact).as_deref() != Some(exact.as_str());
    }
    if let Some(prefix) = nz(&r.prefix) {
        if let Some(lp) = nz(&l.prefix) {
            return !lp.starts_with(&prefix);
        }
        if let Some(le) = nz(&l.exact) {
            return !le.starts_with(&prefix);
        }
    }
    true
}

/// The routes of `vs`'s `http` list with delegates expanded (Istio
/// `mergeVirtualServicesIfNeeded`): a `delegate` entry is replaced by the delegate VS's routes
/// merged into it. A missing or unexported delegate drops that one entry, with a diagnostic
/// on the root; the delegate's own `hosts`/`gateways` play no part.
fn expand_delegates<'a>(ctx: &mut Ctx<'a>, vs: &'a VirtualServiceConfig) -> Vec<HttpView<'a>> {
    let mut out = Vec::with_capacity(vs.spec.http.len());
    for (i, h) in vs.spec.http.iter().enumerate() {
        let Some(d) = &h.delegate else {
            out.push(HttpView::plain(vs, h));
            continue;
        };
        let ns = d
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&vs.meta.namespace);
        let field = format!("spec.http[{i}].delegate");
        let found =
            ctx.snap.virtual_services.iter().find(|c| {
                c.meta.name == d.name && c.meta.namespace == ns && c.spec.hosts.is_empty()
            });
        let Some(dvs) = found else {
            let has_hosts = ctx
                .snap
                .virtual_services
                .iter()
                .any(|c| c.meta.name == d.name && c.meta.namespace == ns);
            let why = if has_hosts {
                "exists but lists hosts, so it is a root VirtualService, not a delegate (delegates have no hosts)"
            } else {
                "does not exist"
            };
            ctx.diags.push(diag(&vs.meta, Severity::Warning, "DelegateNotFound", Some(&field), format!("http[{i}] delegates to VirtualService {ns}/{}, which {why}; istiod drops this http route, so requests it would match fall through to the next route", d.name)));
            continue;
        };
        if !isthmus_model::export_visible(
            &dvs.spec.export_to,
            &dvs.meta.namespace,
            &vs.meta.namespace,
        ) {
            ctx.diags.push(diag(&vs.meta, Severity::Warning, "DelegateNotExported", Some(&field), format!("http[{i}] delegates to VirtualService {ns}/{}, whose exportTo {:?} does not include namespace {:?}; istiod drops this http route", d.name, dvs.spec.export_to, vs.meta.namespace)));
            continue;
        }
        for (j, leaf) in dvs.spec.http.iter().enumerate() {
            match HttpView::merged(vs, h, dvs, leaf) {
                Some(v) => out.push(v),
                None => ctx.diags.push(diag(&dvs.meta, Severity::Warning, "DelegateMatchConflict", Some(&format!("spec.http[{j}].match")), format!("http[{j}] of delegate {ns}/{} has a match that fits none of the matches of root {}/{} http[{i}] (a delegate may only narrow the root's uri/scheme/method/authority/header/query matches, never use regex); istiod drops this route", d.name, vs.meta.namespace, vs.meta.name))),
            }
        }
    }
    out
}

/// Istio `MirrorPercent`: `mirrorPercentage`, else the deprecated `mirrorPercent`, else 100%;
/// an explicit 0 disables the mirror.
fn mirror_fraction(pct: &HttpRoute, pct_int: &HttpRoute) -> Option<RuntimeFractionalPercent> {
    let default_value = if let Some(p) = &pct.mirror_percentage {
        (p.value > 0.0).then(|| FractionalPercent::from_percent(p.value))?
    } else if let Some(n) = pct_int.mirror_percent_value() {
        (n > 0).then(|| FractionalPercent::from_integer(n))?
    } else {
        FractionalPercent::from_integer(100)
    };
    Some(RuntimeFractionalPercent { default_value })
}

/// Istio `TranslateFault`. A delay without `fixedDelay` (exponential) and an abort without a
/// supported error type are dropped, as istiod drops them; no delay and no abort → no filter
/// config at all.
fn translate_fault(
    ctx: &mut Ctx,
    meta: &isthmus_model::ConfigMeta,
    f: &HttpFaultInjection,
) -> Option<HttpFault> {
    let mut out = HttpFault::default();
    if let Some(d) = &f.delay {
        let percentage = match &d.percentage {
            Some(p) => FractionalPercent::from_percent(p.value),
            None => FractionalPercent::from_integer(u32::try_from(d.percent).unwrap_or(0)),
        };
        match &d.fixed_delay {
            Some(fd) => {
                if let Some(dur) = ctx.parse_duration(meta, "spec.http.fault.delay.fixedDelay", fd)
                {
                    out.delay = Some(XFaultDelay {
                        fixed_delay: Some(dur),
                        percentage: Some(percentage),
                    });
                }
            }
            None => ctx.diags.push(diag(meta, Severity::Warning, "FaultDelayUnsupported", Some("spec.http.fault.delay"), "fault.delay has no fixedDelay (exponentialDelay is not supported by Istio); the delay is not injected")),
        }
    }
    if let Some(a) = &f.abort {
        let percentage = a
            .percentage
            .as_ref()
            .map(|p| FractionalPercent::from_percent(p.value));
        if let Some(s) = a.http_status {
            out.abort = Some(XFaultAbort {
                http_status: Some(u32::try_from(s).unwrap_or(0)),
                grpc_status: None,
                percentage,
            });
        } else if let Some(code) = a.grpc_status.as_deref().and_then(grpc_status_code) {
            out.abort = Some(XFaultAbort {
                http_status: None,
                grpc_status: Some(code),
                percentage,
            });
        } else {
            ctx.diags.push(diag(meta, Severity::Warning, "FaultAbortUnsupported", Some("spec.http.fault.abort"), "fault.abort has neither httpStatus nor a known grpcStatus (http2Error is not supported by Istio); the abort is not injected"));
        }
    }
    (out.delay.is_some() || out.abort.is_some()).then_some(out)
}

/// Istio `TranslateCORSPolicy`.
fn translate_cors(ctx: &mut Ctx, meta: &isthmus_model::ConfigMeta, c: &CorsPolicy) -> XCorsPolicy {
    let origins: Vec<StringMatcher> = match &c.allow_origins {
        Some(list) => list.iter().filter_map(string_matcher).collect(),
        None => c
            .allow_origin
            .iter()
            .map(|o| StringMatcher::exact(o.clone()))
            .collect(),
    };
    let max_age = c
        .max_age
        .as_deref()
        .and_then(|m| ctx.parse_duration(meta, "spec.http.corsPolicy.maxAge", m))
        .map(|d| d.as_std().as_secs().to_string())
        .unwrap_or_default();
    XCorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age,
        allow_credentials: c.allow_credentials,
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: FractionalPercent::from_integer(100),
        }),
        forward_not_matching_preflights: Some(c.unmatched_preflights.as_deref() != Some("IGNORE")),
    }
}

fn action<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    v: &HttpView<'a>,
    default_port: u32,
    route: &mut Route,
) {
    let h = v.leaf;
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
    let timeout = v
        .timeout
        .and_then(|t| ctx.parse_duration(&vs.meta, "spec.http.timeout", t))
        .unwrap_or(Duration::ZERO);
    a.timeout = Some(timeout);
    a.max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: Some(timeout),
        grpc_timeout_header_max: Some(timeout),
    });
    a.retry_policy = match v.retries {
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
    if let Some(rw) = v.rewrite {
        a.prefix_rewrite = rw.uri.clone();
        a.host_rewrite_literal = rw.authority.clone();
    }
    if let Some(m) = &v.mirror_from.mirror {
        if let Some(fraction) = mirror_fraction(v.mirror_pct_from, v.mirror_percent_from) {
            let c = destination_cluster(ctx, v.leaf_vs, m, default_port);
            a.request_mirror_policies.push(RequestMirrorPolicy {
                cluster: c,
                runtime_fraction: Some(fraction),
                trace_sampled: Some(false),
            });
        }
    }
    let (mirrors_route, mirrors_vs) = v.mirrors_from;
    for mp in mirrors_route.mirror_policies() {
        // Istio `MirrorPercentByPolicy`: absent → 100%, explicit 0 → no mirror.
        let fraction = match &mp.percentage {
            Some(p) if p.value > 0.0 => FractionalPercent::from_percent(p.value),
            Some(_) => continue,
            None => FractionalPercent::from_integer(100),
        };
        if mp.destination.host.is_empty() {
            continue;
        }
        // `mirrors` is raw JSON the model does not normalise: short names expand with the
        // namespace of the VS that wrote them, like every other destination.
        let host = isthmus_model::host::resolve_short_name(
            &mp.destination.host,
            &mirrors_vs.meta.namespace,
            &ctx.snap.domain_suffix,
        );
        let port = mp
            .destination
            .port
            .as_ref()
            .map(|p| p.number)
            .filter(|p| *p > 0);
        let c = cluster_for(
            ctx,
            mirrors_vs,
            &host,
            mp.destination.subset.as_deref().unwrap_or(""),
            port,
            default_port,
        );
        a.request_mirror_policies.push(RequestMirrorPolicy {
            cluster: c,
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: fraction,
            }),
            trace_sampled: Some(false),
        });
    }
    // A single destination (the common case) needs no list.
    let single = match h.route.as_slice() {
        [d] => Some(destination_cluster(
            ctx,
            v.leaf_vs,
            &d.destination,
            default_port,
        )),
        _ => None,
    };
    let mut dests: Vec<(String, i64)> = if single.is_some() {
        Vec::new()
    } else {
        h.route
            .iter()
            .map(|d| {
                (
                    destination_cluster(ctx, v.leaf_vs, &d.destination, default_port),
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

/// Whether a view's match blocks (or, without matches, the VS binding) apply here.
fn view_applies(ctx: &Ctx, vs: &VirtualServiceConfig, v: &HttpView, rc: &RouteCtx) -> bool {
    if v.matches.is_empty() {
        gateways_hit(vs, &[], rc)
    } else {
        v.matches.iter().any(|m| match_applies(ctx, vs, m, rc))
    }
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
    let views = expand_delegates(ctx, vs);
    for (i, v) in views.iter().enumerate() {
        // One route per applicable match block; a rule without matches is one block.
        let blocks = if v.matches.is_empty() {
            usize::from(gateways_hit(vs, &[], rc))
        } else {
            v.matches.len()
        };
        for b in 0..blocks {
            let m: Option<&HttpMatchRequest> = match v.matches.get(b) {
                None => None,
                Some(m) if match_applies(ctx, vs, m, rc) => Some(m),
                Some(_) => continue,
            };
            let mut r = Route {
                r#match: route_match(m),
                ..Default::default()
            };
            // istiod: `in.Name + "." + match.Name` whenever the match is named, so a named
            // match in an unnamed rule gives `.match`.
            r.name = match (v.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
                (a, Some(b)) if !b.is_empty() => concat(&[a.unwrap_or(""), ".", b]),
                (Some(a), _) => a.to_string(),
                (None, _) => String::new(),
            };
            let path = config_path
                .get_or_insert_with(|| vs.meta.config_path())
                .clone();
            r.metadata.filter_metadata.istio = Some(IstioMetadata {
                config: Some(path),
                ..Default::default()
            });
            action(ctx, vs, v, default_port, &mut r);
            if let Some(hd) = v.headers {
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
            if v.fault_from.fault.is_some() {
                match v.fault_from.fault_spec() {
                    Some(f) => {
                        if let Some(f) = translate_fault(ctx, &vs.meta, &f) {
                            r.typed_per_filter_config
                                .insert(FAULT_FILTER.into(), PerFilterConfig::Fault(f));
                        }
                    }
                    None => ctx.diags.push(diag(&vs.meta, Severity::Warning, "FaultUnreadable", Some("spec.http.fault"), "the fault block could not be read as HTTPFaultInjection; no fault is injected")),
                }
            }
            if v.cors_from.cors_policy.is_some() {
                match v.cors_from.cors_spec() {
                    Some(c) => {
                        let c = translate_cors(ctx, &vs.meta, &c);
                        r.typed_per_filter_config
                            .insert(CORS_FILTER.into(), PerFilterConfig::Cors(c));
                    }
                    None => ctx.diags.push(diag(&vs.meta, Severity::Warning, "CorsPolicyUnreadable", Some("spec.http.corsPolicy"), "the corsPolicy block could not be read as CorsPolicy; no CORS policy applies")),
                }
            }
            let catch_all = is_catch_all(&r.r#match);
            out.push(r);
            if catch_all {
                let shadowed = views[i + 1..]
                    .iter()
                    .filter(|later| view_applies(ctx, vs, later, rc))
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

/// Istio's delegate match rules (`stringMatchConflict`, `mergeHTTPMatchRequests`).
#[cfg(test)]
mod delegate_merge_tests {
    use super::*;

    fn sm(kind: &str, v: &str) -> StringMatch {
        let mut m = StringMatch::default();
        match kind {
            "exact" => m.exact = Some(v.into()),
            "prefix" => m.prefix = Some(v.into()),
            _ => m.regex = Some(v.into()),
        }
        m
    }

    fn uri(kind: &str, v: &str) -> HttpMatchRequest {
        HttpMatchRequest {
            uri: Some(sm(kind, v)),
            ..Default::default()
        }
    }

    #[test]
    fn string_match_conflicts_follow_istio() {
        let c = |r: (&str, &str), l: (&str, &str)| {
            string_match_conflict(Some(&sm(r.0, r.1)), Some(&sm(l.0, l.1)))
        };
        assert!(!c(("prefix", "/a"), ("prefix", "/a/b")));
        assert!(c(("prefix", "/a/b"), ("prefix", "/a")));
        assert!(!c(("prefix", "/a"), ("exact", "/a/x")));
        assert!(c(("exact", "/a"), ("prefix", "/a")));
        assert!(!c(("exact", "/a"), ("exact", "/a")));
        assert!(c(("exact", "/a"), ("exact", "/b")));
        assert!(c(("regex", "/a.*"), ("exact", "/a")));
        assert!(c(("prefix", "/a"), ("regex", "/a.*")));
        assert!(!string_match_conflict(None, Some(&sm("regex", "x"))));
    }

    #[test]
    fn delegate_matches_merge_per_fitting_root_match() {
        let mut by_header = HttpMatchRequest::default();
        by_header.headers.insert("x".into(), sm("exact", "1"));
        let root = vec![uri("prefix", "/r"), by_header];
        let merged = merge_matches(&root, &[uri("exact", "/r/1")]).expect("fits");
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert!(merged[1].headers.contains_key("x"));
        assert_eq!(merged[1].uri, Some(sm("exact", "/r/1")));
        // A leaf outside every root match drops the route.
        assert!(merge_matches(&[uri("prefix", "/r")], &[uri("prefix", "/s")]).is_none());
        // Ports must agree when both set; ignoreUriCase must be equal.
        let mut p1 = uri("prefix", "/r");
        p1.port = Some(80);
        let mut p2 = uri("prefix", "/r/x");
        p2.port = Some(81);
        assert!(merge_matches(std::slice::from_ref(&p1), &[p2]).is_none());
        let mut ci = uri("prefix", "/r/x");
        ci.ignore_uri_case = true;
        assert!(merge_matches(&[p1], &[ci]).is_none());
        // No root matches: the delegate's are used as they are, and vice versa.
        assert_eq!(
            merge_matches(&[], &[uri("prefix", "/q")]).map(|v| v.len()),
            Some(1)
        );
        assert_eq!(
            merge_matches(&[uri("prefix", "/q")], &[]).map(|v| v.len()),
            Some(1)
        );
    }
}

/// `TranslateFault` details the goldens do not show (gRPC aborts, dropped parts).
#[cfg(test)]
mod fault_tests {
    use super::*;

    fn fault(yaml: &str) -> Option<HttpFault> {
        let f: HttpFaultInjection =
            serde_json::from_value(serde_json::from_str::<serde_json::Value>(yaml).expect("json"))
                .expect("fault");
        let snap = isthmus_model::Snapshot::build(
            &[],
            isthmus_api::MeshConfig::default(),
            "cluster.local",
        )
        .0;
        let node = isthmus_model::ProxyNode {
            kind: isthmus_xds::ProxyType::Sidecar,
            name: "t".into(),
            namespace: "default".into(),
            labels: Default::default(),
            service_account: "default".into(),
            ip: "10.0.0.1".into(),
            deployment: None,
        };
        let mut ctx = Ctx::new(&snap, &node);
        translate_fault(&mut ctx, &isthmus_model::ConfigMeta::default(), &f)
    }

    #[test]
    fn grpc_abort_uses_the_status_code_number() {
        let f = fault(r#"{"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 12.5}}}"#)
            .expect("abort");
        let a = f.abort.expect("abort");
        assert_eq!((a.http_status, a.grpc_status), (None, Some(14)));
        assert_eq!(a.percentage.map(|p| p.numerator), Some(125_000));
        assert!(f.delay.is_none());
    }

    #[test]
    fn unsupported_parts_are_dropped() {
        assert!(fault(r#"{"delay": {"exponentialDelay": "1s"}}"#).is_none());
        assert!(fault(r#"{"abort": {"http2Error": "x"}}"#).is_none());
        let f = fault(r#"{"delay": {"fixedDelay": "1s"}, "abort": {"grpcStatus": "NOPE"}}"#)
            .expect("delay kept");
        assert!(f.abort.is_none());
        let d = f.delay.expect("delay");
        assert_eq!(d.percentage, Some(FractionalPercent::from_integer(0)));
    }
}
