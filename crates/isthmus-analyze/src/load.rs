//! Reading inputs the way `istioctl analyze` reads files: every modelled object is kept even
//! when the API server or Istio's webhook would refuse it (analysis reports on what is there),
//! and message lines are located on the field they concern. The reading itself is
//! isthmus-api's loader with [`LoadOptions::keep_refused`]: one parser, one List/namespace rule.

use crate::Message;
use isthmus_api::yaml::{self, Node};
use isthmus_api::{load_str, LoadOptions, Object};
use std::collections::BTreeMap;

/// The loader options for analysis: refused objects kept, `default_ns` for namespace-less ones.
fn analysis_options(default_ns: Option<&str>) -> LoadOptions {
    LoadOptions {
        default_namespace: default_ns.map(str::to_string),
        keep_refused: true,
    }
}

/// Builds objects from one file's text without dropping what admission would refuse.
/// Documents that are not Kubernetes objects, kinds isthmus does not model and bodies that
/// cannot be decoded are skipped (the loader's diagnostics report those). `default_ns` is given
/// to objects without a namespace (None keeps them namespace-less, as istioctl's file origins
/// are).
pub fn objects_from_str(file: &str, text: &str, default_ns: Option<&str>) -> Vec<Object> {
    load_str(file, text, &analysis_options(default_ns)).objects
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
    let mut texts = Vec::new();
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
        texts.push((name, text));
    }
    Ok(analysis_input(texts, default_ns))
}

/// The analysis input from texts already in memory, `(name, text)` in load order: files read
/// by [`load_for_analysis`], or the objects a running mesh's supervisor holds (`isthmus
/// analyze --name MESH`, where the name is empty so messages carry no file, as istioctl's do
/// for cluster resources).
pub fn analysis_input(texts: Vec<(String, String)>, default_ns: Option<&str>) -> AnalysisInput {
    let mut input = AnalysisInput::default();
    for (name, text) in texts {
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
    input
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
