use isthmus_api::{load_str, LoadOptions, MeshConfig};
use isthmus_model::{ProxyKind, ResolveError, Snapshot};

fn snap(yaml: &str) -> (Snapshot, Vec<isthmus_api::Diagnostic>) {
    let loaded = load_str("test.yaml", yaml, &LoadOptions::default());
    assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
    Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local")
}

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: b}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews, namespace: b}
spec:
  replicas: 2
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec:
      serviceAccountName: bookinfo-reviews
      containers: [{name: app, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: a, labels: {app: plain}, annotations: {sidecar.istio.io/inject: "false"}}
spec: {containers: [{name: c, image: x}]}
"#;

#[test]
fn services_workloads_and_endpoints() {
    let (s, diags) = snap(BASE);
    assert!(diags.is_empty(), "{diags:?}");
    let svc = s
        .service_for("reviews.b.svc.cluster.local", "a")
        .expect("service");
    assert_eq!(svc.address.as_deref(), Some("10.96.0.10"));
    assert_eq!(svc.endpoints.len(), 2);
    assert!(svc
        .endpoints
        .iter()
        .all(|e| e.port == 8080 && e.tls_mode == "istio"));
    assert_eq!(
        svc.service_accounts,
        vec!["spiffe://cluster.local/ns/b/sa/bookinfo-reviews".to_string()]
    );
    let plain = s.workloads.iter().find(|w| w.name == "plain").unwrap();
    assert_eq!(plain.proxy, ProxyKind::None);
    // Deterministic: building twice gives the same names and IPs.
    let (s2, _) = snap(BASE);
    let names: Vec<_> = s.workloads.iter().map(|w| (&w.name, &w.ip)).collect();
    let names2: Vec<_> = s2.workloads.iter().map(|w| (&w.name, &w.ip)).collect();
    assert_eq!(names, names2);
}

#[test]
fn resolves_targets_like_istioctl() {
    let (s, _) = snap(BASE);
    let p = s.resolve_proxy("deploy/reviews", Some("b")).unwrap();
    assert_eq!(p.namespace, "b");
    assert!(p.name.starts_with("reviews-"));
    assert_eq!(s.resolve_proxy("client.a", None).unwrap().name, "client");
    assert_eq!(
        s.resolve_proxy("pod/client", Some("a")).unwrap().name,
        "client"
    );
    match s.resolve_proxy("nope", Some("a")) {
        Err(ResolveError::NotFound { candidates, .. }) => assert!(
            candidates.contains(&"client.a".to_string()),
            "{candidates:?}"
        ),
        other => panic!("{other:?}"),
    }
    let e = s.resolve_proxy("plain.a", None).unwrap_err();
    assert!(e.to_string().contains("no proxy"), "{e}");
}

#[test]
fn dr_lookup_levels_and_merge() {
    let yaml = format!(
        "{BASE}{}",
        r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-ns, namespace: b, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-ns-newer, namespace: b, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  host: reviews.b.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}
  subsets: [{name: v1, labels: {version: other}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: client-wild, namespace: a}
spec:
  host: "*.cluster.local"
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typo, namespace: b}
spec:
  host: reviewz
"#
    );
    let (s, diags) = snap(&yaml);
    assert!(
        diags
            .iter()
            .any(|d| d.code == "DestinationRuleHostNotFound" && d.name.as_deref() == Some("typo")),
        "{diags:?}"
    );
    let svc = s.service_for("reviews.b.svc.cluster.local", "b").unwrap();
    // From namespace b: the two same-host DRs merge; the oldest policy wins wholesale.
    let w_b = s.workloads.iter().find(|w| w.namespace == "b").unwrap();
    let dr = s.destination_rule("b", &w_b.labels, svc).unwrap();
    assert_eq!(dr.meta.name, "svc-ns");
    let mc = dr
        .spec
        .traffic_policy
        .as_ref()
        .unwrap()
        .connection_pool
        .as_ref()
        .unwrap()
        .tcp
        .as_ref()
        .unwrap()
        .max_connections;
    assert_eq!(mc, Some(1));
    let names: Vec<_> = dr
        .spec
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(names, vec![("v1", "v1"), ("v2", "v2")]);
    assert_eq!(dr.duplicate_subsets.len(), 1);
    // From namespace a: the client-namespace wildcard DR beats the exact one in the service namespace.
    let dr = s.destination_rule("a", &Default::default(), svc).unwrap();
    assert_eq!(dr.meta.name, "client-wild");
}

#[test]
fn service_entry_vips_are_deterministic_and_in_range() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: x}
spec:
  hosts: [api.partner.example, other.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: x}
spec:
  hosts: [nores.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
"#;
    let (s, _) = snap(yaml);
    let a = s.service_for("api.partner.example", "x").unwrap();
    let b = s.service_for("other.example", "x").unwrap();
    let va = a.auto_allocated_address.clone().unwrap();
    assert!(va.starts_with("240.240."), "{va}");
    assert_ne!(Some(va), b.auto_allocated_address);
    assert_eq!(a.endpoints[0].address, "api.partner.example");
    assert!(s
        .service_for("nores.example", "x")
        .unwrap()
        .auto_allocated_address
        .is_none());
}

#[test]
fn service_entry_vips_are_used_only_with_dns_capture() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: x}
spec:
  hosts: [api.partner.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;
    let loaded = load_str("test.yaml", yaml, &LoadOptions::default());
    // Istio's default: allocated (status) but not used by proxies; apps resolve the real host.
    let (off, _) = Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
    let svc = off.service_for("api.partner.example", "x").unwrap();
    assert!(svc.auto_allocated_address.is_some());
    assert_eq!(svc.vip(), None);
    let mesh = MeshConfig::from_yaml(
        "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n",
    )
    .unwrap();
    let (on, _) = Snapshot::build(&loaded.objects, mesh, "cluster.local");
    let svc = on.service_for("api.partner.example", "x").unwrap();
    assert_eq!(svc.vip(), svc.auto_allocated_address.as_deref());
    assert!(svc.vip().is_some_and(|v| v.starts_with("240.240.")));
}

#[test]
fn workload_selector_drs_apply_only_to_matching_proxies() {
    let yaml = format!(
        "{BASE}{}",
        r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: for-client, namespace: a}
spec:
  host: reviews.b.svc.cluster.local
  workloadSelector: {matchLabels: {app: client}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ns-wide, namespace: a}
spec:
  host: reviews.b.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 8}}}
"#
    );
    let (s, _) = snap(&yaml);
    let svc = s.service_for("reviews.b.svc.cluster.local", "a").unwrap();
    let client = s.workloads.iter().find(|w| w.name == "client").unwrap();
    let plain = s.workloads.iter().find(|w| w.name == "plain").unwrap();
    assert_eq!(
        s.destination_rule("a", &client.labels, svc)
            .unwrap()
            .meta
            .name,
        "for-client"
    );
    assert_eq!(
        s.destination_rule("a", &plain.labels, svc)
            .unwrap()
            .meta
            .name,
        "ns-wide"
    );
    // Selector DRs never leave their namespace.
    assert!(s.destination_rule("b", &client.labels, svc).is_none());
}

/// `lookup_select` (what the compiler calls per service) picks exactly what `select(lookup())`
/// picks, across namespace precedence, exportTo, root-namespace fallback, wildcard hosts and
/// workloadSelector DRs, for outbound and inbound.
#[test]
fn lookup_select_agrees_with_lookup_then_select() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: in-client-ns, namespace: a}
spec: {host: reviews.b.svc.cluster.local, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: selector, namespace: a}
spec:
  host: reviews.b.svc.cluster.local
  workloadSelector: {matchLabels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-ns, namespace: b}
spec: {host: reviews, exportTo: ["c"]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc-ns-all, namespace: b}
spec: {host: "*.b.svc.cluster.local"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec: {host: "*.svc.cluster.local"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: d}
spec: {host: "ratings.b.svc.cluster.local", exportTo: ["."]}
"#;
    let (s, _) = snap(yaml);
    let labels = |app: &str| -> std::collections::BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    };
    let mut checked = 0;
    for proxy_ns in ["a", "b", "c", "d", "istio-system", "other"] {
        for host in [
            "reviews.b.svc.cluster.local",
            "ratings.b.svc.cluster.local",
            "x.other.svc.cluster.local",
            "api.example.com",
        ] {
            for app in ["client", "server"] {
                for outbound in [true, false] {
                    let l = labels(app);
                    let cands = s.dr_index.lookup(proxy_ns, "b", host);
                    let want =
                        isthmus_model::DestinationRuleIndex::select(&cands, proxy_ns, &l, outbound)
                            .map(|d| (&d.meta.namespace, &d.meta.name));
                    let got = s
                        .dr_index
                        .lookup_select(proxy_ns, "b", host, &l, outbound)
                        .map(|d| (&d.meta.namespace, &d.meta.name));
                    assert_eq!(got, want, "{proxy_ns} {host} {app} {outbound}");
                    checked += usize::from(got.is_some());
                }
            }
        }
    }
    assert!(
        checked > 20,
        "the cases must exercise real matches ({checked})"
    );
}
