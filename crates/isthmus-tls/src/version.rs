//! TLS protocol version bounds (`tlsParams.tlsMinimumProtocolVersion` / `...Maximum...`).

use std::fmt;
use std::str::FromStr;

use rustls::SupportedProtocolVersion;

use crate::error::TlsError;

/// A TLS protocol version rustls can speak. TLS 1.0/1.1 are not supported by rustls; asking
/// for them is a configuration error rather than a silent upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 (`TLSv1_2`).
    Tls12,
    /// TLS 1.3 (`TLSv1_3`).
    Tls13,
}

impl TlsVersion {
    /// Parses Istio/Envoy spellings: `TLSv1_2`, `TLSv1_3`; `TLS_AUTO` gives `None` (the default).
    pub fn parse_istio(s: &str) -> Result<Option<TlsVersion>, TlsError> {
        match s {
            "TLS_AUTO" | "" => Ok(None),
            "TLSv1_2" | "TLSV1_2" => Ok(Some(TlsVersion::Tls12)),
            "TLSv1_3" | "TLSV1_3" => Ok(Some(TlsVersion::Tls13)),
            "TLSv1_0" | "TLSv1_1" | "TLSV1_0" | "TLSV1_1" => Err(TlsError::Versions(format!(
                "{s} is not supported (only TLSv1_2 and TLSv1_3 are available)"
            ))),
            other => Err(TlsError::Versions(format!(
                "unknown protocol version {other:?} (expected TLS_AUTO, TLSv1_2 or TLSv1_3)"
            ))),
        }
    }

    /// The name as shown in access logs (`%DOWNSTREAM_TLS_VERSION%`): `TLSv1.2` / `TLSv1.3`.
    pub fn log_name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1_2",
            TlsVersion::Tls13 => "TLSv1_3",
        })
    }
}

impl FromStr for TlsVersion {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        TlsVersion::parse_istio(s)?
            .ok_or_else(|| TlsError::Versions("TLS_AUTO is not a concrete version".to_string()))
    }
}

/// The rustls versions between `min` and `max` (defaults TLSv1_2..TLSv1_3).
pub fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    if min > max {
        return Err(TlsError::Versions(format!(
            "minimum version {min} is above maximum version {max}"
        )));
    }
    let mut out = Vec::new();
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        assert_eq!(TlsVersion::parse_istio("TLS_AUTO").unwrap(), None);
        assert_eq!(
            TlsVersion::parse_istio("TLSv1_3").unwrap(),
            Some(TlsVersion::Tls13)
        );
        assert!(TlsVersion::parse_istio("TLSv1_1").is_err());
        assert_eq!(protocol_versions(None, None).unwrap().len(), 2);
        assert_eq!(
            protocol_versions(Some(TlsVersion::Tls13), None).unwrap(),
            vec![&rustls::version::TLS13]
        );
        assert_eq!(
            protocol_versions(None, Some(TlsVersion::Tls12)).unwrap(),
            vec![&rustls::version::TLS12]
        );
        assert!(protocol_versions(Some(TlsVersion::Tls13), Some(TlsVersion::Tls12)).is_err());
    }
}
