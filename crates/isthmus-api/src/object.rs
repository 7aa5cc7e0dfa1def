//! The loaded object model: one `Object` per manifest, with its typed body and source.

use crate::{istio, k8s};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where an object came from: file, document index in a multi-document stream, first line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Source {
    pub file: String,
    pub doc_index: usize,
    pub line: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The kinds isthmus models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    Namespace,
    Service,
    Secret,
    ConfigMap,
    ServiceAccount,
    Pod,
    Deployment,
}

impl Kind {
    /// Maps (apiVersion, kind) to a modelled kind; anything else is skipped with a note.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        let istio = matches!(
            api_version,
            "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3"
        );
        Some(match (kind, api_version) {
            ("Gateway", _) if istio => Kind::Gateway,
            ("VirtualService", _) if istio => Kind::VirtualService,
            ("DestinationRule", _) if istio => Kind::DestinationRule,
            ("ServiceEntry", _) if istio => Kind::ServiceEntry,
            ("Sidecar", _) if istio => Kind::Sidecar,
            ("WorkloadEntry", _) if istio => Kind::WorkloadEntry,
            ("Namespace", "v1") => Kind::Namespace,
            ("Service", "v1") => Kind::Service,
            ("Secret", "v1") => Kind::Secret,
            ("ConfigMap", "v1") => Kind::ConfigMap,
            ("ServiceAccount", "v1") => Kind::ServiceAccount,
            ("Pod", "v1") => Kind::Pod,
            ("Deployment", "apps/v1") => Kind::Deployment,
            _ => return None,
        })
    }

    pub fn is_istio(self) -> bool {
        matches!(
            self,
            Kind::Gateway
                | Kind::VirtualService
                | Kind::DestinationRule
                | Kind::ServiceEntry
                | Kind::Sidecar
                | Kind::WorkloadEntry
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
        }
    }

    /// Parses kubectl-style resource names (`gateway`, `gw`, `vs`, `dr`, `se`, `svc`, ...).
    pub fn from_resource_name(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "gateway" | "gateways" | "gw" => Kind::Gateway,
            "virtualservice" | "virtualservices" | "vs" => Kind::VirtualService,
            "destinationrule" | "destinationrules" | "dr" => Kind::DestinationRule,
            "serviceentry" | "serviceentries" | "se" => Kind::ServiceEntry,
            "sidecar" | "sidecars" => Kind::Sidecar,
            "workloadentry" | "workloadentries" | "we" => Kind::WorkloadEntry,
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "service" | "services" | "svc" => Kind::Service,
            "secret" | "secrets" => Kind::Secret,
            "configmap" | "configmaps" | "cm" => Kind::ConfigMap,
            "serviceaccount" | "serviceaccounts" | "sa" => Kind::ServiceAccount,
            "pod" | "pods" | "po" => Kind::Pod,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed content of an object. (Variants differ in size; objects are few and long-lived,
/// so boxing would only add indirection.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    Gateway(istio::Gateway),
    VirtualService(istio::VirtualService),
    DestinationRule(istio::DestinationRule),
    ServiceEntry(istio::ServiceEntry),
    Sidecar(istio::Sidecar),
    WorkloadEntry(istio::WorkloadEntry),
    Namespace,
    Service(k8s::ServiceSpec),
    Secret(k8s::SecretBody),
    ConfigMap(k8s::ConfigMapBody),
    ServiceAccount,
    Pod(k8s::PodSpec),
    Deployment(k8s::DeploymentSpec),
}

/// Kubernetes decodes an explicit `null` as "absent" (`args:` with no value is no args).
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn decode_at<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    prefix: &str,
) -> Result<T, (String, String)> {
    let mut v = if prefix.is_empty() {
        value.clone()
    } else {
        value
            .get(prefix)
            .cloned()
            .unwrap_or(serde_json::Value::Object(Default::default()))
    };
    drop_nulls(&mut v);
    serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        let path = match (prefix.is_empty(), p == ".") {
            (true, _) => p,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{p}"),
        };
        (path, e.into_inner().to_string())
    })
}

impl Body {
    /// Decodes the typed body; the error carries the field path and the decoder's message.
    pub fn decode(kind: Kind, obj: &serde_json::Value) -> Result<Body, (String, String)> {
        Ok(match kind {
            Kind::Gateway => Body::Gateway(decode_at(obj, "spec")?),
            Kind::VirtualService => Body::VirtualService(decode_at(obj, "spec")?),
            Kind::DestinationRule => Body::DestinationRule(decode_at(obj, "spec")?),
            Kind::ServiceEntry => Body::ServiceEntry(decode_at(obj, "spec")?),
            Kind::Sidecar => Body::Sidecar(decode_at(obj, "spec")?),
            Kind::WorkloadEntry => Body::WorkloadEntry(decode_at(obj, "spec")?),
            Kind::Namespace => Body::Namespace,
            Kind::ServiceAccount => Body::ServiceAccount,
            Kind::Service => Body::Service(decode_at(obj, "spec")?),
            Kind::Pod => Body::Pod(decode_at(obj, "spec")?),
            Kind::Deployment => Body::Deployment(decode_at(obj, "spec")?),
            Kind::Secret => {
                let body: k8s::SecretBody = decode_at(obj, "")?;
                body.decoded().map_err(|m| ("data".to_string(), m))?;
                Body::Secret(body)
            }
            Kind::ConfigMap => Body::ConfigMap(decode_at(obj, "")?),
        })
    }
}

/// One accepted manifest object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub api_version: String,
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub body: Body,
    pub source: Source,
    /// The object as JSON, as written (for `get -o yaml` and re-validation).
    pub raw: serde_json::Value,
    /// Load order; stands in for creationTimestamp when objects carry none.
    pub seq: usize,
}

impl Object {
    /// The object's namespace, `default` when none was given (kubectl's default context).
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    /// `Kind ns/name` for messages.
    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace(), self.name())
    }

    pub fn as_gateway(&self) -> Option<&istio::Gateway> {
        match &self.body {
            Body::Gateway(g) => Some(g),
            _ => None,
        }
    }
    pub fn as_virtual_service(&self) -> Option<&istio::VirtualService> {
        match &self.body {
            Body::VirtualService(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_destination_rule(&self) -> Option<&istio::DestinationRule> {
        match &self.body {
            Body::DestinationRule(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_service_entry(&self) -> Option<&istio::ServiceEntry> {
        match &self.body {
            Body::ServiceEntry(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_sidecar(&self) -> Option<&istio::Sidecar> {
        match &self.body {
            Body::Sidecar(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_service(&self) -> Option<&k8s::ServiceSpec> {
        match &self.body {
            Body::Service(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_secret(&self) -> Option<&k8s::SecretBody> {
        match &self.body {
            Body::Secret(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_config_map(&self) -> Option<&k8s::ConfigMapBody> {
        match &self.body {
            Body::ConfigMap(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_pod(&self) -> Option<&k8s::PodSpec> {
        match &self.body {
            Body::Pod(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_deployment(&self) -> Option<&k8s::DeploymentSpec> {
        match &self.body {
            Body::Deployment(v) => Some(v),
            _ => None,
        }
    }
}

/// Finds the mesh config in loaded objects: ConfigMap `istio` in the root namespace
/// (istio-system), key `mesh`.
pub fn find_mesh_config(objects: &[Object]) -> Option<(&Object, &str)> {
    objects.iter().find_map(|o| {
        if o.kind == Kind::ConfigMap && o.name() == "istio" && o.namespace() == "istio-system" {
            o.as_config_map()
                .and_then(|c| c.data.get("mesh"))
                .map(|m| (o, m.as_str()))
        } else {
            None
        }
    })
}
