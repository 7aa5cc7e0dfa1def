//! `x-forwarded-for` as Istio configures Envoy: sidecars (`use_remote_address: false`) pass
//! XFF through untouched, gateways (`use_remote_address: true`) append the downstream peer.
//! A request that crosses a sidecar and then an egress gateway therefore names the client
//! once, not twice.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::PathBuf;

use isthmus_proxy::config::ChainAction;
use serde_json::{json, Value};

fn hop(name: &str, edge: bool, to: SocketAddr) -> Value {
    json!({
        "listeners": [{"name": name, "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"useRemoteAddress": edge, "routeConfig": {"name": "80", "virtualHosts": [
                {"name": "all", "domains": ["*"], "routes": [{"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "next", "timeout": "0s"}}]}
            ]}}}}]}],
        "clusters": [{"name": "next", "endpoints": [{"address": to.ip().to_string(), "port": to.port()}]}]
    })
}

/// The backend's echo of the `xff=` header value.
fn xff_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("xff="))
        .unwrap_or_else(|| panic!("no xff in {body}"))
        .to_string()
}

#[tokio::test]
async fn sidecar_passes_xff_through_and_gateway_appends_once() {
    let (backend, _) = http_backend("partner").await;
    let gw = start(hop("gw", true, backend)).await;
    let sidecar = start(hop("sidecar", false, gw.addr("gw"))).await;
    let url = format!("http://127.0.0.1:{}/get", sidecar.addr("sidecar").port());

    // App -> sidecar -> gateway -> backend: the gateway appends its peer (the sidecar's
    // address, here 127.0.0.1) once; the sidecar adds nothing.
    let o = curl(&s(&[&url])).await;
    assert_eq!(xff_of(&o.stdout), "127.0.0.1", "{}", o.stdout);
    // A client-supplied XFF is kept by the sidecar and extended by the gateway.
    let o = curl(&s(&["-H", "X-Forwarded-For: 203.0.113.7", &url])).await;
    assert!(
        o.stdout.contains("xff=203.0.113.7, 127.0.0.1 "),
        "{}",
        o.stdout
    );

    // Access logs: the sidecar logs the request's XFF as it forwarded it ("-" when none),
    // the gateway the appended value.
    let sl = sidecar.wait_lines(2).await;
    assert_eq!(fields(&sl[0])[11], "\"-\"", "{}", sl[0]);
    assert_eq!(fields(&sl[1])[11], "\"203.0.113.7\"", "{}", sl[1]);
    let gl = gw.wait_lines(2).await;
    assert_eq!(fields(&gl[0])[11], "\"127.0.0.1\"", "{}", gl[0]);
    assert_eq!(
        fields(&gl[1])[11],
        "\"203.0.113.7, 127.0.0.1\"",
        "{}",
        gl[1]
    );
}

#[tokio::test]
async fn sidecar_alone_adds_no_xff_gateway_alone_adds_the_peer() {
    let (backend, _) = http_backend("app").await;
    let sidecar = start(hop("sidecar", false, backend)).await;
    let url = format!("http://127.0.0.1:{}/get", sidecar.addr("sidecar").port());
    let o = curl(&s(&[&url])).await;
    assert!(o.stdout.contains("xff= "), "no XFF at all: {}", o.stdout);
    let gw = start(hop("gw", true, backend)).await;
    let o = curl(&s(&[&format!(
        "http://127.0.0.1:{}/get",
        gw.addr("gw").port()
    )]))
    .await;
    assert_eq!(xff_of(&o.stdout), "127.0.0.1", "{}", o.stdout);
}

/// The compiled bundles carry Istio's choice: gateways true, sidecars false.
#[test]
fn compiled_bundles_set_use_remote_address_on_gateways_only() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../isthmus-compile/tests/golden/double-mtls");
    if !dir.exists() {
        let msg = format!("SKIPPED: golden bundles not found at {}", dir.display());
        eprintln!("{msg}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        return;
    }
    for (file, want) in [("gateway.json", true), ("sleep.json", false)] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let x: isthmus_xds::ProxyConfig = serde_json::from_str(&text).unwrap();
        let cfg = isthmus_proxy::xds::from_xds(&x).unwrap();
        let hcms: Vec<bool> = cfg
            .listeners
            .iter()
            .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
            .filter_map(|c| match &c.action {
                ChainAction::Http(h) => Some(h.use_remote_address),
                _ => None,
            })
            .collect();
        assert!(!hcms.is_empty(), "{file} has HTTP chains");
        assert!(hcms.iter().all(|u| *u == want), "{file}: {hcms:?}");
    }
}
