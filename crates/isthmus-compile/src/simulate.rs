//! Walks a request or connection through a compiled [`ProxyConfig`] the way Envoy would —
//! listener, filter chain, route configuration, virtual host, route, cluster — so tests, `trace`
//! and `analyze` can ask "where does this call go?" (a port of the idea behind Istio's
//! `pilot/pkg/simulation`).

use isthmus_xds::listener::NetworkFilterConfig;
use isthmus_xds::route::HeaderMatcher;
use isthmus_xds::*;
use serde::Serialize;

/// A call into the proxy.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// Destination IP (sidecars: the original destination; `None` = any).
    pub address: Option<String>,
    pub port: u32,
    /// Speaks HTTP (after TLS, if any); otherwise raw TCP.
    pub http: bool,
    /// TLS ClientHello with this SNI (`Some("")` = TLS without SNI).
    pub tls_sni: Option<String>,
    pub alpn: Vec<String>,
    pub host: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

impl Call {
    pub fn http(port: u32, host: &str, path: &str) -> Call {
        Call {
            port,
            http: true,
            host: host.into(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            method: "GET".into(),
            ..Default::default()
        }
    }
    pub fn https(port: u32, host: &str, path: &str) -> Call {
        Call {
            tls_sni: Some(host.into()),
            ..Call::http(port, host, path)
        }
    }
    pub fn tcp(port: u32) -> Call {
        Call {
            port,
            ..Default::default()
        }
    }
    pub fn tls(port: u32, sni: &str) -> Call {
        Call {
            port,
            tls_sni: Some(sni.into()),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SimError {
    NoListener,
    NoFilterChain,
    MultipleFilterChain,
    NoVirtualHost,
    NoRoute,
    TlsRedirect,
    NoRouteConfig,
}

/// Where the call ended up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimResult {
    pub listener: Option<String>,
    /// Filter chain name, or `#index` when unnamed.
    pub filter_chain: Option<String>,
    pub route_config: Option<String>,
    pub virtual_host: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub direct_response: Option<u32>,
    /// The chain terminates TLS.
    pub tls_terminated: bool,
    pub error: Option<SimError>,
}

fn pick_listener<'a>(cfg: &'a ProxyConfig, call: &Call) -> Option<&'a Listener> {
    let by_addr = |addr: &str| {
        cfg.listeners
            .iter()
            .find(|l| l.port() == call.port && l.address.socket_address.address == addr)
    };
    if let Some(a) = &call.address {
        if let Some(l) = by_addr(a) {
            return Some(l);
        }
    }
    if let Some(l) = by_addr("0.0.0.0") {
        return Some(l);
    }
    // Sidecars: captured traffic without a dedicated listener stays on virtualOutbound.
    cfg.listeners
        .iter()
        .find(|l| l.use_original_dst == Some(true))
}

fn narrow(
    chains: Vec<(usize, &FilterChain)>,
    pred_specific: impl Fn(&FilterChainMatch) -> Option<bool>,
) -> Vec<(usize, &FilterChain)> {
    // pred_specific: None = criterion unset on this chain; Some(true) = set and matches; Some(false) = set, no match.
    let matching: Vec<_> = chains
        .iter()
        .copied()
        .filter(|(_, c)| c.filter_chain_match.as_ref().and_then(&pred_specific) == Some(true))
        .collect();
    if !matching.is_empty() {
        return matching;
    }
    chains
        .into_iter()
        .filter(|(_, c)| {
            c.filter_chain_match
                .as_ref()
                .and_then(&pred_specific)
                .is_none()
        })
        .collect()
}

fn sni_rank(names: &[String], sni: &str) -> Option<usize> {
    names
        .iter()
        .filter_map(|n| {
            if n.eq_ignore_ascii_case(sni) {
                Some(usize::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                sni.to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
                    .then_some(suffix.len())
            } else {
                None
            }
        })
        .max()
}

/// Envoy's filter-chain selection: destination port, server names (exact, then longest
/// wildcard), transport protocol, application protocols; at each step chains that set the
/// criterion and match beat chains that leave it unset.
pub fn match_filter_chain<'a>(
    l: &'a Listener,
    call: &Call,
) -> Result<(usize, &'a FilterChain), SimError> {
    let mut chains: Vec<(usize, &FilterChain)> = l.filter_chains.iter().enumerate().collect();
    chains = narrow(chains, |m| m.destination_port.map(|p| p == call.port));
    // Server names: most specific match wins.
    let sni = call.tls_sni.as_deref().unwrap_or("");
    let ranked: Vec<(usize, &FilterChain, usize)> = chains
        .iter()
        .filter_map(|(i, c)| {
            c.filter_chain_match
                .as_ref()
                .filter(|m| !m.server_names.is_empty())
                .and_then(|m| sni_rank(&m.server_names, sni))
                .map(|r| (*i, *c, r))
        })
        .collect();
    if let Some(best) = ranked.iter().map(|(_, _, r)| *r).max() {
        chains = ranked
            .into_iter()
            .filter(|(_, _, r)| *r == best)
            .map(|(i, c, _)| (i, c))
            .collect();
    } else {
        chains.retain(|(_, c)| c.server_names().is_empty());
    }
    let tp = if call.tls_sni.is_some() {
        "tls"
    } else {
        "raw_buffer"
    };
    chains = narrow(chains, |m| {
        if m.transport_protocol.is_empty() {
            None
        } else {
            Some(m.transport_protocol == tp)
        }
    });
    chains = narrow(chains, |m| {
        if m.application_protocols.is_empty() {
            None
        } else {
            Some(
                m.application_protocols
                    .iter()
                    .any(|a| call.alpn.contains(a)),
            )
        }
    });
    match chains.len() {
        0 => match &l.default_filter_chain {
            Some(d) => Ok((usize::MAX, d)),
            None => Err(SimError::NoFilterChain),
        },
        1 => Ok(chains[0]),
        _ => Err(SimError::MultipleFilterChain),
    }
}

fn header_value<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    match name {
        ":authority" => Some(&call.host),
        ":method" => Some(&call.method),
        ":path" => Some(&call.path),
        ":scheme" => Some(if call.tls_sni.is_some() {
            "https"
        } else {
            "http"
        }),
        _ => call
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str()),
    }
}

fn string_match(m: &StringMatcher, v: &str) -> bool {
    let (v, cmp) = if m.ignore_case {
        (v.to_ascii_lowercase(), true)
    } else {
        (v.to_string(), false)
    };
    let norm = |s: &str| {
        if cmp {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    if let Some(e) = &m.exact {
        return v == norm(e);
    }
    if let Some(p) = &m.prefix {
        return v.starts_with(&norm(p));
    }
    if let Some(s) = &m.suffix {
        return v.ends_with(&norm(s));
    }
    if let Some(c) = &m.contains {
        return v.contains(&norm(c));
    }
    if let Some(r) = &m.safe_regex {
        return regex::Regex::new(&format!("^(?:{})$", r.regex)).is_ok_and(|re| re.is_match(&v));
    }
    true
}

fn header_matches(h: &HeaderMatcher, call: &Call) -> bool {
    let v = header_value(call, &h.name);
    let ok = if h.present_match == Some(true) {
        v.is_some()
    } else {
        match (&h.string_match, v) {
            (Some(m), Some(v)) => string_match(m, v),
            (Some(m), None) if h.treat_missing_header_as_empty => string_match(m, ""),
            (Some(_), None) => false,
            (None, v) => v.is_some(),
        }
    };
    ok != h.invert_match
}

/// Whether a route's match accepts the call.
pub fn route_matches(m: &RouteMatch, call: &Call) -> bool {
    let path = call.path.split('?').next().unwrap_or("");
    let cs = m.case_sensitive.unwrap_or(true);
    let (p, lower) = if cs {
        (path.to_string(), false)
    } else {
        (path.to_ascii_lowercase(), true)
    };
    let fix = |s: &str| {
        if lower {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path_ok = if let Some(pre) = &m.prefix {
        p.starts_with(&fix(pre))
    } else if let Some(exact) = &m.path {
        p == fix(exact)
    } else if let Some(r) = &m.safe_regex {
        regex::Regex::new(&format!("^(?:{})$", r.regex)).is_ok_and(|re| re.is_match(path))
    } else if let Some(pre) = &m.path_separated_prefix {
        p == fix(pre) || p.starts_with(&format!("{}/", fix(pre)))
    } else {
        true
    };
    path_ok && m.headers.iter().all(|h| header_matches(h, call))
}

/// Runs one call through the config.
pub fn simulate(cfg: &ProxyConfig, call: &Call) -> SimResult {
    let mut r = SimResult::default();
    let Some(l) = pick_listener(cfg, call) else {
        r.error = Some(SimError::NoListener);
        return r;
    };
    r.listener = Some(l.name.clone());
    let (idx, fc) = match match_filter_chain(l, call) {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    r.filter_chain = Some(if !fc.name.is_empty() {
        fc.name.clone()
    } else if idx == usize::MAX {
        "default".into()
    } else {
        format!("#{idx}")
    });
    r.tls_terminated = fc
        .transport_socket
        .as_ref()
        .is_some_and(|t| t.as_downstream_tls().is_some());
    if let Some(f) = fc.filters.first() {
        match &f.typed_config {
            NetworkFilterConfig::TcpProxy(t) => {
                r.cluster = t.cluster.clone().or_else(|| {
                    t.weighted_clusters
                        .as_ref()
                        .and_then(|w| w.clusters.first().map(|c| c.name.clone()))
                });
                return r;
            }
            NetworkFilterConfig::HttpConnectionManager(h) => {
                let rc = match (&h.rds, &h.route_config) {
                    (Some(rds), _) => {
                        r.route_config = Some(rds.route_config_name.clone());
                        cfg.route(&rds.route_config_name)
                    }
                    (None, Some(inline)) => {
                        r.route_config = Some(inline.name.clone());
                        Some(inline)
                    }
                    _ => None,
                };
                let Some(rc) = rc else {
                    r.error = Some(SimError::NoRouteConfig);
                    return r;
                };
                let Some(vh) = rc.find_virtual_host(&call.host) else {
                    r.error = Some(SimError::NoVirtualHost);
                    return r;
                };
                r.virtual_host = Some(vh.name.clone());
                if vh.require_tls == "ALL" && !r.tls_terminated && call.tls_sni.is_none() {
                    r.error = Some(SimError::TlsRedirect);
                    return r;
                }
                let Some(route) = vh.routes.iter().find(|rt| route_matches(&rt.r#match, call))
                else {
                    r.error = Some(SimError::NoRoute);
                    return r;
                };
                r.route = Some(route.name.clone());
                if let Some(d) = &route.direct_response {
                    r.direct_response = Some(d.status);
                }
                if let Some(a) = &route.route {
                    r.cluster = a.cluster.clone().or_else(|| {
                        a.weighted_clusters
                            .as_ref()
                            .and_then(|w| w.clusters.first().map(|c| c.name.clone()))
                    });
                }
                return r;
            }
        }
    }
    r
}
