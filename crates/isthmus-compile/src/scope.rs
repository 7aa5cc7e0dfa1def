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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a for the per-compile maps keyed by host names and pointers: they are looked up once
/// or more per service (10k+ per proxy), where SipHash's DoS resistance buys nothing (keys come
/// from the operator's own config) and costs ~5% of a compile.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf29ce484222325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

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
    pub by_host: FastMap<&'a str, &'a Service>,
    pub sidecar: Option<&'a SidecarConfig>,
    pub mode: OutboundMode,
    pub connect_timeout: Duration,
    /// VirtualServices visible from the proxy namespace, oldest first.
    pub virtual_services: Vec<&'a VirtualServiceConfig>,
    /// (host, subset) pairs that some compiled route used.
    pub used_subsets: UsedSubsets<'a>,
    /// While a shareable result (routes) is being built: every proxy-dependent lookup it made,
    /// so that another proxy can check the result applies to it too (see [`DepLog`]).
    pub(crate) deps: std::cell::RefCell<Option<DepLog>>,
    /// The snapshot's shared route tables and vhosts (fetched once per compile).
    pub(crate) route_cache: std::sync::Arc<crate::routecache::RouteCache>,
    /// DRs that produced clusters for this proxy, in first-use order without repeats (by
    /// address: a map keyed by names costs a string-comparing tree insert per service).
    pub applied_drs: Vec<&'a MergedDestinationRule>,
    applied_seen: FastSet<usize>,
    /// The outbound DR of each service this proxy resolved (by the service's address in the
    /// snapshot): clusters, routes and TCP chains all ask for it, and each lookup walks
    /// istiod's namespace precedence and allocates.
    dr_memo: FastMap<usize, Option<&'a MergedDestinationRule>>,
    /// `filterMetadata.istio.config` paths by config address, formatted once per compile.
    config_paths: FastMap<usize, String>,
    /// `kubernetes://` SDS names referenced by clusters/listeners, with every config (Gateway,
    /// DestinationRule) that referenced them, in first-reference order without repeats.
    pub sds_refs: BTreeMap<String, Vec<isthmus_model::ConfigMeta>>,
    /// Mesh VirtualServices by exact host (oldest first), and wildcard hosts (oldest first).
    pub mesh_vs_exact: FastMap<&'a str, Vec<&'a VirtualServiceConfig>>,
    pub mesh_vs_wild: Vec<(String, &'a VirtualServiceConfig)>,
    /// `.svc.<domain>`: the suffix short vhost domains are derived from.
    pub svc_suffix: String,
    /// How many SDS references were recorded (cluster caching skips builds that record any).
    pub sds_ref_calls: usize,
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
        let mut by_host: FastMap<&str, &Service> =
            FastMap::with_capacity_and_hasher(snap.services.len(), Default::default());
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
        // Sized up front: these grow to one entry per service / VS, and rehashing 10k-entry
        // tables showed up at ~7% of a compile.
        let mut mesh_vs_exact: FastMap<&str, Vec<&VirtualServiceConfig>> =
            FastMap::with_capacity_and_hasher(virtual_services.len(), Default::default());
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
                    mesh_vs_exact.entry(h.as_str()).or_default().push(v);
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
        let n = services.len();
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
            used_subsets: UsedSubsets {
                set: FastSet::with_capacity_and_hasher(2 * n, Default::default()),
                ..Default::default()
            },
            deps: std::cell::RefCell::new(None),
            route_cache: snap.extension::<crate::routecache::RouteCache>(),
            applied_drs: Vec::new(),
            applied_seen: FastSet::default(),
            dr_memo: FastMap::with_capacity_and_hasher(n, Default::default()),
            config_paths: FastMap::default(),
            sds_refs: BTreeMap::new(),
            mesh_vs_exact,
            mesh_vs_wild,
            svc_suffix: format!(".svc.{}", snap.domain_suffix),
            sds_ref_calls: 0,
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
        let s = self.by_host.get(host).copied();
        if let Some(log) = self.deps.borrow_mut().as_mut() {
            log.services.push((host.to_string(), addr_of(s)));
        }
        s
    }

    /// Whether every lookup in `log` gives this proxy the same answer it gave the proxy the
    /// log was recorded for (then a result built from those lookups is this proxy's too).
    pub(crate) fn replays(&mut self, log: &DepLog) -> bool {
        let by_host = &self.by_host;
        if !log
            .services
            .iter()
            .all(|(h, a)| addr_of(by_host.get(h.as_str()).copied()) == *a)
        {
            return false;
        }
        let snap = self.snap;
        log.drs
            .iter()
            .all(|(idx, a)| match snap.services.get(*idx) {
                Some(svc) => addr_of(self.destination_rule(svc)) == *a,
                None => false,
            })
    }

    /// Records that `dr` produced clusters for this proxy.
    pub fn applied(&mut self, dr: &'a MergedDestinationRule) {
        if self
            .applied_seen
            .insert(dr as *const MergedDestinationRule as usize)
        {
            self.applied_drs.push(dr);
        }
    }

    /// The merged DestinationRule this proxy uses for `svc` (outbound), memoised per compile.
    pub fn destination_rule(&mut self, svc: &'a Service) -> Option<&'a MergedDestinationRule> {
        let key = svc as *const Service as usize;
        let d = match self.dr_memo.get(&key) {
            Some(d) => *d,
            None => {
                let d = self
                    .snap
                    .destination_rule(&self.proxy.namespace, &self.proxy.labels, svc);
                self.dr_memo.insert(key, d);
                d
            }
        };
        if let Some(log) = self.deps.get_mut().as_mut() {
            // The index in `snap.services` names the service without a pointer; a service
            // that is not the snapshot's own (never the case today) makes the log unusable.
            let base = self.snap.services.as_ptr() as usize;
            let size = std::mem::size_of::<Service>().max(1);
            let idx = key.wrapping_sub(base) / size;
            if self
                .snap
                .services
                .get(idx)
                .is_some_and(|s| std::ptr::eq(s, svc))
            {
                log.drs.push((idx, addr_of(d)));
            } else {
                log.foreign = true;
            }
        }
        d
    }

    /// `meta.config_path()`, formatted once per config object and compile. `meta` must live in
    /// the snapshot (its address is the key).
    pub fn config_path(&mut self, meta: &'a isthmus_model::ConfigMeta) -> String {
        self.config_paths
            .entry(meta as *const isthmus_model::ConfigMeta as usize)
            .or_insert_with(|| meta.config_path())
            .clone()
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
        // That set is the same for every proxy, so it is computed once per snapshot.
        let routed = self.snap.extension::<RoutedSubsets>();
        let routed = routed.get(self.snap);
        let mut out = Vec::new();
        for dr in &self.applied_drs {
            for s in &dr.spec.subsets {
                let used = self
                    .used_subsets
                    .contains(&(dr.host.as_str(), s.name.as_str()))
                    || routed
                        .get(dr.host.as_str())
                        .is_some_and(|set| set.contains(s.name.as_str()));
                if !used {
                    out.push(diag(&dr.meta, Severity::Info, "SubsetNotRouted", Some("spec.subsets"), format!("subset {:?} of host {:?} is not the destination of any VirtualService route; its trafficPolicy never takes effect", s.name, dr.host)));
                }
            }
        }
        self.diags.extend(out);
    }
}

/// The address of a snapshot object, 0 for none: lookups are compared by identity (the
/// snapshot is immutable, so addresses are stable for its lifetime).
pub(crate) fn addr_of<T>(x: Option<&T>) -> usize {
    x.map_or(0, |x| x as *const T as usize)
}

/// The proxy-dependent lookups made while building one shareable result: which service each
/// host name resolved to for the proxy (visibility: exportTo, Sidecar egress hosts, namespace
/// preference) and which DestinationRule it selected for a service (namespace precedence,
/// workloadSelector). Direct reads of the proxy's labels or namespace are not seen here; the
/// caller keys on them itself.
#[derive(Debug, Default, Clone)]
pub(crate) struct DepLog {
    pub services: Vec<(String, usize)>,
    /// (index in `snap.services`, address of the selected merged DR or 0).
    pub drs: Vec<(usize, usize)>,
    /// A lookup that could not be logged: the result must not be shared.
    pub foreign: bool,
}

/// (host, subset) pairs some compiled route of this proxy targets. Shared route tables replay
/// the pairs their build recorded ([`UsedSubsets::replay`]), so the `SubsetNotRouted`
/// diagnostics do not depend on whether a proxy built its routes or reused them.
#[derive(Default)]
pub struct UsedSubsets<'a> {
    set: FastSet<(&'a str, &'a str)>,
    /// Pair lists of reused results (shared, not copied); only pairs the snapshot-wide
    /// [`RoutedSubsets`] does not already cover are kept in them, so usually none.
    replayed: Vec<std::sync::Arc<Vec<(String, String)>>>,
    /// Pairs inserted while recording (a shareable build in progress).
    pub(crate) log: Option<Vec<(String, String)>>,
}

impl<'a> UsedSubsets<'a> {
    pub fn insert(&mut self, pair: (&'a str, &'a str)) -> bool {
        if let Some(log) = self.log.as_mut() {
            log.push((pair.0.to_string(), pair.1.to_string()));
        }
        self.set.insert(pair)
    }

    pub fn contains(&self, pair: &(&str, &str)) -> bool {
        self.set.contains(pair)
            || self
                .replayed
                .iter()
                .any(|l| l.iter().any(|(h, s)| h == pair.0 && s == pair.1))
    }

    /// Marks pairs a reused result's build recorded.
    pub(crate) fn replay(&mut self, pairs: &std::sync::Arc<Vec<(String, String)>>) {
        if !pairs.is_empty() {
            self.replayed.push(pairs.clone());
        }
    }
}

/// Whether some VirtualService of the snapshot routes to `subset` of `host` (then marking the
/// pair used per proxy adds nothing to the `SubsetNotRouted` check).
pub(crate) fn routed_anywhere(snap: &Snapshot, host: &str, subset: &str) -> bool {
    snap.extension::<RoutedSubsets>()
        .get(snap)
        .get(host)
        .is_some_and(|s| s.contains(subset))
}

/// host → subsets that some VirtualService route (http, tcp or tls) of the snapshot targets.
#[derive(Default)]
struct RoutedSubsets(std::sync::OnceLock<FastMap<String, FastSet<String>>>);

impl RoutedSubsets {
    fn get(&self, snap: &Snapshot) -> &FastMap<String, FastSet<String>> {
        self.0.get_or_init(|| {
            let mut m: FastMap<String, FastSet<String>> = FastMap::default();
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
                        m.entry(d.host.clone()).or_default().insert(s.clone());
                    }
                }
            }
            m
        })
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
