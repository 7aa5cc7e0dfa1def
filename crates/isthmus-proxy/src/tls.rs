//! TLS for the proxy, built on `isthmus-tls`: termination per filter chain ([`ServerTls`]:
//! SIMPLE / MUTUAL / OPTIONAL_MUTUAL / ISTIO_MUTUAL, Envoy's lenient ALPN, certificate by SNI)
//! and origination per cluster ([`UpstreamTls`]).
//!
//! Certificates live in hot-swappable [`CertStore`]s keyed by SDS name and kept across config
//! versions: a config that only rotates a certificate swaps it in place, so new handshakes use
//! the new certificate while open connections keep theirs (and `maxConnectionDuration` bounds
//! how long the old one lives). Everything is built before a config is applied, so bad
//! material refuses the whole config.
//!
//! A secret that is *referenced but not supplied* (a gateway `credentialName` whose Secret is
//! absent, in another namespace or lacks the right keys) does not refuse the config: like
//! Envoy waiting for SDS, the cluster or filter chain is kept and fails at use. A missing
//! certificate becomes an empty placeholder [`CertStore`] kept across versions, so when the
//! secret arrives later the placeholder is filled in place and the cluster starts working
//! without being rebuilt; a missing trust bundle makes the cluster/chain "not ready" until a
//! version supplies it (a changed CA already rebuilds the cluster).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use isthmus_tls::{
    CertStore, ClientTlsOptions, ServerTls, ServerTlsOptions, SniCertResolver, TrustBundle,
    UpstreamTls as Upstream,
};
use rustls::sign::CertifiedKey;

use crate::config::{DownstreamTls, Secret, TlsMode, UpstreamTls};

/// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` when a TLS context waits for a secret
/// (`NotReadySslSocket`); the access log prints it with spaces as underscores.
pub const SECRET_NOT_SUPPLIED: &str = "TLS error: Secret is not supplied by SDS";

/// Loaded secrets by SDS name; rotations are staged until [`SecretSet::commit`].
#[derive(Default)]
pub struct SecretSet {
    stores: BTreeMap<String, Arc<CertStore>>,
    dns_names: BTreeMap<String, Vec<String>>,
    bundles: BTreeMap<String, TrustBundle>,
    staged: Vec<(Arc<CertStore>, Arc<CertifiedKey>)>,
    /// Empty stores standing in for referenced certificates nobody supplied (yet). Filled in
    /// place when a later version supplies the secret. Interior mutability because TLS
    /// contexts are built from a shared `&SecretSet`.
    placeholders: Mutex<BTreeMap<String, Arc<CertStore>>>,
    /// Stores of the previous version whose secret disappeared: emptied on commit so new
    /// handshakes fail as for a never-supplied secret (open connections keep theirs).
    vanished: Vec<Arc<CertStore>>,
}

impl Clone for SecretSet {
    fn clone(&self) -> Self {
        SecretSet {
            stores: self.stores.clone(),
            dns_names: self.dns_names.clone(),
            bundles: self.bundles.clone(),
            staged: self.staged.clone(),
            placeholders: Mutex::new(self.placeholder_map().clone()),
            vanished: self.vanished.clone(),
        }
    }
}

impl SecretSet {
    /// Load `secrets`, reusing the stores of `prev` for names that already exist.
    pub fn load(secrets: &[Secret], prev: Option<&SecretSet>, problems: &mut Vec<String>) -> Self {
        let mut set = SecretSet::default();
        for s in secrets {
            match (&s.certificate_chain, &s.private_key) {
                (Some(c), Some(k)) => {
                    let res = c.load().and_then(|cpem| {
                        let kpem = k.load()?;
                        let ck = isthmus_tls::certified_key_from_pem(&cpem, &kpem, &s.name)
                            .map_err(|e| e.to_string())?;
                        Ok(Arc::new(ck))
                    });
                    match res {
                        Ok(ck) => {
                            let names = ck.cert.first().map(|c| cert_sans(c).0).unwrap_or_default();
                            set.dns_names.insert(s.name.clone(), names);
                            let old = prev.and_then(|p| {
                                p.stores
                                    .get(&s.name)
                                    .cloned()
                                    .or_else(|| p.placeholder_map().get(&s.name).cloned())
                            });
                            let store = match old.as_ref() {
                                Some(old) => {
                                    if old.current().map(|c| c.cert.clone())
                                        != Some(ck.cert.clone())
                                    {
                                        set.staged.push((old.clone(), ck));
                                    }
                                    old.clone()
                                }
                                None => Arc::new(CertStore::new(s.name.clone(), ck)),
                            };
                            set.stores.insert(s.name.clone(), store);
                        }
                        Err(e) => problems.push(format!("secret {:?}: {e}", s.name)),
                    }
                }
                (None, None) => {}
                _ => problems.push(format!(
                    "secret {:?}: certificateChain and privateKey go together",
                    s.name
                )),
            }
            if let Some(ca) = &s.trusted_ca {
                match ca
                    .load()
                    .and_then(|pem| TrustBundle::from_pem(&pem, &s.name).map_err(|e| e.to_string()))
                {
                    Ok(b) => {
                        set.bundles.insert(s.name.clone(), b);
                    }
                    Err(e) => problems.push(format!("secret {:?}: {e}", s.name)),
                }
            }
        }
        if let Some(p) = prev {
            // Placeholders still unsupplied stay the same objects, so clusters reused from
            // the previous version see the secret when it arrives.
            let mut ph = BTreeMap::new();
            let mut vanished = Vec::new();
            for (name, store) in p.placeholder_map().iter() {
                if !set.stores.contains_key(name) {
                    ph.insert(name.clone(), store.clone());
                }
            }
            // A secret that was supplied and now is not: its store becomes a placeholder
            // (emptied on commit).
            for (name, store) in &p.stores {
                if !set.stores.contains_key(name) && !ph.contains_key(name) {
                    ph.insert(name.clone(), store.clone());
                    vanished.push(store.clone());
                }
            }
            set.placeholders = Mutex::new(ph);
            set.vanished = vanished;
        }
        set
    }

    fn placeholder_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<CertStore>>> {
        self.placeholders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply staged rotations (call only once the whole config was accepted).
    pub fn commit(&mut self) {
        for (store, key) in self.staged.drain(..) {
            if store.current().is_none() {
                tracing::info!(
                    secret = store.name(),
                    "secret supplied; TLS contexts waiting for it are ready"
                );
            } else {
                tracing::info!(secret = store.name(), "certificate rotated in place");
            }
            store.swap(key);
        }
        for store in self.vanished.drain(..) {
            tracing::warn!(
                secret = store.name(),
                "secret no longer supplied; new handshakes using it fail"
            );
            store.clear();
        }
    }

    /// The loaded certificate store for `name` (`None` if the secret was not supplied).
    pub fn store(&self, name: &str) -> Option<Arc<CertStore>> {
        self.stores.get(name).cloned()
    }

    /// The store for `name`, or the (possibly new) empty placeholder standing in for an
    /// unsupplied secret. The second value is `false` for a placeholder.
    pub fn store_or_placeholder(&self, name: &str) -> (Arc<CertStore>, bool) {
        if let Some(s) = self.stores.get(name) {
            return (s.clone(), true);
        }
        let mut ph = self.placeholder_map();
        let s = ph
            .entry(name.to_string())
            .or_insert_with(|| {
                tracing::warn!(
                    secret = name,
                    "secret referenced but not supplied; TLS using it fails until it arrives (hint: check the Secret's name, namespace and keys)"
                );
                Arc::new(CertStore::empty(name))
            })
            .clone();
        (s, false)
    }

    /// Names referenced by TLS contexts but not supplied (sorted), for diagnostics.
    pub fn missing(&self) -> Vec<String> {
        self.placeholder_map()
            .iter()
            .filter(|(_, s)| s.current().is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn has_bundle(&self, name: &str) -> bool {
        self.bundles.contains_key(name)
    }

    fn bundle(&self, name: &str) -> Result<TrustBundle, String> {
        self.bundles
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret {name:?} has no trustedCa"))
    }
}

/// DNS and URI SANs of a DER certificate.
pub fn cert_sans(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
    }
    (dns, uris)
}

/// Build the termination context for a filter chain.
///
/// Unsupplied secrets do not fail the build (Envoy keeps the chain and its handshakes fail
/// until SDS delivers): a missing certificate is an empty placeholder store, a missing client
/// CA gives a context with no certificate at all. Only bad material is an error.
pub fn server_tls(
    t: &DownstreamTls,
    secrets: &SecretSet,
    default_alpn: &[&str],
) -> Result<Arc<ServerTls>, String> {
    let mut missing: Vec<&str> = Vec::new();
    let certs: Arc<dyn rustls::server::ResolvesServerCert> = if t.certificates.len() == 1 {
        let (store, ok) = secrets.store_or_placeholder(&t.certificates[0]);
        if !ok {
            missing.push(&t.certificates[0]);
        }
        store
    } else {
        // Several servers on one port: choose by SNI among their certificates' DNS SANs;
        // the first certificate answers unknown or missing SNI.
        let mut r = SniCertResolver::new();
        for (i, name) in t.certificates.iter().enumerate() {
            let (store, ok) = secrets.store_or_placeholder(name);
            if !ok {
                missing.push(name);
            }
            for dns in secrets.dns_names.get(name).into_iter().flatten() {
                r.insert(dns, store.clone());
            }
            if i == 0 {
                r.insert("*", store);
            }
        }
        Arc::new(r)
    };
    if let Some(v) = t.validation.as_deref() {
        if !secrets.has_bundle(v) {
            // No trust bundle to verify clients with: refuse every handshake on this chain
            // (an empty store offers no certificate), and only on this chain.
            tracing::warn!(
                secret = v,
                "client validation secret not supplied; handshakes on this filter chain fail until it arrives"
            );
            let none = Arc::new(CertStore::empty(v));
            return ServerTls::new(none, &ServerTlsOptions::simple())
                .map(Arc::new)
                .map_err(|e| e.to_string());
        }
    }
    if !missing.is_empty() {
        tracing::debug!(?missing, "filter chain waits for certificate secrets");
    }
    let validation = || {
        t.validation
            .as_deref()
            .ok_or_else(|| "client validation CA missing".to_string())
    };
    let mut opts = match t.mode {
        TlsMode::Simple => ServerTlsOptions::simple(),
        TlsMode::Mutual => ServerTlsOptions::mutual(secrets.bundle(validation()?)?),
        TlsMode::OptionalMutual => {
            ServerTlsOptions::optional_mutual(secrets.bundle(validation()?)?)
        }
        TlsMode::IstioMutual => {
            let tds: Vec<&str> = t.trust_domains.iter().map(String::as_str).collect();
            ServerTlsOptions::istio_mutual(secrets.bundle(validation()?)?, &tds)
        }
    };
    if !t.subject_alt_names.is_empty() {
        let sans: Vec<&str> = t.subject_alt_names.iter().map(String::as_str).collect();
        opts = opts.subject_alt_names(&sans);
    }
    let alpn: Vec<&str> = if t.alpn.is_empty() {
        default_alpn.to_vec()
    } else {
        t.alpn.iter().map(String::as_str).collect()
    };
    opts = opts.alpn(&alpn);
    ServerTls::new(certs, &opts)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Origination settings for one cluster.
#[derive(Clone)]
pub struct Origination {
    /// The client context; `None` while a trust bundle it needs is not supplied.
    pub tls: Option<Arc<Upstream>>,
    /// The client certificate store (MUTUAL / ISTIO_MUTUAL); empty while not supplied.
    pub client_cert: Option<Arc<CertStore>>,
    /// Name of an unsupplied trust bundle secret.
    pub missing_ca: Option<String>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Origination")
    }
}

impl Origination {
    /// The context to connect with, or the name of the secret it still waits for (Envoy's
    /// `NotReadySslSocket`: the connection fails with [`SECRET_NOT_SUPPLIED`]).
    pub fn ready(&self) -> Result<&Arc<Upstream>, String> {
        if let Some(ca) = &self.missing_ca {
            return Err(ca.clone());
        }
        if let Some(c) = &self.client_cert {
            if c.current().is_none() {
                return Err(c.name().to_string());
            }
        }
        self.tls.as_ref().ok_or_else(|| "tls".to_string())
    }
}

pub fn client_tls(
    t: &UpstreamTls,
    secrets: &SecretSet,
    http2: bool,
) -> Result<Origination, String> {
    use isthmus_tls::ServerTrust;
    // SIMPLE sends no certificate even when one is named, so only a used store can be missing.
    let client_cert = t
        .certificate
        .as_ref()
        .filter(|_| t.mode != TlsMode::Simple)
        .map(|c| secrets.store_or_placeholder(c).0);
    let trust = if t.insecure_skip_verify {
        ServerTrust::InsecureSkipVerify
    } else {
        match &t.validation {
            Some(v) if !secrets.has_bundle(v) => {
                tracing::warn!(
                    secret = %v,
                    "upstream validation secret not supplied; connections fail until it arrives"
                );
                return Ok(Origination {
                    tls: None,
                    client_cert,
                    missing_ca: Some(v.clone()),
                });
            }
            Some(v) => ServerTrust::Verify(secrets.bundle(v)?),
            None => ServerTrust::Verify(TrustBundle::system().map_err(|e| e.to_string())?),
        }
    };
    let sans: Vec<&str> = t.subject_alt_names.iter().map(String::as_str).collect();
    let mut o = match (t.mode, client_cert.clone()) {
        (TlsMode::IstioMutual, Some(svid)) => match trust {
            ServerTrust::Verify(b) => ClientTlsOptions::istio_mutual(svid, b, &sans),
            ServerTrust::InsecureSkipVerify => {
                ClientTlsOptions::mutual(ServerTrust::InsecureSkipVerify, svid)
            }
        },
        (TlsMode::Simple, _) | (_, None) => {
            ClientTlsOptions::simple(trust).subject_alt_names(&sans)
        }
        (_, Some(cert)) => ClientTlsOptions::mutual(trust, cert).subject_alt_names(&sans),
    };
    if let Some(sni) = &t.sni {
        o = o.sni(sni);
    }
    let alpn: Vec<String> = if !t.alpn.is_empty() {
        t.alpn.clone()
    } else if t.mode == TlsMode::IstioMutual {
        // Istio's mesh ALPN; the plain protocol last keeps strict-ALPN servers reachable.
        let mut v = vec!["istio-peer-exchange".to_string()];
        if http2 {
            v.extend(["istio-h2", "istio", "h2"].map(String::from));
        } else {
            v.extend(["istio-http/1.1", "istio", "http/1.1"].map(String::from));
        }
        v
    } else if http2 {
        vec!["h2".to_string()]
    } else {
        Vec::new()
    };
    let alpn_refs: Vec<&str> = alpn.iter().map(String::as_str).collect();
    o = o.alpn(&alpn_refs);
    let tls = Upstream::new(&o).map_err(|e| e.to_string())?;
    Ok(Origination {
        tls: Some(Arc::new(tls)),
        client_cert,
        missing_ca: None,
    })
}
