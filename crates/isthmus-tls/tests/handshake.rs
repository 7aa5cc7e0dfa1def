//! Real handshakes over loopback TCP with tokio-rustls (and openssl s_client where useful).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_ca::{Ca, IssuedCert, LeafSpec};
use isthmus_tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TD: &str = "cluster.local";

fn ident(td: &str, ns: &str, sa: &str) -> Identity {
    Identity::new(td, ns, sa).unwrap()
}

fn svid(ca: &Ca, td: &str, ns: &str, sa: &str) -> Arc<CertStore> {
    let c = ca.issue(&ident(td, ns, sa), None).unwrap();
    store(&c, "default")
}

fn store(c: &IssuedCert, name: &str) -> Arc<CertStore> {
    Arc::new(CertStore::from_pem(name, c.cert_chain_pem.as_bytes(), c.key_pem.as_bytes()).unwrap())
}

fn dns_cert(ca: &Ca, names: &[&str]) -> IssuedCert {
    ca.issue_leaf(&LeafSpec {
        sans: names.iter().map(|s| s.to_string()).collect(),
        common_name: names.first().map(|s| s.to_string()),
        not_before: SystemTime::now() - Duration::from_secs(60),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    })
    .unwrap()
}

fn root(ca: &Ca) -> TrustBundle {
    TrustBundle::from_pem(ca.root_pem().as_bytes(), "ROOTCA").unwrap()
}

/// What the server saw for one connection: session info or the failure reason.
type Seen = Result<SessionInfo, String>;

/// Starts a TLS echo server; every accepted connection reports what it saw on the channel and
/// then echoes bytes until EOF.
async fn start_server(tls: ServerTls) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tls.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Err(failure_reason_io(&e)));
                    }
                    Ok(mut stream) => {
                        let _ = tx.send(Ok(SessionInfo::from_server(stream.get_ref().1)));
                        let mut buf = [0u8; 1024];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects, handshakes and does one echo round trip (with TLS 1.3 a client-certificate
/// rejection only shows up on the first read).
async fn connect(
    client: &UpstreamTls,
    addr: SocketAddr,
    sni: Option<&str>,
) -> Result<(Client, SessionInfo), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = client
        .connect(tcp, sni)
        .await
        .map_err(|e| failure_reason_io(&e))?;
    ping(&mut tls).await?;
    let info = SessionInfo::from_client(tls.get_ref().1);
    Ok((tls, info))
}

async fn ping(tls: &mut Client) -> Result<(), String> {
    tls.write_all(b"ping")
        .await
        .map_err(|e| failure_reason_io(&e))?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| failure_reason_io(&e))?;
    if &buf != b"ping" {
        return Err(format!("bad echo {buf:?}"));
    }
    Ok(())
}

async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("server reported nothing")
        .expect("server channel closed")
}

fn istio_server(ca: &Ca, ns: &str, sa: &str) -> ServerTls {
    ServerTls::new(
        svid(ca, TD, ns, sa),
        &ServerTlsOptions::istio_mutual(root(ca), &[TD]).alpn(&[
            "istio-peer-exchange",
            "h2",
            "http/1.1",
        ]),
    )
    .unwrap()
}

fn istio_client(ca_for_cert: &Ca, td: &str, roots_ca: &Ca, sans: &[&str]) -> UpstreamTls {
    UpstreamTls::new(
        &ClientTlsOptions::istio_mutual(
            svid(ca_for_cert, td, "default", "sleep"),
            root(roots_ca),
            sans,
        )
        .sni("outbound_.8080_._.api.prod.svc.cluster.local")
        .alpn(&["istio-peer-exchange", "istio"]),
    )
    .unwrap()
}

#[tokio::test]
async fn istio_mutual_peers_succeed_and_see_each_others_spiffe_ids() {
    let ca = Ca::generate(TD).unwrap();
    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    let client = istio_client(&ca, TD, &ca, &["spiffe://cluster.local/ns/prod/sa/api"]);
    let (_tls, client_info) = connect(&client, addr, None).await.unwrap();
    let server_info = seen(&mut rx).await.unwrap();
    assert_eq!(
        server_info.peer_spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/sleep")
    );
    assert_eq!(
        server_info.sni.as_deref(),
        Some("outbound_.8080_._.api.prod.svc.cluster.local")
    );
    assert_eq!(server_info.alpn.as_deref(), Some("istio-peer-exchange"));
    assert_eq!(server_info.version, Some("TLSv1.3"));
    assert_eq!(
        client_info.peer_spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/prod/sa/api")
    );
    assert_eq!(
        server_info.peer_subject.as_deref(),
        Some(""),
        "SVIDs have an empty subject"
    );
}

#[tokio::test]
async fn istio_mutual_rejects_a_client_from_another_root() {
    let ca = Ca::generate(TD).unwrap();
    let rogue = Ca::generate(TD).unwrap();
    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    // Client cert from the rogue root (client itself trusts the real root).
    let client = istio_client(&rogue, TD, &ca, &[]);
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    // Two isthmus roots share the subject name, so the chain builder finds the "issuer" by
    // name and then fails on the signature; a differently named root gives "unknown issuer".
    assert!(
        server_err.contains("CERTIFICATE_VERIFY_FAILED")
            && (server_err.contains("unknown issuer")
                || server_err.contains("bad certificate signature")),
        "{server_err}"
    );
    assert!(err.contains("_ALERT_"), "client saw: {err}");

    // A root with a different name: the issuer is simply unknown.
    let stranger = Ca::generate("stranger.example").unwrap();
    let client = istio_client(&stranger, TD, &ca, &[]);
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(
        server_err.contains("CERTIFICATE_VERIFY_FAILED:unknown issuer"),
        "{server_err}"
    );
    assert!(err.contains("TLSV1_ALERT_UNKNOWN_CA"), "client saw: {err}");
}

#[tokio::test]
async fn istio_mutual_rejects_a_client_from_another_trust_domain() {
    let ca = Ca::generate(TD).unwrap();
    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    // Same root, but the SPIFFE ID is in trust domain evil.example.
    let client = istio_client(&ca, "evil.example", &ca, &[]);
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(
        server_err.contains(
            "spiffe://evil.example/ns/default/sa/sleep is not in trust domain(s) cluster.local"
        ),
        "{server_err}"
    );
    assert!(err.contains("ALERT"), "{err}");

    // Trust-domain aliases are accepted when configured.
    let server = ServerTls::new(
        svid(&ca, TD, "prod", "api"),
        &ServerTlsOptions::istio_mutual(root(&ca), &[TD, "evil.example"]),
    )
    .unwrap();
    let (addr, mut rx) = start_server(server).await;
    connect(&client, addr, None).await.unwrap();
    assert!(seen(&mut rx).await.is_ok());
}

#[tokio::test]
async fn istio_mutual_rejects_an_expired_client_certificate() {
    let ca = Ca::generate(TD).unwrap();
    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    let past = SystemTime::now() - Duration::from_secs(7200);
    let expired = ca
        .issue_with_validity(
            &ident(TD, "default", "sleep"),
            past,
            past + Duration::from_secs(3600),
        )
        .unwrap();
    let client = UpstreamTls::new(&ClientTlsOptions::istio_mutual(
        store(&expired, "default"),
        root(&ca),
        &[],
    ))
    .unwrap();
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(
        server_err.contains("CERTIFICATE_VERIFY_FAILED") && server_err.contains("expired"),
        "{server_err}"
    );
    assert!(
        err.contains("CERTIFICATE_EXPIRED") || err.contains("ALERT"),
        "{err}"
    );
}

#[tokio::test]
async fn istio_mutual_rejects_a_client_without_certificate() {
    let ca = Ca::generate(TD).unwrap();
    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    let client = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(root(&ca)))
            .subject_alt_names(&["spiffe://cluster.local/ns/prod/sa/api"]),
    )
    .unwrap();
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(
        server_err.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        "{server_err}"
    );
    assert!(err.contains("TLSV1_ALERT_CERTIFICATE_REQUIRED"), "{err}");
}

#[tokio::test]
async fn istio_mutual_client_rejects_a_server_with_the_wrong_service_account() {
    let ca = Ca::generate(TD).unwrap();
    let (addr, _rx) = start_server(istio_server(&ca, "prod", "impostor")).await;
    let client = istio_client(&ca, TD, &ca, &["spiffe://cluster.local/ns/prod/sa/api"]);
    let err = connect(&client, addr, None).await.unwrap_err();
    assert!(
        err.contains("CERTIFICATE_VERIFY_FAILED")
            && err.contains("spiffe://cluster.local/ns/prod/sa/impostor"),
        "{err}"
    );
    // The SNI is never used as a host name for ISTIO_MUTUAL: with the right SAN it works even
    // though the certificate has no DNS name matching the outbound_ SNI.
    let client = istio_client(
        &ca,
        TD,
        &ca,
        &["spiffe://cluster.local/ns/prod/sa/impostor"],
    );
    connect(&client, addr, None).await.unwrap();
}

/// A partner-style setup: a server CA issuing DNS certs, a separate client CA.
struct Partner {
    server_ca: Ca,
    client_ca: Ca,
}

impl Partner {
    fn new() -> Self {
        Partner {
            server_ca: Ca::generate("partner").unwrap(),
            client_ca: Ca::generate("partner-clients").unwrap(),
        }
    }
    fn server(&self, opts: ServerTlsOptions) -> ServerTls {
        ServerTls::new(
            store(
                &dns_cert(&self.server_ca, &["api.partner.example"]),
                "kubernetes://partner-server",
            ),
            &opts,
        )
        .unwrap()
    }
    fn client_ca_bundle(&self) -> TrustBundle {
        root(&self.client_ca)
    }
    fn client_cert(&self) -> Arc<CertStore> {
        store(
            &dns_cert(&self.client_ca, &["egress.mesh.example"]),
            "kubernetes://partner-client",
        )
    }
    fn trust(&self) -> ServerTrust {
        ServerTrust::Verify(root(&self.server_ca))
    }
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_and_accepts_a_valid_one() {
    let p = Partner::new();
    let (addr, mut rx) =
        start_server(p.server(ServerTlsOptions::mutual(p.client_ca_bundle()))).await;

    // SIMPLE client (no cert) → rejected.
    let simple =
        UpstreamTls::new(&ClientTlsOptions::simple(p.trust()).sni("api.partner.example")).unwrap();
    let err = connect(&simple, addr, None).await.unwrap_err();
    assert!(err.contains("CERTIFICATE_REQUIRED"), "{err}");
    assert!(seen(&mut rx)
        .await
        .unwrap_err()
        .contains("PEER_DID_NOT_RETURN_A_CERTIFICATE"));

    // MUTUAL client → accepted; server sees the client's subject.
    let mutual = UpstreamTls::new(
        &ClientTlsOptions::mutual(p.trust(), p.client_cert()).sni("api.partner.example"),
    )
    .unwrap();
    connect(&mutual, addr, None).await.unwrap();
    let info = seen(&mut rx).await.unwrap();
    assert_eq!(info.peer_subject.as_deref(), Some("CN=egress.mesh.example"));
    assert_eq!(info.peer_spiffe_id, None);

    // A client certificate from the wrong CA → rejected.
    let wrong = UpstreamTls::new(
        &ClientTlsOptions::mutual(p.trust(), store(&dns_cert(&p.server_ca, &["x"]), "x"))
            .sni("api.partner.example"),
    )
    .unwrap();
    assert!(connect(&wrong, addr, None).await.is_err());
    assert!(seen(&mut rx).await.unwrap_err().contains("unknown issuer"));
}

#[tokio::test]
async fn optional_mutual_accepts_no_certificate_but_rejects_a_bad_one() {
    let p = Partner::new();
    let (addr, mut rx) =
        start_server(p.server(ServerTlsOptions::optional_mutual(p.client_ca_bundle()))).await;
    let simple =
        UpstreamTls::new(&ClientTlsOptions::simple(p.trust()).sni("api.partner.example")).unwrap();
    connect(&simple, addr, None).await.unwrap();
    assert_eq!(seen(&mut rx).await.unwrap().peer_subject, None);
    let good = UpstreamTls::new(
        &ClientTlsOptions::mutual(p.trust(), p.client_cert()).sni("api.partner.example"),
    )
    .unwrap();
    connect(&good, addr, None).await.unwrap();
    assert!(seen(&mut rx).await.unwrap().peer_subject.is_some());
    let bad = UpstreamTls::new(
        &ClientTlsOptions::mutual(p.trust(), store(&dns_cert(&p.server_ca, &["x"]), "x"))
            .sni("api.partner.example"),
    )
    .unwrap();
    assert!(connect(&bad, addr, None).await.is_err());
    assert!(seen(&mut rx).await.is_err());
}

#[tokio::test]
async fn mutual_server_with_subject_alt_names_checks_the_client_san() {
    let p = Partner::new();
    let opts =
        ServerTlsOptions::mutual(p.client_ca_bundle()).subject_alt_names(&["allowed.mesh.example"]);
    let (addr, mut rx) = start_server(p.server(opts)).await;
    let client = UpstreamTls::new(
        &ClientTlsOptions::mutual(p.trust(), p.client_cert()).sni("api.partner.example"),
    )
    .unwrap();
    assert!(connect(&client, addr, None).await.is_err());
    let e = seen(&mut rx).await.unwrap_err();
    assert!(e.contains("match none of [allowed.mesh.example]"), "{e}");
    let allowed = store(&dns_cert(&p.client_ca, &["allowed.mesh.example"]), "c");
    let client =
        UpstreamTls::new(&ClientTlsOptions::mutual(p.trust(), allowed).sni("api.partner.example"))
            .unwrap();
    connect(&client, addr, None).await.unwrap();
}

#[tokio::test]
async fn sni_selects_the_certificate_among_servers_on_one_port() {
    let ca = Ca::generate("certs").unwrap();
    let mut resolver = SniCertResolver::new();
    resolver.insert(
        "a.example.com",
        store(&dns_cert(&ca, &["a.example.com"]), "a"),
    );
    resolver.insert(
        "*.example.com",
        store(&dns_cert(&ca, &["*.example.com"]), "wild"),
    );
    resolver.insert("b.other.org", store(&dns_cert(&ca, &["b.other.org"]), "b"));
    let server = ServerTls::new(
        Arc::new(resolver),
        &ServerTlsOptions::simple().alpn(&["h2", "http/1.1"]),
    )
    .unwrap();
    let (addr, mut rx) = start_server(server).await;
    let client =
        UpstreamTls::new(&ClientTlsOptions::simple(ServerTrust::Verify(root(&ca)))).unwrap();

    for (sni, expect_san) in [
        ("a.example.com", "a.example.com"),
        ("zz.example.com", "*.example.com"),
        ("b.other.org", "b.other.org"),
    ] {
        let (tls, _) = connect(&client, addr, Some(sni))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let peer = peer_certificate(tls.get_ref().1).unwrap();
        assert_eq!(peer.dns_sans(), vec![expect_san], "{sni}");
        assert_eq!(seen(&mut rx).await.unwrap().sni.as_deref(), Some(sni));
    }
    // Unknown SNI: no certificate → handshake fails (Envoy: no matching filter chain).
    assert!(connect(&client, addr, Some("nope.org")).await.is_err());
    assert!(seen(&mut rx).await.is_err());
}

#[tokio::test]
async fn upstream_san_list_is_matched_independently_of_sni() {
    let ca = Ca::generate("certs").unwrap();
    let server = ServerTls::new(
        store(&dns_cert(&ca, &["api.partner.example"]), "s"),
        &ServerTlsOptions::simple(),
    )
    .unwrap();
    let (addr, _rx) = start_server(server).await;
    let trust = || ServerTrust::Verify(root(&ca));

    // SAN match passes even though the SNI is something else.
    let ok = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("front.example")
            .subject_alt_names(&["other.example", "api.partner.example"]),
    )
    .unwrap();
    connect(&ok, addr, None).await.unwrap();
    // SAN mismatch fails even though the SNI matches the certificate.
    let bad = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("api.partner.example")
            .subject_alt_names(&["nope.example"]),
    )
    .unwrap();
    let err = connect(&bad, addr, None).await.unwrap_err();
    assert!(
        err.contains("CERTIFICATE_VERIFY_FAILED") && err.contains("nope.example"),
        "{err}"
    );

    // No SANs: the SNI host name is verified (autoSanValidation).
    let auto =
        UpstreamTls::new(&ClientTlsOptions::simple(trust()).sni("api.partner.example")).unwrap();
    connect(&auto, addr, None).await.unwrap();
    let auto_bad =
        UpstreamTls::new(&ClientTlsOptions::simple(trust()).sni("wrong.example")).unwrap();
    let err = connect(&auto_bad, addr, None).await.unwrap_err();
    assert!(err.contains("SAN mismatch"), "{err}");
    // The fallback SNI (autoSni from the request host) is verified the same way.
    let nosni = UpstreamTls::new(&ClientTlsOptions::simple(trust())).unwrap();
    connect(&nosni, addr, Some("api.partner.example"))
        .await
        .unwrap();
    assert!(connect(&nosni, addr, Some("wrong.example")).await.is_err());
}

#[tokio::test]
async fn insecure_skip_verify_and_system_bundle() {
    let ca = Ca::generate("private").unwrap();
    let server = ServerTls::new(
        store(&dns_cert(&ca, &["svc.internal"]), "s"),
        &ServerTlsOptions::simple(),
    )
    .unwrap();
    let (addr, _rx) = start_server(server).await;
    let skip = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::InsecureSkipVerify).sni("anything.example"),
    )
    .unwrap();
    connect(&skip, addr, None).await.unwrap();

    // The system bundle does not trust our private CA.
    if std::path::Path::new(SYSTEM_CA_BUNDLE).exists() {
        let sys = UpstreamTls::new(
            &ClientTlsOptions::simple(ServerTrust::Verify(TrustBundle::system().unwrap()))
                .sni("svc.internal"),
        )
        .unwrap();
        let err = connect(&sys, addr, None).await.unwrap_err();
        assert!(err.contains("unknown issuer"), "{err}");
    } else {
        isthmus_testutil::skip_or_fail(&format!(
            "system CA bundle {SYSTEM_CA_BUNDLE} not found (apt install ca-certificates)"
        ));
    }
    // A CA file on disk works like caCertificates.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.root_pem()).unwrap();
    let file = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(TrustBundle::from_file(&path).unwrap()))
            .sni("svc.internal"),
    )
    .unwrap();
    connect(&file, addr, None).await.unwrap();
    let err = TrustBundle::from_file(dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[tokio::test]
async fn alpn_without_overlap_continues_like_envoy_and_versions_are_enforced() {
    let ca = Ca::generate("certs").unwrap();
    let server = ServerTls::new(
        store(&dns_cert(&ca, &["h.example"]), "s"),
        &ServerTlsOptions::simple()
            .alpn(&["h2", "http/1.1"])
            .versions(Some(TlsVersion::Tls13), None),
    )
    .unwrap();
    // The same decision is available to callers that parsed the ClientHello themselves.
    assert!(server
        .config_for_alpn(Some([b"istio".as_slice()]))
        .alpn_protocols
        .is_empty());
    assert_eq!(
        server
            .config_for_alpn(Some([b"x".as_slice(), b"h2".as_slice()]))
            .alpn_protocols
            .len(),
        2
    );
    assert_eq!(
        server
            .config_for_alpn(None::<Vec<&[u8]>>)
            .alpn_protocols
            .len(),
        2
    );
    let (addr, mut rx) = start_server(server).await;
    let trust = || ServerTrust::Verify(root(&ca));

    let h2 = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("h.example")
            .alpn(&["h2"]),
    )
    .unwrap();
    let (_, info) = connect(&h2, addr, None).await.unwrap();
    assert_eq!(info.alpn.as_deref(), Some("h2"));
    seen(&mut rx).await.unwrap();

    let istio = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("h.example")
            .alpn(&["istio"]),
    )
    .unwrap();
    let (_, info) = connect(&istio, addr, None).await.unwrap();
    assert_eq!(info.alpn, None, "no overlap: continue without ALPN");
    seen(&mut rx).await.unwrap();

    let tls12 = UpstreamTls::new(
        &ClientTlsOptions::simple(trust())
            .sni("h.example")
            .versions(None, Some(TlsVersion::Tls12)),
    )
    .unwrap();
    let err = connect(&tls12, addr, None).await.unwrap_err();
    assert!(
        err.contains("PROTOCOL_VERSION") || err.contains("UNSUPPORTED_PROTOCOL"),
        "{err}"
    );
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(server_err.contains("UNSUPPORTED_PROTOCOL"), "{server_err}");
}

#[tokio::test]
async fn plaintext_to_a_tls_port_is_reported_as_wrong_version() {
    let ca = Ca::generate("certs").unwrap();
    let server = ServerTls::new(
        store(&dns_cert(&ca, &["h.example"]), "s"),
        &ServerTlsOptions::simple(),
    )
    .unwrap();
    let (addr, mut rx) = start_server(server).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n")
        .await
        .unwrap();
    let e = seen(&mut rx).await.unwrap_err();
    assert!(
        e.contains("WRONG_VERSION_NUMBER") || e.contains("TLS"),
        "{e}"
    );
}

#[tokio::test]
async fn rotation_affects_new_handshakes_while_open_connections_keep_working() {
    let ca = Ca::generate(TD).unwrap();
    let server_store = svid(&ca, TD, "prod", "api");
    let server = ServerTls::new(
        server_store.clone(),
        &ServerTlsOptions::istio_mutual(root(&ca), &[TD]),
    )
    .unwrap();
    let (addr, mut rx) = start_server(server).await;
    let client_store = svid(&ca, TD, "default", "sleep");
    let client = UpstreamTls::new(&ClientTlsOptions::istio_mutual(
        client_store.clone(),
        root(&ca),
        &["spiffe://cluster.local/ns/prod/sa/api"],
    ))
    .unwrap();

    let (mut old_conn, old_info) = connect(&client, addr, None).await.unwrap();
    let old_server_serial = server_store.serial_hex().unwrap();
    let old_client_serial = seen(&mut rx).await.unwrap().peer_serial.unwrap();
    assert_eq!(
        old_info.peer_serial.as_deref(),
        Some(old_server_serial.as_str())
    );

    // Rotate both sides.
    let fresh = ca.issue(&ident(TD, "prod", "api"), None).unwrap();
    server_store
        .swap_pem(fresh.cert_chain_pem.as_bytes(), fresh.key_pem.as_bytes())
        .unwrap();
    let fresh_client = ca.issue(&ident(TD, "default", "sleep"), None).unwrap();
    client_store
        .swap_pem(
            fresh_client.cert_chain_pem.as_bytes(),
            fresh_client.key_pem.as_bytes(),
        )
        .unwrap();
    assert_eq!(server_store.serial_hex().unwrap(), fresh.serial_hex);

    // New handshakes present the new certificates...
    let (_new_conn, new_info) = connect(&client, addr, None).await.unwrap();
    assert_eq!(
        new_info.peer_serial.as_deref(),
        Some(fresh.serial_hex.as_str())
    );
    assert_ne!(fresh.serial_hex, old_server_serial);
    let server_saw = seen(&mut rx).await.unwrap().peer_serial.unwrap();
    assert_eq!(server_saw, fresh_client.serial_hex);
    assert_ne!(server_saw, old_client_serial);

    // ...while the connection opened before the rotation still carries traffic with the old one.
    ping(&mut old_conn).await.unwrap();
    assert_eq!(
        SessionInfo::from_client(old_conn.get_ref().1)
            .peer_serial
            .as_deref(),
        Some(old_server_serial.as_str())
    );

    // A bad update keeps the current certificate.
    assert!(server_store
        .swap_pem(b"garbage", fresh.key_pem.as_bytes())
        .is_err());
    assert_eq!(server_store.serial_hex().unwrap(), fresh.serial_hex);
}

#[tokio::test]
async fn an_empty_store_fails_handshakes_until_filled() {
    let ca = Ca::generate("certs").unwrap();
    let s = Arc::new(CertStore::empty("kubernetes://missing"));
    let server = ServerTls::new(s.clone(), &ServerTlsOptions::simple()).unwrap();
    let (addr, mut rx) = start_server(server).await;
    let client = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(root(&ca))).sni("h.example"),
    )
    .unwrap();
    assert!(connect(&client, addr, None).await.is_err());
    assert!(seen(&mut rx).await.is_err());
    let c = dns_cert(&ca, &["h.example"]);
    s.swap_pem(c.cert_chain_pem.as_bytes(), c.key_pem.as_bytes())
        .unwrap();
    connect(&client, addr, None).await.unwrap();
}

fn openssl_s_client(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-brief"])
        .args(extra);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("openssl must be installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"ping");
        // Keep stdin open briefly so the echo can come back, then close.
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_against_an_istio_mutual_server() {
    let ca = Ca::generate(TD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let root_file = w("root.pem", ca.root_pem());
    let client = ca.issue(&ident(TD, "default", "sleep"), None).unwrap();
    let cert_file = w("cert.pem", &client.cert_chain_pem);
    let key_file = w("key.pem", &client.key_pem);

    let (addr, mut rx) = start_server(istio_server(&ca, "prod", "api")).await;
    // With the SVID: handshake verifies (return code 0) and the server sees the SPIFFE ID.
    let (ok, out) = tokio::task::spawn_blocking({
        let (c, k, r) = (cert_file.clone(), key_file.clone(), root_file.clone());
        move || {
            openssl_s_client(
                addr,
                &[
                    "-cert",
                    &c,
                    "-key",
                    &k,
                    "-CAfile",
                    &r,
                    "-servername",
                    "outbound_.8080_._.api.prod.svc.cluster.local",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.contains("Verification: OK"), "{out}");
    let _ = ok;
    assert_eq!(
        seen(&mut rx).await.unwrap().peer_spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/sleep")
    );

    // Without a client certificate: the server refuses.
    let (_ok, out) = tokio::task::spawn_blocking({
        let r = root_file.clone();
        move || openssl_s_client(addr, &["-CAfile", &r])
    })
    .await
    .unwrap();
    assert!(
        out.to_lowercase().contains("alert") || out.contains("error"),
        "{out}"
    );
    assert!(seen(&mut rx)
        .await
        .unwrap_err()
        .contains("PEER_DID_NOT_RETURN_A_CERTIFICATE"));
}

#[tokio::test]
async fn credential_name_secrets_drive_mutual_origination_and_crl_rejection() {
    use isthmus_ca::{KubeSecret, SdsResource, SecretIndex, TYPE_OPAQUE, TYPE_TLS};
    use std::collections::BTreeMap;
    let p = Partner::new();
    let now = SystemTime::now();
    let good = dns_cert(&p.client_ca, &["egress.mesh.example"]);
    let revoked = dns_cert(&p.client_ca, &["stolen.mesh.example"]);
    let crl = p
        .client_ca
        .issue_crl(&[&revoked.serial_hex], Duration::from_secs(3600))
        .unwrap();

    // Partner side: MUTUAL with ca.crt + ca.crl from a generic Secret.
    let mut partner_secrets = SecretIndex::new();
    let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    };
    partner_secrets.insert(KubeSecret::new(
        "partner",
        "clients",
        TYPE_OPAQUE,
        data(&[("ca.crt", p.client_ca.root_pem()), ("ca.crl", &crl)]),
    ));
    let SdsResource::ValidationContext(vc) = partner_secrets
        .resolve("partner", "clients-cacert", now)
        .unwrap()
    else {
        panic!()
    };
    let (addr, mut rx) =
        start_server(p.server(ServerTlsOptions::mutual(vc.to_trust_bundle().unwrap()))).await;

    // Gateway side: MUTUAL origination with credentialName → kubernetes://NAME + NAME-cacert.
    let mut gw = SecretIndex::new();
    let gw_secret = |cert: &IssuedCert| {
        KubeSecret::new(
            "istio-system",
            "partner-client",
            TYPE_TLS,
            data(&[
                ("tls.crt", &cert.cert_chain_pem),
                ("tls.key", &cert.key_pem),
                ("ca.crt", p.server_ca.root_pem()),
            ]),
        )
    };
    gw.insert(gw_secret(&good));
    let SdsResource::TlsCertificate(tc) = gw
        .resolve("istio-system", "kubernetes://partner-client", now)
        .unwrap()
    else {
        panic!()
    };
    let SdsResource::ValidationContext(gvc) = gw
        .resolve("istio-system", "kubernetes://partner-client-cacert", now)
        .unwrap()
    else {
        panic!()
    };
    let client_store = Arc::new(tc.to_cert_store().unwrap());
    let client = UpstreamTls::new(
        &ClientTlsOptions::mutual(
            ServerTrust::Verify(gvc.to_trust_bundle().unwrap()),
            client_store.clone(),
        )
        .sni("api.partner.example"),
    )
    .unwrap();
    connect(&client, addr, None).await.unwrap();
    assert_eq!(
        seen(&mut rx).await.unwrap().peer_subject.as_deref(),
        Some("CN=egress.mesh.example")
    );

    // The Secret changes to a revoked certificate: picked up live, and the partner refuses it.
    gw.insert(gw_secret(&revoked));
    let SdsResource::TlsCertificate(tc) =
        gw.resolve("istio-system", "partner-client", now).unwrap()
    else {
        panic!()
    };
    client_store
        .swap_pem(tc.cert_chain_pem.as_bytes(), tc.private_key_pem.as_bytes())
        .unwrap();
    let err = connect(&client, addr, None).await.unwrap_err();
    let server_err = seen(&mut rx).await.unwrap_err();
    assert!(server_err.contains("certificate revoked"), "{server_err}");
    assert!(err.contains("CERTIFICATE_REVOKED"), "{err}");

    // openssl agrees about the CRL content.
    let dir = tempfile::tempdir().unwrap();
    let crl_path = dir.path().join("crl.pem");
    std::fs::write(&crl_path, &crl).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["crl", "-in"])
        .arg(&crl_path)
        .args(["-noout", "-text"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(out.status.success());
    assert!(text.contains(&revoked.serial_hex.to_uppercase()), "{text}");
}

#[tokio::test]
async fn upstream_crl_rejects_a_revoked_server_certificate() {
    let ca = Ca::generate("partner").unwrap();
    let good = dns_cert(&ca, &["api.partner.example"]);
    let bad = dns_cert(&ca, &["api.partner.example"]);
    let crl = ca
        .issue_crl(&[&bad.serial_hex], Duration::from_secs(3600))
        .unwrap();
    let bundle = || {
        TrustBundle::from_pem(ca.root_pem().as_bytes(), "ca")
            .unwrap()
            .with_crl_pem(crl.as_bytes(), "crl")
            .unwrap()
    };

    let (good_addr, _g) =
        start_server(ServerTls::new(store(&good, "g"), &ServerTlsOptions::simple()).unwrap()).await;
    let (bad_addr, _b) =
        start_server(ServerTls::new(store(&bad, "b"), &ServerTlsOptions::simple()).unwrap()).await;

    // Host-name check (autoSanValidation) and SAN list both still apply on top of the CRL.
    let auto = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(bundle())).sni("api.partner.example"),
    )
    .unwrap();
    connect(&auto, good_addr, None).await.unwrap();
    let err = connect(&auto, bad_addr, None).await.unwrap_err();
    assert!(err.contains("certificate revoked"), "{err}");
    let wrong_host = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(bundle())).sni("wrong.example"),
    )
    .unwrap();
    assert!(connect(&wrong_host, good_addr, None)
        .await
        .unwrap_err()
        .contains("SAN mismatch"));
    let sans = UpstreamTls::new(
        &ClientTlsOptions::simple(ServerTrust::Verify(bundle()))
            .sni("x.example")
            .subject_alt_names(&["api.partner.example"]),
    )
    .unwrap();
    connect(&sans, good_addr, None).await.unwrap();
    assert!(connect(&sans, bad_addr, None)
        .await
        .unwrap_err()
        .contains("certificate revoked"));
}
