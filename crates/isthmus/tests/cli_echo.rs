//! `isthmus echo` as a user runs it: a real process, a real curl.

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn echo_answers_with_what_it_saw_and_status_codes() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args([
            "echo",
            "--http-port",
            &port.to_string(),
            "--address",
            "127.0.0.1",
            "--name",
            "partner",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut body = String::new();
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-s", "-H", "x-probe: 1", &format!("{url}/get")])
            .output()
            .unwrap();
        if out.status.success() {
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/status/418"),
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["server"], "partner");
    assert_eq!(v["path"], "/get");
    assert_eq!(v["headers"]["x-probe"], "1");
    assert_eq!(v["peer_ip"], "127.0.0.1");
    assert_eq!(String::from_utf8_lossy(&code.stdout), "418");
}

#[test]
fn echo_without_ports_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-port"));
}
