//! VirtualService `fault` and `corsPolicy` through a running mesh: a client pod's sidecar
//! compiles the VS for `web.demo` and enforces it on the client's own requests (Istio applies
//! fault/CORS in the proxy that routes the request, the caller's sidecar). Checked with real curl
//! from inside the client pod, the sidecar's access log (flags `FI`, `DI`) and its counters.
//!
//! Offline part (always runs): `isthmus proxy-config route` prints the routes' istiod-shaped
//! `typedPerFilterConfig`. Live part: root + network namespaces; without them a loud SKIPPED
//! line, and a failure when CI=true.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MESH: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  containers:
  - name: echo
    command: ["isthmus", "echo", "--http-port", "8080", "--name", "web"]
    ports:
    - containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: demo
  labels: {app: sleep}
spec:
  containers:
  - name: sleep
    command: ["sleep", "infinity"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - name: broken
    match: [{uri: {prefix: /fault}}]
    fault:
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: web}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 100}}
    route: [{destination: {host: web}}]
  - name: api
    match: [{uri: {prefix: /api}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-token]
      maxAge: 10m
    route: [{destination: {host: web}}]
  - name: rest
    route: [{destination: {host: web}}]
"#;

const URL: &str = "http://web.demo.svc.cluster.local";

fn write_mesh(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let bin = BIN.to_string();
    std::fs::write(
        dir.join("mesh.yaml"),
        MESH.replace("command: [\"isthmus\",", &format!("command: [\"{bin}\",")),
    )
    .expect("write mesh");
}

#[test]
fn proxy_config_route_shows_istio_shaped_fault_and_cors() {
    let dir = std::env::temp_dir().join(format!("isthmus-vsfeat-offline-{}", std::process::id()));
    write_mesh(&dir);
    let out = Command::new(BIN)
        .args(["proxy-config", "route", "sleep.demo", "-f"])
        .arg(dir.join("mesh.yaml"))
        .args(["--name", "80", "-o", "json"])
        .output()
        .expect("run isthmus");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let routes: Vec<&serde_json::Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rc| rc["virtualHosts"].as_array().into_iter().flatten())
        .filter(|vh| vh["name"] == "web.demo.svc.cluster.local:80")
        .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
        .collect();
    let route = |n: &str| {
        routes
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("route {n}: {v}"))
    };
    let fault = &route("broken")["typedPerFilterConfig"]["envoy.filters.http.fault"];
    assert_eq!(
        fault["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    );
    assert_eq!(fault["abort"]["httpStatus"], 503);
    assert_eq!(
        fault["abort"]["percentage"],
        serde_json::json!({"numerator": 1000000, "denominator": "MILLION"})
    );
    let delay = &route("slow")["typedPerFilterConfig"]["envoy.filters.http.fault"]["delay"];
    assert_eq!(delay["fixedDelay"], "1s");
    let cors = &route("api")["typedPerFilterConfig"]["envoy.filters.http.cors"];
    assert_eq!(
        cors["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    assert_eq!(
        cors["allowOriginStringMatch"],
        serde_json::json!([{"exact": "https://app.example.com"}])
    );
    assert_eq!(cors["allowMethods"], "GET,PUT");
    assert_eq!(cors["maxAge"], "600");
    assert!(route("rest").get("typedPerFilterConfig").is_none());
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
        let name = format!("x{}vf", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("isthmus-vsfeat-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        write_mesh(&dir.join("mesh"));
        let mut m = Mesh {
            name,
            root: dir.join("state"),
            dir,
            up: false,
        };
        // Generous readiness deadline: CI runs every mesh test in parallel on two cores.
        let out = m.cmd("up", &["mesh", "--timeout", "240"]);
        m.up = out.status.success();
        assert!(m.up, "up: {}", text(&out));
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

    /// curl from the client pod: (curl exit, `-i` output).
    fn curl(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut a = vec!["-n", "demo", "sleep", "--", "curl", "-sS", "-i", "-m", "60"];
        a.extend_from_slice(args);
        let out = self.cmd("exec", &a);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
        )
    }

    fn sidecar_log(&self) -> String {
        let out = self.cmd("logs", &["-n", "demo", "sleep", "-c", "istio-proxy"]);
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

fn header(out: &str, name: &str) -> Option<String> {
    out.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
}

#[test]
fn fault_and_cors_from_a_virtual_service_in_a_running_mesh() {
    if !isthmus_local::testing::namespaces_available(
        "fault_and_cors_from_a_virtual_service_in_a_running_mesh",
    ) {
        return;
    }
    let m = Mesh::up();
    // Warm-up: the sidecar has the config and the service resolves.
    let mut last = (None, String::new());
    assert!(
        eventually(60, || {
            last = m.curl(&[&format!("{URL}/warmup")]);
            last.1.starts_with("HTTP/1.1 200")
        }),
        "warm-up: {last:?}"
    );

    // Abort at 100%: the client's own sidecar answers 503 without calling web.
    let (rc, out) = m.curl(&[&format!("{URL}/fault")]);
    assert_eq!(rc, Some(0), "{out}");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.ends_with("fault filter abort"), "{out}");

    // Delay at 100%: answered by web after the sidecar held it (flag DI).
    let (rc, out) = m.curl(&[&format!("{URL}/slow")]);
    assert_eq!(rc, Some(0), "{out}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // CORS preflight from an allowed origin: answered by the sidecar.
    let (_, out) = m.curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example.com",
        "-H",
        "Access-Control-Request-Method: PUT",
        &format!("{URL}/api/x"),
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        header(&out, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com"),
        "{out}"
    );
    assert_eq!(
        header(&out, "access-control-allow-methods").as_deref(),
        Some("GET,PUT")
    );
    assert_eq!(
        header(&out, "access-control-max-age").as_deref(),
        Some("600")
    );
    // Actual request from another origin: served, no CORS headers.
    let (_, out) = m.curl(&[
        "-H",
        "Origin: https://other.example",
        &format!("{URL}/api/x"),
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(header(&out, "access-control-allow-origin"), None, "{out}");

    // The sidecar's access log: the abort as 503 FI fault_filter_abort, the delay as DI,
    // the preflight as cors_response.
    let mut log = String::new();
    let logged = eventually(20, || {
        log = m.sidecar_log();
        log.contains("/fault") && log.contains("/slow") && log.contains("OPTIONS /api/x")
    });
    assert!(logged, "sidecar log:\n{log}");
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in:\n{log}"))
            .to_string()
    };
    let abort = line("\"GET /fault ");
    assert!(abort.contains("\" 503 FI fault_filter_abort "), "{abort}");
    let slow = line("\"GET /slow ");
    assert!(slow.contains("\" 200 DI "), "{slow}");
    let pre = line("\"OPTIONS /api/x ");
    assert!(pre.contains("\" 200 - cors_response "), "{pre}");
}
