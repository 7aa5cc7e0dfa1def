//! DestinationRule and the traffic-policy blocks it shares with Sidecar (connection pools):
//! `ValidateDestinationRule`, `validateTrafficPolicy`, `validateConnectionPool`,
//! `validateOutlierDetection`, `validateLoadBalancer`, `agent.ValidateTLS`.

use super::checks::{self, validate_duration};
use super::{at, labels_at, num_at, str_at, Report};
use crate::istio::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, OutlierDetection, TrafficPolicy,
};
use serde_json::Value;

pub(super) fn destination_rule(ns: &str, dr: &DestinationRule, spec: &Value, r: &mut Report) {
    r.check("spec.host", checks::validate_wildcard_domain(&dr.host));
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(
            "spec.trafficPolicy",
            tp,
            at(spec, &["trafficPolicy"]).unwrap_or(&Value::Null),
            r,
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if seen.contains(&s.name.as_str()) {
            r.error(
                format!("{f}.name"),
                format!("duplicate subset names: {}", s.name),
            );
        }
        seen.push(&s.name);
        r.check(&format!("{f}.name"), subset_name(&s.name));
        r.check_all(&format!("{f}.labels"), checks::validate_labels(&s.labels));
        if let Some(tp) = &s.traffic_policy {
            let raw =
                at(spec, &["subsets", &i.to_string(), "trafficPolicy"]).unwrap_or(&Value::Null);
            traffic_policy(&format!("{f}.trafficPolicy"), tp, raw, r);
        }
    }
    let has_selector = at(spec, &["workloadSelector"]).is_some_and(|v| !v.is_null());
    r.check_all(
        "spec.exportTo",
        checks::validate_export_to(ns, &dr.export_to, false, has_selector),
    );
    if has_selector {
        let labels = labels_at(spec, &["workloadSelector", "matchLabels"]).unwrap_or_default();
        workload_selector_labels("spec.workloadSelector", &labels, r);
    }
}

/// `validateWorkloadSelector` (type.v1beta1 selectors): errors for empty keys and wildcards,
/// a warning for a selector without labels.
pub(super) fn workload_selector_labels(
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
    r: &mut Report,
) {
    for (k, v) in labels {
        if k.is_empty() {
            r.error(
                field,
                format!(
                    "empty key is not supported in selector: {}",
                    checks::go_quote(&format!("{k}={v}"))
                ),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                field,
                format!(
                    "wildcard is not supported in selector: {}",
                    checks::go_quote(&format!("{k}={v}"))
                ),
            );
        }
    }
    if labels.is_empty() {
        r.warning(field, "workload selector specified without labels");
    }
}

/// `validateSubsetName`.
pub(super) fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !checks::is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

/// `validateTrafficPolicy`.
fn traffic_policy(f: &str, tp: &TrafficPolicy, raw: &Value, r: &mut Report) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
    {
        r.error(f, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(f, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(&format!("{f}.outlierDetection"), od, r);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(&format!("{f}.connectionPool"), cp, r);
    }
    if tp.load_balancer.is_some() {
        load_balancer(
            &format!("{f}.loadBalancer"),
            at(raw, &["loadBalancer"]).unwrap_or(&Value::Null),
            tp.outlier_detection.is_some(),
            r,
        );
    }
    if let Some(tls) = &tp.tls {
        client_tls(&format!("{f}.tls"), tls, r);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        if pl.port.is_none() {
            r.error(&pf, "portTrafficPolicy must have valid port");
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            r.error(&pf, "port traffic policy must have at least one field");
        } else {
            if let Some(od) = &pl.outlier_detection {
                outlier_detection(&format!("{pf}.outlierDetection"), od, r);
            }
            if let Some(cp) = &pl.connection_pool {
                connection_pool(&format!("{pf}.connectionPool"), cp, r);
            }
            if pl.load_balancer.is_some() {
                let lb = at(raw, &["portLevelSettings", &i.to_string(), "loadBalancer"])
                    .unwrap_or(&Value::Null);
                load_balancer(
                    &format!("{pf}.loadBalancer"),
                    lb,
                    pl.outlier_detection.is_some(),
                    r,
                );
            }
            if let Some(tls) = &pl.tls {
                client_tls(&format!("{pf}.tls"), tls, r);
            }
        }
    }
    if let Some(t) = &tp.tunnel {
        let tf = format!("{f}.tunnel");
        let proto = str_at(t, &["protocol"]);
        if !proto.is_empty() && proto != "CONNECT" && proto != "POST" {
            r.error(&tf, "tunnel protocol must be \"CONNECT\" or \"POST\"");
        }
        let host = str_at(t, &["targetHost"]);
        if let (Err(fe), Err(ie)) = (checks::validate_fqdn(host), checks::validate_ip(host)) {
            r.error(
                &tf,
                format!("tunnel target host must be valid FQDN or IP address: {fe}; {ie}"),
            );
        }
        if let Err(e) = checks::validate_port(num_at(t, &["targetPort"]) as i64) {
            r.error(&tf, format!("tunnel target port is invalid: {e}"));
        }
    }
    if let Some(pp) = &tp.proxy_protocol {
        let v = str_at(pp, &["version"]);
        if !v.is_empty() && v != "V1" && v != "V2" {
            r.error(
                format!("{f}.proxyProtocol"),
                format!("proxy protocol version is invalid: {v}"),
            );
        }
    }
}

/// `validateOutlierDetection`.
pub(super) fn outlier_detection(f: &str, od: &OutlierDetection, r: &mut Report) {
    if let Some(d) = &od.base_ejection_time {
        r.check(&format!("{f}.baseEjectionTime"), validate_duration(d));
    }
    if od.consecutive_errors.is_some_and(|v| v != 0) {
        r.warning(
            format!("{f}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !od.split_external_local_origin_errors.unwrap_or(false)
        && od.consecutive_local_origin_failures.is_some_and(|v| v > 0)
    {
        r.error(
            format!("{f}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    if let Some(d) = &od.interval {
        r.check(&format!("{f}.interval"), validate_duration(d));
    }
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        let v = v.unwrap_or(0);
        if !(0..=100).contains(&v) {
            r.error(
                format!("{f}.{name}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

/// `validateConnectionPool`.
pub(super) fn connection_pool(f: &str, cp: &ConnectionPoolSettings, r: &mut Report) {
    if cp.http.is_none() && cp.tcp.is_none() {
        r.error(f, "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &cp.http {
        let hf = format!("{f}.http");
        let neg = |v: Option<i64>| v.is_some_and(|x| x < 0);
        if neg(h.http1_max_pending_requests) {
            r.error(
                format!("{hf}.http1MaxPendingRequests"),
                "http1 max pending requests must be non-negative",
            );
        }
        if neg(h.http2_max_requests) {
            r.error(
                format!("{hf}.http2MaxRequests"),
                "http2 max requests must be non-negative",
            );
        }
        if neg(h.max_requests_per_connection) {
            r.error(
                format!("{hf}.maxRequestsPerConnection"),
                "max requests per connection must be non-negative",
            );
        }
        if neg(h.max_retries) {
            r.error(
                format!("{hf}.maxRetries"),
                "max retries must be non-negative",
            );
        }
        if let Some(d) = &h.idle_timeout {
            r.check(&format!("{hf}.idleTimeout"), validate_duration(d));
        }
        if h.h2_upgrade_policy.as_deref() == Some("UPGRADE") && h.use_client_protocol == Some(true)
        {
            r.error(
                format!("{hf}.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if neg(h.max_concurrent_streams) {
            r.error(
                format!("{hf}.maxConcurrentStreams"),
                "max concurrent streams must be non-negative",
            );
        }
    }
    if let Some(t) = &cp.tcp {
        let tf = format!("{f}.tcp");
        if t.max_connections.is_some_and(|x| x < 0) {
            r.error(
                format!("{tf}.maxConnections"),
                "max connections must be non-negative",
            );
        }
        if let Some(d) = &t.connect_timeout {
            r.check(&format!("{tf}.connectTimeout"), validate_duration(d));
        }
        if let Some(d) = &t.max_connection_duration {
            r.check(&format!("{tf}.maxConnectionDuration"), validate_duration(d));
        }
        if let Some(d) = &t.idle_timeout {
            // `0s` disables the idle timeout and is not validated (whole milliseconds == 0).
            let disabled = checks::parse_go_duration(d).is_ok_and(|n| n / 1_000_000 == 0);
            if !disabled {
                r.check(&format!("{tf}.idleTimeout"), validate_duration(d));
            }
        }
        if let Some(ka) = &t.tcp_keepalive {
            if let Some(d) = &ka.time {
                r.check(&format!("{tf}.tcpKeepalive.time"), validate_duration(d));
            }
            if let Some(d) = &ka.interval {
                r.check(&format!("{tf}.tcpKeepalive.interval"), validate_duration(d));
            }
        }
    }
}

/// Envoy's `isPrime` (as copied by Istio).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let limit = (x as f64).sqrt() as u64;
    let mut f = 3;
    while f <= limit {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// `validateLoadBalancer` on the raw `loadBalancer` block.
fn load_balancer(f: &str, lb: &Value, has_outlier: bool, r: &mut Report) {
    if let Some(ch) = at(lb, &["consistentHash"]).filter(|v| v.is_object()) {
        let cf = format!("{f}.consistentHash");
        if at(ch, &["httpCookie"]).is_some_and(|c| c.is_object())
            && str_at(ch, &["httpCookie", "name"]).is_empty()
        {
            r.error(
                format!("{cf}.httpCookie.name"),
                "name required for HttpCookie",
            );
        }
        let min_ring = num_at(ch, &["minimumRingSize"]);
        if min_ring != 0.0 {
            r.warning(
                format!("{cf}.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if at(ch, &["ringHash"]).is_some() || at(ch, &["maglev"]).is_some() {
                r.error(
                    &cf,
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if at(ch, &["maglev"]).is_some_and(|m| m.is_object()) {
            let ts = num_at(ch, &["maglev", "tableSize"]) as u64;
            let mf = format!("{cf}.maglev.tableSize");
            if ts == 0 {
                r.error(&mf, "tableSize must be set for maglev");
            }
            if ts >= 5_000_011 {
                r.error(&mf, "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(ts) {
                r.error(&mf, "tableSize must be a prime number for maglev");
            }
        }
    }
    if let Some(l) = at(lb, &["localityLbSetting"]).filter(|v| v.is_object()) {
        locality_lb(&format!("{f}.localityLbSetting"), l, has_outlier, r);
    }
    if let Some(w) = at(lb, &["warmup"]).filter(|v| v.is_object()) {
        let wf = format!("{f}.warmup");
        match at(w, &["duration"]).and_then(|v| v.as_str()) {
            None => r.error(&wf, "duration is required"),
            Some(d) => r.check(&format!("{wf}.duration"), validate_duration(d)),
        }
        if num_at(w, &["minimumPercent"]) > 100.0 {
            r.error(
                format!("{wf}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            );
        }
        if at(w, &["aggression"])
            .and_then(|v| v.as_f64())
            .is_some_and(|a| a < 1.0)
        {
            r.error(
                format!("{wf}.aggression"),
                "aggression should be greater than or equal to 1",
            );
        }
    }
}

/// `agent.ValidateLocalityLbSetting`.
fn locality_lb(f: &str, lb: &Value, has_outlier: bool, r: &mut Report) {
    let empty = Vec::new();
    let distribute = at(lb, &["distribute"])
        .and_then(|v| v.as_array())
        .unwrap_or(&empty);
    let failover = at(lb, &["failover"])
        .and_then(|v| v.as_array())
        .unwrap_or(&empty);
    let priority = at(lb, &["failoverPriority"])
        .and_then(|v| v.as_array())
        .unwrap_or(&empty);
    if !distribute.is_empty() && !failover.is_empty() {
        r.error(
            f,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !failover.is_empty() {
        for p in priority.iter().filter_map(|p| p.as_str()) {
            if matches!(
                p,
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            ) {
                r.error(f, format!("can not simultaneously set 'failover' and topology label '{p}' in 'failover_priority'"));
                return;
            }
        }
    }
    let mut src = Vec::new();
    for d in distribute {
        src.push(str_at(d, &["from"]).to_string());
        let mut total: u64 = 0;
        let mut dest = Vec::new();
        if let Some(to) = at(d, &["to"]).and_then(|v| v.as_object()) {
            for (loc, w) in to {
                dest.push(loc.clone());
                let w = w.as_f64().unwrap_or(0.0);
                if w <= 0.0 || w > 100.0 {
                    r.error(f, "locality weight must be in range [1, 100]");
                    return;
                }
                total += w as u64;
            }
        }
        if total != 100 {
            r.error(f, format!("total locality weight {total} != 100"));
            return;
        }
        r.check(f, localities(&dest));
    }
    r.check(f, localities(&src));
    if (!failover.is_empty() || !priority.is_empty()) && !has_outlier {
        r.warning(f, "outlier detection policy must be provided for failover");
    }
    for fo in failover {
        let (from, to) = (str_at(fo, &["from"]), str_at(fo, &["to"]));
        if from == to {
            r.error(
                f,
                "locality lb failover settings must specify different regions",
            );
        }
        if from.contains('/') || to.contains('/') {
            r.error(f, "locality lb failover only specify region");
        }
        if from.contains('*') || to.contains('*') {
            r.error(
                f,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// `validateLocalities`: wildcards only at the end, no overlaps.
fn localities(locs: &[String]) -> Result<(), String> {
    use std::collections::BTreeMap;
    let mut m: BTreeMap<String, BTreeMap<String, BTreeMap<String, bool>>> = BTreeMap::new();
    let star = || "*".to_string();
    for l in locs {
        let n = l.matches('*').count();
        if n > 0 && (n > 1 || !l.ends_with('*')) {
            return Err(format!(
                "locality {l} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || format!("locality {l} overlap with previous specified ones");
        if m.contains_key("*") {
            return Err(overlap());
        }
        let items: Vec<&str> = l.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!(
                "locality {l} must not contain empty region/zone/subzone info"
            ));
        }
        let region = items[0].to_string();
        match items.len() {
            1 => {
                if m.contains_key(&region) {
                    return Err(overlap());
                }
                m.insert(
                    region,
                    BTreeMap::from([(star(), BTreeMap::from([(star(), true)]))]),
                );
            }
            2 => {
                let zone = items[1].to_string();
                let e = m.entry(region).or_default();
                if e.contains_key("*") || e.contains_key(&zone) {
                    return Err(overlap());
                }
                e.insert(zone, BTreeMap::from([(star(), true)]));
            }
            _ => {
                let (zone, sub) = (items[1].to_string(), items[2].to_string());
                let e = m.entry(region).or_default();
                if e.contains_key("*") {
                    return Err(overlap());
                }
                let z = e.entry(zone).or_default();
                if z.get("*").copied().unwrap_or(false) || z.get(&sub).copied().unwrap_or(false) {
                    return Err(overlap());
                }
                z.insert(sub, true);
            }
        }
    }
    Ok(())
}

/// `agent.ValidateTLS` (client-side TLS of a DestinationRule).
pub(super) fn client_tls(f: &str, t: &ClientTlsSettings, r: &mut Report) {
    let mode = t.mode();
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    let cred = set(&t.credential_name);
    if t.insecure_skip_verify == Some(true) {
        if mode == "SIMPLE" && (set(&t.ca_certificates) || cred || !t.subject_alt_names.is_empty())
        {
            r.error(f, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
        }
        if mode == "MUTUAL" && (set(&t.ca_certificates) || !t.subject_alt_names.is_empty()) {
            r.error(f, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
        }
    }
    if (mode == "SIMPLE" || mode == "MUTUAL") && cred {
        if set(&t.client_certificate)
            || set(&t.ca_certificates)
            || set(&t.private_key)
            || set(&t.ca_crl)
        {
            r.error(f, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == "MUTUAL" {
        if !set(&t.client_certificate) {
            r.error(
                format!("{f}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !set(&t.private_key) {
            r.error(
                format!("{f}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(9));
    }

    #[test]
    fn locality_overlap() {
        assert!(localities(&["us-east/*/x".into()]).is_err());
        assert!(localities(&["us-east".into(), "us-west/zone1".into()]).is_ok());
        assert_eq!(
            localities(&["us-east".into(), "us-east/zone1".into()]),
            Err("locality us-east/zone1 overlap with previous specified ones".into())
        );
    }
}
