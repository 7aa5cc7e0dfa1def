//! Route configurations (`envoy.config.route.v3.RouteConfiguration`).

use crate::core::{is_false, DataSource, Metadata, RegexMatcher, StringMatcher};
use crate::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteConfiguration {
    pub name: String,
    /// Shared (`Arc`): a virtual host depends on the service, the VirtualService and a few
    /// proxy properties only, so proxies compiled from one snapshot reuse them (10k vhosts per
    /// proxy in a mesh of 10k services). Serialised as plain objects; edit one with
    /// `Arc::make_mut`.
    #[serde(skip_serializing_if = "Vec::is_empty", with = "crate::arc_vec")]
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate_clusters: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_direct_response_body_size_bytes: Option<u32>,
    /// Match the Host header without its `:port` (Istio sets this on all Envoy proxies).
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_port_in_host_matching: bool,
}

impl RouteConfiguration {
    /// The virtual host Envoy would pick for `authority`: exact domain, then the longest
    /// suffix wildcard (`*.x`), then prefix wildcard (`x.*`), then `*`. The port is ignored when
    /// `ignorePortInHostMatching` is set.
    pub fn find_virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            strip_port(authority)
        } else {
            authority
        };
        let host = host.to_ascii_lowercase();
        let mut best: Option<(u8, usize, &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                let rank = if d == host {
                    Some((3u8, d.len()))
                } else if d == "*" {
                    Some((0, 0))
                } else if let Some(suffix) = d.strip_prefix('*') {
                    (host.ends_with(suffix) && host.len() > suffix.len())
                        .then_some((2, suffix.len()))
                } else if let Some(prefix) = d.strip_suffix('*') {
                    (host.starts_with(prefix) && host.len() > prefix.len())
                        .then_some((1, prefix.len()))
                } else {
                    None
                };
                if let Some((r, l)) = rank {
                    if best.is_none_or(|(br, bl, _)| (r, l) > (br, bl)) {
                        best = Some((r, l, &**vh));
                    }
                }
            }
        }
        best.map(|(_, _, v)| v)
    }
}

fn is_empty_arc<T>(v: &Arc<Vec<T>>) -> bool {
    v.is_empty()
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Shared (`Arc`) with the compiler's per-snapshot route tables: a VirtualService's
    /// translated routes serve every proxy that resolves them alike. Serialised as a plain list.
    #[serde(skip_serializing_if = "is_empty_arc", with = "crate::arc_val")]
    pub routes: Arc<Vec<Route>>,
    #[serde(skip_serializing_if = "is_false")]
    pub include_request_attempt_count_in_response: bool,
    /// `ALL` / `EXTERNAL_ONLY` (gateway `httpsRedirect`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub require_tls: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Route {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub r#match: RouteMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decorator: Option<Decorator>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Per-route HTTP filter settings keyed by filter name ([`FAULT_FILTER`],
    /// [`CORS_FILTER`]): VirtualService `fault` and `corsPolicy` land here, as istiod writes
    /// them, rather than in the HCM's filter list.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typed_per_filter_config: BTreeMap<String, PerFilterConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

/// `envoy.config.route.v3.RouteMatch`: one path specifier plus header/query matchers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_separated_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(skip_serializing_if = "is_false")]
    pub invert_match: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub treat_missing_header_as_empty: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedCluster>,
    /// `0s` disables the route timeout (Istio's default when the VS sets none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Shared (`Arc`): nearly every route carries Istio's default policy, so compiled routes
    /// point at one copy instead of allocating a dozen strings and JSON maps each.
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::arc_opt")]
    pub retry_policy: Option<Arc<RetryPolicy>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<MaxStreamDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<RequestMirrorPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgrade_configs: Vec<crate::listener::UpgradeConfig>,
    /// `SERVICE_UNAVAILABLE` (503) when the cluster does not exist.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_not_found_response_code: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WeightedCluster {
    pub clusters: Vec<ClusterWeight>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    /// Comma-separated Envoy retry conditions.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub retry_on: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retry_host_predicate: Vec<serde_json::Value>,
    /// int64 → a JSON string in protojson.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host_selection_retry_max_attempts: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MaxStreamDuration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_timeout_header_max: Option<Duration>,
}

/// `RouteAction.RequestMirrorPolicy`: shadow a share of the requests to another cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirrorPolicy {
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<RuntimeFractionalPercent>,
    /// istiod always writes `false` (mirrored requests do not force trace sampling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_sampled: Option<bool>,
}

/// `envoy.type.v3.FractionalPercent`. protojson drops zero values, so `HUNDRED` (the enum's
/// zero) and a zero numerator are absent from istiod's JSON; the defaults reproduce that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FractionalPercent {
    #[serde(skip_serializing_if = "is_zero")]
    pub numerator: u32,
    /// `""` (= `HUNDRED`), `TEN_THOUSAND` or `MILLION`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub denominator: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl FractionalPercent {
    /// Istio's `translatePercentToFractionalPercent`: a `Percent` (0-100, fractional) as parts
    /// per MILLION.
    pub fn from_percent(value: f64) -> Self {
        FractionalPercent {
            numerator: (value * 10000.0).clamp(0.0, u32::MAX as f64) as u32,
            denominator: "MILLION".into(),
        }
    }

    /// Istio's `translateIntegerToFractionalPercent`: a whole percentage, per HUNDRED.
    pub fn from_integer(value: u32) -> Self {
        FractionalPercent {
            numerator: value,
            denominator: String::new(),
        }
    }

    /// The share as a percentage (0-100), for enforcement.
    pub fn as_percent(&self) -> f64 {
        let den = match self.denominator.as_str() {
            "TEN_THOUSAND" => 10_000.0,
            "MILLION" => 1_000_000.0,
            _ => 100.0,
        };
        (f64::from(self.numerator) / den * 100.0).min(100.0)
    }
}

/// `envoy.config.core.v3.RuntimeFractionalPercent` (istiod sets only the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuntimeFractionalPercent {
    pub default_value: FractionalPercent,
}

/// Filter name of Envoy's HTTP fault filter (key in `typedPerFilterConfig`).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Filter name of Envoy's CORS filter.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A `typedPerFilterConfig` value: an `Any`, tagged by its `@type` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "@type")]
pub enum PerFilterConfig {
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault")]
    Fault(HttpFault),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy")]
    Cors(CorsPolicy),
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault` (Istio's `TranslateFault`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `envoy.extensions.filters.common.fault.v3.FaultDelay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Always present in istiod's output (possibly `{}`, i.e. 0%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<FractionalPercent>,
}

/// `envoy.extensions.filters.http.fault.v3.FaultAbort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Absent means 0%: Envoy aborts nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<FractionalPercent>,
}

/// `envoy.extensions.filters.http.cors.v3.CorsPolicy` (Istio's `TranslateCORSPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_origin_string_match: Vec<StringMatcher>,
    /// Comma-joined lists, as Envoy takes them.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    /// Seconds, as a decimal string.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub max_age: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    /// Whether preflights from origins that do not match go on to the upstream (Envoy's
    /// default before 1.30, which Istio keeps unless `unmatchedPreflights: IGNORE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_not_matching_preflights: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RedirectAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    /// `MOVED_PERMANENTLY` (301, default, absent), `FOUND`, `SEE_OTHER`, `TEMPORARY_REDIRECT`,
    /// `PERMANENT_REDIRECT`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub response_code: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DirectResponseAction {
    pub status: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Decorator {
    pub operation: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// `APPEND_IF_EXISTS_OR_ADD` (default, absent) or `OVERWRITE_IF_EXISTS_OR_ADD`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub append_action: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}
