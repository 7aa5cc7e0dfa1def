//! Conformance with Istio's own analyzer tests (istio/istio `analyzers_test.go`, extracted to
//! `istio-analyzers/cases.tsv`): each case runs one analyzer over its input files and must give
//! exactly the expected (code, origin) multiset, comparing only the codes that analyzer emits.
//! As upstream, a default `istio-system/istio-ingressgateway` Service and Pod are added first.

use isthmus_analyze::{analyze, istio_analyzers, messages, objects_from_str, AnalyzeOptions};
use isthmus_api::MeshConfig;
use std::path::PathBuf;

fn corpora() -> Option<PathBuf> {
    isthmus_testutil::corpora_dir(env!("CARGO_MANIFEST_DIR"), "istio-analyzers")
}

const DEFAULT_INGRESS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  ports:
  - {name: http2, port: 80, protocol: TCP}
  - {name: https, port: 443, protocol: TCP}
  - {name: tcp, port: 31400, protocol: TCP}
  - {name: tls, port: 15443, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels:
    istio: ingressgateway
spec:
  containers:
  - name: istio-proxy
"#;

#[test]
fn istio_analyzer_cases() {
    let Some(root) = corpora() else { return };
    let dir = root.join("istio-analyzers");
    let tsv = std::fs::read_to_string(dir.join("cases.tsv")).expect("cases.tsv readable");
    let mut failures = Vec::new();
    let mut ran = 0;
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (case, analyzer, inputs) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        let mesh_file = cols.get(3).copied().unwrap_or("");
        let expected_col = cols.get(4).copied().unwrap_or("");
        let Some(a) = istio_analyzers().iter().find(|a| a.name == analyzer) else {
            failures.push(format!("{case}: analyzer {analyzer} not implemented"));
            continue;
        };
        let mut objects = objects_from_str("default-ingress.yaml", DEFAULT_INGRESS, None);
        for f in inputs.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let base = objects.len();
            objects.extend(
                objects_from_str(&path.to_string_lossy(), &text, None)
                    .into_iter()
                    .map(|mut o| {
                        o.seq += base;
                        o
                    }),
            );
        }
        let mesh = if mesh_file.is_empty() {
            MeshConfig::default()
        } else {
            let text = std::fs::read_to_string(dir.join(mesh_file)).expect("mesh config readable");
            MeshConfig::from_yaml(&text).expect("mesh config parses")
        };
        let opts = AnalyzeOptions {
            analyzers: Some(vec![analyzer.to_string()]),
            isthmus_analyzers: false,
            ..Default::default()
        };
        let msgs = analyze(&objects, &mesh, &opts);
        let mut got: Vec<String> = msgs
            .iter()
            .filter(|m| a.codes.contains(&m.code.as_str()))
            .map(|m| {
                format!(
                    "{} {}",
                    m.code,
                    m.origin
                        .as_ref()
                        .map(|o| o.friendly_name())
                        .unwrap_or_default()
                )
            })
            .collect();
        let mut want: Vec<String> = expected_col
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        got.sort();
        want.sort();
        ran += 1;
        if got != want {
            let texts: Vec<String> = msgs.iter().map(|m| m.to_text()).collect();
            failures.push(format!("{case} ({analyzer}):\n    want {want:?}\n    got  {got:?}\n    messages: {texts:#?}"));
        }
    }
    eprintln!(
        "istio-analyzers corpus: {ran} cases run, {} failing",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failing analyzer cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn message_types_match_istio() {
    let Some(root) = corpora() else { return };
    let tsv = std::fs::read_to_string(root.join("istio-analyzers/messages.tsv"))
        .expect("messages.tsv readable");
    for t in messages::ISTIO_TYPES {
        let row = tsv
            .lines()
            .find(|l| l.starts_with(&format!("{}\t", t.code)))
            .unwrap_or_else(|| panic!("{} missing", t.code));
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[1], t.name, "{}", t.code);
        assert_eq!(cols[2], t.level.as_str(), "{}", t.code);
        assert_eq!(cols[3], t.template, "{}", t.code);
    }
}

/// Every analyzer (Istio's and isthmus's) over all corpus inputs at once: no panic, and every
/// rendering is well-formed.
#[test]
fn all_analyzers_over_all_inputs() {
    let Some(root) = corpora() else { return };
    let dir = root.join("istio-analyzers/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut objects = objects_from_str("default-ingress.yaml", DEFAULT_INGRESS, None);
    for f in files.iter().chain(
        std::fs::read_dir(root.join("istio-validation"))
            .expect("readable")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        if f.to_string_lossy()
            .ends_with("customresourcedefinitions.gen.yaml")
        {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        let base = objects.len();
        objects.extend(
            objects_from_str(&f.to_string_lossy(), &text, None)
                .into_iter()
                .map(|mut o| {
                    o.seq += base;
                    o
                }),
        );
    }
    assert!(objects.len() > 100, "{} objects", objects.len());
    let msgs = analyze(&objects, &MeshConfig::default(), &AnalyzeOptions::default());
    assert!(!msgs.is_empty());
    let json: serde_json::Value =
        serde_json::from_str(&isthmus_analyze::render_json(&msgs)).expect("json parses");
    assert_eq!(json.as_array().map(|a| a.len()), Some(msgs.len()));
    let text = isthmus_analyze::render_text(&msgs);
    assert_eq!(text.lines().count(), msgs.len());
    let yaml = isthmus_analyze::render_yaml(&msgs);
    assert_eq!(
        yaml.lines().filter(|l| l.starts_with("- code: ")).count(),
        msgs.len()
    );
    // Sorted as istioctl sorts: errors first.
    assert!(msgs.windows(2).all(|w| w[0].level <= w[1].level));
}
