//! rustls configuration for termination (per filter chain) and origination (per cluster).
//!
//! Built once per config version so a bad certificate refuses the whole config instead of
//! failing connections later. Uses the ring provider explicitly so no process-wide default
//! provider has to be installed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::config::{DownstreamTls, Secret, TlsMode, UpstreamTls};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loaded secrets by SDS name.
#[derive(Clone, Default)]
pub struct SecretSet {
    certs: BTreeMap<String, Arc<CertifiedKey>>,
    chains: BTreeMap<String, Vec<CertificateDer<'static>>>,
    roots: BTreeMap<String, Arc<RootCertStore>>,
}

impl SecretSet {
    pub fn load(secrets: &[Secret], problems: &mut Vec<String>) -> Self {
        let prov = provider();
        let mut set = SecretSet::default();
        for s in secrets {
            if let (Some(c), Some(k)) = (&s.certificate_chain, &s.private_key) {
                let res =
                    (|| -> Result<(Vec<CertificateDer<'static>>, Arc<CertifiedKey>), String> {
                        let cpem = c.load()?;
                        let kpem = k.load()?;
                        let chain: Vec<CertificateDer<'static>> =
                            CertificateDer::pem_slice_iter(&cpem)
                                .collect::<Result<_, _>>()
                                .map_err(|e| format!("bad certificate PEM: {e}"))?;
                        if chain.is_empty() {
                            return Err("certificate chain PEM holds no certificate".into());
                        }
                        let key = PrivateKeyDer::from_pem_slice(&kpem)
                            .map_err(|e| format!("bad private key PEM: {e}"))?;
                        let ck =
                            CertifiedKey::from_der(chain.clone(), key, &prov).map_err(|e| {
                                format!("key does not match certificate or is unsupported: {e}")
                            })?;
                        Ok((chain, Arc::new(ck)))
                    })();
                match res {
                    Ok((chain, ck)) => {
                        set.chains.insert(s.name.clone(), chain);
                        set.certs.insert(s.name.clone(), ck);
                    }
                    Err(e) => problems.push(format!("secret {:?}: {e}", s.name)),
                }
            }
            if let Some(ca) = &s.trusted_ca {
                match ca.load().and_then(|pem| {
                    let mut store = RootCertStore::empty();
                    for c in CertificateDer::pem_slice_iter(&pem) {
                        let c = c.map_err(|e| format!("bad CA PEM: {e}"))?;
                        store
                            .add(c)
                            .map_err(|e| format!("bad CA certificate: {e}"))?;
                    }
                    if store.is_empty() {
                        return Err("trustedCa holds no certificate".into());
                    }
                    Ok(store)
                }) {
                    Ok(store) => {
                        set.roots.insert(s.name.clone(), Arc::new(store));
                    }
                    Err(e) => problems.push(format!("secret {:?}: {e}", s.name)),
                }
            }
            if s.certificate_chain.is_some() != s.private_key.is_some() {
                problems.push(format!(
                    "secret {:?}: certificateChain and privateKey go together",
                    s.name
                ));
            }
        }
        set
    }

    fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.get(name).cloned()
    }
    fn roots(&self, name: &str) -> Option<Arc<RootCertStore>> {
        self.roots.get(name).cloned()
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

/// The SPIFFE identity (first `spiffe://` URI SAN) of a peer certificate.
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    cert_sans(der)
        .1
        .into_iter()
        .find(|u| u.starts_with("spiffe://"))
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let n = name.to_ascii_lowercase();
    if let Some(suffix) = p.strip_prefix("*.") {
        n.len() > suffix.len() + 1
            && n.ends_with(suffix)
            && n.as_bytes()[n.len() - suffix.len() - 1] == b'.'
            && !n[..n.len() - suffix.len() - 1].contains('.')
    } else {
        p == n
    }
}

fn san_allowed(der: &[u8], allowed: &[String]) -> bool {
    let (dns, uris) = cert_sans(der);
    allowed.iter().any(|a| {
        uris.iter().any(|u| u == a)
            || dns
                .iter()
                .any(|d| d.eq_ignore_ascii_case(a) || dns_matches(d, a))
    })
}

/// Picks the certificate whose SANs match the SNI; falls back to the first one.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            for (names, ck) in &self.certs {
                if names.iter().any(|n| dns_matches(n, sni)) {
                    return Some(ck.clone());
                }
            }
        }
        self.certs.first().map(|c| c.1.clone())
    }
}

/// Client verifier that adds a SAN allow-list on top of chain verification.
#[derive(Debug)]
struct SanClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<String>,
}

impl ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end: &CertificateDer<'_>,
        im: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end, im, now)?;
        if !self.sans.is_empty() && !san_allowed(end, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Build the server config for a terminating filter chain.
pub fn server_config(
    t: &DownstreamTls,
    secrets: &SecretSet,
    default_alpn: &[&str],
) -> Result<Arc<ServerConfig>, String> {
    let mut certs = Vec::new();
    for name in &t.certificates {
        let ck = secrets
            .cert(name)
            .ok_or_else(|| format!("certificate secret {name:?} not loaded"))?;
        let names = secrets
            .chains
            .get(name)
            .and_then(|c| c.first())
            .map(|c| cert_sans(c).0)
            .unwrap_or_default();
        certs.push((names, ck));
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match t.mode {
        TlsMode::Simple => builder.with_no_client_auth(),
        TlsMode::Mutual | TlsMode::IstioMutual | TlsMode::OptionalMutual => {
            let v = t
                .validation
                .as_deref()
                .ok_or("client validation CA missing")?;
            let roots = secrets
                .roots(v)
                .ok_or_else(|| format!("validation secret {v:?} has no trustedCa"))?;
            let mut vb = WebPkiClientVerifier::builder_with_provider(roots, provider());
            if t.mode == TlsMode::OptionalMutual {
                vb = vb.allow_unauthenticated();
            }
            let inner = vb.build().map_err(|e| format!("client verifier: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(SanClientVerifier {
                inner,
                sans: t.subject_alt_names.clone(),
            }))
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.alpn_protocols = if t.alpn.is_empty() {
        let mut v: Vec<Vec<u8>> = default_alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        if t.mode == TlsMode::IstioMutual && !v.is_empty() {
            // Accept Istio clients' ALPN names too (rustls refuses a handshake with no overlap).
            for a in ["istio-peer-exchange", "istio-h2", "istio-http/1.1", "istio"] {
                v.push(a.as_bytes().to_vec());
            }
        }
        v
    } else {
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    Ok(Arc::new(cfg))
}

/// Server verifier: chain via webpki, then either the normal name check (SIMPLE without SANs)
/// or the SAN allow-list (ISTIO_MUTUAL / explicit subjectAltNames), as Envoy's
/// `matchSubjectAltNames` replaces the hostname check.
#[derive(Debug)]
struct UpstreamVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    sans: Vec<String>,
    skip_name: bool,
    schemes: Vec<SignatureScheme>,
    prov: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        im: &[CertificateDer<'_>],
        sn: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion()); // insecureSkipVerify
        };
        match inner.verify_server_cert(end, im, sn, ocsp, now) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) if self.skip_name || !self.sans.is_empty() => {}
            Err(e) => return Err(e),
        }
        if !self.sans.is_empty() && !san_allowed(end, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.prov.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.prov.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Origination settings for one cluster.
#[derive(Clone)]
pub struct Origination {
    pub config: Arc<ClientConfig>,
    pub sni: Option<String>,
}

impl fmt::Debug for Origination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origination(sni={:?})", self.sni)
    }
}

pub fn client_config(
    t: &UpstreamTls,
    secrets: &SecretSet,
    http2: bool,
) -> Result<Origination, String> {
    let prov = provider();
    let roots = match &t.validation {
        Some(v) => secrets
            .roots(v)
            .ok_or_else(|| format!("validation secret {v:?} has no trustedCa"))?,
        None => Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let inner = if t.insecure_skip_verify {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, prov.clone())
                .build()
                .map_err(|e| format!("server verifier: {e}"))?,
        )
    };
    let verifier = UpstreamVerifier {
        inner,
        sans: t.subject_alt_names.clone(),
        skip_name: t.mode == TlsMode::IstioMutual,
        schemes: prov.signature_verification_algorithms.supported_schemes(),
        prov: prov.clone(),
    };
    let b = ClientConfig::builder_with_provider(prov)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match (&t.mode, &t.certificate) {
        (TlsMode::Simple, _) | (_, None) => b.with_no_client_auth(),
        (_, Some(c)) => {
            let ck = secrets
                .cert(c)
                .ok_or_else(|| format!("client certificate secret {c:?} not loaded"))?;
            b.with_client_cert_resolver(Arc::new(FixedClientCert(ck)))
        }
    };
    cfg.alpn_protocols = if !t.alpn.is_empty() {
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    } else if t.mode == TlsMode::IstioMutual {
        // Istio offers istio-peer-exchange plus its istio-* names; the plain protocol last
        // keeps strict ALPN servers (rustls fails a handshake with no overlap) reachable.
        let mut v: Vec<Vec<u8>> = vec![b"istio-peer-exchange".to_vec()];
        if http2 {
            v.extend([b"istio-h2".to_vec(), b"istio".to_vec(), b"h2".to_vec()]);
        } else {
            v.extend([
                b"istio-http/1.1".to_vec(),
                b"istio".to_vec(),
                b"http/1.1".to_vec(),
            ]);
        }
        v
    } else if http2 {
        vec![b"h2".to_vec()]
    } else {
        Vec::new()
    };
    Ok(Origination {
        config: Arc::new(cfg),
        sni: t.sni.clone(),
    })
}

/// ServerName for the handshake: the configured SNI, else the endpoint IP (no SNI sent).
pub fn server_name(o: &Origination, ip: std::net::IpAddr) -> ServerName<'static> {
    if let Some(s) = &o.sni {
        if let Ok(n) = ServerName::try_from(s.clone()) {
            return n;
        }
    }
    ServerName::IpAddress(ip.into())
}
