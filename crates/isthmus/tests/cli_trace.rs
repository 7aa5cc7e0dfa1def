//! `isthmus trace` with the real binary: the bundled examples (two hops, TLS layer stacks), the
//! compile goldens, and the seeds' silent failures made into variants — mesh route removed
//! (bypass), REGISTRY_ONLY (block_all 502 / BlackHoleCluster), misaligned SNI at the gateway
//! (no filter chain → reset), unknown Host at an ingress (404 NR), first-match route order,
//! DestinationRule merge and namespace shadowing.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden(name: &str) -> PathBuf {
    repo()
        .join("crates/isthmus-compile/tests/golden")
        .join(name)
        .join("input.yaml")
}

fn isthmus(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run isthmus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `trace ... -o json` and returns (exit code, JSON).
fn trace_json(args: &[&str]) -> (i32, Value) {
    let mut a = vec!["trace"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let (code, out, err) = isthmus(&a);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("trace -o json is JSON ({e}); stdout={out} stderr={err}"));
    (code, v)
}

/// A temporary copy of an example, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn to_str(&self) -> Option<&str> {
        self.0.to_str()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of an example directory with text edits applied (each edit must apply), plus extra files.
fn variant(name: &str, base: &Path, edits: &[(&str, &str, &str)], extra: &[(&str, &str)]) -> Tmp {
    let dir = std::env::temp_dir().join(format!("isthmus-trace-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(base).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    for (file, from, to) in edits {
        let p = dir.join(file);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "edit {from:?} must apply to {file}");
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    }
    for (file, text) in extra {
        std::fs::write(dir.join(file), text).unwrap();
    }
    Tmp(dir)
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn kinds(layers: &Value) -> Vec<String> {
    layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(&l["kind"]).to_string())
        .collect()
}

fn egress() -> PathBuf {
    repo().join("examples/egress-double-mtls")
}

fn t91() -> PathBuf {
    repo().join("examples/https-over-mtls")
}

const MESH_ROUTE: &str = "  - match:\n    - gateways: [mesh]\n      port: 80\n    route:\n    - destination:\n        host: istio-egressgateway.istio-system.svc.cluster.local\n        subset: partner\n        port: {number: 443}\n";

fn no_mesh_route(name: &str, extra_edits: &[(&str, &str, &str)], extra: &[(&str, &str)]) -> Tmp {
    let mut edits = vec![
        (
            "40-egress-config.yaml",
            "gateways: [mesh, istio-system/egress-partner]",
            "gateways: [istio-system/egress-partner]",
        ),
        ("40-egress-config.yaml", MESH_ROUTE, ""),
    ];
    edits.extend_from_slice(extra_edits);
    variant(name, &egress(), &edits, extra)
}

const REGISTRY_ONLY: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |\n    outboundTrafficPolicy:\n      mode: REGISTRY_ONLY\n";

#[test]
fn trace_egress_double_mtls_two_hops_mesh_mtls_then_mutual_origination() {
    let (code, v) = trace_json(&[
        "-f",
        "examples/egress-double-mtls",
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/get",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let hops = v["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "{v:#}");
    let h1 = &hops[0];
    assert_eq!(h1["role"], "sidecar outbound");
    assert!(s(&h1["proxy"]).starts_with("mesh-test/sleep-"));
    assert_eq!(h1["listener"], "0.0.0.0_80");
    assert_eq!(
        h1["routeConfig"],
        Value::Null,
        "fields are snake_case in JSON"
    );
    assert_eq!(h1["route_config"], "80");
    assert!(s(&h1["virtual_host"]).starts_with("api.partner.example.com:80"));
    assert_eq!(
        h1["route"]["from"],
        "VirtualService istio-system/partner-via-egress"
    );
    assert_eq!(h1["route"]["matched"], "prefix /");
    assert_eq!(
        h1["cluster"],
        "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local"
    );
    assert_eq!(
        h1["destination_rule"]["applied"],
        "istio-system/egressgateway-partner"
    );
    assert_eq!(h1["destination_rule"]["subset"], "partner");
    assert_eq!(h1["upstream_tls"]["kind"], "mesh mTLS");
    assert_eq!(h1["upstream_tls"]["sni"], "api.partner.example.com");
    assert_eq!(h1["upstream_tls"]["client_cert"], "default");
    assert_eq!(
        h1["upstream_tls"]["verify_sans"][0],
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
    );
    assert_eq!(h1["pool"]["maxConnections"], 1024);
    assert_eq!(h1["pool"]["connectTimeout"], "3s");
    assert_eq!(
        h1["pool"]["tcpKeepalive"],
        "time 300s / interval 30s / probes 3"
    );
    assert_eq!(h1["endpoint"]["kind"], "gateway");
    assert!(
        s(&h1["endpoint"]["address"]).ends_with(":8443"),
        "Service 443 → targetPort 8443"
    );
    assert_eq!(kinds(&h1["wire_out"]), ["mesh mTLS"]);

    let h2 = &hops[1];
    assert_eq!(h2["role"], "gateway");
    assert!(s(&h2["proxy"]).starts_with("istio-system/istio-egressgateway-"));
    assert_eq!(h2["arrives"]["sni"], "api.partner.example.com");
    assert_eq!(h2["listener"], "0.0.0.0_8443");
    assert_eq!(h2["chain_match"], "SNI api.partner.example.com");
    assert!(s(&h2["terminated"]).starts_with("mesh mTLS opened by mesh-test/sleep-"));
    assert_eq!(
        h2["route_config"],
        "https.8443.https-partner.egress-partner.istio-system"
    );
    assert_eq!(h2["cluster"], "outbound|443||api.partner.example.com");
    assert_eq!(
        h2["destination_rule"]["applied"],
        "istio-system/partner-originate-mtls"
    );
    assert_eq!(h2["upstream_tls"]["kind"], "MUTUAL origination");
    assert_eq!(
        h2["upstream_tls"]["client_cert"],
        "kubernetes://partner-client-credential"
    );
    assert_eq!(
        h2["upstream_tls"]["trust"],
        "kubernetes://partner-client-credential-cacert"
    );
    assert_eq!(
        h2["upstream_tls"]["verify_sans"],
        serde_json::json!(["api.partner.example.com"])
    );
    assert_eq!(h2["pool"]["maxConnections"], 4096);
    assert_eq!(h2["pool"]["maxRequestsPerConnection"], 1000);
    assert_eq!(h2["pool"]["httpIdleTimeout"], "900s");
    assert_eq!(h2["pool"]["maxConnectionDuration"], "3600s");
    assert_eq!(h2["endpoint"]["address"], "api.partner.example.com:443");
    assert_eq!(h2["endpoint"]["kind"], "outside the mesh");
    assert_eq!(kinds(&h2["wire_out"]), ["MUTUAL origination"]);

    assert_eq!(v["verdict"]["status"], "reached");
    assert_eq!(v["verdict"]["destination"], "api.partner.example.com:443");
    assert_eq!(v["verdict"]["tls_layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["verdict"]["summary"],
        "reaches api.partner.example.com:443 through istio-system/istio-egressgateway — 2 TLS layers on the wire (mesh mTLS (leaving hop 1), then MUTUAL origination (leaving hop 2))"
    );
}

#[test]
fn trace_text_is_one_block_per_hop_with_the_result_last() {
    let (code, out, _) = isthmus(&[
        "trace",
        "-f",
        "examples/egress-double-mtls",
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 0, "{out}");
    let hop_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("HOP ")).collect();
    assert_eq!(hop_lines.len(), 2, "{out}");
    assert!(
        hop_lines[0].starts_with("HOP 1 mesh-test/sleep-")
            && hop_lines[0].ends_with("(sidecar outbound)"),
        "{out}"
    );
    assert!(
        hop_lines[1].starts_with("HOP 2 istio-system/istio-egressgateway-")
            && hop_lines[1].ends_with("(gateway)"),
        "{out}"
    );
    assert!(out.contains("  cluster:   outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local\n"), "{out}");
    assert!(
        out.contains("  dr:        istio-system/partner-originate-mtls\n"),
        "{out}"
    );
    assert!(out.contains("  tls out:   MUTUAL origination sni=api.partner.example.com cert=kubernetes://partner-client-credential"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("RESULT: reaches api.partner.example.com:443 through istio-system/istio-egressgateway — 2 TLS layers"), "{out}");
}

#[test]
fn trace_https_over_mtls_app_tls_inside_mesh_mtls_then_app_tls_only() {
    let (code, v) = trace_json(&[
        "-f",
        "examples/https-over-mtls",
        "--domain",
        "homelab.local",
        "-n",
        "istio-vt-t91",
        "client",
        "https://api.partner.example/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let hops = v["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "{v:#}");
    let h1 = &hops[0];
    assert_eq!(h1["proxy"], "istio-vt-t91/client");
    // No DNS capture (Istio's default): the SE's port has no VIP, its listener is 0.0.0.0_443.
    assert_eq!(h1["listener"], "0.0.0.0_443", "{v:#}");
    assert_eq!(h1["chain_match"], "SNI api.partner.example");
    assert_eq!(h1["route"], Value::Null, "TCP proxy: no HTTP route");
    assert_eq!(
        h1["l4_route"],
        "VirtualService istio-vt-t91/api-partner-via-t91 tls[0]"
    );
    assert_eq!(
        h1["cluster"],
        "outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local"
    );
    assert_eq!(h1["destination_rule"]["applied"], "istio-vt-t91/dr1-hop1");
    assert_eq!(h1["pool"]["maxConnections"], 111);
    assert_eq!(h1["upstream_tls"]["kind"], "mesh mTLS");
    assert_eq!(h1["upstream_tls"]["sni"], "api.partner.example");
    assert_eq!(kinds(&h1["wire_out"]), ["mesh mTLS", "app TLS"]);
    let h2 = &hops[1];
    assert!(s(&h2["proxy"]).starts_with("istio-vt-t91/t91-egress-"));
    assert_eq!(h2["listener"], "0.0.0.0_8443");
    assert!(s(&h2["terminated"]).starts_with("mesh mTLS opened by istio-vt-t91/client"));
    assert_eq!(
        h2["l4_route"],
        "VirtualService istio-vt-t91/api-partner-via-t91 tcp[0]"
    );
    assert_eq!(h2["cluster"], "outbound|443||api.partner.example");
    assert_eq!(h2["destination_rule"]["applied"], "istio-vt-t91/dr2-hop2");
    assert_eq!(h2["pool"]["maxConnections"], 222);
    assert_eq!(
        h2["upstream_tls"],
        Value::Null,
        "DR2 has no tls block: raw TCP"
    );
    assert_eq!(kinds(&h2["wire_out"]), ["app TLS"]);
    assert_eq!(
        h2["endpoint"]["workload"], "istio-verify-ext/mock",
        "the outside echo pod answers for api.partner.example"
    );
    assert_eq!(v["verdict"]["status"], "reached");
    assert!(
        s(&v["verdict"]["summary"]).ends_with(
            "2 TLS layers on the wire (app TLS end to end, then mesh mTLS (leaving hop 1))"
        ),
        "{v:#}"
    );
}

#[test]
fn trace_mesh_route_removed_with_visible_service_entry_goes_direct_bypassing_the_gateway() {
    // The ServiceEntry also declares port 80 here, so the sidecar has a cluster for it.
    let dir = no_mesh_route(
        "direct",
        &[(
            "40-egress-config.yaml",
            "  ports:\n",
            "  ports:\n  - {number: 80, name: http, protocol: HTTP}\n",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/get",
    ]);
    assert_eq!(code, 1, "a bypass is not a success: {v:#}");
    let hops = v["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0]["cluster"], "outbound|80||api.partner.example.com");
    assert_eq!(hops[0]["upstream_tls"], Value::Null);
    assert_eq!(kinds(&hops[0]["wire_out"]), Vec::<String>::new());
    assert_eq!(hops[0]["destination_rule"], Value::Null);
    assert!(hops[0]["notes"].to_string().contains("istio-system/partner-originate-mtls: exportTo [\\\".\\\"] hides it from namespace mesh-test"), "{v:#}");
    assert_eq!(v["verdict"]["status"], "bypass");
    let sum = s(&v["verdict"]["summary"]);
    assert!(sum.contains("BYPASSING the egress gateway that VirtualService istio-system/partner-via-egress sets up"), "{sum}");
    assert!(sum.contains("0 TLS layers on the wire"), "{sum}");
}

#[test]
fn trace_mesh_route_removed_allow_any_passthrough_bypass_with_zero_mtls() {
    let dir = no_mesh_route(
        "passthrough",
        &[(
            "40-egress-config.yaml",
            "  location: MESH_EXTERNAL\n",
            "  location: MESH_EXTERNAL\n  exportTo: [\".\"]\n",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/get",
    ]);
    assert_eq!(code, 1);
    let h = &v["hops"][0];
    assert_eq!(h["listener"], "0.0.0.0_80");
    assert!(s(&h["virtual_host"]).starts_with("allow_any"));
    assert_eq!(h["route"]["name"], "allow_any");
    assert_eq!(h["cluster"], "PassthroughCluster");
    assert_eq!(h["endpoint"]["kind"], "original destination");
    assert_eq!(kinds(&h["wire_out"]), Vec::<String>::new());
    assert_eq!(v["verdict"]["status"], "bypass");
    let sum = s(&v["verdict"]["summary"]);
    assert!(
        sum.starts_with("BYPASS: leaves the mesh from mesh-test/sleep-"),
        "{sum}"
    );
    assert!(
        sum.contains("through PassthroughCluster (ALLOW_ANY)")
            && sum.contains("0 mesh mTLS layers"),
        "{sum}"
    );
    assert!(sum.contains("VirtualService istio-system/partner-via-egress routes this host through a gateway, but not for this caller"), "{sum}");

    // Raw TCP to an unknown destination stays on virtualOutbound's catch-all.
    let (_, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "tcp://db.unknown.example:5432",
    ]);
    let h = &v["hops"][0];
    assert_eq!(h["listener"], "virtualOutbound");
    assert_eq!(h["filter_chain"], "virtualOutbound-catchall-tcp");
    assert_eq!(h["cluster"], "PassthroughCluster");
    assert_eq!(v["verdict"]["status"], "bypass");
}

#[test]
fn trace_registry_only_blocks_with_block_all_502_and_blackhole() {
    let dir = no_mesh_route(
        "registry-only",
        &[(
            "40-egress-config.yaml",
            "  location: MESH_EXTERNAL\n",
            "  location: MESH_EXTERNAL\n  exportTo: [\".\"]\n",
        )],
        &[("01-mesh.yaml", REGISTRY_ONLY)],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/get",
    ]);
    assert_eq!(code, 1);
    let h = &v["hops"][0];
    assert!(s(&h["virtual_host"]).starts_with("block_all"), "{v:#}");
    assert_eq!(h["failure"]["kind"], "direct_response");
    assert_eq!(h["failure"]["client_sees"], "502");
    assert!(s(&h["failure"]["detail"]).contains("REGISTRY_ONLY"));
    assert_eq!(v["verdict"]["status"], "failed");

    let (_, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "tcp://db.unknown.example:5432",
    ]);
    let h = &v["hops"][0];
    assert_eq!(h["listener"], "virtualOutbound");
    assert_eq!(h["cluster"], "BlackHoleCluster");
    assert_eq!(h["failure"]["kind"], "blackhole");
    assert_eq!(h["failure"]["client_sees"], "connection reset");

    // Same REGISTRY_ONLY mesh, intact config: the registered path still works.
    let ok = variant(
        "registry-only-ok",
        &egress(),
        &[],
        &[("01-mesh.yaml", REGISTRY_ONLY)],
    );
    let (code, v) = trace_json(&[
        "-f",
        ok.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/get",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["hops"].as_array().unwrap().len(), 2);
}

#[test]
fn trace_misaligned_dr_sni_resets_at_the_gateway() {
    // https-over-mtls: the app's TLS is inside; the reset reaches curl as exit 35.
    let dir = variant(
        "sni-t91",
        &t91(),
        &[(
            "40-egress-config.yaml",
            "        mode: ISTIO_MUTUAL\n        sni: api.partner.example\n",
            "        mode: ISTIO_MUTUAL\n        sni: partner.example\n",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "--domain",
        "homelab.local",
        "-n",
        "istio-vt-t91",
        "client",
        "https://api.partner.example/",
    ]);
    assert_eq!(code, 1);
    let hops = v["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2);
    assert_eq!(hops[0]["upstream_tls"]["sni"], "partner.example");
    let g = &hops[1];
    assert_eq!(g["role"], "gateway");
    assert_eq!(g["listener"], "0.0.0.0_8443");
    assert_eq!(g["filter_chain"], Value::Null);
    assert_eq!(g["failure"]["kind"], "no_filter_chain");
    assert_eq!(
        g["failure"]["client_sees"],
        "connection reset during the TLS handshake (curl exit 35)"
    );
    assert!(s(&g["failure"]["detail"]).starts_with("no filter chain at the gateway: no filter chain of 0.0.0.0_8443 matches SNI \"partner.example\"; its chains accept SNI api.partner.example"), "{v:#}");
    assert!(
        s(&v["verdict"]["summary"]).starts_with("FAILS at istio-vt-t91/t91-egress-"),
        "{v:#}"
    );

    // Plain HTTP app: the client sidecar turns the reset into a 503 UF.
    let dir = variant("sni-egress", &egress(), &[("40-egress-config.yaml", "          sni: api.partner.example.com\n        connectionPool:\n          tcp:\n            maxConnections: 1024", "          sni: api-partner.example.com\n        connectionPool:\n          tcp:\n            maxConnections: 1024")], &[]);
    let (_, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(v["hops"][1]["failure"]["kind"], "no_filter_chain");
    assert!(s(&v["hops"][1]["failure"]["client_sees"]).starts_with("503 UF"));
}

#[test]
fn trace_ingress_unknown_host_is_404_nr_and_first_match_wins() {
    let f = golden("ingress-termination");
    let f = f.to_str().unwrap();
    let (code, v) = trace_json(&[
        "-f",
        f,
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "http://unknown.example.com/get",
    ]);
    assert_eq!(code, 1);
    let h = &v["hops"][0];
    assert_eq!(h["role"], "gateway");
    assert_eq!(
        h["arrives"]["port"], 8080,
        "Service port 80 → targetPort 8080"
    );
    assert_eq!(h["listener"], "0.0.0.0_8080");
    assert_eq!(h["route_config"], "http.8080");
    assert_eq!(h["failure"]["kind"], "no_route");
    assert_eq!(h["failure"]["client_sees"], "404 NR (no route)");
    assert!(s(&h["failure"]["detail"])
        .contains("matches Host \"unknown.example.com\"; it serves httpbin.example.com"));

    // /status/418 is listed first: it wins; /headers falls into the catch-all (listed before it).
    let (code, v) = trace_json(&[
        "-f",
        f,
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "https://httpbin.example.com/status/418",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let h = &v["hops"][0];
    assert!(s(&h["terminated"]).contains("TLS SIMPLE with kubernetes://httpbin-credential"));
    assert_eq!(h["route_config"], "https.443.https.httpbin-gateway.default");
    assert_eq!(h["route"]["name"], "teapot");
    assert_eq!(h["route"]["index"], 0);
    assert_eq!(h["route"]["skipped"], Value::Null);
    let (_, v) = trace_json(&[
        "-f",
        f,
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "https://httpbin.example.com/headers",
    ]);
    let h = &v["hops"][0];
    assert_eq!(h["route"]["name"], "catch-all");
    assert_eq!(h["route"]["index"], 1);
    assert_eq!(
        h["route"]["skipped"],
        serde_json::json!(["teapot (prefix /status/418)"])
    );
    assert_eq!(
        h["cluster"],
        "outbound|8000||httpbin.default.svc.cluster.local"
    );
    assert_eq!(kinds(&h["wire_out"]), ["mesh mTLS"]);
    // Hop 2: httpbin's sidecar, inbound on the targetPort.
    let h2 = &v["hops"][1];
    assert_eq!(h2["role"], "sidecar inbound");
    assert_eq!(h2["listener"], "virtualInbound");
    assert_eq!(h2["filter_chain"], "inbound_0.0.0.0_80");
    assert_eq!(h2["cluster"], "inbound|80||");
    assert_eq!(h2["endpoint"]["kind"], "application container");
    assert_eq!(v["verdict"]["status"], "reached");
}

#[test]
fn trace_gateway_port_without_listener_is_connection_refused() {
    let (code, v) = trace_json(&[
        "-f",
        golden("ingress-termination").to_str().unwrap(),
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "http://httpbin.example.com:9999/",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["hops"][0]["failure"]["kind"], "no_listener");
    assert_eq!(
        v["hops"][0]["failure"]["client_sees"],
        "connection refused (curl exit 7)"
    );
}

#[test]
fn trace_ingress_passthrough_keeps_app_tls_to_the_pod() {
    let (code, v) = trace_json(&[
        "-f",
        golden("ingress-passthrough").to_str().unwrap(),
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "https://httpbin.example.com/status/418",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let h = &v["hops"][0];
    assert_eq!(h["terminated"], Value::Null, "PASSTHROUGH does not decrypt");
    assert_eq!(h["chain_match"], "SNI httpbin.example.com");
    assert_eq!(
        h["cluster"],
        "outbound|443||httpbin.httpbin-tls.svc.cluster.local"
    );
    assert_eq!(kinds(&h["wire_out"]), ["mesh mTLS", "app TLS"]);
    assert_eq!(v["hops"][1]["cluster"], "inbound|8443||");
    assert!(s(&v["verdict"]["summary"]).contains("app TLS end to end"));
}

#[test]
fn trace_port_level_wipe_shows_defaults_on_the_wiped_port() {
    let (code, v) = trace_json(&[
        "-f",
        golden("port-level-wipe").to_str().unwrap(),
        "-n",
        "app",
        "client",
        "https://partner.example.com/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let h = &v["hops"][0];
    assert_eq!(h["destination_rule"]["applied"], "app/partner");
    assert_eq!(h["upstream_tls"]["kind"], "SIMPLE origination");
    assert_eq!(
        h["pool"]["maxConnections"],
        Value::Null,
        "the port-level tls entry wiped the top-level pool: {v:#}"
    );
    let (_, v) = trace_json(&[
        "-f",
        golden("port-level-wipe").to_str().unwrap(),
        "-n",
        "app",
        "client",
        "http://partner.example.com/",
    ]);
    assert!(
        v["hops"][0]["pool"]["maxConnections"].is_u64(),
        "port 80 keeps the top-level pool: {v:#}"
    );
}

#[test]
fn trace_dr_merge_and_client_namespace_shadowing_are_named() {
    let extra_dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: partner-extra\n  namespace: istio-system\n  creationTimestamp: \"2030-01-01T00:00:00Z\"\nspec:\n  host: api.partner.example.com\n  exportTo: [\".\"]\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 7}\n  subsets:\n  - name: extra\n    labels: {version: x}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: local-gw\n  namespace: mesh-test\nspec:\n  host: istio-egressgateway.istio-system.svc.cluster.local\n  subsets:\n  - name: partner\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL, sni: api.partner.example.com}\n      connectionPool:\n        tcp: {maxConnections: 5}\n";
    let dir = variant(
        "dr-merge",
        &egress(),
        &[],
        &[("50-extra-drs.yaml", extra_dr)],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    let h1 = &v["hops"][0];
    assert_eq!(h1["destination_rule"]["applied"], "mesh-test/local-gw");
    assert_eq!(h1["pool"]["maxConnections"], 5);
    let beaten = h1["destination_rule"]["beaten"].to_string();
    assert!(beaten.contains("istio-system/egressgateway-partner: lookup stops at the first namespace with a match (client mesh-test"), "{beaten}");
    let h2 = &v["hops"][1];
    assert_eq!(
        h2["destination_rule"]["applied"],
        "istio-system/partner-originate-mtls"
    );
    assert_eq!(
        h2["destination_rule"]["merged"],
        serde_json::json!(["istio-system/partner-extra (its top-level trafficPolicy is ignored: the oldest rule's wins; only its subsets are kept)"])
    );
    assert_eq!(
        h2["pool"]["maxConnections"], 4096,
        "the oldest rule's pool stays in force"
    );
}

#[test]
fn trace_bad_input_is_reported_not_panicked() {
    let (code, _, err) = isthmus(&[
        "trace",
        "-f",
        "examples/egress-double-mtls",
        "-n",
        "mesh-test",
        "deploy/nope",
        "http://x/",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("deployment \"nope\" not found") && err.contains("deploy/sleep -n mesh-test"),
        "{err}"
    );
    let (code, _, err) = isthmus(&[
        "trace",
        "-f",
        "examples/egress-double-mtls",
        "-n",
        "mesh-test",
        "deploy/sleep",
        "api.partner.example.com",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("has no scheme"), "{err}");
    let (code, _, err) = isthmus(&[
        "trace",
        "-f",
        "examples/egress-double-mtls",
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://x/",
        "-o",
        "yaml",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown output format"), "{err}");
}

#[test]
fn trace_compile_goldens_double_mtls_and_t91_reach_through_their_gateways() {
    let (code, v) = trace_json(&[
        "-f",
        golden("double-mtls").to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["hops"].as_array().unwrap().len(), 2);
    assert_eq!(v["hops"][1]["upstream_tls"]["kind"], "MUTUAL origination");
    assert_eq!(v["verdict"]["via"].as_array().unwrap().len(), 1);
    let (code, v) = trace_json(&[
        "-f",
        golden("t91-https-over-mtls").to_str().unwrap(),
        "--domain",
        "homelab.local",
        "-n",
        "istio-vt-t91",
        "client",
        "https://api.partner.example/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(kinds(&v["hops"][0]["wire_out"]), ["mesh mTLS", "app TLS"]);
    assert_eq!(kinds(&v["hops"][1]["wire_out"]), ["app TLS"]);
}

#[test]
fn trace_egress_sni_passthrough_cnn_leg_without_mesh_route_bypasses_the_gateway() {
    // Seed 003: cnn-wrong-leg2 binds only the gateway, so the sidecar goes straight out.
    let (code, v) = trace_json(&[
        "-f",
        golden("egress-sni-passthrough").to_str().unwrap(),
        "-n",
        "egress-test",
        "curl",
        "https://edition.cnn.com/",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["hops"].as_array().unwrap().len(), 1);
    assert_eq!(v["hops"][0]["cluster"], "outbound|443||edition.cnn.com");
    assert_eq!(kinds(&v["hops"][0]["wire_out"]), ["app TLS"]);
    assert_eq!(v["verdict"]["status"], "bypass");
    assert!(
        s(&v["verdict"]["summary"]).contains(
            "BYPASSING the egress gateway that VirtualService egress-test/cnn-wrong-leg2 sets up"
        ),
        "{v:#}"
    );
}

#[test]
fn trace_sni_flag_changes_the_chain_and_host_header_changes_the_vhost() {
    // An app SNI the sidecar's SNI chains do not know falls to the listener's default chain
    // (no VIP without DNS capture: 0.0.0.0_443 tells services apart by SNI only): out through
    // PassthroughCluster under ALLOW_ANY, no gateway, no mesh mTLS.
    let (code, v) = trace_json(&[
        "-f",
        "examples/https-over-mtls",
        "--domain",
        "homelab.local",
        "-n",
        "istio-vt-t91",
        "client",
        "https://api.partner.example/",
        "--sni",
        "wrong.example",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["hops"][0]["arrives"]["sni"], "wrong.example");
    assert_eq!(
        v["hops"][0]["chain_match"],
        "default chain: no filter chain matched"
    );
    assert_eq!(v["hops"][0]["cluster"], "PassthroughCluster");
    assert_eq!(v["verdict"]["status"], "bypass");
    // The Host header, not the URL host, selects the gateway's virtual host.
    let (code, v) = trace_json(&[
        "-f",
        golden("ingress-termination").to_str().unwrap(),
        "-n",
        "istio-system",
        "deploy/istio-ingressgateway",
        "http://192.0.2.1/headers",
        "-H",
        "Host: httpbin.example.com",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["hops"][0]["listener_note"],
        "Service port 80 → targetPort 8080"
    );
    assert!(s(&v["hops"][0]["virtual_host"]).starts_with("httpbin.example.com:80"));
    assert_eq!(v["hops"][0]["route"]["name"], "catch-all");
    assert_eq!(v["headers"]["Host"], "httpbin.example.com");
}

#[test]
fn trace_gateway_tls_mode_mismatches_are_named() {
    // Gateway server SIMPLE with a credential while hop 1 speaks mesh mTLS: the client sidecar
    // rejects the gateway's certificate.
    let dir = variant(
        "gw-simple",
        &egress(),
        &[(
            "40-egress-config.yaml",
            "    tls:\n      mode: ISTIO_MUTUAL\n---",
            "    tls:\n      mode: SIMPLE\n      credentialName: partner-client-credential\n---",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 1);
    let g = &v["hops"][1];
    assert_eq!(
        g["filter_chain"], "#0",
        "the SNI chain matches; the handshake is what fails"
    );
    assert_eq!(g["failure"]["kind"], "tls_mismatch");
    assert!(s(&g["failure"]["client_sees"]).contains("CERTIFICATE_VERIFY_FAILED"));
    assert!(s(&g["failure"]["detail"])
        .contains("TLS SIMPLE with kubernetes://partner-client-credential"));

    // DR subset without `tls`: gateway pods carry no tlsMode=istio label, so auto-mTLS does not
    // wrap hop 1 and plaintext reaches the gateway's ISTIO_MUTUAL listener.
    let dir = variant(
        "dr-no-sni",
        &egress(),
        &[(
            "40-egress-config.yaml",
            "        tls:\n          mode: ISTIO_MUTUAL\n          sni: api.partner.example.com\n",
            "",
        )],
        &[],
    );
    let (_, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert!(v["hops"][0]["upstream_tls"].is_null(), "{}", v["hops"][0]);
    assert_eq!(v["hops"][1]["failure"]["kind"], "no_filter_chain");
    assert!(s(&v["hops"][1]["failure"]["detail"]).contains("plaintext connection"));
}

#[test]
fn trace_secret_in_the_wrong_namespace_breaks_hop_2() {
    let dir = variant(
        "secret-ns",
        &egress(),
        &[(
            "30-partner-credential.yaml",
            "  namespace: istio-system",
            "  namespace: mesh-test",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 1);
    let g = &v["hops"][1];
    assert_eq!(g["cluster"], "outbound|443||api.partner.example.com");
    assert_eq!(
        g["upstream_tls"]["client_cert"],
        "kubernetes://partner-client-credential"
    );
    assert_eq!(g["failure"]["kind"], "missing_secret");
    assert_eq!(
        g["failure"]["client_sees"],
        "503 UF (upstream TLS handshake fails: no client certificate)"
    );
    assert!(
        s(&g["failure"]["detail"])
            .contains("Secret partner-client-credential not found in namespace istio-system"),
        "{v:#}"
    );
    assert!(s(&v["verdict"]["summary"]).starts_with("FAILS at istio-system/istio-egressgateway-"));
}

#[test]
fn trace_pool_shows_outlier_detection_in_force() {
    let dir = variant(
        "outlier",
        &egress(),
        &[(
            "40-egress-config.yaml",
            "          maxRequestsPerConnection: 1000\n",
            "          maxRequestsPerConnection: 1000\n      outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 60s}\n",
        )],
        &[],
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["hops"][1]["pool"]["outlierDetection"],
        "consecutive5xx=3 interval=5s baseEjectionTime=60s"
    );
    assert_eq!(v["hops"][0]["pool"]["outlierDetection"], Value::Null);
}

#[test]
fn trace_mesh_config_flag_overrides_the_configmap() {
    let dir = no_mesh_route(
        "mesh-flag",
        &[],
        &[(
            "mesh.yaml.txt",
            "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
        )],
    );
    let mesh = dir.0.join("mesh.yaml.txt");
    let (_, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(
        v["hops"][0]["cluster"], "PassthroughCluster",
        "ALLOW_ANY by default: {v:#}"
    );
    let (code, v) = trace_json(&[
        "-f",
        dir.to_str().unwrap(),
        "--mesh-config",
        mesh.to_str().unwrap(),
        "-n",
        "mesh-test",
        "deploy/sleep",
        "http://api.partner.example.com/",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["hops"][0]["failure"]["kind"], "direct_response", "{v:#}");
    assert_eq!(v["hops"][0]["failure"]["client_sees"], "502");
}
