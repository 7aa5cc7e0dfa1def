//! Shared Envoy core types (`envoy.config.core.v3`, `envoy.type.matcher.v3`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// `envoy.config.core.v3.Address`; only socket addresses are used by isthmus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Address {
    pub socket_address: SocketAddress,
}

impl Address {
    pub fn new(address: impl Into<String>, port: u32) -> Address {
        Address {
            socket_address: SocketAddress {
                address: address.into(),
                port_value: port,
                protocol: None,
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SocketAddress {
    pub address: String,
    pub port_value: u32,
    /// `UDP` for QUIC listeners; absent means TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Empty message (`{}`), e.g. `ads: {}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `envoy.config.core.v3.ConfigSource`: where a resource (EDS, RDS, SDS) is fetched from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ads: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_config_source: Option<ApiConfigSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_fetch_timeout: Option<crate::Duration>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_api_version: String,
}

impl ConfigSource {
    /// The ADS source istiod uses for EDS/RDS/credentialName SDS (`ads: {}`, 0s, V3).
    pub fn ads() -> ConfigSource {
        ConfigSource {
            ads: Some(Empty {}),
            api_config_source: None,
            initial_fetch_timeout: Some(crate::Duration::ZERO),
            resource_api_version: "V3".into(),
        }
    }
    /// The agent's SDS server (`sds-grpc` cluster), used for `default` / `ROOTCA`.
    pub fn sds_grpc() -> ConfigSource {
        ConfigSource {
            ads: None,
            api_config_source: Some(ApiConfigSource {
                api_type: "GRPC".into(),
                set_node_on_first_message_only: true,
                transport_api_version: "V3".into(),
                grpc_services: vec![GrpcService {
                    envoy_grpc: EnvoyGrpc {
                        cluster_name: "sds-grpc".into(),
                    },
                }],
            }),
            initial_fetch_timeout: Some(crate::Duration::ZERO),
            resource_api_version: "V3".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiConfigSource {
    pub api_type: String,
    #[serde(skip_serializing_if = "is_false")]
    pub set_node_on_first_message_only: bool,
    pub transport_api_version: String,
    pub grpc_services: Vec<GrpcService>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcService {
    pub envoy_grpc: EnvoyGrpc,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyGrpc {
    pub cluster_name: String,
}

/// `envoy.config.core.v3.DataSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Base64 in JSON, as protojson prints `bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_bytes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatcher {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn exact(s: impl Into<String>) -> StringMatcher {
        StringMatcher {
            exact: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn prefix(s: impl Into<String>) -> StringMatcher {
        StringMatcher {
            prefix: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn regex(s: impl Into<String>) -> StringMatcher {
        StringMatcher {
            safe_regex: Some(RegexMatcher { regex: s.into() }),
            ..Default::default()
        }
    }
}

/// `envoy.type.matcher.v3.RegexMatcher` (RE2; full-string match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexMatcher {
    pub regex: String,
}

/// `envoy.type.v3.Percent`. Printed as protojson does: `{}` for 0, integers without `.0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Percent {
    #[serde(skip_serializing_if = "is_zero_f64", serialize_with = "ser_number")]
    pub value: f64,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn ser_number<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// `envoy.config.core.v3.Metadata`. Struct keys inside are not camelCased.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metadata {
    #[serde(skip_serializing_if = "FilterMetadata::is_empty")]
    pub filter_metadata: FilterMetadata,
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.filter_metadata.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterMetadata {
    /// Istio's own namespace: config origin, subset, services (telemetry), external.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioMetadata>,
    /// Endpoint metadata used by `transportSocketMatches` (`{tlsMode: istio}`).
    #[serde(
        rename = "envoy.transport_socket_match",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub transport_socket_match: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl FilterMetadata {
    pub fn is_empty(&self) -> bool {
        self.istio.is_none() && self.transport_socket_match.is_empty() && self.other.is_empty()
    }
}

/// `filterMetadata.istio` as istiod writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IstioMetadata {
    /// `/apis/networking.istio.io/v1/namespaces/NS/destination-rule/NAME` (or virtual-service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceMetadata>,
    /// MESH_EXTERNAL ServiceEntry services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// `"false"` when the effective DR TLS mode is SIMPLE or MUTUAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn_override: Option<String>,
    /// Endpoint metadata: `name;namespace;app;version;cluster` of the workload (telemetry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceMetadata {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// The proxy's identity, as sent in the xDS `Node` message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    /// `sidecar~IP~POD.NS~NS.svc.DOMAIN` or `router~IP~POD.NS~NS.svc.DOMAIN`.
    pub id: String,
    /// `<workload name>.<namespace>` (Envoy's service cluster).
    pub cluster: String,
    pub metadata: NodeMetadata,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct NodeMetadata {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instance_ips: Vec<String>,
    /// `sidecar` or `router`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trust_domain: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// The workload's own SPIFFE identity (`spiffe://TD/ns/NS/sa/SA`), for the CA/SDS.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub spiffe_id: String,
}
