//! The echo server over real HTTP and HTTPS with the real `curl` client, on loopback.

use std::path::Path;
use std::process::Output;

use isthmus_local::echo::{EchoConfig, EchoServer, EchoTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}

fn write(dir: &Path, name: &str, data: &str) {
    std::fs::write(dir.join(name), data).expect("write pem");
}

/// A CA, a server certificate for `echo.example`, and a client certificate with a SPIFFE URI.
fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tmp");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "isthmus test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let srv_key = KeyPair::generate().expect("key");
    let mut srv = CertificateParams::new(vec!["echo.example".to_string()]).expect("params");
    srv.distinguished_name
        .push(DnType::CommonName, "echo.example");
    let srv_cert = srv.signed_by(&srv_key, &issuer).expect("server cert");

    let cli_key = KeyPair::generate().expect("key");
    let mut cli = CertificateParams::new(Vec::<String>::new()).expect("params");
    cli.distinguished_name
        .push(DnType::CommonName, "sleep-client");
    cli.distinguished_name
        .push(DnType::OrganizationName, "isthmus");
    cli.subject_alt_names = vec![
        SanType::URI(
            "spiffe://cluster.local/ns/default/sa/sleep"
                .try_into()
                .expect("uri"),
        ),
        SanType::DnsName("client.example".try_into().expect("dns")),
    ];
    let cli_cert = cli.signed_by(&cli_key, &issuer).expect("client cert");

    write(dir.path(), "ca.pem", &ca.pem());
    write(dir.path(), "server.pem", &srv_cert.pem());
    write(dir.path(), "server.key", &srv_key.serialize_pem());
    write(dir.path(), "client.pem", &cli_cert.pem());
    write(dir.path(), "client.key", &cli_key.serialize_pem());
    Pki { dir }
}

async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .output()
        .await
        .expect("curl is installed")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_http_reports_request_and_honours_status_and_delay() {
    let srv = EchoServer::start(EchoConfig {
        name: "partner".into(),
        http: vec!["127.0.0.1:0".parse().expect("addr")],
        ..Default::default()
    })
    .await
    .expect("start");
    let port = srv.http_addrs()[0].port();
    let url = |p: &str| format!("http://api.partner.example:{port}{p}");
    let resolve = format!("api.partner.example:{port}:127.0.0.1");
    let out = curl(&[
        "--resolve",
        &resolve,
        "-H",
        "X-Test: one",
        "-H",
        "x-test: two",
        &url("/get?a=b"),
    ])
    .await;
    // The rest talks to the address directly (no name resolution needed).
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let v = json(&out);
    assert_eq!(v["server"], "partner");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/get");
    assert_eq!(v["query"], "a=b");
    assert_eq!(v["host"], format!("api.partner.example:{port}"));
    assert_eq!(v["headers"]["x-test"], "one,two");
    assert_eq!(v["peer_ip"], "127.0.0.1");
    assert_eq!(v["scheme"], "http");
    assert!(v["tls"].is_null());

    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/status/418")]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "418");
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/status/101")]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/status/abc")]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    let out = curl(&["-X", "POST", "--data", "hello body", &url("/post")]).await;
    let v = json(&out);
    assert_eq!(
        (v["method"].as_str(), v["body"].as_str()),
        (Some("POST"), Some("hello body"))
    );

    let started = std::time::Instant::now();
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/delay/1")]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(950),
        "delay honoured"
    );
    // A client giving up early sees a timeout: the delay really is server-side.
    let out = curl(&["--max-time", "1", &url("/delay/3")]).await;
    assert_eq!(out.status.code(), Some(28), "curl timeout exit code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_https_reports_sni_alpn_version_and_client_certificate() {
    let pki = pki();
    let tls = EchoTls::from_files(
        pki.path("server.pem").as_ref(),
        pki.path("server.key").as_ref(),
        Some(pki.path("ca.pem").as_ref()),
        true,
    )
    .expect("tls files");
    let srv = EchoServer::start(EchoConfig {
        name: "mtls".into(),
        https: vec!["127.0.0.1:0".parse().expect("addr")],
        tls: Some(tls),
        ..Default::default()
    })
    .await
    .expect("start");
    let port = srv.https_addrs()[0].port();
    let resolve = format!("echo.example:{port}:127.0.0.1");
    let url = format!("https://echo.example:{port}/get");
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));

    let out = curl(&[
        "--http1.1",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        &url,
    ])
    .await;
    let v = json(&out);
    assert_eq!(v["scheme"], "https");
    assert_eq!(v["tls"]["sni"], "echo.example");
    assert_eq!(v["tls"]["alpn"], "http/1.1");
    assert_eq!(v["tls"]["version"], "TLSv1.3");
    let subject = v["tls"]["client_cert"]["subject"]
        .as_str()
        .unwrap_or_default();
    assert!(
        subject.contains("CN=sleep-client") && subject.contains("O=isthmus"),
        "{subject}"
    );
    let sans: Vec<&str> = v["tls"]["client_cert"]["sans"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        sans,
        vec![
            "URI:spiffe://cluster.local/ns/default/sa/sleep",
            "DNS:client.example"
        ]
    );

    // HTTP/2 via ALPN, and TLS 1.2 when the client caps it.
    let out = curl(&[
        "--http2",
        "--tls-max",
        "1.2",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        &url,
    ])
    .await;
    let v = json(&out);
    assert_eq!(
        (
            v["tls"]["alpn"].as_str(),
            v["protocol"].as_str(),
            v["tls"]["version"].as_str()
        ),
        (Some("h2"), Some("HTTP/2.0"), Some("TLSv1.2"))
    );

    // Without a client certificate the handshake is refused.
    let out = curl(&["--resolve", &resolve, "--cacert", &ca, &url]).await;
    assert!(
        !out.status.success(),
        "a client without certificate must be rejected"
    );

    // Optional client certificates: accepted without, reported with.
    let tls = EchoTls::from_files(
        pki.path("server.pem").as_ref(),
        pki.path("server.key").as_ref(),
        Some(pki.path("ca.pem").as_ref()),
        false,
    )
    .expect("tls");
    let srv2 = EchoServer::start(EchoConfig {
        name: "opt".into(),
        https: vec!["127.0.0.1:0".parse().expect("addr")],
        tls: Some(tls),
        ..Default::default()
    })
    .await
    .expect("start");
    let port2 = srv2.https_addrs()[0].port();
    let resolve2 = format!("echo.example:{port2}:127.0.0.1");
    let url2 = format!("https://echo.example:{port2}/status/201");
    let out = curl(&[
        "--resolve",
        &resolve2,
        "--cacert",
        &ca,
        "-w",
        "\n%{http_code}",
        &url2,
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n201"), "{text}");
    assert!(text.contains("\"client_cert\": null"), "{text}");
}

#[test]
fn echo_rejects_bad_tls_material() {
    let bad = EchoTls {
        cert_pem: b"nope".to_vec(),
        key_pem: b"nope".to_vec(),
        client_ca_pem: None,
        require_client_cert: false,
    };
    assert!(bad.server_config().is_err());
    let pki = pki();
    let need_ca = EchoTls::from_files(
        pki.path("server.pem").as_ref(),
        pki.path("server.key").as_ref(),
        None,
        true,
    )
    .expect("files");
    let err = need_ca
        .server_config()
        .expect_err("requiring client certs without a CA is an error");
    assert!(err.to_string().contains("client CA"), "{err}");
}
