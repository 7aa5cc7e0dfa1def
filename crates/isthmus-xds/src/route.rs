//! Route configurations (`envoy.config.route.v3.RouteConfiguration`).

use crate::core::{is_false, DataSource, Metadata, RegexMatcher, StringMatcher};
use crate::Duration;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteConfiguration {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
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
                        best = Some((r, l, vh));
                    }
                }
            }
        }
        best.map(|(_, _, v)| v)
    }
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirrorPolicy {
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<serde_json::Value>,
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
