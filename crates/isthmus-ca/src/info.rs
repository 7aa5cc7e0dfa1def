//! `CertInfo`: what `isthmus proxy-config secret` shows for a certificate.

use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_tls::{parse_certs, CertSummary, San, TlsError};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Display form of one certificate, like the columns of `istioctl proxy-config secret`
/// (serial, not-before/not-after, SANs, validity) plus subject and issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// notBefore, RFC 3339 UTC (`2026-11-21T23:00:00Z`).
    pub not_before: String,
    /// notAfter, RFC 3339 UTC.
    pub not_after: String,
    /// Subject (`CN=..., O=...`; empty for SVIDs).
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// SANs (DNS, URI, IP, email) in certificate order.
    pub sans: Vec<San>,
    /// Whether `now` lies within [notBefore, notAfter].
    pub valid: bool,
    /// Whether this is a CA certificate.
    pub is_ca: bool,
    /// notBefore as Unix seconds (for rotation arithmetic).
    #[serde(skip)]
    pub not_before_unix: i64,
    /// notAfter as Unix seconds.
    #[serde(skip)]
    pub not_after_unix: i64,
}

/// Formats Unix seconds as RFC 3339 UTC; out-of-range values fall back to the raw number.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

impl CertInfo {
    /// From a summary, evaluating validity at `now`.
    pub fn from_summary(s: CertSummary, now: SystemTime) -> Self {
        let t = unix_now(now);
        CertInfo {
            serial: s.serial_hex,
            not_before: rfc3339(s.not_before_unix),
            not_after: rfc3339(s.not_after_unix),
            subject: s.subject,
            issuer: s.issuer,
            sans: s.sans,
            valid: s.not_before_unix <= t && t <= s.not_after_unix,
            is_ca: s.is_ca,
            not_before_unix: s.not_before_unix,
            not_after_unix: s.not_after_unix,
        }
    }

    /// From a DER certificate.
    pub fn from_der(der: &[u8], now: SystemTime) -> Result<Self, TlsError> {
        Ok(Self::from_summary(CertSummary::from_der(der)?, now))
    }

    /// One entry per certificate in a PEM bundle (leaf first for a chain).
    pub fn from_pem(pem: &[u8], what: &str, now: SystemTime) -> Result<Vec<Self>, TlsError> {
        parse_certs(pem, what)?
            .iter()
            .map(|c| Self::from_der(c.as_ref(), now))
            .collect()
    }
}
