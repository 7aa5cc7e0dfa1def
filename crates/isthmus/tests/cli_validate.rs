//! `isthmus validate` end to end: the real binary on the bundled examples and the seeds'
//! negative cases, checking exit codes and kubectl's exact texts.

use std::path::PathBuf;
use std::process::Command;

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

#[test]
fn bundled_example_is_valid() {
    let (code, stdout, stderr) = isthmus(&["validate", "-f", "examples/egress-double-mtls"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("DestinationRule istio-system/partner-originate-mtls: valid"),
        "{stdout}"
    );
}

#[test]
fn seed_t91_n1_tls_mode_tcp_is_rejected_with_kubectl_text() {
    let (code, _stdout, stderr) = isthmus(&[
        "validate",
        "-f",
        "examples/invalid/dr-mode-tcp-invalid.yaml",
    ]);
    assert_eq!(code, 1, "{stderr}");
    // Exactly what kubectl 1.30 printed in the seed: the enum error plus the API server's note
    // that CEL rules were skipped, hence the multi-line `* ` form.
    let expected = concat!(
        "The DestinationRule \"t91-invalid-mode\" is invalid: \n",
        "* spec.trafficPolicy.tls.mode: Unsupported value: \"tcp\": supported values: \"DISABLE\", \"SIMPLE\", \"MUTUAL\", \"ISTIO_MUTUAL\"\n",
        "* <nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation\n"
    );
    assert!(
        stderr.starts_with(expected),
        "missing exact kubectl text in:\n{stderr}"
    );
    // located: file:line:column of the offending field
    assert!(
        stderr.contains("examples/invalid/dr-mode-tcp-invalid.yaml:12:7: error: (DestinationRule istio-vt-t91/t91-invalid-mode) spec.trafficPolicy.tls.mode: Unsupported value"),
        "{stderr}"
    );
}

#[test]
fn seed_duration_as_integer_is_a_type_error() {
    let (code, _stdout, stderr) = isthmus(&[
        "validate",
        "-f",
        "examples/invalid/dr-keepalive-integer-invalid.yaml",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("The DestinationRule \"keepalive-integer\" is invalid: \n"),
        "{stderr}"
    );
    let expected = "* spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: Invalid value: \"integer\": spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time in body must be of type string: \"integer\"";
    assert!(
        stderr.lines().any(|l| l == expected),
        "missing exact kubectl line in:\n{stderr}"
    );
}

#[test]
fn json_output_is_machine_readable() {
    let (code, stdout, _) = isthmus(&[
        "validate",
        "-o",
        "json",
        "-f",
        "examples/invalid/dr-mode-tcp-invalid.yaml",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["kind"], "DestinationRule");
    assert_eq!(d["field"], "spec.trafficPolicy.tls.mode");
    assert_eq!(d["line"], 12);
    assert_eq!(d["severity"], "error");
}

#[test]
fn usage_errors_exit_2_and_missing_files_exit_1() {
    let (code, _, _) = isthmus(&["validate"]);
    assert_eq!(code, 2);
    let (code, _, stderr) = isthmus(&["validate", "-f", "does/not/exist.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("does/not/exist.yaml"), "{stderr}");
}

#[test]
fn stdin_and_garbage_never_panic() {
    use std::io::Write;
    for input in [
        &b"\x00\x01\x02binary"[..],
        b"kind: [",
        b"- - - -",
        b"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 5}\n",
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["validate", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "input {:?}: {}",
            input,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
