//! The proxy a configuration is compiled for, and istioctl-style TARGET resolution
//! (`deploy/NAME`, `pod/NAME`, `POD.NS`, `NAME` with `-n`).

use crate::{ProxyKind, Snapshot, Workload};
use isthmus_xds::ProxyType;
use serde::Serialize;
use std::collections::BTreeMap;

/// A proxy (sidecar or gateway) as the compiler needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyNode {
    pub kind: ProxyType,
    /// Pod name.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: String,
    /// The Deployment the pod belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl ProxyNode {
    pub fn from_workload(w: &Workload) -> Option<ProxyNode> {
        let kind = match w.proxy {
            ProxyKind::Sidecar => ProxyType::Sidecar,
            ProxyKind::Router => ProxyType::Router,
            ProxyKind::None => return None,
        };
        Some(ProxyNode {
            kind,
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            labels: w.labels.clone(),
            service_account: w.service_account.clone(),
            ip: w.ip.clone(),
            deployment: w.deployment.clone(),
        })
    }
    pub fn is_gateway(&self) -> bool {
        self.kind == ProxyType::Router
    }
    /// Istio's node id: `sidecar~IP~POD.NS~NS.svc.DOMAIN` (`router~...` for gateways).
    pub fn node_id(&self, domain: &str) -> String {
        let t = if self.is_gateway() {
            "router"
        } else {
            "sidecar"
        };
        format!(
            "{t}~{}~{}.{}~{}.svc.{domain}",
            self.ip, self.name, self.namespace, self.namespace
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{kind} {name:?} not found in namespace {namespace:?}{}",
        candidates_hint(candidates)
    )]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
        candidates: Vec<String>,
    },
    #[error("pod {namespace}/{name} has no proxy (not injected: label the namespace istio-injection=enabled, or it is annotated sidecar.istio.io/inject: \"false\"){}", candidates_hint(candidates))]
    NoProxy {
        name: String,
        namespace: String,
        candidates: Vec<String>,
    },
    #[error("unsupported target {0:?}: use deploy/NAME, pod/NAME, POD.NAMESPACE or POD with -n")]
    BadTarget(String),
}

fn candidates_hint(c: &[String]) -> String {
    if c.is_empty() {
        "; no proxies exist in the loaded manifests".to_string()
    } else {
        format!("; proxies available: {}", c.join(", "))
    }
}

impl Snapshot {
    /// Every workload that runs a proxy.
    pub fn proxies(&self) -> impl Iterator<Item = (&Workload, ProxyNode)> {
        self.workloads
            .iter()
            .filter_map(|w| ProxyNode::from_workload(w).map(|p| (w, p)))
    }

    fn candidates(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (w, _) in self.proxies() {
            let c = match &w.deployment {
                Some(d) => format!("deploy/{d} -n {}", w.namespace),
                None => format!("{}.{}", w.name, w.namespace),
            };
            if !v.contains(&c) {
                v.push(c);
            }
        }
        v
    }

    fn pod_proxy(&self, w: &Workload) -> Result<ProxyNode, ResolveError> {
        ProxyNode::from_workload(w).ok_or_else(|| ResolveError::NoProxy {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            candidates: self.candidates(),
        })
    }

    /// Resolves an istioctl TARGET. `namespace` is `-n` (default `default`).
    pub fn resolve_proxy(
        &self,
        target: &str,
        namespace: Option<&str>,
    ) -> Result<ProxyNode, ResolveError> {
        let ns = namespace.unwrap_or("default");
        if target.is_empty() {
            return Err(ResolveError::BadTarget(target.to_string()));
        }
        if let Some((kind, name)) = target.split_once('/') {
            return match kind {
                "deploy" | "deployment" | "deployments" | "deployment.apps" => {
                    let w = self
                        .workloads
                        .iter()
                        .find(|w| w.namespace == ns && w.deployment.as_deref() == Some(name));
                    match w {
                        Some(w) => self.pod_proxy(w),
                        None => Err(ResolveError::NotFound {
                            kind: "deployment",
                            name: name.into(),
                            namespace: ns.into(),
                            candidates: self.candidates(),
                        }),
                    }
                }
                "pod" | "pods" | "po" => self.resolve_pod(name, ns),
                _ => Err(ResolveError::BadTarget(target.to_string())),
            };
        }
        self.resolve_pod(target, ns)
    }

    fn resolve_pod(&self, name: &str, ns: &str) -> Result<ProxyNode, ResolveError> {
        if let Some(w) = self
            .workloads
            .iter()
            .find(|w| w.namespace == ns && w.name == name)
        {
            return self.pod_proxy(w);
        }
        if let Some((pod, pns)) = name.rsplit_once('.') {
            if let Some(w) = self
                .workloads
                .iter()
                .find(|w| w.namespace == pns && w.name == pod)
            {
                return self.pod_proxy(w);
            }
            // `DEPLOY.NS` is a convenience istioctl lacks; accept it for deployment-made pods.
            if let Some(w) = self
                .workloads
                .iter()
                .find(|w| w.namespace == pns && w.deployment.as_deref() == Some(pod))
            {
                return self.pod_proxy(w);
            }
        }
        if let Some(w) = self
            .workloads
            .iter()
            .find(|w| w.namespace == ns && w.deployment.as_deref() == Some(name))
        {
            return self.pod_proxy(w);
        }
        Err(ResolveError::NotFound {
            kind: "pod",
            name: name.into(),
            namespace: ns.into(),
            candidates: self.candidates(),
        })
    }
}
