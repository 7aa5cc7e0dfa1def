//! A config version compiled for serving: TLS contexts built, regexes compiled, clusters
//! instantiated (and reused from the previous version when unchanged, so breaker counters,
//! pools and outlier state survive updates that do not touch them).

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_tls::ServerTls;

use crate::cluster::ClusterRuntime;
use crate::config::*;
use crate::stats::Stats;
use crate::tls::{self, SecretSet};

pub struct Runtime {
    pub config: Arc<ProxyConfig>,
    pub secrets: SecretSet,
    pub listeners: BTreeMap<String, Arc<ListenerRt>>,
    pub clusters: BTreeMap<String, Arc<ClusterRuntime>>,
}

pub struct ListenerRt {
    pub spec: Listener,
    pub chains: Vec<ChainRt>,
    pub default_chain: Option<ChainRt>,
    /// Whether any chain needs the ClientHello (server names, transport protocol, ALPN).
    pub needs_peek: bool,
}

pub struct ChainRt {
    pub spec: FilterChain,
    pub tls: Option<Arc<ServerTls>>,
    pub routes: Option<Arc<RoutesRt>>,
}

pub struct RoutesRt {
    pub name: String,
    pub vhosts: Vec<VhostRt>,
}

pub struct VhostRt {
    pub name: String,
    pub require_tls: bool,
    pub domains: Vec<String>,
    pub routes: Vec<RouteRt>,
}

pub struct RouteRt {
    pub spec: Route,
    pub regex: Option<regex::Regex>,
    pub headers: Vec<(HeaderMatcher, Option<regex::Regex>)>,
    pub query: Vec<(HeaderMatcher, Option<regex::Regex>)>,
}

impl Runtime {
    /// The `bindToPort: false` listener for an original destination (exact address first, then the unspecified address on that port).
    pub fn virtual_listener_for(&self, dst: std::net::SocketAddr) -> Option<Arc<ListenerRt>> {
        let unbound = || self.listeners.values().filter(|l| !l.spec.bind_to_port);
        unbound()
            .find(|l| l.spec.address == dst)
            .or_else(|| {
                unbound().find(|l| {
                    l.spec.address.ip().is_unspecified() && l.spec.address.port() == dst.port()
                })
            })
            .cloned()
    }

    pub fn empty() -> Self {
        Runtime {
            config: Arc::new(ProxyConfig::default()),
            secrets: SecretSet::default(),
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
        }
    }

    /// Build a runtime or refuse the config whole.
    pub fn build(
        cfg: ProxyConfig,
        prev: Option<&Runtime>,
        stats: &Arc<Stats>,
    ) -> Result<Runtime, ConfigError> {
        cfg.validate()?;
        let mut problems = Vec::new();
        let mut secrets = SecretSet::load(&cfg.secrets, prev.map(|p| &p.secrets), &mut problems);
        // Certificates rotate in place (shared stores); trust bundles are baked into the
        // cluster's verifier, so a changed CA rebuilds the cluster.
        let ca_of = |c: &ProxyConfig, name: &str| {
            c.secrets
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.trusted_ca.clone())
        };
        let same_ca = |t: &UpstreamTls| match (prev, &t.validation) {
            (Some(p), Some(v)) => ca_of(&p.config, v) == ca_of(&cfg, v),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let mut clusters = BTreeMap::new();
        for c in &cfg.clusters {
            if let Some(old) = prev.and_then(|p| p.clusters.get(&c.name)) {
                if old.spec == *c && c.tls.as_ref().is_none_or(same_ca) {
                    clusters.insert(c.name.clone(), old.clone());
                    continue;
                }
            }
            let orig = match &c.tls {
                None => None,
                Some(t) => match tls::client_tls(t, &secrets, c.http2) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        problems.push(format!("cluster {}: {e}", c.name));
                        None
                    }
                },
            };
            clusters.insert(
                c.name.clone(),
                Arc::new(ClusterRuntime::new(c.clone(), orig, stats.clone())),
            );
        }
        let mut listeners = BTreeMap::new();
        for l in &cfg.listeners {
            let mut build_chain = |fc: &FilterChain| -> ChainRt {
                let what = format!("listener {} chain {:?}", l.name, fc.name);
                let alpn: &[&str] = match fc.action {
                    ChainAction::Http(_) => &["h2", "http/1.1"],
                    _ => &[],
                };
                let tls = fc
                    .tls
                    .as_ref()
                    .and_then(|t| match tls::server_tls(t, &secrets, alpn) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            problems.push(format!("{what}: {e}"));
                            None
                        }
                    });
                let routes = match &fc.action {
                    ChainAction::Http(h) => Some(Arc::new(compile_routes(&h.route_config))),
                    _ => None,
                };
                ChainRt {
                    spec: fc.clone(),
                    tls,
                    routes,
                }
            };
            let chains: Vec<ChainRt> = l.filter_chains.iter().map(&mut build_chain).collect();
            let default_chain = l.default_filter_chain.as_ref().map(&mut build_chain);
            let needs_peek = l.filter_chains.iter().any(|c| {
                !c.matcher.server_names.is_empty()
                    || c.matcher.transport_protocol.is_some()
                    || !c.matcher.application_protocols.is_empty()
            });
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerRt {
                    spec: l.clone(),
                    chains,
                    default_chain,
                    needs_peek,
                }),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        secrets.commit();
        Ok(Runtime {
            config: Arc::new(cfg),
            secrets,
            listeners,
            clusters,
        })
    }
}

fn compile_routes(rt: &RouteTable) -> RoutesRt {
    RoutesRt {
        name: rt.name.clone(),
        vhosts: rt
            .virtual_hosts
            .iter()
            .map(|v| VhostRt {
                name: v.name.clone(),
                require_tls: v.require_tls == "ALL" || v.require_tls == "EXTERNAL_ONLY",
                domains: v.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                routes: v
                    .routes
                    .iter()
                    .map(|r| RouteRt {
                        spec: r.clone(),
                        // validate() already proved these compile.
                        regex: r.matcher.safe_regex.as_ref().and_then(|re| {
                            let re = if r.matcher.case_sensitive {
                                format!("^(?:{re})$")
                            } else {
                                format!("(?i)^(?:{re})$")
                            };
                            regex::Regex::new(&re).ok()
                        }),
                        headers: r
                            .matcher
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.clone(),
                                    h.safe_regex.as_ref().and_then(|re| {
                                        regex::Regex::new(&format!("^(?:{re})$")).ok()
                                    }),
                                )
                            })
                            .collect(),
                        query: r
                            .matcher
                            .query_parameters
                            .iter()
                            .map(|h| {
                                (
                                    h.clone(),
                                    h.safe_regex.as_ref().and_then(|re| {
                                        regex::Regex::new(&format!("^(?:{re})$")).ok()
                                    }),
                                )
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What the filter-chain matcher knows about a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnFacts {
    pub dst_port: u16,
    pub dst_ip: Option<std::net::IpAddr>,
    pub src_ip: Option<std::net::IpAddr>,
    pub sni: Option<String>,
    pub tls: bool,
    pub alpn: Vec<String>,
}

fn sni_score(names: &[String], sni: Option<&str>) -> Option<usize> {
    // Higher is more specific: exact > longer wildcard > catch-all (no names).
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    let mut best = None;
    for n in names {
        let n = n.to_ascii_lowercase();
        let s = if n == sni {
            Some(usize::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            // "*.example.com" matches any name ending in ".example.com".
            (suffix.starts_with('.') && sni.len() > suffix.len() && sni.ends_with(suffix))
                .then_some(suffix.len() + 1)
        } else {
            None
        };
        best = best.max(s);
    }
    best
}

impl ListenerRt {
    /// Envoy's filter-chain selection order: destination port, server names (most specific),
    /// transport protocol, application protocols; then the default chain.
    pub fn select(&self, f: &ConnFacts) -> Option<&ChainRt> {
        let all: Vec<&ChainRt> = self.chains.iter().collect();
        let by_port: Vec<&ChainRt> = {
            let exact: Vec<_> = all
                .iter()
                .copied()
                .filter(|c| c.spec.matcher.destination_port == Some(f.dst_port))
                .collect();
            if exact.is_empty() {
                all.iter()
                    .copied()
                    .filter(|c| c.spec.matcher.destination_port.is_none())
                    .collect()
            } else {
                exact
            }
        };
        let by_port = by_prefix(by_port, f.dst_ip, |c| &c.spec.matcher.prefix_ranges);
        let scored: Vec<(usize, &ChainRt)> = by_port
            .iter()
            .filter_map(|c| {
                sni_score(&c.spec.matcher.server_names, f.sni.as_deref()).map(|s| (s, *c))
            })
            .collect();
        let top = scored.iter().map(|s| s.0).max();
        let by_sni: Vec<&ChainRt> = scored
            .iter()
            .filter(|s| Some(s.0) == top)
            .map(|s| s.1)
            .collect();
        let tp = if f.tls { "tls" } else { "raw_buffer" };
        let by_tp: Vec<&ChainRt> = {
            let exact: Vec<_> = by_sni
                .iter()
                .copied()
                .filter(|c| c.spec.matcher.transport_protocol.as_deref() == Some(tp))
                .collect();
            if exact.is_empty() {
                by_sni
                    .iter()
                    .copied()
                    .filter(|c| c.spec.matcher.transport_protocol.is_none())
                    .collect()
            } else {
                exact
            }
        };
        let by_alpn: Vec<&ChainRt> = {
            let exact: Vec<_> = by_tp
                .iter()
                .copied()
                .filter(|c| {
                    c.spec
                        .matcher
                        .application_protocols
                        .iter()
                        .any(|a| f.alpn.contains(a))
                })
                .collect();
            if exact.is_empty() {
                by_tp
                    .iter()
                    .copied()
                    .filter(|c| c.spec.matcher.application_protocols.is_empty())
                    .collect()
            } else {
                exact
            }
        };
        let by_src = by_prefix(by_alpn, f.src_ip, |c| &c.spec.matcher.source_prefix_ranges);
        by_src.first().copied().or(self.default_chain.as_ref())
    }
}

/// Envoy's IP stage: chains whose ranges contain `ip` with the longest prefix, else chains
/// without ranges.
fn by_prefix<'a>(
    chains: Vec<&'a ChainRt>,
    ip: Option<std::net::IpAddr>,
    ranges: impl Fn(&ChainRt) -> &Vec<String>,
) -> Vec<&'a ChainRt> {
    let mut best: Option<u8> = None;
    let mut hits: Vec<(&'a ChainRt, u8)> = Vec::new();
    if let Some(ip) = ip {
        for c in &chains {
            let m = ranges(c)
                .iter()
                .filter_map(|r| crate::config::parse_cidr(r))
                .filter(|(n, l)| crate::config::cidr_contains(*n, *l, ip))
                .map(|(_, l)| l)
                .max();
            if let Some(l) = m {
                hits.push((c, l));
                best = best.max(Some(l));
            }
        }
    }
    match best {
        Some(b) => hits.into_iter().filter(|h| h.1 == b).map(|h| h.0).collect(),
        None => chains
            .into_iter()
            .filter(|c| ranges(c).is_empty())
            .collect(),
    }
}

/// Strip a `:port` suffix (and IPv6 brackets stay intact) from a Host/:authority value.
pub fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') => {
            host
        }
        _ => h,
    }
}

impl RoutesRt {
    /// Envoy virtual host selection: exact, then longest `*.suffix`, then longest `prefix.*`,
    /// then `*`. Ports are ignored (Istio sets ignorePortInHostMatching).
    pub fn vhost(&self, host: &str) -> Option<&VhostRt> {
        let host = host_without_port(host).to_ascii_lowercase();
        if let Some(v) = self.vhosts.iter().find(|v| v.domains.contains(&host)) {
            return Some(v);
        }
        let mut best: Option<(usize, &VhostRt)> = None;
        for v in &self.vhosts {
            for d in &v.domains {
                if let Some(suffix) = d.strip_prefix('*') {
                    if !suffix.is_empty()
                        && host.len() > suffix.len()
                        && host.ends_with(suffix)
                        && best.is_none_or(|b| suffix.len() > b.0)
                    {
                        best = Some((suffix.len(), v));
                    }
                }
            }
        }
        if let Some(b) = best {
            return Some(b.1);
        }
        for v in &self.vhosts {
            for d in &v.domains {
                if let Some(prefix) = d.strip_suffix('*') {
                    if !prefix.is_empty()
                        && host.len() > prefix.len()
                        && host.starts_with(prefix)
                        && best.is_none_or(|b| prefix.len() > b.0)
                    {
                        best = Some((prefix.len(), v));
                    }
                }
            }
        }
        if let Some(b) = best {
            return Some(b.1);
        }
        self.vhosts
            .iter()
            .find(|v| v.domains.iter().any(|d| d == "*"))
    }
}

impl VhostRt {
    /// First route whose match accepts the request.
    pub fn route(
        &self,
        method: &str,
        authority: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> Option<&RouteRt> {
        let path_and_query = path_and_query.split('#').next().unwrap_or("");
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let req = Req {
            method,
            authority,
            path,
            query,
            headers,
        };
        self.routes.iter().find(|r| r.matches(&req))
    }
}

/// The request facts a route match looks at.
pub struct Req<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
}

fn string_match(h: &HeaderMatcher, re: &Option<regex::Regex>, value: Option<&str>) -> bool {
    let ok = match (value, &h.exact, &h.prefix, re) {
        (None, ..) => false,
        (Some(v), Some(e), _, _) => v == e,
        (Some(v), None, Some(p), _) => v.starts_with(p.as_str()),
        (Some(v), None, None, Some(r)) => r.is_match(v),
        (Some(_), None, None, None) => true, // present match
    };
    ok != h.invert
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl RouteRt {
    pub fn matches(&self, r: &Req<'_>) -> bool {
        let m = &self.spec.matcher;
        let cs = m.case_sensitive;
        let eq = |a: &str, b: &str| {
            if cs {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |p: &str| {
            r.path.len() >= p.len() && r.path.is_char_boundary(p.len()) && eq(&r.path[..p.len()], p)
        };
        let path_ok = if let Some(p) = &m.path {
            eq(r.path, p)
        } else if let Some(p) = &m.prefix {
            starts(p)
        } else if let Some(p) = &m.path_separated_prefix {
            starts(p) && (r.path.len() == p.len() || r.path.as_bytes().get(p.len()) == Some(&b'/'))
        } else if m.safe_regex.is_some() {
            self.regex.as_ref().is_some_and(|re| re.is_match(r.path))
        } else {
            true
        };
        if !path_ok {
            return false;
        }
        if !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(r.method)) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(h, re)| {
            let owned;
            let value: Option<&str> = match h.name.as_str() {
                ":method" => Some(r.method),
                ":path" => Some(r.path),
                ":authority" | "host" => Some(r.authority),
                n => match r.headers.get(n) {
                    Some(v) => {
                        owned = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        Some(owned.as_str())
                    }
                    None => None,
                },
            };
            string_match(h, re, value)
        });
        headers_ok
            && self
                .query
                .iter()
                .all(|(h, re)| string_match(h, re, query_value(r.query, &h.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VhostRt {
        VhostRt {
            name: name.into(),
            require_tls: false,
            domains: domains.iter().map(|s| s.to_string()).collect(),
            routes: vec![],
        }
    }

    #[test]
    fn vhost_precedence() {
        let r = RoutesRt {
            name: "r".into(),
            vhosts: vec![
                vh("all", &["*"]),
                vh("pre", &["api.*"]),
                vh("suf", &["*.example.com"]),
                vh("ex", &["api.example.com"]),
            ],
        };
        assert_eq!(r.vhost("api.example.com:8080").unwrap().name, "ex");
        assert_eq!(r.vhost("www.example.com").unwrap().name, "suf");
        assert_eq!(r.vhost("api.other.org").unwrap().name, "pre");
        assert_eq!(r.vhost("x.y").unwrap().name, "all");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
    }

    fn chain(name: &str, m: serde_json::Value) -> ChainRt {
        let spec: FilterChain = serde_json::from_value(serde_json::json!({
            "name": name, "filterChainMatch": m, "action": {"passthrough": {}}
        }))
        .unwrap();
        ChainRt {
            spec,
            tls: None,
            routes: None,
        }
    }

    fn listener(chains: Vec<ChainRt>, default: Option<ChainRt>) -> ListenerRt {
        let spec: Listener =
            serde_json::from_value(serde_json::json!({"name": "l", "address": "127.0.0.1:0"}))
                .unwrap();
        ListenerRt {
            spec,
            chains,
            default_chain: default,
            needs_peek: true,
        }
    }

    fn pick(
        l: &ListenerRt,
        port: u16,
        sni: Option<&str>,
        tls: bool,
        alpn: &[&str],
    ) -> Option<String> {
        let f = ConnFacts {
            dst_port: port,
            dst_ip: Some("10.0.0.5".parse().unwrap()),
            src_ip: Some("192.168.1.1".parse().unwrap()),
            sni: sni.map(String::from),
            tls,
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        };
        l.select(&f).map(|c| c.spec.name.clone())
    }

    #[test]
    fn filter_chain_selection_order() {
        use serde_json::json;
        let l = listener(
            vec![
                chain("wild", json!({"serverNames": ["*.example.com"]})),
                chain("exact", json!({"serverNames": ["api.example.com"]})),
                chain("deeper-wild", json!({"serverNames": ["*.eu.example.com"]})),
                chain("port9000", json!({"destinationPort": 9000})),
                chain("tls-any", json!({"transportProtocol": "tls"})),
                chain("raw", json!({"transportProtocol": "raw_buffer"})),
                chain(
                    "mtls-alpn",
                    json!({"serverNames": ["svc.local"], "applicationProtocols": ["istio-peer-exchange", "istio"]}),
                ),
                chain("svc-plain", json!({"serverNames": ["svc.local"]})),
            ],
            Some(chain("default", json!({}))),
        );
        assert_eq!(
            pick(&l, 443, Some("api.example.com"), true, &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            pick(&l, 443, Some("www.example.com"), true, &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            pick(&l, 443, Some("a.b.example.com"), true, &[]).as_deref(),
            Some("wild"),
            "multi-label wildcard"
        );
        assert_eq!(
            pick(&l, 443, Some("x.eu.example.com"), true, &[]).as_deref(),
            Some("deeper-wild"),
            "longest wildcard wins"
        );
        assert_eq!(
            pick(&l, 443, Some("example.com"), true, &[]).as_deref(),
            Some("tls-any")
        );
        assert_eq!(
            pick(&l, 443, Some("API.EXAMPLE.COM"), true, &[]).as_deref(),
            Some("exact"),
            "SNI case-insensitive"
        );
        assert_eq!(pick(&l, 443, None, false, &[]).as_deref(), Some("raw"));
        assert_eq!(
            pick(&l, 9000, Some("api.example.com"), true, &[]).as_deref(),
            Some("port9000"),
            "port before SNI"
        );
        assert_eq!(
            pick(
                &l,
                443,
                Some("svc.local"),
                true,
                &["istio-peer-exchange", "h2"]
            )
            .as_deref(),
            Some("mtls-alpn")
        );
        assert_eq!(
            pick(&l, 443, Some("svc.local"), true, &["h2"]).as_deref(),
            Some("svc-plain")
        );
        let no_default = listener(vec![chain("only", json!({"serverNames": ["a.b"]}))], None);
        assert_eq!(
            pick(&no_default, 443, Some("c.d"), true, &[]),
            None,
            "no chain: NR"
        );
        let ranges = listener(
            vec![
                chain("wide", json!({"prefixRanges": ["10.0.0.0/8"]})),
                chain("narrow", json!({"prefixRanges": ["10.0.0.0/24"]})),
                chain("any", json!({})),
            ],
            None,
        );
        assert_eq!(
            pick(&ranges, 80, None, false, &[]).as_deref(),
            Some("narrow"),
            "longest prefix wins"
        );
        let other = listener(
            vec![
                chain("wide", json!({"prefixRanges": ["172.16.0.0/12"]})),
                chain("any", json!({})),
            ],
            None,
        );
        assert_eq!(pick(&other, 80, None, false, &[]).as_deref(), Some("any"));
        let with_default = listener(
            vec![chain("only", json!({"serverNames": ["a.b"]}))],
            Some(chain("default", json!({}))),
        );
        assert_eq!(
            pick(&with_default, 443, Some("c.d"), true, &[]).as_deref(),
            Some("default")
        );
    }

    #[test]
    fn sni_specificity() {
        assert_eq!(sni_score(&[], Some("a.b")), Some(0));
        assert!(
            sni_score(&["a.example.com".into()], Some("a.example.com"))
                > sni_score(&["*.example.com".into()], Some("a.example.com"))
        );
        assert_eq!(
            sni_score(&["*.example.com".into()], Some("example.com")),
            None
        );
        assert_eq!(sni_score(&["a.example.com".into()], None), None);
    }
}
