//! HTTP routing, local replies, pools and limits, access log and metrics, through real curl.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_proxy::config::LogEncoding;
use isthmus_proxy::OrigDst;
use serde_json::{json, Value};

fn ep(a: SocketAddr) -> Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

fn http_cfg(vhosts: Value, clusters: Value) -> Value {
    json!({
        "node": {"workloadName": "istio-ingressgateway", "namespace": "istio-system", "app": "istio-ingressgateway",
                 "canonicalService": "istio-ingressgateway", "clusterId": "Kubernetes"},
        "listeners": [{"name": "0.0.0.0_8080", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"useRemoteAddress": true, "routeConfig": {"name": "http.8080", "virtualHosts": vhosts}}}}]}],
        "clusters": clusters
    })
}

fn httpbin_cluster(a: SocketAddr) -> Value {
    json!({"name": "outbound|8000||httpbin.default.svc.cluster.local", "endpoints": [ep(a)],
           "service": {"host": "httpbin.default.svc.cluster.local", "name": "httpbin", "namespace": "default"}})
}

const HB: &str = "outbound|8000||httpbin.default.svc.cluster.local";

fn code_of(o: &CurlOut) -> u16 {
    o.stdout.trim().parse().unwrap_or(0)
}

async fn get_code(port: u16, host: &str, path: &str, extra: &[&str]) -> u16 {
    let mut a = s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Host: {host}"),
    ]);
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(format!("http://127.0.0.1:{port}{path}"));
    code_of(&curl(&a).await)
}

#[tokio::test]
async fn first_match_ordering_then_swapped_by_live_update() {
    let (hb, _) = http_backend("httpbin").await;
    let r418 =
        json!({"name": "teapot", "match": {"prefix": "/status/418"}, "route": {"cluster": HB}});
    let rall = json!({"name": "ok", "match": {"prefix": "/"}, "directResponse": {"status": 200, "body": "fine"}});
    let cfg = |routes: Value| {
        http_cfg(
            json!([{"name": "httpbin:80", "domains": ["httpbin.example"], "routes": routes}]),
            json!([httpbin_cluster(hb)]),
        )
    };
    let p = start(cfg(json!([r418.clone(), rall.clone()]))).await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(
        get_code(port, "httpbin.example", "/status/418", &[]).await,
        418
    );
    p.proxy
        .update(serde_json::from_value(cfg(json!([rall, r418]))).unwrap())
        .await
        .unwrap();
    assert_eq!(
        get_code(port, "httpbin.example", "/status/418", &[]).await,
        200
    );
    let lines = p.wait_lines(2).await;
    assert_eq!(fields(&lines[0])[21], "teapot");
    assert_eq!(fields(&lines[1])[21], "ok");
    assert_eq!(fields(&lines[1])[4], "direct_response");
}

#[tokio::test]
async fn unknown_host_is_404_nr_and_block_all_is_502() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([
            {"name": "httpbin:80", "domains": ["httpbin.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]},
            {"name": "blocked", "domains": ["blocked.example"], "routes": [{"name": "block_all", "match": {"prefix": "/"}, "directResponse": {"status": 502}}]}
        ]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "nobody.example", "/", &[]).await, 404);
    assert_eq!(get_code(port, "blocked.example:80", "/", &[]).await, 502);
    let lines = p.wait_lines(2).await;
    let f = fields(&lines[0]);
    assert_eq!(f[2], "404");
    assert_eq!(f[3], "NR");
    assert_eq!(f[4], "route_not_found");
    assert_eq!(f[16], "-");
    let f = fields(&lines[1]);
    assert_eq!(
        (f[2].as_str(), f[3].as_str(), f[4].as_str(), f[21].as_str()),
        ("502", "-", "direct_response", "block_all")
    );
    let prom = admin_get(&p, "/stats/prometheus").await;
    let blk = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"502\""))
        .unwrap();
    assert!(
        blk.contains("destination_service_name=\"BlackHoleCluster\""),
        "{blk}"
    );
}

#[tokio::test]
async fn access_log_line_equals_expected_field_by_field() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "httpbin:80", "domains": ["httpbin.example"], "routes": [
            {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": HB, "timeout": "0s"}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    let o = curl(&s(&[
        "-H",
        "Host: httpbin.example",
        "-H",
        "x-request-id: 11111111-2222-3333-4444-555555555555",
        "-A",
        "curl/test",
        &format!("http://127.0.0.1:{port}/get?x=1"),
    ]))
    .await;
    assert!(
        o.stdout.contains("xff=127.0.0.1"),
        "x-forwarded-for appended: {}",
        o.stdout
    );
    assert!(o
        .stdout
        .contains("rid=11111111-2222-3333-4444-555555555555"));
    let body_len = o.stdout.len();
    let line = p.wait_lines(1).await.remove(0);
    let f = fields(&line);
    let dur: u64 = f[9].parse().unwrap();
    let ust: u64 = f[10].parse().unwrap();
    let expected = format!(
        "{} \"GET /get?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 {body_len} {dur} {ust} \"127.0.0.1\" \"curl/test\" \"11111111-2222-3333-4444-555555555555\" \"httpbin.example\" \"{hb}\" {HB} {} 127.0.0.1:{port} {} - default\n",
        f[0], f[17], f[19]
    );
    assert_eq!(line, expected);
    assert!(
        f[0].starts_with("[20") && f[0].ends_with("Z]") && f[0].len() == 26,
        "{}",
        f[0]
    );
    assert!(f[17].starts_with("127.0.0.1:") && f[19].starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn json_access_log_encoding() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start_with(
        http_cfg(json!([{"name": "v", "domains": ["*"], "routes": [{"name": "r", "match": {"prefix": "/"}, "route": {"cluster": HB}}]}]), json!([httpbin_cluster(hb)])),
        OrigDst::Socket,
        LogEncoding::Json,
    )
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(
        get_code(port, "anything.example", "/status/201", &[]).await,
        201
    );
    let line = p.wait_lines(1).await.remove(0);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["response_code"], 201);
    assert_eq!(v["response_flags"], "-");
    assert_eq!(v["upstream_cluster"], HB);
    assert_eq!(v["authority"], "anything.example");
    assert_eq!(v["route_name"], "r");
    assert!(v["requested_server_name"].is_null());
    assert_eq!(v["method"], "GET");
}

#[tokio::test]
async fn metrics_carry_istio_labels() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["httpbin.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(
        get_code(port, "httpbin.example", "/status/200", &[]).await,
        200
    );
    assert_eq!(
        get_code(port, "httpbin.example", "/status/503", &[]).await,
        503
    );
    p.wait_lines(2).await;
    let prom = admin_get(&p, "/stats/prometheus").await;
    let ok = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap();
    let expected_labels = [
        "reporter=\"source\"",
        "source_workload=\"istio-ingressgateway\"",
        "source_canonical_service=\"istio-ingressgateway\"",
        "source_canonical_revision=\"latest\"",
        "source_workload_namespace=\"istio-system\"",
        "source_principal=\"unknown\"",
        "source_app=\"istio-ingressgateway\"",
        "source_version=\"unknown\"",
        "source_cluster=\"Kubernetes\"",
        "destination_workload=\"unknown\"",
        "destination_workload_namespace=\"default\"",
        "destination_principal=\"unknown\"",
        "destination_app=\"unknown\"",
        "destination_version=\"unknown\"",
        "destination_service=\"httpbin.default.svc.cluster.local\"",
        "destination_canonical_service=\"httpbin\"",
        "destination_canonical_revision=\"latest\"",
        "destination_service_name=\"httpbin\"",
        "destination_service_namespace=\"default\"",
        "destination_cluster=\"unknown\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "grpc_response_status=\"\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"unknown\"",
    ];
    assert_eq!(
        ok,
        format!("istio_requests_total{{{}}} 1", expected_labels.join(","))
    );
    assert!(prom.contains("response_code=\"503\""));
    assert!(prom.lines().any(
        |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
            && l.contains("le=\"+Inf\"")
    ));
    assert!(prom
        .lines()
        .any(|l| l.starts_with("istio_response_bytes_count{")
            && l.contains("response_code=\"200\"")
            && l.ends_with(" 1")));
    assert!(prom.contains("# TYPE istio_request_bytes histogram"));
    assert!(
        prom.contains(&format!(
            "envoy_cluster_upstream_rq_total{{cluster_name=\"{HB}\"}} 2"
        )),
        "{prom}"
    );
    let st = admin_get(&p, "/stats?filter=upstream_rq_5").await;
    assert!(
        st.contains(&format!("cluster.{HB}.upstream_rq_503: 1")),
        "{st}"
    );
    assert!(
        st.contains(&format!("cluster.{HB}.upstream_rq_5xx: 1")),
        "{st}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_and_upstream_reuse() {
    let (hb, conns) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    for _ in 0..3 {
        assert_eq!(
            get_code(
                port,
                "a.example",
                "/status/200",
                &["--http2-prior-knowledge"]
            )
            .await,
            200
        );
    }
    let lines = p.wait_lines(3).await;
    assert!(fields(&lines[0])[1].ends_with("HTTP/2\""), "{}", lines[0]);
    assert_eq!(
        conns.get(),
        1,
        "upstream connection reused across downstream connections"
    );
}

#[tokio::test]
async fn max_requests_per_connection_one_means_no_reuse() {
    let (hb, conns) = http_backend("httpbin").await;
    let mut c = httpbin_cluster(hb);
    c["maxRequestsPerConnection"] = json!(1);
    let p = start(http_cfg(json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]), json!([c]))).await;
    let port = p.addr("0.0.0.0_8080").port();
    for _ in 0..3 {
        assert_eq!(get_code(port, "a.example", "/status/200", &[]).await, 200);
    }
    assert_eq!(conns.get(), 3);
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_cx_max_requests")),
        3
    );
}

#[tokio::test]
async fn route_timeout_is_504_ut() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB, "timeout": "200ms"}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "a.example", "/delay/2000", &[]).await, 504);
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(
        (f[2].as_str(), f[3].as_str(), f[4].as_str()),
        ("504", "UT", "upstream_response_timeout")
    );
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_timeout")),
        1
    );
}

#[tokio::test]
async fn retries_exhausted_is_urx() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB,
            "retryPolicy": {"numRetries": 2, "retryOn": "5xx,connect-failure", "perTryTimeout": "1s"}}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "a.example", "/status/503", &[]).await, 503);
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!((f[2].as_str(), f[3].as_str()), ("503", "URX"));
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_retry")),
        2
    );
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_503")),
        3
    );
}

#[tokio::test]
async fn an_overloaded_upstream_envoy_503_is_not_retried() {
    // Envoy's retry state never retries a response carrying x-envoy-overloaded: a gateway's
    // circuit-breaker 503 must not be multiplied by every calling sidecar's retries.
    let (hb, count) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB,
            "retryPolicy": {"numRetries": 2, "retryOn": "5xx,gateway-error", "perTryTimeout": "5s"}}}]}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    let o = curl(&s(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: a.example",
        &format!("http://127.0.0.1:{port}/overloaded"),
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 503"), "{}", o.stdout);
    assert!(
        o.stdout
            .to_ascii_lowercase()
            .contains("x-envoy-overloaded: true"),
        "the marker reaches the caller: {}",
        o.stdout
    );
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(
        (f[2].as_str(), f[3].as_str()),
        ("503", "-"),
        "no URX: not retried"
    );
    let st = p.proxy.stats();
    assert_eq!(st.get(&format!("cluster.{HB}.upstream_rq_retry")), 0);
    assert_eq!(st.get(&format!("cluster.{HB}.upstream_rq_503")), 1);
    assert_eq!(count.get(), 1, "one upstream connection, one attempt");
    // A plain 503 on the same route is still retried (the policy itself works).
    assert_eq!(get_code(port, "a.example", "/status/503", &[]).await, 503);
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_retry")),
        2
    );
}

#[tokio::test]
async fn connect_failure_is_503_uf_and_unknown_cluster_nc() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/nc"}, "route": {"cluster": "outbound|1||missing"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "dead"}}]}]),
        json!([{"name": "dead", "endpoints": [ep(dead)]}]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "a.example", "/", &[]).await, 503);
    assert_eq!(get_code(port, "a.example", "/nc", &[]).await, 503);
    let l = p.wait_lines(2).await;
    assert_eq!(fields(&l[0])[3], "UF");
    assert_eq!(fields(&l[0])[15], format!("\"{dead}\""));
    assert_eq!(fields(&l[1])[3], "NC");
    assert_eq!(
        p.proxy.stats().get("cluster.dead.upstream_cx_connect_fail"),
        1
    );
}

#[tokio::test]
async fn max_connections_and_pending_overflow_is_503_uo() {
    let (hb, _) = http_backend("httpbin").await;
    let mut c = httpbin_cluster(hb);
    c["circuitBreakers"] = json!({"maxConnections": 1, "maxPendingRequests": 1});
    let p = start(http_cfg(json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]), json!([c]))).await;
    let port = p.addr("0.0.0.0_8080").port();
    // Three concurrent slow requests: one on the connection, one pending, one overflows.
    // Each step waits for the proxy's own counters (not for wall-clock time), so the order
    // holds on a loaded machine.
    let counter = |name: &'static str| {
        let stats = p.proxy.stats();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while stats.get(&format!("cluster.{HB}.{name}")) < 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} never reached 1"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let a = tokio::spawn(get_code(port, "a.example", "/delay/3000", &[]));
    counter("upstream_cx_total").await;
    let b = tokio::spawn(get_code(port, "a.example", "/delay/10", &[]));
    counter("upstream_rq_pending_total").await;
    let o = curl(&s(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: a.example",
        &format!("http://127.0.0.1:{port}/delay/10"),
    ]))
    .await;
    assert!(o.stdout.starts_with("HTTP/1.1 503"), "{}", o.stdout);
    assert!(
        o.stdout
            .to_ascii_lowercase()
            .contains("x-envoy-overloaded: true"),
        "Envoy marks the overflow reply: {}",
        o.stdout
    );
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(
        b.await.unwrap(),
        200,
        "the pending request is served once the connection frees up"
    );
    let lines = p.wait_lines(3).await;
    let uo = lines
        .iter()
        .find(|l| fields(l)[3] == "UO")
        .expect("a UO line");
    assert_eq!(fields(uo)[2], "503");
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_pending_overflow")),
        1
    );
    assert!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_cx_overflow"))
            >= 1
    );
}

#[tokio::test]
async fn outlier_detection_ejects_and_shows_in_clusters() {
    let (hb, _) = http_backend("httpbin").await;
    let mut c = httpbin_cluster(hb);
    c["outlierDetection"] = json!({"consecutive5xx": 2, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 10});
    let p = start(http_cfg(json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]), json!([c]))).await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "a.example", "/status/500", &[]).await, 500);
    assert_eq!(get_code(port, "a.example", "/status/500", &[]).await, 500);
    // Single endpoint ejected: no traffic at all, as the seeds warn.
    assert_eq!(get_code(port, "a.example", "/status/200", &[]).await, 503);
    let l = p.wait_lines(3).await;
    assert_eq!(fields(&l[2])[3], "UH");
    let clusters = admin_get(&p, "/clusters").await;
    assert!(
        clusters.contains(&format!("{HB}::{hb}::health_flags::/failed_outlier_check")),
        "{clusters}"
    );
    let st = admin_get(&p, "/stats?filter=outlier").await;
    assert!(
        st.contains(&format!(
            "cluster.{HB}.outlier_detection.ejections_active: 1"
        )),
        "{st}"
    );
    assert!(
        st.contains(&format!(
            "cluster.{HB}.outlier_detection.ejections_enforced_consecutive_5xx: 1"
        )),
        "{st}"
    );
}

#[tokio::test]
async fn weighted_clusters_split_and_header_match() {
    let (a, _) = http_backend("v1").await;
    let (b, _) = http_backend("v2").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["reviews"], "routes": [
            {"name": "jason", "match": {"prefix": "/", "headers": [{"name": "end-user", "exact": "jason"}]}, "route": {"cluster": "v2"}},
            {"name": "split", "match": {"prefix": "/"}, "route": {"weightedClusters": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]}}]}]),
        json!([{"name": "v1", "endpoints": [ep(a)]}, {"name": "v2", "endpoints": [ep(b)]}]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let o = curl(&s(&[
            "-H",
            "Host: reviews",
            &format!("http://127.0.0.1:{port}/"),
        ]))
        .await;
        seen.insert(o.stdout.split_whitespace().next().unwrap_or("").to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "both weighted clusters get traffic: {seen:?}"
    );
    for _ in 0..5 {
        let o = curl(&s(&[
            "-H",
            "Host: reviews",
            "-H",
            "end-user: jason",
            &format!("http://127.0.0.1:{port}/"),
        ]))
        .await;
        assert!(o.stdout.starts_with("backend=v2"), "{}", o.stdout);
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let (hb, _) = http_backend("httpbin").await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": []}]),
        json!([httpbin_cluster(hb)]),
    ))
    .await;
    assert_eq!(admin_get(&p, "/ready").await, "LIVE\n");
    let l = admin_get(&p, "/listeners").await;
    assert_eq!(l, format!("0.0.0.0_8080::{}\n", p.addr("0.0.0.0_8080")));
    let dump: Value = serde_json::from_str(&admin_get(&p, "/config_dump").await).unwrap();
    assert_eq!(dump["clusters"][0]["name"], HB);
    p.proxy
        .set_config_dump(json!({"configs": ["from-control-plane"]}));
    let dump: Value = serde_json::from_str(&admin_get(&p, "/config_dump").await).unwrap();
    assert_eq!(dump["configs"][0], "from-control-plane");
    let c = admin_get(&p, "/clusters").await;
    assert!(
        c.contains(&format!("{HB}::default_priority::max_connections::1024")),
        "{c}"
    );
    let o = curl(&s(&[
        "-X",
        "POST",
        &format!("http://{}/quitquitquit", p.admin()),
    ]))
    .await;
    assert_eq!(o.stdout, "OK\n");
    tokio::time::timeout(Duration::from_secs(2), p.proxy.wait())
        .await
        .expect("quitquitquit stops the proxy");
}

#[tokio::test]
async fn downstream_http_idle_timeout_closes_keepalive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (hb, _) = http_backend("httpbin").await;
    let p = start(json!({
        "listeners": [{"name": "l", "address": "127.0.0.1:0", "filterChains": [{"action": {"http": {"idleTimeout": "300ms",
            "routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]}}}}]}],
        "clusters": [httpbin_cluster(hb)]
    }))
    .await;
    let mut c = tokio::net::TcpStream::connect(p.addr("l")).await.unwrap();
    c.write_all(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t0 = std::time::Instant::now();
    // Read until EOF: the proxy closes the idle keep-alive connection.
    let n = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("closed by idle timeout");
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn max_retries_breaker_skips_retries() {
    let (hb, _) = http_backend("httpbin").await;
    let mut c = httpbin_cluster(hb);
    c["circuitBreakers"] = json!({"maxRetries": 0});
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB,
            "retryPolicy": {"numRetries": 3, "retryOn": "5xx"}}}]}]),
        json!([c]),
    ))
    .await;
    let port = p.addr("0.0.0.0_8080").port();
    assert_eq!(get_code(port, "a.example", "/status/500", &[]).await, 500);
    p.wait_lines(1).await;
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_retry")),
        0
    );
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_retry_overflow")),
        1
    );
    assert_eq!(
        p.proxy
            .stats()
            .get(&format!("cluster.{HB}.upstream_rq_500")),
        1
    );
}

#[tokio::test]
async fn access_log_written_to_configured_file() {
    let (hb, _) = http_backend("httpbin").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut cfg = http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]),
        json!([httpbin_cluster(hb)]),
    );
    cfg["accessLog"] = json!({"path": path.to_str().unwrap(), "encoding": "TEXT"});
    let cfg: isthmus_proxy::ProxyConfig = serde_json::from_value(cfg).unwrap();
    let mut o = isthmus_proxy::ProxyOptions::new(cfg);
    o.admin_addr = None;
    let proxy = isthmus_proxy::Proxy::start(o).await.unwrap();
    let port = proxy.listener_addr("0.0.0.0_8080").unwrap().port();
    assert_eq!(get_code(port, "a.example", "/status/200", &[]).await, 200);
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let f = fields(text.lines().next().unwrap());
    assert_eq!(f[1], "\"GET /status/200 HTTP/1.1\"");
    assert_eq!(f[2], "200");
    assert_eq!(f[16], HB);
    proxy.shutdown();
}

#[tokio::test]
async fn run_proxy_loads_json_file_and_stops_on_quitquitquit() {
    let (hb, _) = http_backend("httpbin").await;
    let free = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (lport, admin) = (free(()).port(), free(()));
    let mut cfg = http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": HB}}]}]),
        json!([httpbin_cluster(hb)]),
    );
    cfg["listeners"][0]["address"] = json!(format!("127.0.0.1:{lport}"));
    let file = temp_file(&cfg.to_string());
    let loaded = isthmus_proxy::load_config_file(file.path()).unwrap();
    let mut o = isthmus_proxy::ProxyOptions::new(loaded);
    o.admin_addr = Some(admin);
    let task = tokio::spawn(isthmus_proxy::run_proxy(o));
    let mut ready = String::new();
    for _ in 0..100 {
        ready = curl(&[format!("http://{admin}/ready")]).await.stdout;
        if ready == "LIVE\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, "LIVE\n");
    assert_eq!(get_code(lport, "a.example", "/status/200", &[]).await, 200);
    curl(&s(&["-X", "POST", &format!("http://{admin}/quitquitquit")])).await;
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("run_proxy returns")
        .unwrap()
        .unwrap();
    let bad = temp_file("{\"listeners\": 5}");
    let err = isthmus_proxy::load_config_file(bad.path()).unwrap_err();
    assert!(
        err.to_string().contains("invalid proxy config JSON"),
        "{err}"
    );
}

/// Backend answering `Upgrade: websocket` with 101 and echoing on the upgraded stream.
async fn upgrade_backend() -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut resp =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        if req.headers().get("upgrade").is_some() {
                            *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            resp.headers_mut()
                                .insert("upgrade", "websocket".parse().unwrap());
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(u) = on.await {
                                    let mut io = TokioIo::new(u);
                                    let (mut r, mut w) = tokio::io::split(&mut io);
                                    let _ = tokio::io::copy(&mut r, &mut w).await;
                                }
                            });
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = upgrade_backend().await;
    let p = start(http_cfg(
        json!([{"name": "v", "domains": ["*"], "routes": [{"name": "ws", "match": {"prefix": "/"}, "route": {"cluster": "ws"}}]}]),
        json!([{"name": "ws", "endpoints": [ep(ws)]}]),
    ))
    .await;
    let mut c = tokio::net::TcpStream::connect(p.addr("0.0.0.0_8080"))
        .await
        .unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed early: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    c.write_all(b"frames both ways").await.unwrap();
    let mut back = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"frames both ways");
    let f = fields(&p.wait_lines(1).await[0]);
    assert_eq!(
        (f[2].as_str(), f[16].as_str(), f[21].as_str()),
        ("101", "ws", "ws")
    );
}
