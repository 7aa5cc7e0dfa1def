//! isthmus-model: the immutable, indexed registry snapshot a compiler works from.
//!
//! [`Snapshot::build`] turns loaded objects into what istiod keeps in its PushContext:
//! services (Kubernetes Services and ServiceEntry hosts, with ports, protocols, VIPs and
//! endpoints), workloads (Pods and Deployment replicas, with sidecar/gateway detection),
//! Istio config (Gateways, VirtualServices with short names resolved, DestinationRules
//! consolidated into istiod's lookup indexes, Sidecars), Secrets and the mesh config.
//! Everything is sorted so that compiling the same inputs always gives the same output.

pub mod dr;
pub mod host;
pub mod proxy;
pub mod types;

pub use dr::{DestinationRuleIndex, MergedDestinationRule};
pub use proxy::{ProxyNode, ResolveError};
pub use types::*;

use isthmus_api::{istio, Body, Diagnostic, Kind, MeshConfig, Object, Severity, Stage};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Label/annotation names the model reads.
pub mod labels {
    pub const ISTIO_INJECTION: &str = "istio-injection";
    pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
    pub const INJECT_TEMPLATES: &str = "inject.istio.io/templates";
    pub const TLS_MODE: &str = "security.istio.io/tlsMode";
    pub const EXPORT_TO: &str = "networking.istio.io/exportTo";
    pub const ISTIO_REV: &str = "istio.io/rev";
}

/// The registry snapshot. Immutable once built; cheap lookups by host, namespace and name.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub domain_suffix: String,
    pub mesh: MeshConfig,
    /// Namespace → labels (namespaces seen in any object, declared or not).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Sorted by hostname, then namespace.
    pub services: Vec<Service>,
    /// Sorted by namespace, then name.
    pub workloads: Vec<Workload>,
    pub gateways: Vec<GatewayConfig>,
    /// Short names already expanded with the VS's namespace; gateway names as `ns/name`.
    pub virtual_services: Vec<VirtualServiceConfig>,
    pub destination_rules: Vec<DestinationRuleConfig>,
    pub sidecars: Vec<SidecarConfig>,
    /// (namespace, name) → decoded data.
    pub secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// (namespace, name) → the Secret's `type` (`kubernetes.io/tls`, `Opaque`, ...; empty when
    /// unset). Istio's key rules depend on it: `cert`/`key`/`cacert` are only read from
    /// non-TLS-typed Secrets.
    pub secret_types: BTreeMap<(String, String), String>,
    pub dr_index: DestinationRuleIndex,
    /// Hash of every input (objects, mesh config, domain): equal fingerprints compile to equal
    /// configs, so it versions every proxy's config without hashing the output.
    pub fingerprint: String,
    by_host: HashMap<String, Vec<usize>>,
    ext: Extensions,
}

/// Derived data other crates attach to a snapshot, one value per type (the compiler keeps its
/// per-snapshot cluster cache here, so every proxy compiled from one snapshot shares the
/// clusters that do not depend on the proxy). It lives and dies with the snapshot. A clone
/// starts empty: the snapshot's fields are public, and a modified clone must never see values
/// derived from the original.
#[derive(Default)]
struct Extensions(
    std::sync::Mutex<HashMap<std::any::TypeId, std::sync::Arc<dyn std::any::Any + Send + Sync>>>,
);

impl Clone for Extensions {
    fn clone(&self) -> Extensions {
        Extensions::default()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Extensions")
    }
}

fn meta_of(o: &Object) -> ConfigMeta {
    ConfigMeta {
        kind: o.kind.as_str().to_string(),
        name: o.name().to_string(),
        namespace: o.namespace().to_string(),
        creation_timestamp: o.meta.creation_timestamp.clone(),
        seq: o.seq,
        file: o.source.file.clone(),
        line: o.source.line,
        labels: o.meta.labels.clone(),
        annotations: o.meta.annotations.clone(),
    }
}

/// A diagnostic on a config object found while building or compiling.
pub fn diagnostic(
    meta: &ConfigMeta,
    severity: Severity,
    code: &str,
    field: Option<&str>,
    message: impl Into<String>,
) -> Diagnostic {
    Diagnostic {
        code: code.to_string(),
        severity,
        stage: Stage::Load,
        kind: Some(meta.kind.clone()),
        namespace: Some(meta.namespace.clone()),
        name: Some(meta.name.clone()),
        field: field.map(str::to_string),
        file: meta.file.clone(),
        line: meta.line,
        column: 1,
        message: message.into(),
    }
}

/// A workload as an endpoint of a Service or ServiceEntry port. The endpoint's tlsMode comes
/// from the pod's `security.istio.io/tlsMode` label, as istiod reads it (only the sidecar
/// injection template sets it), and decides auto-mTLS towards it.
fn workload_endpoint(
    w: &Workload,
    port: u32,
    service_port: u32,
    spiffe: &dyn Fn(&str, &str) -> String,
) -> ServiceEndpoint {
    let istio = w.labels.get(labels::TLS_MODE).map(String::as_str) == Some("istio");
    ServiceEndpoint {
        address: w.ip.clone(),
        port,
        service_port,
        labels: w.labels.clone(),
        tls_mode: if istio { "istio" } else { "disabled" }.into(),
        service_account: spiffe(&w.namespace, &w.service_account),
        workload: w.deployment.clone().unwrap_or_else(|| w.name.clone()),
        namespace: w.namespace.clone(),
        weight: None,
    }
}

fn ipv4(n: u32) -> String {
    format!(
        "{}.{}.{}.{}",
        n >> 24,
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

fn fnv32a(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Kubernetes' `SafeEncodeString` alphabet, used for generated pod-name suffixes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn safe_suffix(seed: &str, len: usize) -> String {
    let mut h = fnv32a(seed) as u64 | ((fnv32a(&format!("{seed}#")) as u64) << 32);
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        out.push(SAFE_ALPHABET[(h % SAFE_ALPHABET.len() as u64) as usize] as char);
        h /= SAFE_ALPHABET.len() as u64;
        if h == 0 {
            h = fnv32a(&out) as u64 + 7;
        }
    }
    out
}

/// Allocates ServiceEntry VIPs as Istio's legacy allocator does: FNV-32a of `namespace/host`
/// into the 240.240.0.0/16 slot space (skipping .0 and .255), linear-probed on collision in
/// sorted order so the result never depends on load order.
fn allocate_se_vips(keys: &[(String, String)]) -> BTreeMap<(String, String), String> {
    const SLOTS: u32 = 255 * 255;
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut out = BTreeMap::new();
    let mut sorted: Vec<&(String, String)> = keys.iter().collect();
    sorted.sort();
    for k in sorted {
        let mut x = fnv32a(&format!("{}/{}", k.0, k.1)) % SLOTS;
        loop {
            if !x.is_multiple_of(255) && !used.contains(&x) {
                break;
            }
            x = (x + 1) % SLOTS;
        }
        used.insert(x);
        out.insert(k.clone(), format!("240.240.{}.{}", x / 255, x % 255));
    }
    out
}

/// FNV-1a 64 over the inputs, streamed through serde_json.
fn fingerprint(objects: &[Object], mesh: &MeshConfig, domain: &str) -> String {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for b in buf {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    let _ = std::io::Write::write_all(&mut h, domain.as_bytes());
    let _ = serde_json::to_writer(&mut h, mesh);
    for o in objects {
        let _ = serde_json::to_writer(&mut h, &(o.kind, &o.meta, &o.raw, o.seq));
    }
    format!("{:016x}", h.0)
}

/// `./name` / `name` → `<ns>/name`; legacy `name.ns.svc.<domain>` → `ns/name`; `mesh` kept.
pub fn resolve_gateway_name(gw: &str, vs_ns: &str) -> String {
    if gw == "mesh" {
        return gw.to_string();
    }
    if let Some(rest) = gw.strip_prefix("./") {
        return format!("{vs_ns}/{rest}");
    }
    if gw.contains('/') {
        return gw.to_string();
    }
    let parts: Vec<&str> = gw.split('.').collect();
    if parts.len() >= 2 {
        return format!("{}/{}", parts[1], parts[0]);
    }
    format!("{vs_ns}/{gw}")
}

fn normalize_vs(vs: &mut istio::VirtualService, ns: &str, domain: &str) {
    let r = |h: &str| host::resolve_short_name(h, ns, domain);
    vs.hosts = vs.hosts.iter().map(|h| r(h)).collect();
    vs.gateways = vs
        .gateways
        .iter()
        .map(|g| resolve_gateway_name(g, ns))
        .collect();
    for h in &mut vs.http {
        for m in &mut h.matches {
            m.gateways = m
                .gateways
                .iter()
                .map(|g| resolve_gateway_name(g, ns))
                .collect();
        }
        for d in &mut h.route {
            d.destination.host = r(&d.destination.host);
        }
        if let Some(m) = &mut h.mirror {
            m.host = r(&m.host);
        }
    }
    for t in &mut vs.tls {
        for m in &mut t.matches {
            m.gateways = m
                .gateways
                .iter()
                .map(|g| resolve_gateway_name(g, ns))
                .collect();
        }
        for d in &mut t.route {
            d.destination.host = r(&d.destination.host);
        }
    }
    for t in &mut vs.tcp {
        for m in &mut t.matches {
            m.gateways = m
                .gateways
                .iter()
                .map(|g| resolve_gateway_name(g, ns))
                .collect();
        }
        for d in &mut t.route {
            d.destination.host = r(&d.destination.host);
        }
    }
}

/// Whether a workload is a gateway: `istio: ingressgateway|egressgateway` or the gateway
/// injection template.
fn is_gateway(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> bool {
    matches!(
        labels.get("istio").map(String::as_str),
        Some("ingressgateway") | Some("egressgateway")
    ) || annotations
        .get(labels::INJECT_TEMPLATES)
        .is_some_and(|t| t.split(',').any(|x| x.trim() == "gateway"))
}

fn proxy_kind(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> ProxyKind {
    if is_gateway(labels, annotations) {
        return ProxyKind::Router;
    }
    let explicit = annotations
        .get(labels::SIDECAR_INJECT)
        .or_else(|| labels.get(labels::SIDECAR_INJECT));
    if explicit.is_some_and(|v| v == "false") {
        return ProxyKind::None;
    }
    if explicit.is_some_and(|v| v == "true") {
        return ProxyKind::Sidecar;
    }
    let ns_on = ns_labels.is_some_and(|l| {
        l.get(labels::ISTIO_INJECTION)
            .is_some_and(|v| v == "enabled")
            || (l.contains_key(labels::ISTIO_REV)
                && l.get(labels::ISTIO_INJECTION)
                    .is_none_or(|v| v != "disabled"))
    });
    if ns_on {
        ProxyKind::Sidecar
    } else {
        ProxyKind::None
    }
}

fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Snapshot {
    /// Builds the snapshot. Diagnostics name the offending object (e.g. a DestinationRule whose
    /// host matches no service, a named targetPort no container declares).
    pub fn build(
        objects: &[Object],
        mesh: MeshConfig,
        domain_suffix: &str,
    ) -> (Snapshot, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let domain = domain_suffix.to_string();
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for o in objects {
            if o.kind == Kind::Namespace {
                namespaces.insert(o.name().to_string(), o.meta.labels.clone());
            }
        }
        for o in objects {
            if o.kind != Kind::Namespace {
                namespaces.entry(o.namespace().to_string()).or_default();
            }
        }

        // Workloads: pods, then deployment replicas.
        let mut workloads: Vec<Workload> = Vec::new();
        for o in objects {
            match &o.body {
                Body::Pod(spec) => {
                    let ns = o.namespace().to_string();
                    let mut lbls = o.meta.labels.clone();
                    let kind = proxy_kind(&lbls, &o.meta.annotations, namespaces.get(&ns));
                    // Only the sidecar injection template adds `security.istio.io/tlsMode:
                    // istio`; gateway pods (classic charts or the `gateway` template) carry no
                    // such label, so auto-mTLS does not wrap traffic to a gateway (an egress
                    // PASSTHROUGH gateway must receive the app's own TLS).
                    if kind == ProxyKind::Sidecar {
                        lbls.entry(labels::TLS_MODE.into())
                            .or_insert_with(|| "istio".into());
                    }
                    workloads.push(Workload {
                        name: o.name().to_string(),
                        namespace: ns,
                        labels: lbls,
                        annotations: o.meta.annotations.clone(),
                        service_account: spec.service_account().to_string(),
                        ip: String::new(),
                        proxy: kind,
                        deployment: None,
                        container_ports: spec
                            .containers
                            .iter()
                            .flat_map(|c| c.ports.iter())
                            .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
                            .collect(),
                        meta: meta_of(o),
                    });
                }
                Body::Deployment(spec) => {
                    let ns = o.namespace().to_string();
                    let tmpl = &spec.template;
                    let mut lbls = tmpl.metadata.labels.clone();
                    let kind = proxy_kind(&lbls, &tmpl.metadata.annotations, namespaces.get(&ns));
                    // Only the sidecar injection template adds `security.istio.io/tlsMode:
                    // istio`; gateway pods (classic charts or the `gateway` template) carry no
                    // such label, so auto-mTLS does not wrap traffic to a gateway (an egress
                    // PASSTHROUGH gateway must receive the app's own TLS).
                    if kind == ProxyKind::Sidecar {
                        lbls.entry(labels::TLS_MODE.into())
                            .or_insert_with(|| "istio".into());
                    }
                    let hash = safe_suffix(&format!("{ns}/{}", o.name()), 10);
                    let replicas = spec.replicas.unwrap_or(1);
                    for i in 0..replicas {
                        let name = format!(
                            "{}-{hash}-{}",
                            o.name(),
                            safe_suffix(&format!("{ns}/{}/{i}", o.name()), 5)
                        );
                        workloads.push(Workload {
                            name,
                            namespace: ns.clone(),
                            labels: lbls.clone(),
                            annotations: tmpl.metadata.annotations.clone(),
                            service_account: tmpl.spec.service_account().to_string(),
                            ip: String::new(),
                            proxy: kind,
                            deployment: Some(o.name().to_string()),
                            container_ports: tmpl
                                .spec
                                .containers
                                .iter()
                                .flat_map(|c| c.ports.iter())
                                .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
                                .collect(),
                            meta: meta_of(o),
                        });
                    }
                }
                _ => {}
            }
        }
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let pod_base: u32 = (10 << 24) | (244 << 16);
        for (i, w) in workloads.iter_mut().enumerate() {
            w.ip = ipv4(pod_base + 10 + i as u32);
        }

        let spiffe = |ns: &str, sa: &str| format!("spiffe://{}/ns/{ns}/sa/{sa}", mesh.trust_domain);

        // Kubernetes Services.
        let mut services: Vec<Service> = Vec::new();
        let declared_ips: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| o.as_service())
            .filter_map(|s| s.cluster_ip.clone())
            .collect();
        for o in objects {
            let Some(spec) = o.as_service() else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let ns = o.namespace().to_string();
            let meta = meta_of(o);
            let hostname = format!("{}.{ns}.svc.{domain}", o.name());
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port,
                    protocol: Protocol::from_k8s(
                        p.name.as_deref(),
                        p.app_protocol.as_deref(),
                        p.protocol.as_deref(),
                        p.port,
                    ),
                    target_port: p.target_port.as_ref().map(|t| match t {
                        isthmus_api::k8s::IntOrString::Int(n) => {
                            TargetPort::Number(u32::try_from(*n).unwrap_or(0))
                        }
                        isthmus_api::k8s::IntOrString::Str(s) => match s.parse::<u32>() {
                            Ok(n) => TargetPort::Number(n),
                            Err(_) => TargetPort::Name(s.clone()),
                        },
                    }),
                })
                .collect();
            let mut endpoints = Vec::new();
            let mut sas = BTreeSet::new();
            for w in workloads
                .iter()
                .filter(|w| w.namespace == ns && selector_matches(&spec.selector, &w.labels))
            {
                sas.insert(spiffe(&w.namespace, &w.service_account));
                for p in &ports {
                    let port = match &p.target_port {
                        None => p.port,
                        Some(TargetPort::Number(n)) => *n,
                        Some(TargetPort::Name(n)) => match w.container_ports.get(n) {
                            Some(cp) => *cp,
                            None => {
                                diags.push(diagnostic(&meta, Severity::Warning, "NamedTargetPortNotFound", Some("spec.ports.targetPort"), format!("targetPort {n:?} of port {} is not a named container port of pod {}/{}; the pod is not an endpoint for it", p.port, w.namespace, w.name)));
                                continue;
                            }
                        },
                    };
                    endpoints.push(workload_endpoint(w, port, p.port, &spiffe));
                }
            }
            let headless = spec.is_headless();
            let export_to = o
                .meta
                .annotations
                .get(labels::EXPORT_TO)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            services.push(Service {
                hostname,
                name: o.name().to_string(),
                namespace: ns,
                registry: Registry::Kubernetes,
                ports,
                address: if headless {
                    None
                } else {
                    spec.cluster_ip.clone()
                },
                auto_allocated_address: None,
                auto_allocated_in_use: false,
                resolution: if headless {
                    Resolution::Passthrough
                } else {
                    Resolution::ClientSideLb
                },
                mesh_external: false,
                export_to,
                service_accounts: sas.into_iter().collect(),
                selector: spec.selector.clone(),
                endpoints,
                meta,
            });
        }
        // Deterministic cluster IPs for Services that declare none (sorted by FQDN).
        {
            let mut order: Vec<usize> = (0..services.len())
                .filter(|&i| {
                    services[i].address.is_none()
                        && services[i].resolution != Resolution::Passthrough
                })
                .collect();
            order.sort_by(|&a, &b| services[a].hostname.cmp(&services[b].hostname));
            let base: u32 = (10 << 24) | (96 << 16);
            let mut next = 10u32;
            for i in order {
                let ip = loop {
                    let ip = ipv4(base + next);
                    next += 1;
                    if !declared_ips.contains(&ip) {
                        break ip;
                    }
                };
                services[i].address = Some(ip);
            }
        }

        // ServiceEntries: one service per host.
        let mut se_vip_keys = Vec::new();
        let mut se_services = Vec::new();
        for o in objects {
            let Some(se) = o.as_service_entry() else {
                continue;
            };
            let ns = o.namespace().to_string();
            let meta = meta_of(o);
            let resolution = match se.resolution() {
                "STATIC" => Resolution::ClientSideLb,
                "DNS" => Resolution::Dns,
                "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
                _ => Resolution::Passthrough,
            };
            let ports: Vec<ServicePort> = se
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    port: p.number,
                    protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("")),
                    target_port: p.target_port.map(TargetPort::Number),
                })
                .collect();
            let selector = se
                .workload_selector
                .as_ref()
                .map(|w| w.selector().clone())
                .unwrap_or_default();
            for h in &se.hosts {
                let mut endpoints = Vec::new();
                for p in &se.ports {
                    if !se.endpoints.is_empty() {
                        for ep in &se.endpoints {
                            let port = ep
                                .ports
                                .get(&p.name)
                                .copied()
                                .filter(|x| *x > 0)
                                .or(p.target_port)
                                .unwrap_or(p.number);
                            let tls =
                                ep.labels.get(labels::TLS_MODE).cloned().unwrap_or_else(|| {
                                    if ep.service_account.is_some() {
                                        "istio".into()
                                    } else {
                                        "disabled".into()
                                    }
                                });
                            endpoints.push(ServiceEndpoint {
                                address: ep.address.clone().unwrap_or_default(),
                                port,
                                service_port: p.number,
                                labels: ep.labels.clone(),
                                tls_mode: tls,
                                service_account: ep
                                    .service_account
                                    .as_ref()
                                    .map(|sa| spiffe(&ns, sa))
                                    .unwrap_or_default(),
                                workload: o.name().to_string(),
                                namespace: ns.clone(),
                                weight: ep.weight,
                            });
                        }
                    } else if !selector.is_empty() {
                        for w in workloads
                            .iter()
                            .filter(|w| w.namespace == ns && selector_matches(&selector, &w.labels))
                        {
                            endpoints.push(workload_endpoint(
                                w,
                                p.target_port.unwrap_or(p.number),
                                p.number,
                                &spiffe,
                            ));
                        }
                    } else if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
                        endpoints.push(ServiceEndpoint {
                            address: h.clone(),
                            port: p.target_port.unwrap_or(p.number),
                            service_port: p.number,
                            labels: BTreeMap::new(),
                            tls_mode: "disabled".into(),
                            service_account: String::new(),
                            workload: String::new(),
                            namespace: String::new(),
                            weight: None,
                        });
                    }
                }
                let address = se
                    .addresses
                    .first()
                    .map(|a| a.strip_suffix("/32").unwrap_or(a).to_string());
                if address.is_none() && !h.starts_with('*') && resolution != Resolution::Passthrough
                {
                    se_vip_keys.push((ns.clone(), h.clone()));
                }
                se_services.push(Service {
                    hostname: h.clone(),
                    name: h.clone(),
                    namespace: ns.clone(),
                    registry: Registry::ServiceEntry,
                    ports: ports.clone(),
                    address,
                    auto_allocated_address: None,
                    auto_allocated_in_use: false,
                    resolution,
                    mesh_external: se.location() == "MESH_EXTERNAL",
                    export_to: se.export_to.clone(),
                    service_accounts: se.subject_alt_names.clone(),
                    selector: selector.clone(),
                    endpoints,
                    meta: meta.clone(),
                });
            }
        }
        let vips = allocate_se_vips(&se_vip_keys);
        // Proxies consume the allocation only with DNS capture (Istio's
        // `nodeUsesAutoallocatedIPs`: auto-allocation on — the controller is, since 1.25 — AND
        // `ISTIO_META_DNS_CAPTURE`, off by default). Without it the app resolves the host's real
        // address, listeners stay `0.0.0.0_PORT`, and a call that misses every route leaves
        // through PassthroughCluster to that real address (seed 001, trap 3).
        let dns_capture = mesh
            .default_config
            .proxy_metadata
            .get("ISTIO_META_DNS_CAPTURE")
            .is_some_and(|v| v == "true");
        for s in &mut se_services {
            if s.address.is_none() {
                s.auto_allocated_address = vips
                    .get(&(s.namespace.clone(), s.hostname.clone()))
                    .cloned();
                s.auto_allocated_in_use = dns_capture;
            }
        }
        services.extend(se_services);
        services.sort_by(|a, b| {
            (&a.hostname, &a.namespace, a.meta.seq).cmp(&(&b.hostname, &b.namespace, b.meta.seq))
        });
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            by_host.entry(s.hostname.clone()).or_default().push(i);
        }

        // Istio config.
        let mut gateways = Vec::new();
        let mut virtual_services = Vec::new();
        let mut destination_rules = Vec::new();
        let mut sidecars = Vec::new();
        let mut secrets = BTreeMap::new();
        let mut secret_types = BTreeMap::new();
        for o in objects {
            let meta = meta_of(o);
            match &o.body {
                Body::Gateway(g) => gateways.push(Config {
                    meta,
                    spec: g.clone(),
                }),
                Body::VirtualService(v) => {
                    let mut spec = v.clone();
                    normalize_vs(&mut spec, &meta.namespace, &domain);
                    virtual_services.push(Config { meta, spec });
                }
                Body::DestinationRule(d) => destination_rules.push(Config {
                    meta,
                    spec: d.clone(),
                }),
                Body::Sidecar(s) => sidecars.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Body::Secret(s) => match s.decoded() {
                    Ok(data) => {
                        let key = (meta.namespace.clone(), meta.name.clone());
                        secret_types.insert(key.clone(), s.type_.clone().unwrap_or_default());
                        secrets.insert(key, data);
                    }
                    Err(e) => diags.push(diagnostic(
                        &meta,
                        Severity::Error,
                        "SecretDecode",
                        Some("data"),
                        e,
                    )),
                },
                _ => {}
            }
        }
        let by_age = |a: &ConfigMeta, b: &ConfigMeta| {
            a.age_key()
                .cmp(&b.age_key())
                .then_with(|| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)))
        };
        gateways.sort_by(|a, b| by_age(&a.meta, &b.meta));
        virtual_services.sort_by(|a, b| by_age(&a.meta, &b.meta));
        destination_rules.sort_by(|a, b| by_age(&a.meta, &b.meta));
        sidecars.sort_by(|a, b| by_age(&a.meta, &b.meta));

        let dr_index = DestinationRuleIndex::build(
            &destination_rules,
            &domain,
            &mesh.root_namespace,
            &mesh.default_destination_rule_export_to,
        );

        // DRs whose host matches nothing compile to nothing: say so. Exact hosts are looked up
        // (one scan of every service per DR is quadratic at mesh scale); wildcards scan.
        let lower_hosts: std::collections::HashSet<String> = services
            .iter()
            .map(|s| s.hostname.to_ascii_lowercase())
            .collect();
        for dr in &destination_rules {
            let h = host::resolve_short_name(&dr.spec.host, &dr.meta.namespace, &domain);
            let matched = if h.starts_with('*') {
                services.iter().any(|s| host::host_matches(&h, &s.hostname))
            } else {
                lower_hosts.contains(&h.to_ascii_lowercase())
            };
            if !matched {
                let hint = if !dr.spec.host.contains('.') {
                    format!(" (the short name {:?} expands with the DestinationRule's namespace to {h:?})", dr.spec.host)
                } else {
                    String::new()
                };
                diags.push(diagnostic(&dr.meta, Severity::Warning, "DestinationRuleHostNotFound", Some("spec.host"), format!("host {h:?} matches no service or ServiceEntry; this DestinationRule applies to nothing{hint}")));
            }
        }

        let fingerprint = fingerprint(objects, &mesh, &domain);
        let snap = Snapshot {
            fingerprint,
            domain_suffix: domain,
            mesh,
            namespaces,
            services,
            workloads,
            gateways,
            virtual_services,
            destination_rules,
            sidecars,
            secrets,
            secret_types,
            dr_index,
            by_host,
            ext: Extensions::default(),
        };
        (snap, diags)
    }

    /// Services with exactly this hostname (several namespaces may declare the same SE host).
    pub fn services_by_host(&self, host: &str) -> impl Iterator<Item = &Service> {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(move |&i| &self.services[i])
    }

    /// The service a client in `ns` sees for `host`: its own namespace's first, else the first
    /// visible one.
    pub fn service_for(&self, host: &str, ns: &str) -> Option<&Service> {
        let mut visible = self.services_by_host(host).filter(|s| s.visible_from(ns));
        let all: Vec<&Service> = visible.by_ref().collect();
        all.iter()
            .find(|s| s.namespace == ns)
            .copied()
            .or_else(|| all.first().copied())
    }

    /// The Kubernetes Services selecting a workload (for gateway port translation and inbound).
    pub fn services_selecting(&self, w: &Workload) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|s| {
                s.registry == Registry::Kubernetes
                    && s.namespace == w.namespace
                    && selector_matches(&s.selector, &w.labels)
            })
            .collect()
    }

    /// Gateways selecting a workload's labels (any namespace, as istiod does by default).
    pub fn gateways_for(&self, labels: &BTreeMap<String, String>) -> Vec<&GatewayConfig> {
        self.gateways
            .iter()
            .filter(|g| selector_matches(&g.spec.selector, labels))
            .collect()
    }

    /// The merged DestinationRule a proxy uses for `service` (outbound direction), per §1.3/§1.4.
    pub fn destination_rule(
        &self,
        proxy_ns: &str,
        proxy_labels: &BTreeMap<String, String>,
        service: &Service,
    ) -> Option<&MergedDestinationRule> {
        self.dr_index.lookup_select(
            proxy_ns,
            &service.namespace,
            &service.hostname,
            proxy_labels,
            true,
        )
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }

    /// The value of type `T` attached to this snapshot, created with `T::default()` on first
    /// use. Values must be pure functions of the snapshot: the snapshot is immutable once built
    /// (mutate a clone instead; clones start without extensions).
    pub fn extension<T: std::any::Any + Send + Sync + Default>(&self) -> std::sync::Arc<T> {
        let mut map = match self.ext.0.lock() {
            Ok(m) => m,
            // A panic while another thread held the lock leaves nothing half-written here
            // (entries are inserted whole), so the map is still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        let any = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| std::sync::Arc::new(T::default()))
            .clone();
        drop(map);
        // The entry for TypeId::of::<T>() is only ever a T.
        any.downcast::<T>()
            .unwrap_or_else(|_| std::sync::Arc::new(T::default()))
    }

    /// The SPIFFE identity of a service account.
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.mesh.trust_domain)
    }
}
