//! `from_xds`: the compiled Envoy-shaped config (`isthmus-xds`) → the proxy's runtime config.
//!
//! Every setting the proxy enforces is carried over; settings that would change traffic but
//! cannot be honoured are reported as problems so the whole config is refused (NACK) instead
//! of being silently half-applied. Cosmetic or telemetry-only fields (http filters, stat
//! prefixes, metadata other than Istio's service list) are ignored.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use isthmus_xds as x;

use crate::config::*;

fn dur(d: &Option<x::Duration>) -> Option<Dur> {
    d.as_ref().map(|d| Dur(d.as_std()))
}

fn data_source(d: &x::DataSource, what: &str, p: &mut Vec<String>) -> Option<DataSource> {
    if let Some(f) = &d.filename {
        return Some(DataSource::Filename(f.clone()));
    }
    if let Some(s) = &d.inline_string {
        return Some(DataSource::InlineString(s.clone()));
    }
    if let Some(b) = &d.inline_bytes {
        match base64::engine::general_purpose::STANDARD.decode(b) {
            Ok(bytes) => {
                return Some(DataSource::InlineString(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ))
            }
            Err(e) => p.push(format!("{what}: inlineBytes is not base64: {e}")),
        }
    }
    None
}

struct Conv {
    problems: Vec<String>,
    secrets: Vec<Secret>,
}

impl Conv {
    /// Inline certificates become named secrets so TLS contexts only ever reference names.
    fn inline_cert(&mut self, name: String, c: &x::tls::TlsCertificate) -> String {
        let chain = c
            .certificate_chain
            .as_ref()
            .and_then(|d| data_source(d, &name, &mut self.problems));
        let key = c
            .private_key
            .as_ref()
            .and_then(|d| data_source(d, &name, &mut self.problems));
        self.secrets.push(Secret {
            name: name.clone(),
            certificate_chain: chain,
            private_key: key,
            trusted_ca: None,
        });
        name
    }

    fn inline_ca(
        &mut self,
        name: String,
        v: &x::tls::CertificateValidationContext,
    ) -> Option<String> {
        let ca = v
            .trusted_ca
            .as_ref()
            .and_then(|d| data_source(d, &name, &mut self.problems))?;
        self.secrets.push(Secret {
            name: name.clone(),
            certificate_chain: None,
            private_key: None,
            trusted_ca: Some(ca),
        });
        Some(name)
    }

    fn sans(&mut self, what: &str, m: &[x::StringMatcher]) -> Vec<String> {
        let mut out = Vec::new();
        for s in m {
            match &s.exact {
                Some(e) => out.push(e.clone()),
                None => self.problems.push(format!(
                    "{what}: only exact matchSubjectAltNames are supported"
                )),
            }
        }
        out
    }

    fn downstream_tls(&mut self, what: &str, t: &x::DownstreamTlsContext) -> DownstreamTls {
        let c = &t.common_tls_context;
        let mut certificates: Vec<String> = c
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        for (i, tc) in c.tls_certificates.iter().enumerate() {
            certificates.push(self.inline_cert(format!("inline:{what}:cert{i}"), tc));
        }
        let mut validation = c.validation_sds_name().map(String::from);
        if validation.is_none() {
            if let Some(v) = &c.validation_context {
                validation = self.inline_ca(format!("inline:{what}:ca"), v);
            }
        }
        let require = t.require_client_certificate.unwrap_or(false);
        let mode = match (&validation, require) {
            (None, _) => TlsMode::Simple,
            (Some(v), true) if v == x::names::SDS_ROOTCA => TlsMode::IstioMutual,
            (Some(_), true) => TlsMode::Mutual,
            (Some(_), false) => TlsMode::OptionalMutual,
        };
        let sans = self.sans(what, c.match_subject_alt_names());
        DownstreamTls {
            mode,
            certificates,
            validation,
            subject_alt_names: sans,
            alpn: c.alpn_protocols.clone(),
            trust_domains: Vec::new(),
        }
    }

    fn upstream_tls(&mut self, what: &str, t: &x::UpstreamTlsContext) -> UpstreamTls {
        let c = &t.common_tls_context;
        let mut certificate = c
            .tls_certificate_sds_secret_configs
            .first()
            .map(|s| s.name.clone());
        if certificate.is_none() {
            if let Some(tc) = c.tls_certificates.first() {
                certificate = Some(self.inline_cert(format!("inline:{what}:cert"), tc));
            }
        }
        let mut validation = c.validation_sds_name().map(String::from);
        if validation.is_none() {
            if let Some(v) = &c.validation_context {
                validation = self.inline_ca(format!("inline:{what}:ca"), v);
            }
        }
        let mode = match (&certificate, &validation) {
            (Some(_), Some(v)) if v == x::names::SDS_ROOTCA => TlsMode::IstioMutual,
            (Some(_), _) => TlsMode::Mutual,
            (None, _) => TlsMode::Simple,
        };
        UpstreamTls {
            mode,
            sni: (!t.sni.is_empty()).then(|| t.sni.clone()),
            alpn: c.alpn_protocols.clone(),
            subject_alt_names: self.sans(what, c.match_subject_alt_names()),
            certificate,
            // Envoy verifies nothing without a validation context.
            insecure_skip_verify: validation.is_none(),
            validation,
        }
    }

    fn string_matcher(
        &mut self,
        what: &str,
        name: &str,
        m: &Option<x::StringMatcher>,
        present: Option<bool>,
        invert: bool,
    ) -> HeaderMatcher {
        let mut h = HeaderMatcher {
            name: name.to_string(),
            invert,
            ..Default::default()
        };
        let Some(m) = m else {
            h.present = present.unwrap_or(true);
            return h;
        };
        let ci = if m.ignore_case { "(?i)" } else { "" };
        if let Some(e) = &m.exact {
            if m.ignore_case {
                h.safe_regex = Some(format!("{ci}{}", regex::escape(e)))
            } else {
                h.exact = Some(e.clone())
            }
        } else if let Some(pfx) = &m.prefix {
            if m.ignore_case {
                h.safe_regex = Some(format!("{ci}{}.*", regex::escape(pfx)))
            } else {
                h.prefix = Some(pfx.clone())
            }
        } else if let Some(s) = &m.suffix {
            h.safe_regex = Some(format!("{ci}.*{}", regex::escape(s)));
        } else if let Some(s) = &m.contains {
            h.safe_regex = Some(format!("{ci}.*{}.*", regex::escape(s)));
        } else if let Some(r) = &m.safe_regex {
            h.safe_regex = Some(format!("{ci}{}", r.regex));
        } else {
            self.problems
                .push(format!("{what}: empty string matcher for {name}"));
        }
        h
    }

    /// Envoy's per-route `HTTPFault` → the runtime fault. An unset percentage is 0% (Envoy's
    /// default FractionalPercent), so such a delay/abort is dropped; a gRPC abort becomes a
    /// trailers-only gRPC reply.
    fn fault(&mut self, what: &str, f: &x::route::HttpFault) -> Option<FaultInjection> {
        let pct = |p: &Option<x::route::FractionalPercent>| {
            p.as_ref().map(|p| p.as_percent()).unwrap_or(0.0)
        };
        let delay = f.delay.as_ref().and_then(|d| {
            let fixed = d.fixed_delay.as_ref()?;
            Some(FaultDelay {
                fixed_delay: Dur(fixed.as_std()),
                percentage: pct(&d.percentage),
            })
        });
        let abort = f.abort.as_ref().and_then(|a| {
            if let Some(code) = a.grpc_status {
                return Some(FaultAbort {
                    http_status: 200,
                    grpc_status: Some(code),
                    percentage: pct(&a.percentage),
                });
            }
            let status = a.http_status?;
            match u16::try_from(status)
                .ok()
                .filter(|s| (200..600).contains(s))
            {
                Some(http_status) => Some(FaultAbort {
                    http_status,
                    grpc_status: None,
                    percentage: pct(&a.percentage),
                }),
                None => {
                    self.problems.push(format!(
                        "{what}: fault abort httpStatus {status} is not 200-599"
                    ));
                    None
                }
            }
        });
        (delay.is_some() || abort.is_some()).then_some(FaultInjection { delay, abort })
    }

    /// Envoy's per-route `CorsPolicy` → [`crate::cors::CorsPolicy`]; `filterEnabled` at 0%
    /// turns it off.
    fn cors(&mut self, what: &str, c: &x::route::CorsPolicy) -> Option<crate::cors::CorsPolicy> {
        use crate::cors::OriginMatch;
        if c.filter_enabled
            .as_ref()
            .is_some_and(|f| f.default_value.numerator == 0)
        {
            return None;
        }
        let mut origins = Vec::new();
        for m in &c.allow_origin_string_match {
            let ci = |s: &str| {
                if m.ignore_case {
                    OriginMatch::SafeRegex(format!("(?i){}", regex::escape(s)))
                } else {
                    OriginMatch::Exact(s.to_string())
                }
            };
            let o = if let Some(e) = &m.exact {
                ci(e)
            } else if let Some(p) = &m.prefix {
                if m.ignore_case {
                    OriginMatch::SafeRegex(format!("(?i){}.*", regex::escape(p)))
                } else {
                    OriginMatch::Prefix(p.clone())
                }
            } else if let Some(sfx) = &m.suffix {
                if m.ignore_case {
                    OriginMatch::SafeRegex(format!("(?i).*{}", regex::escape(sfx)))
                } else {
                    OriginMatch::Suffix(sfx.clone())
                }
            } else if let Some(x) = &m.contains {
                if m.ignore_case {
                    OriginMatch::SafeRegex(format!("(?i).*{}.*", regex::escape(x)))
                } else {
                    OriginMatch::Contains(x.clone())
                }
            } else if let Some(r) = &m.safe_regex {
                if regex::Regex::new(&r.regex).is_err() {
                    self.problems.push(format!(
                        "{what}: CORS origin regex {:?} does not compile",
                        r.regex
                    ));
                    continue;
                }
                OriginMatch::SafeRegex(r.regex.clone())
            } else {
                self.problems
                    .push(format!("{what}: empty CORS allowOriginStringMatch entry"));
                continue;
            };
            origins.push(o);
        }
        Some(crate::cors::CorsPolicy {
            allow_origins: origins,
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age.clone(),
            allow_credentials: c.allow_credentials.unwrap_or(false),
            forward_not_matching_preflights: c.forward_not_matching_preflights.unwrap_or(true),
        })
    }

    fn route_table(&mut self, rc: &x::RouteConfiguration) -> RouteTable {
        let mut vhosts = Vec::new();
        for vh in &rc.virtual_hosts {
            let mut routes = Vec::new();
            for (i, r) in vh.routes.iter().enumerate() {
                let what = format!("route {} vhost {} route {i}", rc.name, vh.name);
                let m = &r.r#match;
                let mut matcher = RouteMatch {
                    prefix: m.prefix.clone(),
                    path: m.path.clone(),
                    safe_regex: m.safe_regex.as_ref().map(|r| r.regex.clone()),
                    path_separated_prefix: m.path_separated_prefix.clone(),
                    case_sensitive: m.case_sensitive.unwrap_or(true),
                    ..Default::default()
                };
                for h in &m.headers {
                    let hm = self.string_matcher(
                        &what,
                        &h.name,
                        &h.string_match,
                        h.present_match,
                        h.invert_match,
                    );
                    matcher.headers.push(hm);
                }
                for q in &m.query_parameters {
                    let qm = self.string_matcher(
                        &what,
                        &q.name,
                        &q.string_match,
                        q.present_match,
                        false,
                    );
                    matcher.query_parameters.push(qm);
                }
                let action = if let Some(a) = &r.route {
                    // Mirrors only copy traffic (the primary request is unaffected), so they do
                    // not refuse the config; but the shadow service silently getting nothing
                    // would be a surprise, hence the warning.
                    if !a.request_mirror_policies.is_empty() {
                        tracing::warn!(route = %what, mirrors = a.request_mirror_policies.len(), "requestMirrorPolicies (VirtualService mirror/mirrors) are not supported by this proxy; no request is mirrored");
                    }
                    let retry_policy = a.retry_policy.as_ref().map(|rp| RetryPolicy {
                        num_retries: rp.num_retries.unwrap_or(1),
                        per_try_timeout: dur(&rp.per_try_timeout),
                        retry_on: rp.retry_on.clone(),
                        retriable_status_codes: rp
                            .retriable_status_codes
                            .iter()
                            .filter_map(|c| u16::try_from(*c).ok())
                            .collect(),
                    });
                    RouteAction::Route(RouteTarget {
                        cluster: a.cluster.clone(),
                        weighted_clusters: a
                            .weighted_clusters
                            .as_ref()
                            .map(|w| {
                                w.clusters
                                    .iter()
                                    .map(|c| WeightedCluster {
                                        name: c.name.clone(),
                                        weight: c.weight,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        timeout: dur(&a.timeout),
                        retry_policy,
                        prefix_rewrite: a.prefix_rewrite.clone(),
                        host_rewrite: a.host_rewrite_literal.clone(),
                    })
                } else if let Some(d) = &r.direct_response {
                    let body = d
                        .body
                        .as_ref()
                        .and_then(|b| data_source(b, &what, &mut self.problems))
                        .and_then(|ds| ds.load().ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    RouteAction::DirectResponse(DirectResponse {
                        status: u16::try_from(d.status).unwrap_or(0),
                        body,
                    })
                } else if let Some(rd) = &r.redirect {
                    RouteAction::Redirect(Redirect {
                        scheme: if rd.https_redirect == Some(true) {
                            Some("https".into())
                        } else {
                            rd.scheme_redirect.clone()
                        },
                        host: rd.host_redirect.clone(),
                        port: rd.port_redirect.and_then(|p| u16::try_from(p).ok()),
                        path: rd.path_redirect.clone(),
                        response_code: Some(match rd.response_code.as_str() {
                            "FOUND" => 302,
                            "SEE_OTHER" => 303,
                            "TEMPORARY_REDIRECT" => 307,
                            "PERMANENT_REDIRECT" => 308,
                            _ => 301,
                        }),
                    })
                } else {
                    self.problems.push(format!("{what}: route has no action"));
                    continue;
                };
                let mut fault = None;
                let mut cors = None;
                for cfg in r.typed_per_filter_config.values() {
                    match cfg {
                        x::route::PerFilterConfig::Fault(f) => fault = self.fault(&what, f),
                        x::route::PerFilterConfig::Cors(c) => cors = self.cors(&what, c),
                    }
                }
                let ops = |add: &[x::route::HeaderValueOption], remove: &[String]| HeaderOps {
                    set: add
                        .iter()
                        .map(|h| {
                            (
                                h.header.key.clone(),
                                h.header.value.clone(),
                                // Envoy's default (absent) is APPEND_IF_EXISTS_OR_ADD:
                                // VirtualService `add` appends, `set` overwrites.
                                h.append_action.is_empty()
                                    || h.append_action == "APPEND_IF_EXISTS_OR_ADD",
                            )
                        })
                        .collect(),
                    remove: remove.to_vec(),
                };
                routes.push(Route {
                    name: r.name.clone(),
                    matcher,
                    action,
                    request_headers: ops(&r.request_headers_to_add, &r.request_headers_to_remove),
                    response_headers: ops(
                        &r.response_headers_to_add,
                        &r.response_headers_to_remove,
                    ),
                    fault,
                    cors,
                });
            }
            vhosts.push(VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                routes,
                require_tls: vh.require_tls.clone(),
            });
        }
        RouteTable {
            name: rc.name.clone(),
            virtual_hosts: vhosts,
        }
    }

    fn chain(
        &mut self,
        xc: &x::ProxyConfig,
        l: &x::Listener,
        i: usize,
        fc: &x::FilterChain,
    ) -> Option<FilterChain> {
        let what = format!("listener {} chain {i} ({})", l.name, fc.name);
        let m = fc.filter_chain_match.clone().unwrap_or_default();
        let cidr = |r: &x::listener::CidrRange| match r.prefix_len {
            Some(len) => format!("{}/{len}", r.address_prefix),
            None => r.address_prefix.clone(),
        };
        let matcher = ChainMatch {
            destination_port: m.destination_port.and_then(|p| u16::try_from(p).ok()),
            server_names: m.server_names.clone(),
            transport_protocol: (!m.transport_protocol.is_empty())
                .then(|| m.transport_protocol.clone()),
            application_protocols: m.application_protocols.clone(),
            prefix_ranges: m.prefix_ranges.iter().map(cidr).collect(),
            source_prefix_ranges: m.source_prefix_ranges.iter().map(cidr).collect(),
        };
        let tls = match fc.transport_socket.as_ref().map(|t| &t.typed_config) {
            Some(x::TransportSocketConfig::DownstreamTls(t)) => Some(self.downstream_tls(&what, t)),
            Some(x::TransportSocketConfig::UpstreamTls(_)) => {
                self.problems
                    .push(format!("{what}: an UpstreamTlsContext on a listener chain"));
                None
            }
            _ => None,
        };
        let mut action = None;
        // The terminal network filter is the last one (Envoy runs them in order).
        if let Some(f) = fc.filters.last() {
            match &f.typed_config {
                x::NetworkFilterConfig::TcpProxy(t) => {
                    action = Some(ChainAction::TcpProxy(TcpProxy {
                        stat_prefix: t.stat_prefix.clone(),
                        cluster: t.cluster.clone(),
                        weighted_clusters: t
                            .weighted_clusters
                            .as_ref()
                            .map(|w| {
                                w.clusters
                                    .iter()
                                    .map(|c| WeightedCluster {
                                        name: c.name.clone(),
                                        weight: c.weight,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        idle_timeout: dur(&t.idle_timeout),
                        max_connect_attempts: None,
                        max_downstream_connection_duration: dur(
                            &t.max_downstream_connection_duration
                        ),
                    }));
                }
                x::NetworkFilterConfig::HttpConnectionManager(h) => {
                    let rc = match (&h.route_config, &h.rds) {
                        (Some(rc), _) => Some(rc.clone()),
                        (None, Some(rds)) => match xc.route(&rds.route_config_name) {
                            Some(rc) => Some(rc.clone()),
                            None => {
                                self.problems.push(format!(
                                    "{what}: RDS route config {:?} not in the bundle",
                                    rds.route_config_name
                                ));
                                None
                            }
                        },
                        (None, None) => {
                            self.problems
                                .push(format!("{what}: HTTP connection manager without routes"));
                            None
                        }
                    };
                    let rc = rc?;
                    action = Some(ChainAction::Http(HttpManager {
                        stat_prefix: h.stat_prefix.clone(),
                        route_config: self.route_table(&rc),
                        idle_timeout: h
                            .common_http_protocol_options
                            .as_ref()
                            .and_then(|o| dur(&o.idle_timeout)),
                        use_remote_address: h.use_remote_address.unwrap_or(false),
                        xff_num_trusted_hops: h.xff_num_trusted_hops.unwrap_or(0),
                    }));
                }
            }
        }
        let Some(action) = action else {
            self.problems.push(format!(
                "{what}: no tcp_proxy or http_connection_manager filter"
            ));
            return None;
        };
        Some(FilterChain {
            name: fc.name.clone(),
            matcher,
            tls,
            action,
        })
    }

    fn cluster(&mut self, xc: &x::ProxyConfig, c: &x::Cluster) -> Cluster {
        let what = format!("cluster {}", c.name);
        let discovery = match c.r#type {
            x::DiscoveryType::Eds => DiscoveryType::Eds,
            x::DiscoveryType::Static => DiscoveryType::Static,
            x::DiscoveryType::StrictDns => DiscoveryType::StrictDns,
            x::DiscoveryType::LogicalDns => DiscoveryType::LogicalDns,
            x::DiscoveryType::OriginalDst => DiscoveryType::OriginalDst,
        };
        let lb_policy = match c.lb_policy.as_str() {
            "" | "ROUND_ROBIN" => LbPolicy::RoundRobin,
            "LEAST_REQUEST" => LbPolicy::LeastRequest,
            "RANDOM" => LbPolicy::Random,
            other => {
                tracing::warn!(cluster = %c.name, lb = other, "load balancer not supported; using ROUND_ROBIN");
                LbPolicy::RoundRobin
            }
        };
        let mut endpoints = Vec::new();
        let mut istio_tls_endpoints = 0;
        if let Some(cla) = xc.cluster_endpoints(c) {
            for e in cla.lb_endpoints() {
                if matches!(
                    e.health_status.as_deref(),
                    Some("UNHEALTHY") | Some("DRAINING")
                ) {
                    continue;
                }
                let sa = &e.endpoint.address.socket_address;
                let Ok(port) = u16::try_from(sa.port_value) else {
                    self.problems.push(format!(
                        "{what}: endpoint port {} out of range",
                        sa.port_value
                    ));
                    continue;
                };
                if e.metadata
                    .filter_metadata
                    .transport_socket_match
                    .get("tlsMode")
                    .map(String::as_str)
                    == Some("istio")
                {
                    istio_tls_endpoints += 1;
                }
                endpoints.push(Endpoint {
                    address: sa.address.clone(),
                    port,
                    weight: e.load_balancing_weight.unwrap_or(1).max(1),
                });
            }
        }
        let t = c.default_thresholds();
        let d = CircuitBreakers::default();
        let circuit_breakers = CircuitBreakers {
            max_connections: t
                .and_then(|t| t.max_connections)
                .unwrap_or(d.max_connections),
            max_pending_requests: t
                .and_then(|t| t.max_pending_requests)
                .unwrap_or(d.max_pending_requests),
            max_requests: t.and_then(|t| t.max_requests).unwrap_or(d.max_requests),
            max_retries: t.and_then(|t| t.max_retries).unwrap_or(d.max_retries),
        };
        let tcp_keepalive = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
            .map(|k| TcpKeepalive {
                keepalive_probes: k.keepalive_probes,
                keepalive_time: k.keepalive_time.map(|s| Dur::from_secs(s as u64)),
                keepalive_interval: k.keepalive_interval.map(|s| Dur::from_secs(s as u64)),
            });
        let hpo = c.http_protocol_options();
        let common = hpo.and_then(|h| h.common_http_protocol_options.as_ref());
        let outlier_detection = c.outlier_detection.as_ref().map(|o| {
            let d = OutlierDetection::default();
            OutlierDetection {
                consecutive_5xx: (o.enforcing_consecutive_5xx.unwrap_or(100) > 0)
                    .then(|| o.consecutive_5xx.unwrap_or(5)),
                consecutive_gateway_failure: (o.enforcing_consecutive_gateway_failure.unwrap_or(0)
                    > 0)
                .then(|| o.consecutive_gateway_failure.unwrap_or(5)),
                interval: dur(&o.interval).unwrap_or(d.interval),
                base_ejection_time: dur(&o.base_ejection_time).unwrap_or(d.base_ejection_time),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
                min_health_percent: c
                    .common_lb_config
                    .as_ref()
                    .and_then(|l| l.healthy_panic_threshold.as_ref())
                    .map(|p| p.value as u32)
                    .unwrap_or(0),
                max_ejection_time: d.max_ejection_time,
            }
        });
        // Auto mTLS: the `tlsMode-istio` socket applies when the endpoints carry tlsMode=istio.
        let socket = if istio_tls_endpoints > 0 {
            c.transport_socket_matches
                .iter()
                .find(|m| m.r#match.get("tlsMode").map(String::as_str) == Some("istio"))
                .map(|m| &m.transport_socket)
                .or(c.transport_socket.as_ref())
        } else {
            c.transport_socket.as_ref().or_else(|| {
                c.transport_socket_matches
                    .iter()
                    .find(|m| m.r#match.is_empty())
                    .map(|m| &m.transport_socket)
            })
        };
        let tls = match socket.map(|s| &s.typed_config) {
            Some(x::TransportSocketConfig::UpstreamTls(t)) => Some(self.upstream_tls(&what, t)),
            Some(x::TransportSocketConfig::DownstreamTls(_)) => {
                self.problems
                    .push(format!("{what}: a DownstreamTlsContext on a cluster"));
                None
            }
            _ => None,
        };
        let svc = c
            .metadata
            .filter_metadata
            .istio
            .as_ref()
            .and_then(|m| m.services.first());
        Cluster {
            name: c.name.clone(),
            discovery,
            endpoints,
            lb_policy,
            connect_timeout: dur(&c.connect_timeout),
            circuit_breakers,
            tcp_keepalive,
            idle_timeout: common.and_then(|o| dur(&o.idle_timeout)),
            max_requests_per_connection: common.and_then(|o| o.max_requests_per_connection),
            max_connection_duration: common.and_then(|o| dur(&o.max_connection_duration)),
            outlier_detection,
            http2: hpo.is_some_and(|h| h.is_h2()),
            auto_sni: hpo
                .and_then(|h| h.upstream_http_protocol_options.as_ref())
                .is_some_and(|u| u.auto_sni),
            tls,
            service: svc
                .map(|s| ServiceMeta {
                    host: s.host.clone(),
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                })
                .unwrap_or_default(),
        }
    }
}

/// Convert the compiled bundle. Listener addresses must be IPs; everything referenced by
/// name (RDS routes, EDS endpoints) must be inside the bundle. SDS secrets that the bundle
/// does not carry (the workload's `default`/`ROOTCA`) can be appended by the caller before
/// [`crate::Proxy::update`], which then validates the result as a whole.
pub fn from_xds(xc: &x::ProxyConfig) -> Result<ProxyConfig, ConfigError> {
    let mut conv = Conv {
        problems: Vec::new(),
        secrets: Vec::new(),
    };
    let ctx = xc;
    let mut listeners = Vec::new();
    for l in &xc.listeners {
        let sa = &l.address.socket_address;
        let ip: Option<IpAddr> = sa.address.parse().ok();
        let port = u16::try_from(sa.port_value).ok();
        let (Some(ip), Some(port)) = (ip, port) else {
            conv.problems.push(format!(
                "listener {}: address {}:{} is not an IP:port",
                l.name, sa.address, sa.port_value
            ));
            continue;
        };
        let chains: Vec<FilterChain> = l
            .filter_chains
            .iter()
            .enumerate()
            .filter_map(|(i, fc)| conv.chain(ctx, l, i, fc))
            .collect();
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .and_then(|fc| conv.chain(ctx, l, usize::MAX, fc));
        listeners.push(Listener {
            name: l.name.clone(),
            address: SocketAddr::new(ip, port),
            use_original_dst: l.use_original_dst.unwrap_or(false),
            original_dst_filter: l
                .listener_filters
                .iter()
                .any(|f| f.name == x::listener::ORIGINAL_DST),
            direction: if l.traffic_direction == "INBOUND" {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            filter_chains: chains,
            default_filter_chain,
            listener_filters_timeout: dur(&l.listener_filters_timeout),
            bind_to_port: l.binds(),
        });
    }
    let clusters: Vec<Cluster> = xc.clusters.iter().map(|c| conv.cluster(ctx, c)).collect();
    let mut secrets: Vec<Secret> = Vec::new();
    for s in &xc.secrets {
        let what = format!("secret {}", s.name);
        let (chain, key) = match &s.tls_certificate {
            Some(t) => (
                t.certificate_chain
                    .as_ref()
                    .and_then(|d| data_source(d, &what, &mut conv.problems)),
                t.private_key
                    .as_ref()
                    .and_then(|d| data_source(d, &what, &mut conv.problems)),
            ),
            None => (None, None),
        };
        let ca = s
            .validation_context
            .as_ref()
            .and_then(|v| v.trusted_ca.as_ref())
            .and_then(|d| data_source(d, &what, &mut conv.problems));
        secrets.push(Secret {
            name: s.name.clone(),
            certificate_chain: chain,
            private_key: key,
            trusted_ca: ca,
        });
    }
    secrets.append(&mut conv.secrets);
    // File-based SDS names the Istio agent serves from disk: `file-root:<path>` (or
    // `file-root:system`) and `file-cert:<cert>~<key>`.
    let mut referenced: Vec<String> = Vec::new();
    for l in &listeners {
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            if let Some(t) = &fc.tls {
                referenced.extend(t.certificates.iter().cloned());
                referenced.extend(t.validation.iter().cloned());
            }
        }
    }
    for c in &clusters {
        if let Some(t) = &c.tls {
            referenced.extend(t.certificate.iter().cloned());
            referenced.extend(t.validation.iter().cloned());
        }
    }
    referenced.sort();
    referenced.dedup();
    for name in referenced {
        if secrets.iter().any(|s| s.name == name) {
            continue;
        }
        if let Some(path) = name.strip_prefix("file-root:") {
            let path = if path == "system" || path.is_empty() {
                isthmus_tls::SYSTEM_CA_BUNDLE
            } else {
                path
            };
            secrets.push(Secret {
                name: name.clone(),
                certificate_chain: None,
                private_key: None,
                trusted_ca: Some(DataSource::Filename(path.to_string())),
            });
        } else if let Some(rest) = name.strip_prefix("file-cert:") {
            match rest.split_once('~') {
                Some((cert, key)) => secrets.push(Secret {
                    name: name.clone(),
                    certificate_chain: Some(DataSource::Filename(cert.to_string())),
                    private_key: Some(DataSource::Filename(key.to_string())),
                    trusted_ca: None,
                }),
                None => conv
                    .problems
                    .push(format!("secret {name:?}: expected file-cert:<cert>~<key>")),
            }
        }
    }
    let m = &xc.node.metadata;
    let label = |k: &str| m.labels.get(k).cloned().unwrap_or_default();
    let node = NodeInfo {
        id: xc.node.id.clone(),
        workload_name: m.name.clone(),
        namespace: m.namespace.clone(),
        canonical_service: m
            .labels
            .get("service.istio.io/canonical-name")
            .cloned()
            .unwrap_or_else(|| label("app")),
        canonical_revision: m
            .labels
            .get("service.istio.io/canonical-revision")
            .cloned()
            .unwrap_or_else(|| label("version")),
        app: label("app"),
        version: label("version"),
        cluster_id: m.cluster_id.clone(),
        principal: m.spiffe_id.clone(),
    };
    if !conv.problems.is_empty() {
        return Err(ConfigError {
            problems: conv.problems,
        });
    }
    Ok(ProxyConfig {
        version: xc.version.clone(),
        node,
        listeners,
        clusters,
        secrets,
        access_log: None,
    })
}
