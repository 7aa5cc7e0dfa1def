//! isthmus's own analyzers, each with a scenario that triggers it (from the seed guide's traps)
//! and a corrected variant that must stay silent.

use isthmus_analyze::{analyze, objects_from_str, AnalyzeOptions, Message};
use isthmus_api::MeshConfig;

fn run(analyzer: &str, yaml: &str) -> Vec<Message> {
    let objects = objects_from_str("t.yaml", yaml, None);
    let opts = AnalyzeOptions {
        analyzers: Some(vec![analyzer.to_string()]),
        sources: [("t.yaml".to_string(), yaml.to_string())].into(),
        ..Default::default()
    };
    analyze(&objects, &MeshConfig::default(), &opts)
}

const SVC: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: prod}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
";

#[test]
fn ism0001_merged_drs_name_winner_and_loss() {
    let yaml = format!(
        "{SVC}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: a-pool, namespace: prod}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 10}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: b-tls, namespace: prod}}
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
  subsets: [{{name: v1, labels: {{version: v9}}}}, {{name: v2, labels: {{version: v2}}}}]
"
    );
    let m = run("isthmus.MergedDestinationRulesAnalyzer", &yaml);
    assert_eq!(m.len(), 1, "{m:#?}");
    let t = m[0].to_text();
    assert!(t.starts_with("Warning [ISM0001] (DestinationRule prod/b-tls t.yaml:22) DestinationRule prod/b-tls is merged into prod/a-pool for host reviews.prod.svc.cluster.local"), "{t}");
    assert!(t.contains("its top-level trafficPolicy is ignored"), "{t}");
    assert!(t.contains("its subset \"v1\" is ignored"), "{t}");
    assert!(
        t.contains("Fix: merge them into one DestinationRule"),
        "{t}"
    );

    // One rule per host: silent. Two rules where the newer adds only new subsets: silent.
    let ok = format!(
        "{SVC}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: a-pool, namespace: prod}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 10}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: b-subsets, namespace: prod}}
spec:
  host: reviews
  subsets: [{{name: v2, labels: {{version: v2}}}}]
"
    );
    assert!(run("isthmus.MergedDestinationRulesAnalyzer", &ok).is_empty());
}

#[test]
fn ism0002_dr_host_matches_no_service() {
    let bad = format!(
        "{SVC}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: typo, namespace: default}}
spec:
  host: reviews
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"
    );
    let m = run("isthmus.DestinationRuleHostAnalyzer", &bad);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(
        m[0].text.contains(
            "The host reviews.default.svc.cluster.local of this DestinationRule matches no Service"
        ) && m[0]
            .text
            .contains("did you mean \"reviews.prod.svc.cluster.local\""),
        "{}",
        m[0].text
    );
    let good = bad.replace("host: reviews\n", "host: reviews.prod.svc.cluster.local\n");
    assert!(run("isthmus.DestinationRuleHostAnalyzer", &good).is_empty());
    // A wildcard DR covering a ServiceEntry host is fine.
    let wildcard = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: egress}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild, namespace: egress}
spec:
  host: '*.example.com'
  trafficPolicy: {tls: {mode: SIMPLE}}
";
    assert!(run("isthmus.DestinationRuleHostAnalyzer", wildcard).is_empty());
}

#[test]
fn ism0003_credential_name_without_selector() {
    let bad = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate, namespace: default}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-cert, sni: api.example.com}
";
    let m = run("isthmus.SidecarCredentialNameAnalyzer", bad);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(m[0].code, "ISM0003");
    assert!(
        m[0].text.starts_with(
            "trafficPolicy.portLevelSettings[0].tls sets credentialName \"client-cert\""
        ),
        "{}",
        m[0].text
    );
    assert_eq!(m[0].line, 10, "located on credentialName's line");
    let good = bad.replace(
        "spec:\n  host",
        "spec:\n  workloadSelector: {matchLabels: {app: client}}\n  exportTo: ['.']\n  host",
    );
    assert!(run("isthmus.SidecarCredentialNameAnalyzer", &good).is_empty());
}

#[test]
fn ism0004_port_level_tls_wipes_pool() {
    let bad = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: default}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE}
";
    let m = run("isthmus.PortLevelSettingsAnalyzer", bad);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(
        m[0].text,
        "trafficPolicy.portLevelSettings[0] for port 443 sets only tls; on that port the destination level connectionPool, outlierDetection are not applied, because a matching portLevelSettings entry replaces the whole policy."
    );
    let good = bad.replace(
        "      tls: {mode: SIMPLE}",
        "      tls: {mode: SIMPLE}\n      connectionPool: {tcp: {maxConnections: 10}}\n      outlierDetection: {consecutive5xxErrors: 3}",
    );
    assert!(run("isthmus.PortLevelSettingsAnalyzer", &good).is_empty());
}

#[test]
fn ism0005_subset_shadowed_by_client_namespace_dr() {
    let base = format!(
        "{SVC}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: prod}}
spec:
  host: reviews.prod.svc.cluster.local
  subsets: [{{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-v2, namespace: web}}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  http:
  - route:
    - destination: {{host: reviews.prod.svc.cluster.local, subset: v2}}
"
    );
    // The service namespace's DR applies: subset found.
    assert!(run("isthmus.AppliedSubsetAnalyzer", &base).is_empty());
    // A DR for the same host in the client namespace shadows it (no merge across namespaces).
    let shadowed = format!(
        "{base}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: local-tls, namespace: web}}
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"
    );
    let m = run("isthmus.AppliedSubsetAnalyzer", &shadowed);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(
        m[0].text,
        "Route destination reviews.prod.svc.cluster.local subset \"v2\" is not defined by DestinationRule web/local-tls, the DestinationRule that applies to clients in namespace \"web\": requests routed there fail with 503 (no cluster for the subset)."
    );
}

#[test]
fn ism0006_tls_route_on_terminating_server() {
    let gw = |mode: &str| {
        format!(
            "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [api.example.com]
    tls: {{mode: {mode}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: via-egress, namespace: istio-system}}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  tls:
  - match:
    - port: 443
      sniHosts: [api.example.com]
    route:
    - destination: {{host: api.example.com, port: {{number: 443}}}}
"
        )
    };
    let m = run(
        "isthmus.TlsRouteOnTerminatingServerAnalyzer",
        &gw("ISTIO_MUTUAL"),
    );
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(m[0].text.starts_with("tls route #0 is bound to Gateway istio-system/egress whose server on port 443 terminates TLS (mode ISTIO_MUTUAL)"), "{}", m[0].text);
    assert!(run(
        "isthmus.TlsRouteOnTerminatingServerAnalyzer",
        &gw("PASSTHROUGH")
    )
    .is_empty());
}

#[test]
fn ism0003_gateway_only_rule_is_silent() {
    // The seed's egress origination DR: exportTo "." in istio-system, where only the egress
    // gateway runs — sidecars never see it, the gateway honours credentialName.
    let yaml = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: partner-originate-mtls, namespace: istio-system}
spec:
  host: api.partner.example.com
  exportTo: ['.']
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: partner-client-credential}
---
apiVersion: v1
kind: Pod
metadata: {name: egw, namespace: istio-system, labels: {istio: egressgateway}}
spec: {containers: [{name: istio-proxy}]}
";
    assert!(run("isthmus.SidecarCredentialNameAnalyzer", yaml).is_empty());
    // The same rule next to an application pod does reach sidecars.
    let with_app = format!("{yaml}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: app, namespace: istio-system, labels: {{app: sleep}}}}\nspec: {{containers: [{{name: sleep}}]}}\n");
    assert_eq!(
        run("isthmus.SidecarCredentialNameAnalyzer", &with_app).len(),
        1
    );
}

#[test]
fn ism0007_keepalive_not_below_idle() {
    let dr = |time: &str| {
        format!(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ka, namespace: default}}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool:
      tcp:
        idleTimeout: 300s
        tcpKeepalive: {{time: {time}, interval: 30s}}
"
        )
    };
    let m = run("isthmus.KeepaliveIdleAnalyzer", &dr("7200s"));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(m[0].text.starts_with("trafficPolicy.connectionPool: tcpKeepalive.time 7200s is not below the idle timeout 300s (tcp.idleTimeout)"), "{}", m[0].text);
    assert!(run("isthmus.KeepaliveIdleAnalyzer", &dr("120s")).is_empty());
}

#[test]
fn ism0008_one_request_per_connection() {
    let dr = |n: u32| {
        format!(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reuse, namespace: default}}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool:
      http: {{maxRequestsPerConnection: {n}}}
"
        )
    };
    let m = run("isthmus.ConnectionReuseAnalyzer", &dr(1));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(m[0].code, "ISM0008");
    assert!(run("isthmus.ConnectionReuseAnalyzer", &dr(100)).is_empty());
}

#[test]
fn ism0009_outlier_on_single_endpoint() {
    let yaml = |replicas: u32| {
        format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: data}}
spec:
  selector: {{app: db}}
  ports: [{{name: tcp, port: 5432}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db, namespace: data}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec: {{containers: [{{name: db, image: postgres}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: data}}
spec:
  host: db
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 5s, baseEjectionTime: 60s}}
"
        )
    };
    let m = run("isthmus.OutlierSingleEndpointAnalyzer", &yaml(1));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(m[0].text.contains("db.data.svc.cluster.local, which has a single endpoint (Service data/db selects one pod)"), "{}", m[0].text);
    assert!(run("isthmus.OutlierSingleEndpointAnalyzer", &yaml(3)).is_empty());
}

#[test]
fn ism0010_credential_secret_namespace_and_keys() {
    let yaml = |secret_ns: &str, keys: &str| {
        format!(
            "
apiVersion: v1
kind: Pod
metadata: {{name: egw, namespace: istio-system, labels: {{istio: egressgateway}}}}
spec: {{containers: [{{name: istio-proxy}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate, namespace: istio-system}}
spec:
  host: api.partner.example.com
  exportTo: ['.']
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: partner-cred}}
---
apiVersion: v1
kind: Secret
metadata: {{name: partner-cred, namespace: {secret_ns}}}
type: Opaque
data: {{{keys}}}
"
        )
    };
    let ok_keys = "tls.crt: Y2VydA==, tls.key: a2V5, ca.crt: Y2E=";
    let m = run(
        "isthmus.CredentialSecretAnalyzer",
        &yaml("default", ok_keys),
    );
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(m[0].text.contains("names a Secret that exists only in namespace default, but the proxies using this rule read it from istio-system"), "{}", m[0].text);
    let m = run(
        "isthmus.CredentialSecretAnalyzer",
        &yaml("istio-system", "ca.crt: Y2E="),
    );
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(
        m[0].text.contains("without a client certificate and key"),
        "{}",
        m[0].text
    );
    assert!(run(
        "isthmus.CredentialSecretAnalyzer",
        &yaml("istio-system", ok_keys)
    )
    .is_empty());
}

const EGRESS_GW: &str = "
apiVersion: v1
kind: Service
metadata: {name: t91-egress, namespace: t91}
spec:
  selector: {istio: t91-egress}
  ports: [{name: tls, port: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: t91-egress-1, namespace: t91, labels: {istio: t91-egress}}
spec: {containers: [{name: istio-proxy}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: t91-egress, namespace: t91}
spec:
  selector: {istio: t91-egress}
  servers:
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [api.partner.example]
    tls: {mode: ISTIO_MUTUAL}
";

#[test]
fn ism0011_sni_must_match_gateway_hosts() {
    let dr = |sni: &str| {
        format!(
            "{EGRESS_GW}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr1-hop1, namespace: t91}}
spec:
  host: t91-egress.t91.svc.cluster.local
  subsets:
  - name: partner
    trafficPolicy:
      tls: {{mode: ISTIO_MUTUAL, sni: {sni}}}
"
        )
    };
    let m = run("isthmus.SniAlignmentAnalyzer", &dr("api.partner.exampel"));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(
        m[0].text.starts_with("subsets[0].trafficPolicy.tls: sni \"api.partner.exampel\" matches no host of the TLS-terminating servers of Gateway t91/t91-egress (hosts api.partner.example)"),
        "{}",
        m[0].text
    );
    assert!(run("isthmus.SniAlignmentAnalyzer", &dr("api.partner.example")).is_empty());
}

#[test]
fn ism0012_duplicate_tls_hosts_on_shared_port() {
    let second = |host: &str| {
        format!(
            "{EGRESS_GW}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: zz-passthrough, namespace: t91}}
spec:
  selector: {{istio: t91-egress}}
  servers:
  - port: {{number: 8443, name: tls-pt, protocol: TLS}}
    hosts: [{host}]
    tls: {{mode: PASSTHROUGH}}
"
        )
    };
    let m = run(
        "isthmus.GatewayServerConflictAnalyzer",
        &second("api.partner.example"),
    );
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(
        m[0].text,
        "Server #0 of Gateway t91/zz-passthrough on port 8443 is dropped by Istio: host \"api.partner.example\" is already served on this port by Gateway t91/t91-egress (duplicate host names)."
    );
    assert!(run(
        "isthmus.GatewayServerConflictAnalyzer",
        &second("other.example")
    )
    .is_empty());
}

#[test]
fn schema_validation_analyzer_reports_webhook_findings() {
    let yaml = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v, namespace: default}
spec:
  hosts: [a]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: a}}]
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: b}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: default}
spec:
  host: a
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: -1}}
";
    let objects = objects_from_str("t.yaml", yaml, None);
    let msgs = analyze(&objects, &MeshConfig::default(), &AnalyzeOptions::default());
    let texts: Vec<String> = msgs
        .iter()
        .filter(|m| m.code.starts_with("IST01"))
        .map(|m| m.to_text())
        .collect();
    assert!(
        texts.contains(&"Error [IST0106] (DestinationRule default/d t.yaml:13) Schema validation error: max connections must be non-negative".to_string()),
        "{texts:#?}"
    );
    assert!(
        texts.contains(&"Info [IST0131] (VirtualService default/v t.yaml:2) VirtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0).".to_string()),
        "{texts:#?}"
    );
    assert!(
        texts.contains(&"Warning [IST0130] (VirtualService default/v t.yaml:2) VirtualService rule #1 not used (all matches used by prior rules).".to_string()),
        "{texts:#?}"
    );
}

#[test]
fn destination_host_analyzer() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
  - route:
    - destination: {host: reviews, port: {number: 9999}}
  - route:
    - destination: {host: ratings}
";
    let objects = objects_from_str("vs.yaml", yaml, None);
    let opts = AnalyzeOptions {
        analyzers: Some(vec!["virtualservice.DestinationHostAnalyzer".into()]),
        sources: [("vs.yaml".to_string(), yaml.to_string())].into(),
        ..Default::default()
    };
    let texts: Vec<String> = analyze(&objects, &MeshConfig::default(), &opts)
        .iter()
        .map(|m| m.to_text())
        .collect();
    assert_eq!(
        texts,
        vec![
            "Error [IST0101] (VirtualService default/x vs.yaml:18) Referenced host:port not found: \"reviews:9999\"",
            "Error [IST0101] (VirtualService default/x vs.yaml:20) Referenced host not found: \"ratings\"",
            "Error [IST0112] (VirtualService default/x vs.yaml:16) This VirtualService routes to a service \"reviews\" that exposes multiple ports [9080 9090]. Specifying a port in the destination is required to disambiguate.",
        ]
    );
}

#[test]
fn domain_suffix_is_honoured() {
    // The seed cluster ran istiod with --domain homelab.local.
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: t91-egress, namespace: t91}
spec:
  selector: {istio: t91-egress}
  ports: [{name: tls, port: 8443}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr1-hop1, namespace: t91}
spec:
  host: t91-egress.t91.svc.homelab.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";
    let objects = objects_from_str("t.yaml", yaml, None);
    let mut opts = AnalyzeOptions {
        analyzers: Some(vec!["isthmus.DestinationRuleHostAnalyzer".into()]),
        ..Default::default()
    };
    assert_eq!(
        analyze(&objects, &MeshConfig::default(), &opts).len(),
        1,
        "cluster.local does not match homelab.local"
    );
    opts.domain_suffix = "homelab.local".into();
    assert!(analyze(&objects, &MeshConfig::default(), &opts).is_empty());
}

#[test]
fn ism0013_egress_bypass_on_uncovered_port() {
    let yaml = |mesh_ports: &str| {
        format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports: [{{name: tls, port: 443}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: egw, namespace: istio-system, labels: {{istio: egressgateway}}}}
spec: {{containers: [{{name: istio-proxy}}]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner-api, namespace: istio-system}}
spec:
  hosts: [api.partner.example.com]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-via-egress, namespace: istio-system}}
spec:
  hosts: [api.partner.example.com]
  gateways: [mesh, istio-system/egress-partner]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 443}}}}
{mesh_ports}"
        )
    };
    let m = run("isthmus.EgressBypassAnalyzer", &yaml(""));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(
        m[0].text.starts_with("Port 443 of api.partner.example.com (ServiceEntry istio-system/partner-api) has no mesh route to the egress gateway istio-egressgateway.istio-system.svc.cluster.local"),
        "{}",
        m[0].text
    );
    // Covering 443 with a mesh tls route to the gateway closes the bypass.
    let tls = "  tls:
  - match:
    - gateways: [mesh]
      port: 443
      sniHosts: [api.partner.example.com]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 443}}
";
    assert!(run("isthmus.EgressBypassAnalyzer", &yaml(tls)).is_empty());
}

#[test]
fn ism0014_match_port_must_be_a_gateway_server_port() {
    let yaml = |port: u32| {
        format!(
            "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress-partner, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 8443, name: https-partner, protocol: HTTPS}}
    hosts: [api.partner.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: [api.partner.example.com]
  gateways: [istio-system/egress-partner]
  http:
  - match:
    - port: {port}
    route:
    - destination: {{host: api.partner.example.com, port: {{number: 443}}}}
"
        )
    };
    let m = run("isthmus.GatewayPortAlignmentAnalyzer", &yaml(443));
    assert_eq!(m.len(), 1, "{m:#?}");
    assert_eq!(
        m[0].text,
        "http rule #0 matches port 443 on Gateway istio-system/egress-partner, which has no server on that port (ports 8443): the rule never matches there."
    );
    assert!(run("isthmus.GatewayPortAlignmentAnalyzer", &yaml(8443)).is_empty());
}

#[test]
fn load_for_analysis_reads_directories_and_mesh_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("vs.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n",
    )
    .expect("write");
    let input = isthmus_analyze::load_for_analysis(&[dir.path().to_path_buf()], Some("default"))
        .expect("loads");
    assert_eq!(input.mesh.outbound_mode(), "REGISTRY_ONLY");
    assert_eq!(input.objects.len(), 2);
    assert_eq!(input.sources.len(), 2);
    // The webhook would refuse the VirtualService; analysis still sees it and says why.
    let opts = AnalyzeOptions {
        sources: input.sources.clone(),
        ..Default::default()
    };
    let msgs = analyze(&input.objects, &input.mesh, &opts);
    assert!(
        msgs.iter().any(|m| m.code == "IST0106"
            && m.text
                == "Schema validation error: http, tcp or tls must be provided in virtual service"),
        "{msgs:#?}"
    );
}

#[test]
fn jwt_claim_routing_sees_request_authentications() {
    let yaml = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: foo}
spec:
  hosts: [foo.com]
  gateways: [foo-gateway]
  http:
  - match:
    - headers: {'@request.auth.claims.foo': {exact: foo}}
    route: [{destination: {host: foo.com}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: foo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [foo.com]}]
---
apiVersion: v1
kind: Pod
metadata: {name: ingress, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy}]}
";
    let objects = objects_from_str("t.yaml", yaml, None);
    let mut opts = AnalyzeOptions {
        analyzers: Some(vec!["virtualservice.JWTClaimRouteAnalyzer".into()]),
        ..Default::default()
    };
    assert_eq!(analyze(&objects, &MeshConfig::default(), &opts).len(), 1);
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules: [{issuer: x}]\n";
    opts.request_authentications = isthmus_analyze::load::request_authentications_in(ra, None);
    assert_eq!(opts.request_authentications.len(), 1);
    assert!(analyze(&objects, &MeshConfig::default(), &opts).is_empty());
}

/// The files of a bundled example joined into one stream, with text edits applied (each edit
/// must apply, so a changed example fails the test instead of silently testing nothing).
fn example_with(name: &str, edits: &[(&str, &str)]) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("example dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut text = String::new();
    for f in files {
        text.push_str("---\n");
        text.push_str(&std::fs::read_to_string(&f).expect("read example file"));
        text.push('\n');
    }
    for (from, to) in edits {
        assert!(text.contains(from), "edit {from:?} must apply to {name}");
        text = text.replacen(from, to, 1);
    }
    text
}

fn codes(msgs: &[Message], code: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.code == code)
        .map(Message::to_text)
        .collect()
}

#[test]
fn ism0015_gateway_port_must_be_a_service_port_or_its_target_port() {
    const A: &str = "isthmus.GatewayServicePortAnalyzer";
    // Seed 001 as written: Service 443 -> targetPort 8443 == Gateway port 8443: aligned.
    let ok = run(A, &example_with("egress-double-mtls", &[]));
    assert!(codes(&ok, "ISM0015").is_empty(), "{ok:?}");
    // The Service port itself is fine too: Istio translates 443 to the targetPort 8443.
    let svc_port = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[(
                "port: {number: 8443, name: https-partner",
                "port: {number: 443, name: https-partner",
            )],
        ),
    );
    assert!(codes(&svc_port, "ISM0015").is_empty(), "{svc_port:?}");
    // A port the Service neither exposes nor forwards to: the listener is unreachable.
    let bad = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[
                (
                    "port: {number: 8443, name: https-partner",
                    "port: {number: 9443, name: https-partner",
                ),
                ("      port: 8443\n", "      port: 9443\n"),
            ],
        ),
    );
    let found = codes(&bad, "ISM0015");
    assert_eq!(found.len(), 1, "{bad:?}");
    let m = &found[0];
    assert!(
        m.starts_with("Warning [ISM0015] (Gateway istio-system/egress-partner t.yaml:"),
        "{m}"
    );
    assert!(m.contains("Server port 9443 is neither a port nor a targetPort of istio-system/istio-egressgateway"), "{m}");
    assert!(m.contains("(ports 80->8080, 443->8443)"), "{m}");
    assert!(m.contains("Fix: use a Service port"), "{m}");
}

#[test]
fn ism0015_named_target_port_resolves_through_container_ports() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: edge-gateway}
  ports: [{name: https, port: 443, targetPort: https-alt}]
---
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: edge, labels: {istio: edge-gateway}}
spec:
  containers: [{name: istio-proxy, image: auto, ports: [{name: https-alt, containerPort: 9443}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: edge}
spec:
  selector: {istio: edge-gateway}
  servers:
  - port: {number: 9443, name: https, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 8443, name: https2, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: ISTIO_MUTUAL}
";
    let msgs = run("isthmus.GatewayServicePortAnalyzer", yaml);
    let found = codes(&msgs, "ISM0015");
    // 9443 is the named targetPort (reachable through Service port 443); 8443 is not.
    assert_eq!(found.len(), 1, "{msgs:?}");
    assert!(found[0].contains("Server port 8443"), "{}", found[0]);
    assert!(found[0].contains("(ports 443->9443)"), "{}", found[0]);
}

#[test]
fn ism0016_origination_must_verify_the_server() {
    const A: &str = "isthmus.OriginationVerificationAnalyzer";
    // Seed 001 hop 2 as written: credentialName CA + sni + subjectAltNames: verified.
    let ok = run(A, &example_with("egress-double-mtls", &[]));
    assert!(codes(&ok, "ISM0016").is_empty(), "{ok:?}");
    // The seed's identity pin removed: sni set, no SANs -> any CA-signed certificate passes.
    let no_san = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[("        subjectAltNames: [api.partner.example.com]\n", "")],
        ),
    );
    let found = codes(&no_san, "ISM0016");
    assert_eq!(found.len(), 1, "{no_san:?}");
    let m = &found[0];
    assert!(
        m.starts_with(
            "Warning [ISM0016] (DestinationRule istio-system/partner-originate-mtls t.yaml:"
        ),
        "{m}"
    );
    assert!(m.contains("trafficPolicy.portLevelSettings[0].tls originates MUTUAL TLS to api.partner.example.com without subjectAltNames"), "{m}");
    assert!(
        m.contains("Fix: add subjectAltNames: [api.partner.example.com]"),
        "{m}"
    );
    // SANs declared on the ServiceEntry are the default: silent again.
    let se_sans = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[
                ("        subjectAltNames: [api.partner.example.com]\n", ""),
                (
                    "  resolution: DNS\n",
                    "  resolution: DNS\n  subjectAltNames: [api.partner.example.com]\n",
                ),
            ],
        ),
    );
    assert!(codes(&se_sans, "ISM0016").is_empty(), "{se_sans:?}");
    // No CA source at all (SIMPLE with neither caCertificates nor credentialName).
    let no_ca = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[(
                "        mode: MUTUAL\n        credentialName: partner-client-credential\n",
                "        mode: SIMPLE\n",
            )],
        ),
    );
    let found = codes(&no_ca, "ISM0016");
    assert_eq!(found.len(), 1, "{no_ca:?}");
    assert!(
        found[0]
            .contains("originates SIMPLE TLS to api.partner.example.com without a CA of its own"),
        "{}",
        found[0]
    );
    // insecureSkipVerify verifies nothing.
    let skip = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[("        sni: api.partner.example.com\n        subjectAltNames", "        insecureSkipVerify: true\n        sni: api.partner.example.com\n        subjectAltNames")],
        ),
    );
    let found = codes(&skip, "ISM0016");
    assert_eq!(found.len(), 1, "{skip:?}");
    assert!(
        found[0]
            .contains("insecureSkipVerify: true: the server certificate is not verified at all"),
        "{}",
        found[0]
    );
}

#[test]
fn ism0017_subset_block_replaces_the_destination_block_whole() {
    const A: &str = "isthmus.SubsetBlockAnalyzer";
    // Seed 001's hop-1 rule with a destination-level pool and a subset that only tunes HTTP:
    // the subset's connectionPool replaces the whole block, so the tcp limits are gone.
    let top = "  host: istio-egressgateway.istio-system.svc.cluster.local\n  subsets:\n";
    let with_pool = "  host: istio-egressgateway.istio-system.svc.cluster.local\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 5s}\n  subsets:\n";
    let sub = "  - name: partner\n    trafficPolicy:\n";
    let bad = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[
                (top, with_pool),
                (sub, "  - name: partner\n    trafficPolicy:\n      connectionPool:\n        http: {http2MaxRequests: 10}\n"),
            ],
        ),
    );
    let found = codes(&bad, "ISM0017");
    assert_eq!(found.len(), 1, "{bad:?}");
    let m = &found[0];
    assert!(
        m.starts_with(
            "Warning [ISM0017] (DestinationRule istio-system/egressgateway-partner t.yaml:"
        ),
        "{m}"
    );
    assert!(m.contains("Subset \"partner\" sets connectionPool, which replaces the destination-level connectionPool as a whole"), "{m}");
    assert!(
        m.contains(
            "tcp.connectTimeout (5s), tcp.maxConnections (100) are not applied to this subset"
        ),
        "{m}"
    );
    // The subset repeats what it keeps: silent. So is the seed as written.
    let ok = run(
        A,
        &example_with(
            "egress-double-mtls",
            &[
                (top, with_pool),
                (sub, "  - name: partner\n    trafficPolicy:\n      connectionPool:\n        tcp: {maxConnections: 100, connectTimeout: 5s}\n        http: {http2MaxRequests: 10}\n"),
            ],
        ),
    );
    assert!(codes(&ok, "ISM0017").is_empty(), "{ok:?}");
    let seed = run(A, &example_with("egress-double-mtls", &[]));
    assert!(codes(&seed, "ISM0017").is_empty(), "{seed:?}");
}
