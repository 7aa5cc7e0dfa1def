//! rustls building blocks for the isthmus proxy.
//!
//! * **Termination** ([`ServerTls`], [`ServerTlsOptions`]): Istio's server modes SIMPLE, MUTUAL,
//!   OPTIONAL_MUTUAL and ISTIO_MUTUAL (client chained to the mesh root, SPIFFE ID in the trust
//!   domain), ALPN with Envoy's lenient no-overlap behaviour, min/max versions, and certificate
//!   selection by SNI ([`SniCertResolver`], [`SniMap`]).
//! * **Origination** ([`UpstreamTls`], [`ClientTlsOptions`]): SIMPLE (CA file, system bundle or
//!   `insecureSkipVerify`), MUTUAL, ISTIO_MUTUAL; SNI; Envoy's `subjectAltNames` matching and
//!   `autoSanValidation`.
//! * **Rotation** ([`CertStore`]): certificates are looked up per handshake, so swapping a store
//!   changes new handshakes only and open connections keep theirs.
//! * **Peers and failures**: [`peer_spiffe_id`], [`SessionInfo`] and [`failure_reason`] /
//!   [`failure_reason_io`] for the access log's `UF` reason.
//! * **Identities** ([`Identity`]): Istio's exact SPIFFE ID rules.
//!
//! Everything uses one crypto provider explicitly ([`provider`]: aws-lc-rs, or *ring* with the
//! `ring` feature); nothing depends on a process-wide default provider being installed, and
//! other crates build their rustls configs from [`provider`] too.
//!
//! # Example: ISTIO_MUTUAL between two workloads
//!
//! ```
//! use std::sync::Arc;
//! use isthmus_tls::{CertStore, ClientTlsOptions, ServerTls, ServerTlsOptions, TrustBundle, UpstreamTls};
//!
//! # fn demo(svid_chain: &[u8], svid_key: &[u8], root_pem: &[u8]) -> Result<(), isthmus_tls::TlsError> {
//! // The workload certificate (SDS `default`), swappable on rotation.
//! let svid = Arc::new(CertStore::from_pem("default", svid_chain, svid_key)?);
//! // The mesh root (SDS `ROOTCA`).
//! let root = TrustBundle::from_pem(root_pem, "ROOTCA")?;
//!
//! // Inbound: require a client certificate from the mesh, in trust domain cluster.local.
//! let server = ServerTls::new(
//!     svid.clone(),
//!     &ServerTlsOptions::istio_mutual(root.clone(), &["cluster.local"]).alpn(&["h2", "http/1.1"]),
//! )?;
//!
//! // Outbound: present our SVID, accept only the destination's service account.
//! let client = UpstreamTls::new(
//!     &ClientTlsOptions::istio_mutual(svid, root, &["spiffe://cluster.local/ns/prod/sa/api"])
//!         .sni("outbound_.8080_._.api.prod.svc.cluster.local")
//!         .alpn(&["istio-peer-exchange", "istio"]),
//! )?;
//! // let tls = client.connect(tcp_stream, None).await?;          // upstream
//! // let tls = server.accept(accepted_stream).await?;             // downstream
//! // let who = isthmus_tls::peer_spiffe_id(tls.get_ref().1);      // "spiffe://..."
//! # let _ = (server, client); Ok(()) }
//! ```

#![warn(missing_docs)]

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

mod client;
mod error;
mod identity;
mod peer;
mod pem;
mod server;
mod sni;
mod store;
mod verify;
mod version;
mod x509;

pub use client::{server_name, ClientTlsOptions, UpstreamTls};
pub use error::{failure_reason, failure_reason_io, rustls_error, TlsError};
pub use identity::{
    spiffe_trust_domain, Identity, IdentityError, DEFAULT_TRUST_DOMAIN, SPIFFE_PREFIX,
};
pub use peer::{peer_certificate, peer_identity, peer_spiffe_id, peer_subject, SessionInfo};
pub use pem::{
    certified_key_from_der, certified_key_from_pem, parse_certs, parse_crls, parse_private_key,
    TrustBundle, SYSTEM_CA_BUNDLE,
};
pub use server::{ClientAuth, ServerTls, ServerTlsOptions};
pub use sni::{SniCertResolver, SniMap};
pub use store::{rotation_generation, CertStore};
pub use verify::{
    PeerSanPolicy, PolicyClientVerifier, PolicyViolation, ServerTrust, UpstreamServerVerifier,
};
pub use version::{protocol_versions, TlsVersion};
pub use x509::{
    dns_san_matches, san_list_matches, serial_hex, spiffe_id_of_der, CertSummary, San, SanKind,
};

/// Re-exports so that callers use exactly our rustls / tokio-rustls versions.
pub use rustls;
pub use tokio_rustls;

/// The crypto provider every rustls config of the workspace uses (one place decides it).
///
/// aws-lc-rs by default: its X25519, P-256 and AES-GCM are assembly, about 1.5-2x faster per
/// TLS 1.3 handshake than *ring* on x86-64 (ztunnel moved to it for the same reason). Build
/// with the `ring` feature of this crate to use *ring* instead (no C toolchain beyond what
/// *ring* needs).
///
/// Key exchange groups are Envoy's defaults (X25519, then P-256), plus P-384 for peers that
/// offer only that. The provider's post-quantum hybrid X25519MLKEM768 is left out like in
/// Envoy/Istio without a PQC compliance policy: it costs an ML-KEM operation and a 1.2 KB key
/// share per handshake, and an OpenSSL 3.0 peer does not know it.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(build_provider())).clone()
}

#[cfg(not(feature = "ring"))]
fn build_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    envoy_order(CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

#[cfg(feature = "ring")]
fn build_provider() -> CryptoProvider {
    use rustls::crypto::ring::{default_provider, kx_group};
    envoy_order(CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

/// Cipher suites in BoringSSL's (Envoy's) TLS 1.3 order: AES-128-GCM-SHA256 first. Servers
/// pick from this order ([`ServerTls`] ignores the client's order, as BoringSSL does for
/// TLS 1.3), so a client that lists AES-256-GCM-SHA384 first still gets the SHA-256 key
/// schedule: its ~30 HMACs per handshake cost about half of SHA-384's.
fn envoy_order(mut p: CryptoProvider) -> CryptoProvider {
    use rustls::CipherSuite as C;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3, // TLS 1.2 suites keep their relative order (stable sort).
    };
    p.cipher_suites.sort_by_key(rank);
    p
}

/// A fresh session-ticket key set from the same crypto library as [`provider`] (AES-256-GCM
/// keys, rotated every 6 hours, the previous key still accepted).
pub(crate) fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(not(feature = "ring"))]
    {
        rustls::crypto::aws_lc_rs::Ticketer::new()
    }
    #[cfg(feature = "ring")]
    {
        rustls::crypto::ring::Ticketer::new()
    }
}

/// Name of the crypto library behind [`provider`] (`"aws-lc-rs"` or `"ring"`), for logs and
/// `version` output.
pub fn provider_name() -> &'static str {
    if cfg!(feature = "ring") {
        "ring"
    } else {
        "aws-lc-rs"
    }
}
