//! TLS termination: server configs for Istio's server TLS modes.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::error::TlsError;
use crate::pem::TrustBundle;
use crate::verify::{PeerSanPolicy, PolicyClientVerifier};
use crate::version::{protocol_versions, TlsVersion};

/// Client authentication of a terminating server (Gateway `tls.mode`).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// SIMPLE: no client certificate requested.
    None,
    /// MUTUAL: a client certificate is required and verified against the bundle (and its CRLs).
    Required(TrustBundle),
    /// OPTIONAL_MUTUAL: a client certificate is requested and verified if sent.
    Optional(TrustBundle),
    /// ISTIO_MUTUAL: a client certificate chained to the mesh root is required, and its first
    /// `spiffe://` URI SAN must be in one of `trust_domains` (the mesh trust domain and its
    /// aliases; empty = any SPIFFE ID).
    IstioMutual {
        /// The mesh root(s) (SDS `ROOTCA`).
        mesh_roots: TrustBundle,
        /// Accepted trust domains.
        trust_domains: Vec<String>,
    },
}

/// Everything needed to build a terminating TLS context besides the certificate.
#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    /// Client authentication mode.
    pub client_auth: ClientAuth,
    /// Extra exact SAN matches required of the client certificate (Gateway `subjectAltNames`);
    /// ignored with [`ClientAuth::None`].
    pub subject_alt_names: Vec<String>,
    /// ALPN protocols in preference order, e.g. `["h2", "http/1.1"]`.
    pub alpn: Vec<String>,
    /// Minimum protocol version (`None` = TLSv1_2).
    pub min_version: Option<TlsVersion>,
    /// Maximum protocol version (`None` = TLSv1_3).
    pub max_version: Option<TlsVersion>,
    /// Allow TLS session resumption (default off) with stateless TLS 1.3 session tickets, as
    /// Envoy does by default (BoringSSL: 2 tickets per full handshake, keys per context). A
    /// resumed session skips certificate exchange, so tickets are bound to the certificates in
    /// force when they were issued: any certificate rotation ([`crate::CertStore::swap`]) or a
    /// rebuilt context (changed CA bundle) makes older tickets fail to decrypt and the client
    /// falls back to a full handshake, like Envoy's new SSL context after an SDS update.
    pub session_resumption: bool,
}

impl ServerTlsOptions {
    fn with_auth(client_auth: ClientAuth) -> Self {
        ServerTlsOptions {
            client_auth,
            subject_alt_names: Vec::new(),
            alpn: Vec::new(),
            min_version: None,
            max_version: None,
            session_resumption: false,
        }
    }

    /// SIMPLE.
    pub fn simple() -> Self {
        Self::with_auth(ClientAuth::None)
    }

    /// MUTUAL with the given client CA bundle.
    pub fn mutual(client_ca: TrustBundle) -> Self {
        Self::with_auth(ClientAuth::Required(client_ca))
    }

    /// OPTIONAL_MUTUAL with the given client CA bundle.
    pub fn optional_mutual(client_ca: TrustBundle) -> Self {
        Self::with_auth(ClientAuth::Optional(client_ca))
    }

    /// ISTIO_MUTUAL with the mesh root and accepted trust domains.
    pub fn istio_mutual(mesh_roots: TrustBundle, trust_domains: &[&str]) -> Self {
        Self::with_auth(ClientAuth::IstioMutual {
            mesh_roots,
            trust_domains: trust_domains.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Sets the ALPN list.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets min/max protocol versions.
    pub fn versions(mut self, min: Option<TlsVersion>, max: Option<TlsVersion>) -> Self {
        self.min_version = min;
        self.max_version = max;
        self
    }

    /// Sets the required client SANs.
    pub fn subject_alt_names(mut self, sans: &[&str]) -> Self {
        self.subject_alt_names = sans.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Turns stateless session resumption (TLS 1.3 tickets) on or off; see
    /// [`ServerTlsOptions::session_resumption`].
    pub fn session_resumption(mut self, on: bool) -> Self {
        self.session_resumption = on;
        self
    }
}

/// Session tickets that die with a certificate rotation: each ticket is prefixed with the
/// process-wide rotation generation ([`crate::store::rotation_generation`]) at issue time and
/// refused once it moved on. Rotations are rare (hours), so invalidating every context's tickets
/// on any rotation costs a few full handshakes and keeps the rule simple: a resumed connection
/// never outlives the certificate it was authenticated with.
#[derive(Debug)]
struct RotationBoundTickets {
    inner: Arc<dyn rustls::server::ProducesTickets>,
}

impl rustls::server::ProducesTickets for RotationBoundTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let sealed = self.inner.encrypt(plain)?;
        let mut out = Vec::with_capacity(8 + sealed.len());
        out.extend_from_slice(&crate::store::rotation_generation().to_be_bytes());
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (generation, sealed) = cipher.split_at_checked(8)?;
        let generation = u64::from_be_bytes(generation.try_into().ok()?);
        if generation != crate::store::rotation_generation() {
            tracing::debug!("session ticket from before a certificate rotation; full handshake");
            return None;
        }
        self.inner.decrypt(sealed)
    }
}

/// A terminating TLS context: certificate source + mode, ready to accept connections.
///
/// ALPN is negotiated the BoringSSL/Envoy way: when the client offers ALPN protocols but none is
/// in our list, the handshake continues without ALPN (rustls alone would abort with
/// `no_application_protocol`, which would break mesh clients that offer only `istio`). This is
/// why [`ServerTls::accept`] reads the ClientHello first and then picks one of two configs.
#[derive(Clone, Debug)]
pub struct ServerTls {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
}

impl ServerTls {
    /// Builds the context. `certs` is usually an `Arc<CertStore>` (one certificate, hot-swappable)
    /// or an `Arc<SniCertResolver>` (certificate chosen by SNI).
    pub fn new(
        certs: Arc<dyn ResolvesServerCert>,
        options: &ServerTlsOptions,
    ) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let versions = protocol_versions(options.min_version, options.max_version)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let sans = options.subject_alt_names.clone();
        let mut config = match &options.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required(bundle) | ClientAuth::Optional(bundle) => {
                let mandatory = matches!(options.client_auth, ClientAuth::Required(_));
                let policy = PeerSanPolicy {
                    trust_domains: BTreeSet::new(),
                    subject_alt_names: sans,
                };
                let verifier = if policy == PeerSanPolicy::default() {
                    let mut b = WebPkiClientVerifier::builder_with_provider(
                        bundle.roots().clone(),
                        provider.clone(),
                    );
                    if !bundle.crls().is_empty() {
                        b = b.with_crls(bundle.crls().iter().cloned());
                    }
                    if !mandatory {
                        b = b.allow_unauthenticated();
                    }
                    b.build().map_err(|e| TlsError::Verifier {
                        what: bundle.source().to_string(),
                        reason: e.to_string(),
                    })?
                } else {
                    Arc::new(PolicyClientVerifier::new(
                        bundle,
                        policy,
                        mandatory,
                        provider.clone(),
                    )?)
                };
                builder.with_client_cert_verifier(verifier)
            }
            ClientAuth::IstioMutual {
                mesh_roots,
                trust_domains,
            } => {
                let policy = PeerSanPolicy {
                    trust_domains: trust_domains.iter().cloned().collect(),
                    subject_alt_names: sans,
                };
                let verifier =
                    PolicyClientVerifier::new(mesh_roots, policy, true, provider.clone())?;
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        }
        .with_cert_resolver(certs);
        // The server's cipher order wins (BoringSSL/Envoy behaviour; see `envoy_order`).
        config.ignore_client_order = true;
        // Stateless resumption only (no server-side session cache to grow or to share).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        if options.session_resumption {
            // One ticket key set per context, shared by both ALPN variants (they are the same
            // context to a client); rotated by the provider's ticketer (6 h lifetime).
            let inner = crate::ticketer().map_err(|e| TlsError::Verifier {
                what: "session ticket keys".to_string(),
                reason: e.to_string(),
            })?;
            config.ticketer = Arc::new(RotationBoundTickets { inner });
            config.send_tls13_tickets = 2;
        } else {
            config.send_tls13_tickets = 0;
        }
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ServerTls {
            with_alpn: Arc::new(config),
            without_alpn,
        })
    }

    /// The config with our ALPN list (strict rustls semantics).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.with_alpn.clone()
    }

    /// The config to use for this ClientHello: ours, or one without ALPN when the client's
    /// offer and our list do not overlap (see the type docs).
    pub fn config_for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        match hello.alpn() {
            Some(offered) => self.config_for_alpn(Some(offered)),
            None => self.config_for_alpn(None::<std::iter::Empty<&[u8]>>),
        }
    }

    /// Like [`ServerTls::config_for_hello`] for callers that parsed the ClientHello themselves
    /// (e.g. a proxy's own peek): `offered` is the client's ALPN list, `None` if it sent none.
    pub fn config_for_alpn<'a>(
        &self,
        offered: Option<impl IntoIterator<Item = &'a [u8]>>,
    ) -> Arc<ServerConfig> {
        let ours = &self.with_alpn.alpn_protocols;
        match offered {
            Some(offered) if !ours.is_empty() => {
                let mut offered = offered.into_iter();
                if offered.any(|p| ours.iter().any(|o| o.as_slice() == p)) {
                    self.with_alpn.clone()
                } else {
                    self.without_alpn.clone()
                }
            }
            _ => self.with_alpn.clone(),
        }
    }

    /// Runs the server handshake on `io` (which must still contain the ClientHello; a prior
    /// `MSG_PEEK` is fine). Wrap it in a timeout. On error, [`crate::failure_reason_io`]
    /// turns the error into an access-log reason.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let config = self.config_for_hello(&start.client_hello());
        start.into_stream(config).await
    }
}
