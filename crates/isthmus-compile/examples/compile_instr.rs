//! Instruction counts of one compile, for callgrind (load-independent, unlike time on a shared
//! machine): `valgrind --tool=callgrind --toggle-collect='*warm_pass*' target/release/examples/compile_instr 2000`
//! counts one warm gateway and one warm sidecar compile; `*cold_pass*` the first compile of
//! each kind from a new snapshot; `*prepare_pass*` the one-off per-snapshot preparation
//! (`isthmus_compile::prepare`). Same mesh as `compile_timing` and the criterion bench.
use isthmus_api::{load_str, LoadOptions, MeshConfig};
use isthmus_model::{ProxyNode, Snapshot};
use std::fmt::Write;

fn mesh_yaml(n: usize) -> String {
    let mut y = String::with_capacity(n * 1200);
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec: {containers: [{name: p, image: x}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench, labels: {app: client}}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\n");
    for i in 0..n {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i}, namespace: bench}}\nspec:\n  hosts: [svc-{i}]\n  gateways: [mesh, istio-system/gw]\n  http:\n  - match: [{{uri: {{prefix: /v2}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n  - route: [{{destination: {{host: svc-{i}, subset: v1}}}}]\n    timeout: 5s\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{i}, namespace: bench}}\nspec:\n  host: svc-{i}\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 100, connectTimeout: 3s}}, http: {{http1MaxPendingRequests: 10}}}}\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        );
    }
    y
}

#[inline(never)]
fn prepare_pass(snap: &Snapshot) {
    isthmus_compile::prepare(snap);
}

#[inline(never)]
fn cold_pass(snap: &Snapshot, proxies: &[ProxyNode]) -> Vec<isthmus_compile::CompiledProxy> {
    proxies
        .iter()
        .map(|p| isthmus_compile::compile(snap, p))
        .collect()
}

#[inline(never)]
fn warm_pass(snap: &Snapshot, proxies: &[ProxyNode]) -> Vec<isthmus_compile::CompiledProxy> {
    proxies
        .iter()
        .map(|p| isthmus_compile::compile(snap, p))
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let loaded = load_str("x.yaml", &mesh_yaml(n), &LoadOptions::default());
    assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
    let (snap, _) = Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
    let proxies: Vec<ProxyNode> = ["gw.istio-system", "client.bench"]
        .iter()
        .map(|t| snap.resolve_proxy(t, None).expect("bench proxy resolves"))
        .collect();
    if std::env::var("PREPARE").is_ok_and(|v| !v.is_empty()) {
        prepare_pass(&snap);
    }
    let cold = cold_pass(&snap, &proxies);
    let warm = warm_pass(&snap, &proxies);
    println!(
        "{n} services: {} + {} clusters cold, {} + {} warm",
        cold[0].config.clusters.len(),
        cold[1].config.clusters.len(),
        warm[0].config.clusters.len(),
        warm[1].config.clusters.len()
    );
}
