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
mod route;
mod routecache;
mod scope;
pub mod secrets;
mod sidecar;
pub mod simulate;
mod tls;

pub use render::{render, render_compiled, ConfigKind, Filter, Format, RenderError};
pub use secrets::{SecretState, SecretStatus, SecretType};

use isthmus_api::{Diagnostic, Severity};
use isthmus_model::{ConfigMeta, ProxyNode, Snapshot};
use isthmus_xds::{Node, NodeMetadata, ProxyConfig, ProxyType};

/// The result of compiling one proxy.
#[derive(Debug, Clone)]
pub struct CompiledProxy {
    pub config: ProxyConfig,
    /// Every SDS secret the proxy needs (`default`, `ROOTCA`, credentialName resources, files)
    /// with its state and certificate details, sorted by name.
    pub secrets: Vec<SecretStatus>,
    /// Problems found while compiling, each on the object that caused it; sorted, de-duplicated.
    pub diagnostics: Vec<Diagnostic>,
}

/// Prepares `snapshot` for compiling many proxies, as istiod initialises its PushContext once
/// per push: builds, once, what proxies share and would otherwise build on first use — the
/// outbound clusters of every service (for gateways and sidecars), each namespace's mesh
/// route tables and virtual hosts, and each Gateway's HTTP route tables. Optional: [`compile`]
/// builds whatever is missing itself and its output is identical with or without this. Costs
/// about one cold compile of each kind; worth it when more than a couple of proxies follow.
pub fn prepare(snapshot: &Snapshot) {
    cluster::prepare(snapshot);
    sidecar::prepare(snapshot);
    gateway::prepare(snapshot);
}

/// The namespaces holding a proxy of `kind` (workloads with a sidecar or gateway), where
/// [`prepare`] builds the shared parts from: DestinationRule selection and visibility depend
/// on the proxy's namespace.
pub(crate) fn proxy_namespaces(
    snap: &Snapshot,
    kind: ProxyType,
) -> std::collections::BTreeSet<String> {
    snap.proxies()
        .filter(|(_, p)| p.kind == kind)
        .map(|(_, p)| p.namespace)
        .collect()
}

/// A proxy with no pod behind it, for [`prepare`]: no labels (so no workloadSelector config
/// applies) in namespace `ns`.
pub(crate) fn synthetic_proxy(kind: ProxyType, ns: &str) -> ProxyNode {
    ProxyNode {
        kind,
        name: String::new(),
        namespace: ns.to_string(),
        labels: Default::default(),
        service_account: String::new(),
        ip: String::new(),
        deployment: None,
    }
}

/// Compiles the configuration of one proxy (sidecar or gateway), judging credential
/// certificates' validity at the current time.
pub fn compile(snapshot: &Snapshot, proxy: &ProxyNode) -> CompiledProxy {
    compile_at(snapshot, proxy, std::time::SystemTime::now())
}

/// [`compile`] with an explicit clock: `now` only decides the `valid` flag of credential
/// certificates in [`CompiledProxy::secrets`]; the pushed config does not depend on it.
pub fn compile_at(
    snapshot: &Snapshot,
    proxy: &ProxyNode,
    now: std::time::SystemTime,
) -> CompiledProxy {
    let t0 = std::time::Instant::now();
    let mut ctx = scope::Ctx::new(snapshot, proxy);
    let mut cfg = ProxyConfig {
        node: Node {
            id: proxy.node_id(&snapshot.domain_suffix),
            cluster: format!(
                "{}.{}",
                proxy.deployment.as_deref().unwrap_or(&proxy.name),
                proxy.namespace
            ),
            metadata: NodeMetadata {
                name: proxy.name.clone(),
                namespace: proxy.namespace.clone(),
                labels: proxy.labels.clone(),
                service_account: proxy.service_account.clone(),
                instance_ips: vec![proxy.ip.clone()],
                proxy_type: if proxy.kind == ProxyType::Router {
                    "router".into()
                } else {
                    "sidecar".into()
                },
                trust_domain: snapshot.mesh.trust_domain.clone(),
                cluster_id: "Kubernetes".into(),
                spiffe_id: snapshot.spiffe_id(&proxy.namespace, &proxy.service_account),
            },
        },
        ..Default::default()
    };
    let timing = std::env::var_os("ISTHMUS_COMPILE_TIMING").is_some();
    let t = std::time::Instant::now();
    cluster::build_clusters(&mut ctx, &mut cfg);
    let t_cds = t.elapsed();
    match proxy.kind {
        ProxyType::Router => gateway::build(&mut ctx, &mut cfg),
        ProxyType::Sidecar => sidecar::build(&mut ctx, &mut cfg),
    }
    let t_lds = t.elapsed();
    let secrets = secrets::collect(&mut ctx, &mut cfg, now);
    ctx.unused_subset_diagnostics();
    let t_diag = t.elapsed();

    sort_by_name(&mut cfg.clusters, |c| &c.name);
    sort_by_name(&mut cfg.endpoints, |e| &e.cluster_name);
    sort_by_name(&mut cfg.listeners, |l| &l.name);
    sort_by_name(&mut cfg.routes, |r| &r.name);
    sort_by_name(&mut cfg.secrets, |s| &s.name);
    let t_sort = t.elapsed();
    // The snapshot fingerprint plus the proxy identity determine the output (compile is pure),
    // so they version it without serialising the whole config.
    cfg.version = version_of(&snapshot.fingerprint, &cfg.node.id, &proxy.labels);
    if timing {
        eprintln!(
            "compile {}: scope {:?} cds {t_cds:?} lds+rds {:?} diag {:?} sort {:?} hash {:?}",
            proxy.name,
            t0.elapsed() - t.elapsed(),
            t_lds - t_cds,
            t_diag - t_lds,
            t_sort - t_diag,
            t.elapsed() - t_sort
        );
    }

    let mut diagnostics = std::mem::take(&mut ctx.diags);
    diagnostics.sort_by(|a, b| {
        (&a.file, a.line, &a.code, &a.message).cmp(&(&b.file, b.line, &b.code, &b.message))
    });
    diagnostics.dedup();
    CompiledProxy {
        config: cfg,
        secrets,
        diagnostics,
    }
}

/// Stable sort by a name key. Config elements are large (a cluster is ~1 KiB), so the indices
/// are sorted and the permutation is applied in place by following its cycles: no second buffer
/// of the whole vector, each element swapped at most once per position.
fn sort_by_name<T>(v: &mut [T], key: impl Fn(&T) -> &str) {
    let n = v.len();
    let order = match grouped_order(v, &key) {
        Some(o) => o,
        None => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| key(&v[a]).cmp(key(&v[b])));
            order
        }
    };
    // order[i] = the index of the element that belongs at position i.
    let mut done = vec![false; n];
    for start in 0..n {
        if done[start] {
            continue;
        }
        let mut i = start;
        loop {
            done[i] = true;
            let j = order[i];
            if j == start {
                break;
            }
            v.swap(i, j);
            i = j;
        }
    }
}

/// The sorted order without comparing whole names, when the input allows it. Cluster and
/// endpoint names are `outbound|PORT|SUBSET|HOST`, produced service by service in hostname
/// order: grouped by their `dir|port|subset|` prefix (few distinct ones), each group is already
/// in ascending order, and groups in prefix order give the lexicographic order (a prefix with
/// three `|` is never a proper prefix of another such prefix, so two names from different
/// groups differ inside their prefixes). `None` when some group is not strictly ascending; the
/// caller then sorts. Saves a comparison sort over 30k names whose bytes are scattered over the
/// heap (the dominant cost once clusters are shared).
fn grouped_order<T>(v: &[T], key: &impl Fn(&T) -> &str) -> Option<Vec<usize>> {
    fn prefix_len(name: &str) -> usize {
        let mut pipes = 0;
        for (i, b) in name.bytes().enumerate() {
            if b == b'|' {
                pipes += 1;
                if pipes == 3 {
                    return i + 1;
                }
            }
        }
        name.len()
    }
    // (prefix, members); few groups, so a linear search that tries the last hit first.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut last = 0;
    for (i, x) in v.iter().enumerate() {
        let name = key(x);
        let prefix = &name[..prefix_len(name)];
        if groups.get(last).is_none_or(|(p, _)| *p != prefix) {
            match groups.iter().position(|(p, _)| *p == prefix) {
                Some(g) => last = g,
                None => {
                    if groups.len() >= 64 {
                        return None; // Not the cluster-name shape this is for.
                    }
                    groups.push((prefix, Vec::new()));
                    last = groups.len() - 1;
                }
            }
        }
        groups[last].1.push(i);
    }
    groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut order = Vec::with_capacity(v.len());
    for (prefix, idx) in groups {
        let rest = |i: usize| &key(&v[i])[prefix.len()..];
        if idx.windows(2).any(|w| rest(w[0]) >= rest(w[1])) {
            return None;
        }
        order.extend(idx);
    }
    Some(order)
}

fn version_of(
    fingerprint: &str,
    node_id: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    feed(fingerprint);
    feed(node_id);
    for (k, v) in labels {
        feed(k);
        feed(v);
    }
    format!("{h:016x}")
}

pub(crate) fn diag(
    meta: &ConfigMeta,
    severity: Severity,
    code: &str,
    field: Option<&str>,
    message: impl Into<String>,
) -> Diagnostic {
    isthmus_model::diagnostic(meta, severity, code, field, message)
}

#[cfg(test)]
mod tests {
    use super::sort_by_name;

    #[test]
    fn sort_by_name_is_a_stable_sort() {
        // Pseudo-random names with duplicates; the tag checks stability.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut v: Vec<(String, usize)> = (0..500)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (format!("n{}", x % 97), i)
            })
            .collect();
        let mut want = v.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        sort_by_name(&mut v, |e| &e.0);
        assert_eq!(v, want);
    }

    #[test]
    fn grouped_order_equals_a_full_sort_or_declines() {
        // Cluster-like names produced per host (hosts ascending), plus odd names.
        let hosts = ["a.ns", "b.ns", "b.ns2", "c.other", "z"];
        let mut v: Vec<(String, usize)> = Vec::new();
        for h in hosts {
            for (port, subsets) in [("8080", &["", "v1", "v2"][..]), ("80", &["", "v1"][..])] {
                for s in subsets {
                    v.push((format!("outbound|{port}|{s}|{h}"), v.len()));
                }
            }
        }
        for odd in [
            "PassthroughCluster",
            "BlackHoleCluster",
            "inbound|9080||",
            "outbound|80|v1",
        ] {
            v.push((odd.to_string(), v.len()));
        }
        let mut want = v.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(super::grouped_order(&v, &|e: &(String, usize)| e.0.as_str()).is_some());
        let mut got = v.clone();
        sort_by_name(&mut got, |e| &e.0);
        assert_eq!(got, want);
        // Hosts out of order inside a group: the fast path declines, the result is still sorted.
        v.swap(0, 3 * 2 + 2 * 2);
        assert!(super::grouped_order(&v, &|e: &(String, usize)| e.0.as_str()).is_none());
        let mut got = v.clone();
        sort_by_name(&mut got, |e| &e.0);
        let mut want = v.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);
    }
}
