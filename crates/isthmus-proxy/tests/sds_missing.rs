//! Referenced-but-unsupplied secrets (a gateway `credentialName` whose Secret is missing, in
//! another namespace or without the right keys): the config is ACKed, the cluster or filter
//! chain is kept and fails at use, exactly where Envoy's not-ready TLS socket fails, and it
//! starts working when a later version supplies the secret.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_proxy::ProxyConfig;
use serde_json::json;

const BODY_503: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: Secret is not supplied by SDS";

fn ep(a: SocketAddr) -> serde_json::Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

/// Gateway-style HTTP listener routing `partner` to a MUTUAL-originating cluster and
/// `plain` to a plain cluster.
fn gw_cfg(partner: SocketAddr, plain: SocketAddr, secrets: serde_json::Value) -> serde_json::Value {
    json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": "partner", "domains": ["partner"], "routes": [{"name": "p", "match": {"prefix": "/"}, "route": {"cluster": "outbound|443||partner.example"}}]},
                {"name": "plain", "domains": ["plain"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "plain"}}]}
            ]}}}}]},
            {"name": "tcp", "address": "127.0.0.1:0", "filterChains": [
                {"action": {"tcpProxy": {"cluster": "outbound|443||partner.example"}}}]}],
        "clusters": [
            {"name": "outbound|443||partner.example", "endpoints": [ep(partner)],
             "tls": {"mode": "MUTUAL", "sni": "partner.example",
                     "certificate": "kubernetes://partner-client",
                     "validation": "kubernetes://partner-client-cacert"}},
            {"name": "plain", "endpoints": [ep(plain)]}
        ],
        "secrets": secrets
    })
}

async fn get(port: u16, host: &str) -> (String, String) {
    let o = curl(&s(&[
        "-H",
        &format!("Host: {host}"),
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:{port}/get"),
    ]))
    .await;
    let (body, code) = o.stdout.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

fn cluster_ptr(p: &TestProxy, name: &str) -> usize {
    let rt = p.proxy.shared.runtime.load();
    Arc::as_ptr(rt.clusters.get(name).expect("cluster kept")) as usize
}

struct Partner {
    addr: SocketAddr,
    client_cert: (String, String),
    server_ca: Ca,
}

/// A partner HTTPS server that requires a client certificate from `client-root`.
async fn partner() -> Partner {
    let server_ca = Ca::new("partner-server-root");
    let client_ca = Ca::new("partner-client-root");
    let addr = https_backend(
        "partner",
        &server_ca.leaf(&["partner.example"], &[]),
        Some(&client_ca),
    )
    .await;
    Partner {
        addr,
        client_cert: client_ca.leaf(&["gateway.example"], &[]),
        server_ca,
    }
}

#[tokio::test]
async fn missing_client_certificate_is_acked_fails_uf_and_recovers_on_sds_push() {
    let pt = partner().await;
    let (plain, _) = http_backend("plain").await;
    // Only the CA half is supplied (e.g. a generic Secret without tls.crt/tls.key).
    let only_ca = json!([ca_secret(
        "kubernetes://partner-client-cacert",
        &pt.server_ca
    )]);
    let p = start(gw_cfg(pt.addr, plain, only_ca.clone())).await;
    let port = p.addr("http").port();

    let (code, body) = get(port, "partner").await;
    assert_eq!(code, "503", "{body}");
    assert_eq!(body, BODY_503);
    let (code, body) = get(port, "plain").await;
    assert_eq!(code, "200", "other clusters keep working: {body}");

    let lines = p.wait_lines(2).await;
    let line = lines
        .iter()
        .find(|l| l.contains("outbound|443||partner.example"))
        .expect("partner line");
    let f = fields(line);
    assert_eq!(f[2], "503", "{line}");
    assert_eq!(f[3], "UF", "{line}");
    assert_eq!(
        f[4],
        "upstream_reset_before_response_started{connection_failure,TLS_error:_Secret_is_not_supplied_by_SDS}",
        "{line}"
    );
    assert_eq!(
        f[6], "\"TLS_error:_Secret_is_not_supplied_by_SDS\"",
        "{line}"
    );
    let st = p.proxy.stats();
    assert_eq!(
        st.get("cluster.outbound|443||partner.example.client_ssl_socket_factory.upstream_context_secrets_not_ready"),
        1
    );
    assert!(st.get("cluster.outbound|443||partner.example.upstream_cx_connect_fail") >= 1);

    // L4 users of the cluster fail the same way (TCP closed, UF with the reason).
    let mut c = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut c, &mut buf)
        .await
        .ok();
    let lines = p.wait_lines(3).await;
    let tcp = fields(&lines[2]);
    assert_eq!(tcp[3], "UF", "{:?}", lines[2]);
    assert_eq!(tcp[6], "\"TLS_error:_Secret_is_not_supplied_by_SDS\"");

    // The secret arrives (an SDS push: same clusters, one more secret): the very same
    // cluster runtime starts working, no rebuild.
    let before = cluster_ptr(&p, "outbound|443||partner.example");
    let mut secrets = only_ca.as_array().unwrap().clone();
    secrets.push(cert_secret("kubernetes://partner-client", &pt.client_cert));
    let cfg: ProxyConfig = serde_json::from_value(gw_cfg(pt.addr, plain, json!(secrets))).unwrap();
    p.proxy.update(cfg).await.expect("ACK");
    assert_eq!(
        cluster_ptr(&p, "outbound|443||partner.example"),
        before,
        "cluster not rebuilt"
    );
    let (code, body) = get(port, "partner").await;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("backend=partner"), "{body}");
    assert!(body.contains("sni=partner.example"), "{body}");

    // And it goes away again when the Secret is deleted: new upstream connections fail
    // (the L4 path opens one per downstream connection; pooled HTTP ones keep their cert).
    let cfg: ProxyConfig = serde_json::from_value(gw_cfg(pt.addr, plain, only_ca)).unwrap();
    p.proxy.update(cfg).await.expect("ACK");
    let mut c = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut c, &mut buf)
        .await
        .ok();
    let lines = p.wait_lines(5).await;
    let tcp = fields(&lines[4]);
    assert_eq!(tcp[3], "UF", "{:?}", lines[4]);
    assert_eq!(tcp[6], "\"TLS_error:_Secret_is_not_supplied_by_SDS\"");
}

#[tokio::test]
async fn missing_trust_bundle_is_acked_fails_uf_then_works_when_supplied() {
    let pt = partner().await;
    let (plain, _) = http_backend("plain").await;
    let only_cert = json!([cert_secret("kubernetes://partner-client", &pt.client_cert)]);
    let p = start(gw_cfg(pt.addr, plain, only_cert.clone())).await;
    let port = p.addr("http").port();
    let (code, body) = get(port, "partner").await;
    assert_eq!(code, "503", "{body}");
    assert_eq!(body, BODY_503);
    let line = p.wait_lines(1).await.remove(0);
    assert_eq!(fields(&line)[3], "UF", "{line}");

    let mut secrets = only_cert.as_array().unwrap().clone();
    secrets.push(ca_secret(
        "kubernetes://partner-client-cacert",
        &pt.server_ca,
    ));
    let cfg: ProxyConfig = serde_json::from_value(gw_cfg(pt.addr, plain, json!(secrets))).unwrap();
    p.proxy.update(cfg).await.expect("ACK");
    let (code, body) = get(port, "partner").await;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("backend=partner"), "{body}");
}

/// Two HTTPS servers on one gateway port: the one whose certificate Secret is missing fails
/// its handshakes; the other keeps serving.
#[tokio::test]
async fn missing_server_certificate_fails_only_its_filter_chain() {
    let ca = Ca::new("gw-root");
    let (backend, _) = http_backend("app").await;
    let chain = |name: &str, sni: &str| {
        json!({"name": name, "filterChainMatch": {"serverNames": [sni]},
               "tls": {"mode": "SIMPLE", "certificates": [format!("kubernetes://{name}")]},
               "action": {"http": {"routeConfig": {"name": name, "virtualHosts": [
                   {"name": name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}}}})
    };
    let cfg = |secrets: serde_json::Value| {
        json!({
            "listeners": [{"name": "gw", "address": "127.0.0.1:0", "filterChains": [
                chain("good", "good.example"), chain("bad", "bad.example")]}],
            "clusters": [{"name": "app", "endpoints": [ep(backend)]}],
            "secrets": secrets
        })
    };
    let good = cert_secret("kubernetes://good", &ca.leaf(&["good.example"], &[]));
    let p = start(cfg(json!([good.clone()]))).await;
    let port = p.addr("gw").port();
    let ca_file = temp_file(&ca.pem);
    let https = |host: &str| {
        s(&[
            "--cacert",
            ca_file.path().to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{host}:{port}/get"),
        ])
    };
    let o = curl(&https("good.example")).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "200"), "{}", o.stderr);
    let o = curl(&https("bad.example")).await;
    assert_eq!(o.code, 35, "handshake must fail: {} {}", o.stdout, o.stderr);

    // The Secret appears: the chain serves without any listener change.
    let bad = cert_secret("kubernetes://bad", &ca.leaf(&["bad.example"], &[]));
    let c: ProxyConfig = serde_json::from_value(cfg(json!([good, bad]))).unwrap();
    p.proxy.update(c).await.expect("ACK");
    let o = curl(&https("bad.example")).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "200"), "{}", o.stderr);
    let o = curl(&https("good.example")).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "200"), "{}", o.stderr);
}
