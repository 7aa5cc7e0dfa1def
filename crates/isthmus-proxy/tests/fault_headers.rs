//! VirtualService `fault` (Envoy fault filter per route: delay `DI`, abort `FI`) and
//! `headers` (request/response set, add, remove) applied by the proxy.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_proxy::config::{ChainAction, RouteAction};
use serde_json::{json, Value};
use tokio::net::TcpListener;

fn cfg(route: Value, backend: SocketAddr) -> Value {
    let mut r = json!({"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "outbound|80||app", "timeout": "0s"}});
    for (k, v) in route.as_object().unwrap() {
        r[k] = v.clone();
    }
    json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"statPrefix": "outbound_0.0.0.0_80", "routeConfig": {"name": "80", "virtualHosts": [
                {"name": "app", "domains": ["*"], "routes": [r]}]}}}}]}],
        "clusters": [{"name": "outbound|80||app", "endpoints": [{"address": backend.ip().to_string(), "port": backend.port()}]}]
    })
}

fn code_of(url: &str) -> Vec<String> {
    s(&["-w", "\n%{http_code}", url])
}

#[tokio::test]
async fn abort_answers_locally_with_fi_and_never_reaches_the_upstream() {
    let (backend, hits) = http_backend("app").await;
    let p = start(cfg(
        json!({"fault": {"abort": {"httpStatus": 418, "percentage": 100.0}},
               "responseHeaders": {"set": [["x-route", "r", false]]}}),
        backend,
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/get", p.addr("http").port());
    let o = curl(&s(&["-i", &url])).await;
    assert!(o.stdout.starts_with("HTTP/1.1 418"), "{}", o.stdout);
    assert!(o.stdout.ends_with("fault filter abort"), "{}", o.stdout);
    assert!(o.stdout.contains("x-route: r"), "{}", o.stdout);
    assert_eq!(hits.get(), 0, "aborted before the router");
    let line = p.wait_lines(1).await.remove(0);
    let f = fields(&line);
    assert_eq!(
        (f[2].as_str(), f[3].as_str(), f[4].as_str()),
        ("418", "FI", "fault_filter_abort"),
        "{line}"
    );
    assert!(line.contains(" outbound|80||app "), "{line}");
    assert_eq!(
        p.proxy
            .stats()
            .get("http.outbound_0.0.0.0_80.fault.aborts_injected"),
        1
    );
}

#[tokio::test]
async fn zero_percent_abort_and_delay_do_nothing() {
    let (backend, hits) = http_backend("app").await;
    let p = start(cfg(
        json!({"fault": {"abort": {"httpStatus": 503, "percentage": 0.0},
                         "delay": {"fixedDelay": "30s", "percentage": 0.0}}}),
        backend,
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/get", p.addr("http").port());
    for _ in 0..5 {
        let o = curl(&code_of(&url)).await;
        assert!(o.stdout.ends_with("\n200"), "{}", o.stdout);
    }
    assert!(
        hits.0.load(Ordering::SeqCst) >= 1,
        "requests reached the upstream"
    );
    let lines = p.wait_lines(5).await;
    assert!(lines.iter().all(|l| fields(l)[3] == "-"), "{lines:?}");
}

#[tokio::test]
async fn delay_holds_the_request_then_routes_it_with_di() {
    let (backend, _) = http_backend("app").await;
    let p = start(cfg(
        json!({"fault": {"delay": {"fixedDelay": "1s"}}}),
        backend,
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/get", p.addr("http").port());
    let t0 = Instant::now();
    let o = curl(&code_of(&url)).await;
    assert!(o.stdout.ends_with("\n200"), "{}", o.stdout);
    assert!(o.stdout.contains("backend=app"), "{}", o.stdout);
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    let line = p.wait_lines(1).await.remove(0);
    assert_eq!(fields(&line)[3], "DI", "{line}");
    assert_eq!(
        p.proxy
            .stats()
            .get("http.outbound_0.0.0.0_80.fault.delays_injected"),
        1
    );
}

/// A backend that answers with the request headers it saw, one `name: value` per line, and
/// a `x-upstream: 1` / `x-drop: 1` response header pair.
async fn header_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|r: Request<Incoming>| async move {
                    let mut out = String::new();
                    for (k, v) in r.headers() {
                        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    let _ = r.into_body().collect().await;
                    let mut resp = Response::new(Full::new(Bytes::from(out)));
                    resp.headers_mut()
                        .insert("x-upstream", "1".parse().unwrap());
                    resp.headers_mut().insert("x-drop", "1".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn request_and_response_headers_set_add_remove() {
    let backend = header_echo().await;
    let p = start(cfg(
        json!({
            "requestHeaders": {"set": [["x-set", "new", false], ["x-add", "two", true]], "remove": ["x-secret"]},
            "responseHeaders": {"set": [["x-upstream", "overwritten", false], ["x-extra", "e", true]], "remove": ["x-drop"]}
        }),
        backend,
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/get", p.addr("http").port());
    let o = curl(&s(&[
        "-i",
        "-H",
        "x-set: old",
        "-H",
        "x-add: one",
        "-H",
        "x-secret: s",
        &url,
    ]))
    .await;
    let out = o.stdout.to_ascii_lowercase();
    assert!(out.contains("\nx-set: new\n"), "{out}");
    assert!(!out.contains("x-set: old"), "{out}");
    assert!(
        out.contains("\nx-add: one\n") && out.contains("\nx-add: two\n"),
        "{out}"
    );
    assert!(!out.contains("x-secret"), "{out}");
    assert!(out.contains("\r\nx-upstream: overwritten\r\n"), "{out}");
    assert!(out.contains("\r\nx-extra: e\r\n"), "{out}");
    assert!(!out.contains("x-drop"), "{out}");
}

/// In the compiled bundle, VirtualService `headers.*.add` (no appendAction, Envoy's default
/// APPEND_IF_EXISTS_OR_ADD) appends and `set` (OVERWRITE_IF_EXISTS_OR_ADD) overwrites.
#[test]
fn xds_header_append_action_default_is_append() {
    let x: isthmus_xds::ProxyConfig = serde_json::from_value(json!({
        "listeners": [{"name": "l", "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}},
            "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "statPrefix": "s", "routeConfig": {"name": "r", "virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "c"},
                         "requestHeadersToAdd": [
                            {"header": {"key": "x-add", "value": "a"}},
                            {"header": {"key": "x-set", "value": "s"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}]}}}]}]}],
        "clusters": [{"name": "c", "type": "STATIC"}]
    }))
    .expect("IR JSON");
    let cfg = isthmus_proxy::xds::from_xds(&x).unwrap();
    let ChainAction::Http(h) = &cfg.listeners[0].filter_chains[0].action else {
        panic!("http chain")
    };
    let r = &h.route_config.virtual_hosts[0].routes[0];
    assert!(matches!(r.action, RouteAction::Route(_)));
    assert_eq!(
        r.request_headers.set,
        vec![
            ("x-add".to_string(), "a".to_string(), true),
            ("x-set".to_string(), "s".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn direct_response_gets_the_route_response_headers() {
    let p = start(json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": "app", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "directResponse": {"status": 418, "body": "teapot"},
                     "responseHeaders": {"set": [["x-direct", "yes", false]]}}]}]}}}}]}],
        "clusters": []
    }))
    .await;
    let url = format!("http://127.0.0.1:{}/", p.addr("http").port());
    let o = curl(&s(&["-i", &url])).await;
    assert!(o.stdout.starts_with("HTTP/1.1 418"), "{}", o.stdout);
    assert!(o.stdout.contains("x-direct: yes"), "{}", o.stdout);
    assert!(o.stdout.ends_with("teapot"), "{}", o.stdout);
}
