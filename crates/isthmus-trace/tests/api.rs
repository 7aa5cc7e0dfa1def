//! The library API as other crates call it: load → snapshot → trace → render.

use isthmus_api::{find_mesh_config, load_paths, LoadOptions, MeshConfig};
use isthmus_model::Snapshot;
use isthmus_trace::{render_text, trace, LayerKind, TraceError, TraceRequest};
use std::path::PathBuf;

fn snapshot(example: &str, domain: &str) -> Snapshot {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(example);
    let loaded = load_paths(&[dir], &LoadOptions::default()).expect("example loads");
    let mesh = find_mesh_config(&loaded.objects)
        .map(|(_, t)| MeshConfig::from_yaml(t).expect("mesh config"))
        .unwrap_or_default();
    Snapshot::build(&loaded.objects, mesh, domain).0
}

fn req(source: &str, ns: &str, url: &str) -> TraceRequest {
    TraceRequest {
        source: source.into(),
        namespace: Some(ns.into()),
        url: url.into(),
        ..Default::default()
    }
}

#[test]
fn api_traces_the_double_mtls_egress_and_renders_every_fact() {
    let snap = snapshot("examples/egress-double-mtls", "cluster.local");
    let t = trace(
        &snap,
        &req(
            "deploy/sleep",
            "mesh-test",
            "http://api.partner.example.com/",
        ),
    )
    .unwrap();
    assert_eq!(t.hops.len(), 2);
    assert_eq!(t.verdict.status, "reached");
    let out: Vec<LayerKind> = t
        .hops
        .iter()
        .flat_map(|h| h.wire_out.iter().map(|l| l.kind))
        .collect();
    assert_eq!(out, [LayerKind::MeshMtls, LayerKind::MutualOrigination]);
    let text = render_text(&t);
    for h in &t.hops {
        assert!(
            text.contains(&format!(
                "  listener:  {}\n",
                h.listener.as_deref().unwrap()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("  cluster:   {}\n", h.cluster.as_deref().unwrap())),
            "{text}"
        );
    }
    assert!(
        text.ends_with(&format!("RESULT: {}\n", t.verdict.summary)),
        "{text}"
    );
    // JSON carries the same facts.
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(
        v["hops"][1]["cluster"],
        "outbound|443||api.partner.example.com"
    );
    assert_eq!(v["hops"][1]["upstream_tls"]["kind"], "MUTUAL origination");
}

#[test]
fn api_reports_request_errors_with_hints() {
    let snap = snapshot("examples/egress-double-mtls", "cluster.local");
    let e = trace(&snap, &req("deploy/sleep", "default", "http://x/")).unwrap_err();
    assert!(matches!(e, TraceError::Source(_)));
    let e = trace(&snap, &req("deploy/sleep", "mesh-test", "ftp://x/")).unwrap_err();
    assert!(e.to_string().contains("use http, https, tcp or tls"), "{e}");
}
