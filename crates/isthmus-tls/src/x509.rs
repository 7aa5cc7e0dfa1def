//! Reading the fields of an X.509 certificate that the mesh cares about (SANs, subject, serial,
//! validity) with `x509-parser`.

use std::net::IpAddr;

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::TlsError;
use crate::identity::SPIFFE_PREFIX;

/// The kind of a subject alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum SanKind {
    /// `DNS:` name.
    #[serde(rename = "DNS")]
    Dns,
    /// `URI:` (SPIFFE IDs live here).
    #[serde(rename = "URI")]
    Uri,
    /// `IP Address:`.
    #[serde(rename = "IP")]
    Ip,
    /// `email:`.
    #[serde(rename = "EMAIL")]
    Email,
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct San {
    /// Its kind.
    pub kind: SanKind,
    /// Its value as text (IP addresses in their usual textual form).
    pub value: String,
}

/// The fields of a certificate the mesh shows and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// Serial number, lowercase hex without separators (as Envoy's `/certs` shows it).
    pub serial_hex: String,
    /// Subject in RFC 4514-like form, e.g. `CN=foo, O=bar` (empty for SPIFFE SVIDs, which have
    /// no subject).
    pub subject: String,
    /// Issuer, same form.
    pub issuer: String,
    /// SANs in certificate order.
    pub sans: Vec<San>,
    /// notBefore, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Whether the basicConstraints CA flag is set.
    pub is_ca: bool,
}

impl CertSummary {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate {
            what: "certificate".to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_parsed(&cert))
    }

    /// Parses only what SAN checks need (per handshake, in verifiers): `sans` and `is_ca` are
    /// filled, `serial_hex`/`subject`/`issuer` are left empty and validity is 0. Skips the
    /// distinguished-name and serial formatting that [`CertSummary::from_der`] does.
    pub fn sans_from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate {
            what: "certificate".to_string(),
            reason: e.to_string(),
        })?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            sans.extend(ext.value.general_names.iter().filter_map(san_of));
        }
        Ok(CertSummary {
            serial_hex: String::new(),
            subject: String::new(),
            issuer: String::new(),
            sans,
            not_before_unix: 0,
            not_after_unix: 0,
            is_ca: cert.is_ca(),
        })
    }

    /// Summarises an already parsed certificate.
    pub fn from_parsed(cert: &X509Certificate<'_>) -> Self {
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                if let Some(san) = san_of(name) {
                    sans.push(san);
                }
            }
        }
        CertSummary {
            serial_hex: serial_hex(cert.raw_serial()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
        }
    }

    /// DNS SANs.
    pub fn dns_sans(&self) -> Vec<&str> {
        self.sans_of(SanKind::Dns)
    }

    /// URI SANs.
    pub fn uri_sans(&self) -> Vec<&str> {
        self.sans_of(SanKind::Uri)
    }

    /// IP SANs.
    pub fn ip_sans(&self) -> Vec<&str> {
        self.sans_of(SanKind::Ip)
    }

    fn sans_of(&self, kind: SanKind) -> Vec<&str> {
        self.sans
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.value.as_str())
            .collect()
    }

    /// The first `spiffe://` URI SAN — the peer principal Istio's `istio_authn` filter uses.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.sans
            .iter()
            .find(|s| s.kind == SanKind::Uri && s.value.starts_with(SPIFFE_PREFIX))
            .map(|s| s.value.as_str())
    }
}

/// The first `spiffe://` URI SAN of a DER certificate, found without building a
/// [`CertSummary`] (this runs once per mutual-TLS handshake for the peer principal).
pub fn spiffe_id_of_der(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let ext = cert.subject_alternative_name().ok()??;
    ext.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with(SPIFFE_PREFIX) => Some(u.to_string()),
        _ => None,
    })
}

/// Serial number bytes → lowercase hex, dropping the DER sign-padding zero byte.
pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

fn san_of(name: &GeneralName<'_>) -> Option<San> {
    let (kind, value) = match name {
        GeneralName::DNSName(d) => (SanKind::Dns, d.to_string()),
        GeneralName::URI(u) => (SanKind::Uri, u.to_string()),
        GeneralName::RFC822Name(e) => (SanKind::Email, e.to_string()),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => {
                    let mut a = [0u8; 4];
                    a.copy_from_slice(bytes);
                    IpAddr::from(a)
                }
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(bytes);
                    IpAddr::from(a)
                }
                _ => return None,
            };
            (SanKind::Ip, ip.to_string())
        }
        _ => return None,
    };
    Some(San { kind, value })
}

/// Envoy's DNS SAN matching for an `exact` matcher: case-insensitive equality, or the
/// certificate SAN is a wildcard `*.example.com` covering exactly one label of `wanted`
/// (`Utility::dnsNameMatch`).
pub fn dns_san_matches(wanted: &str, cert_san: &str) -> bool {
    let wanted = wanted.trim_end_matches('.');
    let cert_san = cert_san.trim_end_matches('.');
    if wanted.eq_ignore_ascii_case(cert_san) {
        return true;
    }
    if let Some(suffix) = cert_san.strip_prefix("*.") {
        if let Some((first, rest)) = wanted.split_once('.') {
            return !first.is_empty() && rest.eq_ignore_ascii_case(suffix);
        }
    }
    false
}

/// Whether any SAN of `summary` equals `wanted` (Envoy's `matchSubjectAltNames` with an `exact`
/// matcher and no SAN type: DNS with wildcard support, URI/email exact, IP by address).
pub fn san_list_matches(summary: &CertSummary, wanted: &str) -> bool {
    summary.sans.iter().any(|san| match san.kind {
        SanKind::Dns => dns_san_matches(wanted, &san.value),
        SanKind::Uri | SanKind::Email => san.value == wanted,
        SanKind::Ip => match (wanted.parse::<IpAddr>(), san.value.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_strips_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x9f, 0x01]), "9f01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x12, 0x34]), "1234");
    }

    #[test]
    fn dns_wildcards_cover_one_label() {
        assert!(dns_san_matches("api.example.com", "*.example.com"));
        assert!(dns_san_matches("API.example.com", "api.EXAMPLE.com"));
        assert!(!dns_san_matches("a.b.example.com", "*.example.com"));
        assert!(!dns_san_matches("example.com", "*.example.com"));
        assert!(!dns_san_matches("api.example.org", "*.example.com"));
    }
}
