//! TLS for the proxy, built on `isthmus-tls`: termination per filter chain ([`ServerTls`]:
//! SIMPLE / MUTUAL / OPTIONAL_MUTUAL / ISTIO_MUTUAL, Envoy's lenient ALPN, certificate by SNI)
//! and origination per cluster ([`UpstreamTls`]).
//!
//! Certificates live in hot-swappable [`CertStore`]s keyed by SDS name and kept across config
//! versions: a config that only rotates a certificate swaps it in place, so new handshakes use
//! the new certificate while open connections keep theirs (and `maxConnectionDuration` bounds
//! how long the old one lives). Everything is built before a config is applied, so bad
//! material refuses the whole config.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_tls::{
    CertStore, ClientTlsOptions, ServerTls, ServerTlsOptions, SniCertResolver, TrustBundle,
    UpstreamTls as Upstream,
};
use rustls::sign::CertifiedKey;

use crate::config::{DownstreamTls, Secret, TlsMode, UpstreamTls};

/// Loaded secrets by SDS name; rotations are staged until [`SecretSet::commit`].
#[derive(Clone, Default)]
pub struct SecretSet {
    stores: BTreeMap<String, Arc<CertStore>>,
    dns_names: BTreeMap<String, Vec<String>>,
    bundles: BTreeMap<String, TrustBundle>,
    staged: Vec<(Arc<CertStore>, Arc<CertifiedKey>)>,
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
                            let store = match prev.and_then(|p| p.stores.get(&s.name)) {
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
        set
    }

    /// Apply staged rotations (call only once the whole config was accepted).
    pub fn commit(&mut self) {
        for (store, key) in self.staged.drain(..) {
            tracing::info!(secret = store.name(), "certificate rotated in place");
            store.swap(key);
        }
    }

    pub fn store(&self, name: &str) -> Option<Arc<CertStore>> {
        self.stores.get(name).cloned()
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
pub fn server_tls(
    t: &DownstreamTls,
    secrets: &SecretSet,
    default_alpn: &[&str],
) -> Result<Arc<ServerTls>, String> {
    let certs: Arc<dyn rustls::server::ResolvesServerCert> = if t.certificates.len() == 1 {
        let name = &t.certificates[0];
        secrets
            .store(name)
            .ok_or_else(|| format!("certificate secret {name:?} not loaded"))?
    } else {
        // Several servers on one port: choose by SNI among their certificates' DNS SANs;
        // the first certificate answers unknown or missing SNI.
        let mut r = SniCertResolver::new();
        for (i, name) in t.certificates.iter().enumerate() {
            let store = secrets
                .store(name)
                .ok_or_else(|| format!("certificate secret {name:?} not loaded"))?;
            for dns in secrets.dns_names.get(name).into_iter().flatten() {
                r.insert(dns, store.clone());
            }
            if i == 0 {
                r.insert("*", store);
            }
        }
        Arc::new(r)
    };
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
    pub tls: Arc<Upstream>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Origination")
    }
}

pub fn client_tls(
    t: &UpstreamTls,
    secrets: &SecretSet,
    http2: bool,
) -> Result<Origination, String> {
    use isthmus_tls::ServerTrust;
    let trust = if t.insecure_skip_verify {
        ServerTrust::InsecureSkipVerify
    } else {
        match &t.validation {
            Some(v) => ServerTrust::Verify(secrets.bundle(v)?),
            None => ServerTrust::Verify(TrustBundle::system().map_err(|e| e.to_string())?),
        }
    };
    let client_cert = match &t.certificate {
        Some(c) => Some(
            secrets
                .store(c)
                .ok_or_else(|| format!("client certificate secret {c:?} not loaded"))?,
        ),
        None => None,
    };
    let sans: Vec<&str> = t.subject_alt_names.iter().map(String::as_str).collect();
    let mut o = match (t.mode, client_cert) {
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
    Ok(Origination { tls: Arc::new(tls) })
}
