//! Istio's MeshConfig: the `mesh` key of the `istio` ConfigMap in istio-system, or a file given
//! with `--mesh-config`. Defaults follow `pkg/config/mesh/mesh.go` (`DefaultMeshConfig`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub outbound_traffic_policy: MeshOutboundTrafficPolicy,
    pub trust_domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: String,
    /// Empty means access logging is off (Istio's default for the `default` profile);
    /// `/dev/stdout` in the demo profile.
    pub access_log_file: String,
    /// TEXT or JSON.
    pub access_log_encoding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    pub connect_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<crate::istio::TcpKeepalive>,
    pub enable_auto_mtls: bool,
    pub default_destination_rule_export_to: Vec<String>,
    pub default_virtual_service_export_to: Vec<String>,
    pub default_service_export_to: Vec<String>,
    pub default_config: ProxyConfigDefaults,
    pub dns_refresh_rate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<String>,
    /// Fields we do not model are kept so that nothing a user wrote is silently lost.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshOutboundTrafficPolicy {
    /// ALLOW_ANY (mesh default), REGISTRY_ONLY, ALLOW_ANY_DYNAMIC_DNS.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfigDefaults {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            outbound_traffic_policy: MeshOutboundTrafficPolicy::default(),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: vec![],
            root_namespace: "istio-system".into(),
            access_log_file: String::new(),
            access_log_encoding: "TEXT".into(),
            access_log_format: None,
            connect_timeout: "10s".into(),
            tcp_keepalive: None,
            enable_auto_mtls: true,
            default_destination_rule_export_to: vec![],
            default_virtual_service_export_to: vec![],
            default_service_export_to: vec![],
            default_config: ProxyConfigDefaults::default(),
            dns_refresh_rate: "60s".into(),
            h2_upgrade_policy: None,
            other: BTreeMap::new(),
        }
    }
}

impl MeshConfig {
    /// The effective outbound policy: ALLOW_ANY unless the mesh says otherwise.
    pub fn outbound_mode(&self) -> &str {
        self.outbound_traffic_policy
            .mode
            .as_deref()
            .unwrap_or("ALLOW_ANY")
    }

    /// Parses MeshConfig YAML (the text of `data.mesh`, or a `--mesh-config` file). Unset
    /// fields keep Istio's defaults.
    pub fn from_yaml(text: &str) -> Result<MeshConfig, String> {
        let docs = crate::yaml::parse_stream(text).map_err(|e| e.to_string())?;
        let Some(doc) = docs
            .into_iter()
            .find(|d| !matches!(d.root.value, crate::yaml::NodeValue::Null))
        else {
            return Ok(MeshConfig::default());
        };
        let json = doc.root.to_json();
        if !json.is_object() {
            return Err("mesh config must be a mapping".into());
        }
        let mut base = serde_json::to_value(MeshConfig::default()).map_err(|e| e.to_string())?;
        merge_json(&mut base, json);
        serde_path_to_error::deserialize(base).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}

/// Overlays `over` onto `base`, recursing into objects (as Istio applies a mesh config over its
/// defaults).
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_json(existing, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let m = MeshConfig::from_yaml("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\naccessLogFile: /dev/stdout\ndefaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n").unwrap();
        assert_eq!(m.outbound_mode(), "REGISTRY_ONLY");
        assert_eq!(m.access_log_file, "/dev/stdout");
        assert_eq!(m.trust_domain, "cluster.local");
        assert_eq!(m.connect_timeout, "10s");
        assert_eq!(
            m.default_config.proxy_metadata["ISTIO_META_DNS_CAPTURE"],
            "true"
        );
        assert_eq!(MeshConfig::default().outbound_mode(), "ALLOW_ANY");
        let e = MeshConfig::from_yaml("trustDomain: [1]").unwrap_err();
        assert!(e.contains("trustDomain"), "{e}");
    }
}
