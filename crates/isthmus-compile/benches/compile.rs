//! Compile time per proxy in a mesh of N services, each with a VirtualService and a
//! DestinationRule (two subsets): one gateway binding all of them, one sidecar seeing all.
//! N = 1k and 10k (`ISTHMUS_BENCH_SERVICES=N[,M...]` overrides). Goal: < 100 ms per proxy,
//! linear growth. Reported per N:
//! - `prepare`: the one-off per-snapshot preparation (`isthmus_compile::prepare`);
//! - `first_gateway` / `first_sidecar`: the first proxy of its kind from a prepared snapshot;
//! - `cold_gateway` / `cold_sidecar`: the first proxy of its kind from an unprepared snapshot
//!   (it builds the shared clusters and routes itself);
//! - `gateway` / `sidecar`: a further proxy of the kind (warm: shared parts reused).
//!
//! "First" and "cold" runs start from a clone of the snapshot (clones start without caches);
//! the clone and the preparation are set-up, outside the measurement.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use isthmus_api::{load_str, LoadOptions, MeshConfig};
use isthmus_compile::compile;
use isthmus_model::Snapshot;
use std::fmt::Write;

fn mesh_yaml(n: usize) -> String {
    let mut y = String::with_capacity(n * 1200);
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {istio-injection: enabled}}\n---\n");
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n");
    y.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec: {containers: [{name: p, image: x}]}\n---\n");
    y.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench, labels: {app: client}}\nspec: {containers: [{name: c, image: x}]}\n---\n");
    y.push_str("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\n");
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

fn bench(c: &mut Criterion) {
    // 1k/5k/10k by default, to show the growth is linear; `ISTHMUS_BENCH_SERVICES=N[,M...]`
    // picks other sizes.
    let sizes: Vec<usize> = std::env::var("ISTHMUS_BENCH_SERVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    for n in sizes {
        let t = std::time::Instant::now();
        let loaded = load_str("bench.yaml", &mesh_yaml(n), &LoadOptions::default());
        assert!(
            loaded.rejections.is_empty(),
            "{:?}",
            loaded.rejections.first()
        );
        let load_time = t.elapsed();
        let t = std::time::Instant::now();
        let (snap, _) = Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
        eprintln!(
            "{n} services: load {load_time:?}, snapshot build {:?}",
            t.elapsed()
        );
        let gw = snap
            .resolve_proxy("gw.istio-system", None)
            .expect("gateway");
        let sc = snap.resolve_proxy("client.bench", None).expect("sidecar");
        let g = compile(&snap, &gw);
        let s = compile(&snap, &sc);
        eprintln!(
            "gateway: {} listeners, {} vhosts, {} clusters; sidecar: {} listeners, {} vhosts, {} clusters",
            g.config.listeners.len(),
            g.config.routes.iter().map(|r| r.virtual_hosts.len()).sum::<usize>(),
            g.config.clusters.len(),
            s.config.listeners.len(),
            s.config.routes.iter().map(|r| r.virtual_hosts.len()).sum::<usize>(),
            s.config.clusters.len()
        );
        drop((g, s));
        let mut group = c.benchmark_group("compile");
        group.sample_size(10);
        let fresh = || snap.clone();
        let prepared = || {
            let s = snap.clone();
            isthmus_compile::prepare(&s);
            s
        };
        use criterion::BatchSize::PerIteration;
        group.bench_with_input(BenchmarkId::new("prepare", n), &n, |b, _| {
            b.iter_batched(
                fresh,
                |s| {
                    isthmus_compile::prepare(&s);
                    s
                },
                PerIteration,
            )
        });
        for (kind, node) in [("gateway", &gw), ("sidecar", &sc)] {
            group.bench_with_input(BenchmarkId::new(format!("first_{kind}"), n), &n, |b, _| {
                b.iter_batched(
                    prepared,
                    |s| {
                        drop(compile(&s, node));
                        s
                    },
                    PerIteration,
                )
            });
            group.bench_with_input(BenchmarkId::new(format!("cold_{kind}"), n), &n, |b, _| {
                b.iter_batched(
                    fresh,
                    |s| {
                        drop(compile(&s, node));
                        s
                    },
                    PerIteration,
                )
            });
        }
        // Criterion's `iter` drops each result inside the measurement: freeing a proxy's
        // config is part of its cost.
        group.bench_with_input(BenchmarkId::new("gateway", n), &n, |b, _| {
            b.iter(|| compile(&snap, &gw))
        });
        group.bench_with_input(BenchmarkId::new("sidecar", n), &n, |b, _| {
            b.iter(|| compile(&snap, &sc))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
