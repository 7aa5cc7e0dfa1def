//! isthmus-compile: per-proxy compilation with istiod's semantics.
//!
//! [`compile`] turns a registry [`Snapshot`] and one [`ProxyNode`] into the listeners, routes,
//! clusters, endpoints and secrets istiod would push to that proxy, in Envoy's shape
//! ([`isthmus_xds::ProxyConfig`]). It is a pure, deterministic function: the same snapshot and
//! proxy always give byte-identical JSON. Config that compiles to nothing (a `tls` route on a
//! terminating server, a dropped duplicate server, a DestinationRule host that matches no
//! service, a subset no route uses...) yields a diagnostic on the offending object instead of
//! failing; the rest still compiles.
//!
//! [`render::render`] prints a compiled config as `istioctl proxy-config` does.

mod cluster;
mod gateway;
pub mod policy;
pub mod render;
pub mod simulate;
mod route;
mod scope;
mod sidecar;
mod tls;

pub use render::{render, ConfigKind, Filter, Format, RenderError};

use isthmus_api::{Diagnostic, Severity};
use isthmus_model::{ConfigMeta, ProxyNode, Snapshot};
use isthmus_xds::{Node, NodeMetadata, ProxyConfig, ProxyType};

/// The result of compiling one proxy.
#[derive(Debug, Clone)]
pub struct CompiledProxy {
    pub config: ProxyConfig,
    /// Problems found while compiling, each on the object that caused it; sorted, de-duplicated.
    pub diagnostics: Vec<Diagnostic>,
}

/// Compiles the configuration of one proxy (sidecar or gateway).
pub fn compile(snapshot: &Snapshot, proxy: &ProxyNode) -> CompiledProxy {
    let mut ctx = scope::Ctx::new(snapshot, proxy);
    let mut cfg = ProxyConfig {
        node: Node {
            id: proxy.node_id(&snapshot.domain_suffix),
            cluster: format!("{}.{}", proxy.deployment.as_deref().unwrap_or(&proxy.name), proxy.namespace),
            metadata: NodeMetadata {
                name: proxy.name.clone(),
                namespace: proxy.namespace.clone(),
                labels: proxy.labels.clone(),
                service_account: proxy.service_account.clone(),
                instance_ips: vec![proxy.ip.clone()],
                proxy_type: if proxy.kind == ProxyType::Router { "router".into() } else { "sidecar".into() },
                trust_domain: snapshot.mesh.trust_domain.clone(),
                cluster_id: "Kubernetes".into(),
                spiffe_id: snapshot.spiffe_id(&proxy.namespace, &proxy.service_account),
            },
        },
        ..Default::default()
    };
    cluster::build_clusters(&mut ctx, &mut cfg);
    match proxy.kind {
        ProxyType::Router => gateway::build(&mut ctx, &mut cfg),
        ProxyType::Sidecar => sidecar::build(&mut ctx, &mut cfg),
    }
    tls::collect_secrets(&mut ctx, &mut cfg);
    ctx.unused_subset_diagnostics();

    cfg.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    cfg.endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    cfg.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    cfg.routes.sort_by(|a, b| a.name.cmp(&b.name));
    cfg.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    cfg.version = cfg.content_hash();

    let mut diagnostics = std::mem::take(&mut ctx.diags);
    diagnostics.sort_by(|a, b| (&a.file, a.line, &a.code, &a.message).cmp(&(&b.file, b.line, &b.code, &b.message)));
    diagnostics.dedup();
    CompiledProxy { config: cfg, diagnostics }
}

pub(crate) fn diag(meta: &ConfigMeta, severity: Severity, code: &str, field: Option<&str>, message: impl Into<String>) -> Diagnostic {
    isthmus_model::diagnostic(meta, severity, code, field, message)
}
