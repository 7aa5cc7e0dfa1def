//! Validating 10,000 objects (a realistic mix) must take well under a second.
use criterion::{criterion_group, criterion_main, Criterion};
use isthmus_api::{load_str, LoadOptions};

fn corpus(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n / 4 {
        s.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr{i}, namespace: ns{m}}}
spec:
  host: svc{i}.ns{m}.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 100, connectTimeout: 3s, tcpKeepalive: {{time: 300s, interval: 30s, probes: 3}}}}
    tls: {{mode: ISTIO_MUTUAL, sni: svc{i}.example.com}}
  subsets:
  - name: v1
    labels: {{version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs{i}, namespace: ns{m}}}
spec:
  hosts: [svc{i}.ns{m}.svc.cluster.local]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: svc{i}, subset: v1}}}}]
    timeout: 5s
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw{i}, namespace: ns{m}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-{i}, protocol: HTTPS}}
    hosts: [svc{i}.example.com]
    tls: {{mode: SIMPLE, credentialName: cert{i}}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc{i}, namespace: ns{m}}}
spec:
  selector: {{app: svc{i}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#,
            m = i % 50
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = corpus(10_000);
    let mut g = c.benchmark_group("validate");
    g.sample_size(10);
    g.bench_function("10k_objects", |b| {
        b.iter(|| {
            let l = load_str("bench.yaml", &text, &LoadOptions::default());
            assert_eq!(l.objects.len(), 10_000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
