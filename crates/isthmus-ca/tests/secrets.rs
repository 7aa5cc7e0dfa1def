//! Gateway credentials from Kubernetes Secrets: layouts, resource names, and precise errors.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_ca::*;

fn server_cert(ca: &Ca, host: &str) -> IssuedCert {
    ca.issue_leaf(&LeafSpec {
        sans: vec![host.to_string()],
        common_name: Some(host.to_string()),
        not_before: SystemTime::now() - Duration::from_secs(60),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    })
    .unwrap()
}

fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn leaf_only(chain: &str) -> String {
    let end = "-----END CERTIFICATE-----\n";
    let i = chain.find(end).unwrap() + end.len();
    chain[..i].to_string()
}

/// A CRL signed by a separate rcgen CA (isthmus' CA does not issue CRLs).
fn crl_pem() -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(p, key);
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(42u64),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

#[test]
fn kubernetes_tls_secret_yields_both_resources() {
    let ca = Ca::generate("cluster.local").unwrap();
    let c = server_cert(&ca, "api.partner.example");
    let mut idx = SecretIndex::new();
    idx.insert(KubeSecret::new(
        "istio-system",
        "partner-client",
        TYPE_TLS,
        data(&[
            ("tls.crt", c.cert_chain_pem.as_bytes()),
            ("tls.key", c.key_pem.as_bytes()),
            ("ca.crt", ca.root_pem().as_bytes()),
        ]),
    ));
    let now = SystemTime::now();
    match idx.resolve("istio-system", "partner-client", now).unwrap() {
        SdsResource::TlsCertificate(t) => {
            assert_eq!(t.name, "kubernetes://partner-client");
            assert_eq!(t.certs[0].serial, c.serial_hex);
            assert!(t.certs[0].valid);
            assert_eq!(t.certs[0].sans[0].value, "api.partner.example");
            assert_eq!(t.private_key_pem, c.key_pem);
        }
        other => panic!("unexpected {other:?}"),
    }
    match idx
        .resolve("istio-system", "kubernetes://partner-client-cacert", now)
        .unwrap()
    {
        SdsResource::ValidationContext(v) => {
            assert_eq!(v.name, "kubernetes://partner-client-cacert");
            assert_eq!(v.trusted_ca_pem, ca.root_pem());
            assert!(v.crl_pem.is_none());
            assert!(v.certs[0].is_ca);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn generic_secrets_accept_istio_alternative_keys_and_crl() {
    let ca = Ca::generate("cluster.local").unwrap();
    let c = server_cert(&ca, "gw.example.com");
    let crl = crl_pem();
    let s = KubeSecret::new(
        "istio-system",
        "gw",
        TYPE_OPAQUE,
        data(&[
            ("cert", c.cert_chain_pem.as_bytes()),
            ("key", c.key_pem.as_bytes()),
            ("cacert", ca.root_pem().as_bytes()),
            ("ca.crl", crl.as_bytes()),
        ]),
    );
    let now = SystemTime::now();
    assert_eq!(s.tls_certificate(now).unwrap().name, "kubernetes://gw");
    let v = s.validation_context("kubernetes://gw-cacert", now).unwrap();
    assert_eq!(v.crl_pem.as_deref(), Some(crl.as_str()));

    // Generic secret with the tls.* names works too.
    let s = KubeSecret::new(
        "ns",
        "g2",
        "",
        data(&[
            ("tls.crt", c.cert_chain_pem.as_bytes()),
            ("tls.key", c.key_pem.as_bytes()),
        ]),
    );
    assert!(s.tls_certificate(now).is_ok());
    assert!(!s.has_ca());
}

#[test]
fn separate_cacert_secret_wins_over_the_base_secret() {
    let ca = Ca::generate("cluster.local").unwrap();
    let other = Ca::generate("cluster.local").unwrap();
    let c = server_cert(&ca, "h.example");
    let mut idx = SecretIndex::new();
    idx.insert(KubeSecret::new(
        "gw",
        "cred",
        TYPE_TLS,
        data(&[
            ("tls.crt", c.cert_chain_pem.as_bytes()),
            ("tls.key", c.key_pem.as_bytes()),
            ("ca.crt", ca.root_pem().as_bytes()),
        ]),
    ));
    idx.insert(KubeSecret::new(
        "gw",
        "cred-cacert",
        TYPE_OPAQUE,
        data(&[("cacert", other.root_pem().as_bytes())]),
    ));
    match idx
        .resolve("gw", "kubernetes://cred-cacert", SystemTime::now())
        .unwrap()
    {
        SdsResource::ValidationContext(v) => assert_eq!(v.trusted_ca_pem, other.root_pem()),
        other => panic!("{other:?}"),
    }
    idx.remove("gw", "cred-cacert");
    match idx.resolve("gw", "cred-cacert", SystemTime::now()).unwrap() {
        SdsResource::ValidationContext(v) => assert_eq!(v.trusted_ca_pem, ca.root_pem()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn secrets_in_other_namespaces_are_not_served() {
    let ca = Ca::generate("cluster.local").unwrap();
    let c = server_cert(&ca, "h.example");
    let mut idx = SecretIndex::new();
    idx.insert(KubeSecret::new(
        "default",
        "cred",
        TYPE_TLS,
        data(&[
            ("tls.crt", c.cert_chain_pem.as_bytes()),
            ("tls.key", c.key_pem.as_bytes()),
        ]),
    ));
    let err = idx
        .resolve("istio-system", "kubernetes://cred", SystemTime::now())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SecretError::NotFound { .. }));
    assert!(msg.contains("secret istio-system/cred not found"), "{msg}");
    assert!(msg.contains("exists in namespace(s) default"), "{msg}");
    let err = idx
        .resolve("istio-system", "cred-cacert", SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, SecretError::NotFound { .. }), "{err}");
    assert!(matches!(
        idx.resolve("x", "file-cert:/a~/b", SystemTime::now()),
        Err(SecretError::BadResourceName(_))
    ));
}

#[test]
fn missing_empty_and_wrong_keys_name_the_secret_and_keys() {
    let now = SystemTime::now();
    let s = KubeSecret::new(
        "istio-system",
        "partner",
        TYPE_OPAQUE,
        data(&[("crt", b"x"), ("private", b"y")]),
    );
    let msg = s.tls_certificate(now).unwrap_err().to_string();
    assert_eq!(
        msg,
        "secret istio-system/partner: found secret, but didn't have expected keys (cert and key) or (tls.crt and tls.key); found: crt, private"
    );
    let s = KubeSecret::new(
        "istio-system",
        "partner",
        TYPE_OPAQUE,
        data(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]),
    );
    let msg = s.tls_certificate(now).unwrap_err().to_string();
    assert!(msg.ends_with("found: a, b, c, and 1 more..."), "{msg}");

    let s = KubeSecret::new(
        "ns",
        "empty",
        TYPE_TLS,
        data(&[("tls.crt", b""), ("tls.key", b"")]),
    );
    let msg = s.tls_certificate(now).unwrap_err().to_string();
    assert!(
        msg.contains("found keys \"tls.crt\" and \"tls.key\", but they were empty"),
        "{msg}"
    );

    // kubernetes.io/tls does not use the generic names.
    let s = KubeSecret::new("ns", "t", TYPE_TLS, data(&[("cert", b"x"), ("key", b"y")]));
    let msg = s.tls_certificate(now).unwrap_err().to_string();
    assert!(msg.contains("expected keys tls.crt and tls.key"), "{msg}");

    let s = KubeSecret::new(
        "ns",
        "noca",
        TYPE_TLS,
        data(&[("tls.crt", b"x"), ("tls.key", b"y")]),
    );
    let msg = s
        .validation_context("kubernetes://noca-cacert", now)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ns/noca") && msg.contains("ca.crt"), "{msg}");
}

#[test]
fn unparsable_pem_and_mismatched_keys_are_reported_precisely() {
    let ca = Ca::generate("cluster.local").unwrap();
    let a = server_cert(&ca, "a.example");
    let b = server_cert(&ca, "b.example");
    let now = SystemTime::now();

    let s = KubeSecret::new(
        "gw",
        "bad-crt",
        TYPE_TLS,
        data(&[("tls.crt", b"hello"), ("tls.key", a.key_pem.as_bytes())]),
    );
    let err = s.tls_certificate(now).unwrap_err();
    assert!(
        matches!(&err, SecretError::InvalidPem { key, .. } if key == "tls.crt"),
        "{err}"
    );
    assert!(
        err.to_string().contains("gw/bad-crt") && err.to_string().contains("no PEM CERTIFICATE"),
        "{err}"
    );

    let s = KubeSecret::new(
        "gw",
        "bad-key",
        TYPE_TLS,
        data(&[
            ("tls.crt", a.cert_chain_pem.as_bytes()),
            (
                "tls.key",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        ]),
    );
    let err = s.tls_certificate(now).unwrap_err();
    assert!(
        matches!(&err, SecretError::InvalidPem { key, .. } if key == "tls.key"),
        "{err}"
    );

    let s = KubeSecret::new(
        "gw",
        "mixed",
        TYPE_TLS,
        data(&[
            ("tls.crt", leaf_only(&a.cert_chain_pem).as_bytes()),
            ("tls.key", b.key_pem.as_bytes()),
        ]),
    );
    let err = s.tls_certificate(now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "secret gw/mixed: private key \"tls.key\" does not match the certificate in \"tls.crt\""
    );

    let s = KubeSecret::new(
        "gw",
        "badca",
        TYPE_OPAQUE,
        data(&[(
            "ca.crt",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )]),
    );
    let err = s
        .validation_context("kubernetes://badca-cacert", now)
        .unwrap_err();
    assert!(
        matches!(&err, SecretError::InvalidPem { key, .. } if key == "ca.crt"),
        "{err}"
    );

    let s = KubeSecret::new(
        "gw",
        "badcrl",
        TYPE_OPAQUE,
        data(&[("ca.crt", ca.root_pem().as_bytes()), ("ca.crl", b"nope")]),
    );
    let err = s
        .validation_context("kubernetes://badcrl-cacert", now)
        .unwrap_err();
    assert!(
        matches!(&err, SecretError::InvalidPem { key, .. } if key == "ca.crl"),
        "{err}"
    );
}

#[test]
fn resource_names_follow_istio() {
    assert_eq!(to_resource_name("cred"), "kubernetes://cred");
    assert_eq!(to_resource_name("kubernetes://cred"), "kubernetes://cred");
}
