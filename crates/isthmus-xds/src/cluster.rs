//! Clusters (`envoy.config.cluster.v3.Cluster`) and endpoints
//! (`envoy.config.endpoint.v3.ClusterLoadAssignment`).

use crate::core::{is_false, Address, ConfigSource, Metadata, Percent};
use crate::tls::{TransportSocket, TransportSocketMatch};
use crate::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Cluster discovery type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryType {
    /// Endpoints from `ProxyConfig.endpoints` (ClusterLoadAssignment of the same name).
    #[default]
    Eds,
    /// Endpoints inline in `loadAssignment`.
    Static,
    /// Inline hostnames resolved continuously, all addresses used.
    StrictDns,
    /// Inline hostname resolved per new connection, first address used.
    LogicalDns,
    /// Connect to the connection's original destination (SO_ORIGINAL_DST / x-envoy-original-dst-host).
    OriginalDst,
}

impl DiscoveryType {
    pub fn as_str(&self) -> &'static str {
        match self {
            DiscoveryType::Eds => "EDS",
            DiscoveryType::Static => "STATIC",
            DiscoveryType::StrictDns => "STRICT_DNS",
            DiscoveryType::LogicalDns => "LOGICAL_DNS",
            DiscoveryType::OriginalDst => "ORIGINAL_DST",
        }
    }
    pub fn is_static(&self) -> bool {
        *self == DiscoveryType::Static
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Cluster {
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "DiscoveryType::is_static")]
    pub r#type: DiscoveryType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eds_cluster_config: Option<EdsClusterConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// `LEAST_REQUEST`, `RANDOM`, `RING_HASH`, `MAGLEV`, `CLUSTER_PROVIDED`; empty means
    /// `ROUND_ROBIN` (protobuf's zero value, which istioctl does not print).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lb_policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connection_options: Option<UpstreamConnectionOptions>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typed_extension_protocol_options: BTreeMap<String, HttpProtocolOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_lb_config: Option<CommonLbConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<TransportSocketMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// `V4_ONLY`, `V6_ONLY`, `ALL` (DNS clusters).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dns_lookup_family: String,
    #[serde(skip_serializing_if = "is_false")]
    pub respect_dns_ttl: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    /// ORIGINAL_DST clusters: how long unused hosts are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_dst_lb_config: Option<OriginalDstLbConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_lb_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Upstream network filters (Istio adds TCP metadata exchange to mesh clusters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<ClusterFilter>,
}

impl Cluster {
    /// The HTTP protocol options, if any.
    pub fn http_protocol_options(&self) -> Option<&HttpProtocolOptions> {
        self.typed_extension_protocol_options
            .get(HTTP_PROTOCOL_OPTIONS_KEY)
    }
    /// The first circuit-breaker threshold (priority DEFAULT).
    pub fn default_thresholds(&self) -> Option<&Thresholds> {
        self.circuit_breakers
            .as_ref()
            .and_then(|c| c.thresholds.first())
    }
    /// `(direction, port, subset, host)` parsed from an Istio cluster name `dir|port|subset|host`.
    pub fn parse_name(&self) -> Option<(&str, u32, &str, &str)> {
        parse_cluster_name(&self.name)
    }
}

/// Splits `outbound|443|subset|host` into its parts; `None` for non-service clusters.
pub fn parse_cluster_name(name: &str) -> Option<(&str, u32, &str, &str)> {
    let mut it = name.splitn(4, '|');
    let dir = it.next()?;
    let port = it.next()?.parse().ok()?;
    let subset = it.next()?;
    let host = it.next()?;
    Some((dir, port, subset, host))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdsClusterConfig {
    pub eds_config: ConfigSource,
    pub service_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginalDstLbConfig {
    #[serde(skip_serializing_if = "is_false")]
    pub use_http_header: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub http_header_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitBreakers {
    pub thresholds: Vec<Thresholds>,
}

/// Circuit-breaker limits; Istio always sets all four (4294967295 when the DR says nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Thresholds {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pub track_remaining: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamConnectionOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Socket keepalive (SO_KEEPALIVE, TCP_KEEPCNT/KEEPIDLE/KEEPINTVL); times in whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_probes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<u32>,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` (with its `@type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpProtocolOptions {
    #[serde(rename = "@type")]
    pub type_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_http_protocol_options: Option<UpstreamHttpProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_http_config: Option<ExplicitHttpConfig>,
    /// Use whatever protocol the downstream used (HTTP/1.1 or h2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_downstream_protocol_config: Option<UseDownstreamProtocolConfig>,
}

impl Default for HttpProtocolOptions {
    fn default() -> Self {
        HttpProtocolOptions {
            type_url: HTTP_PROTOCOL_OPTIONS_TYPE.into(),
            common_http_protocol_options: None,
            upstream_http_protocol_options: None,
            explicit_http_config: None,
            use_downstream_protocol_config: None,
        }
    }
}

impl HttpProtocolOptions {
    /// Whether the upstream must speak HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.explicit_http_config
            .as_ref()
            .is_some_and(|e| e.http2_protocol_options.is_some())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommonHttpProtocolOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamHttpProtocolOptions {
    #[serde(skip_serializing_if = "is_false")]
    pub auto_sni: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub auto_san_validation: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExplicitHttpConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<crate::core::Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UseDownstreamProtocolConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<crate::core::Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Http2ProtocolOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_keepalive: Option<KeepaliveSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeepaliveSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// `envoy.config.cluster.v3.OutlierDetection`; unset fields take Envoy's defaults
/// (consecutive5xx 5, interval 10s, baseEjectionTime 30s, maxEjectionPercent 10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xx", skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(
        rename = "enforcingConsecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    pub enforcing_consecutive_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcing_success_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pub split_external_local_origin_errors: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcing_local_origin_success_rate: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommonLbConfig {
    /// Below this healthy percentage Envoy ignores health (panic mode); 0 disables panic mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFilter {
    pub name: String,
    #[serde(default)]
    pub typed_config: serde_json::Value,
}

/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

impl ClusterLoadAssignment {
    /// All endpoints, flattened.
    pub fn lb_endpoints(&self) -> impl Iterator<Item = &LbEndpoint> {
        self.endpoints.iter().flat_map(|l| l.lb_endpoints.iter())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLbEndpoints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    pub lb_endpoints: Vec<LbEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Locality {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
    /// `HEALTHY` etc.; absent = unknown (treated as healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Endpoint {
    pub address: Address,
    /// For DNS endpoints: the hostname that was resolved.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
}
