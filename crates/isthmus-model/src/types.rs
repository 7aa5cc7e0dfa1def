//! Registry types: services, workloads and config objects as the compiler sees them.

use isthmus_api::istio;
use serde::Serialize;
use std::collections::BTreeMap;

/// Identity and ordering data of one config object (what istiod keeps in `config.Meta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ConfigMeta {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Load order; breaks ties and stands in for creationTimestamp when absent.
    pub seq: usize,
    pub file: String,
    pub line: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ConfigMeta {
    /// Sort key "oldest first", as istiod orders configs: creationTimestamp, then name, then
    /// namespace (objects applied together share a timestamp second, so the name decides), then
    /// load order. An object without a timestamp counts as created with the others.
    pub fn age_key(&self) -> (&str, &str, &str, usize) {
        (
            self.creation_timestamp.as_deref().unwrap_or(""),
            &self.name,
            &self.namespace,
            self.seq,
        )
    }
    /// `Kind ns/name`.
    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
    /// The `metadata.filterMetadata.istio.config` path istiod writes (`/apis/GROUP/v1/...`).
    pub fn config_path(&self) -> String {
        let kebab = match self.kind.as_str() {
            "DestinationRule" => "destination-rule",
            "VirtualService" => "virtual-service",
            "Gateway" => "gateway",
            "ServiceEntry" => "service-entry",
            "Sidecar" => "sidecar",
            other => other,
        };
        // Built by hand: this runs for every route and cluster of every proxy, and `format!`
        // costs ten times the copying.
        const PREFIX: &str = "/apis/networking.istio.io/v1/namespaces/";
        let mut s = String::with_capacity(
            PREFIX.len() + self.namespace.len() + kebab.len() + self.name.len() + 2,
        );
        s.push_str(PREFIX);
        s.push_str(&self.namespace);
        s.push('/');
        s.push_str(kebab);
        s.push('/');
        s.push_str(&self.name);
        s
    }
}

/// Port protocol as Istio classifies it (`pkg/config/protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    HttpProxy,
    /// Unnamed/unknown: Istio sniffs the protocol.
    Unsupported,
}

impl Protocol {
    /// `protocol.Parse` (case-insensitive).
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            "http_proxy" => Protocol::HttpProxy,
            _ => Protocol::Unsupported,
        }
    }
    /// Protocol of a Kubernetes Service port: `appProtocol`, else the port name prefix before
    /// `-` (`pkg/config/kube/conversion.go` ConvertProtocol).
    pub fn from_k8s(
        name: Option<&str>,
        app_protocol: Option<&str>,
        l4: Option<&str>,
        port: u32,
    ) -> Protocol {
        if l4.is_some_and(|p| p.eq_ignore_ascii_case("UDP")) {
            return Protocol::Udp;
        }
        if let Some(ap) = app_protocol {
            match ap {
                "kubernetes.io/h2c" => return Protocol::Http2,
                "kubernetes.io/ws" | "kubernetes.io/wss" => return Protocol::Http,
                _ => {}
            }
            let p = Protocol::parse(ap);
            if p != Protocol::Unsupported {
                return p;
            }
        }
        if let Some(n) = name {
            let lower = n.to_ascii_lowercase();
            if lower.starts_with("grpc-web") {
                return Protocol::GrpcWeb;
            }
            let prefix = lower.split('-').next().unwrap_or("");
            let p = Protocol::parse(prefix);
            if p != Protocol::Unsupported {
                return p;
            }
        }
        match port {
            3306 | 27017 => Protocol::Tcp,
            _ => Protocol::Unsupported,
        }
    }
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Udp => "UDP",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
    /// Kubernetes targetPort (number or container-port name); ServiceEntry targetPort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u32),
    Name(String),
}

/// Where a service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Registry {
    Kubernetes,
    ServiceEntry,
}

/// How the proxy finds endpoints (`model.Resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Resolution {
    /// EDS: the registry's endpoints (k8s Services, STATIC ServiceEntries).
    ClientSideLb,
    /// DNS (STRICT_DNS).
    Dns,
    /// DNS_ROUND_ROBIN (LOGICAL_DNS).
    DnsRoundRobin,
    /// Original destination (headless services, resolution NONE).
    Passthrough,
}

/// One registry service (a k8s Service, or one host of a ServiceEntry).
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// FQDN (`reviews.default.svc.cluster.local`) or the ServiceEntry host.
    pub hostname: String,
    /// Short name for telemetry metadata (k8s Service name, or the SE host).
    pub name: String,
    pub namespace: String,
    pub registry: Registry,
    pub ports: Vec<ServicePort>,
    /// Cluster IP / SE address; `None` when the service has none (headless, SE without addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// VIP auto-allocated from 240.240.0.0/16 for ServiceEntries without addresses (what
    /// Istio's allocator writes into the ServiceEntry's `status.addresses`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_allocated_address: Option<String>,
    /// Whether proxies use `auto_allocated_address`: only with DNS capture
    /// (`ISTIO_META_DNS_CAPTURE: "true"` in the mesh's `defaultConfig.proxyMetadata`), as
    /// Istio's `nodeUsesAutoallocatedIPs`; otherwise apps resolve the real address.
    #[serde(skip)]
    pub auto_allocated_in_use: bool,
    pub resolution: Resolution,
    pub mesh_external: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// SPIFFE identities of the workloads behind it (SE `subjectAltNames` for ServiceEntries).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// k8s selector or SE workloadSelector.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    pub endpoints: Vec<ServiceEndpoint>,
    pub meta: ConfigMeta,
}

impl Service {
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
    /// Endpoints serving a given service port.
    pub fn endpoints_for_port(&self, port: u32) -> impl Iterator<Item = &ServiceEndpoint> {
        self.endpoints
            .iter()
            .filter(move |e| e.service_port == port)
    }
    /// Whether it is visible from `ns` by its exportTo (empty = mesh default, public).
    pub fn visible_from(&self, ns: &str) -> bool {
        export_visible(&self.export_to, &self.namespace, ns)
    }
    /// The VIP a client connects to: declared, or auto-allocated when proxies use it.
    pub fn vip(&self) -> Option<&str> {
        self.address.as_deref().or(if self.auto_allocated_in_use {
            self.auto_allocated_address.as_deref()
        } else {
            None
        })
    }
}

/// exportTo visibility: empty or `*` = everyone, `.` = own namespace, `~` = no one, else listed.
pub fn export_visible(export_to: &[String], owner_ns: &str, from_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to
        .iter()
        .any(|e| e == "*" || (e == "." && owner_ns == from_ns) || e == from_ns)
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoint {
    /// IP or, for DNS ServiceEntries, a hostname.
    pub address: String,
    pub port: u32,
    pub service_port: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `istio` when the endpoint has a sidecar (mTLS capable), else `disabled`.
    pub tls_mode: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// What a workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProxyKind {
    /// No proxy at all (not injected).
    None,
    Sidecar,
    /// A gateway (Envoy "router").
    Router,
}

/// A pod (declared, or expanded from a Deployment's replicas).
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: String,
    pub proxy: ProxyKind,
    /// The Deployment it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Named container ports (for named targetPorts).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub container_ports: BTreeMap<String, u32>,
    pub meta: ConfigMeta,
}

/// A config object with its typed spec.
#[derive(Debug, Clone, Serialize)]
pub struct Config<T> {
    pub meta: ConfigMeta,
    pub spec: T,
}

pub type GatewayConfig = Config<istio::Gateway>;
pub type VirtualServiceConfig = Config<istio::VirtualService>;
pub type DestinationRuleConfig = Config<istio::DestinationRule>;
pub type SidecarConfig = Config<istio::Sidecar>;
