//! Per-proxy compile cost for generated meshes (`cargo run --release --example compile_timing --
//! 1000 5000 10000`): thread CPU time and wall time of `compile`, the CPU time of dropping the
//! result, the number of heap allocations each makes (a counting global allocator), and the
//! size and CPU time of the `proxy-config all -o json` rendering. The criterion bench
//! (`benches/compile.rs`) is the reference for wall time; this example explains where it goes.
//! `ISTHMUS_COMPILE_TIMING=1` adds the per-phase split printed by `compile` itself.
use isthmus_api::{load_str, LoadOptions, MeshConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocations (alloc + realloc) so that allocation-heavy output shows up as a number,
/// not only as time: on this shared machine instruction and allocation counts are stable where
/// wall time is not.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The same mesh as the criterion bench: N services, each with a two-route VirtualService bound
/// to the mesh and the ingress gateway and a DestinationRule with a pool, outlier detection and
/// two subsets.
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

/// Thread CPU time: on a loaded machine (other builds) wall time overstates the cost.
fn cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![1000];
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for n in sizes {
        let loaded = load_str("x.yaml", &mesh_yaml(n), &LoadOptions::default());
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let (snap, _) =
            isthmus_model::Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
        // The one-off snapshot preparation, then the first proxy of each kind from the prepared
        // snapshot (a clone: clones start without caches).
        let prepared = snap.clone();
        let (a0, c0) = (ALLOCS.load(Ordering::Relaxed), cpu());
        isthmus_compile::prepare(&prepared);
        let (prep_cpu, prep_allocs) = (cpu() - c0, ALLOCS.load(Ordering::Relaxed) - a0);
        let mut firsts = String::new();
        for t in ["gw.istio-system", "client.bench"] {
            let p = prepared
                .resolve_proxy(t, None)
                .expect("bench proxy resolves");
            let (a0, c0) = (ALLOCS.load(Ordering::Relaxed), cpu());
            let c = isthmus_compile::compile(&prepared, &p);
            let (first_cpu, first_allocs) = (cpu() - c0, ALLOCS.load(Ordering::Relaxed) - a0);
            drop(c);
            let _ = write!(
                firsts,
                "; first {t} cpu {first_cpu:?} with {first_allocs} allocations"
            );
        }
        drop(prepared);
        println!("{n} services: prepare cpu {prep_cpu:?} with {prep_allocs} allocations{firsts}");
        for t in ["gw.istio-system", "client.bench"] {
            let p = snap.resolve_proxy(t, None).expect("bench proxy resolves");
            let mut cpus = Vec::new();
            let mut drops = Vec::new();
            let mut walls = Vec::new();
            let mut allocs = Vec::new();
            let mut last = None;
            for _ in 0..reps.max(2) {
                let a0 = ALLOCS.load(Ordering::Relaxed);
                let (w, c0) = (std::time::Instant::now(), cpu());
                let c = isthmus_compile::compile(&snap, &p);
                let (wall, cpu_t) = (w.elapsed(), cpu() - c0);
                allocs.push(ALLOCS.load(Ordering::Relaxed) - a0);
                cpus.push(cpu_t);
                walls.push(wall);
                let c1 = cpu();
                drop(last.replace(c));
                drops.push(cpu() - c1);
            }
            // The first compile of a proxy kind fills the snapshot's cluster cache (cold); the
            // others reuse it (warm), as every further proxy compiled from a snapshot does.
            let (cold_cpu, cold_allocs) = (cpus.remove(0), allocs.remove(0));
            walls.remove(0);
            drops.remove(0);
            cpus.sort();
            walls.sort();
            drops.sort();
            let c = last.expect("at least one rep");
            let (r0, a0) = (cpu(), ALLOCS.load(Ordering::Relaxed));
            let json = isthmus_compile::render(
                &c.config,
                isthmus_compile::ConfigKind::All,
                &isthmus_compile::Filter::default(),
                isthmus_compile::Format::Json,
            )
            .expect("renders");
            let (render_cpu, render_allocs) = (cpu() - r0, ALLOCS.load(Ordering::Relaxed) - a0);
            println!(
                "{n} services, {t}: {} clusters, {} vhosts; cold compile cpu {cold_cpu:?} with {cold_allocs} allocations; warm compile cpu min {:?} median {:?}, wall min {:?} median {:?}, {} allocations; drop cpu median {:?}; JSON {:.1} MiB rendered in {render_cpu:?} cpu with {render_allocs} allocations",
                c.config.clusters.len(),
                c.config.routes.iter().map(|r| r.virtual_hosts.len()).sum::<usize>(),
                cpus[0],
                cpus[cpus.len() / 2],
                walls[0],
                walls[walls.len() / 2],
                allocs[allocs.len() / 2],
                drops[drops.len() / 2],
                json.len() as f64 / (1024.0 * 1024.0),
            );
        }
    }
}
