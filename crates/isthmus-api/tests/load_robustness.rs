//! Whatever bytes arrive, loading returns located diagnostics and never panics.

use isthmus_api::{load_str, LoadOptions};
use proptest::prelude::*;

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        "[a-zA-Z0-9*./:_-]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("spec".to_string()),
                    Just("host".to_string()),
                    Just("trafficPolicy".to_string()),
                    Just("tls".to_string()),
                    Just("mode".to_string()),
                    Just("servers".to_string()),
                    Just("port".to_string()),
                    Just("hosts".to_string()),
                    Just("http".to_string()),
                    Just("route".to_string()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = load_str("fuzz.yaml", &s, &LoadOptions::default());
    }

    #[test]
    fn arbitrary_specs_never_panic(spec in arb_json(), kind in prop_oneof![
        Just("Gateway"), Just("VirtualService"), Just("DestinationRule"), Just("ServiceEntry"),
        Just("Sidecar"), Just("WorkloadEntry"), Just("Service"), Just("Deployment"), Just("Secret")]) {
        let api = match kind { "Service" | "Secret" => "v1", "Deployment" => "apps/v1", _ => "networking.istio.io/v1" };
        let doc = serde_json::json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": spec});
        let text = serde_json::to_string(&doc).unwrap();
        let loaded = load_str("fuzz.json", &text, &LoadOptions::default());
        // Every error is located somewhere in the file.
        for d in &loaded.diagnostics {
            prop_assert!(d.line >= 1, "{d}");
        }
    }
}

#[test]
fn huge_and_deep_documents_are_rejected_cleanly() {
    let nested = format!("spec: {}{}", "[".repeat(5000), "]".repeat(5000));
    let l = load_str("x.yaml", &nested, &LoadOptions::default());
    assert!(l.has_errors());
    assert!(
        l.diagnostics[0].message.contains("recursion limit")
            || l.diagnostics[0].message.contains("nested too deeply"),
        "{:?}",
        l.diagnostics
    );
    let mut wide = String::new();
    for i in 0..20_000 {
        wide.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{i}}}\n"
        ));
    }
    let l = load_str("wide.yaml", &wide, &LoadOptions::default());
    assert_eq!(l.objects.len(), 20_000);
}

#[test]
fn binary_garbage_is_a_located_syntax_error() {
    let l = load_str(
        "bin.yaml",
        "\u{0}\u{1}\u{2}: [\u{7f}",
        &LoadOptions::default(),
    );
    assert!(l.has_errors());
    assert_eq!(l.diagnostics[0].code, "YAML");
}

#[test]
fn list_kind_unknown_kinds_and_namespaces() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {ports: [{port: 80}]}
- apiVersion: example.com/v1
  kind: Widget
  metadata: {name: w}
"#;
    let l = load_str(
        "list.yaml",
        text,
        &LoadOptions {
            default_namespace: Some("team".into()),
            ..LoadOptions::default()
        },
    );
    assert_eq!(l.objects.len(), 1);
    assert_eq!(l.objects[0].namespace(), "team");
    assert_eq!(l.objects[0].source.line, 5);
    let note = l
        .diagnostics
        .iter()
        .find(|d| d.code == "UNKNOWN_KIND")
        .expect("note for Widget");
    assert_eq!(note.severity, isthmus_api::Severity::Info);
    assert_eq!(note.line, 9);
    assert!(!l.has_errors());
}

#[test]
fn missing_name_and_kind_are_located_errors() {
    let l = load_str("m.yaml", "apiVersion: v1\nmetadata: {name: x}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {namespace: a}\nspec: {}\n", &LoadOptions::default());
    assert_eq!(l.diagnostics.len(), 2, "{:?}", l.diagnostics);
    assert!(l.diagnostics[0].message.contains("kind not set"));
    assert_eq!(l.rejections[0].message, "The Gateway \"\" is invalid: metadata.name: Required value: name or generateName is required");
}

#[test]
fn explicit_nulls_decode_as_absent_and_selectors_read_both_spellings() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a}
spec:
  containers:
  - name: c
    command: ["sleep", "1"]
    args:
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: s, namespace: a}
spec:
  workloadSelector:
    labels: {app: a}
  egress:
  - hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: a}
spec:
  host: x
  workloadSelector:
    matchLabels: {app: b}
"#;
    let l = load_str("n.yaml", text, &LoadOptions::default());
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    assert_eq!(l.objects.len(), 3);
    assert!(l.objects[0].as_pod().unwrap().containers[0].args.is_empty());
    let sc = l.objects[1].as_sidecar().unwrap();
    assert_eq!(
        sc.workload_selector.as_ref().unwrap().selector()["app"],
        "a"
    );
    let dr = l.objects[2].as_destination_rule().unwrap();
    assert_eq!(
        dr.workload_selector.as_ref().unwrap().selector()["app"],
        "b"
    );
}
