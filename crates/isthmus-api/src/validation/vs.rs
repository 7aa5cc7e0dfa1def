//! VirtualService: `ValidateVirtualService`, `validateHTTPRoute` and its helpers
//! (`virtualservice.go`), TLS/TCP routes, route destinations and weights, and the unreachable /
//! ineffective rule warnings.

use super::checks::{self, go_quote};
use super::policy::subset_name;
use super::{at, num_at, str_at, Report};
use crate::istio::{
    Destination, HeaderOperations, Headers, HttpRoute, StringMatch, VirtualService,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// `validateDestination`.
pub(super) fn destination(f: &str, d: &Destination, r: &mut Report) {
    if d.host == "*" {
        r.error(
            format!("{f}.host"),
            format!("invalid destination host {}", d.host),
        );
    } else {
        r.check(
            &format!("{f}.host"),
            checks::validate_wildcard_domain(&d.host),
        );
    }
    if let Some(s) = d.subset.as_deref().filter(|s| !s.is_empty()) {
        r.check(&format!("{f}.subset"), subset_name(s));
    }
    if let Some(p) = &d.port {
        r.check(
            &format!("{f}.port.number"),
            checks::validate_port(i64::from(p.number)),
        );
    }
}

/// `validateGatewayNames`.
fn gateway_names(f: &str, names: &[String], r: &mut Report) {
    for g in names {
        let Some((ns, name)) = g.split_once('/') else {
            if g.contains('.') {
                let parts: Vec<&str> = g.split('.').collect();
                let recommended = format!("{}/{}", parts.get(1).copied().unwrap_or(""), parts[0]);
                r.warning(
                    f,
                    format!(
                        "using legacy gatewayName format {}; prefer the <namespace>/<name> format: {}",
                        go_quote(g),
                        go_quote(&recommended)
                    ),
                );
            }
            r.check(f, checks::validate_fqdn(g));
            // Istio stops at the first name without a namespace.
            return;
        };
        if ns.is_empty() || name.is_empty() {
            r.error(f, "config namespace and gateway name cannot be empty");
        }
        if !checks::is_dns1123_label(ns) {
            r.error(f, format!("invalid value for namespace: {}", go_quote(ns)));
        }
        if !checks::is_dns1123_label(name) {
            r.error(
                f,
                format!("invalid value for gateway name: {}", go_quote(name)),
            );
        }
    }
}

/// `jwt.ToRoutingClaim(name).Match`.
fn is_jwt_claim_route(name: &str) -> bool {
    name.strip_prefix("@request.auth.claims")
        .is_some_and(|rest| {
            (rest.starts_with('.') && rest.len() > 1)
                || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
        })
}

fn is_internal_header(h: &str) -> bool {
    h.starts_with(':') || h.eq_ignore_ascii_case("host")
}

fn is_authority_header(h: &str) -> bool {
    h.eq_ignore_ascii_case(":authority") || h.eq_ignore_ascii_case("host")
}

/// `ValidateHTTPHeaderName` / `...OrJwtClaimRoute`.
fn header_name(name: &str, allow_jwt: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if allow_jwt && is_jwt_claim_route(name) {
        return Ok(());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

/// `ValidateHTTPHeaderValue`: no control characters, and Envoy's `%VAR%` syntax well formed.
fn header_value(v: &str) -> Result<(), String> {
    if v.chars()
        .any(|c| ((c as u32) < 0x20 && c != '\t') || c as u32 == 0x7f)
    {
        return Err(format!("header value configuration {v} is invalid"));
    }
    envoy_header_syntax(v).map_err(|e| format!("header value configuration: {e}"))
}

/// `validateHeaderValue`: Istio's port of Envoy's header formatter parser
/// (`source/common/router/header_parser.cc`).
fn envoy_header_syntax(v: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum St {
        Literal,
        VarName,
        ExpectArray,
        ExpectString,
        Str,
        ExpectDelimOrEnd,
        ExpectArgsEnd,
        ExpectVarEnd,
    }
    let b = v.as_bytes();
    let mut pos = 0;
    let mut st = St::Literal;
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match st {
            St::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return Err("invalid header configuration. Un-escaped %".into());
                    }
                    if b[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        st = St::VarName;
                    }
                }
            }
            St::VarName => {
                if ch == b'%' {
                    st = St::Literal;
                } else if ch == b'(' {
                    st = St::ExpectArray;
                }
            }
            St::ExpectArray => {
                if ch == b'[' {
                    st = St::ExpectString;
                } else if ch != b' ' {
                    st = St::Str;
                }
            }
            St::ExpectDelimOrEnd => {
                if ch == b',' {
                    st = St::ExpectString;
                } else if ch == b']' {
                    st = St::ExpectArgsEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace".into(),
                    );
                }
            }
            St::ExpectString => {
                if ch == b'"' {
                    st = St::Str;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting '\"'".into());
                }
            }
            St::Str => {
                if ch == b'\\' {
                    if !has_next {
                        return Err(
                            "invalid header configuration. Un-terminated backslash in JSON string"
                                .into(),
                        );
                    }
                    pos += 1;
                } else if ch == b')' {
                    st = St::ExpectVarEnd;
                } else if ch == b'"' {
                    st = St::ExpectDelimOrEnd;
                }
            }
            St::ExpectArgsEnd => {
                if ch == b')' {
                    st = St::ExpectVarEnd;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting ')' or whitespace after '{}', but found '{}'".into());
                }
            }
            St::ExpectVarEnd => {
                if ch == b'%' {
                    st = St::Literal;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting '%' or whitespace after".into(),
                    );
                }
            }
        }
        pos += 1;
    }
    if st != St::Literal {
        return Err(format!(
            "invalid header configuration. Un-terminated variable expression '{v}'"
        ));
    }
    Ok(())
}

/// Header manipulations: request add/set may touch `:authority`, everything else may not
/// touch internal headers.
fn header_ops(f: &str, h: &Option<Headers>, r: &mut Report) {
    let Some(h) = h else { return };
    let req = |op: &Option<HeaderOperations>| op.clone().unwrap_or_default();
    let (rq, rs) = (req(&h.request), req(&h.response));
    for (name, val) in rq.add.iter().chain(rq.set.iter()) {
        if name.is_empty() {
            r.error(format!("{f}.request"), "header name cannot be empty");
        } else if is_internal_header(name) && !is_authority_header(name) {
            r.error(
                format!("{f}.request"),
                format!(
                    "invalid header {}: header cannot have \":\" prefix",
                    go_quote(name)
                ),
            );
        }
        r.check(&format!("{f}.request"), header_value(val));
    }
    for name in &rq.remove {
        r.check(&format!("{f}.request.remove"), header_op_name(name));
    }
    for (name, val) in rs.add.iter().chain(rs.set.iter()) {
        r.check(&format!("{f}.response"), header_op_name(name));
        r.check(&format!("{f}.response"), header_value(val));
    }
    for name in &rs.remove {
        r.check(&format!("{f}.response.remove"), header_op_name(name));
    }
}

/// `ValidateHTTPHeaderOperationName`.
fn header_op_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!(
            "invalid header {}: cannot set Host header",
            go_quote(name)
        ));
    }
    if is_internal_header(name) {
        return Err(format!(
            "invalid header {}: header cannot have \":\" prefix",
            go_quote(name)
        ));
    }
    Ok(())
}

/// `validateStringRegexp` (Istio compiles with Go's RE2; the Rust `regex` crate accepts the
/// same syntax, its error text differs).
fn string_regexp(re: &str, where_: &str) -> Result<(), String> {
    if re.len() > 1024 {
        return Err(format!(
            "{}: regex is too large, max length allowed is 1024",
            go_quote(where_)
        ));
    }
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => {
            let detail = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            Err(format!(
                "{}: error parsing regexp: {detail}: `{re}`; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
                go_quote(where_)
            ))
        }
    }
}

/// `validateStringMatchRegexp`.
fn string_match_regexp(sm: &StringMatch, where_: &str) -> Result<(), String> {
    match &sm.regex {
        None => Ok(()),
        Some(re) if re.is_empty() => Err(format!(
            "{}: regex string match should not be empty",
            go_quote(where_)
        )),
        Some(re) => string_regexp(re, where_),
    }
}

/// `validateStringMatch`.
fn string_match(sm: &StringMatch, where_: &str) -> Result<(), String> {
    if sm.exact.is_none() && sm.prefix.as_deref() == Some("") {
        return Err(format!(
            "{}: prefix string match should not be empty",
            go_quote(where_)
        ));
    }
    if sm.exact.is_none() && sm.prefix.is_none() {
        return string_match_regexp(sm, where_);
    }
    Ok(())
}

#[derive(PartialEq)]
enum RouteType {
    Independent,
    Root,
    Delegate,
}

/// `validateHTTPRoute`.
fn http_route(f: &str, h: &HttpRoute, raw: &Value, delegate: bool, r: &mut Report) {
    let rt = if delegate {
        RouteType::Delegate
    } else if h.delegate.is_some() {
        RouteType::Root
    } else {
        RouteType::Independent
    };
    // validateHTTPRouteConflict
    let has_route = at(raw, &["route"]).is_some_and(|v| !v.is_null());
    if rt == RouteType::Root {
        let name = h.name.as_deref().unwrap_or("");
        if h.redirect.is_some() {
            r.error(
                f,
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if has_route {
            r.error(f, format!("root HTTP route {name} must not specify route"));
        }
    } else {
        if rt == RouteType::Delegate && h.delegate.is_some() {
            r.error(f, "delegate HTTP route cannot contain delegate");
        }
        if h.redirect.is_some() {
            if !h.route.is_empty() {
                r.error(f, "HTTP route cannot contain both route and redirect");
            }
            if h.fault.is_some() {
                r.error(f, "HTTP route cannot contain both fault and redirect");
            }
            if h.rewrite.is_some() {
                r.error(
                    f,
                    "HTTP route rule cannot contain both rewrite and redirect",
                );
            }
            if h.direct_response.is_some() {
                r.error(
                    f,
                    "HTTP route rule cannot contain both direct_response and redirect",
                );
            }
        } else if h.direct_response.is_some() {
            if !h.route.is_empty() {
                r.error(
                    f,
                    "HTTP route cannot contain both route and direct_response",
                );
            }
            if h.fault.is_some() {
                r.error(
                    f,
                    "HTTP route cannot contain both fault and direct_response",
                );
            }
            if h.rewrite.is_some() {
                r.error(
                    f,
                    "HTTP route rule cannot contain both rewrite and direct_response",
                );
            }
        } else if h.route.is_empty() {
            r.error(f, "HTTP route, redirect or direct_response is required");
        }
        if h.mirror.is_some() && !h.mirrors.is_empty() {
            r.error(f, "HTTP route cannot contain both mirror and mirrors");
        }
    }

    // validateHTTPRouteMatchRequest
    for (i, m) in h.matches.iter().enumerate() {
        let mf = format!("{f}.match[{i}]");
        for (name, hm) in &m.headers {
            r.check(&format!("{mf}.headers"), header_name(name, true));
            r.check(&format!("{mf}.headers"), string_match(hm, "headers"));
        }
        for (name, hm) in &m.without_headers {
            r.check(&format!("{mf}.withoutHeaders"), header_name(name, true));
            if hm.regex.as_deref() != Some("*") {
                r.check(
                    &format!("{mf}.withoutHeaders"),
                    string_match(hm, "withoutHeaders"),
                );
            }
        }
        if let Some(u) = &m.uri {
            r.check(&format!("{mf}.uri"), string_match_regexp(u, "uri"));
        }
        for (name, sm) in [
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                r.check(&format!("{mf}.{name}"), string_match(sm, name));
            }
        }
        for qp in m.query_params.values() {
            r.check(
                &format!("{mf}.queryParams"),
                string_match(qp, "queryParams"),
            );
        }
    }
    for (i, m) in h.matches.iter().enumerate() {
        let mf = format!("{f}.match[{i}]");
        if let Some(p) = m.port.filter(|p| *p != 0) {
            r.check(&format!("{mf}.port"), checks::validate_port(i64::from(p)));
        }
        r.check_all(
            &format!("{mf}.sourceLabels"),
            checks::validate_labels(&m.source_labels),
        );
        gateway_names(&format!("{mf}.gateways"), &m.gateways, r);
        if let Some(sn) = m.source_namespace.as_deref().filter(|s| !s.is_empty()) {
            if !checks::is_dns1123_label(sn) {
                r.error(
                    format!("{mf}.sourceNamespace"),
                    format!("sourceNamespace match {sn} is invalid"),
                );
            }
        }
    }

    header_ops(&format!("{f}.headers"), &h.headers, r);
    if let Some(c) = &h.cors_policy {
        cors(&format!("{f}.corsPolicy"), c, r);
    }
    if let Some(fa) = &h.fault {
        fault(&format!("{f}.fault"), fa, r);
    }
    if let Some(mp) = at(raw, &["mirrorPercent"]).filter(|v| !v.is_null()) {
        let v = mp
            .as_f64()
            .or_else(|| at(mp, &["value"]).and_then(|x| x.as_f64()))
            .unwrap_or(0.0);
        if v > 100.0 {
            r.error(
                format!("{f}.mirrorPercent"),
                format!(
                    "mirror_percent must have a max value of 100 (it has {})",
                    v as u64
                ),
            );
        }
        r.warning(
            format!("{f}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &h.mirror_percentage {
        if p.value > 100.0 {
            r.error(
                format!("{f}.mirrorPercentage"),
                format!(
                    "mirror_percentage must have a max value of 100 (it has {:.6})",
                    p.value
                ),
            );
        }
        if p.value < 0.0 {
            r.error(
                format!("{f}.mirrorPercentage"),
                format!(
                    "mirror_percentage must have a min value of 0 (it has {:.6})",
                    p.value
                ),
            );
        }
    }
    if let Some(m) = &h.mirror {
        destination(&format!("{f}.mirror"), m, r);
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let mf = format!("{f}.mirrors[{i}]");
        if m.is_null() {
            r.error(&mf, "mirror cannot be null");
            continue;
        }
        let Some(d) = at(m, &["destination"]).filter(|v| !v.is_null()) else {
            r.error(&mf, "destination is required for mirrors");
            continue;
        };
        match serde_json::from_value::<Destination>(d.clone()) {
            Ok(d) => destination(&format!("{mf}.destination"), &d, r),
            Err(e) => r.error(format!("{mf}.destination"), e.to_string()),
        }
        if let Some(v) = at(m, &["percentage", "value"]).and_then(|v| v.as_f64()) {
            if v > 100.0 {
                r.error(
                    format!("{mf}.percentage"),
                    format!("mirror percentage must have a max value of 100 (it has {v:.6})"),
                );
            }
            if v < 0.0 {
                r.error(
                    format!("{mf}.percentage"),
                    format!("mirror percentage must have a min value of 0 (it has {v:.6})"),
                );
            }
        }
    }
    if let Some(rd) = &h.redirect {
        let rf = format!("{f}.redirect");
        let e = |o: &Option<String>| o.as_deref().unwrap_or("").is_empty();
        if e(&rd.uri)
            && e(&rd.authority)
            && rd.port.is_none()
            && rd.derive_port.is_none()
            && e(&rd.scheme)
        {
            r.error(&rf, "redirect must specify URI, authority, scheme, or port");
        } else if let Some(code) = rd
            .redirect_code
            .filter(|c| *c != 0 && !(300..=399).contains(c))
        {
            r.error(
                &rf,
                format!("{code} is not a valid redirect code, must be 3xx"),
            );
        } else if !e(&rd.scheme) && !matches!(rd.scheme.as_deref(), Some("http" | "https")) {
            r.error(
                &rf,
                "invalid redirect scheme, must be \"http\" or \"https\"",
            );
        } else if let Some(p) = rd.port.filter(|p| *p > 0) {
            r.check(&rf, checks::validate_port(i64::from(p)));
        }
    }
    if let Some(dr) = &h.direct_response {
        let df = format!("{f}.directResponse");
        if let Some(b) = &dr.body {
            let size = b
                .string
                .as_ref()
                .map(|s| s.len())
                .or_else(|| b.bytes.as_ref().map(|s| s.len() * 3 / 4))
                .unwrap_or(0);
            if size > 1024 * 1024 {
                r.error(&df, "large direct_responses may impact control plane performance, must be less than 1MB");
            } else if size > 100 * 1024 {
                r.warning(
                    &df,
                    "large direct_responses may impact control plane performance",
                );
            }
        }
        r.check(&df, http_status(i64::from(dr.status)));
    }
    if let Some(rt) = &h.retries {
        let rf = format!("{f}.retries");
        if rt.attempts < 0 {
            r.error(&rf, "attempts cannot be negative");
        }
        if rt.attempts == 0
            && (rt.per_try_timeout.is_some()
                || rt.retry_on.as_deref().is_some_and(|s| !s.is_empty())
                || rt.retry_remote_localities.is_some())
        {
            r.error(
                &rf,
                "http retry policy configured when attempts are set to 0 (disabled)",
            );
        }
        if let Some(d) = &rt.per_try_timeout {
            r.check(&format!("{rf}.perTryTimeout"), checks::validate_duration(d));
        }
        if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
            for p in on.split(',') {
                let code: i64 = if p.bytes().all(|c| c.is_ascii_digit()) && !p.is_empty() {
                    p.parse().unwrap_or(0)
                } else {
                    0
                };
                if !is_known_http_status(code) && !RETRY_ON.contains(&p) {
                    r.error(
                        format!("{rf}.retryOn"),
                        format!("{} is not a valid retryOn policy", go_quote(p)),
                    );
                }
            }
        }
    }
    if let Some(rw) = &h.rewrite {
        let rf = format!("{f}.rewrite");
        let uri = rw.uri.as_deref().unwrap_or("");
        let auth = rw.authority.as_deref().unwrap_or("");
        if !uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            r.error(
                &rf,
                "rewrite may only contain one of URI or UriRegexRewrite",
            );
        } else if uri.is_empty() && rw.uri_regex_rewrite.is_none() && auth.is_empty() {
            r.error(
                &rf,
                "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
            );
        } else if let Some(rr) = &rw.uri_regex_rewrite {
            let (m, w) = (str_at(rr, &["match"]), str_at(rr, &["rewrite"]));
            let err = if m.is_empty() || w.is_empty() {
                Err(
                    "UriRegexRewrite requires both Rewrite and Match fields to be specified"
                        .to_string(),
                )
            } else {
                string_regexp(m, "HTTPRewrite.UriRegexRewrite.Match")
            };
            if let Err(e) = err {
                r.error(&rf, format!("UriRegexRewrite has errors\n{e}"));
            }
        }
    }
    // validateAuthorityRewrite
    let mut current = h
        .rewrite
        .as_ref()
        .and_then(|w| w.authority.clone())
        .unwrap_or_default();
    if let Some(req) = h.headers.as_ref().and_then(|x| x.request.as_ref()) {
        'outer: for m in [&req.set, &req.add] {
            for (k, v) in m {
                if !is_authority_header(k) {
                    continue;
                }
                if !current.is_empty() {
                    r.error(
                        format!("{f}.headers.request"),
                        format!("authority header cannot be set multiple times: have {}, attempting to set {}", go_quote(&current), go_quote(v)),
                    );
                    break 'outer;
                }
                current = v.clone();
            }
        }
    }
    // validateHTTPRouteDestinations
    let mut total: i64 = 0;
    for (i, d) in h.route.iter().enumerate() {
        let df = format!("{f}.route[{i}]");
        header_ops(&format!("{df}.headers"), &d.headers, r);
        destination(&format!("{df}.destination"), &d.destination, r);
        if d.weight < 0 {
            r.error(format!("{df}.weight"), format!("weight {} < 0", d.weight));
        }
        total += d.weight;
    }
    if h.route.len() > 1 && total == 0 {
        r.error(format!("{f}.route"), "total destination weight = 0");
    }
    if let Some(t) = &h.timeout {
        r.check(&format!("{f}.timeout"), checks::validate_duration(t));
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Codes Go's `http.StatusText` knows.
fn is_known_http_status(c: i64) -> bool {
    matches!(c,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

fn http_status(s: i64) -> Result<(), String> {
    if !(200..=600).contains(&s) {
        return Err(format!("HTTP status {s} is not in range 200-599"));
    }
    Ok(())
}

fn percentage(v: Option<&Value>) -> Result<(), String> {
    let Some(v) = v.and_then(|p| at(p, &["value"])).and_then(|x| x.as_f64()) else {
        return Ok(());
    };
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ));
    }
    Ok(())
}

const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `validateHTTPFaultInjection` on the raw `fault` block.
fn fault(f: &str, fa: &Value, r: &mut Report) {
    let abort = at(fa, &["abort"]).filter(|v| !v.is_null());
    let delay = at(fa, &["delay"]).filter(|v| !v.is_null());
    if abort.is_none() && delay.is_none() {
        r.error(f, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = abort {
        let af = format!("{f}.abort");
        r.check(&af, percentage(at(a, &["percentage"])));
        if let Some(g) = at(a, &["grpcStatus"]).and_then(|v| v.as_str()) {
            if !GRPC_STATUS.contains(&g) {
                r.error(
                    &af,
                    format!(
                        "gRPC status {} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'",
                        go_quote(g)
                    ),
                );
            }
        } else if at(a, &["http2Error"]).is_some() {
            r.error(&af, "HTTP/2 abort fault injection not supported yet");
        } else if let Some(s) = at(a, &["httpStatus"]) {
            r.check(&af, http_status(s.as_i64().unwrap_or(0)));
        } else {
            r.warning(&af, "abort configured, but error type not set");
        }
    }
    if let Some(d) = delay {
        let df = format!("{f}.delay");
        r.check(&df, percentage(at(d, &["percentage"])));
        if let Some(fd) = at(d, &["fixedDelay"]).and_then(|v| v.as_str()) {
            r.check(&format!("{df}.fixedDelay"), checks::validate_duration(fd));
        } else if let Some(ed) = at(d, &["exponentialDelay"]).and_then(|v| v.as_str()) {
            r.check(
                &format!("{df}.exponentialDelay"),
                checks::validate_duration(ed),
            );
            r.error(&df, "exponentialDelay not supported yet");
        }
    }
}

/// `validateCORSPolicy` on the raw `corsPolicy` block.
fn cors(f: &str, c: &Value, r: &mut Report) {
    let list = |k: &str| {
        at(c, &[k])
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    for o in list("allowOrigins") {
        let sm: StringMatch = serde_json::from_value(o).unwrap_or_default();
        let m = sm
            .exact
            .clone()
            .or(sm.prefix.clone())
            .or(sm.regex.clone())
            .unwrap_or_default();
        if m.is_empty() {
            r.error(
                format!("{f}.allowOrigins"),
                format!("'{m}' is not a valid match type for CORS allow origins"),
            );
        } else {
            r.check(
                &format!("{f}.allowOrigins"),
                string_match_regexp(&sm, "corsPolicy.allowOrigins"),
            );
        }
    }
    for m in list("allowMethods") {
        let m = m.as_str().unwrap_or("");
        if !matches!(
            m,
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
        ) {
            r.error(
                format!("{f}.allowMethods"),
                format!("{} is not a supported HTTP method", go_quote(m)),
            );
        }
    }
    for k in ["allowHeaders", "exposeHeaders"] {
        for h in list(k) {
            let h = h.as_str().unwrap_or("");
            if h != "*" {
                r.check(&format!("{f}.{k}"), header_name(h, false));
            }
        }
    }
    if let Some(ma) = at(c, &["maxAge"]).and_then(|v| v.as_str()) {
        r.check(&format!("{f}.maxAge"), checks::validate_duration(ma));
        if checks::parse_go_duration(ma).is_ok_and(|n| n % 1_000_000_000 != 0) {
            r.error(
                format!("{f}.maxAge"),
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

/// `validateRouteDestinations` for TLS and TCP routes.
fn route_destinations(f: &str, routes: &[crate::istio::RouteDestination], r: &mut Report) {
    let mut total = 0;
    for (i, d) in routes.iter().enumerate() {
        let df = format!("{f}[{i}]");
        destination(&format!("{df}.destination"), &d.destination, r);
        if d.weight < 0 {
            r.error(format!("{df}.weight"), format!("weight {} < 0", d.weight));
        }
        total += d.weight;
    }
    if routes.len() > 1 && total == 0 {
        r.error(f, "total destination weight = 0");
    }
}

fn l4_match_common(
    f: &str,
    subnets: &[String],
    port: Option<u32>,
    labels: &BTreeMap<String, String>,
    gws: &[String],
    r: &mut Report,
) {
    for s in subnets {
        r.check(
            &format!("{f}.destinationSubnets"),
            checks::validate_ip_subnet(s),
        );
    }
    if let Some(p) = port.filter(|p| *p != 0) {
        r.check(&format!("{f}.port"), checks::validate_port(i64::from(p)));
    }
    r.check_all(
        &format!("{f}.sourceLabels"),
        checks::validate_labels(labels),
    );
    gateway_names(&format!("{f}.gateways"), gws, r);
}

pub(super) fn virtual_service(ns: &str, v: &VirtualService, spec: &Value, r: &mut Report) {
    if v.hosts.is_empty() {
        if !v.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !v.tls.is_empty() {
            r.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !v.tcp.is_empty() {
            r.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    let applies_to_gateway = !v.gateways.is_empty() && !v.gateways.iter().any(|g| g == "mesh");
    let applies_to_mesh = !applies_to_gateway;
    if !v.gateways.is_empty() {
        gateway_names("spec.gateways", &v.gateways, r);
    }
    if !applies_to_gateway {
        for (i, h) in v.http.iter().enumerate() {
            for (j, m) in h.matches.iter().enumerate() {
                for key in m.headers.keys().chain(m.without_headers.keys()) {
                    if is_jwt_claim_route(key) {
                        r.error(
                            format!("spec.http[{i}].match[{j}]"),
                            format!(
                                "JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: [{}]",
                                v.gateways.join(" ")
                            ),
                        );
                    }
                }
            }
        }
    }
    let sni = v
        .tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_valid = true;
    for (i, h) in v.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        let res = if applies_to_gateway {
            checks::validate_wildcard_domain_for_gateway_vs(sni, h)
        } else {
            checks::validate_wildcard_domain(h)
        };
        match res {
            Err(e) => {
                if !checks::is_ip(h) {
                    r.error(&f, e);
                    all_valid = false;
                }
            }
            Ok(()) if applies_to_mesh && h == "*" => {
                r.error(
                    &f,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_valid {
        for i in 0..v.hosts.len() {
            for j in i + 1..v.hosts.len() {
                if checks::host::matches(&v.hosts[i], &v.hosts[j]) {
                    r.error(
                        "spec.hosts",
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            v.hosts[i], v.hosts[j]
                        ),
                    );
                }
            }
        }
    }
    if v.http.is_empty() && v.tcp.is_empty() && v.tls.is_empty() {
        r.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, h) in v.http.iter().enumerate() {
        let raw = at(spec, &["http", &i.to_string()]).unwrap_or(&Value::Null);
        http_route(&format!("spec.http[{i}]"), h, raw, v.hosts.is_empty(), r);
    }
    for (i, t) in v.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        if t.matches.is_empty() {
            r.error(&f, "TLS route must have at least one match condition");
        }
        for (j, m) in t.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            if m.sni_hosts.is_empty() {
                r.error(
                    format!("{mf}.sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            } else {
                for s in &m.sni_hosts {
                    sni_host(&format!("{mf}.sniHosts"), s, v, applies_to_gateway, r);
                }
            }
            l4_match_common(
                &mf,
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
                r,
            );
        }
        if t.route.is_empty() {
            r.error(format!("{f}.route"), "TLS route is required");
        }
        route_destinations(&format!("{f}.route"), &t.route, r);
    }
    for (i, t) in v.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        for (j, m) in t.matches.iter().enumerate() {
            l4_match_common(
                &format!("{f}.match[{j}]"),
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
                r,
            );
        }
        if t.route.is_empty() {
            r.error(format!("{f}.route"), "TCP route is required");
        }
        route_destinations(&format!("{f}.route"), &t.route, r);
    }
    r.check_all(
        "spec.exportTo",
        checks::validate_export_to(ns, &v.export_to, false, false),
    );
    unreachable_rules(spec, r);
}

/// `validateSniHost`.
fn sni_host(f: &str, sni: &str, v: &VirtualService, is_gateway: bool, r: &mut Report) {
    let res = if is_gateway {
        checks::validate_wildcard_domain_for_gateway_vs(true, sni)
    } else {
        checks::validate_wildcard_domain(sni)
    };
    if let Err(e) = res {
        if checks::is_ip(sni) {
            r.warning(f, format!("using an IP address ({}) goes against SNI spec and most clients do not support this", go_quote(sni)));
        } else {
            r.error(f, e);
        }
        return;
    }
    if v.hosts.iter().any(|h| checks::host::subset_of(sni, h)) {
        return;
    }
    r.error(
        f,
        format!(
            "SNI host {} is not a compatible subset of any of the virtual service hosts: [{}]",
            go_quote(sni),
            v.hosts.join(", ")
        ),
    );
}

/// A prefix-URI match reduced to what the overlap check compares (`genMatchHTTPRoutes`).
struct PrefixMatch {
    route: String,
    matchn: String,
    prefix: String,
    port: i64,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    without: BTreeMap<String, String>,
}

fn exact_or_prefix(sm: Option<&Value>) -> String {
    let e = sm.map(|v| str_at(v, &["exact"])).unwrap_or("");
    let p = sm.map(|v| str_at(v, &["prefix"])).unwrap_or("");
    if !e.is_empty() {
        format!("exact:{e}")
    } else if !p.is_empty() {
        format!("prefix:{p}")
    } else {
        String::new()
    }
}

fn sm_map(m: &Value, key: &str) -> BTreeMap<String, String> {
    at(m, &[key])
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
                .collect()
        })
        .unwrap_or_default()
}

fn route_name(route: &Value, n: usize, http: bool) -> String {
    let name = if http { str_at(route, &["name"]) } else { "" };
    if name.is_empty() {
        format!("#{n}")
    } else {
        go_quote(name)
    }
}

fn map_covered(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, va)| {
            b.get(k)
                .is_some_and(|vb| va == vb || va.starts_with(vb.as_str()))
        })
}

/// `coveredValidation`: does the earlier prefix match `a` cover the later one `b`?
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && (a.method == b.method || a.method.starts_with(&b.method))
        && (a.authority == b.authority || a.authority.starts_with(&b.authority))
        && map_covered(&a.headers, &b.headers)
        && map_covered(&a.query, &b.query)
        && map_covered(&a.without, &b.without)
}

/// `analyzeUnreachable{HTTP,TCP,TLS}Rules`: warnings for rules no request can reach.
fn unreachable_rules(spec: &Value, r: &mut Report) {
    for kind in ["http", "tcp", "tls"] {
        let Some(routes) = at(spec, &[kind]).and_then(|v| v.as_array()) else {
            continue;
        };
        let http = kind == "http";
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut empty_seen = false;
        let mut prefixes: Vec<PrefixMatch> = Vec::new();
        for (rulen, route) in routes.iter().enumerate() {
            if route.is_null() {
                continue;
            }
            let matches = at(route, &["match"])
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            let rname = route_name(route, rulen, http);
            if matches.is_empty() {
                if empty_seen {
                    r.warning(format!("spec.{kind}[{rulen}]"), format!("virtualService rule {rname} not used (only the last rule can have no matches)"));
                }
                empty_seen = true;
                continue;
            }
            let mut dups = 0;
            for (matchn, m) in matches.iter().enumerate() {
                if empty_seen {
                    r.warning(
                        format!("spec.{kind}[{rulen}]"),
                        format!("virtualService rule {rname} not used (route without matches defined before)"),
                    );
                    continue;
                }
                let mut key = m.clone();
                if let Some(o) = key.as_object_mut() {
                    o.remove("name");
                }
                let key = key.to_string();
                let mname = {
                    let n = if http { str_at(m, &["name"]) } else { "" };
                    if n.is_empty() {
                        format!("#{matchn}")
                    } else {
                        go_quote(n)
                    }
                };
                if let Some((_, dupn)) = seen.iter().find(|(k, _)| *k == key) {
                    let dname = route_name(&routes[*dupn], *dupn, http);
                    r.warning(
                        format!("spec.{kind}[{rulen}]"),
                        format!("virtualService rule {rname} match {mname} is not used (duplicate/overlapping match in rule {dname})"),
                    );
                    dups += 1;
                    if http {
                        continue;
                    }
                } else {
                    seen.push((key, rulen));
                }
                if http {
                    let prefix = at(m, &["uri", "prefix"])
                        .and_then(|v| v.as_str())
                        .unwrap_or("");
                    if !prefix.is_empty() {
                        let mut method = exact_or_prefix(at(m, &["method"]));
                        if method.is_empty() {
                            method = "exact:GET".into();
                        }
                        prefixes.push(PrefixMatch {
                            route: rname.clone(),
                            matchn: mname,
                            prefix: prefix.to_string(),
                            port: num_at(m, &["port"]) as i64,
                            method,
                            authority: exact_or_prefix(at(m, &["authority"])),
                            headers: sm_map(m, "headers"),
                            query: sm_map(m, "queryParams"),
                            without: sm_map(m, "withoutHeaders"),
                        });
                    }
                }
            }
            if dups == matches.len() {
                r.warning(
                    format!("spec.{kind}[{rulen}]"),
                    format!(
                        "virtualService rule {rname} not used (all matches used by prior rules)"
                    ),
                );
            }
        }
        for i in 0..prefixes.len() {
            for j in i + 1..prefixes.len() {
                let (a, b) = (&prefixes[i], &prefixes[j]);
                if a.prefix == b.prefix {
                    continue;
                }
                if covered(a, b) {
                    r.warning(
                        "spec.http",
                        format!(
                            "virtualService rule {} match {} of prefix {} is not used (duplicate/overlapping match in rule {} of prefix {} on {})",
                            b.route, b.matchn, b.prefix, a.matchn, a.prefix, a.route
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_header_values() {
        assert!(header_value("100%%").is_ok());
        assert!(header_value("hello %HOSTNAME%").is_ok());
        assert!(header_value("%REQ([\"x-a\", \"x-b\"])%").is_ok());
        assert_eq!(
            header_value("abcd%oijasodifj"),
            Err("header value configuration: invalid header configuration. Un-terminated variable expression 'abcd%oijasodifj'".into())
        );
        assert!(header_value("50%").is_err());
    }

    #[test]
    fn jwt_claims() {
        assert!(is_jwt_claim_route("@request.auth.claims.group"));
        assert!(is_jwt_claim_route("@request.auth.claims[group]"));
        assert!(!is_jwt_claim_route("x-user"));
    }
}
