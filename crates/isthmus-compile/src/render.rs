//! `isthmus proxy-config` output: the same JSON list `istioctl proxy-config ... -o json` prints,
//! YAML, and istioctl's short tables. Works on any [`ProxyConfig`], so offline compilation and a
//! live proxy's config dump render identically.

use isthmus_xds::listener::NetworkFilterConfig;
use isthmus_xds::*;
use serde::Serialize;

/// Which resources to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Cluster,
    Listener,
    Route,
    Endpoint,
    Secret,
    All,
}

impl std::str::FromStr for ConfigKind {
    type Err = RenderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "cluster" | "clusters" | "c" => ConfigKind::Cluster,
            "listener" | "listeners" | "l" => ConfigKind::Listener,
            "route" | "routes" | "r" => ConfigKind::Route,
            "endpoint" | "endpoints" | "ep" => ConfigKind::Endpoint,
            "secret" | "secrets" | "s" => ConfigKind::Secret,
            "all" => ConfigKind::All,
            other => return Err(RenderError::UnknownKind(other.to_string())),
        })
    }
}

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    Json,
    Yaml,
    #[default]
    Short,
}

impl std::str::FromStr for Format {
    type Err = RenderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "json" => Format::Json,
            "yaml" => Format::Yaml,
            "short" | "" => Format::Short,
            other => return Err(RenderError::UnknownFormat(other.to_string())),
        })
    }
}

/// istioctl's filters. Clusters and endpoints: `fqdn`/`port`/`subset`/`direction` against the
/// `direction|port|subset|fqdn` name; listeners: `port`, `address`, `name`; routes and secrets:
/// `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub fqdn: Option<String>,
    pub port: Option<u32>,
    pub subset: Option<String>,
    pub direction: Option<String>,
    pub name: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown config type {0:?} (use cluster, listener, route, endpoint, secret or all)")]
    UnknownKind(String),
    #[error("unknown output format {0:?} (use json, yaml or short)")]
    UnknownFormat(String),
    #[error("cannot serialise: {0}")]
    Serialize(String),
}

fn cluster_matches(name: &str, f: &Filter) -> bool {
    let parsed = parse_cluster_name(name);
    if let Some(fqdn) = &f.fqdn {
        match parsed {
            Some((_, _, _, host)) if host == fqdn => {}
            Some(_) => return false,
            None => {
                if !name.contains(fqdn.as_str()) {
                    return false;
                }
            }
        }
    }
    if let Some(p) = f.port {
        if parsed.is_none_or(|(_, port, _, _)| port != p) {
            return false;
        }
    }
    if let Some(s) = &f.subset {
        if parsed.is_none_or(|(_, _, sub, _)| sub != s) {
            return false;
        }
    }
    if let Some(d) = &f.direction {
        if parsed.is_none_or(|(dir, _, _, _)| dir != d) {
            return false;
        }
    }
    if let Some(n) = &f.name {
        if name != n {
            return false;
        }
    }
    true
}

fn to_json<T: Serialize>(v: &T) -> Result<String, RenderError> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    v.serialize(&mut ser)
        .map_err(|e| RenderError::Serialize(e.to_string()))?;
    let mut s = String::from_utf8(buf).map_err(|e| RenderError::Serialize(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn to_yaml<T: Serialize>(v: &T) -> Result<String, RenderError> {
    let value = serde_json::to_value(v).map_err(|e| RenderError::Serialize(e.to_string()))?;
    serde_saphyr::to_string(&value).map_err(|e| RenderError::Serialize(e.to_string()))
}

/// Renders one kind of resource from a proxy's config.
pub fn render(
    cfg: &ProxyConfig,
    what: ConfigKind,
    filter: &Filter,
    format: Format,
) -> Result<String, RenderError> {
    let clusters: Vec<&Cluster> = cfg
        .clusters
        .iter()
        .map(|c| &**c)
        .filter(|c| cluster_matches(&c.name, filter))
        .collect();
    let listeners: Vec<&Listener> = cfg
        .listeners
        .iter()
        .filter(|l| filter.port.is_none_or(|p| l.port() == p))
        .filter(|l| {
            filter
                .address
                .as_ref()
                .is_none_or(|a| &l.address.socket_address.address == a)
        })
        .filter(|l| filter.name.as_ref().is_none_or(|n| &l.name == n))
        .collect();
    let routes: Vec<&RouteConfiguration> = cfg
        .routes
        .iter()
        .filter(|r| filter.name.as_ref().is_none_or(|n| &r.name == n))
        .collect();
    let endpoints: Vec<&ClusterLoadAssignment> = cfg
        .endpoints
        .iter()
        .map(|e| &**e)
        .filter(|e| cluster_matches(&e.cluster_name, filter))
        .collect();
    let secrets: Vec<&Secret> = cfg
        .secrets
        .iter()
        .filter(|s| filter.name.as_ref().is_none_or(|n| &s.name == n))
        .collect();
    match (what, format) {
        (ConfigKind::Cluster, Format::Json) => to_json(&clusters),
        (ConfigKind::Listener, Format::Json) => to_json(&listeners),
        (ConfigKind::Route, Format::Json) => to_json(&routes),
        (ConfigKind::Endpoint, Format::Json) => to_json(&endpoints),
        (ConfigKind::Secret, Format::Json) => to_json(&secrets),
        (ConfigKind::Cluster, Format::Yaml) => to_yaml(&clusters),
        (ConfigKind::Listener, Format::Yaml) => to_yaml(&listeners),
        (ConfigKind::Route, Format::Yaml) => to_yaml(&routes),
        (ConfigKind::Endpoint, Format::Yaml) => to_yaml(&endpoints),
        (ConfigKind::Secret, Format::Yaml) => to_yaml(&secrets),
        (ConfigKind::All, Format::Json | Format::Yaml) => {
            #[derive(Serialize)]
            struct All<'a> {
                version: &'a str,
                node: &'a Node,
                listeners: Vec<&'a Listener>,
                routes: Vec<&'a RouteConfiguration>,
                clusters: Vec<&'a Cluster>,
                endpoints: Vec<&'a ClusterLoadAssignment>,
                secrets: Vec<&'a Secret>,
            }
            let all = All {
                version: &cfg.version,
                node: &cfg.node,
                listeners,
                routes,
                clusters,
                endpoints,
                secrets,
            };
            if format == Format::Json {
                to_json(&all)
            } else {
                to_yaml(&all)
            }
        }
        (ConfigKind::Cluster, Format::Short) => Ok(cluster_table(&clusters)),
        (ConfigKind::Listener, Format::Short) => Ok(listener_table(&listeners)),
        (ConfigKind::Route, Format::Short) => Ok(route_table(&routes)),
        (ConfigKind::Endpoint, Format::Short) => Ok(endpoint_table(cfg, &endpoints, &clusters)),
        (ConfigKind::Secret, Format::Short) => Ok(secret_table(cfg, &secrets)),
        (ConfigKind::All, Format::Short) => Ok([
            cluster_table(&clusters),
            listener_table(&listeners),
            route_table(&routes),
            endpoint_table(cfg, &endpoints, &clusters),
            secret_table(cfg, &secrets),
        ]
        .join("\n")),
    }
}

/// Go's tabwriter (minwidth 0, padding `pad`, space-padded) as istioctl uses it.
fn table(header: &[&str], rows: &[Vec<String>], pad: usize) -> String {
    let cols = header.len();
    let mut widths = vec![0usize; cols];
    for r in std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                for _ in c.chars().count()..widths[i] + pad {
                    l.push(' ');
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
    out
}

/// `name.namespace` of the config a metadata path points at (`/apis/.../namespaces/NS/KIND/NAME`).
fn config_ref(md: &Metadata) -> String {
    md.filter_metadata
        .istio
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            let ns = parts
                .iter()
                .position(|x| *x == "namespaces")
                .and_then(|i| parts.get(i + 1))?;
            let name = parts.last()?;
            Some(format!("{name}.{ns}"))
        })
        .unwrap_or_else(|| "-".into())
}

fn cluster_table(clusters: &[&Cluster]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            let ty = c.r#type.as_str().to_string();
            match parse_cluster_name(&c.name) {
                Some((dir, port, subset, host)) => vec![
                    host.to_string(),
                    port.to_string(),
                    if subset.is_empty() {
                        "-".into()
                    } else {
                        subset.to_string()
                    },
                    dir.to_string(),
                    ty,
                    config_ref(&c.metadata),
                ],
                None => vec![
                    c.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    ty,
                    "-".into(),
                ],
            }
        })
        .collect();
    table(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        &rows,
        5,
    )
}

fn describe_match(m: Option<&FilterChainMatch>) -> String {
    let Some(m) = m.filter(|m| !m.is_empty()) else {
        return "ALL".into();
    };
    let mut parts = Vec::new();
    if !m.server_names.is_empty() {
        parts.push(format!("SNI: {}", m.server_names.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        parts.push(format!("Trans: {}", m.transport_protocol));
    }
    if !m.application_protocols.is_empty() {
        parts.push(format!("App: {}", m.application_protocols.join(",")));
    }
    if let Some(p) = m.destination_port {
        parts.push(format!("Port: {p}"));
    }
    if !m.prefix_ranges.is_empty() {
        parts.push(format!(
            "Addr: {}",
            m.prefix_ranges
                .iter()
                .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap_or(32)))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

fn describe_destination(fc: &FilterChain) -> String {
    for f in &fc.filters {
        match &f.typed_config {
            NetworkFilterConfig::TcpProxy(t) => {
                if let Some(c) = &t.cluster {
                    return format!("Cluster: {c}");
                }
                if let Some(w) = &t.weighted_clusters {
                    return format!(
                        "Clusters: {}",
                        w.clusters
                            .iter()
                            .map(|c| format!("{}({})", c.name, c.weight))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            NetworkFilterConfig::HttpConnectionManager(h) => {
                if let Some(r) = &h.rds {
                    return format!("Route: {}", r.route_config_name);
                }
                if let Some(rc) = &h.route_config {
                    return format!("Inline Route: {}", rc.name);
                }
            }
        }
    }
    "Non-HTTP/Non-TCP".into()
}

fn listener_table(listeners: &[&Listener]) -> String {
    let mut rows = Vec::new();
    for l in listeners {
        let addr = l.address.socket_address.address.clone();
        let port = l.port().to_string();
        for fc in &l.filter_chains {
            rows.push(vec![
                addr.clone(),
                port.clone(),
                describe_match(fc.filter_chain_match.as_ref()),
                describe_destination(fc),
            ]);
        }
        if let Some(fc) = &l.default_filter_chain {
            rows.push(vec![
                addr.clone(),
                port.clone(),
                "ALL (default)".into(),
                describe_destination(fc),
            ]);
        }
    }
    table(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], &rows, 1)
}

fn describe_route_match(m: &RouteMatch) -> String {
    let mut s = if let Some(p) = &m.prefix {
        format!("{p}*")
    } else if let Some(p) = &m.path {
        p.clone()
    } else if let Some(r) = &m.safe_regex {
        r.regex.clone()
    } else {
        "/*".into()
    };
    if !m.headers.is_empty() {
        s.push_str(&format!(
            " ({})",
            m.headers
                .iter()
                .map(|h| h.name.clone())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    s
}

fn route_table(routes: &[&RouteConfiguration]) -> String {
    let mut rows = Vec::new();
    for rc in routes {
        for vh in &rc.virtual_hosts {
            let domains = if vh.domains.len() > 2 {
                format!(
                    "{} +{} more...",
                    vh.domains[..1].join(", "),
                    vh.domains.len() - 1
                )
            } else {
                vh.domains.join(", ")
            };
            if vh.routes.is_empty() {
                rows.push(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains.clone(),
                    "/*".into(),
                    "404".into(),
                ]);
            }
            for r in vh.routes.iter() {
                let vs = if let Some(d) = &r.direct_response {
                    format!("{}", d.status)
                } else {
                    config_ref(&r.metadata)
                };
                rows.push(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains.clone(),
                    describe_route_match(&r.r#match),
                    vs,
                ]);
            }
        }
    }
    table(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        &rows,
        5,
    )
}

fn endpoint_table(
    cfg: &ProxyConfig,
    eps: &[&ClusterLoadAssignment],
    clusters: &[&Cluster],
) -> String {
    let mut rows = Vec::new();
    let mut push = |cla: &ClusterLoadAssignment| {
        for e in cla.lb_endpoints() {
            let a = &e.endpoint.address.socket_address;
            rows.push(vec![
                format!("{}:{}", a.address, a.port_value),
                e.health_status.clone().unwrap_or_else(|| "HEALTHY".into()),
                "OK".into(),
                cla.cluster_name.clone(),
            ]);
        }
    };
    for cla in eps {
        push(cla);
    }
    // Inline (STATIC / DNS) endpoints are shown too, as Envoy's /clusters does.
    for c in clusters {
        if c.r#type != DiscoveryType::Eds {
            if let Some(la) = &c.load_assignment {
                push(la);
            }
        }
    }
    let _ = cfg;
    rows.sort();
    table(
        &["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"],
        &rows,
        5,
    )
}

fn secret_table(cfg: &ProxyConfig, secrets: &[&Secret]) -> String {
    let mut rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            let ty = if s.tls_certificate.is_some() {
                "Cert Chain"
            } else {
                "CA"
            };
            vec![s.name.clone(), ty.into(), "ACTIVE".into()]
        })
        .collect();
    // `default` / `ROOTCA` / file-based names come from the workload CA / agent at run time.
    let mut runtime: Vec<String> = Vec::new();
    let mut add = |ctx: &CommonTlsContext| {
        for n in ctx.sds_names() {
            if !n.starts_with("kubernetes://") && !runtime.iter().any(|x| x == n) {
                runtime.push(n.to_string());
            }
        }
    };
    for c in &cfg.clusters {
        if let Some(t) = c
            .transport_socket
            .as_ref()
            .and_then(|t| t.as_upstream_tls())
        {
            add(&t.common_tls_context);
        }
        for m in &c.transport_socket_matches {
            if let Some(t) = m.transport_socket.as_upstream_tls() {
                add(&t.common_tls_context);
            }
        }
    }
    for l in &cfg.listeners {
        for fc in &l.filter_chains {
            if let Some(t) = fc
                .transport_socket
                .as_ref()
                .and_then(|t| t.as_downstream_tls())
            {
                add(&t.common_tls_context);
            }
        }
    }
    runtime.sort();
    for n in runtime {
        let ty = if n == "ROOTCA" || n.starts_with("file-root:") {
            "CA"
        } else {
            "Cert Chain"
        };
        rows.push(vec![n, ty.into(), "ISSUED AT RUN TIME".into()]);
    }
    table(&["RESOURCE NAME", "TYPE", "STATUS"], &rows, 5)
}

/// Renders a compiled proxy: like [`render`], but secrets come from
/// [`crate::CompiledProxy::secrets`] — every secret the proxy needs with its state (ACTIVE,
/// ISSUED AT START, MISSING, INVALID) and certificate details, as
/// `istioctl proxy-config secret` shows them.
pub fn render_compiled(
    compiled: &crate::CompiledProxy,
    what: ConfigKind,
    filter: &Filter,
    format: Format,
) -> Result<String, RenderError> {
    let statuses: Vec<&crate::SecretStatus> = compiled
        .secrets
        .iter()
        .filter(|s| filter.name.as_ref().is_none_or(|n| &s.name == n))
        .collect();
    match (what, format) {
        (ConfigKind::Secret, Format::Json) => to_json(&statuses),
        (ConfigKind::Secret, Format::Yaml) => to_yaml(&statuses),
        (ConfigKind::Secret, Format::Short) => Ok(secret_status_table(&statuses)),
        (ConfigKind::All, Format::Short) => {
            let mut parts = Vec::new();
            for k in [
                ConfigKind::Cluster,
                ConfigKind::Listener,
                ConfigKind::Route,
                ConfigKind::Endpoint,
            ] {
                parts.push(render(&compiled.config, k, filter, format)?);
            }
            parts.push(secret_status_table(&statuses));
            Ok(parts.join("\n"))
        }
        _ => render(&compiled.config, what, filter, format),
    }
}

/// istioctl prints serials with Go's `%x` of a big.Int: lowercase, no leading zeros.
fn serial_display(hex: &str) -> String {
    let t = hex.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.to_ascii_lowercase()
    }
}

/// `istioctl proxy-config secret`'s table (one row per certificate, leaf first), followed by one
/// line per secret that is not simply ACTIVE saying where it comes from or why it is missing.
fn secret_status_table(statuses: &[&crate::SecretStatus]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for s in statuses {
        if s.certs.is_empty() {
            let valid = match s.state {
                crate::SecretState::Missing | crate::SecretState::Invalid => "false",
                _ => "NA",
            };
            rows.push(vec![
                s.name.clone(),
                s.type_.as_str().into(),
                s.state.as_str().into(),
                valid.into(),
                "NA".into(),
                "NA".into(),
                "NA".into(),
            ]);
        }
        for c in &s.certs {
            rows.push(vec![
                s.name.clone(),
                s.type_.as_str().into(),
                s.state.as_str().into(),
                c.valid.to_string(),
                serial_display(&c.serial),
                c.not_after.clone(),
                c.not_before.clone(),
            ]);
        }
        let note = match (s.state, &s.identity, &s.reason) {
            (crate::SecretState::Active, _, _) => None,
            (_, Some(id), _) => Some(format!("identity {id}, issued by the mesh CA at start")),
            (_, None, Some(r)) => Some(r.clone()),
            (_, None, None) => None,
        };
        if let Some(n) = note {
            notes.push(format!("{}: {n}", s.name));
        }
    }
    let mut out = table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        &rows,
        5,
    );
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}
