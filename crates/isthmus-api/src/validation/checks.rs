//! The small building blocks of Istio's webhook validation, each returning Istio's exact error
//! text: DNS labels and wildcard domains (`pkg/config/validation/agent`), label maps
//! (`pkg/config/labels`), exportTo visibility (`pkg/config/visibility`), protocols
//! (`pkg/config/protocol`), ports, IP addresses and subnets, and Go-style durations as the
//! protobuf JSON decoder Istio uses (`time.ParseDuration`) accepts them.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `labels.IsDNS1123Label`: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    alnum(b[0]) && alnum(b[b.len() - 1]) && b.iter().all(|&c| alnum(c) || c == b'-')
}

/// `labels.IsWildcardDNS1123Label`: `*`, or a DNS label optionally prefixed by `*` or `*-`.
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

/// `CheckDNS1123Preconditions`.
fn dns_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {} too long (max 255)", go_quote(name)));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// `ValidateDNS1123Labels`.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    if go_atoi(tld).is_some() {
        return Err(format!(
            "domain name {} invalid (top level domain {} cannot be all-numeric)",
            go_quote(domain),
            go_quote(tld)
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {} invalid (label {} invalid)",
                go_quote(domain),
                go_quote(label)
            ));
        }
    }
    Ok(())
}

/// `strconv.Atoi` success test (optional sign, decimal digits, fits in i64).
fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// `ValidateFQDN`.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    dns_preconditions(fqdn)?;
    dns1123_labels(fqdn)
}

/// `ValidateWildcardDomain`: a valid FQDN whose first label may be a wildcard.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {} invalid (label {} invalid)",
            go_quote(domain),
            go_quote(first)
        ));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// `ValidateWildcardDomainForVirtualServiceBoundToGateway`: also accepts the auto-generated
/// `outbound_.<PORT>_._.<HOSTNAME>` SNI names of AUTO_PASSTHROUGH gateways.
pub fn validate_wildcard_domain_for_gateway_vs(sni: bool, domain: &str) -> Result<(), String> {
    dns_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        const FORMAT: &str = "outbound_.<PORT>_._.<HOSTNAME>";
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {domain} invalid, should follow '{FORMAT}' format"
            ));
        }
        let dir = parts[0];
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if dir != "outbound" {
            return Err(format!(
                "domain name {} invalid (label {} invalid)",
                go_quote(domain),
                go_quote(dir)
            ));
        }
        if !port.bytes().any(|c| c.is_ascii_digit()) {
            return Err(format!(
                "domain name {} invalid (label {} invalid). should follow {FORMAT} format",
                go_quote(domain),
                go_quote(port)
            ));
        }
        if !host.bytes().any(|c| c.is_ascii_alphabetic()) {
            return Err(format!(
                "domain name {} invalid (label {} invalid). should follow {FORMAT} format",
                go_quote(domain),
                go_quote(host)
            ));
        }
        return Ok(());
    }
    validate_wildcard_domain(domain)
}

/// `ValidatePartialWildCard`.
pub fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {} not allowed", go_quote(host)));
    }
    Ok(())
}

/// `validateSidecarOrGatewayHostnamePart`.
fn sidecar_or_gateway_hostname_part(hostname: &str, is_gateway: bool, out: &mut Vec<String>) {
    if hostname != "*" && !hostname.contains('.') {
        out.push("short names (non FQDN) are not allowed".into());
    }
    if let Err(e) = validate_wildcard_domain(hostname) {
        if !is_gateway {
            out.push(e.clone());
        }
        if !is_ip(hostname) {
            out.push(e);
        }
    }
    if let Err(e) = validate_partial_wildcard(hostname) {
        out.push(e);
    }
}

/// `ValidateNamespaceSlashWildcardHostname` for Gateway server hosts (`is_gateway`) and Sidecar
/// egress hosts. Returns every error, in Istio's order.
pub fn validate_namespace_slash_wildcard_hostname(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut out = Vec::new();
    let Some((ns, dns)) = hostname.split_once('/') else {
        if is_gateway {
            sidecar_or_gateway_hostname_part(hostname, true, &mut out);
        } else {
            out.push("host must be of form namespace/dnsName".into());
        }
        return out;
    };
    if ns.is_empty() || dns.is_empty() {
        out.push("config namespace and dnsName in host entry cannot be empty".into());
    }
    if !is_gateway {
        if ns != "*" && ns != "." && ns != "~" && !is_dns1123_label(ns) {
            out.push(format!(
                "invalid namespace value {} in sidecar",
                go_quote(ns)
            ));
        }
    } else if ns != "*" && ns != "." && !is_dns1123_label(ns) {
        out.push(format!(
            "invalid namespace value {} in gateway",
            go_quote(ns)
        ));
    }
    sidecar_or_gateway_hostname_part(dns, is_gateway, &mut out);
    out
}

/// `ValidatePort`.
pub fn validate_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// `netutil.IsValidIPAddress`.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// `ValidateIPAddress` (`netip.ParseAddr`).
pub fn validate_ip(addr: &str) -> Result<(), String> {
    if is_ip(addr) {
        Ok(())
    } else {
        Err(format!("{addr} is not a valid IP"))
    }
}

/// `ValidateIPSubnet`: CIDR (`netip.ParsePrefix`) when there is one `/`, else an address.
pub fn validate_ip_subnet(subnet: &str) -> Result<(), String> {
    if subnet.matches('/').count() == 1 {
        let ok = subnet.split_once('/').is_some_and(|(a, bits)| {
            let Ok(ip) = a.parse::<IpAddr>() else {
                return false;
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            !bits.is_empty()
                && bits.bytes().all(|c| c.is_ascii_digit())
                && !(bits.len() > 1 && bits.starts_with('0'))
                && bits.parse::<u32>().is_ok_and(|b| b <= max)
        });
        return if ok {
            Ok(())
        } else {
            Err(format!("{subnet} is not a valid CIDR block"))
        };
    }
    validate_ip(subnet)
}

/// `ValidatePortName`.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// Istio's protocol classes (`protocol.Parse`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    MySql,
    Unsupported,
}

impl Protocol {
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" => Protocol::Http2,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::MySql,
            _ => Protocol::Unsupported,
        }
    }
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::HttpProxy
                | Protocol::Grpc
                | Protocol::GrpcWeb
        )
    }
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::MySql
        )
    }
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// `ValidateProtocol`: empty means sniffing and is allowed.
pub fn validate_protocol(p: &str) -> Result<(), String> {
    if !p.is_empty() && Protocol::parse(p) == Protocol::Unsupported {
        Err(format!("unsupported protocol: {p}"))
    } else {
        Ok(())
    }
}

/// `labels.Instance.Validate`: every key a Kubernetes label name, every value a label value.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if let Err(e) = validate_tag_key(k) {
            out.push(e);
        }
        if !(v.is_empty() || is_qualified_name(v)) {
            out.push(format!("invalid tag value: {}", go_quote(v)));
        }
    }
    out
}

/// `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

fn validate_tag_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.split('.').all(is_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!("invalid tag key: {}", go_quote(k)));
    }
    if prefix.is_some_and(|p| p.len() > 253) {
        return Err(format!(
            "invalid tag key: {} (DNS prefix is too long)",
            go_quote(k)
        ));
    }
    if name.len() > 63 {
        return Err(format!(
            "invalid tag key: {} (name is too long)",
            go_quote(k)
        ));
    }
    Ok(())
}

/// `visibility.Instance.Validate`.
fn validate_visibility(v: &str) -> Result<(), String> {
    match v {
        "." | "*" => Ok(()),
        "~" => Err("exportTo ~ (none) is not allowed for Istio configuration objects".into()),
        _ if is_dns1123_label(v) => Ok(()),
        _ => Err("only .,*,~, or a valid DNS 1123 label is allowed as exportTo entry".into()),
    }
}

/// `validateExportTo`.
pub fn validate_export_to(
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    is_dr_with_selector: bool,
) -> Vec<String> {
    let mut errs = Vec::new();
    if export_to.is_empty() {
        return errs;
    }
    let mut set: Vec<String> = Vec::new();
    for e in export_to {
        let key = if e == "." {
            namespace.to_string()
        } else {
            e.clone()
        };
        if set.contains(&key) {
            if &key != e {
                errs.push(format!(
                    "duplicate entries in exportTo: . and current namespace {namespace}"
                ));
            } else {
                errs.push(format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if is_service_entry && e == "~" {
            set.push(key);
        } else {
            // Istio validates the substituted key, so `.` becomes the namespace name here.
            match validate_visibility(&key) {
                Err(err) => errs.push(err),
                Ok(()) => set.push(key),
            }
        }
    }
    if is_dr_with_selector && !set.is_empty() {
        if set.iter().any(|s| s == namespace) {
            if set.len() > 1 {
                errs.push("destination rule with workload selector cannot have multiple entries in exportTo".into());
            }
        } else {
            errs.push("destination rule with workload selector cannot have exportTo beyond current namespace".into());
        }
    }
    if set.iter().any(|s| s == "*") && export_to.len() > 1 {
        errs.push(
            "cannot have both public (*) and non-public exportTo values for a resource".into(),
        );
    }
    if set.iter().any(|s| s == "~") && export_to.len() > 1 {
        errs.push("cannot export service entry to no one (~) and someone".into());
    }
    errs
}

/// Parses a duration as Go's `time.ParseDuration` does (what Istio's protobuf JSON decoder
/// uses), returning nanoseconds, or Go's error text.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let orig = s;
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let b = rest.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let fl = r.bytes().take_while(|c| c.is_ascii_digit()).count();
            frac_part = &r[..fl];
            rest = &r[fl..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .bytes()
            .take_while(|c| !(*c == b'.' || c.is_ascii_digit()))
            .count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ))
            }
        };
        let int_v: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = int_v.checked_mul(scale).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            // Go keeps fractional precision down to the nanosecond and truncates the rest.
            let mut frac: i128 = 0;
            let mut div: i128 = 1;
            for c in frac_part.bytes().take(18) {
                frac = frac * 10 + i128::from(c - b'0');
                div *= 10;
            }
            v += frac * scale / div;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
    }
    Ok(if neg { -total } else { total })
}

/// `agent.ValidateDuration` on a duration string.
pub fn validate_duration(s: &str) -> Result<(), String> {
    let nanos = parse_go_duration(s)?;
    if nanos < 1_000_000 {
        return Err("duration must be greater than 1ms".into());
    }
    if nanos % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// Go's `%q` / `strconv.Quote` for the strings that appear in Istio's messages.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Host name matching from `pkg/config/host/name.go`.
pub mod host {
    fn wild(n: &str) -> bool {
        n.starts_with('*')
    }

    /// `Name.Matches`: the two host names overlap (either way).
    pub fn matches(n: &str, o: &str) -> bool {
        match (wild(n), wild(o)) {
            (true, true) => {
                if n.len() < o.len() {
                    o[1..].ends_with(&n[1..])
                } else {
                    n[1..].ends_with(&o[1..])
                }
            }
            (true, false) => o.ends_with(&n[1..]),
            (false, true) => n.ends_with(&o[1..]),
            (false, false) => n == o,
        }
    }

    /// `Name.SubsetOf`: every name `n` matches is also matched by `o`.
    pub fn subset_of(n: &str, o: &str) -> bool {
        match (wild(n), wild(o)) {
            (true, true) => n[1..].ends_with(&o[1..]),
            (true, false) => false,
            (false, true) => n.ends_with(&o[1..]),
            (false, false) => n == o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go() {
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("1h2m"), Ok(3_720_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("100us"), Ok(100_000));
        assert_eq!(
            parse_go_duration("3"),
            Err("time: missing unit in duration \"3\"".into())
        );
        assert_eq!(
            parse_go_duration("3d"),
            Err("time: unknown unit \"d\" in duration \"3d\"".into())
        );
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".into())
        );
        assert_eq!(
            validate_duration("0.5ms"),
            Err("duration must be greater than 1ms".into())
        );
        assert_eq!(
            validate_duration("1.0005s"),
            Err("only durations to ms precision are supported".into())
        );
        assert_eq!(
            validate_duration("0s"),
            Err("duration must be greater than 1ms".into())
        );
        assert_eq!(validate_duration("1ms"), Ok(()));
        // Long fractions and huge values never overflow or panic.
        assert_eq!(
            parse_go_duration("1.123456789012345678901234567890h"),
            Ok(4_044_444_440_444)
        );
        assert!(parse_go_duration("99999999999999999999999h").is_err());
        assert!(parse_go_duration("1\u{e9}s").is_err());
    }

    #[test]
    fn domains() {
        assert!(validate_wildcard_domain("*.example.com").is_ok());
        assert!(validate_wildcard_domain("reviews").is_ok());
        assert_eq!(
            validate_wildcard_domain("foo*.com"),
            Err("domain name \"foo*.com\" invalid (label \"foo*\" invalid)".into())
        );
        assert_eq!(
            validate_fqdn("1.2.3.4"),
            Err(
                "domain name \"1.2.3.4\" invalid (top level domain \"4\" cannot be all-numeric)"
                    .into()
            )
        );
        assert_eq!(
            validate_wildcard_domain(""),
            Err("empty domain name not allowed".into())
        );
        assert!(validate_namespace_slash_wildcard_hostname("*/foo.example.com", false).is_empty());
        assert_eq!(
            validate_namespace_slash_wildcard_hostname("foo", false),
            vec!["host must be of form namespace/dnsName"]
        );
        assert_eq!(
            validate_namespace_slash_wildcard_hostname("ns/foo", false),
            vec!["short names (non FQDN) are not allowed"]
        );
        assert!(validate_namespace_slash_wildcard_hostname("1.2.3.4", true).is_empty());
    }

    #[test]
    fn host_matching() {
        assert!(host::matches("*.foo.com", "bar.foo.com"));
        assert!(host::matches("*.com", "*.foo.com"));
        assert!(!host::matches("a.com", "b.com"));
        assert!(host::subset_of("a.foo.com", "*.foo.com"));
        assert!(!host::subset_of("*.foo.com", "a.foo.com"));
    }

    #[test]
    fn export_to() {
        assert!(validate_export_to("ns", &[".".into(), "foo".into()], false, false).is_empty());
        assert_eq!(
            validate_export_to("ns", &["ns".into(), ".".into()], false, false),
            vec!["duplicate entries in exportTo: . and current namespace ns"]
        );
        assert_eq!(
            validate_export_to("ns", &["*".into(), "foo".into()], false, false),
            vec!["cannot have both public (*) and non-public exportTo values for a resource"]
        );
        assert!(validate_export_to("ns", &["~".into()], true, false).is_empty());
        assert_eq!(
            validate_export_to("ns", &["~".into()], false, false),
            vec!["exportTo ~ (none) is not allowed for Istio configuration objects"]
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every check takes any string without panicking.
        #[test]
        fn checks_never_panic(s in "\\PC{0,80}", t in "[0-9a-z.*/:~\\-_ ]{0,40}") {
            let _ = parse_go_duration(&s);
            let _ = parse_go_duration(&t);
            let _ = validate_duration(&t);
            let _ = validate_wildcard_domain(&s);
            let _ = validate_wildcard_domain_for_gateway_vs(true, &t);
            let _ = validate_namespace_slash_wildcard_hostname(&t, true);
            let _ = validate_namespace_slash_wildcard_hostname(&s, false);
            let _ = validate_ip_subnet(&t);
            let _ = validate_export_to("ns", &[s.clone(), t.clone(), ".".into()], true, true);
            let labels: std::collections::BTreeMap<String, String> = [(s.clone(), t.clone())].into();
            let _ = validate_labels(&labels);
            let _ = host::matches(&s, &t);
            let _ = host::subset_of(&t, &s);
        }
    }
}
