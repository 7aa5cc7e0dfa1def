//! Host names as Istio treats them: short-name expansion and wildcard matching
//! (`pkg/config/host`, `model.ResolveShortnameToFQDN`).

/// Expands a short name (no dot at all) with `.<ns>.svc.<domain>`; `*`, IPs and names that
/// contain a dot are left as they are (Istio treats `reviews.default` as already qualified).
pub fn resolve_short_name(host: &str, namespace: &str, domain: &str) -> String {
    if host.is_empty()
        || host == "*"
        || host.contains('.')
        || host.contains(':')
        || host.starts_with('*')
    {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{domain}")
}

/// Whether `pattern` (exact, `*`, or `*.suffix`) covers `host`. A wildcard `host` is covered
/// by a wildcard pattern whose suffix it ends with.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        let h = host.strip_prefix('*').unwrap_or(host);
        return h.len() >= suffix.len()
            && h.to_ascii_lowercase()
                .ends_with(&suffix.to_ascii_lowercase())
            && (h.len() > suffix.len() || host.starts_with('*'));
    }
    false
}

/// Whether two host patterns overlap (either side may be a wildcard) — VS hosts vs gateway
/// server hosts.
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// Specificity rank for most-specific matching: exact beats any wildcard, longer suffix beats
/// shorter, `*` is least specific.
pub fn specificity(pattern: &str) -> (u8, usize) {
    if pattern == "*" {
        (0, 0)
    } else if pattern.starts_with('*') {
        (1, pattern.len())
    } else {
        (2, pattern.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn short_names_and_wildcards() {
        assert_eq!(
            resolve_short_name("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("reviews.default", "x", "cluster.local"),
            "reviews.default"
        );
        assert_eq!(resolve_short_name("*", "x", "cluster.local"), "*");
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(hosts_intersect("*.example.com", "a.example.com"));
        assert!(hosts_intersect("a.example.com", "*"));
        assert!(!hosts_intersect("a.example.com", "b.example.com"));
    }
}
