//! Signing with any key rustls' ring provider can load (PKCS#8, SEC1 `EC PRIVATE KEY`, PKCS#1
//! `RSA PRIVATE KEY`).
//!
//! rcgen's ring backend only reads PKCS#8 keys, but user-supplied Istio `cacerts` often carry
//! SEC1 or PKCS#1 keys. This adapter lets rcgen sign through a rustls `SigningKey` instead, so
//! every key format that works for TLS also works for the CA.

use std::sync::Arc;

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls::SignatureScheme;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::CaError;

/// A CA signing key usable by rcgen.
pub struct CaKey {
    key: Arc<dyn rustls::sign::SigningKey>,
    scheme: SignatureScheme,
    alg: &'static SignatureAlgorithm,
    public_raw: Vec<u8>,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKey")
            .field("scheme", &self.scheme)
            .finish()
    }
}

const CANDIDATES: &[(SignatureScheme, &SignatureAlgorithm)] = &[
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        &rcgen::PKCS_ECDSA_P256_SHA256,
    ),
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ),
    (SignatureScheme::ED25519, &rcgen::PKCS_ED25519),
    (SignatureScheme::RSA_PKCS1_SHA256, &rcgen::PKCS_RSA_SHA256),
];

impl CaKey {
    /// Loads a PEM private key; `what` names the file in errors.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, CaError> {
        let der = isthmus_tls::parse_private_key(pem, what)?;
        Self::from_der(der, what)
    }

    /// Loads a DER private key.
    pub fn from_der(der: PrivateKeyDer<'static>, what: &str) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::BadCaFile {
            file: what.to_string(),
            reason,
        };
        let key = isthmus_tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| bad(format!("unsupported private key: {e}")))?;
        let (scheme, alg) = CANDIDATES
            .iter()
            .find(|(scheme, _)| key.choose_scheme(&[*scheme]).is_some())
            .copied()
            .ok_or_else(|| {
                bad(
                    "key type cannot sign with ECDSA P-256/P-384, Ed25519 or RSA-SHA256"
                        .to_string(),
                )
            })?;
        let spki = key
            .public_key()
            .ok_or_else(|| bad("cannot derive the public key".to_string()))?;
        let (_, parsed) = SubjectPublicKeyInfo::from_der(spki.as_ref())
            .map_err(|e| bad(format!("cannot parse the public key: {e}")))?;
        let public_raw = parsed.subject_public_key.data.to_vec();
        Ok(CaKey {
            key,
            scheme,
            alg,
            public_raw,
        })
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signer = self
            .key
            .choose_scheme(&[self.scheme])
            .ok_or(rcgen::Error::RemoteKeyError)?;
        signer.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}
