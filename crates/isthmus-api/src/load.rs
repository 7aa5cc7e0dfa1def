//! Loading manifests: files, directories (recursive, sorted), stdin; multi-document YAML and
//! JSON; `kind: List`. Each object is checked in the API server's order — envelope, strict
//! decoding (unknown fields), CRD schema + CEL, Istio's webhook — and keeps its source location.

use crate::diag::{Diagnostic, Severity, Stage};
use crate::object::{Body, Kind, Object, ObjectMeta, Source};
use crate::yaml::{self, Node, Position};
use std::path::{Path, PathBuf};

/// Everything read from the inputs: accepted objects and every problem found.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Objects that passed every error-level check, in load order.
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
    /// Objects refused, each with the exact message kubectl/istiod would print.
    pub rejections: Vec<Rejection>,
}

/// An object the API server or Istio's webhook would refuse.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejection {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub file: String,
    pub line: u32,
    /// The text kubectl prints for this object (e.g. `The DestinationRule "x" is invalid: ...`).
    pub message: String,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn extend(&mut self, other: Loaded) {
        let base = self.objects.len();
        self.objects.extend(other.objects.into_iter().map(|mut o| {
            o.seq += base;
            o
        }));
        self.diagnostics.extend(other.diagnostics);
        self.rejections.extend(other.rejections);
    }
}

/// Options that change how objects are read.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Namespace for objects that name none (kubectl's `-n`); `None` keeps them namespace-less.
    pub default_namespace: Option<String>,
    /// Keep objects the API server or Istio's webhook would refuse, as `istioctl analyze`
    /// does: analysis reports on what is written (its schema analyzers say what the webhook
    /// would refuse), so a refused object must still be seen. Refused objects are still listed
    /// in [`Loaded::rejections`] and their problems in [`Loaded::diagnostics`]; only objects
    /// whose body cannot be decoded at all are left out. Explicit `key: null` entries are
    /// dropped first (Kubernetes treats an explicit null as an absent field).
    pub keep_refused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source} (check the path exists and is readable)")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 text (is this a binary file?)")]
    NotUtf8 { path: String },
}

/// Expands paths: directories recursively (sorted, `.yaml`/`.yml`/`.json` only), `-` for stdin.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|source| LoadError::Io {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            collect_dir(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_dir(&e, out)?;
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
    Ok(())
}

/// Loads every path (see [`expand_paths`]).
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let mut all = Loaded::default();
    for p in expand_paths(paths)? {
        let (name, text) = if p.as_os_str() == "-" {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut s).map_err(|source| {
                LoadError::Io {
                    path: "-".into(),
                    source,
                }
            })?;
            ("-".to_string(), s)
        } else {
            let bytes = std::fs::read(&p).map_err(|source| LoadError::Io {
                path: p.display().to_string(),
                source,
            })?;
            (p.display().to_string(), bytes)
        };
        let text =
            String::from_utf8(text).map_err(|_| LoadError::NotUtf8 { path: name.clone() })?;
        all.extend(load_str(&name, &text, opts));
    }
    Ok(all)
}

/// Loads one text (a file's contents); never panics, whatever the input.
pub fn load_str(file: &str, text: &str, opts: &LoadOptions) -> Loaded {
    let mut out = Loaded::default();
    let docs = match yaml::parse_stream(text) {
        Ok(d) => d,
        Err(e) => {
            out.diagnostics.push(Diagnostic {
                code: "YAML".into(),
                severity: Severity::Error,
                stage: Stage::Syntax,
                kind: None,
                namespace: None,
                name: None,
                field: None,
                file: file.into(),
                line: e.line,
                column: e.column,
                message: format!(
                    "error converting YAML to JSON: yaml: line {}: {}",
                    e.line, e.message
                ),
            });
            return out;
        }
    };
    for (doc_index, doc) in docs.iter().enumerate() {
        if matches!(doc.root.value, yaml::NodeValue::Null) {
            continue;
        }
        let json = doc.root.to_json();
        let is_list = json.get("kind").and_then(|k| k.as_str()) == Some("List")
            || json.get("kind").and_then(|k| k.as_str()).is_some_and(|k| {
                k.ends_with("List") && json.get("items").is_some_and(|i| i.is_array())
            });
        if is_list {
            let items = json
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                let node = doc.root.get(&format!("items[{i}]")).unwrap_or(&doc.root);
                load_object(file, doc_index, node, item, opts, &mut out);
            }
        } else {
            load_object(file, doc_index, &doc.root, json, opts, &mut out);
        }
    }
    out
}

struct Ctx<'a> {
    file: &'a str,
    node: &'a Node,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Ctx<'_> {
    fn diag(
        &self,
        code: &str,
        severity: Severity,
        stage: Stage,
        field: Option<String>,
        message: String,
    ) -> Diagnostic {
        let pos: Position = match &field {
            Some(f) => self.node.locate(f),
            None => self.node.pos,
        };
        Diagnostic {
            code: code.into(),
            severity,
            stage,
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            field,
            file: self.file.into(),
            line: pos.line,
            column: pos.column,
            message,
        }
    }
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

fn load_object(
    file: &str,
    doc_index: usize,
    node: &Node,
    mut json: serde_json::Value,
    opts: &LoadOptions,
    out: &mut Loaded,
) {
    if opts.keep_refused {
        strip_nulls(&mut json);
    }
    let mut ctx = Ctx {
        file,
        node,
        kind: None,
        namespace: None,
        name: None,
    };
    let Some(map) = json.as_object() else {
        out.diagnostics.push(
            ctx.diag(
                "ENVELOPE",
                Severity::Error,
                Stage::Envelope,
                None,
                "document is not a Kubernetes object (expected a mapping with apiVersion and kind)"
                    .into(),
            ),
        );
        return;
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind_str = map
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if api_version.is_empty() || kind_str.is_empty() {
        let mut missing = Vec::new();
        if api_version.is_empty() {
            missing.push("apiVersion not set");
        }
        if kind_str.is_empty() {
            missing.push("kind not set");
        }
        out.diagnostics.push(ctx.diag(
            "ENVELOPE",
            Severity::Error,
            Stage::Envelope,
            None,
            format!("error validating data: [{}]", missing.join(", ")),
        ));
        return;
    }
    ctx.kind = Some(kind_str.clone());
    let meta_json = map
        .get("metadata")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let mut meta: ObjectMeta = match serde_path_to_error::deserialize(meta_json) {
        Ok(m) => m,
        Err(e) => {
            let field = format!("metadata.{}", e.path());
            out.diagnostics.push(ctx.diag(
                "DECODE",
                Severity::Error,
                Stage::Schema,
                Some(field),
                e.into_inner().to_string(),
            ));
            return;
        }
    };
    if meta.namespace.is_none() {
        meta.namespace = opts.default_namespace.clone();
    }
    ctx.namespace = meta.namespace.clone();
    ctx.name = Some(meta.name.clone());

    let Some(kind) = Kind::from_api(&api_version, &kind_str) else {
        out.diagnostics.push(ctx.diag(
            "UNKNOWN_KIND",
            Severity::Info,
            Stage::Load,
            None,
            format!("skipping {kind_str} ({api_version}): kind not modelled by isthmus"),
        ));
        return;
    };
    let source = Source {
        file: file.to_string(),
        doc_index,
        line: node.pos.line,
    };
    if meta.name.is_empty() {
        let msg = format!(
            "The {kind_str} \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        out.diagnostics.push(ctx.diag(
            "SCHEMA",
            Severity::Error,
            Stage::Schema,
            Some("metadata.name".into()),
            "Required value: name or generateName is required".into(),
        ));
        out.rejections.push(rejection(&ctx, &source, msg));
        if !opts.keep_refused {
            return;
        }
    }

    // Stage 1: strict decoding and CRD schema, Istio kinds only (built-in kinds are decoded
    // leniently: real manifests carry many fields we do not model).
    if kind.is_istio() {
        let unknown = crate::schema::unknown_fields(&kind_str, &api_version, &json);
        if !unknown.is_empty() {
            let msg = crate::schema::strict_decoding_message(&kind_str, &api_version, &unknown);
            for path in &unknown {
                out.diagnostics.push(ctx.diag(
                    "STRICT",
                    Severity::Error,
                    Stage::StrictDecoding,
                    Some(path.clone()),
                    format!("unknown field \"{path}\""),
                ));
            }
            out.rejections.push(rejection(
                &ctx,
                &source,
                format!("Error from server (BadRequest): error when creating \"{file}\": {msg}"),
            ));
            if !opts.keep_refused {
                return;
            }
        }
        let errors = crate::schema::validate_structure(&kind_str, &api_version, &json);
        if !errors.is_empty() {
            for e in &errors {
                let body = e.to_string();
                let body = body
                    .strip_prefix(&format!("{}: ", e.path))
                    .unwrap_or(&body)
                    .to_string();
                out.diagnostics.push(ctx.diag(
                    "SCHEMA",
                    Severity::Error,
                    Stage::Schema,
                    Some(e.path.clone()),
                    body,
                ));
            }
            let msg = crate::schema::kubectl_message(&kind_str, &meta.name, &errors);
            out.rejections.push(rejection(&ctx, &source, msg));
            if !opts.keep_refused {
                return;
            }
        }
    }

    // Stage 2: typed decoding.
    let body = match Body::decode(kind, &json) {
        Ok(b) => b,
        Err((path, message)) => {
            out.diagnostics.push(ctx.diag(
                "DECODE",
                Severity::Error,
                Stage::Schema,
                Some(path.clone()),
                message.clone(),
            ));
            out.rejections.push(rejection(
                &ctx,
                &source,
                format!(
                    "The {kind_str} \"{}\" is invalid: {path}: {message}",
                    meta.name
                ),
            ));
            return;
        }
    };
    let mut obj = Object {
        api_version,
        kind,
        meta,
        body,
        source: source.clone(),
        raw: json,
        seq: out.objects.len(),
    };

    // Stage 3: Istio's webhook.
    if kind.is_istio() {
        let report = crate::validation::validate_object(&obj);
        for w in &report.warnings {
            out.diagnostics.push(ctx.diag(
                "WEBHOOK",
                Severity::Warning,
                Stage::Webhook,
                w.field.clone(),
                w.message.clone(),
            ));
        }
        if !report.errors.is_empty() {
            for e in &report.errors {
                out.diagnostics.push(ctx.diag(
                    "WEBHOOK",
                    Severity::Error,
                    Stage::Webhook,
                    e.field.clone(),
                    e.message.clone(),
                ));
            }
            let msg = format!(
                "Error from server: error when creating \"{file}\": admission webhook \"validation.istio.io\" denied the request: configuration is invalid: {}",
                crate::validation::join_errors(&report.errors)
            );
            out.rejections.push(rejection(&ctx, &source, msg));
            if !opts.keep_refused {
                return;
            }
        }
    }
    obj.seq = out.objects.len();
    out.objects.push(obj);
}

fn rejection(ctx: &Ctx<'_>, source: &Source, message: String) -> Rejection {
    Rejection {
        kind: ctx.kind.clone().unwrap_or_default(),
        namespace: ctx.namespace.clone(),
        name: ctx.name.clone().unwrap_or_default(),
        file: source.file.clone(),
        line: source.line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: default}
spec:
  host: x.default.svc.cluster.local
  trafficPolicy:
    tls: null
    loadBalancer: {simple: NOPE}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: ["*"]
  http:
  - route:
    - destination: {host: web}
"#;

    #[test]
    fn admission_drops_refused_objects_and_keep_refused_keeps_them() {
        let strict = load_str("r.yaml", REFUSED, &LoadOptions::default());
        let kept = load_str(
            "r.yaml",
            REFUSED,
            &LoadOptions {
                keep_refused: true,
                ..LoadOptions::default()
            },
        );
        // The same problems are reported either way ...
        assert_eq!(strict.rejections.len(), 2, "{:?}", strict.rejections);
        assert_eq!(strict.rejections, kept.rejections);
        // ... but only the analysis view keeps the objects (for IST0106-style reports).
        assert!(strict.objects.is_empty());
        let names: Vec<&str> = kept.objects.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["bad", "web"]);
        assert_eq!(kept.objects[1].seq, 1);
        // Explicit nulls are absent fields in the kept object.
        assert!(kept.objects[0]
            .raw
            .pointer("/spec/trafficPolicy/tls")
            .is_none());
    }

    #[test]
    fn keep_refused_still_skips_undecodable_and_unknown_documents() {
        let text = "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\n- just\n- a list\n";
        let kept = load_str(
            "w.yaml",
            text,
            &LoadOptions {
                keep_refused: true,
                ..LoadOptions::default()
            },
        );
        assert!(kept.objects.is_empty());
    }
}
