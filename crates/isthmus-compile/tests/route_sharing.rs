//! Route tables and virtual hosts shared across the proxies of one snapshot: proxies that
//! differ in one thing the routes depend on (sourceLabels, Sidecar egress scope, exportTo,
//! namespace short names, gateway) get their own routes, identical proxies share them
//! (`Arc::ptr_eq`), and every compile that reuses shared routes is byte-identical to a compile
//! on a fresh snapshot (a clone starts with empty caches).

mod common;

use isthmus_compile::{compile, render, CompiledProxy, ConfigKind, Filter, Format};
use isthmus_model::Snapshot;
use std::sync::Arc;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: third}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec:
  clusterIP: 10.0.0.1
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: priv, namespace: a}
spec:
  clusterIP: 10.0.0.3
  selector: {app: priv}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec:
  clusterIP: 10.0.0.2
  selector: {app: api}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: a}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {role: canary}, uri: {prefix: /beta}}]
    route: [{destination: {host: web, port: {number: 8080}}}]
    timeout: 2s
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: priv, namespace: a}
spec:
  hosts: [priv.a.svc.cluster.local]
  exportTo: ["."]
  http:
  - route: [{destination: {host: priv.a.svc.cluster.local}}]
    timeout: 3s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: third}
spec:
  hosts: [api.other.svc.cluster.local]
  http:
  - route: [{destination: {host: api.other.svc.cluster.local}}]
    timeout: 4s
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: scoped, namespace: a}
spec:
  workloadSelector: {labels: {scoped: "yes"}}
  egress: [{hosts: ["./*", "other/*"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client1, namespace: a, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client2, namespace: a, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: a, labels: {app: client, role: canary}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped, namespace: a, labels: {app: client, scoped: "yes"}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gw1, namespace: istio-system, labels: {istio: ingressgateway, gw: one}}
spec: {containers: [{name: p, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gw2, namespace: istio-system, labels: {istio: ingressgateway, gw: two}}
spec: {containers: [{name: p, image: x}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw1, namespace: istio-system}
spec:
  selector: {gw: one}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw2, namespace: istio-system}
spec:
  selector: {gw: two}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw1, gw2]
  http:
  - match: [{gateways: [gw1], uri: {prefix: /one}}]
    route: [{destination: {host: web.a.svc.cluster.local, port: {number: 8080}}}]
  - route: [{destination: {host: web.a.svc.cluster.local, port: {number: 8080}}}]
"#;

const PROXIES: [&str; 7] = [
    "client1.a",
    "client2.a",
    "canary.a",
    "scoped.a",
    "client.b",
    "gw1.istio-system",
    "gw2.istio-system",
];

fn snapshot() -> Snapshot {
    common::snapshot_from_str(MESH, "cluster.local")
}

fn compile_target(snap: &Snapshot, target: &str) -> CompiledProxy {
    let node = snap
        .resolve_proxy(target, None)
        .unwrap_or_else(|e| panic!("proxy {target} resolves: {e:?}"));
    compile(snap, &node)
}

fn json(c: &CompiledProxy) -> String {
    render(&c.config, ConfigKind::All, &Filter::default(), Format::Json).expect("renders")
}

fn diags(c: &CompiledProxy) -> Vec<String> {
    c.diagnostics.iter().map(|d| d.to_string()).collect()
}

fn vhost<'c>(
    c: &'c CompiledProxy,
    route: &str,
    name: &str,
) -> Option<&'c Arc<isthmus_xds::VirtualHost>> {
    c.config
        .route(route)
        .unwrap_or_else(|| panic!("no route config {route}"))
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
}

fn route_names(c: &CompiledProxy, route: &str, name: &str) -> Vec<String> {
    let vh = vhost(c, route, name).unwrap_or_else(|| panic!("no vhost {name} in {route}"));
    vh.routes
        .iter()
        .map(|r| {
            format!(
                "{} {:?} -> {:?}",
                r.name,
                r.r#match.prefix,
                r.route.as_ref().and_then(|a| a.timeout)
            )
        })
        .collect()
}

/// Every proxy compiled after others filled the caches equals its compile on a fresh
/// snapshot, whichever proxy filled them first.
#[test]
fn reused_routes_equal_fresh_compiles_in_any_order() {
    for order in [PROXIES.to_vec(), PROXIES.iter().rev().copied().collect()] {
        let warm = snapshot();
        for t in &order {
            let got = compile_target(&warm, t);
            let fresh = snapshot();
            let want = compile_target(&fresh, t);
            assert_eq!(json(&got), json(&want), "{t}: config after {order:?}");
            assert_eq!(diags(&got), diags(&want), "{t}: diagnostics");
        }
    }
}

#[test]
fn identical_proxies_share_vhosts_and_route_tables() {
    let snap = snapshot();
    let c1 = compile_target(&snap, "client1.a");
    let c2 = compile_target(&snap, "client2.a");
    let (r1, r2) = (c1.config.route("8080"), c2.config.route("8080"));
    let (r1, r2) = (r1.expect("route 8080"), r2.expect("route 8080"));
    assert_eq!(r1.virtual_hosts.len(), r2.virtual_hosts.len());
    let services = ["web.a", "priv.a", "api.other"];
    for s in services {
        let name = format!("{s}.svc.cluster.local:8080");
        let (a, b) = (vhost(&c1, "8080", &name), vhost(&c2, "8080", &name));
        let (a, b) = (a.expect("vhost"), b.expect("vhost"));
        assert!(Arc::ptr_eq(a, b), "{name}: not shared");
    }
    let g1 = compile_target(&snap, "gw1.istio-system");
    let g1b = compile_target(&snap, "gw1.istio-system");
    let (a, b) = (
        vhost(&g1, "http.80", "shop.example.com:80").expect("gw vhost"),
        vhost(&g1b, "http.80", "shop.example.com:80").expect("gw vhost"),
    );
    assert!(Arc::ptr_eq(a, b), "gateway vhost not shared");
}

#[test]
fn source_labels_split_the_route_table() {
    let snap = snapshot();
    let plain = compile_target(&snap, "client1.a");
    let canary = compile_target(&snap, "canary.a");
    let vh = "web.a.svc.cluster.local:8080";
    assert_eq!(
        route_names(&plain, "8080", vh).len(),
        1,
        "{:?}",
        route_names(&plain, "8080", vh)
    );
    assert_eq!(
        route_names(&canary, "8080", vh).len(),
        2,
        "{:?}",
        route_names(&canary, "8080", vh)
    );
    assert_eq!(
        canary
            .config
            .route("8080")
            .and_then(|r| r.virtual_hosts.iter().find(|v| v.name == vh))
            .and_then(|v| v.routes[0].r#match.prefix.clone()),
        Some("/beta".to_string())
    );
    // A second canary proxy (compiled again) gets the canary table back, shared.
    let canary2 = compile_target(&snap, "canary.a");
    assert!(Arc::ptr_eq(
        vhost(&canary, "8080", vh).expect("vhost"),
        vhost(&canary2, "8080", vh).expect("vhost")
    ));
}

#[test]
fn sidecar_egress_scope_changes_which_virtual_service_applies() {
    let snap = snapshot();
    let plain = compile_target(&snap, "client1.a");
    let scoped = compile_target(&snap, "scoped.a");
    let vh = "api.other.svc.cluster.local:8080";
    // The VS lives in `third`, which the scoped proxy's Sidecar does not import.
    let p = route_names(&plain, "8080", vh);
    let s = route_names(&scoped, "8080", vh);
    assert!(p[0].contains("4s"), "{p:?}");
    assert!(s[0].starts_with("default "), "{s:?}");
}

#[test]
fn export_to_dot_and_short_names_follow_the_namespace() {
    let snap = snapshot();
    let in_a = compile_target(&snap, "client1.a");
    let in_b = compile_target(&snap, "client.b");
    let vh = "priv.a.svc.cluster.local:8080";
    assert!(route_names(&in_a, "8080", vh)[0].contains("3s"));
    assert!(route_names(&in_b, "8080", vh)[0].starts_with("default "));
    // web's routes are the same for both namespaces (one shared table), its domains are not:
    // only namespace `a` reaches it by the bare name.
    let web = "web.a.svc.cluster.local:8080";
    let (wa, wb) = (
        vhost(&in_a, "8080", web).expect("vhost"),
        vhost(&in_b, "8080", web).expect("vhost"),
    );
    assert!(wa.domains.iter().any(|d| d == "web"), "{:?}", wa.domains);
    assert!(!wb.domains.iter().any(|d| d == "web"), "{:?}", wb.domains);
    assert!(
        Arc::ptr_eq(&wa.routes, &wb.routes),
        "route table not shared"
    );
}

#[test]
fn gateways_get_the_routes_bound_to_them() {
    let snap = snapshot();
    let g1 = compile_target(&snap, "gw1.istio-system");
    let g2 = compile_target(&snap, "gw2.istio-system");
    let vh = "shop.example.com:80";
    assert_eq!(route_names(&g1, "http.80", vh).len(), 2);
    assert_eq!(route_names(&g2, "http.80", vh).len(), 1);
}

/// `prepare` only moves work: every proxy compiled from a prepared snapshot equals its compile
/// from a fresh one, for this mesh and every golden topology.
#[test]
fn prepared_snapshots_compile_identically() {
    let prepared = snapshot();
    isthmus_compile::prepare(&prepared);
    for t in PROXIES {
        let got = compile_target(&prepared, t);
        let want = compile_target(&snapshot(), t);
        assert_eq!(json(&got), json(&want), "{t}: config after prepare");
        assert_eq!(diags(&got), diags(&want), "{t}: diagnostics after prepare");
    }
    // The first sidecar after prepare reuses the prepared table of namespace `a`.
    let c = compile_target(&prepared, "client1.a");
    let again = compile_target(&prepared, "client2.a");
    let vh = "web.a.svc.cluster.local:8080";
    assert!(Arc::ptr_eq(
        vhost(&c, "8080", vh).expect("vhost"),
        vhost(&again, "8080", vh).expect("vhost")
    ));
    for case in [
        "double-mtls",
        "egress-sni-passthrough",
        "ingress-passthrough",
        "ingress-termination",
        "port-level-wipe",
        "t91-https-over-mtls",
    ] {
        let c = common::load_case(case);
        let prepared = c.snapshot.clone();
        isthmus_compile::prepare(&prepared);
        for (label, first) in &c.proxies {
            let node = prepared
                .proxies()
                .map(|(_, n)| n)
                .find(|n| {
                    n.name == first.config.node.metadata.name
                        && n.namespace == first.config.node.metadata.namespace
                })
                .unwrap_or_else(|| panic!("{case}/{label}: proxy not in snapshot"));
            let got = compile(&prepared, &node);
            assert_eq!(json(first), json(&got), "{case}/{label}: prepared differs");
            assert_eq!(
                diags(first),
                diags(&got),
                "{case}/{label}: prepared diagnostics"
            );
        }
    }
}
