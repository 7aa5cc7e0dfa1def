//! Offline commands on the bundled examples, as a user types them: proxy-config piped through
//! the real jq with the seeds' filters, and analyze's exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn isthmus(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run isthmus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn jq(filter: &str, input: &str) -> String {
    let mut child = Command::new("jq")
        .args(["-c", filter])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("jq is installed (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jq failed on {filter}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hop1_pool_compiles_into_the_calling_sidecar() {
    let (code, json, err) = isthmus(&[
        "proxy-config",
        "cluster",
        "deploy/sleep",
        "-n",
        "mesh-test",
        "--fqdn",
        "istio-egressgateway.istio-system.svc.cluster.local",
        "-f",
        "examples/egress-double-mtls",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = jq(".[] | select(.name == \"outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local\") | {name, max: .circuitBreakers.thresholds[0].maxConnections, ka: .upstreamConnectionOptions.tcpKeepalive, sni: .transportSocket.typedConfig.sni, sds: [.transportSocket.typedConfig.commonTlsContext.tlsCertificateSdsSecretConfigs[].name]}", &json);
    assert_eq!(
        out.trim(),
        r#"{"name":"outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local","max":1024,"ka":{"keepaliveProbes":3,"keepaliveTime":300,"keepaliveInterval":30},"sni":"api.partner.example.com","sds":["default"]}"#
    );
}

#[test]
fn hop2_pool_and_mutual_origination_compile_into_the_gateway() {
    let (code, json, err) = isthmus(&[
        "proxy-config",
        "cluster",
        "deploy/istio-egressgateway",
        "-n",
        "istio-system",
        "--fqdn",
        "api.partner.example.com",
        "--port",
        "443",
        "-f",
        "examples/egress-double-mtls",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = jq(".[] | {name, max: .circuitBreakers.thresholds[0].maxConnections, ct: .connectTimeout, sds: [.transportSocket.typedConfig.commonTlsContext.tlsCertificateSdsSecretConfigs[].name], ca: .transportSocket.typedConfig.commonTlsContext.combinedValidationContext.validationContextSdsSecretConfig.name, san: .transportSocket.typedConfig.commonTlsContext.combinedValidationContext.defaultValidationContext.matchSubjectAltNames}", &json);
    assert_eq!(
        out.trim(),
        r#"{"name":"outbound|443||api.partner.example.com","max":4096,"ct":"3s","sds":["kubernetes://partner-client-credential"],"ca":"kubernetes://partner-client-credential-cacert","san":[{"exact":"api.partner.example.com"}]}"#
    );
}

#[test]
fn gateway_listener_requires_client_certificates() {
    let (code, json, err) = isthmus(&[
        "pc",
        "listener",
        "deploy/istio-egressgateway",
        "-n",
        "istio-system",
        "--port",
        "8443",
        "-f",
        "examples/egress-double-mtls",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = jq(".[] | {name, sn: .filterChains[0].filterChainMatch.serverNames, req: .filterChains[0].transportSocket.typedConfig.requireClientCertificate}", &json);
    assert_eq!(
        out.trim(),
        r#"{"name":"0.0.0.0_8443","sn":["api.partner.example.com"],"req":true}"#
    );
}

#[test]
fn unknown_target_is_a_clear_error() {
    let (code, _, err) = isthmus(&[
        "pc",
        "cluster",
        "deploy/nope",
        "-n",
        "mesh-test",
        "-f",
        "examples/egress-double-mtls",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn analyze_reports_istio_codes_and_honours_the_failure_threshold() {
    let (code, out, err) = isthmus(&["analyze", "examples/egress-double-mtls"]);
    assert_eq!(code, 0, "warnings only: {out}{err}");
    assert!(out.contains("Warning [IST0129] (DestinationRule istio-system/partner-originate-mtls examples/egress-double-mtls/40-egress-config.yaml:"), "{out}");
    let (code, _, _) = isthmus(&[
        "analyze",
        "--failure-threshold",
        "Warning",
        "examples/egress-double-mtls",
    ]);
    assert_eq!(code, 1);
    let (code, json, _) = isthmus(&["analyze", "-o", "json", "examples/egress-double-mtls"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v.as_array().unwrap().iter().any(|m| m["code"] == "IST0129"));
}

/// Seed 001 G1: the ServiceEntry declares only 443, the app calls plain http:// on port 80, and
/// the mesh route still reaches the gateway: istiod gives VS hosts without a port-80 service a
/// vhost on the port-80 route anyway.
#[test]
fn port_80_mesh_route_to_a_host_declaring_only_443_goes_to_the_gateway() {
    let (code, json, err) = isthmus(&[
        "pc",
        "route",
        "deploy/sleep",
        "-n",
        "mesh-test",
        "--name",
        "80",
        "-f",
        "examples/egress-double-mtls",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = jq(".[] | .virtualHosts[] | select(.name == \"api.partner.example.com:80\") | {domains, c: [.routes[].route.cluster]}", &json);
    assert_eq!(
        out.trim(),
        r#"{"domains":["api.partner.example.com"],"c":["outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local"]}"#
    );
    assert!(
        !err.contains("RoutePortNotDeclared") && !err.contains("declares no HTTP port 80"),
        "{err}"
    );
}

/// A Sidecar's `workloadSelector.labels` scopes only the pods it selects (seed 003's
/// sidecar-scope check: the selected client's cluster list shrinks, others keep everything).
#[test]
fn sidecar_workload_selector_scopes_only_selected_pods() {
    let dir = std::env::temp_dir().join(format!("isthmus-sidecar-scope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.yaml"),
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: elsewhere}
spec: {selector: {app: other}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: app, labels: {app: a}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: app, labels: {app: b}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: only-a, namespace: app}
spec:
  workloadSelector:
    labels: {app: a}
  egress:
  - hosts: ["./*"]
"#,
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    let (code, a, err) = isthmus(&[
        "pc",
        "cluster",
        "a.app",
        "-f",
        d,
        "--fqdn",
        "other.elsewhere.svc.cluster.local",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, b, err) = isthmus(&[
        "pc",
        "cluster",
        "b.app",
        "-f",
        d,
        "--fqdn",
        "other.elsewhere.svc.cluster.local",
    ]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !a.contains("other.elsewhere.svc.cluster.local"),
        "pod a is scoped to its own namespace:\n{a}"
    );
    assert!(
        b.contains("other.elsewhere.svc.cluster.local"),
        "pod b is not selected and sees everything:\n{b}"
    );
}
