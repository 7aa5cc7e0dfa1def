//! PEM loading (via `rustls-pki-types`' [`PemObject`]) and trust bundles.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::error::TlsError;

/// Where Debian-family systems keep the system CA bundle; Istio's `caCertificates: system`
/// (the default for SIMPLE origination) means this file.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Parses every `CERTIFICATE` block in `pem`. Fails if there is none or one is malformed.
/// `what` names the source (file path, `secret ns/name key tls.crt`) in errors.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let cert = item.map_err(|e| TlsError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        out.push(cert);
    }
    if out.is_empty() {
        return Err(TlsError::NoCertificates {
            what: what.to_string(),
        });
    }
    for cert in &out {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            TlsError::BadCertificate {
                what: what.to_string(),
                reason: e.to_string(),
            }
        })?;
    }
    Ok(out)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn parse_private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            what: what.to_string(),
        },
        other => TlsError::Pem {
            what: what.to_string(),
            reason: other.to_string(),
        },
    })
}

/// Parses every `X509 CRL` block in `pem`.
pub fn parse_crls(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for item in CertificateRevocationListDer::pem_slice_iter(pem) {
        out.push(item.map_err(|e| TlsError::BadCrl {
            what: what.to_string(),
            reason: e.to_string(),
        })?);
    }
    if out.is_empty() {
        return Err(TlsError::BadCrl {
            what: what.to_string(),
            reason: "no PEM X509 CRL block found".to_string(),
        });
    }
    Ok(out)
}

/// Builds a rustls [`CertifiedKey`] (chain + signing key) from PEM, checking that the key
/// belongs to the leaf certificate.
pub fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certs(chain_pem, what)?;
    let key = parse_private_key(key_pem, what)?;
    certified_key_from_der(chain, key, what)
}

/// Like [`certified_key_from_pem`] for DER input.
pub fn certified_key_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    what: &str,
) -> Result<CertifiedKey, TlsError> {
    let provider = crate::provider();
    let signing =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                what: what.to_string(),
            })
        }
        // The provider cannot tell (no public key available): accept, as rustls does.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(other) => Err(TlsError::BadCertificate {
            what: what.to_string(),
            reason: other.to_string(),
        }),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A set of trusted CA certificates plus optional CRLs: the validation context of a TLS
/// endpoint (Envoy's `trusted_ca` + `crl`).
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    what: String,
}

impl TrustBundle {
    /// Builds a bundle from PEM certificates; every certificate must be a usable trust anchor.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, TlsError> {
        let certs = parse_certs(pem, what)?;
        Self::from_der(certs, what)
    }

    /// Builds a bundle from DER certificates.
    pub fn from_der(certs: Vec<CertificateDer<'static>>, what: &str) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in certs {
            store.add(cert).map_err(|e| TlsError::BadCertificate {
                what: what.to_string(),
                reason: format!("not usable as a trust anchor: {e}"),
            })?;
        }
        if store.is_empty() {
            return Err(TlsError::NoCertificates {
                what: what.to_string(),
            });
        }
        Ok(TrustBundle {
            roots: Arc::new(store),
            crls: Vec::new(),
            what: what.to_string(),
        })
    }

    /// Reads a PEM CA file (DestinationRule `caCertificates`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        Self::from_pem(&read_file(path)?, &path.display().to_string())
    }

    /// The system bundle ([`SYSTEM_CA_BUNDLE`]). Certificates the parser cannot use are skipped
    /// (system bundles routinely carry a few odd ones); an empty result is an error.
    pub fn system() -> Result<Self, TlsError> {
        let path = Path::new(SYSTEM_CA_BUNDLE);
        let pem = read_file(path)?;
        let what = path.display().to_string();
        let mut certs = Vec::new();
        for item in CertificateDer::pem_slice_iter(&pem) {
            match item {
                Ok(c) => certs.push(c),
                Err(e) => {
                    tracing::debug!(bundle = %what, error = %e, "skipping unparsable PEM block in system CA bundle")
                }
            }
        }
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certs);
        if ignored > 0 {
            tracing::debug!(bundle = %what, added, ignored, "some system CA certificates were not usable");
        }
        if store.is_empty() {
            return Err(TlsError::NoCertificates { what });
        }
        Ok(TrustBundle {
            roots: Arc::new(store),
            crls: Vec::new(),
            what,
        })
    }

    /// Adds CRLs (PEM `X509 CRL` blocks, e.g. a secret's `ca.crl`). With CRLs present, every
    /// certificate in a peer chain must be covered by a CRL from its issuer, as Envoy requires
    /// by default (`only_verify_leaf_cert_crl: false`).
    pub fn with_crl_pem(mut self, pem: &[u8], what: &str) -> Result<Self, TlsError> {
        self.crls.extend(parse_crls(pem, what)?);
        Ok(self)
    }

    /// The root store.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The CRLs.
    pub fn crls(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// Where the bundle came from (for error messages).
    pub fn source(&self) -> &str {
        &self.what
    }
}
