//! isthmus-trace: the path one request takes through the mesh, hop by hop, computed from the
//! compiled configuration of every proxy on the way.
//!
//! Why it exists: every egress trap in the seeds is silent (a missing mesh route quietly
//! bypasses the egress gateway, one misaligned SNI resets connections, same-host
//! DestinationRules merge without a word). [`trace`] answers "where does this call go and what
//! is on the wire?" from the same [`isthmus_compile::compile`] output the proxies run, so its
//! answer is the proxies' answer.
//!
//! It is modelled on Istio's `pilot/pkg/simulation` (`traffic.go`): a call is matched against a
//! proxy's listeners, filter chains, route configurations, virtual hosts and routes exactly as
//! Envoy would. The filter-chain and route matchers are [`isthmus_compile::simulate`]'s; this
//! crate adds what a single-proxy simulation lacks: sidecar inbound (`virtualInbound` keyed by
//! destination port), the listener hand-off from `virtualOutbound`, route-by-route reasons
//! (which earlier routes were skipped), the TLS layer stack carried across hops, the
//! DestinationRule lookup (winner, merged and shadowed rules), and following a cluster's
//! endpoint into the next proxy (gateway or destination sidecar).

mod confirm;
mod engine;
mod render;
mod url;

pub use confirm::{
    confirm, parse_log_line, render_confirmation, ClientOutcome, Confirmation, HopCheck, LogLine,
    Observed,
};
pub use engine::trace;
pub use render::render_text;
pub use url::{parse_url, ParsedUrl, UrlError};

use serde::Serialize;
use std::collections::BTreeMap;

/// What to trace: the source proxy and the request it makes.
#[derive(Debug, Clone, Default)]
pub struct TraceRequest {
    /// The calling proxy as istioctl takes it: `deploy/NAME`, `pod/NAME`, `POD.NS` or `POD`.
    pub source: String,
    /// Namespace of the source (`-n`; default `default`).
    pub namespace: Option<String>,
    /// `http://`, `https://`, `tcp://HOST:PORT` or `tls://HOST:PORT`.
    pub url: String,
    /// SNI of the application's own TLS (default: the URL host for https/tls).
    pub sni: Option<String>,
    /// Extra request headers (`Host` overrides the authority).
    pub headers: Vec<(String, String)>,
    /// HTTP method (default GET).
    pub method: Option<String>,
}

/// Errors that stop a trace before it starts (the request itself is wrong).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("source proxy")]
    Source(#[from] isthmus_model::ResolveError),
    #[error("bad header {0:?}: use --header 'Name: value'")]
    Header(String),
}

/// One TLS layer on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsLayer {
    /// `app TLS`, `mesh mTLS`, `SIMPLE origination`, `MUTUAL origination`.
    pub kind: LayerKind,
    /// SNI in the ClientHello (empty = none).
    pub sni: String,
    /// Who opened it: `app` or the proxy `ns/name`.
    pub opened_by: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Client certificate SDS name (`default`, `kubernetes://NAME`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Trust bundle SDS name (`ROOTCA`, `kubernetes://NAME-cacert`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// SANs the client requires of the server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_sans: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LayerKind {
    #[serde(rename = "app TLS")]
    AppTls,
    #[serde(rename = "mesh mTLS")]
    MeshMtls,
    #[serde(rename = "SIMPLE origination")]
    SimpleOrigination,
    #[serde(rename = "MUTUAL origination")]
    MutualOrigination,
}

impl LayerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::AppTls => "app TLS",
            LayerKind::MeshMtls => "mesh mTLS",
            LayerKind::SimpleOrigination => "SIMPLE origination",
            LayerKind::MutualOrigination => "MUTUAL origination",
        }
    }
}

/// The DestinationRule that shaped a cluster, and the ones that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrInfo {
    /// `ns/name` of the rule whose name the cluster carries (the oldest of a merge).
    pub applied: String,
    /// Same-host rules merged into it (subsets unioned; only the oldest top-level policy kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
    /// Rules for this host that lost, each with why (`ns/name: reason`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub beaten: Vec<String>,
    /// Subset used by the route, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

/// Connection-pool limits in force on a cluster (and the TCP proxy in front of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// `time/interval/probes` in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2: Option<bool>,
    /// Outlier detection in force (only the fields set; Envoy defaults fill the rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<String>,
}

/// The endpoint a hop sends to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    /// `IP:port` or `hostname:port` (DNS clusters).
    pub address: String,
    /// How many endpoints the cluster has (the trace follows the first).
    pub count: usize,
    /// The workload behind it (`ns/name`), or what serves it outside the mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `gateway`, `sidecar`, `no proxy`, `outside the mesh`, `original destination`.
    pub kind: String,
}

/// The route that matched, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// The route's name, or `#INDEX` when unnamed.
    pub name: String,
    pub index: usize,
    /// The match that accepted the request (`prefix /`, `header x-a=b` ...).
    pub matched: String,
    /// `VirtualService ns/name` that produced it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Earlier routes in the same virtual host that did not match (first match wins).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Where a hop (or the whole trace) stops short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `no_listener`, `no_filter_chain`, `no_route`, `direct_response`, `blackhole`,
    /// `cluster_not_found`, `no_endpoints`, `tls_mismatch`, `tls_into_http`, `redirect`,
    /// `no_terminator`.
    pub kind: String,
    /// What the client sees (`connection reset (curl exit 35)`, `404 NR` ...).
    pub client_sees: String,
    pub detail: String,
}

/// One proxy on the path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// `ns/pod`.
    pub proxy: String,
    /// `sidecar outbound`, `sidecar inbound`, `gateway`.
    pub role: String,
    /// What arrives: port, SNI, Host, TLS layers (outermost first).
    pub arrives: Arrival,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// How the listener was chosen (hand-off from virtualOutbound ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_chain: Option<String>,
    /// What the chain matched on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_match: Option<String>,
    /// The TLS layer this proxy terminated, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteInfo>,
    /// For TCP proxy chains (no HTTP route): the VirtualService `tls`/`tcp` route(s) whose
    /// destination is this chain's cluster and which bind this proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4_route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<DrInfo>,
    /// TLS this proxy opens toward the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<TlsLayer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointInfo>,
    /// TLS layers on the wire leaving this proxy (outermost first).
    pub wire_out: Vec<TlsLayer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Things that work but are probably not what was meant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a proxy receives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Arrival {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub port: u32,
    /// SNI of the outermost TLS layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Host header (HTTP payloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `http` or `tcp` (the innermost payload).
    pub payload: String,
    pub layers: Vec<TlsLayer>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `reached`, `bypass` (left the mesh without any mesh mTLS) or `failed`.
    pub status: String,
    /// One line, as printed after `RESULT:`.
    pub summary: String,
    /// Destination reached (`host:port`), when reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Gateways passed through (`ns/deployment`).
    pub via: Vec<String>,
    /// Every TLS layer seen on the path, in the order they were opened.
    pub tls_layers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// The full trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub source: String,
    pub url: String,
    pub method: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
}
