//! Webhook checks on whole objects. `rejection` runs the webhook alone; `warnings` and the
//! end-to-end tests go through the loader (schema first, then the webhook).

use crate::{load_str, LoadOptions};

fn load(yaml: &str) -> crate::Loaded {
    load_str("t.yaml", yaml, &LoadOptions::default())
}

/// The webhook's verdict on one object, bypassing the CRD schema stage (which refuses some of
/// these inputs first), formatted as the loader formats webhook rejections.
fn rejection(yaml: &str) -> String {
    let docs = crate::yaml::parse_stream(yaml).expect("test yaml parses");
    let json = docs[0].root.to_json();
    let api = json["apiVersion"].as_str().unwrap_or("").to_string();
    let kind =
        crate::Kind::from_api(&api, json["kind"].as_str().unwrap_or("")).expect("modelled kind");
    let meta: crate::ObjectMeta =
        serde_json::from_value(json["metadata"].clone()).expect("metadata");
    let obj = crate::Object {
        api_version: api,
        kind,
        meta,
        body: crate::Body::decode(kind, &json).expect("body decodes"),
        source: crate::Source::default(),
        raw: json,
        seq: 0,
    };
    let report = super::validate_object(&obj);
    assert!(
        !report.errors.is_empty(),
        "expected webhook errors for {yaml}"
    );
    format!(
        "admission webhook \"validation.istio.io\" denied the request: configuration is invalid: {}",
        super::join_errors(&report.errors)
    )
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

#[test]
fn end_to_end_webhook_rejection_through_loader() {
    let l = load("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n");
    assert_eq!(l.rejections.len(), 1, "{:?}", l.rejections);
    assert_eq!(
        l.rejections[0].message,
        "Error from server: error when creating \"t.yaml\": admission webhook \"validation.istio.io\" denied the request: configuration is invalid: http, tcp or tls must be provided in virtual service"
    );
}

#[test]
fn server_tls_certificate_sources() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}\n",
    );
    assert!(m.ends_with("only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified"), "{m}");
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: MUTUAL}\n",
    );
    assert!(
        m.contains("3 errors occurred:\n\t* MUTUAL TLS requires a client CA bundle\n\t* MUTUAL TLS requires a server certificate\n\t* MUTUAL TLS requires a private key\n"),
        "{m}"
    );
}

#[test]
fn sidecar_ingress_tls_needs_tls_port() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  ingress:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    defaultEndpoint: 127.0.0.1:8080\n    tls: {mode: SIMPLE, credentialName: x}\n",
    );
    assert!(
        m.contains("sidecar: credentialName is not currently supported"),
        "{m}"
    );
    assert!(
        m.contains("server cannot have TLS settings for non HTTPS/TLS ports"),
        "{m}"
    );
}

#[test]
fn tcp_idle_timeout_zero_disables() {
    let l = load("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy:\n    connectionPool:\n      tcp: {idleTimeout: 0s}\n");
    assert!(l.rejections.is_empty(), "{:?}", l.rejections);
}

#[test]
fn warmup_needs_duration() {
    let m = rejection(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      warmup: {minimumPercent: 5.0, aggression: 0.5}\n",
    );
    assert!(m.contains("2 errors occurred:\n\t* duration is required\n\t* aggression should be greater than or equal to 1\n"), "{m}");
}

#[test]
fn rules_after_a_catch_all_are_unreachable() {
    let w = warnings(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n  - match: [{uri: {prefix: /x}}, {uri: {prefix: /y}}]\n    route: [{destination: {host: b}}]\n",
    );
    assert_eq!(
        w,
        vec![
            "virtualService rule #1 not used (route without matches defined before)",
            "virtualService rule #1 not used (route without matches defined before)"
        ]
    );
}
