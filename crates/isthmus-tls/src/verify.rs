//! Certificate verifiers with Istio/Envoy semantics.
//!
//! * [`PeerSanPolicy`] + [`PolicyClientVerifier`]: server side — the client chain is verified by
//!   rustls' WebPKI verifier (roots, optional CRLs), then the client's SANs are checked against a
//!   trust-domain set (ISTIO_MUTUAL) and/or an exact SAN list (`subjectAltNames`).
//! * [`UpstreamServerVerifier`]: client side (TLS origination) — verify the server chain, then
//!   either the configured SAN list (independent of SNI, like Envoy's `matchSubjectAltNames`) or,
//!   when no SANs are configured, the SNI host name (Envoy's `autoSanValidation`).

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::error::TlsError;
use crate::identity::SPIFFE_PREFIX;
use crate::pem::TrustBundle;
use crate::x509::{san_list_matches, CertSummary};

/// A verification failure with a readable reason; surfaces as
/// `CertificateError::Other` so that the handshake error (and the access log) says what was wrong.
#[derive(Debug)]
pub struct PolicyViolation(pub String);

impl std::fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyViolation {}

fn violation(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        PolicyViolation(msg),
    ))))
}

/// The SANs of a peer certificate for [`PeerSanPolicy::check`] (per handshake: no subject or
/// serial formatting, see [`CertSummary::sans_from_der`]).
fn summarise(end_entity: &CertificateDer<'_>) -> Result<CertSummary, rustls::Error> {
    CertSummary::sans_from_der(end_entity.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// SAN checks applied to a peer certificate after its chain has been verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSanPolicy {
    /// If non-empty, the peer's first `spiffe://` URI SAN must belong to one of these trust
    /// domains (Istio's trust domain plus `trustDomainAliases`), i.e. start with
    /// `spiffe://<td>/`. A peer without a SPIFFE ID is rejected.
    pub trust_domains: BTreeSet<String>,
    /// If non-empty, at least one SAN of the peer must match one of these exactly
    /// (DNS with wildcard-certificate support, URI, IP) — Envoy's `matchSubjectAltNames`.
    pub subject_alt_names: Vec<String>,
}

impl PeerSanPolicy {
    /// Checks a verified peer certificate; the error text explains the rejection.
    pub fn check(&self, summary: &CertSummary) -> Result<(), String> {
        if !self.trust_domains.is_empty() {
            let Some(id) = summary.spiffe_id() else {
                return Err("peer certificate has no spiffe:// URI SAN".to_string());
            };
            // `spiffe://<td>/...` without building the prefix string per handshake.
            let rest = id.strip_prefix(SPIFFE_PREFIX).unwrap_or_default();
            let ok = self.trust_domains.iter().any(|td| {
                rest.strip_prefix(td.as_str())
                    .is_some_and(|after| after.starts_with('/'))
            });
            if !ok {
                let tds: Vec<&str> = self.trust_domains.iter().map(String::as_str).collect();
                return Err(format!(
                    "peer identity {id} is not in trust domain(s) {}",
                    tds.join(", ")
                ));
            }
        }
        if !self.subject_alt_names.is_empty()
            && !self
                .subject_alt_names
                .iter()
                .any(|w| san_list_matches(summary, w))
        {
            let have: Vec<&str> = summary.sans.iter().map(|s| s.value.as_str()).collect();
            return Err(format!(
                "peer certificate SANs [{}] match none of [{}]",
                have.join(", "),
                self.subject_alt_names.join(", ")
            ));
        }
        Ok(())
    }
}

/// Server-side client-certificate verifier: WebPKI chain verification against a
/// [`TrustBundle`] (with its CRLs), then a [`PeerSanPolicy`].
#[derive(Debug)]
pub struct PolicyClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: PeerSanPolicy,
}

impl PolicyClientVerifier {
    /// Builds the verifier. `mandatory = false` gives OPTIONAL_MUTUAL: a client may send no
    /// certificate, but one that is sent must verify.
    pub fn new(
        bundle: &TrustBundle,
        policy: PeerSanPolicy,
        mandatory: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider);
        if !bundle.crls().is_empty() {
            builder = builder.with_crls(bundle.crls().iter().cloned());
        }
        if !mandatory {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder.build().map_err(|e| TlsError::Verifier {
            what: bundle.source().to_string(),
            reason: e.to_string(),
        })?;
        Ok(PolicyClientVerifier { inner, policy })
    }
}

impl ClientCertVerifier for PolicyClientVerifier {
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
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let summary = summarise(end_entity)?;
        self.policy.check(&summary).map_err(|msg| {
            tracing::debug!(reason = %msg, "client certificate rejected by SAN policy");
            violation(msg)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How the upstream server's chain is trusted.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Verify the chain against this bundle (DR `caCertificates`, the system bundle, the mesh
    /// root, or a `-cacert` secret). CRLs in the bundle (DR `caCrl`, a secret's `ca.crl`) are
    /// enforced for every certificate of the chain.
    Verify(TrustBundle),
    /// DR `insecureSkipVerify: true`: accept any certificate (handshake signatures are still
    /// checked, so the server must hold the key of the certificate it sends).
    InsecureSkipVerify,
}

/// Client-side verifier for TLS origination (see the module docs).
#[derive(Debug)]
pub struct UpstreamServerVerifier {
    trust: ServerTrust,
    /// Set when the bundle carries CRLs (DR `caCrl`): rustls' WebPKI verifier does chain +
    /// revocation checking; its host-name verdict is ignored in favour of our SAN logic.
    with_crls: Option<Arc<WebPkiServerVerifier>>,
    policy: PeerSanPolicy,
    auto_san_validation: bool,
    provider: Arc<CryptoProvider>,
}

impl UpstreamServerVerifier {
    /// `policy.subject_alt_names` empty and `auto_san_validation` true means: verify the
    /// certificate against the SNI host name. With SANs configured, the SNI is not consulted.
    pub fn new(
        trust: ServerTrust,
        policy: PeerSanPolicy,
        auto_san_validation: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let with_crls = match &trust {
            ServerTrust::Verify(bundle) if !bundle.crls().is_empty() => Some(
                WebPkiServerVerifier::builder_with_provider(
                    bundle.roots().clone(),
                    provider.clone(),
                )
                .with_crls(bundle.crls().iter().cloned())
                .build()
                .map_err(|e| TlsError::Verifier {
                    what: bundle.source().to_string(),
                    reason: e.to_string(),
                })?,
            ),
            _ => None,
        };
        Ok(UpstreamServerVerifier {
            trust,
            with_crls,
            policy,
            auto_san_validation,
            provider,
        })
    }
}

impl ServerCertVerifier for UpstreamServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = match &self.trust {
            ServerTrust::InsecureSkipVerify => return Ok(ServerCertVerified::assertion()),
            ServerTrust::Verify(b) => b,
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        match &self.with_crls {
            Some(webpki) => {
                // WebPKI checks chain, then revocation, then the name; a name mismatch
                // therefore means chain and revocation passed. Names are our business below.
                match webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Ok(_) => {}
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => {}
                    Err(e) => return Err(e),
                }
            }
            None => verify_server_cert_signed_by_trust_anchor(
                &parsed,
                bundle.roots(),
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?,
        }
        let has_policy =
            !self.policy.subject_alt_names.is_empty() || !self.policy.trust_domains.is_empty();
        if has_policy {
            let summary = summarise(end_entity)?;
            self.policy.check(&summary).map_err(|msg| {
                tracing::debug!(reason = %msg, "server certificate rejected by SAN policy");
                violation(msg)
            })?;
        } else if self.auto_san_validation {
            if let ServerName::DnsName(_) = server_name {
                verify_server_name(&parsed, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
