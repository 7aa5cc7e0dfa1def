//! Two proxies in-process: a client sidecar originating ISTIO_MUTUAL and a server sidecar
//! terminating it, with the identities visible in access logs and metrics on both sides.

mod common;
use common::*;

use std::net::SocketAddr;

use serde_json::json;

fn ep(a: SocketAddr) -> serde_json::Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

#[tokio::test]
async fn sidecar_to_sidecar_istio_mutual_http() {
    let root = Ca::new("mesh-root");
    let client_svid = root.leaf(&[], &["spiffe://cluster.local/ns/default/sa/sleep"]);
    let server_svid = root.leaf(&[], &["spiffe://cluster.local/ns/default/sa/httpbin"]);
    let (app, _) = http_backend("httpbin-app").await;

    // Server sidecar: inbound ISTIO_MUTUAL termination, HTTP to the local app.
    let server = start(json!({
        "node": {"workloadName": "httpbin", "namespace": "default", "app": "httpbin", "version": "v1",
                 "principal": "spiffe://cluster.local/ns/default/sa/httpbin"},
        "listeners": [{"name": "virtualInbound", "address": "127.0.0.1:0", "direction": "INBOUND", "filterChains": [
            {"name": "0.0.0.0_80", "filterChainMatch": {"transportProtocol": "tls"},
             "tls": {"mode": "ISTIO_MUTUAL", "certificates": ["default"], "validation": "ROOTCA", "trustDomains": ["cluster.local"]},
             "action": {"http": {"routeConfig": {"name": "inbound|80||", "virtualHosts": [
                {"name": "inbound|http|80", "domains": ["*"], "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "inbound|80||"}}]}]}}}}]}],
        "clusters": [{"name": "inbound|80||", "endpoints": [ep(app)]}],
        "secrets": [cert_secret("default", &server_svid), ca_secret("ROOTCA", &root)]
    }))
    .await;
    let inbound = server.addr("virtualInbound");

    // Client sidecar: outbound HTTP, cluster originates ISTIO_MUTUAL to the server sidecar.
    let host = "httpbin.default.svc.cluster.local";
    let cluster = format!("outbound|80||{host}");
    let client = start(json!({
        "node": {"workloadName": "sleep", "namespace": "default", "app": "sleep",
                 "principal": "spiffe://cluster.local/ns/default/sa/sleep"},
        "listeners": [{"name": "0.0.0.0_80", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": format!("{host}:80"), "domains": [host, "httpbin", "httpbin.default"], "routes": [
                    {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}}}]}],
        "clusters": [{"name": cluster, "endpoints": [ep(inbound)],
            "service": {"host": host, "name": "httpbin", "namespace": "default"},
            "tls": {"mode": "ISTIO_MUTUAL", "sni": format!("outbound_.80_._.{host}"),
                    "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/httpbin"], "certificate": "default", "validation": "ROOTCA"}}],
        "secrets": [cert_secret("default", &client_svid), ca_secret("ROOTCA", &root)]
    }))
    .await;
    let port = client.addr("0.0.0.0_80").port();
    let o = curl(&s(&[
        "-H",
        "Host: httpbin",
        &format!("http://127.0.0.1:{port}/status/200"),
    ]))
    .await;
    assert!(
        o.stdout.starts_with("backend=httpbin-app"),
        "{} {}",
        o.stdout,
        o.stderr
    );
    assert!(
        o.stdout.contains("xff= "),
        "sidecars (use_remote_address false) add no x-forwarded-for: {}",
        o.stdout
    );

    let cl = fields(&client.wait_lines(1).await[0]);
    assert_eq!(cl[16], format!("outbound|80||{host}"));
    assert_eq!(cl[15], format!("\"{inbound}\""));
    let sl = fields(&server.wait_lines(1).await[0]);
    assert_eq!(
        sl[20],
        format!("outbound_.80_._.{host}"),
        "server sees the client's mesh SNI"
    );
    assert_eq!(sl[16], "inbound|80||");

    let prom = admin_get(&server, "/stats/prometheus").await;
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    for want in [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/httpbin\"",
        "destination_workload=\"httpbin\"",
        "destination_version=\"v1\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_code=\"200\"",
    ] {
        assert!(line.contains(want), "{want} missing in {line}");
    }
    let prom = admin_get(&client, "/stats/prometheus").await;
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    for want in [
        "reporter=\"source\"",
        "source_workload=\"sleep\"",
        &format!("destination_service=\"{host}\""),
        "destination_service_name=\"httpbin\"",
    ] {
        assert!(line.contains(want), "{want} missing in {line}");
    }

    // A client whose SVID comes from another root is refused by the server sidecar.
    let other = Ca::new("other-root");
    let rogue = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}}}]}],
        "clusters": [{"name": "c", "endpoints": [ep(inbound)],
            "tls": {"mode": "ISTIO_MUTUAL", "certificate": "default", "validation": "ROOTCA"}}],
        "secrets": [cert_secret("default", &other.leaf(&[], &["spiffe://cluster.local/ns/default/sa/sleep"])), ca_secret("ROOTCA", &root)]
    }))
    .await;
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/", rogue.addr("l")),
    ]))
    .await;
    assert_eq!(o.stdout, "503");
    // TLS 1.3: the client finishes its handshake before the server checks the client
    // certificate, so the rejection surfaces as a reset of the first request (UC), as in Envoy.
    let flag = fields(&rogue.wait_lines(1).await[0])[3].clone();
    assert!(flag == "UC" || flag == "UF", "{flag}");
}

#[tokio::test]
async fn http2_upstream_cluster_uses_h2c() {
    let (app, conns) = http_backend("h2app").await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "grpc"}}]}]}}}}]}],
        "clusters": [{"name": "grpc", "endpoints": [ep(app)], "http2": true}]
    }))
    .await;
    for _ in 0..3 {
        let o = curl(&s(&[&format!("http://{}/x", p.addr("l"))])).await;
        assert!(o.stdout.contains("version=HTTP/2.0"), "{}", o.stdout);
    }
    assert_eq!(conns.get(), 1, "one multiplexed upstream connection");
}
