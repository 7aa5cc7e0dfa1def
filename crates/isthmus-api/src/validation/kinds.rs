//! Gateway, ServiceEntry, WorkloadEntry and Sidecar: `ValidateGateway`, `validateServer`,
//! `validateTLSOptions`, `ValidateServiceEntry`, `validateWorkloadEntry`, `ValidateSidecar`.

use super::checks::{self, go_quote, Protocol};
use super::policy;
use super::{at, labels_at, Report};
use crate::istio::{Gateway, ServerTlsSettings, ServiceEntry, Sidecar, WorkloadEntry};
use serde_json::Value;
use std::collections::BTreeMap;

const UNIX_PREFIX: &str = "unix://";

/// Cipher suites Istio accepts (`security.ValidCipherSuites`).
const VALID_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// `ValidateUnixAddress`.
fn unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

fn set(o: &Option<String>) -> bool {
    o.as_deref().is_some_and(|s| !s.is_empty())
}

/// Go's `%v` of a `[]string`.
fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

// ---------------------------------------------------------------------------------------------
// Gateway

pub(super) fn gateway(name: &str, g: &Gateway, spec: &Value, r: &mut Report) {
    if !checks::is_dns1123_label(name) {
        r.error(
            "metadata.name",
            format!("invalid gateway name: {}", go_quote(name)),
        );
    }
    if g.servers.is_empty() {
        r.error("spec.servers", "gateway must have at least one server");
    }
    for (i, s) in g.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        if s.hosts.is_empty() {
            r.error(
                format!("{f}.hosts"),
                "server config must contain at least one host",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            r.check_all(
                &format!("{f}.hosts[{j}]"),
                checks::validate_namespace_slash_wildcard_hostname(h, true),
            );
        }
        let bind = s.bind.as_deref().unwrap_or("");
        let before = r.errors.len();
        match &s.port {
            None => r.error(format!("{f}.port"), "port is required"),
            Some(p) => {
                let pf = format!("{f}.port");
                if Protocol::parse(&p.protocol) == Protocol::Unsupported {
                    r.error(
                        format!("{pf}.protocol"),
                        format!(
                            "invalid protocol {}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                            go_quote(&p.protocol)
                        ),
                    );
                }
                if p.number > 0 || !bind.starts_with(UNIX_PREFIX) {
                    r.check(
                        &format!("{pf}.number"),
                        checks::validate_port(i64::from(p.number)),
                    );
                }
                if p.target_port.is_some_and(|t| t > 0) {
                    r.error(
                        format!("{pf}.targetPort"),
                        "targetPort has no impact on Gateways",
                    );
                }
                if p.name.is_empty() {
                    r.error(
                        format!("{pf}.name"),
                        format!(
                            "port name must be set: number:{} protocol:{}",
                            p.number,
                            go_quote(&p.protocol)
                        ),
                    );
                }
            }
        }
        let port_ok = r.errors.len() == before;
        if let Some(b) = bind.strip_prefix(UNIX_PREFIX) {
            r.check(&format!("{f}.bind"), unix_address(b));
            if let Some(p) = &s.port {
                if p.number != 0 {
                    r.error(
                        format!("{f}.bind"),
                        format!(
                            "port number must be 0 for unix domain socket: number:{} protocol:{}",
                            p.number,
                            go_quote(&p.protocol)
                        ),
                    );
                }
            }
        } else if !bind.is_empty() {
            r.check(&format!("{f}.bind"), checks::validate_ip(bind));
        }
        if let Some(tls) = &s.tls {
            server_tls(&format!("{f}.tls"), tls, r);
        }
        if port_ok {
            if let Some(p) = &s.port {
                let proto = Protocol::parse(&p.protocol);
                if proto.is_tls() && s.tls.is_none() {
                    r.error(
                        format!("{f}.tls"),
                        "server must have TLS settings for HTTPS/TLS protocols",
                    );
                } else if !proto.is_tls() {
                    if let Some(tls) = &s.tls {
                        if proto.is_http() {
                            let passthrough =
                                matches!(tls.mode(), "PASSTHROUGH" | "AUTO_PASSTHROUGH");
                            if !passthrough
                                || set(&tls.ca_certificates)
                                || set(&tls.private_key)
                                || set(&tls.server_certificate)
                            {
                                r.error(
                                    format!("{f}.tls"),
                                    "server cannot have TLS settings for plain text HTTP ports",
                                );
                            }
                        } else {
                            r.error(
                                format!("{f}.tls"),
                                "server cannot have TLS settings for non HTTPS/TLS ports",
                            );
                        }
                    }
                }
            }
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in g.servers.iter().enumerate() {
        if let Some(p) = &s.port {
            if names.contains(&p.name.as_str()) {
                r.error(
                    format!("spec.servers[{i}].port.name"),
                    format!(
                        "port names in servers must be unique: duplicate name {}",
                        p.name
                    ),
                );
            }
            names.push(&p.name);
            if !Protocol::parse(&p.protocol).is_http()
                && s.tls.as_ref().is_some_and(|t| t.https_redirect)
            {
                r.warning(
                    format!("spec.servers[{i}].tls.httpsRedirect"),
                    "tls.httpsRedirect should only be used with http servers",
                );
            }
        }
    }
    let _ = spec;
}

/// `validateTLSOptions` (server-side TLS of Gateways and Sidecar ingress). `credentialNames`
/// and `tlsCertificates` (newer API fields) count as a credential and as certificates.
pub(super) fn server_tls(f: &str, t: &ServerTlsSettings, r: &mut Report) {
    if matches!(
        t.min_protocol_version.as_deref(),
        Some("TLSV1_0" | "TLSV1_1")
    ) && t.cipher_suites.is_empty()
    {
        r.warning(
            format!("{f}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let mut invalid = std::collections::BTreeSet::new();
    let mut valid = std::collections::BTreeSet::new();
    let mut dup = std::collections::BTreeSet::new();
    for c in &t.cipher_suites {
        if !VALID_CIPHERS.contains(&c.as_str()) {
            invalid.insert(c.clone());
        } else if !valid.insert(c.clone()) {
            dup.insert(c.clone());
        }
    }
    if !invalid.is_empty() {
        let v: Vec<String> = invalid.into_iter().collect();
        r.warning(
            format!("{f}.cipherSuites"),
            format!("ignoring invalid cipher suites: {}", go_list(&v)),
        );
    }
    if !dup.is_empty() {
        let v: Vec<String> = dup.into_iter().collect();
        r.warning(
            format!("{f}.cipherSuites"),
            format!("ignoring duplicate cipher suites: {}", go_list(&v)),
        );
    }
    let mode = t.mode();
    let has_cred = set(&t.credential_name) || !t.credential_names.is_empty();
    let certs = !t.tls_certificates.is_empty();
    if mode == "ISTIO_MUTUAL" {
        if set(&t.server_certificate) {
            r.error(
                f,
                "ISTIO_MUTUAL TLS cannot have associated server certificate",
            );
        }
        if set(&t.private_key) {
            r.error(f, "ISTIO_MUTUAL TLS cannot have associated private key");
        }
        if set(&t.ca_certificates) {
            r.error(f, "ISTIO_MUTUAL TLS cannot have associated CA bundle");
        }
        if certs {
            r.error(f, "ISTIO_MUTUAL TLS cannot have associated tlsCertificates");
        }
        if set(&t.credential_name) {
            r.error(f, "ISTIO_MUTUAL TLS cannot have associated credentialName");
        }
        if !t.credential_names.is_empty() {
            r.error(f, "ISTIO_MUTUAL TLS cannot have associated credentialNames");
        }
        return;
    }
    if matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH")
        && (set(&t.ca_crl)
            || set(&t.server_certificate)
            || set(&t.private_key)
            || set(&t.ca_certificates)
            || certs
            || has_cred)
    {
        r.warning(
            f,
            format!("{mode} mode does not use certificates, they will be ignored"),
        );
    }
    // Only one certificate source.
    let sources = usize::from(set(&t.server_certificate) && set(&t.private_key))
        + usize::from(set(&t.credential_name))
        + usize::from(!t.credential_names.is_empty())
        + usize::from(certs);
    if sources > 1 {
        r.error(
            f,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    if matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") && has_cred {
        return;
    }
    if matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") {
        let prefix = if mode == "SIMPLE" {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if mode != "SIMPLE" && !set(&t.ca_certificates) {
            r.error(f, format!("{prefix} requires a client CA bundle"));
        }
        if t.tls_certificates.len() > 2 {
            r.warning(
                f,
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        let to_verify: Vec<(bool, bool)> = if certs {
            t.tls_certificates
                .iter()
                .map(|c| (set(&c.server_certificate), set(&c.private_key)))
                .collect()
        } else {
            vec![(set(&t.server_certificate), set(&t.private_key))]
        };
        for (cert, key) in to_verify {
            if !cert {
                r.error(f, format!("{prefix} requires a server certificate"));
            }
            if !key {
                r.error(f, format!("{prefix} requires a private key"));
            }
        }
    }
    if set(&t.ca_crl) {
        if set(&t.credential_name) {
            r.error(f, "CRL is not supported with credentialName. CRL has to be specified in the credential");
        }
        if mode == "SIMPLE" {
            r.error(f, "CRL is not supported with SIMPLE TLS");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

/// `ValidateAlphaWorkloadSelector` (networking selectors use `labels`): errors, and whether a
/// warning for a label-less selector applies.
fn alpha_selector(field: &str, spec: &Value, r: &mut Report) -> Option<bool> {
    let sel = at(spec, &["workloadSelector"]).filter(|v| !v.is_null())?;
    let labels = labels_at(sel, &["labels"]).unwrap_or_default();
    for (k, v) in &labels {
        if k.is_empty() {
            r.error(
                field,
                format!(
                    "empty key is not supported in selector: {}",
                    go_quote(&format!("{k}={v}"))
                ),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                field,
                format!(
                    "wildcard is not supported in selector: {}",
                    go_quote(&format!("{k}={v}"))
                ),
            );
        }
    }
    Some(labels.is_empty())
}

pub(super) fn service_entry(
    ns: &str,
    annotations: &BTreeMap<String, String>,
    se: &ServiceEntry,
    spec: &Value,
    r: &mut Report,
) {
    let before = r.errors.len();
    let selector = alpha_selector("spec.workloadSelector", spec, r);
    if r.errors.len() > before {
        return;
    }
    if selector == Some(true) {
        r.warning(
            "spec.workloadSelector",
            "service entry: workload selector specified without labels, will be applied to all services in namespace",
        );
    }
    if selector.is_some() && !se.endpoints.is_empty() {
        r.error(
            "spec",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }
    if se.hosts.is_empty() {
        r.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        if h == "*" {
            r.error(&f, format!("invalid host {h}"));
        } else {
            r.check(&f, checks::validate_wildcard_domain(h));
            if let Err(w) = checks::validate_partial_wildcard(h) {
                r.warning(&f, w);
            }
        }
    }
    let mut cidr = false;
    for (i, a) in se.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        r.check(
            &format!("spec.addresses[{i}]"),
            checks::validate_ip_subnet(a),
        );
    }
    let resolution = se.resolution();
    if cidr && resolution != "NONE" && resolution != "STATIC" {
        r.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
    // IP auto-allocation (on by default since Istio 1.25) can be refused per object.
    let auto_alloc = resolution != "NONE"
        && annotations
            .get("networking.istio.io/enable-autoallocate-ip")
            .map(String::as_str)
            != Some("false")
        && !se.hosts.iter().any(|h| h.starts_with('*'));
    let mut port_names: Vec<&str> = Vec::new();
    let mut port_numbers: Vec<u32> = Vec::new();
    for (i, p) in se.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if port_names.contains(&p.name.as_str()) {
            r.error(
                format!("{f}.name"),
                format!(
                    "service entry port name {} already defined",
                    go_quote(&p.name)
                ),
            );
        }
        port_names.push(&p.name);
        if port_numbers.contains(&p.number) {
            r.error(
                format!("{f}.number"),
                format!("service entry port {} already defined", p.number),
            );
        }
        port_numbers.push(p.number);
        if let Some(tp) = p.target_port.filter(|t| *t != 0) {
            r.check(
                &format!("{f}.targetPort"),
                checks::validate_port(i64::from(tp)),
            );
        }
        let proto = p.protocol.as_deref().unwrap_or("");
        if se.addresses.is_empty() && !auto_alloc && (proto.is_empty() || proto == "TCP") {
            r.warning(
                &f,
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        r.check(&format!("{f}.name"), checks::validate_port_name(&p.name));
        r.check(&format!("{f}.protocol"), checks::validate_protocol(proto));
        r.check(
            &format!("{f}.number"),
            checks::validate_port(i64::from(p.number)),
        );
    }
    match resolution {
        "NONE" => {
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if selector.is_some() {
                r.warning(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        "STATIC" => {
            for (i, e) in se.endpoints.iter().enumerate() {
                workload_entry(
                    &format!("spec.endpoints[{i}]"),
                    e,
                    Some(&port_names),
                    false,
                    r,
                );
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if checks::validate_fqdn(h).is_err() {
                        r.error(
                            format!("spec.hosts[{i}]"),
                            format!("hosts must be FQDN if no endpoints are provided for resolution mode {resolution}"),
                        );
                    }
                }
            }
            if resolution == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {resolution}"),
                );
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                let f = format!("spec.endpoints[{i}]");
                let addr = e.address.as_deref().unwrap_or("");
                if !checks::is_ip(addr) && checks::validate_fqdn(addr).is_err() {
                    r.error(
                        format!("{f}.address"),
                        format!(
                            "endpoint address {} is not a valid FQDN or an IP address",
                            go_quote(addr)
                        ),
                    );
                }
                r.check_all(&format!("{f}.labels"), checks::validate_labels(&e.labels));
                for (name, port) in &e.ports {
                    if !port_names.contains(&name.as_str()) {
                        r.error(
                            format!("{f}.ports"),
                            format!("endpoint port {port} is not defined by the service entry"),
                        );
                    }
                    r.check(&format!("{f}.ports"), checks::validate_port_name(name));
                    r.check(
                        &format!("{f}.ports"),
                        checks::validate_port(i64::from(*port)),
                    );
                }
            }
            if !se.addresses.is_empty()
                && se.hosts.len() > 1
                && se
                    .ports
                    .iter()
                    .any(|p| Protocol::parse(p.protocol.as_deref().unwrap_or("")).is_tcp())
            {
                r.warning(
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        // DYNAMIC_DNS (istio/api 1.28) and anything the schema admits later: no extra checks.
        _ => {}
    }
    if resolution != "NONE" && se.hosts.len() > 1 {
        for p in &se.ports {
            let proto = Protocol::parse(p.protocol.as_deref().unwrap_or(""));
            if !proto.is_http() && !proto.is_tls() {
                r.error(
                    "spec.ports",
                    "multiple hosts provided with non-HTTP, non-TLS ports",
                );
                break;
            }
        }
    }
    r.check_all(
        "spec.exportTo",
        checks::validate_export_to(ns, &se.export_to, true, false),
    );
}

/// `validateWorkloadEntry`: `service_ports` is the owning ServiceEntry's port names (None for
/// a standalone WorkloadEntry); `allow_fqdn` is false for STATIC ServiceEntry endpoints.
fn workload_entry(
    f: &str,
    we: &WorkloadEntry,
    service_ports: Option<&[&str]>,
    allow_fqdn: bool,
    r: &mut Report,
) {
    let addr = we.address.as_deref().unwrap_or("");
    let network = we.network.as_deref().unwrap_or("");
    if addr.is_empty() {
        if network.is_empty() {
            r.error(format!("{f}.address"), "address is required");
            return;
        }
        r.warning(
            format!("{f}.address"),
            format!("address is unset with network {}", go_quote(network)),
        );
    }
    let mut unix = false;
    if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
        unix = true;
        r.check(&format!("{f}.address"), unix_address(path));
        if !we.ports.is_empty() {
            r.error(
                format!("{f}.ports"),
                format!("unix endpoint {addr} must not include ports"),
            );
        }
    } else if !addr.is_empty() && !checks::is_ip(addr) {
        if !allow_fqdn {
            r.error(
                format!("{f}.address"),
                format!(
                    "endpoint address {} is not a valid IP address",
                    go_quote(addr)
                ),
            );
        } else if checks::validate_fqdn(addr).is_err() {
            r.error(
                format!("{f}.address"),
                format!(
                    "endpoint address {} is not a valid FQDN or an IP address",
                    go_quote(addr)
                ),
            );
        }
    }
    for (name, port) in &we.ports {
        if service_ports.is_some_and(|sp| !sp.contains(&name.as_str())) {
            r.error(
                format!("{f}.ports"),
                format!("endpoint port {port} is not defined by the service entry"),
            );
        }
        r.check(&format!("{f}.ports"), checks::validate_port_name(name));
        r.check(
            &format!("{f}.ports"),
            checks::validate_port(i64::from(*port)),
        );
    }
    r.check_all(&format!("{f}.labels"), checks::validate_labels(&we.labels));
    if unix && service_ports.is_some_and(|sp| sp.len() != 1) {
        r.error(f, "exactly 1 service port required for unix endpoints");
    }
}

pub(super) fn workload_entry_standalone(we: &WorkloadEntry, r: &mut Report) {
    workload_entry("spec", we, None, true, r);
}

// ---------------------------------------------------------------------------------------------
// Sidecar

/// Go's `net.SplitHostPort`, with its error texts.
fn split_host_port(hp: &str) -> Result<(String, String), String> {
    let missing = || format!("address {hp}: missing port in address");
    let too_many = || format!("address {hp}: too many colons in address");
    if let Some(rest) = hp.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(format!("address {hp}: missing ']' in address"));
        };
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) if !p.contains(':') => Ok((host.to_string(), p.to_string())),
            Some(_) => Err(too_many()),
            None if after.is_empty() => Err(missing()),
            None => Err(format!("address {hp}: unexpected ']' in address")),
        };
    }
    let Some(i) = hp.rfind(':') else {
        return Err(missing());
    };
    let host = &hp[..i];
    if host.contains(':') {
        return Err(too_many());
    }
    Ok((host.to_string(), hp[i + 1..].to_string()))
}

pub(super) fn sidecar(ns: &str, sc: &Sidecar, spec: &Value, r: &mut Report) {
    let before = r.errors.len();
    let selector = alpha_selector("spec.workloadSelector", spec, r);
    if r.errors.len() > before {
        return;
    }
    if selector == Some(true) {
        r.warning(
            "spec.workloadSelector",
            "sidecar: workload selector specified without labels, will be applied to all services in namespace",
        );
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.errors.clear();
        r.warnings.clear();
        r.error("spec", "sidecar: empty configuration provided");
        return;
    }
    let mut ports: Vec<u32> = Vec::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        let Some(port) = &ing.port else {
            r.error(
                format!("{f}.port"),
                "sidecar: port is required for ingress listeners",
            );
            continue;
        };
        if port.target_port.is_some_and(|t| t > 0) {
            r.error(
                format!("{f}.port.targetPort"),
                "targetPort has no impact on Sidecars",
            );
        }
        let bind = ing.bind.as_deref().unwrap_or("");
        if !port.name.is_empty() {
            r.check(
                &format!("{f}.port.name"),
                checks::validate_port_name(&port.name),
            );
        }
        r.check(
            &format!("{f}.port.protocol"),
            checks::validate_protocol(&port.protocol),
        );
        r.check(
            &format!("{f}.port.number"),
            checks::validate_port(i64::from(port.number)),
        );
        if !bind.is_empty() {
            r.check(&format!("{f}.bind"), checks::validate_ip(bind));
        }
        if ports.contains(&port.number) {
            r.error(
                format!("{f}.port.number"),
                "sidecar: ports on IP bound listeners must be unique",
            );
        }
        ports.push(port.number);
        let de = ing.default_endpoint.as_deref().unwrap_or("");
        if !de.is_empty() {
            let df = format!("{f}.defaultEndpoint");
            if let Some(path) = de.strip_prefix(UNIX_PREFIX) {
                r.check(&df, unix_address(path));
            } else {
                let (h, p) = match split_host_port(de) {
                    Ok(x) => x,
                    Err(e) => {
                        r.error(&df, e);
                        (String::new(), String::new())
                    }
                };
                if !h.is_empty() && !matches!(h.as_str(), "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
                    r.error(
                        &df,
                        "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
                    );
                }
                match p.parse::<i64>() {
                    Ok(n) if !p.starts_with('+') => r.check(&df, checks::validate_port(n)),
                    _ => r.error(
                        &df,
                        format!("sidecar: defaultEndpoint port ({p}) is not a number: strconv.Atoi: parsing {}: invalid syntax", go_quote(&p)),
                    ),
                }
            }
        }
        if let Some(tls) = &ing.tls {
            let tf = format!("{f}.tls");
            if !tls.subject_alt_names.is_empty() {
                r.error(
                    &tf,
                    "sidecar: subjectAltNames is not supported in ingress tls",
                );
            }
            if tls.https_redirect {
                r.error(&tf, "sidecar: httpsRedirect is not supported");
            }
            if set(&tls.credential_name) {
                r.error(&tf, "sidecar: credentialName is not currently supported");
            }
            if !tls.credential_names.is_empty() {
                r.error(&tf, "sidecar: credentialNames is not currently supported");
            }
            if !tls.tls_certificates.is_empty() {
                r.error(&tf, "sidecar: tls_certificates is not currently supported");
            }
            if matches!(tls.mode(), "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH") {
                r.error(
                    &tf,
                    format!(
                        "configuration is invalid: cannot set mode to {} in sidecar ingress tls",
                        tls.mode()
                    ),
                );
            }
            if !Protocol::parse(&port.protocol).is_tls() {
                r.error(
                    &tf,
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
            server_tls(&tf, tls, r);
        }
        if let Some(cp) = &ing.connection_pool {
            policy::connection_pool(&format!("{f}.connectionPool"), cp, r);
            if cp.http.is_some() && !Protocol::parse(&port.protocol).is_http() {
                r.warning(
                    format!("{f}.connectionPool.http"),
                    format!(
                        "sidecar: HTTP connection pool settings are configured for port {} ({}) but its protocol is not HTTP ({}); only TCP settings will apply",
                        port.number,
                        go_quote(&port.name),
                        port.protocol
                    ),
                );
            }
        }
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        policy::connection_pool("spec.inboundConnectionPool", cp, r);
    }

    let mut ports: Vec<u32> = Vec::new();
    let mut uds: Vec<String> = Vec::new();
    let mut catch_all = false;
    let n = sc.egress.len();
    for (idx, eg) in sc.egress.iter().enumerate() {
        let f = format!("spec.egress[{idx}]");
        match &eg.port {
            None => {
                if !catch_all {
                    if idx == n - 1 {
                        catch_all = true;
                    } else {
                        r.error(&f, "sidecar: the egress listener with empty port should be the last listener in the list");
                    }
                } else {
                    r.error(
                        &f,
                        "sidecar: egress can have only one listener with empty port",
                    );
                    continue;
                }
            }
            Some(port) => {
                if port.target_port.is_some_and(|t| t > 0) {
                    r.error(
                        format!("{f}.port.targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                let bind = eg.bind.as_deref().unwrap_or("");
                let capture = eg.capture_mode.as_deref().unwrap_or("DEFAULT");
                if !port.name.is_empty() {
                    r.check(
                        &format!("{f}.port.name"),
                        checks::validate_port_name(&port.name),
                    );
                }
                if port.number == 0 {
                    r.check(
                        &format!("{f}.port.protocol"),
                        checks::validate_protocol(&port.protocol),
                    );
                    match bind.strip_prefix(UNIX_PREFIX) {
                        None => r.error(format!("{f}.bind"), "sidecar: ports with 0 value must have a unix domain socket bind address"),
                        Some(path) => r.check(&format!("{f}.bind"), unix_address(path)),
                    }
                    if capture != "DEFAULT" && capture != "NONE" {
                        r.error(format!("{f}.captureMode"), "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners");
                    }
                    if uds.iter().any(|u| u == bind) {
                        r.error(
                            format!("{f}.bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                    uds.push(bind.to_string());
                } else {
                    r.check(
                        &format!("{f}.port.protocol"),
                        checks::validate_protocol(&port.protocol),
                    );
                    r.check(
                        &format!("{f}.port.number"),
                        checks::validate_port(i64::from(port.number)),
                    );
                    if !bind.is_empty() {
                        r.check(&format!("{f}.bind"), checks::validate_ip(bind));
                    }
                    if ports.contains(&port.number) {
                        r.error(
                            format!("{f}.port.number"),
                            "sidecar: ports on IP bound listeners must be unique",
                        );
                    }
                    ports.push(port.number);
                }
            }
        }
        if eg.hosts.is_empty() {
            r.error(
                format!("{f}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
            continue;
        }
        let mut nss: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (j, h) in eg.hosts.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            if let Some((ns0, svc)) = h.split_once('/') {
                let key = if ns0 == "." {
                    ns.to_string()
                } else {
                    ns0.to_string()
                };
                let entry = nss.entry(key).or_default();
                let dup = if svc != "*" {
                    entry.iter().any(|s| s == svc || s == "*")
                } else {
                    !entry.is_empty()
                };
                if dup {
                    r.warning(&hf, format!("duplicated egress host: {h}"));
                }
                if !entry.iter().any(|s| s == svc) {
                    entry.push(svc.to_string());
                }
            }
            r.check_all(
                &hf,
                checks::validate_namespace_slash_wildcard_hostname(h, false),
            );
        }
        if nss.get("*").is_some_and(|s| s.iter().any(|x| x == "*")) && nss.len() != 1 {
            r.warning(
                format!("{f}.hosts"),
                "`*/*` host select all resources, no other hosts can be added",
            );
        }
    }

    if let Some(otp) = &sc.outbound_traffic_policy {
        if let Some(ep) = &otp.egress_proxy {
            let f = "spec.outboundTrafficPolicy.egressProxy";
            if otp.mode.as_deref() != Some("ALLOW_ANY") {
                r.error(f, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
            } else {
                r.check(&format!("{f}.host"), checks::validate_fqdn(&ep.host));
                if ep.port.is_none() {
                    r.error(
                        format!("{f}.port"),
                        "sidecar: egress_proxy port must be non-nil",
                    );
                } else {
                    super::vs::destination(f, ep, r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("127.0.0.1:80"),
            Ok(("127.0.0.1".into(), "80".into()))
        );
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1".into(), "80".into())));
        assert_eq!(split_host_port(":80"), Ok(("".into(), "80".into())));
        assert_eq!(
            split_host_port("127.0.0.1"),
            Err("address 127.0.0.1: missing port in address".into())
        );
    }
}
