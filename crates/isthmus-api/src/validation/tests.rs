//! Webhook checks on whole objects, loaded the way users write them.

use crate::{load_str, LoadOptions};

fn load(yaml: &str) -> crate::Loaded {
    load_str("t.yaml", yaml, &LoadOptions::default())
}

fn rejection(yaml: &str) -> String {
    let l = load(yaml);
    assert_eq!(
        l.rejections.len(),
        1,
        "expected one rejection, got {:?}",
        l.rejections
    );
    l.rejections[0].message.clone()
}

fn warnings(yaml: &str) -> Vec<String> {
    let l = load(yaml);
    assert!(
        l.rejections.is_empty(),
        "unexpected rejection: {:?}",
        l.rejections
    );
    l.diagnostics
        .iter()
        .filter(|d| d.severity == crate::Severity::Warning)
        .map(|d| d.message.clone())
        .collect()
}

#[test]
fn dr_durations_and_pool() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\nspec:\n  host: a.ns.svc.cluster.local\n  trafficPolicy:\n    connectionPool:\n      tcp: {connectTimeout: 1.5ms, maxConnections: -1}\n",
    );
    assert!(m.contains("admission webhook \"validation.istio.io\" denied the request: configuration is invalid: 2 errors occurred:"), "{m}");
    assert!(
        m.contains("\t* max connections must be non-negative\n"),
        "{m}"
    );
    assert!(
        m.contains("\t* only durations to ms precision are supported\n"),
        "{m}"
    );
}

#[test]
fn dr_empty_policy_and_subset_dup() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  subsets:\n  - name: v1\n    trafficPolicy: {}\n  - name: v1\n",
    );
    assert!(
        m.contains("traffic policy must have at least one field"),
        "{m}"
    );
    assert!(m.contains("duplicate subset names: v1"), "{m}");
}

#[test]
fn dr_mutual_needs_certs_and_selector_export() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\nspec:\n  host: a\n  workloadSelector: {matchLabels: {app: x}}\n  exportTo: ['*']\n  trafficPolicy:\n    tls: {mode: MUTUAL}\n",
    );
    assert!(
        m.contains("client certificate required for mutual tls"),
        "{m}"
    );
    assert!(m.contains("private key required for mutual tls"), "{m}");
    assert!(
        m.contains(
            "destination rule with workload selector cannot have exportTo beyond current namespace"
        ),
        "{m}"
    );
}

#[test]
fn dr_valid_credential_name() {
    let l = load("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: '*.example.com'\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: c, sni: x.example.com}\n    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}\n");
    assert!(l.rejections.is_empty(), "{:?}", l.rejections);
    assert_eq!(l.objects.len(), 1);
}

#[test]
fn vs_routes_weights_hosts() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: ['*']\n  http:\n  - route:\n    - destination: {host: a, subset: V_1}\n      weight: 0\n    - destination: {host: '*'}\n      weight: 0\n",
    );
    assert!(
        m.contains("wildcard host * is not allowed for virtual services bound to the mesh gateway"),
        "{m}"
    );
    assert!(m.contains("subset name is invalid: V_1"), "{m}");
    assert!(m.contains("invalid destination host *"), "{m}");
    assert!(m.contains("total destination weight = 0"), "{m}");
}

#[test]
fn vs_tls_sni_and_gateway_names() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  gateways: [istio-system/egress]\n  tls:\n  - match:\n    - sniHosts: [b.example.com]\n    route:\n    - destination: {host: b.example.com}\n",
    );
    assert!(m.ends_with("SNI host \"b.example.com\" is not a compatible subset of any of the virtual service hosts: [a.example.com]"), "{m}");
}

#[test]
fn vs_unreachable_rule_warning() {
    let w = warnings(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n  - route: [{destination: {host: b}}]\n",
    );
    assert_eq!(
        w,
        vec!["virtualService rule #1 not used (only the last rule can have no matches)"]
    );
}

#[test]
fn vs_needs_some_route() {
    let m = rejection("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n");
    assert!(
        m.ends_with(
            "configuration is invalid: http, tcp or tls must be provided in virtual service"
        ),
        "{m}"
    );
}

#[test]
fn gateway_tls_rules() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n  - port: {number: 80, name: https, protocol: HTTP}\n    hosts: [foo]\n    tls: {mode: SIMPLE}\n",
    );
    assert!(
        m.contains("server must have TLS settings for HTTPS/TLS protocols"),
        "{m}"
    );
    assert!(m.contains("short names (non FQDN) are not allowed"), "{m}");
    assert!(
        m.contains("SIMPLE TLS requires a server certificate"),
        "{m}"
    );
    assert!(
        m.contains("server cannot have TLS settings for plain text HTTP ports"),
        "{m}"
    );
    assert!(
        m.contains("port names in servers must be unique: duplicate name https"),
        "{m}"
    );
}

#[test]
fn gateway_valid_passthrough_and_redirect() {
    let l = load("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {httpsRedirect: true}\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [ns/a.example.com]\n    tls: {mode: ISTIO_MUTUAL}\n");
    assert!(l.rejections.is_empty(), "{:?}", l.rejections);
}

#[test]
fn service_entry_rules() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: ['*.example.com', b.example.com]\n  resolution: DNS\n  ports:\n  - {number: 443, name: tls, protocol: TLS}\n  - {number: 3306, name: tls, protocol: TCP}\n",
    );
    assert!(
        m.contains("service entry port name \"tls\" already defined"),
        "{m}"
    );
    assert!(
        m.contains("hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
        "{m}"
    );
    assert!(
        m.contains("multiple hosts provided with non-HTTP, non-TLS ports"),
        "{m}"
    );
}

#[test]
fn service_entry_static_endpoints() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n  - address: a.example.com\n    ports: {grpc: 90}\n",
    );
    assert!(
        m.contains("endpoint address \"a.example.com\" is not a valid IP address"),
        "{m}"
    );
    assert!(
        m.contains("endpoint port 90 is not defined by the service entry"),
        "{m}"
    );
}

#[test]
fn sidecar_egress_hosts() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: ns}\nspec:\n  egress:\n  - hosts: [foo.example.com, 'bad/ns/x', './short']\n",
    );
    assert!(m.contains("host must be of form namespace/dnsName"), "{m}");
    assert!(m.contains("short names (non FQDN) are not allowed"), "{m}");
    let w = warnings("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: ns}\nspec:\n  egress:\n  - hosts: ['*/*', 'istio-system/*']\n");
    assert_eq!(
        w,
        vec!["`*/*` host select all resources, no other hosts can be added"]
    );
}

#[test]
fn sidecar_empty() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n",
    );
    assert!(
        m.ends_with("configuration is invalid: sidecar: empty configuration provided"),
        "{m}"
    );
}

#[test]
fn workload_entry_address() {
    let m = rejection("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  ports: {http: 0}\n  address: 'not a host'\n");
    assert!(
        m.contains("endpoint address \"not a host\" is not a valid FQDN or an IP address"),
        "{m}"
    );
    assert!(
        m.contains("port number 0 must be in the range 1..65535"),
        "{m}"
    );
}
