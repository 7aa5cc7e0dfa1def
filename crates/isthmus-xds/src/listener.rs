//! Listeners (`envoy.config.listener.v3.Listener`) and their network filters.

use crate::core::{is_false, Address, ConfigSource, Metadata};
use crate::route::RouteConfiguration;
use crate::tls::TransportSocket;
use crate::Duration;
use serde::{Deserialize, Serialize};

pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub address: Address,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filter_chains: Vec<FilterChain>,
    /// Used when no filter chain matches (sidecar per-port listeners: `PassthroughFilterChain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listener_filters: Vec<ListenerFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_filters_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "is_false")]
    pub continue_on_listener_filters_timeout: bool,
    /// Hand captured connections to the listener bound to their original destination
    /// (`virtualOutbound` on 15001).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_original_dst: Option<bool>,
    /// `false` for sidecar per-port outbound listeners: they only receive connections handed
    /// over by `virtualOutbound`, they do not bind a socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_to_port: Option<bool>,
    /// `INBOUND` / `OUTBOUND` (absent on gateways).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub traffic_direction: String,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

impl Listener {
    /// The listener's port.
    pub fn port(&self) -> u32 {
        self.address.socket_address.port_value
    }
    /// Whether it owns a socket (false for per-port sidecar listeners reached via 15001).
    pub fn binds(&self) -> bool {
        self.bind_to_port.unwrap_or(true)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerFilter {
    pub name: String,
    #[serde(default)]
    pub typed_config: serde_json::Value,
}

impl ListenerFilter {
    pub fn tls_inspector() -> ListenerFilter {
        ListenerFilter {
            name: TLS_INSPECTOR.into(),
            typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}),
        }
    }
    pub fn http_inspector() -> ListenerFilter {
        ListenerFilter {
            name: HTTP_INSPECTOR.into(),
            typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}),
        }
    }
    pub fn original_dst() -> ListenerFilter {
        ListenerFilter {
            name: ORIGINAL_DST.into(),
            typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FilterChain {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_chain_match: Option<FilterChainMatch>,
    pub filters: Vec<Filter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_socket_connect_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

impl FilterChain {
    pub fn tcp_proxy(&self) -> Option<&TcpProxy> {
        self.filters.iter().find_map(|f| match &f.typed_config {
            NetworkFilterConfig::TcpProxy(t) => Some(t),
            _ => None,
        })
    }
    pub fn http_connection_manager(&self) -> Option<&HttpConnectionManager> {
        self.filters.iter().find_map(|f| match &f.typed_config {
            NetworkFilterConfig::HttpConnectionManager(h) => Some(&**h),
            _ => None,
        })
    }
    /// Server names this chain matches (empty = any).
    pub fn server_names(&self) -> &[String] {
        self.filter_chain_match
            .as_ref()
            .map(|m| m.server_names.as_slice())
            .unwrap_or(&[])
    }
}

/// `envoy.config.listener.v3.FilterChainMatch`; every set criterion must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FilterChainMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<CidrRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transport_protocol: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<CidrRange>,
}

impl FilterChainMatch {
    pub fn is_empty(&self) -> bool {
        *self == FilterChainMatch::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CidrRange {
    pub address_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub name: String,
    pub typed_config: NetworkFilterConfig,
}

impl Filter {
    pub fn tcp_proxy(t: TcpProxy) -> Filter {
        Filter {
            name: TCP_PROXY.into(),
            typed_config: NetworkFilterConfig::TcpProxy(t),
        }
    }
    pub fn http_connection_manager(h: HttpConnectionManager) -> Filter {
        Filter {
            name: HTTP_CONNECTION_MANAGER.into(),
            typed_config: NetworkFilterConfig::HttpConnectionManager(Box::new(h)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "@type")]
#[allow(clippy::large_enum_variant)]
pub enum NetworkFilterConfig {
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")]
    TcpProxy(TcpProxy),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    )]
    HttpConnectionManager(Box<HttpConnectionManager>),
}

/// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpProxy {
    pub stat_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<TcpWeightedClusters>,
    /// Idle timeout (Istio default 1h when unset; `0s` disables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_downstream_connection_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata_match: Metadata,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpWeightedClusters {
    pub clusters: Vec<TcpClusterWeight>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpClusterWeight {
    pub name: String,
    pub weight: u32,
}

/// `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rds: Option<Rds>,
    /// Inline route table (used instead of RDS by inbound chains).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_config: Option<RouteConfiguration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<HttpFilter>,
    /// `AUTO` (default, absent), `HTTP1`, `HTTP2`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub codec_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_remote_address: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xff_num_trusted_hops: Option<u32>,
    /// `SANITIZE_SET` on gateways, `APPEND_FORWARD` on sidecars.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub forward_client_cert_details: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_current_client_cert_details: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path_with_escaped_slashes_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgrade_configs: Vec<UpgradeConfig>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<crate::cluster::CommonHttpProtocolOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rds {
    pub config_source: ConfigSource,
    pub route_config_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFilter {
    pub name: String,
    #[serde(default)]
    pub typed_config: serde_json::Value,
}

impl HttpFilter {
    pub fn router() -> HttpFilter {
        HttpFilter {
            name: "envoy.filters.http.router".into(),
            typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}),
        }
    }

    /// The HCM filter list istiod writes (`buildHTTPConnectionManager`): CORS, fault, router, in
    /// that order, on every HTTP connection manager. The CORS and fault filters do nothing
    /// until a route's `typedPerFilterConfig` configures them (VirtualService `corsPolicy` /
    /// `fault`), and CORS before fault means a fault abort still carries the CORS headers.
    pub fn istio_chain() -> Vec<HttpFilter> {
        vec![
            HttpFilter {
                name: crate::route::CORS_FILTER.into(),
                typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}),
            },
            HttpFilter {
                name: crate::route::FAULT_FILTER.into(),
                typed_config: serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}),
            },
            HttpFilter::router(),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
}
