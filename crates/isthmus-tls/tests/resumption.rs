//! TLS 1.3 session tickets (Envoy's default stateless resumption) and their rotation rule.
//!
//! One test function on purpose: certificate rotations move a process-wide generation, so a
//! rotation in a concurrently running test of this binary would void a ticket another test
//! expects to resume with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_ca::Ca;
use isthmus_tls::rustls::HandshakeKind;
use isthmus_tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "cluster.local";

fn svid(ca: &Ca, ns: &str, sa: &str) -> Arc<CertStore> {
    let c = ca.issue(&Identity::new(TD, ns, sa).unwrap(), None).unwrap();
    Arc::new(
        CertStore::from_pem("default", c.cert_chain_pem.as_bytes(), c.key_pem.as_bytes()).unwrap(),
    )
}

fn root(ca: &Ca) -> TrustBundle {
    TrustBundle::from_pem(ca.root_pem().as_bytes(), "ROOTCA").unwrap()
}

/// Echo server; reports each accepted connection's handshake kind.
async fn start(
    tls: ServerTls,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<HandshakeKind>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                if let Some(k) = s.get_ref().1.handshake_kind() {
                    let _ = tx.send(k);
                }
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects, does one echo round trip (which also delivers the server's tickets to the client)
/// and returns the client's view of the handshake kind.
async fn round_trip(client: &UpstreamTls, addr: SocketAddr) -> HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client
        .connect(tcp, Some("api.prod.svc.cluster.local"))
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut buf))
        .await
        .expect("echo within 10s")
        .unwrap();
    assert_eq!(&buf, b"ping");
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let _ = tls.shutdown().await;
    kind
}

async fn server_kind(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<HandshakeKind>,
) -> HandshakeKind {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("server reported within 10s")
        .expect("server alive")
}

#[tokio::test]
async fn tickets_resume_only_when_enabled_and_never_across_a_rotation() {
    let ca = Ca::generate(TD).unwrap();
    let server_store = svid(&ca, "prod", "api");
    let mut client_opts = ClientTlsOptions::istio_mutual(
        svid(&ca, "default", "sleep"),
        root(&ca),
        &["spiffe://cluster.local/ns/prod/sa/api"],
    );
    client_opts.session_resumption = true;
    let client = UpstreamTls::new(&client_opts).unwrap();

    // Default (off): every connection is a full handshake even for a resuming client.
    let off = ServerTls::new(
        server_store.clone(),
        &ServerTlsOptions::istio_mutual(root(&ca), &[TD]),
    )
    .unwrap();
    let (addr, mut rx) = start(off).await;
    for _ in 0..2 {
        assert_eq!(round_trip(&client, addr).await, HandshakeKind::Full);
        assert_eq!(server_kind(&mut rx).await, HandshakeKind::Full);
    }

    // On: the second connection resumes with the ticket from the first (no certificate
    // exchange, no signature), and the server sees the client's identity from the ticket.
    let on = ServerTls::new(
        server_store.clone(),
        &ServerTlsOptions::istio_mutual(root(&ca), &[TD]).session_resumption(true),
    )
    .unwrap();
    let (addr, mut rx) = start(on).await;
    assert_eq!(round_trip(&client, addr).await, HandshakeKind::Full);
    assert_eq!(server_kind(&mut rx).await, HandshakeKind::Full);
    assert_eq!(round_trip(&client, addr).await, HandshakeKind::Resumed);
    assert_eq!(server_kind(&mut rx).await, HandshakeKind::Resumed);

    // A rotation voids every ticket issued before it: the next connection is full again
    // (and yields a fresh ticket that resumes).
    let fresh = ca
        .issue(&Identity::new(TD, "prod", "api").unwrap(), None)
        .unwrap();
    server_store
        .swap_pem(fresh.cert_chain_pem.as_bytes(), fresh.key_pem.as_bytes())
        .unwrap();
    assert_eq!(round_trip(&client, addr).await, HandshakeKind::Full);
    assert_eq!(server_kind(&mut rx).await, HandshakeKind::Full);
    assert_eq!(round_trip(&client, addr).await, HandshakeKind::Resumed);
    assert_eq!(server_kind(&mut rx).await, HandshakeKind::Resumed);
}

/// Like Envoy (BoringSSL), the server picks TLS_AES_128_GCM_SHA256 even when the client lists
/// TLS_AES_256_GCM_SHA384 first (rustls' own client order): cheaper key schedule.
#[tokio::test]
async fn the_server_prefers_aes_128_gcm_sha256_over_the_clients_order() {
    let ca = Ca::generate(TD).unwrap();
    let server = ServerTls::new(svid(&ca, "prod", "api"), &ServerTlsOptions::simple()).unwrap();
    let (addr, mut rx) = start(server).await;
    // A client with the provider's default order (AES-256 first) and no verification needs.
    let mut cp = (*provider()).clone();
    cp.cipher_suites.sort_by_key(|s| match s.suite() {
        isthmus_tls::rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 0,
        _ => 1,
    });
    assert_eq!(
        cp.cipher_suites[0].suite(),
        isthmus_tls::rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let verifier = UpstreamServerVerifier::new(
        ServerTrust::InsecureSkipVerify,
        PeerSanPolicy::default(),
        false,
        provider(),
    )
    .unwrap();
    let cfg = isthmus_tls::rustls::ClientConfig::builder_with_provider(Arc::new(cp))
        .with_protocol_versions(&[&isthmus_tls::rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = isthmus_tls::server_name("api.prod.svc.cluster.local").unwrap();
    let mut tls = isthmus_tls::tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(server_kind(&mut rx).await, HandshakeKind::Full);
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(isthmus_tls::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

#[test]
fn the_provider_is_aws_lc_with_envoys_key_exchange_groups() {
    use isthmus_tls::rustls::NamedGroup;
    let p = provider();
    let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(
        groups,
        vec![
            NamedGroup::X25519,
            NamedGroup::secp256r1,
            NamedGroup::secp384r1
        ]
    );
    let expected = if cfg!(feature = "ring") {
        "ring"
    } else {
        "aws-lc-rs"
    };
    assert_eq!(provider_name(), expected);
    // The same Arc every time: configs built anywhere share one provider.
    assert!(Arc::ptr_eq(&p, &provider()));
}
