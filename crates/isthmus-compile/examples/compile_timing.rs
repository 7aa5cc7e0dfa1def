//! Prints per-phase compile times for a generated mesh (`cargo run --release --example
//! compile_timing -- 10000`); the criterion bench is the reference measurement.
use isthmus_api::{load_str, LoadOptions, MeshConfig};
use std::fmt::Write;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let mut y = String::new();
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec: {containers: [{name: p, image: x}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\n");
    for i in 0..n {
        let _ = write!(y, "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i}, namespace: bench}}\nspec:\n  hosts: [svc-{i}]\n  gateways: [mesh, istio-system/gw]\n  http:\n  - match: [{{uri: {{prefix: /v2}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n  - route: [{{destination: {{host: svc-{i}, subset: v1}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{i}, namespace: bench}}\nspec:\n  host: svc-{i}\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 100}}}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n");
    }
    let loaded = load_str("x.yaml", &y, &LoadOptions::default());
    let (snap, _) =
        isthmus_model::Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
    // Thread CPU time is reported next to wall time: on a loaded machine (other builds) wall
    // time overstates the cost.
    fn cpu() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is valid.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    for t in ["gw.istio-system", "client.bench"] {
        let p = snap.resolve_proxy(t, None).unwrap();
        for _ in 0..3 {
            let (w, c0) = (std::time::Instant::now(), cpu());
            let c = isthmus_compile::compile(&snap, &p);
            let (wall, cpu_t) = (w.elapsed(), cpu() - c0);
            let c1 = cpu();
            drop(c);
            println!(
                "{n} services, {t}: compile wall {wall:?} cpu {cpu_t:?}; drop cpu {:?}",
                cpu() - c1
            );
        }
    }
}
