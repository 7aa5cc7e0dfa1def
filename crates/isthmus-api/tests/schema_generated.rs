//! The committed schema table (`src/schema/generated.rs`) must equal what the generator
//! produces from Istio's CRD file in the corpora. Regenerate with
//! `ISTHMUS_SCHEMA_REGEN=1 cargo test -p isthmus-api --test schema_generated`.

use std::path::PathBuf;

fn corpora_dir() -> Option<PathBuf> {
    isthmus_testutil::corpora_dir(env!("CARGO_MANIFEST_DIR"), "istio-validation")
}

#[test]
fn schema_generated_up_to_date() {
    let Some(dir) = corpora_dir() else { return };
    let crd = dir.join("istio-validation/customresourcedefinitions.gen.yaml");
    let text = std::fs::read_to_string(&crd).expect("read CRD file");
    let docs = isthmus_api::yaml::parse_stream(&text).expect("parse CRD file");
    let json: Vec<serde_json::Value> = docs.iter().map(|d| d.root.to_json()).collect();
    let generated = isthmus_api::schema::codegen::generate(&json).expect("generate schema table");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/schema/generated.rs");
    if std::env::var("ISTHMUS_SCHEMA_REGEN").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("write generated.rs");
        eprintln!("regenerated {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).expect("read generated.rs");
    assert!(
        committed == generated,
        "src/schema/generated.rs is out of date with {}; regenerate with \
         ISTHMUS_SCHEMA_REGEN=1 cargo test -p isthmus-api --test schema_generated",
        crd.display()
    );
}

#[test]
fn generator_refuses_unknown_constructs() {
    use serde_json::json;
    let crd = |schema: serde_json::Value| {
        let mut docs = Vec::new();
        for kind in isthmus_api::schema::codegen::KINDS {
            docs.push(json!({
                "kind": "CustomResourceDefinition",
                "spec": {"group": "networking.istio.io", "names": {"kind": kind},
                          "versions": [{"name": "v1", "served": true,
                                        "schema": {"openAPIV3Schema": schema.clone()}}]}
            }));
        }
        isthmus_api::schema::codegen::generate(&docs)
    };
    let ok = crd(
        json!({"type": "object", "properties": {"spec": {"type": "string",
        "x-kubernetes-validations": [{"rule": "self.size() > 1", "message": "m"}]}}}),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let bad_rule = crd(
        json!({"type": "object", "properties": {"spec": {"type": "string",
        "x-kubernetes-validations": [{"rule": "isIP(self)", "message": "m"}]}}}),
    );
    let e = bad_rule
        .expect_err("unsupported CEL must fail generation")
        .to_string();
    assert!(e.contains("isIP"), "{e}");
    let bad_key = crd(
        json!({"type": "object", "properties": {"spec": {"type": "string", "pattern": "^a$"}}}),
    );
    assert!(bad_key
        .expect_err("pattern is not implemented")
        .to_string()
        .contains("pattern"));
    let msg_expr = crd(
        json!({"type": "object", "properties": {"spec": {"type": "string",
        "x-kubernetes-validations": [{"rule": "true", "messageExpression": "'x'"}]}}}),
    );
    assert!(msg_expr.is_err());
    let bad_format = crd(
        json!({"type": "object", "properties": {"spec": {"type": "string", "format": "cidr"}}}),
    );
    assert!(bad_format.is_err());
}
