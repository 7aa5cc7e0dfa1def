//! Outlier detection end to end over real sockets: a single-endpoint cluster whose host is
//! ejected gets no traffic (503 UH, as the seeds warn), `/clusters` and the stats show the
//! ejection, and the host returns on an interval tick after `baseEjectionTime`.
//! (The exact tick arithmetic is covered with paused time in `cluster.rs` unit tests; here the
//! 15s ejection leaves a wide margin for the checks made while the host is out.)

mod common;
use common::*;

use std::time::Duration;

use serde_json::json;

#[tokio::test]
async fn single_endpoint_ejected_means_503_uh_then_returns_on_a_tick() {
    let (backend, _) = http_backend("flaky").await;
    let ep = format!("{backend}");
    let p = start(json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "filterChains": [
            {"action": {"http": {"routeConfig": {"name": "80", "virtualHosts": [
                {"name": "flaky", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "flaky", "timeout": "0s"}}]}
            ]}}}}]}],
        "clusters": [{"name": "flaky",
                      "endpoints": [{"address": backend.ip().to_string(), "port": backend.port()}],
                      "outlierDetection": {"consecutive5xx": 2, "interval": "1s",
                                           "baseEjectionTime": "15s", "maxEjectionPercent": 100}}]
    }))
    .await;
    let port = p.addr("http").port();
    let code = |path: &str| {
        s(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
    };
    assert_eq!(curl(&code("/status/500")).await.stdout, "500");
    assert_eq!(curl(&code("/status/500")).await.stdout, "500");
    // Ejected: the only host is out, so no traffic at all.
    let o = curl(&s(&[&format!("http://127.0.0.1:{port}/get")])).await;
    assert_eq!(o.stdout, "no healthy upstream");
    let lines = p.wait_lines(3).await;
    let f = fields(&lines[2]);
    assert_eq!(
        (f[2].as_str(), f[3].as_str()),
        ("503", "UH"),
        "{}",
        lines[2]
    );
    let clusters = admin_get(&p, "/clusters").await;
    assert!(
        clusters.contains(&format!("flaky::{ep}::health_flags::/failed_outlier_check")),
        "{clusters}"
    );
    let st = p.proxy.stats();
    assert_eq!(
        st.get("cluster.flaky.outlier_detection.ejections_active"),
        1
    );
    assert_eq!(
        st.get("cluster.flaky.outlier_detection.ejections_enforced_consecutive_5xx"),
        1
    );

    // Back in service after baseEjectionTime, at an interval tick.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = admin_get(&p, "/clusters").await;
        if c.contains(&format!("flaky::{ep}::health_flags::healthy")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "host never returned: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        st.get("cluster.flaky.outlier_detection.ejections_active"),
        0
    );
    assert_eq!(curl(&code("/get")).await.stdout, "200");
}
