//! Choosing by SNI among several servers on one port.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::store::CertStore;

/// A map from server names to values with Envoy's `server_names` semantics:
/// an exact name wins; otherwise the most specific wildcard `*.suffix` (leftmost labels
/// stripped one at a time, so `*.b.example.com` beats `*.example.com` for `a.b.example.com`,
/// and `*.example.com` also covers `a.b.example.com`); otherwise the `*` entry, if any.
/// Names are compared case-insensitively; a trailing dot is ignored.
#[derive(Debug, Clone)]
pub struct SniMap<T> {
    exact: BTreeMap<String, T>,
    wildcard: BTreeMap<String, T>,
    any: Option<T>,
}

impl<T> Default for SniMap<T> {
    fn default() -> Self {
        SniMap {
            exact: BTreeMap::new(),
            wildcard: BTreeMap::new(),
            any: None,
        }
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl<T> SniMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` (`api.example.com`, `*.example.com` or `*`). Returns the previous value for
    /// the same key: Istio silently keeps the *first* server for duplicate hosts, so callers that
    /// want that behaviour should skip names already present (see [`SniMap::contains`]).
    pub fn insert(&mut self, name: &str, value: T) -> Option<T> {
        let name = normalise(name);
        if name == "*" {
            return self.any.replace(value);
        }
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), value),
            None => self.exact.insert(name, value),
        }
    }

    /// Whether exactly this key (not a match) is present.
    pub fn contains(&self, name: &str) -> bool {
        let name = normalise(name);
        if name == "*" {
            return self.any.is_some();
        }
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.contains_key(suffix),
            None => self.exact.contains_key(&name),
        }
    }

    /// The value for a client's SNI (see the type docs for precedence). `None` SNI only
    /// matches the `*` entry.
    pub fn get(&self, sni: Option<&str>) -> Option<&T> {
        if let Some(sni) = sni {
            let name = normalise(sni);
            if let Some(v) = self.exact.get(&name) {
                return Some(v);
            }
            let mut rest = name.as_str();
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(v) = self.wildcard.get(suffix) {
                    return Some(v);
                }
                rest = suffix;
            }
        }
        self.any.as_ref()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

/// A certificate resolver that picks a [`CertStore`] by the client's SNI (several TLS servers
/// sharing one port, each with its own `credentialName`). Each store stays hot-swappable.
#[derive(Debug, Default)]
pub struct SniCertResolver {
    map: SniMap<Arc<CertStore>>,
}

impl SniCertResolver {
    /// An empty resolver (every handshake fails until stores are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a store for `name` (exact, `*.suffix`, or `*` as the fallback for unknown or
    /// missing SNI). Returns the previous store for that key.
    pub fn insert(&mut self, name: &str, store: Arc<CertStore>) -> Option<Arc<CertStore>> {
        self.map.insert(name, store)
    }

    /// The store that a handshake with this SNI would use.
    pub fn store_for(&self, sni: Option<&str>) -> Option<&Arc<CertStore>> {
        self.map.get(sni)
    }
}

impl ResolvesServerCert for SniCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        match self.map.get(sni) {
            Some(store) => store.current(),
            None => {
                tracing::debug!(sni = ?sni, "no certificate configured for SNI");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_most_specific_wildcard_then_any() {
        let mut m = SniMap::new();
        m.insert("api.example.com", 1);
        m.insert("*.example.com", 2);
        m.insert("*.b.example.com", 3);
        assert_eq!(m.get(Some("api.example.com")), Some(&1));
        assert_eq!(m.get(Some("API.Example.com.")), Some(&1));
        assert_eq!(m.get(Some("x.example.com")), Some(&2));
        assert_eq!(m.get(Some("a.b.example.com")), Some(&3));
        assert_eq!(m.get(Some("a.c.example.com")), Some(&2));
        assert_eq!(m.get(Some("example.com")), None);
        assert_eq!(m.get(None), None);
        m.insert("*", 9);
        assert_eq!(m.get(Some("other.org")), Some(&9));
        assert_eq!(m.get(None), Some(&9));
        assert!(m.contains("*.b.example.com"));
        assert!(!m.contains("zz.example.com"));
    }
}
