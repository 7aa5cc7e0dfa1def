//! What a finished handshake tells us about the peer (for logs, metrics and `isthmus echo`).

use rustls::CommonState;
use serde::Serialize;

use crate::identity::Identity;
use crate::version::TlsVersion;
use crate::x509::CertSummary;

/// Summary of the peer's leaf certificate, if it sent one.
pub fn peer_certificate(conn: &CommonState) -> Option<CertSummary> {
    let leaf = conn.peer_certificates()?.first()?;
    CertSummary::from_der(leaf.as_ref()).ok()
}

/// The peer's SPIFFE ID: its first `spiffe://` URI SAN, as Istio's `istio_authn` filter takes
/// it for `source_principal`/`destination_principal`. `None` without a certificate or SPIFFE SAN.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<String> {
    crate::x509::spiffe_id_of_der(conn.peer_certificates()?.first()?.as_ref())
}

/// The peer's SPIFFE ID parsed as an Istio identity (`None` if absent or not Istio-shaped).
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    Identity::parse(&peer_spiffe_id(conn)?).ok()
}

/// The peer certificate's subject (`CN=..., O=...`), if any.
pub fn peer_subject(conn: &CommonState) -> Option<String> {
    Some(peer_certificate(conn)?.subject)
}

/// Negotiated session parameters and peer identity, ready for access logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// SNI the client sent (server side only).
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// `TLSv1.2` / `TLSv1.3`.
    pub version: Option<&'static str>,
    /// Cipher suite name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: Option<String>,
    /// Peer SPIFFE ID (first `spiffe://` URI SAN).
    pub peer_spiffe_id: Option<String>,
    /// Peer subject.
    pub peer_subject: Option<String>,
    /// Peer leaf serial (hex).
    pub peer_serial: Option<String>,
}

impl SessionInfo {
    fn from_common(conn: &CommonState, sni: Option<String>) -> Self {
        let peer = peer_certificate(conn);
        SessionInfo {
            sni,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: conn.protocol_version().and_then(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12.log_name()),
                rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13.log_name()),
                _ => None,
            }),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str().map(str::to_string)),
            peer_spiffe_id: peer
                .as_ref()
                .and_then(|p| p.spiffe_id().map(str::to_string)),
            peer_subject: peer.as_ref().map(|p| p.subject.clone()),
            peer_serial: peer.map(|p| p.serial_hex),
        }
    }

    /// From a server-side connection (includes the SNI).
    pub fn from_server(conn: &rustls::ServerConnection) -> Self {
        Self::from_common(conn, conn.server_name().map(str::to_string))
    }

    /// From a client-side connection.
    pub fn from_client(conn: &rustls::ClientConnection) -> Self {
        Self::from_common(conn, None)
    }
}
