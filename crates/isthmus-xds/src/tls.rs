//! Transport sockets and TLS contexts (`envoy.extensions.transport_sockets.tls.v3`) and SDS
//! secrets.

use crate::core::{ConfigSource, DataSource, StringMatcher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// `envoy.config.core.v3.TransportSocket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportSocket {
    pub name: String,
    pub typed_config: TransportSocketConfig,
}

impl TransportSocket {
    pub fn upstream_tls(ctx: UpstreamTlsContext) -> TransportSocket {
        TransportSocket {
            name: TLS_TRANSPORT_SOCKET.into(),
            typed_config: TransportSocketConfig::UpstreamTls(ctx),
        }
    }
    pub fn downstream_tls(ctx: DownstreamTlsContext) -> TransportSocket {
        TransportSocket {
            name: TLS_TRANSPORT_SOCKET.into(),
            typed_config: TransportSocketConfig::DownstreamTls(ctx),
        }
    }
    pub fn raw_buffer() -> TransportSocket {
        TransportSocket {
            name: RAW_BUFFER_TRANSPORT_SOCKET.into(),
            typed_config: TransportSocketConfig::RawBuffer {},
        }
    }
    pub fn as_upstream_tls(&self) -> Option<&UpstreamTlsContext> {
        match &self.typed_config {
            TransportSocketConfig::UpstreamTls(c) => Some(c),
            _ => None,
        }
    }
    pub fn as_downstream_tls(&self) -> Option<&DownstreamTlsContext> {
        match &self.typed_config {
            TransportSocketConfig::DownstreamTls(c) => Some(c),
            _ => None,
        }
    }
}

/// The typed config of a transport socket, tagged by `@type` exactly as Envoy prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "@type")]
pub enum TransportSocketConfig {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    )]
    UpstreamTls(UpstreamTlsContext),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    )]
    DownstreamTls(DownstreamTlsContext),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    )]
    RawBuffer {},
}

/// Client side TLS (TLS origination).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    /// SNI sent in the ClientHello; empty = none (or autoSni from HttpProtocolOptions).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sni: String,
}

/// Server side TLS (termination).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DownstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_client_certificate: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommonTlsContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_params: Option<TlsParameters>,
    /// Inline/file certificates (rare in Istio; SDS is the norm).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Certificate + key by SDS name: `default`, `kubernetes://NAME`, `file-cert:CERT~KEY`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<CertificateValidationContext>,
    /// Trust bundle by SDS name: `ROOTCA`, `kubernetes://NAME-cacert`, `file-root:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_context_sds_secret_config: Option<SdsSecretConfig>,
    /// Static checks (SANs) combined with an SDS trust bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combined_validation_context: Option<CombinedValidationContext>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
}

impl CommonTlsContext {
    /// Every SDS secret name this context refers to (certificates first, then trust bundles).
    pub fn sds_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        if let Some(s) = &self.validation_context_sds_secret_config {
            v.push(&s.name);
        }
        if let Some(c) = &self.combined_validation_context {
            v.push(&c.validation_context_sds_secret_config.name);
        }
        v
    }

    /// The SAN matchers that apply to the peer certificate, wherever they are configured.
    pub fn match_subject_alt_names(&self) -> &[StringMatcher] {
        if let Some(c) = &self.combined_validation_context {
            return &c.default_validation_context.match_subject_alt_names;
        }
        if let Some(v) = &self.validation_context {
            return &v.match_subject_alt_names;
        }
        &[]
    }

    /// The trust-bundle SDS name, if any.
    pub fn validation_sds_name(&self) -> Option<&str> {
        if let Some(c) = &self.combined_validation_context {
            return Some(&c.validation_context_sds_secret_config.name);
        }
        self.validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsParameters {
    /// `TLSv1_2`, `TLSv1_3`, ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_minimum_protocol_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_maximum_protocol_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SdsSecretConfig {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sds_config: Option<ConfigSource>,
}

impl SdsSecretConfig {
    /// `default` / `ROOTCA` and file-based names are served by the agent over `sds-grpc`;
    /// credentialName (`kubernetes://`) secrets come from istiod over ADS.
    pub fn named(name: impl Into<String>) -> SdsSecretConfig {
        let name = name.into();
        let src = if name.starts_with("kubernetes://")
            || name.starts_with("kubernetes-gateway://")
            || name.starts_with("configmap://")
        {
            ConfigSource::ads()
        } else {
            ConfigSource::sds_grpc()
        };
        SdsSecretConfig {
            name,
            sds_config: Some(src),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CombinedValidationContext {
    pub default_validation_context: CertificateValidationContext,
    pub validation_context_sds_secret_config: SdsSecretConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CertificateValidationContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<DataSource>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_subject_alt_names: Vec<StringMatcher>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<DataSource>,
    /// `ACCEPT_UNTRUSTED` when DR `insecureSkipVerify: true`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trust_chain_verification: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsCertificate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<DataSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<DataSource>,
}

/// An SDS secret (`envoy.extensions.transport_sockets.tls.v3.Secret`): either a certificate with
/// key or a validation context (trust bundle). Secrets from `credentialName` carry the
/// Kubernetes Secret's data inline; `default`/`ROOTCA` are filled by the workload CA at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Secret {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<TlsCertificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<CertificateValidationContext>,
}

/// `transportSocketMatches[]` entry: endpoints whose metadata contains `match` use this socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportSocketMatch {
    pub name: String,
    #[serde(default)]
    pub r#match: BTreeMap<String, String>,
    pub transport_socket: TransportSocket,
}
