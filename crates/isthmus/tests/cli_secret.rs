//! `isthmus proxy-config secret` on the double-mTLS egress example, run as a user runs it: the
//! gateway's credentialName secrets resolved from its own namespace with the partner client
//! certificate's real serial and validity (checked against `openssl x509`), the sidecar not
//! getting them, and copies of the example with the Secret moved to another namespace or with
//! wrong key names.

use std::path::{Path, PathBuf};
use std::process::Command;

const GATEWAY: [&str; 3] = ["deploy/istio-egressgateway", "-n", "istio-system"];
const CRED: &str = "kubernetes://partner-client-credential";
const CRED_CA: &str = "kubernetes://partner-client-credential-cacert";

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/egress-double-mtls")
}

fn isthmus(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .output()
        .expect("run isthmus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secret(target: &[&str], dir: &Path, json: bool) -> (String, String) {
    let mut args = vec!["proxy-config", "secret"];
    args.extend_from_slice(target);
    let d = dir.to_string_lossy().into_owned();
    args.extend_from_slice(&["-f", &d]);
    if json {
        args.extend_from_slice(&["-o", "json"]);
    }
    let (code, out, err) = isthmus(&args);
    assert_eq!(code, 0, "isthmus {args:?} failed: {err}");
    (out, err)
}

/// The table row of `name` (first one), split on runs of 2+ spaces.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Minimal standard base64 decoder (the example's Secret `data`).
fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// (serial lowercase hex without leading zeros, notBefore, notAfter as RFC 3339) of the
/// partner client certificate, as openssl reads it from the example's Secret.
fn openssl_facts(key: &str) -> (String, String, String) {
    let yaml = std::fs::read_to_string(example().join("30-partner-credential.yaml")).unwrap();
    let doc = yaml
        .split("\n---")
        .find(|d| d.contains("name: partner-client-credential\n"))
        .expect("the credential Secret");
    let b64 = doc
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .expect("key in Secret")
        .trim()
        .to_string();
    let pem = std::env::temp_dir().join(format!(
        "isthmus-cli-secret-{}-{key}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, b64decode(&b64)).unwrap();
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-serial",
            "-startdate",
            "-enddate",
            "-dateopt",
            "iso_8601",
            "-in",
        ])
        .arg(&pem)
        .output()
        .expect("openssl is installed");
    let _ = std::fs::remove_file(&pem);
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .trim()
            .to_string()
    };
    let serial = field("serial=").to_ascii_lowercase();
    let serial = serial.trim_start_matches('0').to_string();
    // openssl's iso_8601: `2026-11-22 01:14:39Z` → RFC 3339.
    let iso = |s: String| s.replacen(' ', "T", 1);
    (serial, iso(field("notBefore=")), iso(field("notAfter=")))
}

/// A copy of the example in a fresh temp dir, with `edit` applied to the credential file.
fn edited_copy(tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isthmus-cli-secret-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(example()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cred = dir.join("30-partner-credential.yaml");
    let text = std::fs::read_to_string(&cred).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the example");
    std::fs::write(&cred, edited).unwrap();
    dir
}

#[test]
fn gateway_serves_partner_credential_with_real_cert_details() {
    let (out, _) = secret(&GATEWAY, &example(), false);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE"
        ]
    );
    let (serial, not_before, not_after) = openssl_facts("tls.crt");
    assert_eq!(
        row(&out, CRED),
        [
            CRED,
            "Cert Chain",
            "ACTIVE",
            "true",
            serial.as_str(),
            not_after.as_str(),
            not_before.as_str()
        ],
        "{out}"
    );
    let (ca_serial, _, _) = openssl_facts("ca.crt");
    let ca = row(&out, CRED_CA);
    assert_eq!(
        ca[..5],
        [CRED_CA, "CA", "ACTIVE", "true", ca_serial.as_str()],
        "{out}"
    );
    // The mesh identity comes from the CA at start: shown as the identity it will get.
    assert_eq!(row(&out, "default")[2], "ISSUED AT START");
    assert_eq!(row(&out, "ROOTCA")[1], "CA");
    assert!(
        out.contains(
            "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
        ) && out.contains("issued by the mesh CA at start"),
        "{out}"
    );

    let (json, _) = secret(&GATEWAY, &example(), true);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cred = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == CRED)
        .expect("credential in json");
    assert_eq!(cred["state"], "ACTIVE");
    assert_eq!(
        cred["referencedBy"][0],
        "DestinationRule istio-system/partner-originate-mtls"
    );
    let cert = &cred["certs"][0];
    assert_eq!(
        cert["serial"].as_str().unwrap().trim_start_matches('0'),
        serial
    );
    assert_eq!(cert["not_before"], not_before.as_str());
    assert_eq!(cert["not_after"], not_after.as_str());
    assert_eq!(cert["subject"], "CN=egress-client");
    assert_eq!(cert["valid"], true);
    assert!(cert["sans"].is_array());
    // The SDS resource is there with the chain inline, the key redacted as Envoy's dump does.
    assert!(cred["secret"]["tlsCertificate"]["certificateChain"]["inlineBytes"].is_string());
    assert_eq!(
        cred["secret"]["tlsCertificate"]["privateKey"]["inlineString"],
        "[redacted]"
    );
}

#[test]
fn sidecar_does_not_get_gateway_credentials() {
    let (out, _) = secret(&["deploy/sleep", "-n", "mesh-test"], &example(), false);
    assert!(!out.contains("kubernetes://"), "{out}");
    assert_eq!(
        row(&out, "default")[..3],
        ["default", "Cert Chain", "ISSUED AT START"]
    );
    assert!(
        out.contains("spiffe://cluster.local/ns/mesh-test/sa/sleep"),
        "{out}"
    );
}

#[test]
fn secret_in_another_namespace_is_missing_with_warning() {
    let dir = edited_copy("wrongns", |t| {
        t.replacen(
            "name: partner-client-credential\n  namespace: istio-system",
            "name: partner-client-credential\n  namespace: partner",
            1,
        )
    });
    let (out, err) = secret(&GATEWAY, &dir, false);
    assert_eq!(
        row(&out, CRED)[..4],
        [CRED, "Cert Chain", "MISSING", "false"],
        "{out}"
    );
    assert_eq!(row(&out, CRED_CA)[..3], [CRED_CA, "CA", "MISSING"], "{out}");
    let warning = err
        .lines()
        .find(|l| {
            l.contains("warning")
                && l.contains("DestinationRule istio-system/partner-originate-mtls")
        })
        .unwrap_or_else(|| panic!("no warning naming the DR: {err}"));
    assert!(
        warning.contains("is in namespace partner")
            && warning.contains("runs in istio-system")
            && warning.contains("create the Secret in namespace istio-system"),
        "{warning}"
    );
    // NAME and NAME-cacert fail for the same reason: one warning, not two.
    assert_eq!(err.matches("is in namespace partner").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_key_names_are_invalid_naming_the_keys() {
    let dir = edited_copy("wrongkeys", |t| {
        let (first, rest) = t.split_once("\n---").unwrap();
        format!(
            "{}\n---{rest}",
            first
                .replace("  tls.crt:", "  certificate:")
                .replace("  tls.key:", "  private.key:")
        )
    });
    let (out, err) = secret(&GATEWAY, &dir, false);
    assert_eq!(
        row(&out, CRED)[..4],
        [CRED, "Cert Chain", "INVALID", "false"],
        "{out}"
    );
    // ca.crt is still there: the validation context resolves.
    assert_eq!(
        row(&out, CRED_CA)[..4],
        [CRED_CA, "CA", "ACTIVE", "true"],
        "{out}"
    );
    let note = out
        .lines()
        .find(|l| l.starts_with(&format!("{CRED}:")))
        .unwrap_or_else(|| panic!("no reason line: {out}"));
    assert!(
        note.contains("tls.crt and tls.key")
            && note.contains("found: ca.crt, certificate, private.key"),
        "{note}"
    );
    assert!(
        err.lines().any(|l| l.contains("warning")
            && l.contains("DestinationRule istio-system/partner-originate-mtls")
            && l.contains("found: ca.crt, certificate, private.key")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
