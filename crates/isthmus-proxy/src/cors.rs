//! Envoy's CORS filter (`envoy.filters.http.cors`) for a route's VirtualService `corsPolicy`.
//!
//! Istio puts the policy in the route's `typedPerFilterConfig`; the filter runs before the
//! fault filter and the router, so:
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) whose origin is
//!   allowed is answered here with `200` and the allow-* headers, never reaching the upstream;
//!   one whose origin is not allowed is forwarded (`forwardNotMatchingPreflights`, Istio's
//!   default) or answered `200` without CORS headers (`unmatchedPreflights: IGNORE`);
//! - any other request with an allowed `Origin` gets `Access-Control-Allow-Origin` (and
//!   `-Allow-Credentials`, `-Expose-Headers`) on its response, whoever produced it (upstream,
//!   fault abort, direct response);
//! - requests without an `Origin`, or with one that is not allowed, are left untouched.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

/// One allowed-origin matcher (Envoy `StringMatcher`, as Istio writes `allowOrigins`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum OriginMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// RE2-style, matched against the whole origin.
    SafeRegex(String),
}

impl OriginMatch {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginMatch::Exact(e) => origin == e,
            OriginMatch::Prefix(p) => origin.starts_with(p.as_str()),
            OriginMatch::Suffix(s) => origin.ends_with(s.as_str()),
            OriginMatch::Contains(c) => origin.contains(c.as_str()),
            // Compiled per use: only requests carrying an Origin on a CORS route get here, and
            // a bad pattern (which validation rejects) then matches nothing instead of failing.
            OriginMatch::SafeRegex(r) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(origin))
                .unwrap_or(false),
        }
    }
}

/// A route's CORS policy in the proxy's runtime config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<OriginMatch>,
    /// Comma-joined, sent as they are.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    /// Seconds, as text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub max_age: String,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "yes")]
    pub forward_not_matching_preflights: bool,
}

fn yes() -> bool {
    true
}

impl CorsPolicy {
    /// Envoy `isOriginAllowed`: a matcher that accepts the literal `*` allows every origin.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }
}

/// What the CORS filter decided for one request.
#[derive(Debug, Default)]
pub enum Cors {
    /// No policy, no Origin, or an origin that is not allowed: nothing to do.
    #[default]
    Pass,
    /// Answer now with `200` and these headers (a preflight); the router never sees it.
    Reply(Vec<(HeaderName, HeaderValue)>),
    /// Add these headers to whatever response goes back.
    Headers(Vec<(HeaderName, HeaderValue)>),
}

fn header_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

/// Run the filter's request half for a matched route.
pub fn on_request(policy: Option<&CorsPolicy>, method: &Method, headers: &HeaderMap) -> Cors {
    let Some(p) = policy else {
        return Cors::Pass;
    };
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .filter(|o| !o.is_empty())
        .cloned()
    else {
        return Cors::Pass;
    };
    let allowed = origin.to_str().is_ok_and(|o| p.origin_allowed(o));
    let preflight = method == Method::OPTIONS
        && headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty());
    if !allowed {
        if preflight && !p.forward_not_matching_preflights {
            return Cors::Reply(Vec::new());
        }
        return Cors::Pass;
    }
    let mut out = vec![(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)];
    if p.allow_credentials {
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    if preflight {
        for (name, v) in [
            (http::header::ACCESS_CONTROL_ALLOW_METHODS, &p.allow_methods),
            (http::header::ACCESS_CONTROL_ALLOW_HEADERS, &p.allow_headers),
            (http::header::ACCESS_CONTROL_MAX_AGE, &p.max_age),
        ] {
            if let Some(v) = Some(v)
                .filter(|v| !v.is_empty())
                .and_then(|v| header_value(v))
            {
                out.push((name, v));
            }
        }
        return Cors::Reply(out);
    }
    if let Some(v) = Some(&p.expose_headers)
        .filter(|v| !v.is_empty())
        .and_then(|v| header_value(v))
    {
        out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
    }
    Cors::Headers(out)
}

impl Cors {
    /// Whether the filter answers this request itself (`200`, body empty, headers from
    /// [`Cors::apply`]).
    pub fn is_reply(&self) -> bool {
        matches!(self, Cors::Reply(_))
    }

    /// Stamp the decided headers on the response (Envoy sets, not appends): the preflight
    /// answer's, or those of the actual request's response, whoever produced it.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Cors::Headers(hs) | Cors::Reply(hs) = self {
            for (k, v) in hs {
                headers.insert(k.clone(), v.clone());
            }
        }
    }

    /// The preflight answer as a response (for callers without their own reply builder).
    pub fn reply(&self) -> Option<Response<()>> {
        let Cors::Reply(_) = self else {
            return None;
        };
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::OK;
        self.apply(r.headers_mut());
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![
                OriginMatch::Exact("https://a.example.com".into()),
                OriginMatch::Prefix("https://b.".into()),
                OriginMatch::SafeRegex(r"https://.*\.c\.example\.com".into()),
            ],
            allow_methods: "GET,POST".into(),
            allow_headers: "x-custom".into(),
            expose_headers: "x-exposed".into(),
            max_age: "86400".into(),
            allow_credentials: true,
            forward_not_matching_preflights: true,
        }
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn origins_match_like_envoy() {
        let p = policy();
        assert!(p.origin_allowed("https://a.example.com"));
        assert!(!p.origin_allowed("https://a.example.com.evil"));
        assert!(p.origin_allowed("https://b.anything"));
        assert!(p.origin_allowed("https://x.c.example.com"));
        assert!(!p.origin_allowed("https://x.c.example.com.evil"));
        let star = CorsPolicy {
            allow_origins: vec![OriginMatch::Exact("*".into())],
            ..policy()
        };
        assert!(star.origin_allowed("https://anything"));
    }

    #[test]
    fn preflight_is_answered_with_allow_headers() {
        let h = hdrs(&[
            ("origin", "https://a.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        let c = on_request(Some(&policy()), &Method::OPTIONS, &h);
        let r = c.reply().expect("preflight answered");
        assert_eq!(r.status(), 200);
        let g = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            g("access-control-allow-origin").as_deref(),
            Some("https://a.example.com")
        );
        assert_eq!(
            g("access-control-allow-methods").as_deref(),
            Some("GET,POST")
        );
        assert_eq!(
            g("access-control-allow-headers").as_deref(),
            Some("x-custom")
        );
        assert_eq!(g("access-control-max-age").as_deref(), Some("86400"));
        assert_eq!(
            g("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(g("access-control-expose-headers"), None);
    }

    #[test]
    fn unmatched_preflight_forwards_or_is_ignored() {
        let h = hdrs(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        let c = on_request(Some(&policy()), &Method::OPTIONS, &h);
        assert!(c.reply().is_none());
        let ignore = CorsPolicy {
            forward_not_matching_preflights: false,
            ..policy()
        };
        let c = on_request(Some(&ignore), &Method::OPTIONS, &h);
        let r = c.reply().expect("answered without CORS headers");
        assert_eq!(r.status(), 200);
        assert!(r.headers().is_empty());
    }

    #[test]
    fn actual_requests_get_headers_only_for_allowed_origins() {
        let mut out = HeaderMap::new();
        let c = on_request(
            Some(&policy()),
            &Method::GET,
            &hdrs(&[("origin", "https://b.x")]),
        );
        c.apply(&mut out);
        assert_eq!(out["access-control-allow-origin"], "https://b.x");
        assert_eq!(out["access-control-expose-headers"], "x-exposed");
        assert_eq!(out["access-control-allow-credentials"], "true");
        assert!(out.get("access-control-allow-methods").is_none());

        for h in [hdrs(&[("origin", "https://evil")]), hdrs(&[])] {
            let mut out = HeaderMap::new();
            on_request(Some(&policy()), &Method::GET, &h).apply(&mut out);
            assert!(out.is_empty(), "{out:?}");
        }
        // OPTIONS without Access-Control-Request-Method is an ordinary request.
        let c = on_request(
            Some(&policy()),
            &Method::OPTIONS,
            &hdrs(&[("origin", "https://a.example.com")]),
        );
        assert!(c.reply().is_none());
    }
}
