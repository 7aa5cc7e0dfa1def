//! The per-snapshot cluster cache: proxies compiled from one snapshot share the clusters that do
//! not depend on the proxy, and a compile that hits the cache is byte-identical to one that
//! builds everything (a clone of the snapshot starts with an empty cache).

mod common;

use isthmus_compile::{compile, render, ConfigKind, Filter, Format};
use std::sync::Arc;

fn all_json(c: &isthmus_compile::CompiledProxy) -> String {
    render(&c.config, ConfigKind::All, &Filter::default(), Format::Json).expect("renders")
}

fn diag_text(c: &isthmus_compile::CompiledProxy) -> Vec<String> {
    c.diagnostics.iter().map(|d| d.to_string()).collect()
}

#[test]
fn cached_compiles_match_uncached_ones_for_every_golden_proxy() {
    for case in [
        "double-mtls",
        "egress-sni-passthrough",
        "ingress-passthrough",
        "ingress-termination",
        "port-level-wipe",
        "t91-https-over-mtls",
    ] {
        let c = common::load_case(case);
        // load_case compiled every proxy once, filling the cache; compile again (hits) and on a
        // clone (empty cache, everything built), in reverse order so a different proxy fills it.
        let fresh = c.snapshot.clone();
        for (label, first) in c.proxies.iter().rev() {
            let node = c
                .snapshot
                .proxies()
                .map(|(_, n)| n)
                .find(|n| {
                    n.name == first.config.node.metadata.name
                        && n.namespace == first.config.node.metadata.namespace
                })
                .unwrap_or_else(|| panic!("{case}/{label}: proxy not in snapshot"));
            let warm = compile(&c.snapshot, &node);
            let cold = compile(&fresh, &node);
            assert_eq!(
                all_json(first),
                all_json(&warm),
                "{case}/{label}: warm differs"
            );
            assert_eq!(
                all_json(first),
                all_json(&cold),
                "{case}/{label}: cold differs"
            );
            assert_eq!(
                diag_text(first),
                diag_text(&warm),
                "{case}/{label}: warm diagnostics"
            );
            assert_eq!(
                diag_text(first),
                diag_text(&cold),
                "{case}/{label}: cold diagnostics"
            );
        }
    }
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: app, labels: {app: a}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: app, labels: {app: b}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: special, namespace: app, labels: {app: special}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: p, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-special, namespace: app}
spec:
  host: web
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 77}}}
"#;

const WEB: &str = "outbound|8080||web.app.svc.cluster.local";

fn max_connections(c: &isthmus_compile::CompiledProxy) -> Option<u32> {
    c.config
        .cluster(WEB)
        .and_then(|c| c.default_thresholds())
        .and_then(|t| t.max_connections)
}

#[test]
fn proxies_with_the_same_inputs_share_clusters_and_others_do_not() {
    let snap = common::snapshot_from_str(MESH, "cluster.local");
    let node = |t: &str| snap.resolve_proxy(t, None).expect("proxy");
    let a = compile(&snap, &node("a.app"));
    let b = compile(&snap, &node("b.app"));
    let special = compile(&snap, &node("special.app"));
    let gw = compile(&snap, &node("gw.istio-system"));
    let shared = |x: &isthmus_compile::CompiledProxy| {
        x.config
            .clusters
            .iter()
            .find(|c| c.name == WEB)
            .cloned()
            .expect("web cluster")
    };
    // Same namespace, same DR: one cluster object.
    assert!(Arc::ptr_eq(&shared(&a), &shared(&b)));
    assert_eq!(max_connections(&a), Some(10));
    // The workloadSelector DR applies to `special` only: its own cluster, its own limit.
    assert!(!Arc::ptr_eq(&shared(&a), &shared(&special)));
    assert_eq!(max_connections(&special), Some(77));
    // Gateways build clusters differently (no original-destination, no downstream protocol).
    assert!(!Arc::ptr_eq(&shared(&a), &shared(&gw)));
    assert_eq!(max_connections(&gw), Some(10));
    // Compiling `special` did not leak its cluster into later sidecar compiles.
    let a2 = compile(&snap, &node("a.app"));
    assert_eq!(max_connections(&a2), Some(10));
    assert!(Arc::ptr_eq(&shared(&a), &shared(&a2)));
    // A clone of the snapshot has its own (empty) cache.
    let clone = snap.clone();
    let a3 = compile(&clone, &node("a.app"));
    assert!(!Arc::ptr_eq(&shared(&a), &shared(&a3)));
    assert_eq!(all_json(&a), all_json(&a3));
}
