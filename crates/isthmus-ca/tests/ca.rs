//! CA behaviour: persistence, cacerts loading, SPIFFE issuance checked with real openssl,
//! rotation, and the token-bound issuance API.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_ca::*;
use isthmus_tls::Identity;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed for these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Splits a PEM bundle into individual certificate PEMs.
fn split_pem(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|s| s.contains("BEGIN CERTIFICATE"))
        .map(str::to_string)
        .collect()
}

#[test]
fn generated_root_is_persisted_with_private_key_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (ca, origin) = Ca::load_or_generate(&ca_dir, "cluster.local").unwrap();
    assert_eq!(origin, CaOrigin::Generated);
    for f in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert!(ca_dir.join(f).exists(), "{f} missing");
    }
    let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key file mode");

    let (again, origin) = Ca::load_or_generate(&ca_dir, "cluster.local").unwrap();
    assert_eq!(origin, CaOrigin::Loaded);
    assert_eq!(
        again.root_pem(),
        ca.root_pem(),
        "restart must keep the same root"
    );

    // The root: ECDSA P-256, CA:TRUE, O=cluster.local, CN=isthmus root CA.
    let root = write(dir.path(), "root.pem", ca.root_pem());
    let (ok, text) = openssl(&["x509", "-in", &root, "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
    assert!(text.contains("O = cluster.local"), "{text}");
    assert!(text.contains("CN = isthmus root CA"), "{text}");
}

#[test]
fn workload_certificate_has_exact_spiffe_uri_san_and_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("cluster.local").unwrap();
    let cert = ca.issue(&id("default", "sleep"), None).unwrap();
    let leaf_pem = &split_pem(&cert.cert_chain_pem)[0];
    let leaf = write(dir.path(), "leaf.pem", leaf_pem);
    let (ok, text) = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/sleep"),
        "openssl output lacks the SPIFFE URI SAN:\n{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // SVIDs have an empty subject, so the SAN extension must be critical.
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );

    // Lifetime: the default 24h (+ the back-dating allowance).
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(life, DEFAULT_WORKLOAD_TTL + CLOCK_SKEW_ALLOWANCE);

    // Key matches, chain verifies against the root.
    let root = write(dir.path(), "root.pem", &cert.root_pem);
    let (ok, text) = openssl(&["verify", "-CAfile", &root, &leaf]);
    assert!(ok && text.contains("OK"), "{text}");
    let key = write(dir.path(), "key.pem", &cert.key_pem);
    let (_, a) = openssl(&["pkey", "-in", &key, "-pubout"]);
    let (_, b) = openssl(&["x509", "-in", &leaf, "-noout", "-pubkey"]);
    assert_eq!(a, b, "private key must match the certificate");

    // A certificate from another root does not verify.
    let other = Ca::generate("cluster.local").unwrap();
    let other_root = write(dir.path(), "other.pem", other.root_pem());
    let (ok, _) = openssl(&["verify", "-CAfile", &other_root, &leaf]);
    assert!(!ok, "must not verify against an unrelated root");
}

#[test]
fn serials_are_random_and_ttl_configurable() {
    let ca = Ca::generate("cluster.local")
        .unwrap()
        .with_workload_ttl(Duration::from_secs(3600))
        .unwrap();
    let a = ca.issue(&id("a", "a"), None).unwrap();
    let b = ca.issue(&id("a", "a"), None).unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
    assert!(
        a.serial_hex.len() >= 30,
        "128-bit serial expected, got {}",
        a.serial_hex
    );
    assert_eq!(
        a.not_after.duration_since(a.not_before).unwrap(),
        Duration::from_secs(3600) + CLOCK_SKEW_ALLOWANCE
    );
    let c = ca
        .issue(&id("a", "a"), Some(Duration::from_secs(600)))
        .unwrap();
    assert_eq!(
        c.not_after.duration_since(c.not_before).unwrap(),
        Duration::from_secs(600) + CLOCK_SKEW_ALLOWANCE
    );
    assert!(Ca::generate("cluster.local")
        .unwrap()
        .with_workload_ttl(Duration::from_secs(1))
        .is_err());
}

#[test]
fn at_sign_in_trust_domain_is_replaced() {
    let ca = Ca::generate("corp@example.com").unwrap();
    assert_eq!(ca.trust_domain(), "corp.example.com");
    let ident = Identity::new("corp@example.com", "ns", "sa").unwrap();
    let cert = ca.issue(&ident, None).unwrap();
    let info =
        &CertInfo::from_pem(cert.cert_chain_pem.as_bytes(), "t", SystemTime::now()).unwrap()[0];
    assert_eq!(info.sans[0].value, "spiffe://corp.example.com/ns/ns/sa/sa");
}

#[test]
fn plugged_in_intermediate_signs_and_serves_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let root_ca = Ca::generate("cluster.local").unwrap();
    let files = root_ca
        .issue_intermediate("intermediate CA cluster1", Duration::from_secs(86400 * 365))
        .unwrap();
    let plug = dir.path().join("cacerts");
    files.write(&plug).unwrap();

    let (ca, origin) = Ca::load_or_generate(&plug, "cluster.local").unwrap();
    assert_eq!(origin, CaOrigin::Loaded);
    assert_eq!(ca.root_pem(), root_ca.root_pem());
    let cert = ca.issue(&id("prod", "api"), None).unwrap();
    let parts = split_pem(&cert.cert_chain_pem);
    assert_eq!(parts.len(), 3, "leaf + intermediate + root expected");

    // openssl: trust only the root, pass the intermediate as untrusted.
    let root = write(dir.path(), "root.pem", ca.root_pem());
    let inter = write(dir.path(), "inter.pem", &parts[1]);
    let leaf = write(dir.path(), "leaf.pem", &parts[0]);
    let (ok, text) = openssl(&["verify", "-CAfile", &root, "-untrusted", &inter, &leaf]);
    assert!(ok, "{text}");
    let (_, issuer) = openssl(&["x509", "-in", &leaf, "-noout", "-issuer"]);
    assert!(issuer.contains("intermediate CA cluster1"), "{issuer}");
}

#[test]
fn openssl_generated_sec1_and_pkcs1_cacerts_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for (name, genkey, tail) in [
        (
            "ec",
            vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            vec![],
        ),
        ("rsa", vec!["genrsa", "-traditional"], vec!["2048"]),
    ] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let key = d.join(CA_KEY_FILE).display().to_string();
        let mut args = genkey.clone();
        args.extend(["-out", key.as_str()]);
        args.extend(tail);
        let (ok, text) = openssl(&args);
        assert!(ok, "{text}");
        let keytext = std::fs::read_to_string(&key).unwrap();
        assert!(
            keytext.contains("EC PRIVATE KEY") || keytext.contains("RSA PRIVATE KEY"),
            "{keytext}"
        );
        let cert = d.join(CA_CERT_FILE).display().to_string();
        let (ok, text) = openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-days",
            "30",
            "-subj",
            "/O=Example/CN=Example Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &cert,
        ]);
        assert!(ok, "{text}");
        std::fs::copy(&cert, d.join(ROOT_CERT_FILE)).unwrap();
        let ca = Ca::load(&d, "cluster.local").unwrap_or_else(|e| panic!("{name}: {e}"));
        let issued = ca.issue(&id("default", "sleep"), None).unwrap();
        let leaf = write(&d, "leaf.pem", &split_pem(&issued.cert_chain_pem)[0]);
        let (ok, text) = openssl(&["verify", "-CAfile", &cert, &leaf]);
        assert!(ok, "{name}: {text}");
    }
}

#[test]
fn broken_cacerts_are_rejected_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ca::generate("cluster.local").unwrap();
    let b = Ca::generate("cluster.local").unwrap();

    // Key from another CA.
    let mut files = a.files().clone();
    files.ca_key_pem = b.files().ca_key_pem.clone();
    let err = Ca::from_files(files, "cluster.local", "cacerts")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ca-key.pem") && err.contains("does not match"),
        "{err}"
    );

    // Root that is not the chain's anchor.
    let mut files = a.files().clone();
    files.root_cert_pem = b.root_pem().to_string();
    let err = Ca::from_files(files, "cluster.local", "cacerts")
        .unwrap_err()
        .to_string();
    assert!(err.contains("root-cert.pem"), "{err}");

    // Garbage PEM.
    let mut files = a.files().clone();
    files.ca_cert_pem =
        "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n".into();
    let err = Ca::from_files(files, "cluster.local", "cacerts")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca-cert.pem"), "{err}");

    // A leaf certificate is not a CA.
    let leaf = a.issue(&id("x", "y"), None).unwrap();
    let files = CaFiles {
        ca_cert_pem: split_pem(&leaf.cert_chain_pem)[0].clone(),
        ca_key_pem: leaf.key_pem.clone(),
        root_cert_pem: a.root_pem().to_string(),
        cert_chain_pem: String::new(),
    };
    let err = Ca::from_files(files, "cluster.local", "cacerts")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a CA"), "{err}");

    // Incomplete directory: never overwritten, never silently regenerated.
    let d = dir.path().join("partial");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(CA_CERT_FILE), a.root_pem()).unwrap();
    let err = Ca::load_or_generate(&d, "cluster.local")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("incomplete") && err.contains("ca-key.pem"),
        "{err}"
    );
    assert!(!d.join(CA_KEY_FILE).exists());
}

#[test]
fn rotation_is_due_after_half_the_lifetime() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let v = Validity {
        not_before: t0,
        not_after: t0 + Duration::from_secs(100),
    };
    assert_eq!(v.rotation_at(), t0 + Duration::from_secs(50));
    assert!(!v.rotation_due(t0 + Duration::from_secs(49)));
    assert!(v.rotation_due(t0 + Duration::from_secs(50)));
    assert!(v.rotation_due(t0 + Duration::from_secs(500)));

    let ca = Ca::generate("cluster.local").unwrap();
    let cert = ca.issue(&id("a", "b"), None).unwrap();
    let now = SystemTime::now();
    assert!(!rotation_due(&cert, now));
    assert!(!rotation_due(&cert, now + Duration::from_secs(11 * 3600)));
    assert!(rotation_due(&cert, now + Duration::from_secs(13 * 3600)));
}

#[test]
fn manager_keeps_current_cert_and_reissues_when_due() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let m = WorkloadCertManager::new(ca, None);
    let mut changes = m.subscribe();
    let sleep = id("default", "sleep");
    let now = SystemTime::now();
    let first = m.get(&sleep, now).unwrap();
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    let again = m.get(&sleep, now + Duration::from_secs(3600)).unwrap();
    assert_eq!(
        first.serial_hex, again.serial_hex,
        "not due yet: same certificate"
    );
    assert!(m.refresh(now + Duration::from_secs(3600)).is_empty());
    assert!(!changes.has_changed().unwrap());

    let due_at = m.next_due().unwrap();
    assert_eq!(due_at, first.validity().rotation_at());
    let rotated = m.refresh(due_at + Duration::from_secs(1));
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0].0, sleep);
    assert_ne!(rotated[0].1.serial_hex, first.serial_hex);
    assert_eq!(
        m.current(&sleep).unwrap().serial_hex,
        rotated[0].1.serial_hex
    );
    assert!(changes.has_changed().unwrap());
    assert_eq!(m.identities(), vec![sleep.clone()]);
    assert!(m.remove(&sleep));
    assert!(m.current(&sleep).is_none());
}

#[tokio::test]
async fn refresh_when_due_sleeps_until_the_next_rotation() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    // 4s certificates are back-dated by 0.4s and X.509 times have one-second resolution
    // (notBefore truncates down by up to 1s), so rotation falls due between ~1.0s and ~1.6s
    // after issuance: never within the 50ms probe below, whatever the sub-second clock phase.
    // (A 2s lifetime made this flaky: issued at x.95s, it could fall due 50ms later.)
    let m = WorkloadCertManager::new(ca, Some(Duration::from_secs(4)));
    let sleep = id("default", "sleep");
    let first = m.get(&sleep, SystemTime::now()).unwrap();
    assert!(
        !rotation_due(&first, SystemTime::now()),
        "fresh certificate must not be due"
    );

    // Bounded by max_wait: nothing is due within 50ms.
    let started = std::time::Instant::now();
    assert!(m
        .refresh_when_due(Duration::from_millis(50))
        .await
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(50));

    // Sleeps until the due time, then rotates.
    let rotated = m.refresh_when_due(Duration::from_secs(10)).await;
    // (Certificate times have one-second resolution, so compare with the cert's own due time.)
    assert!(SystemTime::now() >= first.validity().rotation_at());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rotated.len(), 1);
    assert_ne!(rotated[0].1.serial_hex, first.serial_hex);
}

#[test]
fn a_token_only_ever_yields_its_own_identity() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let svc = CaService::new(ca, None);
    let (ta, tb) = (generate_token(), generate_token());
    assert_ne!(ta, tb);
    let a = id("default", "sleep");
    let b = id("prod", "payments");
    svc.register_proxy(&ta, a.clone()).unwrap();
    svc.register_proxy(&tb, b.clone()).unwrap();
    let now = SystemTime::now();

    let ca_cert = svc.issue_for_token(&ta, now).unwrap();
    assert_eq!(ca_cert.identity.as_ref(), Some(&a));
    let info = &CertInfo::from_pem(ca_cert.cert_chain_pem.as_bytes(), "a", now).unwrap()[0];
    assert_eq!(info.sans.len(), 1);
    assert_eq!(info.sans[0].value, a.spiffe_uri());
    assert_ne!(info.sans[0].value, b.spiffe_uri());

    let cb = svc.issue_for_token(&tb, now).unwrap();
    assert_eq!(cb.identity.as_ref(), Some(&b));

    // Unknown or mangled tokens get nothing.
    assert!(matches!(
        svc.issue_for_token("0123456789abcdef0123", now),
        Err(IssueError::UnknownToken)
    ));
    assert!(matches!(
        svc.issue_for_token(&ta[..ta.len() - 1], now),
        Err(IssueError::UnknownToken)
    ));
    assert!(matches!(
        svc.issue_for_token("", now),
        Err(IssueError::UnknownToken)
    ));

    // A token cannot be rebound to another identity.
    let err = svc.register_proxy(&ta, b.clone()).unwrap_err();
    assert!(matches!(err, IssueError::TokenBound { .. }), "{err}");
    assert_eq!(
        svc.issue_for_token(&ta, now).unwrap().identity.as_ref(),
        Some(&a)
    );
    svc.register_proxy(&ta, a.clone()).unwrap(); // idempotent

    // Weak tokens and foreign trust domains are refused.
    assert!(matches!(
        svc.register_proxy("short", a.clone()),
        Err(IssueError::WeakToken(5))
    ));
    let foreign = Identity::new("evil.example", "default", "sleep").unwrap();
    assert!(matches!(
        svc.register_proxy(&generate_token(), foreign),
        Err(IssueError::WrongTrustDomain { .. })
    ));

    // Unregistered tokens stop working.
    assert!(svc.unregister_proxy(&ta));
    assert!(matches!(
        svc.issue_for_token(&ta, now),
        Err(IssueError::UnknownToken)
    ));
    assert!(svc.root_pem().contains("BEGIN CERTIFICATE"));
}

#[test]
fn cert_info_formats_serial_times_sans_and_validity() {
    let ca = Ca::generate("cluster.local").unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
    let expired = ca
        .issue_with_validity(&id("default", "old"), t0, t0 + Duration::from_secs(3600))
        .unwrap();
    let info =
        &CertInfo::from_pem(expired.cert_chain_pem.as_bytes(), "x", SystemTime::now()).unwrap()[0];
    assert_eq!(info.not_before, "2023-11-14T22:13:20Z");
    assert_eq!(info.not_after, "2023-11-14T23:13:20Z");
    assert_eq!(info.serial, expired.serial_hex);
    assert!(info
        .serial
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(!info.valid, "expired certificate must show valid=false");
    assert!(info.subject.is_empty());
    assert!(info.issuer.contains("isthmus root CA"), "{}", info.issuer);
    let during = CertInfo::from_pem(
        expired.cert_chain_pem.as_bytes(),
        "x",
        t0 + Duration::from_secs(60),
    )
    .unwrap();
    assert!(during[0].valid);
    assert!(during[1].is_ca, "second entry is the CA");

    let server = ca
        .issue_leaf(&LeafSpec {
            sans: vec![
                "api.partner.example".into(),
                "10.1.2.3".into(),
                "spiffe://x/ns/a/sa/b".into(),
            ],
            common_name: Some("api.partner.example".into()),
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        })
        .unwrap();
    let info =
        &CertInfo::from_pem(server.cert_chain_pem.as_bytes(), "x", SystemTime::now()).unwrap()[0];
    let json = serde_json::to_value(info).unwrap();
    assert_eq!(json["sans"][0]["kind"], "DNS");
    assert_eq!(json["sans"][1]["kind"], "IP");
    assert_eq!(json["sans"][1]["value"], "10.1.2.3");
    assert_eq!(json["sans"][2]["kind"], "URI");
    assert_eq!(json["subject"], "CN=api.partner.example");
    assert_eq!(json["valid"], true);
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Ca>();
    check::<CaService>();
    check::<WorkloadCertManager>();
    check::<IssuedCert>();
    check::<SecretIndex>();
    check::<isthmus_tls::CertStore>();
    check::<isthmus_tls::ServerTls>();
    check::<isthmus_tls::UpstreamTls>();
    check::<isthmus_tls::SniCertResolver>();
}

#[test]
fn csr_signing_uses_only_the_token_identity_and_keeps_the_key_local() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let svc = CaService::new(ca.clone(), Some(Duration::from_secs(3600)));
    let token = generate_token();
    let me = id("default", "sleep");
    svc.register_proxy(&token, me.clone()).unwrap();

    // The proxy asks for somebody else's identity in its CSR...
    let (csr, key) = generate_csr(&id("prod", "payments")).unwrap();
    let cert = svc.sign_csr_for_token(&token, &csr).unwrap();
    // ...but gets its own.
    let info =
        &CertInfo::from_pem(cert.cert_chain_pem.as_bytes(), "csr", SystemTime::now()).unwrap()[0];
    assert_eq!(info.sans.len(), 1);
    assert_eq!(
        info.sans[0].value,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert!(
        cert.key_pem.is_empty(),
        "the CA never sees or returns the private key"
    );
    assert_eq!(
        cert.not_after.duration_since(cert.not_before).unwrap(),
        Duration::from_secs(3600) + CLOCK_SKEW_ALLOWANCE
    );
    // The locally held key matches the signed certificate.
    isthmus_tls::CertStore::from_pem("default", cert.cert_chain_pem.as_bytes(), key.as_bytes())
        .unwrap();
    let leaf = write(dir.path(), "leaf.pem", &split_pem(&cert.cert_chain_pem)[0]);
    let root = write(dir.path(), "root.pem", ca.root_pem());
    let (ok, text) = openssl(&["verify", "-CAfile", &root, &leaf]);
    assert!(ok, "{text}");

    // Unknown tokens and tampered CSRs are refused.
    assert!(matches!(
        svc.sign_csr_for_token("0123456789abcdef0123", &csr),
        Err(IssueError::UnknownToken)
    ));
    let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
    let mid = lines.len() / 2;
    let flipped: String = lines[mid].chars().rev().collect();
    lines[mid] = flipped;
    let tampered = lines.join("\n");
    assert!(svc.sign_csr_for_token(&token, &tampered).is_err());
    assert!(svc.sign_csr_for_token(&token, "not a csr").is_err());
}
