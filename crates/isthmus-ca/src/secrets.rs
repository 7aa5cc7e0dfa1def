//! Gateway credentials from Kubernetes Secrets (`credentialName`).
//!
//! Mirrors Istio's credentials controller (`pilot/pkg/credentials/kube/secrets.go`):
//! * certificate + key: keys `cert`/`key` (Istio's generic layout) or `tls.crt`/`tls.key`;
//! * CA bundle: `cacert` or `ca.crt`; CRL: `crl` or `ca.crl`;
//! * resources are named `kubernetes://NAME` (certificate + key) and `kubernetes://NAME-cacert`
//!   (validation context). For `NAME-cacert`, a Secret literally named `NAME-cacert` is used if
//!   it exists, else the CA keys of Secret `NAME`;
//! * Secrets are looked up only in the proxy's own namespace.

use std::collections::BTreeMap;
use std::time::SystemTime;

use isthmus_tls::{certified_key_from_pem, parse_certs, parse_crls, TlsError};
use serde::Serialize;

use crate::info::CertInfo;

/// SDS resource-name prefix for Kubernetes secrets.
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
/// Suffix of the validation-context resource (`credentials.SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";
/// Secret type of TLS secrets.
pub const TYPE_TLS: &str = "kubernetes.io/tls";
/// Secret type of generic secrets.
pub const TYPE_OPAQUE: &str = "Opaque";

const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const GENERIC_CERT: &str = "cert";
const GENERIC_KEY: &str = "key";
const CA_CRT: &str = "ca.crt";
const GENERIC_CACERT: &str = "cacert";
const CA_CRL: &str = "ca.crl";
const GENERIC_CRL: &str = "crl";

/// A Kubernetes Secret: its `data` already base64-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSecret {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `type` (`kubernetes.io/tls`, `Opaque`, ...; empty means Opaque).
    pub type_: String,
    /// Decoded data.
    pub data: BTreeMap<String, Vec<u8>>,
}

/// Why a gateway credential could not be produced. Every variant names the Secret (and key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No such Secret in the proxy's namespace.
    #[error("secret {namespace}/{name} not found{hint}")]
    NotFound {
        /// Namespace searched (the proxy's).
        namespace: String,
        /// Secret name.
        name: String,
        /// Extra hint, e.g. that it exists in another namespace.
        hint: String,
    },
    /// Neither key layout is present.
    #[error("secret {namespace}/{name}: {message}")]
    MissingKeys {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Istio-style message, e.g. `found secret, but didn't have expected keys (cert and key) or (tls.crt and tls.key); found: foo`.
        message: String,
    },
    /// A value is not valid PEM / X.509.
    #[error("secret {namespace}/{name} key {key:?}: {reason}")]
    InvalidPem {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The data key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("secret {namespace}/{name}: private key {key_key:?} does not match the certificate in {cert_key:?}")]
    KeyMismatch {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Certificate key.
        cert_key: String,
        /// Private key key.
        key_key: String,
    },
    /// The resource name is not a `kubernetes://` credential.
    #[error(
        "unsupported credential resource {0:?}: expected a plain Secret name or kubernetes://NAME"
    )]
    BadResourceName(String),
}

/// SDS `tlsCertificate` resource.
#[derive(Debug, Clone, Serialize)]
pub struct SdsTlsCertificate {
    /// `kubernetes://NAME`.
    pub name: String,
    /// Certificate chain PEM (leaf first).
    #[serde(skip)]
    pub cert_chain_pem: String,
    /// Private key PEM.
    #[serde(skip)]
    pub private_key_pem: String,
    /// Display info for each certificate of the chain.
    pub certs: Vec<CertInfo>,
}

/// SDS `validationContext` resource.
#[derive(Debug, Clone, Serialize)]
pub struct SdsValidationContext {
    /// `kubernetes://NAME-cacert`.
    pub name: String,
    /// Trusted CA PEM.
    #[serde(skip)]
    pub trusted_ca_pem: String,
    /// Optional CRL PEM.
    #[serde(skip)]
    pub crl_pem: Option<String>,
    /// Display info for each CA certificate.
    pub certs: Vec<CertInfo>,
}

impl SdsTlsCertificate {
    /// A hot-swappable store with this certificate, for a terminating or originating context.
    pub fn to_cert_store(&self) -> Result<isthmus_tls::CertStore, TlsError> {
        isthmus_tls::CertStore::from_pem(
            self.name.clone(),
            self.cert_chain_pem.as_bytes(),
            self.private_key_pem.as_bytes(),
        )
    }
}

impl SdsValidationContext {
    /// The CA bundle (with CRL, if any) as a rustls trust bundle.
    pub fn to_trust_bundle(&self) -> Result<isthmus_tls::TrustBundle, TlsError> {
        let bundle =
            isthmus_tls::TrustBundle::from_pem(self.trusted_ca_pem.as_bytes(), &self.name)?;
        match &self.crl_pem {
            Some(crl) => bundle.with_crl_pem(crl.as_bytes(), &self.name),
            None => Ok(bundle),
        }
    }
}

/// An SDS resource served to a gateway.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind")]
pub enum SdsResource {
    /// Certificate + key.
    TlsCertificate(SdsTlsCertificate),
    /// CA bundle (+ CRL).
    ValidationContext(SdsValidationContext),
}

/// `credentialName` → SDS resource name (`credentials.ToResourceName`): bare names get the
/// `kubernetes://` prefix, already-prefixed names are kept.
pub fn to_resource_name(credential_name: &str) -> String {
    if credential_name.contains("://") {
        credential_name.to_string()
    } else {
        format!("{KUBERNETES_PREFIX}{credential_name}")
    }
}

fn non_empty<'a>(data: &'a BTreeMap<String, Vec<u8>>, key: &str) -> Option<&'a [u8]> {
    data.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
}

/// Istio's `truncatedKeysMessage`: sorted keys, at most three, then "and N more...".
fn found_keys(data: &BTreeMap<String, Vec<u8>>) -> String {
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    if keys.len() < 3 {
        keys.join(", ")
    } else {
        format!("{}, and {} more...", keys[..3].join(", "), keys.len() - 3)
    }
}

impl KubeSecret {
    /// Convenience constructor.
    pub fn new(namespace: &str, name: &str, type_: &str, data: BTreeMap<String, Vec<u8>>) -> Self {
        KubeSecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            type_: type_.to_string(),
            data,
        }
    }

    fn is_tls_type(&self) -> bool {
        self.type_ == TYPE_TLS
    }

    fn pem_err(&self, key: &str, e: TlsError) -> SecretError {
        SecretError::InvalidPem {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: key.to_string(),
            reason: match e {
                TlsError::NoCertificates { .. } => "no PEM CERTIFICATE block found".to_string(),
                TlsError::NoPrivateKey { .. } => "no PEM private key found".to_string(),
                TlsError::Pem { reason, .. } => format!("invalid PEM: {reason}"),
                TlsError::BadCertificate { reason, .. } => format!("invalid certificate: {reason}"),
                TlsError::BadCrl { reason, .. } => format!("invalid CRL: {reason}"),
                TlsError::UnsupportedKey { reason, .. } => {
                    format!("unsupported private key: {reason}")
                }
                other => other.to_string(),
            },
        }
    }

    /// Which (cert key, key key) pair holds the certificate, Istio's order: `cert`/`key` first
    /// (generic secrets only), then `tls.crt`/`tls.key`.
    fn cert_keys(&self) -> Result<(&'static str, &'static str), SecretError> {
        let d = &self.data;
        let generic_ok = !self.is_tls_type();
        if generic_ok && non_empty(d, GENERIC_CERT).is_some() && non_empty(d, GENERIC_KEY).is_some()
        {
            return Ok((GENERIC_CERT, GENERIC_KEY));
        }
        if non_empty(d, TLS_CRT).is_some() && non_empty(d, TLS_KEY).is_some() {
            return Ok((TLS_CRT, TLS_KEY));
        }
        let missing = |message: String| SecretError::MissingKeys {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            message,
        };
        if generic_ok && d.contains_key(GENERIC_CERT) && d.contains_key(GENERIC_KEY) {
            return Err(missing(format!(
                "found keys {GENERIC_CERT:?} and {GENERIC_KEY:?}, but they were empty"
            )));
        }
        if d.contains_key(TLS_CRT) && d.contains_key(TLS_KEY) {
            return Err(missing(format!(
                "found keys {TLS_CRT:?} and {TLS_KEY:?}, but they were empty"
            )));
        }
        let expected = if generic_ok {
            format!("({GENERIC_CERT} and {GENERIC_KEY}) or ({TLS_CRT} and {TLS_KEY})")
        } else {
            format!("{TLS_CRT} and {TLS_KEY}")
        };
        Err(missing(format!(
            "found secret, but didn't have expected keys {expected}; found: {}",
            found_keys(d)
        )))
    }

    /// The `kubernetes://NAME` resource: certificate chain + key, checked to parse and match.
    pub fn tls_certificate(&self, now: SystemTime) -> Result<SdsTlsCertificate, SecretError> {
        let (ck, kk) = self.cert_keys()?;
        let cert = non_empty(&self.data, ck).unwrap_or_default();
        let key = non_empty(&self.data, kk).unwrap_or_default();
        let chain = parse_certs(cert, ck).map_err(|e| self.pem_err(ck, e))?;
        isthmus_tls::parse_private_key(key, kk).map_err(|e| self.pem_err(kk, e))?;
        match certified_key_from_pem(cert, key, &self.name) {
            Ok(_) => {}
            Err(TlsError::KeyMismatch { .. }) => {
                return Err(SecretError::KeyMismatch {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    cert_key: ck.to_string(),
                    key_key: kk.to_string(),
                })
            }
            Err(e) => return Err(self.pem_err(kk, e)),
        }
        let certs = chain
            .iter()
            .map(|c| CertInfo::from_der(c.as_ref(), now))
            .collect::<Result<_, _>>()
            .map_err(|e| self.pem_err(ck, e))?;
        Ok(SdsTlsCertificate {
            name: format!("{KUBERNETES_PREFIX}{}", self.name),
            cert_chain_pem: String::from_utf8_lossy(cert).into_owned(),
            private_key_pem: String::from_utf8_lossy(key).into_owned(),
            certs,
        })
    }

    /// Whether the Secret carries a CA bundle.
    pub fn has_ca(&self) -> bool {
        non_empty(&self.data, CA_CRT).is_some()
            || (!self.is_tls_type() && non_empty(&self.data, GENERIC_CACERT).is_some())
    }

    /// The validation context from this Secret's CA keys, named `resource_name`
    /// (normally `kubernetes://<credentialName>-cacert`).
    pub fn validation_context(
        &self,
        resource_name: &str,
        now: SystemTime,
    ) -> Result<SdsValidationContext, SecretError> {
        let d = &self.data;
        let generic_ok = !self.is_tls_type();
        let ca_key = if generic_ok && non_empty(d, GENERIC_CACERT).is_some() {
            GENERIC_CACERT
        } else if non_empty(d, CA_CRT).is_some() {
            CA_CRT
        } else {
            let message = if generic_ok && d.contains_key(GENERIC_CACERT) {
                format!("found key {GENERIC_CACERT:?}, but it was empty")
            } else if d.contains_key(CA_CRT) {
                format!("found key {CA_CRT:?}, but it was empty")
            } else if generic_ok {
                format!(
                    "found secret, but didn't have expected keys {GENERIC_CACERT} or {CA_CRT}; found: {}",
                    found_keys(d)
                )
            } else {
                format!(
                    "found secret, but didn't have expected key {CA_CRT}; found: {}",
                    found_keys(d)
                )
            };
            return Err(SecretError::MissingKeys {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                message,
            });
        };
        let ca = non_empty(d, ca_key).unwrap_or_default();
        let ca_certs = parse_certs(ca, ca_key).map_err(|e| self.pem_err(ca_key, e))?;
        let crl_key = [CA_CRL, GENERIC_CRL]
            .into_iter()
            .find(|k| non_empty(d, k).is_some());
        let crl_pem = match crl_key {
            Some(k) => {
                let crl = non_empty(d, k).unwrap_or_default();
                parse_crls(crl, k).map_err(|e| self.pem_err(k, e))?;
                Some(String::from_utf8_lossy(crl).into_owned())
            }
            None => None,
        };
        let certs = ca_certs
            .iter()
            .map(|c| CertInfo::from_der(c.as_ref(), now))
            .collect::<Result<_, _>>()
            .map_err(|e| self.pem_err(ca_key, e))?;
        Ok(SdsValidationContext {
            name: resource_name.to_string(),
            trusted_ca_pem: String::from_utf8_lossy(ca).into_owned(),
            crl_pem,
            certs,
        })
    }
}

/// The Secrets visible to the control plane, keyed by (namespace, name).
#[derive(Debug, Clone, Default)]
pub struct SecretIndex {
    secrets: BTreeMap<(String, String), KubeSecret>,
}

impl SecretIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Secret.
    pub fn insert(&mut self, secret: KubeSecret) {
        self.secrets
            .insert((secret.namespace.clone(), secret.name.clone()), secret);
    }

    /// Removes a Secret.
    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<KubeSecret> {
        self.secrets
            .remove(&(namespace.to_string(), name.to_string()))
    }

    /// A Secret by namespace and name.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&KubeSecret> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }

    fn not_found(&self, namespace: &str, name: &str) -> SecretError {
        let elsewhere: Vec<&str> = self
            .secrets
            .keys()
            .filter(|(ns, n)| n == name && ns != namespace)
            .map(|(ns, _)| ns.as_str())
            .collect();
        let hint = if elsewhere.is_empty() {
            String::new()
        } else {
            format!(
                " (a secret with this name exists in namespace(s) {}, but credentialName secrets are only read from the gateway's own namespace {namespace})",
                elsewhere.join(", ")
            )
        };
        SecretError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
            hint,
        }
    }

    /// Resolves an SDS resource name (`kubernetes://NAME`, `kubernetes://NAME-cacert`, or a bare
    /// credentialName) for a proxy in `proxy_namespace`. Only that namespace is searched.
    pub fn resolve(
        &self,
        proxy_namespace: &str,
        resource_name: &str,
        now: SystemTime,
    ) -> Result<SdsResource, SecretError> {
        let full = to_resource_name(resource_name);
        let name = full
            .strip_prefix(KUBERNETES_PREFIX)
            .or_else(|| full.strip_prefix("kubernetes-gateway://"))
            .ok_or_else(|| SecretError::BadResourceName(resource_name.to_string()))?;
        // Kubernetes object names are DNS-1123 subdomains; anything else cannot name a Secret.
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(SecretError::BadResourceName(resource_name.to_string()));
        }
        if let Some(base) = name.strip_suffix(CA_SUFFIX) {
            // Istio: a Secret literally named NAME-cacert wins; else NAME's CA keys.
            let secret = match self.get(proxy_namespace, name) {
                Some(s) => s,
                None => self
                    .get(proxy_namespace, base)
                    .ok_or_else(|| self.not_found(proxy_namespace, base))?,
            };
            return secret
                .validation_context(&full, now)
                .map(SdsResource::ValidationContext);
        }
        let secret = self
            .get(proxy_namespace, name)
            .ok_or_else(|| self.not_found(proxy_namespace, name))?;
        secret.tls_certificate(now).map(SdsResource::TlsCertificate)
    }
}
