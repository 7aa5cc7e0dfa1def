//! Interop with a real nginx (`ssl_verify_client on`): MUTUAL origination is accepted with
//! `verify=SUCCESS`, SIMPLE gets nginx's `400 No required SSL certificate was sent`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_ca::{Ca, IssuedCert, LeafSpec};
use isthmus_tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn leaf(ca: &Ca, name: &str) -> IssuedCert {
    ca.issue_leaf(&LeafSpec {
        sans: vec![name.to_string()],
        common_name: Some(name.to_string()),
        not_before: SystemTime::now() - Duration::from_secs(60),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    })
    .unwrap()
}

fn nginx_available() -> bool {
    Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn start_nginx(dir: &Path, port: u16) -> Nginx {
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name api.partner.example;
    ssl_certificate {d}/server.pem;
    ssl_certificate_key {d}/server.key;
    ssl_client_certificate {d}/client-ca.pem;
    ssl_verify_client on;
    location / {{ default_type text/plain; return 200 "verify=$ssl_client_verify dn=$ssl_client_s_dn sni=$ssl_server_name\n"; }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nginx");
    Nginx(child)
}

async fn get(client: &UpstreamTls, addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client.connect(tcp, None).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.partner.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn mutual_origination_against_real_nginx() {
    if !nginx_available() {
        isthmus_testutil::skip_or_fail("nginx not installed (apt install nginx-light)");
        return;
    }
    let server_ca = Ca::generate("partner").unwrap();
    let client_ca = Ca::generate("partner-clients").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = leaf(&server_ca, "api.partner.example");
    std::fs::write(dir.path().join("server.pem"), &server.cert_chain_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("client-ca.pem"), client_ca.root_pem()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _nginx = start_nginx(dir.path(), port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    assert!(up, "nginx did not start: {}", log());

    let trust = || {
        ServerTrust::Verify(
            TrustBundle::from_pem(server_ca.root_pem().as_bytes(), "partner-ca").unwrap(),
        )
    };
    let client_cert = leaf(&client_ca, "egress.mesh.example");
    let store = Arc::new(
        CertStore::from_pem(
            "kubernetes://partner-client",
            client_cert.cert_chain_pem.as_bytes(),
            client_cert.key_pem.as_bytes(),
        )
        .unwrap(),
    );

    let mutual = UpstreamTls::new(
        &ClientTlsOptions::mutual(trust(), store)
            .sni("api.partner.example")
            .alpn(&["http/1.1"]),
    )
    .unwrap();
    let resp = get(&mutual, addr).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", log());
    assert!(resp.contains("verify=SUCCESS"), "{resp}");
    assert!(resp.contains("CN=egress.mesh.example"), "{resp}");
    assert!(resp.contains("sni=api.partner.example"), "{resp}");

    let simple =
        UpstreamTls::new(&ClientTlsOptions::simple(trust()).sni("api.partner.example")).unwrap();
    let resp = get(&simple, addr).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("No required SSL certificate was sent"),
        "{resp}"
    );

    // SAN verification against nginx's certificate: wrong SAN list fails before any request.
    let wrong = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("api.partner.example")
            .subject_alt_names(&["other.example"]),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = wrong.connect(tcp, None).await.unwrap_err();
    assert!(
        failure_reason_io(&err).contains("CERTIFICATE_VERIFY_FAILED"),
        "{err}"
    );
}
