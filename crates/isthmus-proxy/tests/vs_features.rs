//! VirtualService `fault` and `corsPolicy` end to end in the proxy: the compiler's golden
//! bundle for `vs-fault-cors-mirror` (the ingress gateway, compiled from YAML with istiod's
//! typedPerFilterConfig) goes through `from_xds`, the proxy runs it on loopback with a real
//! origin, and real curl checks what a client sees plus the access-log flags.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use isthmus_proxy::config::Endpoint;
use isthmus_proxy::xds::from_xds;
use isthmus_proxy::{AccessLogSink, Proxy, ProxyConfig, ProxyOptions};

const HOST: &str = "web.example.com";

fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../isthmus-compile/tests/golden/vs-fault-cors-mirror/gateway.json")
}

/// The compiled gateway bundle as the compiler wrote it.
fn bundle_xds() -> isthmus_xds::ProxyConfig {
    let path = bundle();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("compiled bundle {}: {e}", path.display()));
    serde_json::from_str(&text).expect("bundle JSON")
}

/// The compiled gateway with its listeners on loopback and every `web`/`shadow` cluster
/// pointed at `origin`.
fn gateway_config(origin: SocketAddr) -> ProxyConfig {
    runtime_on_loopback(&bundle_xds(), origin)
}

/// `x` converted by `from_xds`, listeners moved to loopback, `web`/`shadow` clusters sent to `origin`.
fn runtime_on_loopback(x: &isthmus_xds::ProxyConfig, origin: SocketAddr) -> ProxyConfig {
    let mut cfg = from_xds(x).unwrap_or_else(|e| panic!("from_xds: {e}"));
    for l in &mut cfg.listeners {
        if l.bind_to_port {
            l.address = "127.0.0.1:0".parse().unwrap();
        }
    }
    for c in &mut cfg.clusters {
        if c.name.contains("web.default") || c.name.contains("shadow.default") {
            c.endpoints = vec![Endpoint {
                address: origin.ip().to_string(),
                port: origin.port(),
                weight: 1,
            }];
            c.tls = None;
        }
    }
    cfg
}

async fn start_proxy(cfg: ProxyConfig) -> TestProxy {
    let (sink, log) = AccessLogSink::memory(isthmus_proxy::config::LogEncoding::Text);
    let mut o = ProxyOptions::new(cfg);
    o.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    o.access_log = Some(sink);
    TestProxy {
        proxy: Proxy::start(o).await.expect("proxy starts"),
        log,
    }
}

async fn start_gateway(origin: SocketAddr) -> TestProxy {
    start_proxy(gateway_config(origin)).await
}

fn url(p: &TestProxy, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", p.addr("0.0.0.0_8080").port())
}

fn host() -> String {
    format!("Host: {HOST}")
}

/// The header block of `curl -i` output, lowercased names, for lookups.
fn header(out: &str, name: &str) -> Option<String> {
    out.lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
}

/// `"<response code> <response code details>"` of the n-th access-log line (1-based).
async fn details(p: &TestProxy, n: usize) -> String {
    let line = p.wait_lines(n).await.remove(n - 1);
    let f = fields(&line);
    format!("{} {}", f[2], f[4])
}

#[test]
fn compiled_bundle_carries_fault_and_cors_into_the_runtime_routes() {
    let cfg = gateway_config("127.0.0.1:9".parse().unwrap());
    let routes: Vec<_> = cfg
        .listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter())
        .filter_map(|c| match &c.action {
            isthmus_proxy::config::ChainAction::Http(h) => Some(h),
            _ => None,
        })
        .flat_map(|h| h.route_config.virtual_hosts.iter())
        .filter(|v| v.domains.iter().any(|d| d == HOST))
        .flat_map(|v| v.routes.iter())
        .collect();
    let by_name = |n: &str| {
        routes.iter().find(|r| r.name == n).unwrap_or_else(|| {
            panic!(
                "route {n} in {:?}",
                routes.iter().map(|r| &r.name).collect::<Vec<_>>()
            )
        })
    };
    let f = by_name("faulty").fault.clone().expect("fault");
    assert_eq!(
        f.abort.as_ref().map(|a| (a.http_status, a.percentage)),
        Some((503, 100.0))
    );
    assert_eq!(
        f.delay.as_ref().map(|d| (d.fixed_delay.0, d.percentage)),
        Some((Duration::from_secs(1), 100.0))
    );
    // `percent: 10` (deprecated integer) is 10 per HUNDRED; an abort without percentage is 0%.
    let np = by_name("no-percentage").fault.clone().expect("fault");
    assert_eq!(np.delay.map(|d| d.percentage), Some(10.0));
    assert_eq!(np.abort.map(|a| a.percentage), Some(0.0));
    let c = by_name("cors").cors.clone().expect("cors");
    assert!(c.allow_credentials && c.forward_not_matching_preflights);
    assert_eq!(c.max_age, "86400");
    let legacy = by_name("legacy-cors").cors.clone().expect("cors");
    assert!(!legacy.forward_not_matching_preflights);
    assert!(by_name("default").fault.is_none() && by_name("default").cors.is_none());
}

#[tokio::test]
async fn fault_abort_and_delay_from_a_compiled_virtual_service() {
    let (origin, hits) = http_backend("web").await;
    let p = start_gateway(origin).await;

    // /fault: delay 1s at 100%, then abort 503 at 100%: the origin is never reached.
    let t0 = Instant::now();
    let o = curl(&s(&["-i", "-H", &host(), &url(&p, "/fault/x")])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 503"), "{}", o.stdout);
    assert!(o.stdout.ends_with("fault filter abort"), "{}", o.stdout);
    // A lower bound only (the sleep guarantees it); no upper bound under load.
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(hits.get(), 0, "aborted before the router");
    let line = p.wait_lines(1).await.remove(0);
    let f = fields(&line);
    assert_eq!(f[2], "503", "{line}");
    let flags: Vec<&str> = f[3].split(',').collect();
    assert!(flags.contains(&"DI") && flags.contains(&"FI"), "{line}");
    assert_eq!(f[4], "fault_filter_abort", "{line}");
    assert!(
        line.contains("outbound|8080|v1|web.default.svc.cluster.local"),
        "{line}"
    );

    // /delay: delayed (DI) and then routed to the origin.
    let o = curl(&s(&[
        "-H",
        &host(),
        "-w",
        "\n%{http_code}",
        &url(&p, "/delay"),
    ]))
    .await;
    assert!(o.stdout.ends_with("\n200"), "{}", o.stdout);
    assert!(o.stdout.contains("backend=web"), "{}", o.stdout);
    assert!(hits.get() >= 1);
    let line = p.wait_lines(2).await.remove(1);
    let f = fields(&line);
    assert_eq!(
        (f[2].as_str(), f[3].as_str(), f[4].as_str()),
        ("200", "DI", "via_upstream"),
        "{line}"
    );

    // A route without fault: untouched.
    let o = curl(&s(&[
        "-H",
        &host(),
        "-w",
        "\n%{http_code}",
        &url(&p, "/plain"),
    ]))
    .await;
    assert!(o.stdout.ends_with("\n200"), "{}", o.stdout);
    let line = p.wait_lines(3).await.remove(2);
    assert_eq!(fields(&line)[3], "-", "{line}");

    // The abort without percentage (0%) never fires.
    let o = curl(&s(&[
        "-H",
        &host(),
        "-w",
        "\n%{http_code}",
        &url(&p, "/legacy-percent"),
    ]))
    .await;
    assert!(o.stdout.ends_with("\n200"), "{}", o.stdout);
    let line = p.wait_lines(4).await.remove(3);
    assert!(!fields(&line)[3].contains("FI"), "{line}");

    let stats = p.proxy.stats();
    assert_eq!(
        stats.get("http.outbound_0.0.0.0_8080.fault.aborts_injected"),
        1
    );
    assert!(stats.get("http.outbound_0.0.0.0_8080.fault.delays_injected") >= 2);
}

#[tokio::test]
async fn cors_preflight_and_actual_requests_through_the_proxy() {
    let (origin, hits) = http_backend("web").await;
    let p = start_gateway(origin).await;
    let api = url(&p, "/api/items");

    // Allowed preflight: answered by the proxy, never forwarded.
    let o = curl(&s(&[
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        &host(),
        "-H",
        "Origin: https://a.example.com",
        "-H",
        "Access-Control-Request-Method: POST",
        &api,
    ]))
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    let h = |n: &str| header(&o.stdout, n);
    assert_eq!(
        h("access-control-allow-origin").as_deref(),
        Some("https://a.example.com")
    );
    assert_eq!(
        h("access-control-allow-methods").as_deref(),
        Some("GET,POST")
    );
    assert_eq!(
        h("access-control-allow-headers").as_deref(),
        Some("x-custom,content-type")
    );
    assert_eq!(h("access-control-max-age").as_deref(), Some("86400"));
    assert_eq!(
        h("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(hits.get(), 0, "preflight answered by the proxy");
    assert_eq!(details(&p, 1).await, "200 cors_response");

    // Actual request from an allowed origin (regex match): upstream answers, CORS headers added.
    let o = curl(&s(&[
        "-i",
        "-H",
        &host(),
        "-H",
        "Origin: https://shop.c.example.com",
        &api,
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert!(o.stdout.contains("backend=web"), "{}", o.stdout);
    assert_eq!(
        header(&o.stdout, "access-control-allow-origin").as_deref(),
        Some("https://shop.c.example.com")
    );
    assert_eq!(
        header(&o.stdout, "access-control-expose-headers").as_deref(),
        Some("x-exposed")
    );
    assert_eq!(header(&o.stdout, "access-control-allow-methods"), None);
    assert_eq!(details(&p, 2).await, "200 via_upstream");

    // Origin not allowed: the request goes through, without CORS headers.
    let o = curl(&s(&[
        "-i",
        "-H",
        &host(),
        "-H",
        "Origin: https://evil.example",
        &api,
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert_eq!(
        header(&o.stdout, "access-control-allow-origin"),
        None,
        "{}",
        o.stdout
    );
    assert_eq!(details(&p, 3).await, "200 via_upstream");

    // Preflight from an origin that is not allowed: forwarded (Istio's default FORWARD).
    let o = curl(&s(&[
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        &host(),
        "-H",
        "Origin: https://evil.example",
        "-H",
        "Access-Control-Request-Method: POST",
        &api,
    ]))
    .await;
    assert!(o.stdout.contains("backend=web"), "{}", o.stdout);
    assert_eq!(
        header(&o.stdout, "access-control-allow-origin"),
        None,
        "{}",
        o.stdout
    );
    assert_eq!(details(&p, 4).await, "200 via_upstream");

    // unmatchedPreflights: IGNORE → answered 200 by the proxy, no CORS headers, not forwarded.
    let o = curl(&s(&[
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        &host(),
        "-H",
        "Origin: https://evil.example",
        "-H",
        "Access-Control-Request-Method: POST",
        &url(&p, "/legacy"),
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert_eq!(
        header(&o.stdout, "access-control-allow-origin"),
        None,
        "{}",
        o.stdout
    );
    assert_eq!(details(&p, 5).await, "200 cors_response");

    // A route without corsPolicy never adds CORS headers.
    let o = curl(&s(&[
        "-i",
        "-H",
        &host(),
        "-H",
        "Origin: https://a.example.com",
        &url(&p, "/other"),
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert_eq!(header(&o.stdout, "access-control-allow-origin"), None);
}

/// A `fault.abort.grpcStatus` (Istio writes `grpcStatus` as the code number) is honoured as
/// Envoy's fault filter does for gRPC: a trailers-only reply, HTTP 200 with `grpc-status` and
/// `grpc-message`, flag FI, no upstream call. (Before, such a config was refused whole.)
#[tokio::test]
async fn grpc_status_fault_abort_is_a_trailers_only_grpc_reply() {
    use isthmus_xds::route::PerFilterConfig;
    let (origin, hits) = http_backend("web").await;
    let mut x = bundle_xds();
    let mut rewritten = 0;
    for rc in &mut x.routes {
        for vh in &mut rc.virtual_hosts {
            let vh = std::sync::Arc::make_mut(vh);
            for r in std::sync::Arc::make_mut(&mut vh.routes).iter_mut() {
                for pf in r.typed_per_filter_config.values_mut() {
                    if let PerFilterConfig::Fault(f) = pf {
                        if let Some(a) = f.abort.as_mut().filter(|a| a.http_status == Some(503)) {
                            a.http_status = None;
                            a.grpc_status = Some(14);
                            f.delay = None;
                            rewritten += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        rewritten > 0,
        "the golden has a 503 abort to turn into a gRPC one"
    );
    let p = start_proxy(runtime_on_loopback(&x, origin)).await;
    let o = curl(&s(&["-i", "-H", &host(), &url(&p, "/fault/x")])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
    assert_eq!(
        header(&o.stdout, "grpc-status").as_deref(),
        Some("14"),
        "{}",
        o.stdout
    );
    assert_eq!(
        header(&o.stdout, "grpc-message").as_deref(),
        Some("fault filter abort"),
        "{}",
        o.stdout
    );
    assert_eq!(
        header(&o.stdout, "content-type").as_deref(),
        Some("application/grpc"),
        "{}",
        o.stdout
    );
    assert_eq!(hits.get(), 0, "aborted before the router");
    let line = p.wait_lines(1).await.remove(0);
    let f = fields(&line);
    assert_eq!(
        (f[2].as_str(), f[4].as_str()),
        ("200", "fault_filter_abort"),
        "{line}"
    );
    assert!(f[3].split(',').any(|x| x == "FI"), "{line}");
}
