//! What one proxy can see: its Sidecar scope (egress hosts), visible services and
//! VirtualServices, the effective outbound traffic policy, and a diagnostics sink.

use crate::diag;
use isthmus_api::{Diagnostic, Severity};
use isthmus_model::host::host_matches;
use isthmus_model::{
    export_visible, MergedDestinationRule, ProxyNode, Service, SidecarConfig, Snapshot,
    VirtualServiceConfig,
};
use isthmus_xds::Duration;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub proxy: &'a ProxyNode,
    pub diags: Vec<Diagnostic>,
    /// Visible services, one per hostname, sorted by hostname.
    pub services: Vec<&'a Service>,
    pub by_host: HashMap<&'a str, &'a Service>,
    pub sidecar: Option<&'a SidecarConfig>,
    pub mode: OutboundMode,
    pub connect_timeout: Duration,
    /// VirtualServices visible from the proxy namespace, oldest first.
    pub virtual_services: Vec<&'a VirtualServiceConfig>,
    /// (DR config label, subset) pairs that some compiled route used.
    pub used_subsets: BTreeSet<(String, String)>,
    /// DRs that produced clusters for this proxy: label → (DR, subsets).
    pub applied_drs: BTreeMap<String, &'a MergedDestinationRule>,
    /// `kubernetes://` SDS names referenced by clusters/listeners, with every config (Gateway,
    /// DestinationRule) that referenced them, in first-reference order without repeats.
    pub sds_refs: BTreeMap<String, Vec<isthmus_model::ConfigMeta>>,
    /// Mesh VirtualServices by exact host (oldest first), and wildcard hosts (oldest first).
    pub mesh_vs_exact: HashMap<String, Vec<&'a VirtualServiceConfig>>,
    pub mesh_vs_wild: Vec<(String, &'a VirtualServiceConfig)>,
}

fn parse_egress(h: &str, sidecar_ns: &str) -> (String, String) {
    match h.split_once('/') {
        Some((ns, host)) => (
            if ns == "." {
                sidecar_ns.to_string()
            } else {
                ns.to_string()
            },
            host.to_string(),
        ),
        None => ("*".to_string(), h.to_string()),
    }
}

impl<'a> Ctx<'a> {
    pub fn new(snap: &'a Snapshot, proxy: &'a ProxyNode) -> Ctx<'a> {
        let mut diags = Vec::new();
        let ns = proxy.namespace.as_str();
        let sidecar = if proxy.is_gateway() {
            None
        } else {
            select_sidecar(snap, proxy)
        };
        let egress: Option<Vec<(String, String)>> = sidecar.and_then(|s| {
            if s.spec.egress.is_empty() {
                None
            } else {
                Some(
                    s.spec
                        .egress
                        .iter()
                        .flat_map(|e| e.hosts.iter().map(|h| parse_egress(h, &s.meta.namespace)))
                        .collect(),
                )
            }
        });
        let imported = |svc_ns: &str, host: &str| -> bool {
            match &egress {
                None => true,
                Some(list) => list.iter().any(|(ens, eh)| {
                    ens != "~" && (ens == "*" || ens == svc_ns) && host_matches(eh, host)
                }),
            }
        };
        let mut by_host: HashMap<&str, &Service> = HashMap::new();
        for s in &snap.services {
            if !s.visible_from(ns) || !imported(&s.namespace, &s.hostname) {
                continue;
            }
            match by_host.get(s.hostname.as_str()) {
                Some(existing) if existing.namespace == ns || s.namespace != ns => {}
                _ => {
                    by_host.insert(&s.hostname, s);
                }
            }
        }
        let virtual_services: Vec<&VirtualServiceConfig> = snap
            .virtual_services
            .iter()
            .filter(|v| export_visible(&v.spec.export_to, &v.meta.namespace, ns))
            .filter(|v| {
                egress.is_none()
                    || v.spec
                        .hosts
                        .iter()
                        .any(|h| imported_vs(&egress, &v.meta.namespace, h))
            })
            .collect();
        // Services referenced by imported VS destinations are imported too (istiod does this so
        // that routes never point at clusters the scope lacks).
        if egress.is_some() {
            for v in &virtual_services {
                let dests = v
                    .spec
                    .http
                    .iter()
                    .flat_map(|h| h.route.iter().map(|d| &d.destination.host))
                    .chain(
                        v.spec
                            .tcp
                            .iter()
                            .flat_map(|t| t.route.iter().map(|d| &d.destination.host)),
                    )
                    .chain(
                        v.spec
                            .tls
                            .iter()
                            .flat_map(|t| t.route.iter().map(|d| &d.destination.host)),
                    );
                for d in dests {
                    if by_host.contains_key(d.as_str()) {
                        continue;
                    }
                    if let Some(s) = snap.service_for(d, ns) {
                        by_host.insert(&s.hostname, s);
                    }
                }
            }
        }
        let mut mesh_vs_exact: HashMap<String, Vec<&VirtualServiceConfig>> = HashMap::new();
        let mut mesh_vs_wild: Vec<(String, &VirtualServiceConfig)> = Vec::new();
        for v in &virtual_services {
            let mesh = v.spec.gateways.is_empty()
                || v.spec.gateways.iter().any(|g| g == "mesh")
                || v.spec.http.iter().any(|h| {
                    h.matches
                        .iter()
                        .any(|m| m.gateways.iter().any(|g| g == "mesh"))
                });
            if !mesh {
                continue;
            }
            for h in &v.spec.hosts {
                if h.starts_with('*') {
                    mesh_vs_wild.push((h.clone(), v));
                } else {
                    mesh_vs_exact.entry(h.clone()).or_default().push(v);
                }
            }
        }
        let mut services: Vec<&Service> = by_host.values().copied().collect();
        services.sort_by(|a, b| a.hostname.cmp(&b.hostname));

        let mode_str: String = match sidecar.and_then(|s| s.spec.outbound_traffic_policy.as_ref()) {
            Some(p) => p.mode.clone().unwrap_or_else(|| "REGISTRY_ONLY".into()),
            None => snap.mesh.outbound_mode().to_string(),
        };
        let mode = if mode_str == "REGISTRY_ONLY" {
            OutboundMode::RegistryOnly
        } else {
            OutboundMode::AllowAny
        };
        let connect_timeout = match Duration::parse_go(&snap.mesh.connect_timeout) {
            Ok(d) => d,
            Err(e) => {
                diags.push(Diagnostic {
                    code: "MeshConfigInvalid".into(),
                    severity: Severity::Warning,
                    stage: isthmus_api::Stage::Load,
                    kind: Some("ConfigMap".into()),
                    namespace: Some(snap.mesh.root_namespace.clone()),
                    name: Some("istio".into()),
                    field: Some("connectTimeout".into()),
                    file: String::new(),
                    line: 0,
                    column: 0,
                    message: format!("{e}; using 10s"),
                });
                Duration::from_secs(10)
            }
        };
        Ctx {
            snap,
            proxy,
            diags,
            services,
            by_host,
            sidecar,
            mode,
            connect_timeout,
            virtual_services,
            used_subsets: BTreeSet::new(),
            applied_drs: BTreeMap::new(),
            sds_refs: BTreeMap::new(),
            mesh_vs_exact,
            mesh_vs_wild,
        }
    }

    /// The mesh VirtualService that owns `host` on sidecars: the oldest with the exact host,
    /// else the oldest whose wildcard host covers it.
    pub fn mesh_vs_for(&self, host: &str) -> Option<&'a VirtualServiceConfig> {
        if let Some(v) = self.mesh_vs_exact.get(host).and_then(|v| v.first()) {
            return Some(v);
        }
        self.mesh_vs_wild
            .iter()
            .find(|(h, _)| host_matches(h, host))
            .map(|(_, v)| *v)
    }

    pub fn service(&self, host: &str) -> Option<&'a Service> {
        self.by_host.get(host).copied()
    }

    /// Parses an API duration; a bad one is reported on `meta` and ignored.
    pub fn parse_duration(
        &mut self,
        meta: &isthmus_model::ConfigMeta,
        field: &str,
        s: &str,
    ) -> Option<Duration> {
        match Duration::parse_go(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.diags.push(diag(
                    meta,
                    Severity::Warning,
                    "InvalidDuration",
                    Some(field),
                    format!("{e}; the setting is ignored"),
                ));
                None
            }
        }
    }

    /// Subsets declared by DRs this proxy uses that no compiled route targets.
    pub fn unused_subset_diagnostics(&mut self) {
        // A subset is "used" if any VS anywhere in the snapshot routes to it: subsets are
        // consumed by other proxies' routes too, so look at all VSs, not only this proxy's.
        // Borrowed pairs: this runs once per proxy over every VS in the mesh, so no clones.
        let snap: &'a Snapshot = self.snap;
        let mut used: std::collections::HashSet<(&str, &str)> = self
            .used_subsets
            .iter()
            .map(|(h, s)| (h.as_str(), s.as_str()))
            .collect();
        for v in &snap.virtual_services {
            let dests = v
                .spec
                .http
                .iter()
                .flat_map(|h| h.route.iter().map(|d| &d.destination))
                .chain(
                    v.spec
                        .tcp
                        .iter()
                        .flat_map(|t| t.route.iter().map(|d| &d.destination)),
                )
                .chain(
                    v.spec
                        .tls
                        .iter()
                        .flat_map(|t| t.route.iter().map(|d| &d.destination)),
                );
            for d in dests {
                if let Some(s) = &d.subset {
                    used.insert((d.host.as_str(), s.as_str()));
                }
            }
        }
        let mut out = Vec::new();
        for dr in self.applied_drs.values() {
            for s in &dr.spec.subsets {
                if !used.contains(&(dr.host.as_str(), s.name.as_str())) {
                    out.push(diag(&dr.meta, Severity::Info, "SubsetNotRouted", Some("spec.subsets"), format!("subset {:?} of host {:?} is not the destination of any VirtualService route; its trafficPolicy never takes effect", s.name, dr.host)));
                }
            }
        }
        drop(used);
        self.diags.extend(out);
    }
}

/// Whether a VS host in namespace `vs_ns` is imported by the egress hosts (either side may be
/// the wildcard: a `*.cluster.local` VS attaches to an imported exact host).
fn imported_vs(egress: &Option<Vec<(String, String)>>, vs_ns: &str, host: &str) -> bool {
    match egress {
        None => true,
        Some(list) => list.iter().any(|(ens, eh)| {
            ens != "~"
                && (ens == "*" || ens == vs_ns)
                && isthmus_model::host::hosts_intersect(eh, host)
        }),
    }
}

/// Sidecar resolution: selector Sidecar in the proxy namespace > namespace-wide Sidecar >
/// root-namespace Sidecar > none (`*/*`).
fn select_sidecar<'a>(snap: &'a Snapshot, proxy: &ProxyNode) -> Option<&'a SidecarConfig> {
    let ns = proxy.namespace.as_str();
    let with_sel = snap.sidecars.iter().find(|s| {
        s.meta.namespace == ns
            && s.spec.workload_selector.as_ref().is_some_and(|w| {
                !w.selector().is_empty()
                    && w.selector()
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
    });
    with_sel
        .or_else(|| {
            snap.sidecars.iter().find(|s| {
                s.meta.namespace == ns
                    && s.spec
                        .workload_selector
                        .as_ref()
                        .is_none_or(|w| w.selector().is_empty())
            })
        })
        .or_else(|| {
            snap.sidecars.iter().find(|s| {
                s.meta.namespace == snap.mesh.root_namespace
                    && s.spec
                        .workload_selector
                        .as_ref()
                        .is_none_or(|w| w.selector().is_empty())
            })
        })
}
