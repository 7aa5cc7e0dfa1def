//! Golden tests: YAML in (tests/golden/<case>/input.yaml), JSON out (<case>/<proxy>.json, the
//! `proxy-config all -o json` rendering, plus <proxy>.diagnostics.txt). Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p isthmus-compile --test golden`; otherwise outputs must match.

mod common;

use isthmus_compile::{render, ConfigKind, Filter, Format};

fn check(case: &str) {
    let c = common::load_case(case);
    let dir = common::case_dir(case);
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    for (label, compiled) in &c.proxies {
        // Envoy refuses duplicate resource names: every kind must be unique by name.
        let cfg = &compiled.config;
        let unique = |names: Vec<&str>, what: &str| {
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                names.len(),
                "{case}/{label}: duplicate {what} names in {names:?}"
            );
        };
        unique(
            cfg.listeners.iter().map(|l| l.name.as_str()).collect(),
            "listener",
        );
        unique(
            cfg.clusters.iter().map(|l| l.name.as_str()).collect(),
            "cluster",
        );
        unique(
            cfg.routes.iter().map(|l| l.name.as_str()).collect(),
            "route",
        );
        unique(
            cfg.endpoints
                .iter()
                .map(|l| l.cluster_name.as_str())
                .collect(),
            "endpoint",
        );
        let json = render(
            &compiled.config,
            ConfigKind::All,
            &Filter::default(),
            Format::Json,
        )
        .unwrap();
        let mut diags: Vec<String> = c
            .build_diagnostics
            .iter()
            .map(|d| format!("[build] {d}"))
            .collect();
        diags.extend(compiled.diagnostics.iter().map(|d| d.to_string()));
        let root = format!("{}/", env!("CARGO_MANIFEST_DIR"));
        let diag_text = diags.join("\n").replace(&root, "") + "\n";
        for (file, actual) in [
            (format!("{label}.json"), json),
            (format!("{label}.diagnostics.txt"), diag_text),
        ] {
            let path = dir.join(&file);
            if update {
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!(
                    "missing golden {} (run with UPDATE_GOLDEN=1)",
                    path.display()
                )
            });
            if expected != actual {
                let diff_line = expected
                    .lines()
                    .zip(actual.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.lines().count().min(actual.lines().count()));
                panic!(
                    "{case}/{file} differs from golden at line {}:\n expected: {}\n   actual: {}\n(re-run with UPDATE_GOLDEN=1 after checking the change is intended)",
                    diff_line + 1,
                    expected.lines().nth(diff_line).unwrap_or("<eof>"),
                    actual.lines().nth(diff_line).unwrap_or("<eof>")
                );
            }
        }
    }
}

#[test]
fn golden_t91_https_over_mtls() {
    check("t91-https-over-mtls");
}
#[test]
fn golden_double_mtls() {
    check("double-mtls");
}
#[test]
fn golden_ingress_termination() {
    check("ingress-termination");
}
#[test]
fn golden_ingress_passthrough() {
    check("ingress-passthrough");
}
#[test]
fn golden_egress_sni_passthrough() {
    check("egress-sni-passthrough");
}
#[test]
fn golden_port_level_wipe() {
    check("port-level-wipe");
}

#[test]
fn golden_vs_fault_cors_mirror() {
    check("vs-fault-cors-mirror");
}
#[test]
fn golden_vs_delegate() {
    check("vs-delegate");
}

#[test]
fn compilation_is_deterministic() {
    let a = common::load_case("double-mtls");
    let b = common::load_case("double-mtls");
    for ((la, ca), (_, cb)) in a.proxies.iter().zip(b.proxies.iter()) {
        assert_eq!(
            serde_json::to_string(&ca.config).unwrap(),
            serde_json::to_string(&cb.config).unwrap(),
            "{la}"
        );
    }
}
