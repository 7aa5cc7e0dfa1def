//! The seeds' facts, asserted field by field on the compiled output (issue 3 "Done when").

mod common;

use isthmus_compile::{render, ConfigKind, Filter, Format};
use serde_json::{json, Value};

fn cluster<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no cluster {name}; have {:?}",
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].clone())
                    .collect::<Vec<_>>()
            )
        })
}

#[test]
fn t91_hop1_pool_compiles_into_the_client_sidecar() {
    let c = common::load_case("t91-https-over-mtls");
    let clusters = c.json("client", "cluster");
    let cl = cluster(
        &clusters,
        "outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local",
    );
    assert_eq!(
        cl["circuitBreakers"]["thresholds"][0]["maxConnections"],
        111
    );
    assert_eq!(cl["connectTimeout"], "3s");
    assert_eq!(
        cl["upstreamConnectionOptions"]["tcpKeepalive"],
        json!({"keepaliveProbes": 3, "keepaliveTime": 300, "keepaliveInterval": 30})
    );
    let tls = &cl["transportSocket"]["typedConfig"];
    assert_eq!(tls["sni"], "api.partner.example");
    assert_eq!(
        tls["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0]["name"],
        "default"
    );
    assert_eq!(
        tls["commonTlsContext"]["combinedValidationContext"]["validationContextSdsSecretConfig"]
            ["name"],
        "ROOTCA"
    );
    assert_eq!(
        tls["commonTlsContext"]["alpnProtocols"],
        json!(["istio-peer-exchange", "istio"])
    );
    assert_eq!(
        cl["metadata"]["filterMetadata"]["istio"]["config"],
        "/apis/networking.istio.io/v1/namespaces/istio-vt-t91/destination-rule/t91-egress-mtls"
    );
    assert_eq!(
        cl["metadata"]["filterMetadata"]["istio"]["subset"],
        "partner"
    );
    // The subset's policy does not leak into the plain cluster (subsets apply only when routed to).
    let plain = cluster(
        &clusters,
        "outbound|8443||t91-egress.istio-vt-t91.svc.homelab.local",
    );
    assert_eq!(
        plain["circuitBreakers"]["thresholds"][0]["maxConnections"],
        4294967295u64
    );
    assert_eq!(plain["connectTimeout"], "10s");
    assert_eq!(
        plain["transportSocketMatches"][0]["name"], "tlsMode-istio",
        "auto mTLS without a DR tls block"
    );
    // The VS tls route sends SNI api.partner.example through hop 1.
    let listeners = c.json("client", "listener");
    let l = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "0.0.0.0_443")
        .expect("0.0.0.0_443 listener (no DNS capture: the SE's VIP is not used)");
    assert_eq!(
        l["filterChains"][0]["filterChainMatch"]["serverNames"],
        json!(["api.partner.example"])
    );
    assert_eq!(
        l["filterChains"][0]["filters"][0]["typedConfig"]["cluster"],
        "outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local"
    );
    // Bonus B1: exportTo ["."] does not hide DR2 from a sidecar in the same namespace.
    assert_eq!(
        cluster(&clusters, "outbound|443||api.partner.example")["circuitBreakers"]["thresholds"][0]
            ["maxConnections"],
        222
    );
}

#[test]
fn t91_hop2_pool_compiles_into_the_gateway_without_tls() {
    let c = common::load_case("t91-https-over-mtls");
    let clusters = c.json("gateway", "cluster");
    let cl = cluster(&clusters, "outbound|443||api.partner.example");
    assert_eq!(
        cl["circuitBreakers"]["thresholds"][0]["maxConnections"],
        222
    );
    assert_eq!(cl["connectTimeout"], "3s");
    assert_eq!(
        cl["upstreamConnectionOptions"]["tcpKeepalive"]["keepaliveTime"],
        300
    );
    assert!(cl.get("transportSocket").is_none(), "raw TCP: {cl}");
    assert!(
        cl.get("transportSocketMatches").is_none(),
        "MESH_EXTERNAL: no auto mTLS"
    );
    let listeners = c.json("gateway", "listener");
    let l = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "0.0.0.0_8443")
        .expect("0.0.0.0_8443");
    let fc = &l["filterChains"][0];
    assert_eq!(
        fc["filterChainMatch"]["serverNames"],
        json!(["api.partner.example"])
    );
    assert_eq!(
        fc["transportSocket"]["typedConfig"]["requireClientCertificate"],
        true
    );
    assert_eq!(
        fc["transportSocket"]["typedConfig"]["commonTlsContext"]["tlsCertificateSdsSecretConfigs"]
            [0]["name"],
        "default"
    );
    assert_eq!(
        fc["filters"][0]["typedConfig"]["cluster"],
        "outbound|443||api.partner.example"
    );
    assert_eq!(
        l["listenerFilters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
}

#[test]
fn double_mtls_hop2_mutual_with_credential_name_and_exact_san() {
    let c = common::load_case("double-mtls");
    let clusters = c.json("gateway", "cluster");
    let cl = cluster(&clusters, "outbound|443||api.partner.example.com");
    let tls = &cl["transportSocket"]["typedConfig"];
    assert_eq!(tls["sni"], "api.partner.example.com");
    let ctx = &tls["commonTlsContext"];
    assert_eq!(
        ctx["tlsCertificateSdsSecretConfigs"][0]["name"],
        "kubernetes://partner-client-credential"
    );
    assert_eq!(
        ctx["tlsCertificateSdsSecretConfigs"][0]["sdsConfig"]["ads"],
        json!({})
    );
    assert_eq!(
        ctx["combinedValidationContext"]["validationContextSdsSecretConfig"]["name"],
        "kubernetes://partner-client-credential-cacert"
    );
    assert_eq!(
        ctx["combinedValidationContext"]["defaultValidationContext"]["matchSubjectAltNames"],
        json!([{"exact": "api.partner.example.com"}])
    );
    assert_eq!(
        cl["circuitBreakers"]["thresholds"][0]["maxConnections"],
        4096
    );
    let http = &cl["typedExtensionProtocolOptions"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        http["commonHttpProtocolOptions"],
        json!({"idleTimeout": "900s", "maxRequestsPerConnection": 1000, "maxConnectionDuration": "3600s"})
    );
    assert_eq!(cl["outlierDetection"]["consecutive5xx"], 5);
    assert_eq!(cl["outlierDetection"]["maxEjectionPercent"], 50);
    assert_eq!(cl["commonLbConfig"]["healthyPanicThreshold"], json!({}));
    assert_eq!(
        cl["metadata"]["filterMetadata"]["istio"]["alpn_override"],
        "false"
    );
    // The credential secrets are served to the gateway, from its own namespace.
    let secrets = c.json("gateway", "secret");
    let names: Vec<&str> = secrets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "kubernetes://partner-client-credential",
            "kubernetes://partner-client-credential-cacert"
        ]
    );
    // Hop 1: the sidecar routes plain http://api.partner.example.com (port 80) to the gateway subset.
    let routes = c.json("sleep", "route");
    let r80 = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "80")
        .unwrap();
    let vh = r80["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api.partner.example.com:80")
        .expect("vhost");
    assert_eq!(
        vh["routes"][0]["route"]["cluster"],
        "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local"
    );
    let sc = cluster(
        &c.json("sleep", "cluster"),
        "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local",
    )
    .clone();
    assert_eq!(
        sc["circuitBreakers"]["thresholds"][0]["maxConnections"],
        1024
    );
    assert_eq!(
        sc["transportSocket"]["typedConfig"]["sni"],
        "api.partner.example.com"
    );
    // DR-hop2 is exported to istio-system only: the sidecar's cluster has neither its pool nor its TLS.
    let side = cluster(
        &c.json("sleep", "cluster"),
        "outbound|443||api.partner.example.com",
    )
    .clone();
    assert!(side.get("transportSocket").is_none());
    assert_eq!(
        side["circuitBreakers"]["thresholds"][0]["maxConnections"],
        4294967295u64
    );
    // The gateway terminates hop 1 (ISTIO_MUTUAL, client cert required) on 8443 with HTTPS RDS.
    let gl = c.json("gateway", "listener");
    let l = gl
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "0.0.0.0_8443")
        .unwrap();
    assert_eq!(
        l["filterChains"][0]["filters"][0]["typedConfig"]["rds"]["routeConfigName"],
        "https.8443.https-partner.egress-partner.istio-system"
    );
    assert_eq!(
        l["filterChains"][0]["transportSocket"]["typedConfig"]["requireClientCertificate"],
        true
    );
}

#[test]
fn port_level_tls_only_entry_wipes_the_top_level_pool() {
    let c = common::load_case("port-level-wipe");
    let clusters = c.json("client", "cluster");
    let p443 = cluster(&clusters, "outbound|443||partner.example.com");
    assert_eq!(
        p443["circuitBreakers"]["thresholds"][0]["maxConnections"], 4294967295u64,
        "pool wiped on 443"
    );
    assert_eq!(
        p443["connectTimeout"], "10s",
        "mesh default, not the top-level 2s"
    );
    assert_eq!(
        p443["transportSocket"]["typedConfig"]["sni"],
        "partner.example.com"
    );
    let p80 = cluster(&clusters, "outbound|80||partner.example.com");
    assert_eq!(
        p80["circuitBreakers"]["thresholds"][0]["maxConnections"],
        10
    );
    assert_eq!(p80["connectTimeout"], "2s");
    assert!(p80.get("transportSocket").is_none());
}

#[test]
fn ingress_termination_first_match_wins_and_ports_translate() {
    let c = common::load_case("ingress-termination");
    let gl = c.json("gateway", "listener");
    let names: Vec<&str> = gl
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["0.0.0.0_8080", "0.0.0.0_8443"]);
    let routes = c.json("gateway", "route");
    let http = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "http.8080")
        .unwrap();
    let vh = &http["virtualHosts"][0];
    assert_eq!(vh["name"], "httpbin.example.com:80");
    assert_eq!(vh["routes"][0]["match"]["prefix"], "/status/418");
    assert_eq!(vh["routes"][1]["match"]["prefix"], "/");
    assert_eq!(vh["routes"][1]["route"]["timeout"], "5s");
    assert_eq!(
        vh["routes"].as_array().unwrap().len(),
        2,
        "nothing after the catch-all"
    );
    let https = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "https.443.https.httpbin-gateway.default")
        .unwrap();
    assert_eq!(
        https["virtualHosts"][0]["routes"][0]["route"]["cluster"],
        "outbound|8000||httpbin.default.svc.cluster.local"
    );
    let tls = &gl[1]["filterChains"][0]["transportSocket"]["typedConfig"];
    assert_eq!(tls["requireClientCertificate"], false);
    assert_eq!(
        tls["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0]["name"],
        "kubernetes://httpbin-credential"
    );
    assert_eq!(
        tls["commonTlsContext"]["alpnProtocols"],
        json!(["h2", "http/1.1"])
    );
}

#[test]
fn passthrough_gateways_route_on_sni_only() {
    let c = common::load_case("ingress-passthrough");
    let gl = c.json("gateway", "listener");
    let fc = &gl[0]["filterChains"][0];
    assert_eq!(gl[0]["name"], "0.0.0.0_8443");
    assert_eq!(
        fc["filterChainMatch"]["serverNames"],
        json!(["httpbin.example.com"])
    );
    assert!(
        fc.get("transportSocket").is_none(),
        "PASSTHROUGH does not terminate"
    );
    assert_eq!(
        fc["filters"][0]["typedConfig"]["cluster"],
        "outbound|443||httpbin.httpbin-tls.svc.cluster.local"
    );

    let c = common::load_case("egress-sni-passthrough");
    let gl = c.json("gateway", "listener");
    assert_eq!(
        gl.as_array().unwrap().len(),
        1,
        "the ISTIO_MUTUAL server with only a tls route compiles to nothing"
    );
    assert_eq!(
        gl[0]["filterChains"][0]["filters"][0]["typedConfig"]["cluster"],
        "outbound|443||httpbin.org"
    );
    let diags = &c.proxy("gateway").diagnostics;
    assert!(
        diags.iter().any(|d| d.code == "TlsRouteOnTerminatingServer"
            && d.name.as_deref() == Some("cnn-wrong-leg2")),
        "{diags:?}"
    );
}

#[test]
fn registry_only_and_sidecar_scope() {
    let c = common::load_case("egress-sni-passthrough");
    let client = &c.proxy("client").config;
    // REGISTRY_ONLY: the HTTP catch-all is block_all (502) and TCP falls into BlackHoleCluster.
    let r80 = client.route("80").expect("route 80");
    let last = r80.virtual_hosts.last().unwrap();
    assert_eq!(last.name, "block_all");
    assert_eq!(last.routes[0].direct_response.as_ref().unwrap().status, 502);
    let vo = client.listener("virtualOutbound").unwrap();
    assert_eq!(
        vo.filter_chains[1].tcp_proxy().unwrap().cluster.as_deref(),
        Some("BlackHoleCluster")
    );
    // The Sidecar scope keeps istio-system/unrelated out of the client's cluster list...
    assert!(client
        .clusters
        .iter()
        .all(|c| !c.name.contains("unrelated.istio-system")));
    // ...while the gateway (no Sidecar) sees it.
    let gw = &c.proxy("gateway").config;
    assert!(gw
        .clusters
        .iter()
        .any(|c| c.name == "outbound|9000||unrelated.istio-system.svc.cluster.local"));
    // Short table.
    let short = render(
        client,
        ConfigKind::Cluster,
        &Filter {
            fqdn: Some("httpbin.org".into()),
            ..Default::default()
        },
        Format::Short,
    )
    .unwrap();
    let mut lines = short.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("SERVICE FQDN") && header.contains("DESTINATION RULE"),
        "{short}"
    );
    assert!(lines.next().unwrap().starts_with("httpbin.org"), "{short}");
}

#[test]
fn seeds_jq_filters_run_unchanged() {
    let jq = std::process::Command::new("jq").arg("--version").output();
    if jq.is_err() {
        isthmus_testutil::skip_or_fail("jq not installed (apt-get install jq)");
        return;
    }
    let c = common::load_case("t91-https-over-mtls");
    let json = render(
        &c.proxy("client").config,
        ConfigKind::Cluster,
        &Filter {
            fqdn: Some("t91-egress.istio-vt-t91.svc.homelab.local".into()),
            ..Default::default()
        },
        Format::Json,
    )
    .unwrap();
    let filter = ".[] | {name, dr: .metadata.filterMetadata.istio.config, max: .circuitBreakers.thresholds[0].maxConnections, ka: .upstreamConnectionOptions.tcpKeepalive}";
    let run = |filter: &str, input: &str| -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("jq")
            .arg("-c")
            .arg(filter)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "jq failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(filter, &json);
    let partner = out.lines().find(|l| l.contains("|partner|")).expect(&out);
    assert_eq!(
        partner,
        r#"{"name":"outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local","dr":"/apis/networking.istio.io/v1/namespaces/istio-vt-t91/destination-rule/t91-egress-mtls","max":111,"ka":{"keepaliveProbes":3,"keepaliveTime":300,"keepaliveInterval":30}}"#
    );
    // The T91 report's own projection of the same cluster.
    let t91 = r#".[] | select(.name | test("partner")) | {name, max: .circuitBreakers.thresholds[0].maxConnections, connectTimeout, ka: .upstreamConnectionOptions.tcpKeepalive, tls_sni: .transportSocket.typedConfig.sni, tls_sds: [.transportSocket.typedConfig.commonTlsContext.tlsCertificateSdsSecretConfigs[].name]}"#;
    let out = run(t91, &json);
    assert_eq!(
        out.trim(),
        r#"{"name":"outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local","max":111,"connectTimeout":"3s","ka":{"keepaliveProbes":3,"keepaliveTime":300,"keepaliveInterval":30},"tls_sni":"api.partner.example","tls_sds":["default"]}"#
    );
    // Gateway side: no transport socket.
    let gw = render(
        &c.proxy("gateway").config,
        ConfigKind::Cluster,
        &Filter {
            fqdn: Some("api.partner.example".into()),
            ..Default::default()
        },
        Format::Json,
    )
    .unwrap();
    let out = run(
        r#".[] | select(.name == "outbound|443||api.partner.example") | {name, max: .circuitBreakers.thresholds[0].maxConnections, transportSocket: (.transportSocket // "ABSENT")}"#,
        &gw,
    );
    assert_eq!(
        out.trim(),
        r#"{"name":"outbound|443||api.partner.example","max":222,"transportSocket":"ABSENT"}"#
    );
    // The listener check of the S1 section.
    let l = render(
        &c.proxy("gateway").config,
        ConfigKind::Listener,
        &Filter {
            port: Some(8443),
            ..Default::default()
        },
        Format::Json,
    )
    .unwrap();
    let out = run(".[].filterChains[] | {sn: .filterChainMatch.serverNames, req: .transportSocket.typedConfig.requireClientCertificate}", &l);
    assert_eq!(out.trim(), r#"{"sn":["api.partner.example"],"req":true}"#);
}

#[test]
fn yaml_output_parses_back() {
    let c = common::load_case("t91-https-over-mtls");
    let y = render(
        &c.proxy("gateway").config,
        ConfigKind::Listener,
        &Filter::default(),
        Format::Yaml,
    )
    .unwrap();
    let back: Value = serde_saphyr::from_str(&y).expect("yaml parses");
    let j: Value = serde_json::from_str(
        &render(
            &c.proxy("gateway").config,
            ConfigKind::Listener,
            &Filter::default(),
            Format::Json,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(back, j);
    assert_eq!(
        back[0]["filterChains"][0]["transportSocket"]["typedConfig"]["requireClientCertificate"],
        true
    );
}
