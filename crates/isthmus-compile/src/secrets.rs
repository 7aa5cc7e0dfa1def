//! The SDS secrets one proxy needs and the state each is in (reference §3.9, §10).
//!
//! * `default` (the workload certificate) and `ROOTCA` (the mesh trust bundle) are issued by the
//!   mesh CA when the proxy starts, so offline they are shown as the SPIFFE identity the proxy
//!   will get, not as a certificate.
//! * `kubernetes://NAME` / `kubernetes://NAME-cacert`, referenced by a Gateway server's or a
//!   DestinationRule's `credentialName`, are resolved here from Secrets in the proxy's OWN
//!   namespace with Istio's key rules ([`isthmus_ca::SecretIndex::resolve`]). A resolved secret
//!   is pushed inline in [`ProxyConfig::secrets`]; a missing or invalid one is not pushed (istiod
//!   does not push it either, so handshakes on it fail) and each referencing Gateway or
//!   DestinationRule gets a Warning naming the Secret, the reason and the fix.
//! * `file-cert:` / `file-root:` references (`serverCertificate`, `caCertificates`...) are files
//!   the proxy reads itself at start.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::diag;
use crate::scope::Ctx;
use isthmus_api::Severity;
use isthmus_ca::{
    CertInfo, KubeSecret, SdsResource, SecretError, SecretIndex, CA_SUFFIX, KUBERNETES_PREFIX,
};
use isthmus_model::ConfigMeta;
use isthmus_xds::core::DataSource;
use isthmus_xds::tls::{CertificateValidationContext, TlsCertificate};
use isthmus_xds::{ProxyConfig, Secret};
use serde::Serialize;

/// What a secret holds, as istioctl's TYPE column names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SecretType {
    /// A certificate chain with its private key.
    #[serde(rename = "Cert Chain")]
    CertChain,
    /// A trust bundle (validation context).
    #[serde(rename = "CA")]
    Ca,
}

impl SecretType {
    /// The TYPE column text.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::CertChain => "Cert Chain",
            SecretType::Ca => "CA",
        }
    }
}

/// The state of one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecretState {
    /// Resolved and pushed with the config (Envoy's `ACTIVE`).
    Active,
    /// Issued by the mesh CA when the proxy starts (`default`, `ROOTCA`).
    IssuedAtStart,
    /// A file the proxy reads itself at start (`file-cert:`, `file-root:`).
    FileAtStart,
    /// The Secret does not exist in the proxy's namespace.
    Missing,
    /// The Secret exists but lacks the expected keys or holds bad PEM / a mismatched key.
    Invalid,
}

impl SecretState {
    /// The STATUS column text.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretState::Active => "ACTIVE",
            SecretState::IssuedAtStart => "ISSUED AT START",
            SecretState::FileAtStart => "FILE READ AT START",
            SecretState::Missing => "MISSING",
            SecretState::Invalid => "INVALID",
        }
    }
}

/// One SDS secret of a proxy with its state and certificate details (what
/// `isthmus proxy-config secret` shows).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    /// SDS resource name (`default`, `ROOTCA`, `kubernetes://NAME`, `kubernetes://NAME-cacert`...).
    pub name: String,
    /// Certificate chain or CA bundle.
    #[serde(rename = "type")]
    pub type_: SecretType,
    /// Whether it is served, issued at start, or missing/invalid.
    pub state: SecretState,
    /// Why it is missing/invalid, or how it is obtained; with the fix for missing/invalid ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `default`: the SPIFFE identity the mesh CA will issue to this proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The Gateways / DestinationRules referencing it (`DestinationRule ns/name`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub referenced_by: Vec<String>,
    /// The certificates it holds (leaf first for a chain), with validity at compile time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<CertInfo>,
    /// The SDS resource as pushed (private key redacted, as Envoy's config dump does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

impl SecretStatus {
    /// Whether every certificate is within its validity window (false when there are none).
    pub fn valid_cert(&self) -> bool {
        !self.certs.is_empty() && self.certs.iter().all(|c| c.valid)
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        inline_bytes: Some(b64(bytes)),
        ..Default::default()
    })
}

fn label(meta: &ConfigMeta) -> String {
    format!("{} {}/{}", meta.kind, meta.namespace, meta.name)
}

/// The base Secret name of a `kubernetes://` resource, and whether it is the CA half.
fn secret_base(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix(KUBERNETES_PREFIX)?;
    Some(rest.strip_suffix(CA_SUFFIX).unwrap_or(rest))
}

/// Builds the secrets of this proxy: resolves `kubernetes://` references (pushing resolved ones
/// into `cfg.secrets`), adds diagnostics for unresolvable ones, and returns every secret's
/// status sorted by name.
pub(crate) fn collect(ctx: &mut Ctx, cfg: &mut ProxyConfig, now: SystemTime) -> Vec<SecretStatus> {
    let refs = std::mem::take(&mut ctx.sds_refs);
    let proxy_ns = ctx.proxy.namespace.clone();
    let role = if ctx.proxy.is_gateway() {
        "gateway"
    } else {
        "sidecar"
    };
    let proxy_label = format!(
        "{role} {}",
        ctx.proxy.deployment.as_deref().unwrap_or(&ctx.proxy.name)
    );

    // Only the Secrets these references can name (any namespace, for the wrong-namespace hint).
    let wanted: BTreeSet<&str> = refs.keys().filter_map(|r| secret_base(r)).collect();
    let mut index = SecretIndex::new();
    for ((ns, name), data) in &ctx.snap.secrets {
        let base = name.strip_suffix(CA_SUFFIX).unwrap_or(name);
        if wanted.contains(name.as_str()) || wanted.contains(base) {
            let type_ = ctx
                .snap
                .secret_types
                .get(&(ns.clone(), name.clone()))
                .map(String::as_str)
                .unwrap_or_default();
            index.insert(KubeSecret::new(ns, name, type_, data.clone()));
        }
    }

    let mut out = vec![
        SecretStatus {
            name: "default".into(),
            type_: SecretType::CertChain,
            state: SecretState::IssuedAtStart,
            reason: Some(
                "workload certificate issued by the mesh CA when the proxy starts".into(),
            ),
            identity: Some(ctx.snap.spiffe_id(&proxy_ns, &ctx.proxy.service_account)),
            referenced_by: Vec::new(),
            certs: Vec::new(),
            secret: None,
        },
        SecretStatus {
            name: "ROOTCA".into(),
            type_: SecretType::Ca,
            state: SecretState::IssuedAtStart,
            reason: Some(format!(
                "mesh root certificate (trust domain {}) delivered by the mesh CA when the proxy starts",
                ctx.snap.mesh.trust_domain
            )),
            identity: None,
            referenced_by: Vec::new(),
            certs: Vec::new(),
            secret: None,
        },
    ];

    for (name, metas) in refs {
        let referenced_by: Vec<String> = metas.iter().map(label).collect();
        if name == "default" || name == "ROOTCA" {
            continue;
        }
        if let Some(file) = name.strip_prefix("file-cert:") {
            out.push(SecretStatus {
                type_: SecretType::CertChain,
                state: SecretState::FileAtStart,
                reason: Some(format!(
                    "certificate~key files {file} read by the proxy at start"
                )),
                ..status(&name, referenced_by)
            });
            continue;
        }
        if let Some(file) = name.strip_prefix("file-root:") {
            let reason = if file == "system" {
                "the system trust store, read by the proxy at start".to_string()
            } else {
                format!("CA file {file} read by the proxy at start")
            };
            out.push(SecretStatus {
                type_: SecretType::Ca,
                state: SecretState::FileAtStart,
                reason: Some(reason),
                ..status(&name, referenced_by)
            });
            continue;
        }
        let type_ = if name.ends_with(CA_SUFFIX) {
            SecretType::Ca
        } else {
            SecretType::CertChain
        };
        match index.resolve(&proxy_ns, &name, now) {
            Ok(SdsResource::TlsCertificate(t)) => {
                let pushed = Secret {
                    name: name.clone(),
                    tls_certificate: Some(TlsCertificate {
                        certificate_chain: inline(t.cert_chain_pem.as_bytes()),
                        private_key: inline(t.private_key_pem.as_bytes()),
                    }),
                    validation_context: None,
                };
                let shown = Secret {
                    tls_certificate: Some(TlsCertificate {
                        certificate_chain: inline(t.cert_chain_pem.as_bytes()),
                        private_key: Some(DataSource {
                            inline_string: Some("[redacted]".into()),
                            ..Default::default()
                        }),
                    }),
                    ..pushed.clone()
                };
                cfg.secrets.push(pushed);
                out.push(SecretStatus {
                    type_: SecretType::CertChain,
                    state: SecretState::Active,
                    certs: t.certs,
                    secret: Some(shown),
                    ..status(&name, referenced_by)
                });
            }
            Ok(SdsResource::ValidationContext(v)) => {
                let pushed = Secret {
                    name: name.clone(),
                    tls_certificate: None,
                    validation_context: Some(CertificateValidationContext {
                        trusted_ca: inline(v.trusted_ca_pem.as_bytes()),
                        crl: v.crl_pem.as_deref().and_then(|c| inline(c.as_bytes())),
                        ..Default::default()
                    }),
                };
                cfg.secrets.push(pushed.clone());
                out.push(SecretStatus {
                    type_: SecretType::Ca,
                    state: SecretState::Active,
                    certs: v.certs,
                    secret: Some(pushed),
                    ..status(&name, referenced_by)
                });
            }
            Err(e) => {
                let (state, code, reason) = explain(&e, ctx.snap, &proxy_ns, &proxy_label, role);
                // A missing Secret fails NAME and NAME-cacert alike: name the credential, not
                // the resource, so the two warnings collapse into one.
                let subject = match (&e, secret_base(&name)) {
                    (SecretError::NotFound { .. }, Some(base)) => format!("credentialName {base}"),
                    _ => name.clone(),
                };
                for meta in &metas {
                    ctx.diags.push(diag(
                        meta,
                        Severity::Warning,
                        code,
                        None,
                        format!(
                            "{subject}: {reason}; {proxy_label} is not served {what} and TLS handshakes that need it fail",
                            what = if subject == name { "this SDS resource" } else { "its SDS resources" }
                        ),
                    ));
                }
                out.push(SecretStatus {
                    type_,
                    state,
                    reason: Some(reason),
                    ..status(&name, referenced_by)
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn status(name: &str, referenced_by: Vec<String>) -> SecretStatus {
    SecretStatus {
        name: name.to_string(),
        type_: SecretType::CertChain,
        state: SecretState::Missing,
        reason: None,
        identity: None,
        referenced_by,
        certs: Vec::new(),
        secret: None,
    }
}

/// State, diagnostic code and operator-facing reason (with the fix) for a resolution failure.
fn explain(
    e: &SecretError,
    snap: &isthmus_model::Snapshot,
    proxy_ns: &str,
    proxy_label: &str,
    role: &str,
) -> (SecretState, &'static str, String) {
    match e {
        SecretError::NotFound { name, .. } => {
            let elsewhere: Vec<&str> = snap
                .secrets
                .keys()
                .filter(|(ns, n)| n == name && ns != proxy_ns)
                .map(|(ns, _)| ns.as_str())
                .collect();
            let reason = if elsewhere.is_empty() {
                format!(
                    "Secret {name} not found in namespace {proxy_ns}; create it there (kubernetes.io/tls with tls.crt/tls.key[/ca.crt], or generic with cert/key[/cacert]) — credentialName is only read from the {role}'s own namespace"
                )
            } else {
                format!(
                    "Secret {name} is in namespace {} but the {proxy_label} runs in {proxy_ns}; credentialName is only read from the {role}'s own namespace — create the Secret in namespace {proxy_ns}",
                    elsewhere.join(", ")
                )
            };
            (SecretState::Missing, "SecretNotFound", reason)
        }
        SecretError::MissingKeys { .. } => (
            SecretState::Invalid,
            "SecretKeyMissing",
            format!("{e}; use tls.crt/tls.key (and ca.crt for the CA), or cert/key/cacert in a generic Secret"),
        ),
        SecretError::InvalidPem { .. } | SecretError::KeyMismatch { .. } => (
            SecretState::Invalid,
            "SecretInvalid",
            format!("{e}; fix the Secret's data (PEM-encoded X.509 certificate and matching private key)"),
        ),
        SecretError::BadResourceName(_) => (
            SecretState::Invalid,
            "SecretInvalid",
            format!("{e}"),
        ),
    }
}
