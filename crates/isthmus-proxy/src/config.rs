//! The proxy's own runtime configuration model.
//!
//! This is deliberately independent of the xDS IR crate: the proxy only needs what it
//! enforces, and a later `from_xds` conversion fills these types. The JSON shape (camelCase,
//! Envoy-like names, durations as `"1.5s"`/`"250ms"` strings or integer milliseconds) is what
//! `isthmus proxy --config FILE` loads. [`ProxyConfig::validate`] checks everything that can
//! be checked without sockets so a bad config is refused whole before anything changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that reads `"1s"`, `"0.25s"`, `"250ms"`, `"1m"`, `"1h"` or integer milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

/// Parse an Envoy/Istio style duration string.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult_ms): (&str, f64) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 || v * mult_ms > 1e15 {
        return None;
    }
    Some(Duration::from_micros((v * mult_ms * 1000.0).round() as u64))
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{}ms", ms))
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(ms) => Ok(Dur::from_millis(ms)),
            Raw::S(s) => parse_duration(&s).map(Dur).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} (expected e.g. \"1s\", \"250ms\")"
                ))
            }),
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Whole proxy configuration (one version).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default)]
    pub node: NodeInfo,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
}

/// Who this proxy is; feeds the `source_*`/`destination_*` metric labels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeInfo {
    pub id: String,
    pub workload_name: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub cluster_id: String,
    /// SPIFFE identity of this proxy, if any.
    pub principal: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file path; `/dev/stdout` (or empty) writes to stdout.
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub encoding: LogEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogEncoding {
    #[default]
    Text,
    Json,
}

/// Traffic direction: decides the `reporter` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Direction {
    #[default]
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// Bind address; port 0 picks a free port (tests), see `Proxy::listener_addr`.
    pub address: SocketAddr,
    /// Capture mode (15001/15006): the destination is the socket's SO_ORIGINAL_DST.
    #[serde(default)]
    pub use_original_dst: bool,
    /// Envoy's `original_dst` *listener filter* (Istio's virtualInbound on 15006): restore the
    /// pre-redirect destination as the local address and match chains on it, without handing
    /// the connection to another listener.
    #[serde(default, skip_serializing_if = "is_default")]
    pub original_dst_filter: bool,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    /// How long to wait for a ClientHello (Envoy `listenerFiltersTimeout`, default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filters_timeout: Option<Dur>,
    /// `false`: not bound; receives connections handed over by a `useOriginalDst` listener
    /// whose original destination equals this listener's address (Envoy's virtual listeners).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bind_to_port: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "filterChainMatch")]
    pub matcher: ChainMatch,
    /// Terminate TLS on this chain (Envoy `transportSocket` DownstreamTlsContext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTls>,
    pub action: ChainAction,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// Exact names or `*.suffix` wildcards; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`; none = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    /// Destination IP ranges (`10.0.0.0/8`); the longest matching prefix wins; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<String>,
    /// Source IP ranges; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ChainAction {
    /// L4 proxy to a cluster (also used for SNI passthrough: no `tls` on the chain).
    TcpProxy(TcpProxy),
    /// HTTP connection manager with an inline route table.
    Http(HttpManager),
    /// Relay to the connection's original destination (PassthroughCluster semantics).
    Passthrough(PassthroughAction),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassthroughAction {
    #[serde(default)]
    pub stat_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProxy {
    #[serde(default)]
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<WeightedCluster>,
    /// Downstream+upstream idle timeout (Envoy tcp_proxy default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Connect attempts before giving up with `URX` (Envoy default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempts: Option<u32>,
    /// Close the downstream connection after this long (flag `DT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downstream_connection_duration: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpManager {
    #[serde(default)]
    pub stat_prefix: String,
    pub route_config: RouteTable,
    /// Downstream idle timeout for HTTP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Envoy `use_remote_address` (default false): append the downstream peer to
    /// `x-forwarded-for` and set `x-forwarded-proto` from the connection. Istio sets it on
    /// gateways only; sidecars pass XFF through unchanged, so a request that crosses a
    /// sidecar and then a gateway names the client once, not twice.
    #[serde(default, skip_serializing_if = "is_default")]
    pub use_remote_address: bool,
    /// Envoy `xff_num_trusted_hops` (gateway `numTrustedProxies`): how many right-most XFF
    /// entries are trusted proxies when choosing the trusted client address.
    #[serde(default, skip_serializing_if = "is_default")]
    pub xff_num_trusted_hops: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// `ALL` / `EXTERNAL_ONLY`: plaintext requests get a 301 to https (Gateway httpsRedirect).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub require_tls: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    #[serde(flatten)]
    pub action: RouteAction,
    #[serde(default, skip_serializing_if = "is_default")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "is_default")]
    pub response_headers: HeaderOps,
    /// VirtualService `fault` (Envoy's HTTP fault filter, per route): delay, then abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// VirtualService `corsPolicy` (Envoy's CORS filter, per route; see [`crate::cors`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::cors::CorsPolicy>,
}

/// Envoy `envoy.filters.http.fault` per-route config as Istio writes it for `fault`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`: hold the request `fixedDelay` before routing it (flag `DI`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: Dur,
    /// Share of requests delayed, 0-100 (Istio `percentage.value`; absent = 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

/// `fault.abort`: answer locally with `httpStatus` instead of routing (flag `FI`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status line of the local reply: `httpStatus`, or 200 for a gRPC abort.
    pub http_status: u16,
    /// `grpcStatus`: a gRPC "trailers-only" reply (HTTP 200, `content-type: application/grpc`,
    /// `grpc-status`, `grpc-message`), as Envoy's fault filter sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0-100 (absent = 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// RE2-style regex, full match on the path (without query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub case_sensitive: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    /// Allowed methods (sugar for a `:method` header matcher); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Query parameter matchers (`name` = parameter name), all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<HeaderMatcher>,
    /// `pathSeparatedPrefix`: matches the prefix only at a `/` boundary (or exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_separated_prefix: Option<String>,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub present: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteAction {
    Route(RouteTarget),
    DirectResponse(DirectResponse),
    Redirect(Redirect),
}

/// Envoy RedirectAction: unset parts keep the request's values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301 (default), 302, 303, 307, 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
}

/// Header edits a route applies (VirtualService `headers`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOps {
    /// (name, value, append): `append` false overwrites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String, bool)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<WeightedCluster>,
    /// Whole-request timeout; 0 disables. Envoy's default is 15s; Istio sets 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub num_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    /// Comma list: `5xx`, `gateway-error`, `connect-failure`, `reset`, `retriable-status-codes`...
    #[serde(default)]
    pub retry_on: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Simple,
    Mutual,
    IstioMutual,
    OptionalMutual,
}

/// Downstream TLS termination settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownstreamTls {
    pub mode: TlsMode,
    /// SDS names of certificate secrets; with several, the one whose SANs match the SNI wins.
    pub certificates: Vec<String>,
    /// SDS name of the CA secret used to verify client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// Accepted client SANs (DNS or URI); empty = any verified client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// ISTIO_MUTUAL: accepted SPIFFE trust domains (empty = any chained to the mesh root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
}

/// Upstream TLS origination settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Accepted server SANs; for SIMPLE/MUTUAL with none given the SNI is checked instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Client certificate secret (MUTUAL / ISTIO_MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// CA secret; none = webpki roots (SIMPLE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// Skip server verification entirely (Istio `insecureSkipVerify`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub insecure_skip_verify: bool,
}

/// Certificate material by SDS name (`default`, `ROOTCA`, `kubernetes://name`, `file-cert:...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<DataSource>,
}

/// PEM given inline or as a file path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum DataSource {
    InlineString(String),
    Filename(String),
}

impl DataSource {
    pub fn load(&self) -> Result<Vec<u8>, String> {
        match self {
            DataSource::InlineString(s) => Ok(s.as_bytes().to_vec()),
            DataSource::Filename(p) => {
                std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryType {
    #[default]
    Static,
    StrictDns,
    LogicalDns,
    OriginalDst,
    Eds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// IP address or DNS name (DNS clusters).
    pub address: String,
    pub port: u16,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

/// Envoy circuit-breaker thresholds (defaults 1024 each, retries 3), from DR connectionPool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub interval: Dur,
    pub base_ejection_time: Dur,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
    /// Cap of `baseEjectionTime * ejections` (Envoy `max_ejection_time`, default 300s;
    /// never below `baseEjectionTime`).
    pub max_ejection_time: Dur,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_failure: None,
            interval: Dur::from_secs(10),
            base_ejection_time: Dur::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
            max_ejection_time: Dur::from_secs(300),
        }
    }
}

/// Istio cluster metadata used for `destination_service*` labels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceMeta {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default, rename = "type")]
    pub discovery: DiscoveryType,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Envoy default 5s; Istio default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Upstream connection idle timeout (HTTP pools; Envoy default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the upstream (h2c or ALPN h2).
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2: bool,
    /// Envoy `autoSni`: with TLS origination and no `tls.sni`, send the request's host as SNI
    /// (and, with no SAN list, verify the certificate against it).
    #[serde(default, skip_serializing_if = "is_default")]
    pub auto_sni: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub service: ServiceMeta,
}

impl Cluster {
    pub fn new_static(name: &str, endpoints: &[SocketAddr]) -> Self {
        Cluster {
            name: name.to_string(),
            discovery: DiscoveryType::Static,
            endpoints: endpoints
                .iter()
                .map(|a| Endpoint {
                    address: a.ip().to_string(),
                    port: a.port(),
                    weight: 1,
                })
                .collect(),
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: None,
            circuit_breakers: CircuitBreakers::default(),
            tcp_keepalive: None,
            idle_timeout: None,
            max_requests_per_connection: None,
            max_connection_duration: None,
            outlier_detection: None,
            tls: None,
            http2: false,
            auto_sni: false,
            service: ServiceMeta::default(),
        }
    }
}

/// Why a config was refused (NACK). Every problem is listed, with the field path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config refused ({} problem(s)); the previous config keeps serving: ",
            self.problems.len()
        )?;
        write!(f, "{}", self.problems.join("; "))
    }
}

impl ProxyConfig {
    pub fn from_json(s: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(s).map_err(|e| ConfigError {
            problems: vec![format!(
                "invalid proxy config JSON: {e} (hint: durations are \"1s\"/\"250ms\" strings)"
            )],
        })
    }

    /// Structural checks that need no sockets: unique names, references resolve, regexes
    /// compile, weights are sane. TLS material is checked when the runtime is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut cl = BTreeSet::new();
        for c in &self.clusters {
            if c.name.is_empty() {
                p.push("clusters[]: empty cluster name".to_string());
            }
            if !cl.insert(c.name.as_str()) {
                p.push(format!("clusters: duplicate cluster name {:?}", c.name));
            }
            if matches!(c.discovery, DiscoveryType::Static | DiscoveryType::Eds) {
                for e in &c.endpoints {
                    if e.address.parse::<std::net::IpAddr>().is_err() {
                        p.push(format!(
                            "cluster {}: endpoint {:?} is not an IP (hint: use type STRICT_DNS for names)",
                            c.name, e.address
                        ));
                    }
                }
            }
            if let Some(t) = &c.tls {
                if matches!(t.mode, TlsMode::Mutual | TlsMode::IstioMutual)
                    && t.certificate.is_none()
                {
                    p.push(format!(
                        "cluster {}: {:?} origination needs a client certificate secret",
                        c.name, t.mode
                    ));
                }
                if t.mode == TlsMode::IstioMutual && t.validation.is_none() {
                    p.push(format!(
                        "cluster {}: ISTIO_MUTUAL origination needs the root CA secret",
                        c.name
                    ));
                }
            }
        }
        let secrets: BTreeMap<&str, &Secret> =
            self.secrets.iter().map(|s| (s.name.as_str(), s)).collect();
        if secrets.len() != self.secrets.len() {
            p.push("secrets: duplicate secret names".to_string());
        }
        // A referenced secret that is not supplied is not an error: Envoy ACKs and the TLS
        // context waits for SDS (connections fail with "Secret is not supplied by SDS").
        let check_secret = |_: &mut Vec<String>, what: &str, name: &str| {
            if !secrets.contains_key(name) {
                tracing::debug!(secret = name, "{what}: secret not supplied (yet)");
            }
        };
        for c in &self.clusters {
            if let Some(t) = &c.tls {
                if let Some(s) = &t.certificate {
                    check_secret(&mut p, &format!("cluster {}", c.name), s);
                }
                if let Some(s) = &t.validation {
                    check_secret(&mut p, &format!("cluster {}", c.name), s);
                }
            }
        }
        let mut ln = BTreeSet::new();
        for l in &self.listeners {
            if !ln.insert(l.name.as_str()) {
                p.push(format!("listeners: duplicate listener name {:?}", l.name));
            }
            let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
            let mut seen = BTreeSet::new();
            for (i, fc) in chains.enumerate() {
                let what = format!("listener {} chain {} ({})", l.name, i, fc.name);
                let key = serde_json::to_string(&fc.matcher).unwrap_or_default();
                if i < l.filter_chains.len() && !seen.insert(key) {
                    p.push(format!(
                        "{what}: multiple filter chains with the same matching rules are defined"
                    ));
                }
                if let Some(t) = &fc.tls {
                    if t.certificates.is_empty() {
                        p.push(format!(
                            "{what}: TLS termination needs at least one certificate"
                        ));
                    }
                    for s in &t.certificates {
                        check_secret(&mut p, &what, s);
                    }
                    if let Some(v) = &t.validation {
                        check_secret(&mut p, &what, v);
                    }
                    if matches!(t.mode, TlsMode::Mutual | TlsMode::IstioMutual)
                        && t.validation.is_none()
                    {
                        p.push(format!("{what}: {:?} needs a validation CA secret", t.mode));
                    }
                }
                for cidr in fc
                    .matcher
                    .prefix_ranges
                    .iter()
                    .chain(&fc.matcher.source_prefix_ranges)
                {
                    if parse_cidr(cidr).is_none() {
                        p.push(format!(
                            "{what}: bad CIDR {cidr:?} (expected e.g. 10.0.0.0/8)"
                        ));
                    }
                }
                if let Some(tp) = &fc.matcher.transport_protocol {
                    if tp != "tls" && tp != "raw_buffer" {
                        p.push(format!(
                            "{what}: transportProtocol must be tls or raw_buffer, got {tp:?}"
                        ));
                    }
                }
                match &fc.action {
                    ChainAction::TcpProxy(t) => {
                        check_target(
                            &mut p,
                            &what,
                            &cl,
                            t.cluster.as_deref(),
                            &t.weighted_clusters,
                        );
                    }
                    ChainAction::Http(h) => validate_routes(&mut p, &what, &cl, &h.route_config),
                    ChainAction::Passthrough(_) => {}
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }
}

/// Parse `addr/len` (or a bare address = host route).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match l {
        Some(l) => l.trim().parse::<u8>().ok()?,
        None => max,
    };
    (len <= max).then_some((ip, len))
}

/// Whether `ip` is inside `net/len`.
pub fn cidr_contains(net: std::net::IpAddr, len: u8, ip: std::net::IpAddr) -> bool {
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

fn check_target(
    p: &mut Vec<String>,
    what: &str,
    cl: &BTreeSet<&str>,
    c: Option<&str>,
    w: &[WeightedCluster],
) {
    match (c, w.is_empty()) {
        (Some(c), true) => {
            if !cl.contains(c) {
                // Envoy accepts unknown clusters and fails at request time (NC); so do we,
                // but tcp_proxy requires a name.
                tracing::debug!(
                    cluster = c,
                    "{what}: cluster not (yet) defined; traffic will get NC"
                );
            }
        }
        (None, false) => {
            if w.iter().map(|w| w.weight as u64).sum::<u64>() == 0 {
                p.push(format!(
                    "{what}: weighted clusters must have a positive total weight"
                ));
            }
        }
        (None, true) => p.push(format!("{what}: needs a cluster or weightedClusters")),
        (Some(_), false) => p.push(format!(
            "{what}: cluster and weightedClusters are exclusive"
        )),
    }
}

fn validate_routes(p: &mut Vec<String>, what: &str, cl: &BTreeSet<&str>, rt: &RouteTable) {
    for vh in &rt.virtual_hosts {
        if vh.domains.is_empty() {
            p.push(format!("{what}: virtual host {} has no domains", vh.name));
        }
        for (i, r) in vh.routes.iter().enumerate() {
            let rw = format!("{what} vhost {} route {i}", vh.name);
            let n = [
                &r.matcher.prefix,
                &r.matcher.path,
                &r.matcher.safe_regex,
                &r.matcher.path_separated_prefix,
            ]
            .iter()
            .filter(|x| x.is_some())
            .count();
            if n > 1 {
                p.push(format!(
                    "{rw}: only one of prefix/path/safeRegex/pathSeparatedPrefix"
                ));
            }
            if let Some(re) = &r.matcher.safe_regex {
                if let Err(e) = regex::Regex::new(re) {
                    p.push(format!("{rw}: bad regex {re:?}: {e}"));
                }
            }
            for h in r.matcher.headers.iter().chain(&r.matcher.query_parameters) {
                if let Some(re) = &h.safe_regex {
                    if let Err(e) = regex::Regex::new(re) {
                        p.push(format!("{rw}: header {} bad regex: {e}", h.name));
                    }
                }
            }
            if let Some(f) = &r.fault {
                if let Some(a) = &f.abort {
                    if !(200..=599).contains(&a.http_status) {
                        p.push(format!(
                            "{rw}: fault abort status {} out of range (hint: 200-599)",
                            a.http_status
                        ));
                    }
                }
                let pcts = f.abort.iter().map(|a| a.percentage);
                for pct in pcts.chain(f.delay.iter().map(|d| d.percentage)) {
                    if !(0.0..=100.0).contains(&pct) {
                        p.push(format!("{rw}: fault percentage {pct} not in 0-100"));
                    }
                }
            }
            match &r.action {
                RouteAction::Route(t) => {
                    check_target(p, &rw, cl, t.cluster.as_deref(), &t.weighted_clusters)
                }
                RouteAction::Redirect(_) => {}
                RouteAction::DirectResponse(d) => {
                    if !(100..=599).contains(&d.status) {
                        p.push(format!(
                            "{rw}: direct response status {} out of range",
                            d.status
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn json_round_trip_and_refusal() {
        let j = r#"{"listeners":[{"name":"l","address":"127.0.0.1:0","filterChains":[
            {"action":{"http":{"routeConfig":{"virtualHosts":[{"name":"v","domains":["*"],
              "routes":[{"match":{"prefix":"/","safeRegex":"("},"route":{"cluster":"c","timeout":"1s"}}]}]}}}}]}],
            "clusters":[{"name":"c","endpoints":[{"address":"127.0.0.1","port":1}]}]}"#;
        let c = ProxyConfig::from_json(j).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_json(&s).unwrap(), c);
    }
}
