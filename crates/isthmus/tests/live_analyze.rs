//! `isthmus analyze --name MESH` and `isthmus trace --name MESH [--confirm]` against a real
//! running mesh (root, network namespaces): the bundled egress-double-mtls example (seed 001)
//! is brought up under a unique name, analysed and traced from its live config, the traced
//! request is run and confirmed from the proxies' access logs, and a live `apply` changes
//! what analysis and trace report. The mesh is always taken down (Drop).
//! Without root/nftables the test prints a loud SKIPPED line, and fails when CI=true.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Output};

/// A mesh brought up for one test, with its own name and state root; down on drop.
struct Mesh {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    up: bool,
}

impl Mesh {
    fn up(example: &str, tag: &str) -> Mesh {
        let name = format!("la{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("isthmus-live-analyze-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        copy_example(&repo().join("examples").join(example), &dir.join("mesh"));
        let mut m = Mesh {
            name,
            root: dir.join("state"),
            dir,
            up: false,
        };
        let out = m.cmd("up", &["mesh"]);
        m.up = out.status.success();
        assert!(m.up, "up {example}: {}", text(&out));
        m
    }

    fn run(&self, args: &[&str]) -> Output {
        let start = std::time::Instant::now();
        let out = Command::new(BIN)
            .args(args)
            .env("ISTHMUS_STATE_DIR", &self.root)
            .current_dir(&self.dir)
            .output()
            .expect("run isthmus");
        // Timings help tell a slow machine from a hang when a run fails in CI.
        eprintln!(
            "[{:>6.1}s] isthmus {}",
            start.elapsed().as_secs_f64(),
            args.join(" ")
        );
        out
    }

    fn cmd(&self, sub: &str, args: &[&str]) -> Output {
        let mut a = vec![sub, "--name", &self.name];
        a.extend_from_slice(args);
        self.run(&a)
    }

    fn write(&self, file: &str, body: &str) -> String {
        let p = self.dir.join(file);
        std::fs::write(&p, body).expect("write");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.up {
            let out = self.cmd("down", &[]);
            if !out.status.success() {
                eprintln!("down {} failed: {}", self.name, text(&out));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Level [CODE] (Kind ns/name FILE:LINE) text` without the file location, so messages from
/// files and from a live mesh (which has no files) compare equal.
fn without_location(line: &str) -> String {
    let Some(open) = line.find(" (") else {
        return line.to_string();
    };
    let Some(close) = line[open..].find(')').map(|i| open + i) else {
        return line.to_string();
    };
    let inner: Vec<&str> = line[open + 2..close].split(' ').collect();
    if inner.len() == 3 {
        format!(
            "{} ({} {}){}",
            &line[..open],
            inner[0],
            inner[1],
            &line[close + 1..]
        )
    } else {
        line.to_string()
    }
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(without_location)
        .collect()
}

/// The hop-2 DR of seed 001 without its identity pin (subjectAltNames): valid config that
/// ISM0016 reports.
const DR_NO_SAN: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: partner-originate-mtls
  namespace: istio-system
spec:
  host: api.partner.example.com
  exportTo: [\".\"]
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls:
        mode: MUTUAL
        credentialName: partner-client-credential
        sni: api.partner.example.com
";

#[test]
fn live_analyze_and_trace_confirm_on_egress_double_mtls() {
    // Offline first (no root needed): the reference output for the live comparison.
    let files = repo().join("examples/egress-double-mtls");
    let files = files.to_string_lossy().to_string();
    let offline = Command::new(BIN)
        .args(["analyze", "-A", &files])
        .output()
        .expect("run isthmus");
    let offline_lines = lines(&offline);
    assert!(!offline_lines.is_empty(), "{}", text(&offline));
    if !isthmus_local::testing::namespaces_available(
        "live_analyze_and_trace_confirm_on_egress_double_mtls",
    ) {
        return;
    }
    let m = Mesh::up("egress-double-mtls", "dm");

    // 1. analyze --name: the files' messages, from the supervisor's objects (no file:line);
    // anything more can only be about the objects the demo profile added.
    let live = m.cmd("analyze", &["-A"]);
    assert_eq!(live.status.code(), offline.status.code(), "{}", text(&live));
    let live_lines = lines(&live);
    for l in &offline_lines {
        if l.starts_with('\u{2714}') {
            continue;
        }
        assert!(
            live_lines.contains(l),
            "live analysis lacks {l:?}:\n{}",
            text(&live)
        );
    }
    for l in &live_lines {
        assert!(
            !l.contains(".yaml:"),
            "live messages carry no file location: {l}"
        );
    }
    // Default scope is namespace `default`, as istioctl against a cluster.
    let scoped = m.cmd("analyze", &["-n", "mesh-test"]);
    for l in lines(&scoped) {
        assert!(
            l.starts_with('\u{2714}') || l.contains(" mesh-test/"),
            "-n mesh-test reported another namespace: {l}"
        );
    }
    let default_ns = m.cmd("analyze", &[]);
    let out = String::from_utf8_lossy(&default_ns.stdout).to_string();
    assert!(
        out.contains("No validation issues found when analyzing namespace: default.")
            || out.lines().all(|l| l.contains(" default/")),
        "{}",
        text(&default_ns)
    );

    // 2. trace --name --confirm: the request runs in sleep's pod; hop 1 (sleep's sidecar) and
    // hop 2 (the egress gateway) each logged the predicted cluster.
    let t = m.cmd(
        "trace",
        &[
            "-n",
            "mesh-test",
            "deploy/sleep",
            "http://api.partner.example.com/",
            "--confirm",
        ],
    );
    let out = String::from_utf8_lossy(&t.stdout).to_string();
    assert_eq!(t.status.code(), Some(0), "{}", text(&t));
    assert!(
        out.contains("CONFIRMED: the proxies' access logs show the predicted path (2 hop(s))."),
        "{out}"
    );
    assert!(
        out.contains("  client:    ok — predicted an answer from"),
        "{out}"
    );
    let hop1 = out
        .lines()
        .find(|l| l.starts_with("  hop 1 mesh-test/sleep"))
        .unwrap_or_else(|| panic!("no hop 1 check:\n{out}"));
    assert!(
        hop1.contains("(sidecar outbound): confirmed — same cluster"),
        "{hop1}"
    );
    let hop2 = out
        .lines()
        .find(|l| l.starts_with("  hop 2 istio-system/istio-egressgateway"))
        .unwrap_or_else(|| panic!("no hop 2 check:\n{out}"));
    assert!(
        hop2.contains("(gateway): confirmed — same cluster"),
        "{hop2}"
    );
    assert!(
        out.contains(
            "logged    \"GET /\" 200 - via_upstream cluster=outbound|443||api.partner.example.com"
        ),
        "{out}"
    );
    // The same as JSON, with the confirmation attached to the trace.
    let j = m.cmd(
        "trace",
        &[
            "-n",
            "mesh-test",
            "deploy/sleep",
            "http://api.partner.example.com/",
            "--confirm",
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_slice(&j.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&j)));
    assert_eq!(v["confirmation"]["agrees"], true, "{v}");
    assert_eq!(
        v["confirmation"]["hops"][1]["logged"]["upstream_cluster"],
        "outbound|443||api.partner.example.com",
        "{v}"
    );
    assert_eq!(v["confirmation"]["client"]["http_code"], "200", "{v}");

    // 3. A request that never reaches a proxy (the name does not resolve): the predicted hop
    // logged nothing, and the confirmation fails loudly.
    let bad = m.cmd(
        "trace",
        &[
            "-n",
            "mesh-test",
            "deploy/sleep",
            "http://nothing.invalid/",
            "--confirm",
            "--confirm-timeout",
            "5",
        ],
    );
    let out = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        out.contains("): MISSING — predicted on the path, but this proxy logged nothing"),
        "{out}"
    );
    assert!(out.contains("CONFIRM FAILED"), "{out}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("error: CONFIRM FAILED"),
        "{}",
        text(&bad)
    );

    // 4. Live config: after `apply`, analysis reports what the mesh now runs.
    assert!(
        !live_lines.iter().any(|l| l.contains("[ISM0016]")),
        "{live_lines:?}"
    );
    let f = m.write("dr-no-san.yaml", DR_NO_SAN);
    let applied = m.cmd("apply", &["-f", &f, "--timeout", "90"]);
    assert!(applied.status.success(), "{}", text(&applied));
    let after = m.cmd("analyze", &["-A"]);
    let after_lines = lines(&after);
    assert!(
        after_lines.iter().any(|l| l.starts_with(
            "Warning [ISM0016] (DestinationRule istio-system/partner-originate-mtls) trafficPolicy.portLevelSettings[0].tls originates MUTUAL TLS to api.partner.example.com without subjectAltNames"
        )),
        "{}",
        text(&after)
    );
    // The path itself is unchanged and still confirmed.
    let t = m.cmd(
        "trace",
        &[
            "-n",
            "mesh-test",
            "deploy/sleep",
            "http://api.partner.example.com/",
            "--confirm",
        ],
    );
    assert_eq!(t.status.code(), Some(0), "{}", text(&t));

    // 5. The seed's bypass trap, live: without the mesh route the sidecar sends the call out
    // through PassthroughCluster. Trace predicts the bypass (exit 1), and the logs confirm it:
    // the sidecar logged PassthroughCluster and the egress gateway logged nothing.
    let f = m.write("vs-without-mesh-route.yaml", VS_WITHOUT_MESH_ROUTE);
    let applied = m.cmd("apply", &["-f", &f, "--timeout", "90"]);
    assert!(applied.status.success(), "{}", text(&applied));
    let t = m.cmd(
        "trace",
        &[
            "-n",
            "mesh-test",
            "deploy/sleep",
            "http://api.partner.example.com/",
            "--confirm",
        ],
    );
    let out = String::from_utf8_lossy(&t.stdout).to_string();
    assert_eq!(t.status.code(), Some(1), "{}", text(&t));
    assert!(out.contains("RESULT: BYPASS"), "{out}");
    assert!(out.contains("cluster=PassthroughCluster"), "{out}");
    assert!(!out.contains("UNPREDICTED"), "{out}");
    assert!(
        out.contains("CONFIRMED: the proxies' access logs show the predicted path (1 hop(s))."),
        "{out}"
    );
}

/// Predicted failures confirmed live (seeds 003/004, registry-only example): REGISTRY_ONLY's
/// block_all answers 502 at the sidecar and HTTPS to an unregistered host dies in
/// BlackHoleCluster (curl exit 35); the registered host goes through the egress gateway.
#[test]
fn live_trace_confirm_registry_only_failures_and_gateway_path() {
    if !isthmus_local::testing::namespaces_available(
        "live_trace_confirm_registry_only_failures_and_gateway_path",
    ) {
        return;
    }
    let m = Mesh::up("registry-only", "ro");
    let trace = |url: &str| {
        let t = m.cmd("trace", &["-n", "demo", "sleep", url, "--confirm"]);
        (
            t.status.code(),
            String::from_utf8_lossy(&t.stdout).to_string(),
            text(&t),
        )
    };
    let (code, out, all) = trace("http://api.partner.example/registered");
    assert_eq!(code, Some(0), "{all}");
    assert!(
        out.contains("CONFIRMED: the proxies' access logs show the predicted path (2 hop(s))."),
        "{all}"
    );
    assert!(
        out.contains(
            "  client:    ok — predicted an answer from api.partner.example:80, got HTTP 200"
        ),
        "{all}"
    );
    assert!(
        out.contains("cluster=outbound|80||api.partner.example"),
        "{all}"
    );

    let (code, out, all) = trace("http://unregistered.example/blocked");
    assert_eq!(code, Some(1), "{all}");
    assert!(
        out.contains("  client:    ok — predicted HTTP 502, got HTTP 502"),
        "{all}"
    );
    assert!(
        out.contains("(sidecar outbound): confirmed — logged 502 as predicted"),
        "{all}"
    );
    assert!(out.contains("CONFIRMED"), "{all}");

    let (code, out, all) = trace("https://unregistered.example/blocked");
    assert_eq!(code, Some(1), "{all}");
    assert!(
        out.contains("  client:    ok — predicted curl exit 35, got curl exit 35"),
        "{all}"
    );
    assert!(
        out.contains("confirmed — logged BlackHoleCluster as predicted"),
        "{all}"
    );
    assert!(out.contains("CONFIRMED"), "{all}");
    // HTTPS carries no request id the proxies can see; the egress gateway must stay silent.
    assert!(!out.contains("UNPREDICTED"), "{all}");
}

/// Seed 001's VirtualService without its mesh route (the bypass trap).
const VS_WITHOUT_MESH_ROUTE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: partner-via-egress
  namespace: istio-system
spec:
  hosts: [api.partner.example.com]
  gateways: [istio-system/egress-partner]
  http:
  - match:
    - gateways: [istio-system/egress-partner]
      port: 8443
    route:
    - destination:
        host: api.partner.example.com
        port: {number: 443}
      weight: 100
";

/// A mesh started with `--mesh-config FILE` (no `istio` ConfigMap among its objects): live
/// trace and analyze must use the mesh config the control plane compiles with, reported by
/// the supervisor — here REGISTRY_ONLY, so an unregistered host is predicted to hit block_all.
#[test]
fn live_trace_uses_the_mesh_config_file_given_to_up() {
    if !isthmus_local::testing::namespaces_available(
        "live_trace_uses_the_mesh_config_file_given_to_up",
    ) {
        return;
    }
    let name = format!("la{}mc", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("isthmus-live-analyze-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    copy_example(&repo().join("examples/registry-only"), &dir.join("mesh"));
    // Move the mesh config from the `istio` ConfigMap to a --mesh-config file.
    let cm = dir.join("mesh/00-mesh.yaml");
    let manifest = std::fs::read_to_string(&cm).expect("read 00-mesh.yaml");
    let (config_map, rest) = manifest
        .split_once("\n---\n")
        .expect("00-mesh.yaml starts with the istio ConfigMap");
    assert!(config_map.contains("kind: ConfigMap"), "{config_map}");
    std::fs::write(&cm, rest).expect("write 00-mesh.yaml");
    std::fs::write(
        dir.join("mesh-config.yaml"),
        "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\naccessLogFile: /dev/stdout\n",
    )
    .expect("write mesh-config.yaml");
    let mut m = Mesh {
        name,
        root: dir.join("state"),
        dir,
        up: false,
    };
    let out = m.cmd("up", &["mesh", "--mesh-config", "mesh-config.yaml"]);
    m.up = out.status.success();
    assert!(m.up, "up: {}", text(&out));

    let t = m.cmd(
        "trace",
        &["-n", "demo", "sleep", "http://unregistered.example/blocked"],
    );
    let all = text(&t);
    assert!(!all.contains("mesh config"), "no fallback note: {all}");
    assert!(
        all.contains("RESULT: FAILS at demo/sleep (sidecar outbound): 502"),
        "REGISTRY_ONLY from the --mesh-config file: {all}"
    );
    assert!(all.contains("vhost:     block_all"), "{all}");

    // The same request really is blocked (the prediction matches the running proxies).
    let t = m.cmd(
        "trace",
        &[
            "-n",
            "demo",
            "sleep",
            "http://unregistered.example/blocked",
            "--confirm",
        ],
    );
    let all = text(&t);
    assert!(
        all.contains("  client:    ok — predicted HTTP 502, got HTTP 502"),
        "{all}"
    );
}
