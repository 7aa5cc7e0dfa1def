//! Namespace end-to-end tests of `isthmus up / get / exec / logs / status / down` (root).
//!
//! Each test uses its own mesh name and state root, so they run in parallel with each other
//! and with other namespace tests. Without root/nftables they print a loud SKIPPED line, and
//! fail when CI=true (see `isthmus_local::testing::namespaces_available`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_isthmus");

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

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    // The sidecar's DNS proxy answers the ServiceEntry host with its auto-allocated VIP.
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
    let out = m.cmd("down", &[]);
    assert!(out.status.success(), "down: {}", text(&out));
    m.up = false;
}

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

    // Kill the control plane: proxies keep serving their last config. (The mesh DNS lives in
    // the supervisor too, so this goes to the cluster IP directly.)
    let out = m.cmd("get", &["svc", "-n", "demo", "-o", "json"]);
    let svcs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("svc json");
    let vip = svcs["items"][0]["cluster_ip"]
        .as_str()
        .expect("cluster ip")
        .to_string();
    let sup: u64 = std::fs::read_to_string(m.root.join(&m.name).join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    nix_kill(sup);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(sup) {
        assert!(Instant::now() < deadline, "supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
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
