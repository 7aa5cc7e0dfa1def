//! Reading inputs the way `istioctl analyze` reads files: every modelled object is kept even
//! when the API server or Istio's webhook would refuse it (analysis reports on what is there),
//! and message lines are located on the field they concern.

use crate::Message;
use isthmus_api::yaml::{self, Node};
use isthmus_api::{Body, Kind, Object, ObjectMeta, Source};
use std::collections::BTreeMap;

/// Builds objects from one file's text without admission checks. Documents that are not
/// Kubernetes objects, kinds isthmus does not model and bodies that cannot be decoded are
/// skipped (the loader's diagnostics report those). `default_ns` is given to objects without a
/// namespace (None keeps them namespace-less, as istioctl's file origins are).
pub fn objects_from_str(file: &str, text: &str, default_ns: Option<&str>) -> Vec<Object> {
    let Ok(docs) = yaml::parse_stream(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (doc_index, doc) in docs.iter().enumerate() {
        let json = doc.root.to_json();
        let is_list = json
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.ends_with("List"))
            && json.get("items").is_some_and(|i| i.is_array());
        if is_list {
            let items = json
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                let node = doc.root.get(&format!("items[{i}]")).unwrap_or(&doc.root);
                push_object(file, doc_index, node, item, default_ns, &mut out);
            }
        } else {
            push_object(file, doc_index, &doc.root, json, default_ns, &mut out);
        }
    }
    out
}

/// Drops `key: null` entries: Kubernetes treats an explicit null as an absent field.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn push_object(
    file: &str,
    doc_index: usize,
    node: &Node,
    mut json: serde_json::Value,
    default_ns: Option<&str>,
    out: &mut Vec<Object>,
) {
    strip_nulls(&mut json);
    let api_version = json
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind_str = json.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    let Some(kind) = Kind::from_api(&api_version, kind_str) else {
        return;
    };
    let Ok(mut meta) =
        serde_json::from_value::<ObjectMeta>(json.get("metadata").cloned().unwrap_or_default())
    else {
        return;
    };
    if meta.namespace.is_none() {
        meta.namespace = default_ns.map(str::to_string);
    }
    let Ok(body) = Body::decode(kind, &json) else {
        return;
    };
    out.push(Object {
        api_version,
        kind,
        meta,
        body,
        source: Source {
            file: file.to_string(),
            doc_index,
            line: node.pos.line,
        },
        raw: json,
        seq: out.len(),
    });
}

/// Replaces each message's line with the line of its field, reading the source file (from
/// `sources` when given, else from disk). Messages keep the object's line when the file cannot
/// be read or the field is absent.
pub(crate) fn locate_lines(msgs: &mut [Message], sources: &BTreeMap<String, String>) {
    let mut cache: BTreeMap<String, Option<Vec<yaml::Document>>> = BTreeMap::new();
    for m in msgs.iter_mut() {
        let Some(field) = m.field.clone() else {
            continue;
        };
        if m.file.is_empty() || m.file == "-" {
            continue;
        }
        let docs = cache.entry(m.file.clone()).or_insert_with(|| {
            let text = match sources.get(&m.file) {
                Some(t) => Some(t.clone()),
                None => std::fs::read_to_string(&m.file).ok(),
            };
            text.and_then(|t| yaml::parse_stream(&t).ok())
        });
        let Some(docs) = docs else { continue };
        // Find the document whose root starts at the object's line (List items are nested).
        let root = docs
            .iter()
            .map(|d| &d.root)
            .find_map(|r| object_node_at(r, m.line));
        if let Some(node) = root {
            m.line = node.locate(&field).line;
        }
    }
}

fn object_node_at(root: &Node, line: u32) -> Option<&Node> {
    if root.pos.line == line {
        return Some(root);
    }
    let items = root.get("items")?;
    let mut i = 0;
    while let Some(item) = items.get(&i.to_string()) {
        if item.pos.line == line {
            return Some(item);
        }
        i += 1;
    }
    None
}

/// Everything `isthmus analyze` needs from its inputs.
#[derive(Debug, Clone, Default)]
pub struct AnalysisInput {
    pub objects: Vec<Object>,
    /// The `istio` ConfigMap's mesh config when one was given, else Istio's defaults.
    pub mesh: isthmus_api::MeshConfig,
    /// File contents by name (stdin included), for locating message lines.
    pub sources: BTreeMap<String, String>,
    /// Problems reading the inputs that did not stop the analysis (unparsable mesh config).
    pub notes: Vec<String>,
    /// RequestAuthentications found in the inputs (not modelled as objects).
    pub request_authentications: Vec<crate::RequestAuthnRef>,
}

/// Reads files, directories (recursive, sorted) and `-` (stdin) the way `istioctl analyze`
/// reads them: every modelled object, valid or not (the schema analyzers report what the
/// webhook would refuse).
pub fn load_for_analysis(
    paths: &[std::path::PathBuf],
    default_ns: Option<&str>,
) -> Result<AnalysisInput, isthmus_api::LoadError> {
    let mut input = AnalysisInput::default();
    for p in isthmus_api::expand_paths(paths)? {
        let name = p.display().to_string();
        let bytes = if name == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(|source| {
                isthmus_api::LoadError::Io {
                    path: name.clone(),
                    source,
                }
            })?;
            b
        } else {
            std::fs::read(&p).map_err(|source| isthmus_api::LoadError::Io {
                path: name.clone(),
                source,
            })?
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| isthmus_api::LoadError::NotUtf8 { path: name.clone() })?;
        let base = input.objects.len();
        input
            .objects
            .extend(
                objects_from_str(&name, &text, default_ns)
                    .into_iter()
                    .map(|mut o| {
                        o.seq += base;
                        o
                    }),
            );
        input
            .request_authentications
            .extend(request_authentications_in(&text, default_ns));
        input.sources.insert(name, text);
    }
    if let Some((o, mesh)) = isthmus_api::find_mesh_config(&input.objects) {
        match isthmus_api::MeshConfig::from_yaml(mesh) {
            Ok(m) => input.mesh = m,
            Err(e) => input
                .notes
                .push(format!("{}: mesh config ignored: {e}", o.label())),
        }
    }
    Ok(input)
}

/// RequestAuthentications (security.istio.io) in a file's documents, including `List` items.
pub fn request_authentications_in(
    text: &str,
    default_ns: Option<&str>,
) -> Vec<crate::RequestAuthnRef> {
    let Ok(docs) = yaml::parse_stream(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut visit = |v: &serde_json::Value| {
        let is_ra = v.get("kind").and_then(|k| k.as_str()) == Some("RequestAuthentication")
            && v.get("apiVersion")
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.starts_with("security.istio.io/"));
        if !is_ra {
            return;
        }
        let namespace = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .or(default_ns)
            .unwrap_or("")
            .to_string();
        let match_labels = v
            .pointer("/spec/selector/matchLabels")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(crate::RequestAuthnRef {
            namespace,
            match_labels,
        });
    };
    for d in &docs {
        let json = d.root.to_json();
        match json.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.iter().for_each(&mut visit),
            None => visit(&json),
        }
    }
    out
}
