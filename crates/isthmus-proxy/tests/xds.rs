//! `from_xds` on the compiler's golden bundles: every bundle converts and builds, and the
//! seed topologies carry real traffic once endpoints point at loopback backends.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use isthmus_proxy::config::{DataSource, Endpoint, Secret};
use isthmus_proxy::xds::from_xds;
use isthmus_proxy::{AccessLogSink, Proxy, ProxyConfig, ProxyOptions};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../isthmus-compile/tests/golden")
}

fn golden_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(golden_dir()) else {
        return out;
    };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            for f in files.flatten() {
                if f.path().extension().is_some_and(|e| e == "json") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

fn load(path: &std::path::Path) -> isthmus_xds::ProxyConfig {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replace certificate material with real rcgen PEM (the goldens carry placeholders) and add
/// the workload's `default`/`ROOTCA` SDS secrets, as the local agent would.
fn with_real_secrets(cfg: &mut ProxyConfig, ca: &Ca, hosts: &[&str]) {
    let leaf = ca.leaf(hosts, &["spiffe://cluster.local/ns/default/sa/default"]);
    for s in &mut cfg.secrets {
        if s.certificate_chain.is_some() {
            s.certificate_chain = Some(DataSource::InlineString(leaf.0.clone()));
            s.private_key = Some(DataSource::InlineString(leaf.1.clone()));
        }
        if s.trusted_ca.is_some() {
            s.trusted_ca = Some(DataSource::InlineString(ca.pem.clone()));
        }
    }
    if !cfg.secrets.iter().any(|s| s.name == "default") {
        cfg.secrets.push(Secret {
            name: "default".into(),
            certificate_chain: Some(DataSource::InlineString(leaf.0.clone())),
            private_key: Some(DataSource::InlineString(leaf.1.clone())),
            trusted_ca: None,
        });
    }
    if !cfg.secrets.iter().any(|s| s.name == "ROOTCA") {
        cfg.secrets.push(Secret {
            name: "ROOTCA".into(),
            certificate_chain: None,
            private_key: None,
            trusted_ca: Some(DataSource::InlineString(ca.pem.clone())),
        });
    }
}

fn loopback_listeners(cfg: &mut ProxyConfig) {
    for l in &mut cfg.listeners {
        if l.bind_to_port {
            l.address = "127.0.0.1:0".parse().unwrap();
        }
    }
}

#[test]
fn every_golden_bundle_converts_and_builds() {
    let files = golden_files();
    if files.is_empty() {
        let msg = format!(
            "SKIPPED: no golden bundles found at {}",
            golden_dir().display()
        );
        eprintln!("{msg}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        return;
    }
    let ca = Ca::new("mesh-root");
    for f in &files {
        let x = load(f);
        let mut cfg = from_xds(&x).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(cfg.listeners.len(), x.listeners.len(), "{}", f.display());
        assert_eq!(cfg.clusters.len(), x.clusters.len(), "{}", f.display());
        with_real_secrets(&mut cfg, &ca, &["example.com"]);
        loopback_listeners(&mut cfg);
        let stats = Arc::new(isthmus_proxy::stats::Stats::default());
        if let Err(e) = isthmus_proxy::runtime::Runtime::build(cfg, None, &stats) {
            panic!("{}: {e}", f.display());
        }
    }
}

async fn start_cfg(cfg: ProxyConfig) -> TestProxy {
    let (sink, log) = AccessLogSink::memory(isthmus_proxy::config::LogEncoding::Text);
    let mut o = ProxyOptions::new(cfg);
    o.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    o.access_log = Some(sink);
    TestProxy {
        proxy: Proxy::start(o).await.expect("proxy starts"),
        log,
    }
}

fn point_cluster(cfg: &mut ProxyConfig, name: &str, to: SocketAddr) {
    let c = cfg
        .clusters
        .iter_mut()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("cluster {name}"));
    c.endpoints = vec![Endpoint {
        address: to.ip().to_string(),
        port: to.port(),
        weight: 1,
    }];
    c.tls = None;
}

#[tokio::test]
async fn compiled_egress_gateway_passes_sni_through() {
    let path = golden_dir().join("egress-sni-passthrough/gateway.json");
    if !path.exists() {
        eprintln!("SKIPPED: {} not found", path.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"));
        return;
    }
    let partner_ca = Ca::new("partner-root");
    let backend = https_backend("httpbin.org", &partner_ca.leaf(&["httpbin.org"], &[]), None).await;
    let mut cfg = from_xds(&load(&path)).unwrap();
    with_real_secrets(
        &mut cfg,
        &partner_ca,
        &["istio-egressgateway.istio-system.svc.cluster.local"],
    );
    loopback_listeners(&mut cfg);
    point_cluster(&mut cfg, "outbound|443||httpbin.org", backend);
    let p = start_cfg(cfg).await;
    let port = p.addr("0.0.0.0_8443").port();
    let cafile = temp_file(&partner_ca.pem);
    let ok = curl(&s(&[
        "--cacert",
        cafile.path().to_str().unwrap(),
        "--resolve",
        &format!("httpbin.org:{port}:127.0.0.1"),
        &format!("https://httpbin.org:{port}/get"),
    ]))
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("sni=httpbin.org"), "{}", ok.stdout);
    let bad = curl(&s(&[
        "-k",
        "--resolve",
        &format!("evil.example:{port}:127.0.0.1"),
        &format!("https://evil.example:{port}/"),
    ]))
    .await;
    assert_eq!(bad.code, 35);
    let lines = p.wait_lines(2).await;
    let ok_line = lines.iter().find(|l| l.contains("httpbin.org")).unwrap();
    assert_eq!(fields(ok_line)[16], "outbound|443||httpbin.org");
    let nr = lines.iter().find(|l| l.contains("evil.example")).unwrap();
    assert_eq!(fields(nr)[3], "NR");
}

#[tokio::test]
async fn compiled_ingress_gateway_terminates_and_routes_first_match() {
    let path = golden_dir().join("ingress-termination/gateway.json");
    if !path.exists() {
        eprintln!("SKIPPED: {} not found", path.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"));
        return;
    }
    let ca = Ca::new("gw-root");
    let (hb, _) = http_backend("httpbin").await;
    let mut cfg = from_xds(&load(&path)).unwrap();
    with_real_secrets(&mut cfg, &ca, &["httpbin.example.com"]);
    loopback_listeners(&mut cfg);
    point_cluster(
        &mut cfg,
        "outbound|8000||httpbin.default.svc.cluster.local",
        hb,
    );
    let p = start_cfg(cfg).await;
    let https = p.addr("0.0.0.0_8443").port();
    let http = p.addr("0.0.0.0_8080").port();
    let cafile = temp_file(&ca.pem);
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        cafile.path().to_str().unwrap(),
        "--resolve",
        &format!("httpbin.example.com:{https}:127.0.0.1"),
        &format!("https://httpbin.example.com:{https}/status/418"),
    ]))
    .await;
    assert_eq!(o.stdout, "418", "{}", o.stderr);
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: httpbin.example.com",
        &format!("http://127.0.0.1:{http}/headers"),
    ]))
    .await;
    assert_eq!(o.stdout, "200");
    let o = curl(&s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: other.example.com",
        &format!("http://127.0.0.1:{http}/"),
    ]))
    .await;
    assert_eq!(o.stdout, "404");
    let lines = p.wait_lines(3).await;
    assert_eq!(fields(&lines[0])[20], "httpbin.example.com");
    assert_eq!(
        fields(&lines[0])[16],
        "outbound|8000||httpbin.default.svc.cluster.local"
    );
    assert_eq!(fields(&lines[2])[3], "NR");
}

#[test]
fn config_file_loader_accepts_compiled_bundles() {
    let Some(path) = golden_files().into_iter().next() else {
        eprintln!("SKIPPED: no golden bundles");
        assert!(std::env::var("CI").as_deref() != Ok("true"));
        return;
    };
    let (cfg, raw) = isthmus_proxy::load_config_file_with_dump(&path).unwrap();
    assert!(!cfg.listeners.is_empty());
    assert_eq!(raw["version"], load(&path).version);
}

/// The documented example parses and passes structural validation (its certificate files
/// only exist on a real gateway, so the TLS build step is not run here).
#[test]
fn example_runtime_config_is_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/egress-gateway.json");
    let cfg = isthmus_proxy::load_config_file(&path).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.listeners.len(), 2);
    let c = cfg
        .clusters
        .iter()
        .find(|c| c.name == "outbound|443||api.partner.example")
        .unwrap();
    assert_eq!(c.circuit_breakers.max_connections, 222);
    assert_eq!(
        c.tcp_keepalive.as_ref().unwrap().keepalive_time,
        Some(isthmus_proxy::config::Dur::from_secs(300))
    );
    // Round trip keeps it identical.
    let again: ProxyConfig = serde_json::from_value(serde_json::to_value(&cfg).unwrap()).unwrap();
    assert_eq!(again, cfg);
}

/// The seed's double-mTLS egress gateway, compiled, with its `credentialName` Secret not
/// served (e.g. it lives in another namespace): the config is accepted, the partner cluster
/// fails with Envoy's "Secret is not supplied by SDS", and once the Secret is served the same
/// cluster (not rebuilt) completes the MUTUAL handshake with the partner.
#[tokio::test]
async fn compiled_double_mtls_gateway_without_credential_is_accepted_and_waits_for_it() {
    let path = golden_dir().join("double-mtls/gateway.json");
    if !path.exists() {
        let msg = format!("SKIPPED: {} not found", path.display());
        eprintln!("{msg}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        return;
    }
    const CRED: &str = "kubernetes://partner-client-credential";
    const PARTNER: &str = "outbound|443||api.partner.example.com";
    let ca = Ca::new("partner-root");
    let partner = https_backend(
        "partner",
        &ca.leaf(&["api.partner.example.com"], &[]),
        Some(&ca),
    )
    .await;
    let mut full = from_xds(&load(&path)).unwrap();
    with_real_secrets(&mut full, &ca, &["gateway.example"]);
    loopback_listeners(&mut full);
    let c = full
        .clusters
        .iter_mut()
        .find(|c| c.name == PARTNER)
        .expect("partner cluster");
    c.endpoints = vec![Endpoint {
        address: partner.ip().to_string(),
        port: partner.port(),
        weight: 1,
    }];
    assert_eq!(
        c.tls.as_ref().and_then(|t| t.certificate.as_deref()),
        Some(CRED)
    );
    let mut without = full.clone();
    without.secrets.retain(|s| s.name != CRED);

    let stats = Arc::new(isthmus_proxy::stats::Stats::default());
    let rt = isthmus_proxy::runtime::Runtime::build(without, None, &stats)
        .expect("a missing credential is not a NACK");
    let cluster = rt.clusters[PARTNER].clone();
    let err = match cluster.connect(partner, None).await {
        Err(e) => e,
        Ok(_) => panic!("connected without the client certificate"),
    };
    assert_eq!(err.flag(), "UF");
    assert_eq!(
        err.transport_reason().as_deref(),
        Some("TLS_error:_Secret_is_not_supplied_by_SDS")
    );
    assert_eq!(
        stats.get(&format!(
            "cluster.{PARTNER}.client_ssl_socket_factory.upstream_context_secrets_not_ready"
        )),
        1
    );

    let rt2 = isthmus_proxy::runtime::Runtime::build(full, Some(&rt), &stats).expect("ACK");
    assert!(
        Arc::ptr_eq(&rt2.clusters[PARTNER], &cluster),
        "the cluster is kept, only the secret arrived"
    );
    if let Err(e) = cluster.connect(partner, None).await {
        panic!("MUTUAL handshake after the secret arrived: {e}");
    }
}
