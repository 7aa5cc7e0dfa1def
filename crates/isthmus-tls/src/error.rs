//! Errors of this crate and the mapping of handshake failures to Envoy-like
//! "transport failure reasons" for the access log.

use std::io;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError, PeerIncompatible};

use crate::identity::IdentityError;

/// Errors while building TLS configurations or loading credentials.
///
/// Every variant names the thing that was being loaded (`what`: a file path, a secret name, ...)
/// so that an operator can tell which credential is broken.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source} (check that the file exists and is readable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The PEM text is malformed.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// What was being parsed.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// No `CERTIFICATE` block was found.
    #[error("{what}: no PEM CERTIFICATE block found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificates {
        /// What was being parsed.
        what: String,
    },
    /// No private key block was found.
    #[error(
        "{what}: no PEM private key found (expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
    )]
    NoPrivateKey {
        /// What was being parsed.
        what: String,
    },
    /// A certificate could not be parsed as X.509 or added to a trust store.
    #[error("{what}: invalid certificate: {reason}")]
    BadCertificate {
        /// What was being parsed.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// The private key type is not supported by the ring provider.
    #[error("{what}: unsupported private key: {reason}")]
    UnsupportedKey {
        /// What was being parsed.
        what: String,
        /// Provider message.
        reason: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("{what}: the private key does not match the certificate's public key")]
    KeyMismatch {
        /// What was being parsed.
        what: String,
    },
    /// A CRL could not be parsed.
    #[error("{what}: invalid CRL: {reason}")]
    BadCrl {
        /// What was being parsed.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// `min`/`max` protocol versions are unsupported or contradictory.
    #[error("invalid TLS protocol versions: {0}")]
    Versions(String),
    /// A server name (SNI) is not a valid DNS name or IP address.
    #[error("invalid TLS server name {name:?}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A certificate verifier could not be built (e.g. empty CA bundle).
    #[error("cannot build certificate verifier for {what}: {reason}")]
    Verifier {
        /// What the verifier is for.
        what: String,
        /// Builder message.
        reason: String,
    },
    /// An identity was malformed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Wraps the reason in the `TLS_error:|...:TLS_error_end` frame Envoy uses for
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, so log readers recognise it.
fn framed(code: &str, detail: &str) -> String {
    if detail.is_empty() {
        format!("TLS_error:|{code}:TLS_error_end")
    } else {
        format!("TLS_error:|{code}:{detail}:TLS_error_end")
    }
}

fn alert_code(alert: &AlertDescription) -> String {
    // Names follow BoringSSL's `SSL_R_*ALERT*` reason strings, which is what Envoy prints.
    let known = match alert {
        AlertDescription::BadCertificate => "SSLV3_ALERT_BAD_CERTIFICATE",
        AlertDescription::UnsupportedCertificate => "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        AlertDescription::CertificateRevoked => "SSLV3_ALERT_CERTIFICATE_REVOKED",
        AlertDescription::CertificateExpired => "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        AlertDescription::CertificateUnknown => "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        AlertDescription::HandshakeFailure => "SSLV3_ALERT_HANDSHAKE_FAILURE",
        AlertDescription::UnknownCA => "TLSV1_ALERT_UNKNOWN_CA",
        AlertDescription::AccessDenied => "TLSV1_ALERT_ACCESS_DENIED",
        AlertDescription::DecodeError => "TLSV1_ALERT_DECODE_ERROR",
        AlertDescription::DecryptError => "TLSV1_ALERT_DECRYPT_ERROR",
        AlertDescription::ProtocolVersion => "TLSV1_ALERT_PROTOCOL_VERSION",
        AlertDescription::InternalError => "TLSV1_ALERT_INTERNAL_ERROR",
        AlertDescription::UnrecognisedName => "TLSV1_ALERT_UNRECOGNIZED_NAME",
        AlertDescription::CertificateRequired => "TLSV1_ALERT_CERTIFICATE_REQUIRED",
        AlertDescription::NoApplicationProtocol => "TLSV1_ALERT_NO_APPLICATION_PROTOCOL",
        AlertDescription::IllegalParameter => "SSLV3_ALERT_ILLEGAL_PARAMETER",
        AlertDescription::UnexpectedMessage => "SSLV3_ALERT_UNEXPECTED_MESSAGE",
        _ => "",
    };
    if known.is_empty() {
        format!("TLS_ALERT_{alert:?}").to_ascii_uppercase()
    } else {
        known.to_string()
    }
}

fn cert_error_detail(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "unknown issuer (not signed by a trusted CA)".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate is not yet valid".into()
        }
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "certificate does not match the expected name (SAN mismatch)".into()
        }
        CertificateError::BadSignature => {
            "bad certificate signature (not signed by the trusted CA)".into()
        }
        CertificateError::BadEncoding => "malformed certificate".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not valid for this purpose (extended key usage)".into()
        }
        CertificateError::UnknownRevocationStatus => "revocation status unknown (no CRL)".into(),
        CertificateError::ApplicationVerificationFailure => "rejected by policy".into(),
        CertificateError::Other(other) => other.to_string(),
        other => format!("{other:?}"),
    }
}

/// Maps a rustls error to a short, Envoy-like transport failure reason for the `UF` access-log
/// field (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
///
/// Envoy prints BoringSSL's error queue, e.g.
/// `TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end`.
/// We keep the frame and BoringSSL's reason codes (`CERTIFICATE_VERIFY_FAILED`,
/// `TLSV1_ALERT_UNKNOWN_CA`, `WRONG_VERSION_NUMBER`, ...) so that people grepping logs for the
/// familiar words find them, but replace the numeric noise with a few words of explanation:
/// `TLS_error:|CERTIFICATE_VERIFY_FAILED:certificate has expired:TLS_error_end`.
pub fn failure_reason(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(e) => {
            framed("CERTIFICATE_VERIFY_FAILED", &cert_error_detail(e))
        }
        rustls::Error::AlertReceived(alert) => framed(&alert_code(alert), "alert from peer"),
        rustls::Error::NoCertificatesPresented => framed(
            "PEER_DID_NOT_RETURN_A_CERTIFICATE",
            "peer sent no certificate",
        ),
        rustls::Error::NoApplicationProtocol => {
            framed("NO_APPLICATION_PROTOCOL", "no common ALPN protocol")
        }
        rustls::Error::PeerIncompatible(p) => match p {
            PeerIncompatible::NoCipherSuitesInCommon => {
                framed("NO_SHARED_CIPHER", "no cipher suites in common")
            }
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => {
                framed("UNSUPPORTED_PROTOCOL", "no TLS version in common")
            }
            other => framed(
                "HANDSHAKE_FAILURE",
                &format!("peer incompatible: {other:?}"),
            ),
        },
        rustls::Error::InvalidMessage(_) => {
            framed("WRONG_VERSION_NUMBER", "peer did not speak TLS")
        }
        rustls::Error::PeerMisbehaved(m) => {
            framed("HANDSHAKE_FAILURE", &format!("peer misbehaved: {m:?}"))
        }
        rustls::Error::DecryptError => framed("DECRYPTION_FAILED", "bad record MAC"),
        rustls::Error::General(msg) => framed("HANDSHAKE_FAILURE", msg),
        other => framed("HANDSHAKE_FAILURE", &other.to_string()),
    }
}

/// Like [`failure_reason`] for the `io::Error` that tokio-rustls returns from a handshake.
///
/// tokio-rustls wraps the rustls error inside the `io::Error`; other I/O failures (reset, EOF)
/// are reported the way Envoy reports them for a TCP-level failure.
pub fn failure_reason_io(err: &io::Error) -> String {
    if let Some(inner) = err.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return failure_reason(tls);
        }
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => framed(
            "UNEXPECTED_EOF",
            "connection closed by peer during handshake",
        ),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
        io::ErrorKind::TimedOut => "TLS handshake timeout".to_string(),
        _ => err.to_string(),
    }
}

/// Returns the rustls error inside an `io::Error` from tokio-rustls, if any.
pub fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_framed_and_recognisable() {
        let r = failure_reason(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(
            r.starts_with("TLS_error:|CERTIFICATE_VERIFY_FAILED:"),
            "{r}"
        );
        assert!(r.ends_with(":TLS_error_end"), "{r}");
        let r = failure_reason(&rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        assert!(r.contains("TLSV1_ALERT_UNKNOWN_CA"), "{r}");
        let r = failure_reason(&rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert!(r.contains("TLSV1_ALERT_CERTIFICATE_REQUIRED"), "{r}");
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert!(failure_reason_io(&io).contains("expired"));
        assert!(rustls_error(&io).is_some());
    }
}
