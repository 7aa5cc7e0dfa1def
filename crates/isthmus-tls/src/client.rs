//! TLS origination: client configs for DestinationRule `tls.mode` SIMPLE, MUTUAL and
//! ISTIO_MUTUAL (DISABLE means "no TLS" and is the caller's business).

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::TlsError;
use crate::pem::TrustBundle;
use crate::store::CertStore;
use crate::verify::{PeerSanPolicy, ServerTrust, UpstreamServerVerifier};
use crate::version::{protocol_versions, TlsVersion};

/// Settings for an originating TLS context (one per cluster).
#[derive(Debug, Clone)]
pub struct ClientTlsOptions {
    /// How the server chain is trusted.
    pub trust: ServerTrust,
    /// Client certificate to present (MUTUAL: `clientCertificate`/`credentialName`;
    /// ISTIO_MUTUAL: the workload SVID, SDS `default`).
    pub client_cert: Option<Arc<CertStore>>,
    /// SNI to send (DR `tls.sni`). When `None`, [`UpstreamTls::server_name`] uses the caller's
    /// fallback (e.g. the request host for Envoy's autoSni), or sends no SNI.
    pub sni: Option<String>,
    /// DR `subjectAltNames`: exact matches against the server certificate's SANs, checked after
    /// the chain and independent of the SNI.
    pub subject_alt_names: Vec<String>,
    /// With no `subject_alt_names`, verify the certificate against the SNI host name (Envoy's
    /// `autoSanValidation`). True for SIMPLE/MUTUAL, false for ISTIO_MUTUAL (mesh peers are
    /// identified by SPIFFE SAN, not host name).
    pub auto_san_validation: bool,
    /// ALPN protocols to offer.
    pub alpn: Vec<String>,
    /// Minimum protocol version (`None` = TLSv1_2).
    pub min_version: Option<TlsVersion>,
    /// Maximum protocol version (`None` = TLSv1_3).
    pub max_version: Option<TlsVersion>,
    /// Allow TLS session resumption (default off): a resumed session would keep the peer and
    /// client certificates of the original handshake across a rotation.
    pub session_resumption: bool,
}

impl ClientTlsOptions {
    fn base(trust: ServerTrust, client_cert: Option<Arc<CertStore>>) -> Self {
        ClientTlsOptions {
            trust,
            client_cert,
            sni: None,
            subject_alt_names: Vec::new(),
            auto_san_validation: true,
            alpn: Vec::new(),
            min_version: None,
            max_version: None,
            session_resumption: false,
        }
    }

    /// SIMPLE: verify the server (or skip verification), no client certificate.
    pub fn simple(trust: ServerTrust) -> Self {
        Self::base(trust, None)
    }

    /// MUTUAL: like SIMPLE plus a client certificate.
    pub fn mutual(trust: ServerTrust, client_cert: Arc<CertStore>) -> Self {
        Self::base(trust, Some(client_cert))
    }

    /// ISTIO_MUTUAL: present the workload SVID, verify the peer against the mesh root and the
    /// SPIFFE SAN list from the cluster config (`spiffe://td/ns/NS/sa/SA`, ...); the SNI
    /// (`outbound_.PORT_.SUBSET_.FQDN`) is sent but never used for verification. An empty SAN
    /// list accepts any certificate chained to the mesh root, as Envoy does.
    pub fn istio_mutual(
        svid: Arc<CertStore>,
        mesh_roots: TrustBundle,
        spiffe_sans: &[&str],
    ) -> Self {
        let mut o = Self::base(ServerTrust::Verify(mesh_roots), Some(svid));
        o.subject_alt_names = spiffe_sans.iter().map(|s| s.to_string()).collect();
        o.auto_san_validation = false;
        o
    }

    /// Sets the SNI.
    pub fn sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.to_string());
        self
    }

    /// Sets the SAN list.
    pub fn subject_alt_names(mut self, sans: &[&str]) -> Self {
        self.subject_alt_names = sans.iter().map(|s| s.to_string()).collect();
        self
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
}

/// An originating TLS context: a rustls client config plus the configured SNI.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
}

/// Parses an SNI / host name into a rustls server name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.trim_end_matches('.').to_string()).map_err(|e| TlsError::ServerName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

impl UpstreamTls {
    /// Builds the context.
    pub fn new(options: &ClientTlsOptions) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let versions = protocol_versions(options.min_version, options.max_version)?;
        let verifier = UpstreamServerVerifier::new(
            options.trust.clone(),
            PeerSanPolicy {
                trust_domains: Default::default(),
                subject_alt_names: options.subject_alt_names.clone(),
            },
            options.auto_san_validation,
            provider.clone(),
        )?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &options.client_cert {
            Some(store) => {
                let resolver: Arc<dyn ResolvesClientCert> = store.clone();
                builder.with_client_cert_resolver(resolver)
            }
            None => builder.with_no_client_auth(),
        };
        if !options.session_resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let sni = options.sni.as_deref().map(server_name).transpose()?;
        Ok(UpstreamTls {
            config: Arc::new(config),
            sni,
        })
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name to hand to rustls: the configured SNI, else `fallback` (e.g. the original
    /// request host, Envoy's autoSni), else an IP placeholder — rustls sends no SNI for IP names
    /// and the verifier then checks the chain (and any SAN list) only.
    pub fn server_name(&self, fallback: Option<&str>) -> Result<ServerName<'static>, TlsError> {
        if let Some(sni) = &self.sni {
            return Ok(sni.clone());
        }
        match fallback {
            Some(name) => server_name(name),
            None => Ok(ServerName::IpAddress(
                std::net::IpAddr::from([0u8, 0, 0, 0]).into(),
            )),
        }
    }

    /// Runs the client handshake over `io`. On error, [`crate::failure_reason_io`] gives the
    /// `UF` reason for the access log.
    pub async fn connect<IO>(
        &self,
        io: IO,
        fallback_sni: Option<&str>,
    ) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self
            .server_name(fallback_sni)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
    }
}
