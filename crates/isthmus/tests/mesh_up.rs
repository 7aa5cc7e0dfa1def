//! Namespace end-to-end tests of `isthmus up / get / exec / logs / status / down` (root).
//!
//! Each test uses its own mesh name and state root, so they run in parallel with each other
//! and with other namespace tests. Without root/nftables they print a loud SKIPPED line, and
//! fail when CI=true (see `isthmus_local::testing::namespaces_available`).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Mesh {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    up: bool,
}

impl Mesh {
    fn new(tag: &str, manifest: &str) -> Mesh {
        let name = format!("t{}{tag}", std::process::id() % 100_000);
        // Scratch directory without a tempfile dependency; removed on drop.
        let dir = std::env::temp_dir().join(format!("isthmus-mesh-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("mesh.yaml"), manifest.replace("@ISTHMUS@", BIN))
            .expect("write manifest");
        Mesh {
            name,
            root: dir.join("state"),
            dir,
            up: false,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("ISTHMUS_STATE_DIR", &self.root)
            .current_dir(&self.dir);
        c.output().expect("run isthmus")
    }

    /// `isthmus SUBCOMMAND --name <mesh> ARGS...`
    fn cmd(&self, sub: &str, args: &[&str]) -> Output {
        let mut a = vec![sub, "--name", &self.name];
        a.extend_from_slice(args);
        self.run(&a)
    }

    fn up(&mut self) -> Output {
        let out = self.cmd("up", &["mesh.yaml", "--profile", "minimal"]);
        self.up = out.status.success();
        out
    }

    fn pods(&self) -> serde_json::Value {
        let out = self.cmd("get", &["pods", "-A", "-o", "json"]);
        assert!(out.status.success(), "get pods: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("pods json")
    }

    fn pod(&self, name: &str) -> serde_json::Value {
        self.pods()["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|p| p["name"] == name || p["deployment"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("pod {name} not listed"))
    }

    fn netns(&self) -> Vec<String> {
        let prefix = format!("isth-{}-", self.name);
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.up {
            let _ = self.cmd("down", &[]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

const TWO_PODS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "8080", --name, web-echo]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  containers:
  - name: sleep
    command: [sleep, infinity]
"#;

#[test]
fn up_exec_by_service_name_restart_and_verified_down() {
    if !isthmus_local::testing::namespaces_available(
        "up_exec_by_service_name_restart_and_verified_down",
    ) {
        return;
    }
    let mut m = Mesh::new("a", TWO_PODS);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is up: 2 pod(s), 1 service(s)"),
        "{}",
        text(&out)
    );

    // Both pods Running.
    let out = m.cmd("get", &["pods"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for pod in ["client", "web"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(pod))
            .unwrap_or_else(|| panic!("{pod} missing:\n{table}"));
        assert!(line.contains("1/1") && line.contains("Running"), "{table}");
    }

    // curl from one pod to the other by service name (short name via search domains).
    let out = m.cmd(
        "exec",
        &[
            "client",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            "http://web/hello",
        ],
    );
    assert!(out.status.success(), "exec curl: {}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(body.trim_end().ends_with("200"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(body.trim_end().trim_end_matches("200")).expect("echo json");
    assert_eq!(json["server"], "web-echo");
    assert_eq!(json["path"], "/hello");
    let client_ip = m.pod("client")["ip"].as_str().expect("ip").to_string();
    assert_eq!(
        json["peer_ip"],
        client_ip.as_str(),
        "kube-proxy DNAT keeps the client IP"
    );

    // exec passes the exit code through.
    let out = m.cmd("exec", &["client", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));

    // A second `up` with the same name fails clearly and changes nothing.
    let out = m.cmd("up", &["mesh.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        text(&out)
    );
    assert_eq!(m.pod("web")["status"], "Running");

    // Killing the container process: restarted, restart visible in `get pods`.
    let web = m.pod("web");
    let pid = web["containers"][0]["pid"].as_u64().expect("pid");
    assert!(pid_alive(pid));
    nix_kill(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = m.pod("web");
        let c = &w["containers"][0];
        if c["restarts"].as_u64() == Some(1)
            && c["state"] == "Running"
            && c["pid"].as_u64() != Some(pid)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no restart seen: {w}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = String::from_utf8_lossy(&m.cmd("get", &["pods"]).stdout).to_string();
    let line = table
        .lines()
        .find(|l| l.starts_with("web"))
        .expect("web row");
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("1"),
        "RESTARTS column: {table}"
    );
    // And it serves again (through the VIP).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = m.cmd(
            "exec",
            &[
                "client",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "2",
                "-w",
                "%{http_code}",
                "http://web.default.svc.cluster.local/",
            ],
        );
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web not serving after restart: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Logs.
    let out = m.cmd("logs", &["web", "--tail", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo: http on"),
        "{}",
        text(&out)
    );

    // Everything goes on `down`, verified independently here.
    let pids: Vec<u64> = m.pods()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["containers"][0]["pid"].as_u64())
        .collect();
    let sup: u64 = std::fs::read_to_string(m.root.join(&m.name).join("pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(m.netns().len(), 3, "{:?}", m.netns());
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified nothing is left"));
    assert_eq!(m.netns(), Vec::<String>::new());
    for p in pids.iter().chain([&sup]) {
        assert!(!pid_alive(*p), "process {p} survived down");
    }
    assert!(!m.root.join(&m.name).exists(), "state dir left");
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("isthmus"),
        "host nft tables touched"
    );
    // A second down says there is nothing.
    let out = m.cmd("down", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no mesh named"),
        "{}",
        text(&out)
    );
}

fn nix_kill(pid: u64) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

const OUTSIDE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: apps}
stringData: {pw: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf, namespace: apps}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep}}
    spec:
      containers:
      - name: sleep
        command: [sleep, infinity]
        workingDir: /etc/conf
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: PW
          valueFrom: {secretKeyRef: {name: creds, key: pw}}
        volumeMounts:
        - {name: creds, mountPath: /etc/creds}
        - {name: conf, mountPath: /etc/conf}
        - {name: scratch, mountPath: /scratch}
      volumes:
      - {name: creds, secret: {secretName: creds}}
      - {name: conf, configMap: {name: conf}}
      - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata:
  name: partner
  namespace: outside
  annotations: {isthmus.dev/outside-hostnames: api.partner.example}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "80", --name, partner]
    ports: [{containerPort: 80}]
"#;

#[test]
fn outside_hosts_volumes_env_and_deployments() {
    if !isthmus_local::testing::namespaces_available("outside_hosts_volumes_env_and_deployments") {
        return;
    }
    let mut m = Mesh::new("b", OUTSIDE);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let pods = m.pods();
    let sleeps: Vec<&serde_json::Value> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["deployment"] == "sleep")
        .collect();
    assert_eq!(sleeps.len(), 2, "{pods}");

    // A mesh pod reaches the outside host by its published name (forwarded resolver).
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "apps",
            "deploy/sleep",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "http://api.partner.example/x",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["server"], "partner");

    // The outside host cannot resolve mesh names (only the outside-world resolver).
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "outside",
            "partner",
            "--",
            "getent",
            "hosts",
            "sleep.apps.svc.cluster.local",
        ],
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "outside host resolved a mesh name: {}",
        text(&out)
    );
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "outside",
            "partner",
            "--",
            "getent",
            "hosts",
            "api.partner.example",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // env (fieldRef, secretKeyRef), volumes, workingDir.
    let name = sleeps[0]["name"].as_str().expect("name");
    let out = m.cmd(
        "exec",
        &["-n", "apps", name, "--", "sh", "-c", "echo $POD_NAME $PW; cat /etc/creds/pw; echo; cat greeting; echo; pwd; echo x > /scratch/f && cat /scratch/f"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{name} hunter2\nhunter2\nhello\n/etc/conf\nx\n")
    );
    // Secret volumes are read-only.
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "apps",
            name,
            "--",
            "sh",
            "-c",
            "echo y > /etc/creds/pw",
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));

    // `get` filters by namespace.
    let out = m.cmd("get", &["pods", "-n", "outside"]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(t.contains("partner") && !t.contains("sleep"), "{t}");

    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
    assert_eq!(m.netns(), Vec::<String>::new());
    // Mount paths never leak onto the host: /etc/creds lived in an overlay, the top-level
    // /scratch was created for the pod and removed with it.
    assert!(
        !Path::new("/etc/creds").exists(),
        "/etc/creds leaked onto the host"
    );
    assert!(!Path::new("/scratch").exists(), "/scratch left on the host");
}

#[test]
fn bad_manifests_and_non_root_fail_clearly_before_touching_the_system() {
    if !isthmus_local::testing::namespaces_available(
        "bad_manifests_and_non_root_fail_clearly_before_touching_the_system",
    ) {
        return;
    }
    let m = Mesh::new(
        "c",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n",
    );
    let out = m.cmd("up", &["mesh.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no command/args"),
        "{}",
        text(&out)
    );
    assert!(!m.root.join(&m.name).exists());
    assert!(m.netns().is_empty());

    // Not root: a clear message with the fix, exit 1.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
            "up",
            "mesh.yaml",
            "--name",
            &m.name,
        ])
        .current_dir(&m.dir)
        .env("ISTHMUS_STATE_DIR", &m.root)
        .output();
    match out {
        Ok(out) => {
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
        }
        Err(e) => eprintln!("note: setpriv unavailable ({e}); non-root check not run"),
    }
    assert!(m.netns().is_empty());
}

const MESH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "8080", --name, web]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: demo, labels: {app: sleep}}
spec:
  containers:
  - {name: sleep, command: [sleep, infinity]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: default}
spec:
  containers:
  - {name: sleep, command: [sleep, infinity]}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  template:
    metadata: {labels: {istio: ingressgateway, app: istio-ingressgateway}}
    spec:
      containers:
      - {name: istio-proxy, image: auto, ports: [{containerPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: ["web.example.com"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: web.demo.svc.cluster.local, port: {number: 80}}
"#;

fn stats(m: &Mesh, ns: &str, pod: &str) -> String {
    let out = m.cmd(
        "exec",
        &[
            "-n",
            ns,
            pod,
            "--",
            "curl",
            "-sS",
            "-m",
            "3",
            "http://127.0.0.1:15000/stats",
        ],
    );
    assert!(out.status.success(), "stats: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn sidecars_capture_with_mtls_and_the_ingress_gateway_is_published() {
    if !isthmus_local::testing::namespaces_available(
        "sidecars_capture_with_mtls_and_the_ingress_gateway_is_published",
    ) {
        return;
    }
    let mut m = Mesh::new("d", MESH);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let published = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ingress published on host loopback: 127.0.0.1:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no published ingress port:\n{stdout}"));
    let web = m.pod("web");
    assert_eq!(web["containers"][1]["name"], "istio-proxy", "{web}");
    assert_eq!(web["status"], "Running", "{web}");

    // Sidecar to sidecar, through capture: ISTIO_MUTUAL with the client's SPIFFE identity.
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "demo",
            "sleep",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "http://web/from-sidecar",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo json");
    assert_eq!(json["server"], "web");
    assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{json}");
    let s = stats(&m, "demo", "sleep");
    assert!(
        s.contains("cluster.outbound|80||web.demo.svc.cluster.local.upstream_rq_200: 1"),
        "{s}"
    );
    let s = stats(&m, "demo", "web");
    assert!(
        s.lines().any(|l| l.contains("reporter.destination")
            && l.contains("source_principal.spiffe://cluster.local/ns/demo/sa/default")
            && l.contains("connection_security_policy.mutual_tls")),
        "{s}"
    );

    // Through the ingress gateway, from a pod without sidecar and from the host.
    let out = m.cmd(
        "exec",
        &[
            "plain",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "-H",
            "Host: web.example.com",
            "http://istio-ingressgateway.istio-system/gw",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo json");
    assert_eq!(
        (json["server"].as_str(), json["path"].as_str()),
        (Some("web"), Some("/gw"))
    );
    let host = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
        ])
        .arg(format!("web.example.com:{published}:127.0.0.1"))
        .arg(format!("http://web.example.com:{published}/from-host"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        "200",
        "{}",
        text(&host)
    );
    let s = stats(&m, "demo", "web");
    assert!(
        s.lines().any(|l| l
            .contains("source_principal.spiffe://cluster.local/ns/istio-system/sa/default")
            && l.contains("connection_security_policy.mutual_tls")),
        "gateway -> sidecar was not mTLS: {s}"
    );

    // The gateway's access log (mesh accessLogFile: /dev/stdout) through `logs`.
    let out = m.cmd(
        "logs",
        &[
            "-n",
            "istio-system",
            "deploy/istio-ingressgateway",
            "--tail",
            "20",
        ],
    );
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        log.lines().any(|l| l.contains("\"GET /gw HTTP/1.1\" 200")
            && l.contains("outbound|80||web.demo.svc.cluster.local")),
        "{log}"
    );

    // The proxy is a supervised container: killed, it restarts and traffic flows again.
    let out = m.cmd("logs", &["-n", "demo", "web", "-c", "istio-proxy"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("config applied"),
        "{}",
        text(&out)
    );
    let pid = web["containers"][1]["pid"].as_u64().expect("proxy pid");
    nix_kill(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = m.pod("web")["containers"][1].clone();
        if c["restarts"].as_u64() == Some(1) && c["state"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "proxy not restarted: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = m.cmd(
            "exec",
            &[
                "-n",
                "demo",
                "sleep",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "2",
                "-w",
                "%{http_code}",
                "http://web/again",
            ],
        );
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic after proxy restart: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
    assert_eq!(m.netns(), Vec::<String>::new());
    let refused = std::net::TcpStream::connect(("127.0.0.1", published));
    assert!(refused.is_err(), "published port still open after down");
}

#[test]
fn a_crashed_supervisor_is_cleaned_up_by_down_and_by_the_next_up() {
    if !isthmus_local::testing::namespaces_available(
        "a_crashed_supervisor_is_cleaned_up_by_down_and_by_the_next_up",
    ) {
        return;
    }
    let mut m = Mesh::new("e", TWO_PODS);
    let pid_file = m.root.join(&m.name).join("pid");
    for round in 0..2 {
        let out = m.up();
        assert!(out.status.success(), "up (round {round}): {}", text(&out));
        let pids: Vec<u64> = m.pods()["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|p| p["containers"][0]["pid"].as_u64())
            .collect();
        assert_eq!(pids.len(), 2);
        let sup: u64 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        nix_kill(sup);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(sup) {
            assert!(Instant::now() < deadline, "supervisor survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Containers outlive their supervisor, namespaces too: leftovers of a crashed run.
        assert!(pids.iter().all(|p| pid_alive(*p)));
        assert_eq!(m.netns().len(), 3);
        let out = m.cmd("status", &[]);
        assert_ne!(
            out.status.code(),
            Some(0),
            "status of a dead mesh: {}",
            text(&out)
        );
        if round == 0 {
            // The next `up` with the same name takes over: leftovers removed first.
            continue;
        }
        let out = m.cmd("down", &[]);
        assert!(out.status.success(), "down: {}", text(&out));
        m.up = false;
        assert!(String::from_utf8_lossy(&out.stdout).contains("leftovers of a crashed run"));
        assert_eq!(m.netns(), Vec::<String>::new());
        for p in &pids {
            assert!(!pid_alive(*p), "container {p} survived down");
        }
        assert!(!m.root.join(&m.name).exists());
    }
}

const REGISTRY_ONLY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: demo, labels: {app: sleep}}
spec:
  containers:
  - {name: sleep, command: [sleep, infinity]}
---
apiVersion: v1
kind: Pod
metadata:
  name: partner
  namespace: outside
  annotations: {isthmus.dev/outside-hostnames: "api.partner.example,other.example"}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "80", --name, partner]
    ports: [{containerPort: 80}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: demo}
spec:
  hosts: [api.partner.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;

#[test]
fn registry_only_sidecars_reach_service_entries_but_not_other_outside_hosts() {
    if !isthmus_local::testing::namespaces_available(
        "registry_only_sidecars_reach_service_entries_but_not_other_outside_hosts",
    ) {
        return;
    }
    let mut m = Mesh::new("f", REGISTRY_ONLY);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let code = |url: &str| {
        let out = m.cmd(
            "exec",
            &[
                "-n",
                "demo",
                "sleep",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "4",
                "-w",
                "%{http_code}",
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Both names resolve (outside-world resolver) to the same outside pod; only the one
    // with a ServiceEntry is allowed out under REGISTRY_ONLY (BlackHoleCluster: 502).
    // With DNS capture on (mesh proxyMetadata), the sidecar's DNS proxy answers the
    // ServiceEntry host with its auto-allocated VIP.
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "demo",
            "sleep",
            "--",
            "getent",
            "hosts",
            "api.partner.example",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("240.240."),
        "{}",
        text(&out)
    );
    assert_eq!(code("http://api.partner.example/in-registry"), "200");
    assert_eq!(code("http://other.example/not-in-registry"), "502");
    let out = m.cmd("get", &["serviceentry", "-A"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("partner"),
        "{}",
        text(&out)
    );

    // A ServiceEntry applied to the running mesh: its host resolves to its VIP at once (the
    // DNS process reloads its tables, no restart) and the host is allowed out.
    let resolve = |host: &str| {
        let out = m.cmd(
            "exec",
            &["-n", "demo", "sleep", "--", "getent", "hosts", host],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        !resolve("other.example").starts_with("240.240."),
        "before the apply other.example is not a mesh name"
    );
    std::fs::write(m.dir.join("se-other.yaml"), SE_OTHER).expect("write se-other.yaml");
    let out = m.cmd("apply", &["-f", "se-other.yaml", "--timeout", "120"]);
    assert!(out.status.success(), "apply: {}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut answer = resolve("other.example");
    while !answer.starts_with("240.240.") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        answer = resolve("other.example");
    }
    assert!(
        answer.starts_with("240.240."),
        "the applied ServiceEntry's host resolves to its VIP: {answer:?}"
    );
    assert_eq!(code("http://other.example/now-in-registry"), "200");
    // Deleting it takes the name back out of the sidecars' DNS.
    let out = m.cmd("delete", &["-f", "se-other.yaml", "--timeout", "120"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut answer = resolve("other.example");
    while answer.starts_with("240.240.") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        answer = resolve("other.example");
    }
    assert!(!answer.starts_with("240.240."), "{answer:?}");
    assert_eq!(code("http://other.example/not-in-registry-again"), "502");

    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

const SE_OTHER: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: demo}
spec:
  hosts: [other.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;

const REDIRECT_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - route:
    - destination: {host: web}
"#;

const BAD_DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: NOPE}
"#;

#[test]
fn apply_pushes_to_live_proxies_rejects_invalid_config_and_survives_the_control_plane() {
    if !isthmus_local::testing::namespaces_available(
        "apply_pushes_to_live_proxies_rejects_invalid_config_and_survives_the_control_plane",
    ) {
        return;
    }
    let mut m = Mesh::new("g", MESH);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    std::fs::write(m.dir.join("vs.yaml"), REDIRECT_VS).expect("write");
    std::fs::write(m.dir.join("dr.yaml"), BAD_DR).expect("write");
    let code = |m: &Mesh, path: &str| {
        let out = m.cmd(
            "exec",
            &[
                "-n",
                "demo",
                "sleep",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "4",
                "-w",
                "%{http_code}",
            ]
            .into_iter()
            .chain([format!("http://web{path}").as_str()])
            .collect::<Vec<_>>(),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(code(&m, "/old"), "200");
    let proxy_pid = |m: &Mesh, pod: &str| m.pod(pod)["containers"][1]["pid"].as_u64();
    let before = (proxy_pid(&m, "sleep"), proxy_pid(&m, "web"));

    // A valid change is pushed and acknowledged; `apply` returns once every proxy ACKed.
    let out = m.cmd("apply", &["-f", "vs.yaml"]);
    assert!(out.status.success(), "apply: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "virtualservice.networking.istio.io/web configured\n"
    );
    assert_eq!(code(&m, "/old"), "301");
    assert_eq!(code(&m, "/other"), "200");
    assert_eq!(
        (proxy_pid(&m, "sleep"), proxy_pid(&m, "web")),
        before,
        "proxies restarted"
    );
    let out = m.cmd("apply", &["-f", "vs.yaml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web unchanged"),
        "{}",
        text(&out)
    );

    // An invalid DestinationRule: kubectl's message, exit 1, nothing changes.
    let out = m.cmd("apply", &["-f", "dr.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("The DestinationRule \"web\" is invalid"),
        "{err}"
    );
    assert!(err.contains("Unsupported value: \"NOPE\""), "{err}");
    let out = m.cmd("get", &["destinationrule", "-A", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(code(&m, "/old"), "301");

    // Pods and Services are fixed at `up`.
    std::fs::write(m.dir.join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: demo}\nspec:\n  ports: [{port: 1}]\n").expect("write");
    let out = m.cmd("apply", &["-f", "svc.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fixed at `up`"),
        "{}",
        text(&out)
    );

    // Kill the control plane: proxies keep serving their last config, and the mesh DNS (a
    // process of its own) keeps answering service names.
    let out = m.cmd("get", &["svc", "-n", "demo", "-o", "json"]);
    let svcs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("svc json");
    let vip = svcs["items"][0]["cluster_ip"]
        .as_str()
        .expect("cluster ip")
        .to_string();
    let sleep_pid = m.pod("sleep")["containers"][0]["pid"]
        .as_u64()
        .expect("sleep pid");
    let plain_pid = m.pod("plain")["containers"][0]["pid"]
        .as_u64()
        .expect("plain pid");
    let node = format!("isth-{}-node", m.name);
    let dns_pids = netns_pids(&node);
    assert!(!dns_pids.is_empty(), "no mesh DNS process in {node}");
    let sup: u64 = std::fs::read_to_string(m.root.join(&m.name).join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(!dns_pids.contains(&sup), "the DNS runs in the supervisor");
    nix_kill(sup);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(sup) {
        assert!(Instant::now() < deadline, "supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What `exec` does, without the supervisor: enter the container's namespaces.
    let in_pod = |pid: u64, url: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--target={pid}"))
            .args([
                "--mount",
                "--uts",
                "--net",
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "4",
            ])
            .args(["-w", "%{http_code}", url])
            .output()
            .expect("nsenter curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The sidecar pod asks the sidecar DNS; the plain pod asks kube-dns.
    assert_eq!(in_pod(sleep_pid, "http://web/old"), "301");
    assert_eq!(
        in_pod(plain_pid, "http://web.demo.svc.cluster.local/x"),
        "200"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("isth-{}-demo-sleep", m.name),
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "4",
            "-w",
            "%{http_code}",
            "-H",
            "Host: web",
        ])
        .arg(format!("http://{vip}/old"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "301",
        "{}",
        text(&out)
    );
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
    assert_eq!(m.netns(), Vec::<String>::new());
    for p in dns_pids {
        assert!(!pid_alive(p), "mesh DNS process {p} survived down");
    }
}

/// PIDs of the processes in network namespace `ns`.
fn netns_pids(ns: &str) -> Vec<u64> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn the_demo_profile_adds_ingress_and_egress_gateways() {
    if !isthmus_local::testing::namespaces_available(
        "the_demo_profile_adds_ingress_and_egress_gateways",
    ) {
        return;
    }
    let mut m = Mesh::new("h", TWO_PODS);
    let out = m.cmd("up", &["mesh.yaml"]);
    m.up = out.status.success();
    assert!(m.up, "up: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("is up: 4 pod(s), 3 service(s)"), "{stdout}");
    assert_eq!(
        stdout.matches("ingress published on host loopback").count(),
        2,
        "80 and 443 of istio-ingressgateway: {stdout}"
    );
    let out = m.cmd("get", &["pods", "-n", "istio-system", "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut gws: Vec<(String, String)> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["deployment"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}:{}",
                    p["status"].as_str().unwrap_or_default(),
                    p["containers"][0]["name"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect();
    gws.sort();
    assert_eq!(
        gws,
        [
            (
                "istio-egressgateway".to_string(),
                "Running:istio-proxy".to_string()
            ),
            (
                "istio-ingressgateway".to_string(),
                "Running:istio-proxy".to_string()
            )
        ]
    );
    let out = m.cmd("status", &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2/2"),
        "{}",
        text(&out)
    );
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
    assert_eq!(m.netns(), Vec::<String>::new());
}

const SAME_PORT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "8080", --name, web]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  containers:
  - name: sleep
    command: [sleep, infinity]
"#;

/// Service port == targetPort (8080): every sidecar has an outbound listener on 8080, and the
/// server's inbound capture must still terminate mTLS itself (Envoy's `original_dst` listener
/// filter restores the destination without handing the connection to that listener).
#[test]
fn inbound_capture_works_when_a_service_port_equals_the_container_port() {
    if !isthmus_local::testing::namespaces_available(
        "inbound_capture_works_when_a_service_port_equals_the_container_port",
    ) {
        return;
    }
    let mut m = Mesh::new("i", SAME_PORT);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "demo",
            "client",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "http://web:8080/same-port",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo json");
    assert_eq!(json["path"], "/same-port");
    assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{json}");
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

/// A `Mesh` command with stdin (for `-f -`).
fn run_stdin(m: &Mesh, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut a = vec![args[0], "--name", &m.name];
    a.extend_from_slice(&args[1..]);
    let mut child = Command::new(BIN)
        .args(&a)
        .env("ISTHMUS_STATE_DIR", &m.root)
        .current_dir(&m.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn isthmus");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait isthmus")
}

/// Polls `f` every 200ms until it returns `Some`, failing with `what` after `secs`.
fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of stat `name` in `proxy-stats` output (`name: value` lines).
fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(": ")?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

const POOL_DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web.demo.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {http1MaxPendingRequests: 7}
"#;

#[test]
fn delete_live_proxy_config_and_proxy_stats_read_the_running_proxies() {
    if !isthmus_local::testing::namespaces_available(
        "delete_live_proxy_config_and_proxy_stats_read_the_running_proxies",
    ) {
        return;
    }
    let mut m = Mesh::new("j", MESH);
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    std::fs::write(m.dir.join("dr.yaml"), POOL_DR).expect("write");
    std::fs::write(m.dir.join("vs.yaml"), REDIRECT_VS).expect("write");
    const WEB: &str = "web.demo.svc.cluster.local";
    let live_cluster = |m: &Mesh| {
        let out = m.cmd(
            "proxy-config",
            &["cluster", "sleep.demo", "--fqdn", WEB, "-o", "json"],
        );
        assert!(out.status.success(), "live proxy-config: {}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("live json")
    };
    let offline_cluster = |m: &Mesh, files: &[&str]| {
        let mut a = vec![
            "proxy-config",
            "cluster",
            "sleep.demo",
            "--fqdn",
            WEB,
            "-o",
            "json",
            "-f",
        ];
        a.extend_from_slice(files);
        let out = m.run(&a);
        assert!(out.status.success(), "offline proxy-config: {}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("offline json")
    };

    // Live and offline render the same cluster identically, before and after a change.
    let before = live_cluster(&m);
    assert!(
        before.as_array().is_some_and(|a| !a.is_empty()),
        "no cluster for {WEB}: {before}"
    );
    assert_eq!(before, offline_cluster(&m, &["mesh.yaml"]));
    let out = m.cmd("apply", &["-f", "dr.yaml"]);
    assert!(out.status.success(), "apply: {}", text(&out));
    let with_dr = live_cluster(&m);
    assert_ne!(
        with_dr, before,
        "the DestinationRule did not reach the proxy"
    );
    assert!(
        with_dr.to_string().contains("\"maxPendingRequests\":7"),
        "{with_dr}"
    );
    assert_eq!(with_dr, offline_cluster(&m, &["mesh.yaml", "dr.yaml"]));
    // The short table works live too.
    let out = m.cmd(
        "proxy-config",
        &["cluster", "sleep", "-n", "demo", "--fqdn", WEB],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(WEB),
        "{}",
        text(&out)
    );

    // delete: kubectl's line, pushed, and the proxy is back to the state without it.
    let out = m.cmd("delete", &["-f", "dr.yaml"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "destinationrule.networking.istio.io \"web\" deleted\n"
    );
    assert_eq!(live_cluster(&m), before);
    let out = m.cmd("get", &["destinationrule", "-A", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // Deleting what does not exist: kubectl's NotFound, exit 1 — and atomically: the
    // VirtualService in the same input stays.
    let out = m.cmd("apply", &["-f", "vs.yaml"]);
    assert!(out.status.success(), "apply vs: {}", text(&out));
    let both = format!("{REDIRECT_VS}\n---\n{POOL_DR}");
    let out = run_stdin(&m, &["delete", "-f", "-"], &both);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("Error from server (NotFound): error when deleting \"-\": destinationrules.networking.istio.io \"web\" not found"),
        "{err}"
    );
    let out = m.cmd("get", &["virtualservice", "-n", "demo", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    // From stdin, existing objects only: deleted.
    let out = run_stdin(&m, &["delete", "-f", "-"], REDIRECT_VS);
    assert!(out.status.success(), "delete -f -: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "virtualservice.networking.istio.io \"web\" deleted\n"
    );
    // Pods and Services cannot be deleted from a running mesh.
    std::fs::write(m.dir.join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  ports: [{port: 80}]\n").expect("write");
    let out = m.cmd("delete", &["-f", "svc.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fixed at `up`"),
        "{}",
        text(&out)
    );

    // proxy-stats reads the live proxy: the request counter of the cluster grows by one per
    // request sent through the sidecar.
    let stat = format!("cluster.outbound|80||{WEB}.upstream_rq_total");
    let read = |m: &Mesh| {
        let out = m.cmd(
            "proxy-stats",
            &[
                "sleep.demo",
                "--filter",
                "outbound\\|80\\|\\|web\\.demo\\..*upstream_rq_total",
            ],
        );
        assert!(out.status.success(), "proxy-stats: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            s.lines().all(|l| l.contains("upstream_rq_total")),
            "filter not applied: {s}"
        );
        stat_value(&s, &stat).unwrap_or(0)
    };
    let n0 = read(&m);
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "demo",
            "sleep",
            "--",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "http://web/count",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    poll(20, "upstream_rq_total to grow by one", || {
        (read(&m) == n0 + 1).then_some(())
    });

    // Live secrets: the workload certificate the sidecar really holds, with its identity.
    let out = m.cmd("proxy-config", &["secret", "sleep.demo", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let secrets: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let default = secrets
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "default"))
        .cloned()
        .unwrap_or_else(|| panic!("no default secret: {secrets}"));
    assert_eq!(default["state"], "ACTIVE", "{default}");
    assert!(
        default
            .to_string()
            .contains("spiffe://cluster.local/ns/demo/sa/default"),
        "{default}"
    );
    // A target without a proxy says so.
    let out = m.cmd("proxy-stats", &["plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

const TLS_INGRESS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "8080", --name, web]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  template:
    metadata: {labels: {istio: ingressgateway, app: istio-ingressgateway}}
    spec:
      containers:
      - {name: istio-proxy, image: auto, ports: [{containerPort: 8443}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: ["web.example.com"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: web.demo.svc.cluster.local, port: {number: 80}}
"#;

const TLS_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["web.example.com"]
    tls: {mode: SIMPLE, credentialName: web-cred}
"#;

/// A `kubernetes.io/tls` Secret `istio-system/web-cred` holding a fresh self-signed
/// certificate for web.example.com with subject CN=`cn` (made with the openssl CLI).
fn tls_secret(dir: &Path, cn: &str) -> String {
    let (key, crt) = (dir.join(format!("{cn}.key")), dir.join(format!("{cn}.crt")));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:web.example.com"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", text(&out));
    let b64 = |p: &Path| {
        let out = Command::new("base64")
            .args(["-w", "0"])
            .arg(p)
            .output()
            .expect("base64");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: web-cred, namespace: istio-system}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(&crt),
        b64(&key)
    )
}

/// The subject the ingress gateway presents on host loopback port `port` (None if the
/// handshake fails).
fn served_subject(port: u16) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 10 openssl s_client -connect 127.0.0.1:{port} -servername web.example.com </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl s_client");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && s.starts_with("subject")).then_some(s)
}

#[test]
fn gateway_credential_secrets_are_applied_and_deleted_live() {
    if !isthmus_local::testing::namespaces_available(
        "gateway_credential_secrets_are_applied_and_deleted_live",
    ) {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("isthmus-secret-certs-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let one = tls_secret(&tmp, "one.example.com");
    let two = tls_secret(&tmp, "two.example.com");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut m = Mesh::new("k", &format!("{TLS_INGRESS}---\n{TLS_GATEWAY}---\n{one}"));
    std::fs::write(m.dir.join("two.yaml"), &two).expect("write");
    std::fs::write(m.dir.join("gone.yaml"), format!("{TLS_GATEWAY}---\n{two}")).expect("write");
    let out = m.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let port = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ingress published on host loopback: 127.0.0.1:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no published ingress port:\n{stdout}"));
    let gw_pid = || m.pod("istio-ingressgateway")["containers"][0]["pid"].as_u64();
    let pid = gw_pid();
    assert!(pid.is_some(), "gateway not running");
    let subject = poll(30, "the gateway serves web-cred", || served_subject(port));
    assert!(subject.contains("one.example.com"), "{subject}");
    let curl = |cacert: &str| {
        Command::new("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(m.dir.join(cacert))
            .arg("--resolve")
            .arg(format!("web.example.com:{port}:127.0.0.1"))
            .arg(format!("https://web.example.com:{port}/tls"))
            .output()
            .expect("curl")
    };

    // Replacing the Secret (another key, CA and subject) reaches the gateway without a restart.
    let out = m.cmd("apply", &["-f", "two.yaml"]);
    assert!(out.status.success(), "apply secret: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "secret/web-cred configured\n"
    );
    let subject = poll(30, "the gateway serves the new certificate", || {
        served_subject(port).filter(|s| s.contains("two.example.com"))
    });
    assert!(subject.contains("CN"), "{subject}");
    assert_eq!(gw_pid(), pid, "the gateway was restarted");
    std::fs::write(m.dir.join("two.pem"), secret_cert(&two)).expect("write pem");
    let out = curl("two.pem");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );

    // The live secret table shows what the gateway holds.
    let out = m.cmd(
        "proxy-config",
        &[
            "secret",
            "deploy/istio-ingressgateway",
            "-n",
            "istio-system",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cred = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "kubernetes://web-cred"))
        .cloned()
        .unwrap_or_else(|| panic!("no kubernetes://web-cred: {v}"));
    assert_eq!(cred["state"], "ACTIVE", "{cred}");
    assert!(cred.to_string().contains("two.example.com"), "{cred}");
    assert!(
        !cred.to_string().contains("PRIVATE KEY"),
        "key leaked: {cred}"
    );

    // Deleting only the Secret: the gateway keeps its listener but is served no credential
    // (handshakes fail), and the live secret table says the credential is MISSING.
    let out = m.cmd("delete", &["-f", "two.yaml"]);
    assert!(out.status.success(), "delete secret: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "secret \"web-cred\" deleted\n"
    );
    poll(30, "handshakes fail without the Secret", || {
        served_subject(port).is_none().then_some(())
    });
    let out = m.cmd(
        "proxy-config",
        &[
            "secret",
            "deploy/istio-ingressgateway",
            "-n",
            "istio-system",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("kubernetes://web-cred") && l.contains("MISSING")),
        "{}",
        text(&out)
    );
    // Supplied again, it is served again — still the same gateway process.
    let out = m.cmd("apply", &["-f", "two.yaml"]);
    assert!(out.status.success(), "re-apply secret: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "secret/web-cred created\n"
    );
    poll(30, "the gateway serves the Secret again", || {
        served_subject(port).filter(|s| s.contains("two.example.com"))
    });

    // Deleting the Secret with the Gateway server that uses it (one atomic delete): the
    // gateway stops serving TLS, still without a restart, and holds no credential any more.
    let out = m.cmd("delete", &["-f", "gone.yaml"]);
    assert!(out.status.success(), "delete secret: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "gateway.networking.istio.io \"gw\" deleted\nsecret \"web-cred\" deleted\n"
    );
    poll(
        30,
        "handshakes fail without the Gateway and its Secret",
        || served_subject(port).is_none().then_some(()),
    );
    let out = m.cmd(
        "proxy-config",
        &[
            "secret",
            "deploy/istio-ingressgateway",
            "-n",
            "istio-system",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !table.contains("kubernetes://web-cred") && table.contains("ROOTCA"),
        "{}",
        text(&out)
    );
    let out = m.cmd("get", &["secret", "-n", "istio-system", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(gw_pid(), pid, "the gateway was restarted");
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

/// The PEM certificate inside a Secret manifest made by [`tls_secret`].
fn secret_cert(manifest: &str) -> Vec<u8> {
    let b64 = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("tls.crt: "))
        .expect("tls.crt");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo {b64} | base64 -d"))
        .output()
        .expect("base64 -d");
    out.stdout
}

const ROTATION: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-tcp, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: tcp, port: 9000, targetPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  containers:
  - name: echo
    command: ["@ISTHMUS@", echo, --http-port, "8080", --name, web]
    ports: [{containerPort: 8080}]
  - name: echo-tcp
    command: ["@ISTHMUS@", echo, --http-port, "9090", --name, web-tcp]
    ports: [{containerPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: demo, labels: {app: sleep}}
spec:
  containers:
  - {name: sleep, command: [sleep, infinity]}
"#;

/// Serial of the workload certificate (`default`) the running sidecar of `pod` holds.
fn live_serial(m: &Mesh, pod: &str) -> String {
    let out = m.cmd("proxy-config", &["secret", pod, "-n", "demo", "-o", "json"]);
    assert!(out.status.success(), "proxy-config secret: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "default"))
        .and_then(|s| s["certs"][0]["serial"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no live default certificate: {v}"))
}

#[test]
fn workload_certificates_rotate_live_and_open_connections_survive() {
    if !isthmus_local::testing::namespaces_available(
        "workload_certificates_rotate_live_and_open_connections_survive",
    ) {
        return;
    }
    let mut m = Mesh::new("l", ROTATION);
    // 30s certificates: rotated at half their life (about every 12-15s).
    let out = m.cmd(
        "up",
        &[
            "mesh.yaml",
            "--profile",
            "minimal",
            "--workload-cert-ttl",
            "30s",
        ],
    );
    m.up = out.status.success();
    assert!(m.up, "up: {}", text(&out));
    let proxy_pids = |m: &Mesh| {
        (
            m.pod("sleep")["containers"][1]["pid"].as_u64(),
            m.pod("web")["containers"][2]["pid"].as_u64(),
        )
    };
    let pids = proxy_pids(&m);
    assert!(pids.0.is_some() && pids.1.is_some(), "{pids:?}");
    let flag = m.dir.join("go");
    // A TCP connection through both sidecars (mTLS between them) that stays open until the
    // test creates `flag`: an HTTP request to the echo server whose body is sent in two parts.
    let script = format!(
        "exec 3<>/dev/tcp/web-tcp/9000 || exit 9; printf 'POST /long HTTP/1.1\\r\\nHost: web-tcp\\r\\nContent-Length: 4\\r\\nConnection: close\\r\\n\\r\\nab' >&3; while [ ! -e {} ]; do sleep 0.2; done; printf cd >&3; cat <&3",
        flag.display()
    );
    // Each attempt: wait for a rotation, open the connection right after it (a full half
    // lifetime before the next one), check no rotation slipped in while it was being opened,
    // then wait for the next rotation with the connection open.
    let mut attempt = 0;
    let (client, first) = loop {
        attempt += 1;
        assert!(
            attempt <= 3,
            "could not open a connection between two rotations"
        );
        let s0 = live_serial(&m, "sleep");
        let s1 = poll(60, "the sidecar's certificate to rotate", || {
            let s = live_serial(&m, "sleep");
            (s != s0).then_some(s)
        });
        let _ = std::fs::remove_file(&flag);
        let client = Command::new(BIN)
            .args([
                "exec", "--name", &m.name, "-n", "demo", "sleep", "--", "bash", "-c", &script,
            ])
            .env("ISTHMUS_STATE_DIR", &m.root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stat = "cluster.outbound|9000||web-tcp.demo.svc.cluster.local.upstream_cx_active";
        poll(20, "the long-lived connection to be open", || {
            let out = m.cmd(
                "proxy-stats",
                &["sleep.demo", "--filter", "web-tcp.*upstream_cx_active"],
            );
            (stat_value(&String::from_utf8_lossy(&out.stdout), stat) == Some(1)).then_some(())
        });
        if live_serial(&m, "sleep") == s1 {
            break (client, s1);
        }
        // A rotation raced the connection setup: close it and try on the next one.
        std::fs::write(&flag, "").expect("flag");
        let _ = client.wait_with_output();
    };
    let second = poll(60, "the certificate to rotate again", || {
        let s = live_serial(&m, "sleep");
        (s != first).then_some(s)
    });
    assert_ne!(second, first);
    // New connections use the new certificate: traffic keeps flowing.
    let out = m.cmd(
        "exec",
        &[
            "-n",
            "demo",
            "sleep",
            "--",
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://web/after-rotation",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // The connection opened before the rotation still carries data both ways.
    std::fs::write(&flag, "").expect("flag");
    let out = client.wait_with_output().expect("client");
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "long-lived connection: {}",
        text(&out)
    );
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("abcd"), "{body}");
    assert_eq!(proxy_pids(&m), pids, "proxies restarted");
    // The web side rotated too (its own identity, its own schedule).
    let out = m.cmd("proxy-config", &["secret", "web.demo"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("default") && l.contains("ACTIVE") && l.contains("true")),
        "{}",
        text(&out)
    );
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

#[test]
fn down_all_cleans_its_own_state_root_and_nothing_else() {
    if !isthmus_local::testing::namespaces_available(
        "down_all_cleans_its_own_state_root_and_nothing_else",
    ) {
        return;
    }
    // Two meshes, each with its own state root: `down --all` of one root must not see the other.
    let mut crashed = Mesh::new("m", TWO_PODS);
    let mut other = Mesh::new("n", TWO_PODS);
    let out = crashed.up();
    assert!(out.status.success(), "up: {}", text(&out));
    let out = other.up();
    assert!(out.status.success(), "up other: {}", text(&out));
    let pids: Vec<u64> = crashed.pods()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["containers"][0]["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2);
    let node = format!("isth-{}-node", crashed.name);
    let dns = netns_pids(&node);
    let sup: u64 = std::fs::read_to_string(crashed.root.join(&crashed.name).join("pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    nix_kill(sup);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(sup) {
        assert!(Instant::now() < deadline, "supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Leftovers of a crashed run: pods, DNS and namespaces are still there.
    assert_eq!(crashed.netns().len(), 3);
    assert!(pids.iter().chain(&dns).all(|p| pid_alive(*p)));

    let out = crashed.run(&["down", "--all"]);
    assert!(out.status.success(), "down --all: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "mesh \"{}\" down (leftovers of a crashed run)",
            crashed.name
        )),
        "{stdout}"
    );
    crashed.up = false;
    assert_eq!(crashed.netns(), Vec::<String>::new());
    for p in pids.iter().chain(&dns) {
        assert!(!pid_alive(*p), "process {p} survived down --all");
    }
    assert!(!crashed.root.join(&crashed.name).exists(), "state dir left");
    // The other root's mesh is untouched (and named as not ours).
    assert!(
        stdout.contains(&format!("mesh \"{}\"", other.name)) && stdout.contains("left alone"),
        "{stdout}"
    );
    assert_eq!(other.netns().len(), 3);
    let out = other.cmd("status", &[]);
    assert!(out.status.success(), "other mesh hurt: {}", text(&out));
    assert_eq!(other.pod("web")["status"], "Running");
    // A second `down --all` finds nothing to do.
    let out = crashed.run(&["down", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to take down"),
        "{}",
        text(&out)
    );
    let out = other.cmd("down", &[]);
    assert!(out.status.success(), "down other: {}", text(&out));
    other.up = false;
}
