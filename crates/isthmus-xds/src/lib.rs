//! isthmus-xds: the per-proxy configuration IR in Envoy's shape.
//!
//! These types serialise to exactly the JSON `istioctl proxy-config ... -o json` prints
//! (lowerCamelCase field names, `@type` on typed configs, empty fields omitted), so the seeds'
//! `jq` filters work unchanged on isthmus output. They are also the contract with the data
//! plane: `isthmus-proxy` consumes a [`ProxyConfig`] and nothing else, so every setting needed to
//! carry traffic (addresses, SNI, ALPN, SDS names, limits, timeouts, keepalive, outlier
//! detection, route actions, direct responses, original-destination use) lives here.
//!
//! Compatibility rule: changes to this crate are additive only.

pub mod cluster;
pub mod core;
pub mod duration;
pub mod listener;
pub mod route;
pub mod tls;

pub use cluster::{
    parse_cluster_name, CircuitBreakers, Cluster, ClusterLoadAssignment, CommonHttpProtocolOptions,
    CommonLbConfig, DiscoveryType, EdsClusterConfig, Endpoint, ExplicitHttpConfig,
    Http2ProtocolOptions, HttpProtocolOptions, LbEndpoint, LocalityLbEndpoints, OutlierDetection,
    TcpKeepalive, Thresholds, UpstreamConnectionOptions, UpstreamHttpProtocolOptions,
    HTTP_PROTOCOL_OPTIONS_KEY,
};
pub use core::{
    Address, ConfigSource, DataSource, IstioMetadata, Metadata, Node, NodeMetadata, Percent,
    ServiceMetadata, StringMatcher,
};
pub use duration::{Duration, DurationError};
pub use listener::{
    Filter, FilterChain, FilterChainMatch, HttpConnectionManager, Listener, ListenerFilter,
    NetworkFilterConfig, Rds, TcpProxy,
};
pub use route::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
pub use tls::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TransportSocket,
    TransportSocketConfig, TransportSocketMatch, UpstreamTlsContext,
};

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Well-known cluster and listener names istiod uses.
pub mod names {
    pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
    pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
    pub const INBOUND_PASSTHROUGH_CLUSTER_IPV4: &str = "InboundPassthroughClusterIpv4";
    pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
    pub const VIRTUAL_INBOUND: &str = "virtualInbound";
    pub const PASSTHROUGH_FILTER_CHAIN: &str = "PassthroughFilterChain";
    pub const VIRTUAL_OUTBOUND_CATCHALL_TCP: &str = "virtualOutbound-catchall-tcp";
    pub const VIRTUAL_OUTBOUND_BLACKHOLE: &str = "virtualOutbound-blackhole";
    pub const ALLOW_ANY: &str = "allow_any";
    pub const BLOCK_ALL: &str = "block_all";
    pub const SDS_DEFAULT: &str = "default";
    pub const SDS_ROOTCA: &str = "ROOTCA";
    pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
    pub const VIRTUAL_INBOUND_PORT: u32 = 15006;
}

/// Whether the proxy is a sidecar or a gateway (Envoy's "router" mode in Istio).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    #[default]
    Sidecar,
    Router,
}

/// Everything one proxy needs, as one versioned bundle (what istiod pushes over CDS/EDS/LDS/RDS/SDS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    /// Content version: changes whenever anything in the bundle changes.
    pub version: String,
    pub node: Node,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfiguration>,
    /// Shared (`Arc`): proxies compiled from one snapshot reuse the clusters and endpoint
    /// assignments that do not depend on the proxy (30k clusters per proxy in a mesh of 10k
    /// services). Serialised as plain objects; edit one with `Arc::make_mut`.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "arc_vec")]
    pub clusters: Vec<Arc<Cluster>>,
    #[serde(skip_serializing_if = "Vec::is_empty", with = "arc_vec")]
    pub endpoints: Vec<Arc<ClusterLoadAssignment>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
}

/// Serde for `Vec<Arc<T>>` as a plain list of `T` (without serde's `rc` feature, which would
/// change serde's features, and so rebuild every crate using serde, across the workspace).
pub(crate) mod arc_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer, T: Serialize>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }

    /// A borrowed `[Arc<T>]` that serialises like `[T]`.
    pub struct Seq<'a, T>(pub &'a [Arc<T>]);

    impl<T: Serialize> Serialize for Seq<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// Serde for `Arc<T>` as `T` (see [`arc_vec`]).
pub(crate) mod arc_val {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer, T: Serialize>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
        (**v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Arc<T>, D::Error> {
        Ok(Arc::new(T::deserialize(d)?))
    }
}

/// Serde for `Option<Arc<T>>` as `Option<T>` (see [`arc_vec`]).
mod arc_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_some(&**x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Arc<T>>, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map(Arc::new))
    }
}

impl ProxyConfig {
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name).map(|c| &**c)
    }
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
    pub fn route(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|r| r.name == name)
    }
    pub fn endpoints_for(&self, cluster: &str) -> Option<&ClusterLoadAssignment> {
        // Compiled configs keep endpoints sorted by name: binary search first, and fall back to
        // a scan for configs from elsewhere (a data-plane conversion asks once per cluster,
        // which a scan makes quadratic at 30k clusters).
        if let Ok(i) = self
            .endpoints
            .binary_search_by(|e| e.cluster_name.as_str().cmp(cluster))
        {
            return Some(&self.endpoints[i]);
        }
        self.endpoints
            .iter()
            .find(|e| e.cluster_name == cluster)
            .map(|e| &**e)
    }
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name == name)
    }
    /// The endpoints of a cluster wherever they live: EDS assignment or inline loadAssignment.
    pub fn cluster_endpoints<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> Option<&'a ClusterLoadAssignment> {
        match cluster.r#type {
            DiscoveryType::Eds => {
                let svc = cluster
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&cluster.name);
                self.endpoints_for(svc)
            }
            _ => cluster.load_assignment.as_ref(),
        }
    }
    /// A content hash (FNV-1a over the canonical JSON of everything but `version`, hex).
    /// Streams the serialisation: no copy of the config is made.
    pub fn content_hash(&self) -> String {
        struct Fnv(u64);
        impl std::io::Write for Fnv {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                for b in buf {
                    self.0 ^= *b as u64;
                    self.0 = self.0.wrapping_mul(0x100000001b3);
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Fnv(0xcbf29ce484222325);
        let _ = serde_json::to_writer(
            &mut h,
            &(
                &self.node,
                &self.listeners,
                &self.routes,
                arc_vec::Seq(&self.clusters),
                arc_vec::Seq(&self.endpoints),
                &self.secrets,
            ),
        );
        format!("{:016x}", h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_json_shape_matches_istioctl() {
        let mut c = Cluster {
            name: "outbound|443||api.partner.example".into(),
            r#type: DiscoveryType::Eds,
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: ConfigSource::ads(),
                service_name: "outbound|443||api.partner.example".into(),
            }),
            connect_timeout: Some(Duration::from_secs(3)),
            lb_policy: "LEAST_REQUEST".into(),
            circuit_breakers: Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    max_connections: Some(222),
                    max_pending_requests: Some(u32::MAX),
                    max_requests: Some(u32::MAX),
                    max_retries: Some(u32::MAX),
                    track_remaining: true,
                    priority: None,
                }],
            }),
            upstream_connection_options: Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: Some(3),
                    keepalive_time: Some(300),
                    keepalive_interval: Some(30),
                }),
            }),
            common_lb_config: Some(CommonLbConfig::default()),
            ..Default::default()
        };
        c.metadata.filter_metadata.istio = Some(IstioMetadata {
            config: Some("/apis/networking.istio.io/v1/namespaces/x/destination-rule/y".into()),
            ..Default::default()
        });
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "EDS");
        assert_eq!(v["connectTimeout"], "3s");
        assert_eq!(v["circuitBreakers"]["thresholds"][0]["maxConnections"], 222);
        assert_eq!(
            v["circuitBreakers"]["thresholds"][0]["trackRemaining"],
            true
        );
        assert_eq!(
            v["upstreamConnectionOptions"]["tcpKeepalive"],
            json!({"keepaliveProbes": 3, "keepaliveTime": 300, "keepaliveInterval": 30})
        );
        assert_eq!(
            v["edsClusterConfig"]["edsConfig"],
            json!({"ads": {}, "initialFetchTimeout": "0s", "resourceApiVersion": "V3"})
        );
        assert_eq!(v["commonLbConfig"], json!({}));
        assert!(v.get("transportSocket").is_none());
        assert_eq!(
            v["metadata"]["filterMetadata"]["istio"]["config"],
            "/apis/networking.istio.io/v1/namespaces/x/destination-rule/y"
        );
        let back: Cluster = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn typed_configs_carry_at_type() {
        let ts = TransportSocket::upstream_tls(UpstreamTlsContext {
            sni: "api.partner.example".into(),
            common_tls_context: CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig::named("default")],
                alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
                ..Default::default()
            },
        });
        let v = serde_json::to_value(&ts).unwrap();
        assert_eq!(v["name"], "envoy.transport_sockets.tls");
        assert_eq!(
            v["typedConfig"]["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        assert_eq!(v["typedConfig"]["sni"], "api.partner.example");
        assert_eq!(
            v["typedConfig"]["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0]["name"],
            "default"
        );
        assert_eq!(
            v["typedConfig"]["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0]["sdsConfig"]
                ["apiConfigSource"]["grpcServices"][0]["envoyGrpc"]["clusterName"],
            "sds-grpc"
        );
        let back: TransportSocket = serde_json::from_value(v).unwrap();
        assert_eq!(back, ts);
        let raw = serde_json::to_value(TransportSocket::raw_buffer()).unwrap();
        assert_eq!(
            raw["typedConfig"]["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
        );

        let f = Filter::tcp_proxy(TcpProxy {
            stat_prefix: "x".into(),
            cluster: Some("c".into()),
            ..Default::default()
        });
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v["typedConfig"]["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        assert_eq!(v["typedConfig"]["cluster"], "c");
        let back: Filter = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn vhost_selection_follows_envoy() {
        let rc = RouteConfiguration {
            name: "80".into(),
            ignore_port_in_host_matching: true,
            virtual_hosts: [
                VirtualHost {
                    name: "a".into(),
                    domains: vec!["a.example".into()],
                    ..Default::default()
                },
                VirtualHost {
                    name: "w".into(),
                    domains: vec!["*.example".into()],
                    ..Default::default()
                },
                VirtualHost {
                    name: "any".into(),
                    domains: vec!["*".into()],
                    ..Default::default()
                },
            ]
            .map(std::sync::Arc::new)
            .into(),
            ..Default::default()
        };
        assert_eq!(rc.find_virtual_host("a.example:80").unwrap().name, "a");
        assert_eq!(rc.find_virtual_host("b.example").unwrap().name, "w");
        assert_eq!(rc.find_virtual_host("other").unwrap().name, "any");
        assert_eq!(
            parse_cluster_name("outbound|8443|partner|gw.ns.svc.cluster.local"),
            Some(("outbound", 8443, "partner", "gw.ns.svc.cluster.local"))
        );
        assert_eq!(parse_cluster_name("PassthroughCluster"), None);
    }
}
