//! Issue 8's namespace e2e test of the seed's placement claim (seed 001): each DR's
//! connectionPool is enforced by the proxy that OPENS its hop. Two client pods each stay below
//! DR-hop1's per-pod limit (enforced in their sidecars), together they go above DR-hop2's
//! limit, which only the egress gateway enforces: the overflow (503, flag `UO`,
//! `upstream_rq_pending_overflow`) happens at the gateway, not in the sidecars.
//!
//! Mesh: `examples/pool-placement` (DR-hop1 maxConnections 3 per pod; DR-hop2 maxConnections 2 +
//! http1MaxPendingRequests 1 at the gateway). The outside server holds requests open with
//! `/delay/S` of `isthmus echo`, so the test orders the requests by observing the gateway's own
//! counters instead of racing the clock: A1, A2 occupy both hop-2 connections, B1 waits as the
//! one pending request, B2 overflows.
//!
//! Root + network namespaces: without them the test prints a loud SKIPPED line and fails when
//! CI=true.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXAMPLE: &str = "pool-placement";
/// Hop-1 cluster in the client sidecars (DR-hop1).
const HOP1: &str = "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local";
/// Hop-2 cluster in the egress gateway (DR-hop2).
const HOP2: &str = "outbound|80||api.partner.example";
/// How long A1/A2 hold their hop-2 connections: the whole B1/B2 sequence runs inside it, with
/// readiness polls of their own, so only a stall of this order could reorder the requests.
const HOLD_SECS: u64 = 25;

fn offline(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run isthmus");
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Retries `f` until it returns true or `secs` pass.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One mesh of this test; `down` always runs (Drop).
struct Mesh {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    up: bool,
}

impl Mesh {
    fn up() -> Mesh {
        let name = format!("x{}pp", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("isthmus-pools-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        copy_example(&repo().join("examples").join(EXAMPLE), &dir.join("mesh"));
        let mut m = Mesh {
            name,
            root: dir.join("state"),
            dir,
            up: false,
        };
        // Generous readiness deadline: CI runs every mesh test in parallel on two cores.
        let out = m.cmd("up", &["mesh", "--timeout", "240"]);
        m.up = out.status.success();
        assert!(m.up, "up {EXAMPLE}: {}", text(&out));
        m
    }

    fn cmd(&self, sub: &str, args: &[&str]) -> Output {
        let mut a = vec![sub, "--name", &self.name];
        a.extend_from_slice(args);
        Command::new(BIN)
            .args(&a)
            .env("ISTHMUS_STATE_DIR", &self.root)
            .current_dir(&self.dir)
            .output()
            .expect("run isthmus")
    }

    fn exec(&self, ns: &str, pod: &str, args: &[&str]) -> Output {
        let mut a = vec!["-n", ns, pod, "--"];
        a.extend_from_slice(args);
        self.cmd("exec", &a)
    }

    /// `GET url` from a client pod: (curl exit, http code, body).
    fn get(&self, pod: &str, url: &str) -> (Option<i32>, String, String) {
        get_with(&self.name, &self.root, &self.dir, pod, url)
    }

    /// A proxy's `/stats` counter (0 when the proxy has not created it yet).
    fn stat(&self, ns: &str, pod: &str, name: &str) -> u64 {
        let out = self.exec(
            ns,
            pod,
            &["curl", "-sS", "-m", "5", "http://127.0.0.1:15000/stats"],
        );
        assert!(out.status.success(), "stats: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{name}: ");
        s.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().expect("numeric stat"))
            .unwrap_or(0)
    }

    fn gateway_stat(&self, name: &str) -> u64 {
        self.stat("istio-system", "deploy/istio-egressgateway", name)
    }

    fn logs(&self, ns: &str, pod: &str) -> String {
        let out = self.cmd("logs", &["-n", ns, pod, "-c", "istio-proxy"]);
        assert!(out.status.success(), "logs: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.up {
            let out = self.cmd("down", &[]);
            if !out.status.success() && !std::thread::panicking() {
                panic!("down: {}", text(&out));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `isthmus exec ... curl` usable from a thread (no borrow of the Mesh).
fn get_with(
    mesh: &str,
    root: &Path,
    dir: &Path,
    pod: &str,
    url: &str,
) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args([
            "exec",
            "--name",
            mesh,
            "-n",
            "demo",
            pod,
            "--",
            "curl",
            "-sS",
            "-m",
            "90",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .env("ISTHMUS_STATE_DIR", root)
        .current_dir(dir)
        .output()
        .expect("run isthmus exec");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", s.as_str()));
    (out.status.code(), code.trim().to_string(), body.to_string())
}

fn stat_name(cluster: &str, s: &str) -> String {
    format!("cluster.{cluster}.{s}")
}

#[test]
fn pool_placement_compiles_each_pool_into_the_proxy_that_opens_its_hop() {
    let dir = format!("examples/{EXAMPLE}");
    offline(&["validate", "-f", &dir]);
    // DR-hop1: the per-pod limit, in each client sidecar's hop-1 cluster.
    for pod in ["sleep-a.demo", "sleep-b.demo"] {
        let out = offline(&[
            "proxy-config",
            "cluster",
            pod,
            "-f",
            &dir,
            "--fqdn",
            "istio-egressgateway.istio-system.svc.cluster.local",
            "--subset",
            "partner",
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let c = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == HOP1))
            .unwrap_or_else(|| panic!("{pod}: no {HOP1}: {out}"));
        let t = &c["circuitBreakers"]["thresholds"][0];
        assert_eq!(t["maxConnections"], 3, "{pod}: {c}");
    }
    // DR-hop2: the shared limit, in the gateway's hop-2 cluster.
    let out = offline(&[
        "proxy-config",
        "cluster",
        "deploy/istio-egressgateway",
        "-n",
        "istio-system",
        "-f",
        &dir,
        "--fqdn",
        "api.partner.example",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let c = v
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == HOP2))
        .unwrap_or_else(|| panic!("gateway: no {HOP2}: {out}"));
    let t = &c["circuitBreakers"]["thresholds"][0];
    assert_eq!(t["maxConnections"], 2, "{c}");
    assert_eq!(t["maxPendingRequests"], 1, "{c}");
}

#[test]
fn two_pods_below_their_limit_overflow_at_the_gateway_not_in_the_sidecars() {
    if !isthmus_local::testing::namespaces_available(
        "two_pods_below_their_limit_overflow_at_the_gateway_not_in_the_sidecars",
    ) {
        return;
    }
    let m = Mesh::up();
    // Both clients reach the partner through the gateway (config pushed, names resolve).
    for pod in ["sleep-a", "sleep-b"] {
        let mut last = (None, String::new(), String::new());
        let ok = eventually(30, || {
            last = m.get(pod, "http://api.partner.example/warmup");
            last.1 == "200"
        });
        assert!(ok, "{pod} warm-up: {last:?}");
    }
    let rq_active = stat_name(HOP2, "upstream_rq_active");
    let pending_total = stat_name(HOP2, "upstream_rq_pending_total");
    let pending_overflow = stat_name(HOP2, "upstream_rq_pending_overflow");
    let pending_before = m.gateway_stat(&pending_total);
    assert_eq!(m.gateway_stat(&pending_overflow), 0);

    let spawn = |pod: &'static str, path: String| {
        let (name, root, dir) = (m.name.clone(), m.root.clone(), m.dir.clone());
        std::thread::spawn(move || {
            get_with(
                &name,
                &root,
                &dir,
                pod,
                &format!("http://api.partner.example{path}"),
            )
        })
    };
    // Pod A: two requests held open, both hop-2 connections of the gateway in use.
    let a1 = spawn("sleep-a", format!("/delay/{HOLD_SECS}?a1"));
    let a2 = spawn("sleep-a", format!("/delay/{HOLD_SECS}?a2"));
    let mut active = 0;
    assert!(
        eventually(20, || {
            active = m.gateway_stat(&rq_active);
            active >= 2
        }),
        "A1/A2 never both reached the partner through the gateway (upstream_rq_active {active})"
    );
    // Pod B, first request: no connection left, it waits as the one pending request allowed.
    let b1 = spawn("sleep-b", "/delay/1?b1".to_string());
    let mut pending = 0;
    assert!(
        eventually(20, || {
            pending = m.gateway_stat(&pending_total);
            pending > pending_before
        }),
        "B1 never went pending at the gateway ({pending_total} {pending})"
    );
    // Pod B, second request: above DR-hop2's limit -> the gateway answers 503 UO.
    let (rc, code, body) = m.get("sleep-b", "http://api.partner.example/get?b2");
    assert_eq!((rc, code.as_str()), (Some(0), "503"), "B2: {body}");
    assert!(body.contains("overflow"), "B2 body: {body}");
    // The held requests all complete: A1/A2 after the delay, B1 once a connection frees up.
    for (what, h) in [("A1", a1), ("A2", a2), ("B1", b1)] {
        let (rc, code, body) = h.join().expect("request thread");
        assert_eq!((rc, code.as_str()), (Some(0), "200"), "{what}: {body}");
    }

    // At the gateway: exactly the one overflow, logged as 503 UO on the hop-2 cluster.
    assert_eq!(m.gateway_stat(&pending_overflow), 1);
    assert!(m.gateway_stat(&stat_name(HOP2, "upstream_cx_overflow")) >= 1);
    let gw_pod = {
        let out = m.cmd("get", &["pods", "-n", "istio-system", "-o", "json"]);
        assert!(out.status.success(), "get pods: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pods json");
        v["items"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p["deployment"] == "istio-egressgateway")
                    .and_then(|p| p["name"].as_str().map(str::to_string))
            })
            .unwrap_or_else(|| panic!("no egress gateway pod: {v}"))
    };
    let mut gw_log = String::new();
    let logged = eventually(10, || {
        gw_log = m.logs("istio-system", &gw_pod);
        gw_log.lines().any(|l| l.contains("/get?b2"))
    });
    assert!(logged, "B2 not in the gateway log:\n{gw_log}");
    let overflows: Vec<&str> = gw_log.lines().filter(|l| l.contains(" UO ")).collect();
    assert_eq!(overflows.len(), 1, "gateway UO lines:\n{gw_log}");
    assert!(
        overflows[0].contains("\"GET /get?b2 HTTP/")
            && overflows[0].contains("\" 503 UO ")
            && overflows[0].contains(HOP2),
        "{}",
        overflows[0]
    );
    // In the sidecars: nothing overflowed; each pod stayed within DR-hop1's per-pod limit and
    // B2's sidecar only relayed the gateway's 503 (no UO flag of its own).
    for pod in ["sleep-a", "sleep-b"] {
        for s in ["upstream_cx_overflow", "upstream_rq_pending_overflow"] {
            assert_eq!(m.stat("demo", pod, &stat_name(HOP1, s)), 0, "{pod} {s}");
        }
        let log = m.logs("demo", pod);
        assert!(
            !log.lines().any(|l| l.contains(" UO ")),
            "{pod} sidecar overflowed:\n{log}"
        );
    }
    let b_log = m.logs("demo", "sleep-b");
    let b2 = b_log
        .lines()
        .find(|l| l.contains("/get?b2"))
        .unwrap_or_else(|| panic!("B2 not in sleep-b's sidecar log:\n{b_log}"));
    assert!(b2.contains("\" 503 - "), "{b2}");
    assert!(b2.contains(HOP1), "{b2}");
}
