//! The isthmus mesh's built-in certificate authority.
//!
//! * [`Ca`]: a generated ECDSA P-256 root (persisted as Istio `cacerts` files, key mode 0600) or
//!   user-supplied `cacerts` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) for
//!   intermediate signing, with the chain served after each leaf.
//! * Workload certificates (SVIDs) with the URI SAN `spiffe://<td>/ns/<ns>/sa/<sa>`
//!   ([`Ca::issue`]); rotation at half the lifetime ([`rotation_due`], [`WorkloadCertManager`]).
//! * [`CaService`]: authenticated issuance — a proxy presents its token and receives the
//!   certificate of the identity the supervisor bound to that token, and nothing else.
//! * Gateway credentials from Kubernetes Secrets ([`SecretIndex`], [`KubeSecret`]) as SDS
//!   resources `kubernetes://NAME` and `kubernetes://NAME-cacert`.
//! * [`CertInfo`] for `isthmus proxy-config secret`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::SystemTime;
//! use isthmus_ca::{Ca, CaService, CertInfo, generate_token};
//! use isthmus_tls::Identity;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // First start: generates and persists a root; later starts load it.
//! let (ca, _origin) = Ca::load_or_generate(dir.path(), "cluster.local")?;
//! let service = CaService::new(Arc::new(ca), None);
//!
//! // The supervisor registers each proxy it starts...
//! let token = generate_token();
//! service.register_proxy(&token, Identity::new("cluster.local", "default", "sleep")?)?;
//!
//! // ...and the proxy can only ever obtain its own identity.
//! let svid = service.issue_for_token(&token, SystemTime::now())?;
//! let info = &CertInfo::from_pem(svid.cert_chain_pem.as_bytes(), "default", SystemTime::now())?[0];
//! assert_eq!(info.sans[0].value, "spiffe://cluster.local/ns/default/sa/sleep");
//! assert!(info.valid);
//! assert!(service.issue_for_token("not-a-registered-token", SystemTime::now()).is_err());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod authority;
mod ca;
mod error;
mod info;
mod key;
mod rotation;
mod secrets;

pub use authority::{generate_token, CaService, MIN_TOKEN_LEN};
pub use ca::{
    certs_to_pem, generate_csr, pem_to_certs, Ca, CaFiles, CaOrigin, IssuedCert, LeafSpec,
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CLOCK_SKEW_ALLOWANCE, DEFAULT_ROOT_TTL,
    DEFAULT_WORKLOAD_TTL, ROOT_CERT_FILE,
};
pub use error::{CaError, IssueError};
pub use info::{rfc3339, CertInfo};
pub use key::CaKey;
pub use rotation::{rotation_due, Validity, WorkloadCertManager, ROTATION_FRACTION};
pub use secrets::{
    to_resource_name, KubeSecret, SdsResource, SdsTlsCertificate, SdsValidationContext,
    SecretError, SecretIndex, CA_SUFFIX, KUBERNETES_PREFIX, TYPE_OPAQUE, TYPE_TLS,
};
