//! isthmus-analyze: Istio's configuration analyzers (`istioctl analyze`) for Gateway,
//! VirtualService, DestinationRule, ServiceEntry and Sidecar — same codes, levels, texts and
//! output format — plus isthmus's own analyzers (codes `ISM0001`+) for the silent failures the
//! seed guide found by hand (merged DestinationRules, port-level blocks wiping the pool, ...).
//!
//! ```no_run
//! use isthmus_analyze::{analyze, exceeds_threshold, load_for_analysis, render_text, AnalyzeOptions, Level};
//! let input = load_for_analysis(&["examples/egress-double-mtls".into()], Some("default")).unwrap();
//! let opts = AnalyzeOptions {
//!     sources: input.sources.clone(),
//!     request_authentications: input.request_authentications.clone(),
//!     ..Default::default()
//! };
//! let msgs = analyze(&input.objects, &input.mesh, &opts);
//! print!("{}", render_text(&msgs));
//! if exceeds_threshold(&msgs, Level::Error) {
//!     std::process::exit(isthmus_analyze::EXIT_ISSUES_FOUND);
//! }
//! ```
//!
//! Analyzers work on the loaded objects directly, as Istio's work on config resources. Objects
//! without a namespace are analysed with an empty namespace (istioctl's file origin), so give
//! the loader a default namespace when a CLI `-n` applies.

mod ctx;
mod ism;
mod istio;
pub mod load;
pub mod messages;
mod render;

pub use ctx::{selector_string, Ctx};
pub use load::{analysis_input, load_for_analysis, objects_from_str, AnalysisInput};
pub use render::{render_json, render_text, render_yaml, OutputFormat};

use isthmus_api::{MeshConfig, Object};
use serde::Serialize;
use std::collections::BTreeMap;

/// Message severity, ordered as istioctl sorts them (errors first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        }
    }

    /// Parses `--failure-threshold` / `--output-threshold` values (case-insensitive).
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warning" | "warn" => Some(Level::Warning),
            "info" => Some(Level::Info),
            _ => None,
        }
    }

    /// True when this level is at or above `threshold` (Error ≥ Warning ≥ Info).
    pub fn at_least(self, threshold: Level) -> bool {
        self <= threshold
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resource a message is about (istioctl's "origin").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Origin {
    pub kind: String,
    /// None when the input object had no `metadata.namespace`.
    pub namespace: Option<String>,
    pub name: String,
}

impl Origin {
    /// `Kind ns/name` (or `Kind name` without namespace), as istioctl prints it.
    pub fn friendly_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// One analysis finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub code: String,
    pub level: Level,
    pub origin: Option<Origin>,
    pub file: String,
    /// The line of the field concerned when it could be located, else the object's first line.
    pub line: u32,
    pub text: String,
    /// For isthmus's own analyzers: how to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The field the message concerns (used to locate the line).
    #[serde(skip)]
    pub field: Option<String>,
}

impl Message {
    /// `Error [IST0101] (VirtualService default/x file.yaml:12) Referenced host not found: "..."`
    pub fn to_text(&self) -> String {
        let mut s = format!("{} [{}]", self.level, self.code);
        if let Some(o) = &self.origin {
            s.push_str(&format!(" ({}", o.friendly_name()));
            if !self.file.is_empty() {
                s.push_str(&format!(" {}:{}", self.file, self.line));
            }
            s.push(')');
        }
        s.push(' ');
        s.push_str(&self.text);
        if let Some(fix) = &self.fix {
            s.push_str(" Fix: ");
            s.push_str(fix);
        }
        s
    }

    /// istioctl's documentation URL for the code (isthmus codes link to the README section).
    pub fn documentation_url(&self) -> String {
        if self.code.starts_with("IST") {
            format!(
                "https://istio.io/latest/docs/reference/config/analysis/{}/",
                self.code.to_ascii_lowercase()
            )
        } else {
            format!(
                "https://github.com/isthmus-mesh/isthmus#{}",
                self.code.to_ascii_lowercase()
            )
        }
    }
}

/// What to analyse and how.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Only report messages about objects in this namespace (`-n`); None = all (`-A`).
    pub namespace: Option<String>,
    /// Run only these analyzers (by name, e.g. `gateway.SecretAnalyzer`); None = all.
    pub analyzers: Option<Vec<String>>,
    /// Run isthmus's own analyzers (ISM codes) as well as Istio's.
    pub isthmus_analyzers: bool,
    /// File contents by name, used to locate fields; files not given are read from disk.
    pub sources: BTreeMap<String, String>,
    /// The cluster domain suffix (istiod `--domain`); Istio's analyzers assume `cluster.local`.
    pub domain_suffix: String,
    /// RequestAuthentications present (a kind isthmus does not model as an object), for the
    /// JWT claim routing analyzer; `load_for_analysis` collects them.
    pub request_authentications: Vec<RequestAuthnRef>,
}

/// A RequestAuthentication's namespace and workload selector (empty = the whole namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAuthnRef {
    pub namespace: String,
    pub match_labels: BTreeMap<String, String>,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            namespace: None,
            analyzers: None,
            isthmus_analyzers: true,
            sources: BTreeMap::new(),
            domain_suffix: "cluster.local".to_string(),
            request_authentications: Vec::new(),
        }
    }
}

/// An analyzer: its Istio name, the codes it can emit, and the function.
pub struct Analyzer {
    pub name: &'static str,
    pub codes: &'static [&'static str],
    pub run: fn(&Ctx<'_>, &mut Vec<Message>),
}

/// Istio's analyzers, by their istioctl names.
pub fn istio_analyzers() -> &'static [Analyzer] {
    istio::ALL
}

/// isthmus's own analyzers (ISM codes).
pub fn isthmus_analyzers() -> &'static [Analyzer] {
    ism::ALL
}

/// Runs the analyzers over the objects and returns the messages, sorted and deduplicated the
/// way istioctl prints them.
pub fn analyze(objects: &[Object], mesh: &MeshConfig, opts: &AnalyzeOptions) -> Vec<Message> {
    let extra = deployment_pods(objects);
    let with_workloads: std::borrow::Cow<'_, [Object]> = if extra.is_empty() {
        std::borrow::Cow::Borrowed(objects)
    } else {
        let mut all = objects.to_vec();
        let base = all.len();
        all.extend(extra.into_iter().enumerate().map(|(i, mut o)| {
            o.seq = base + i;
            o
        }));
        std::borrow::Cow::Owned(all)
    };
    let mut ctx = Ctx::new(&with_workloads, mesh);
    if !opts.domain_suffix.is_empty() {
        ctx.domain = opts.domain_suffix.clone();
    }
    ctx.request_authn = opts.request_authentications.clone();
    let wanted = |a: &Analyzer| {
        opts.analyzers
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == a.name))
    };
    let mut msgs = Vec::new();
    for a in istio::ALL.iter().filter(|a| wanted(a)) {
        (a.run)(&ctx, &mut msgs);
    }
    if opts.isthmus_analyzers {
        for a in ism::ALL.iter().filter(|a| wanted(a)) {
            (a.run)(&ctx, &mut msgs);
        }
    }
    if let Some(ns) = &opts.namespace {
        msgs.retain(|m| {
            m.origin
                .as_ref()
                .is_none_or(|o| o.namespace.as_deref().is_none_or(|n| n == ns))
        });
    }
    load::locate_lines(&mut msgs, &opts.sources);
    sort_dedup(&mut msgs);
    msgs
}

/// Offline inputs describe Deployments, not the Pods they will create; analyzers that look
/// for workloads (gateway selectors, sidecar selectors, subsets) see one Pod per Deployment
/// template unless a Pod with those labels is already given. The synthetic Pod keeps the
/// Deployment's name and source.
fn deployment_pods(objects: &[Object]) -> Vec<Object> {
    let mut all = Vec::new();
    for d in objects
        .iter()
        .filter(|o| o.kind == isthmus_api::Kind::Deployment)
    {
        let Some(spec) = d.as_deployment() else {
            continue;
        };
        let labels = &spec.template.metadata.labels;
        let ns = d.meta.namespace.clone();
        let exists = objects.iter().any(|p| {
            p.kind == isthmus_api::Kind::Pod
                && p.meta.namespace == ns
                && !labels.is_empty()
                && labels.iter().all(|(k, v)| p.meta.labels.get(k) == Some(v))
        });
        if exists {
            continue;
        }
        let mut meta = spec.template.metadata.clone();
        meta.name = d.name().to_string();
        meta.namespace = ns;
        all.push(Object {
            api_version: "v1".into(),
            kind: isthmus_api::Kind::Pod,
            meta,
            body: isthmus_api::Body::Pod(spec.template.spec.clone()),
            source: d.source.clone(),
            raw: serde_json::json!({"apiVersion": "v1", "kind": "Pod"}),
            seq: all.len(),
        });
    }
    all
}

/// istioctl's `SortedDedupedCopy`: by level, code, origin, then text.
fn sort_dedup(msgs: &mut Vec<Message>) {
    msgs.sort_by(|a, b| {
        (
            a.level,
            &a.code,
            a.origin.as_ref().map(Origin::friendly_name),
            a.to_text(),
        )
            .cmp(&(
                b.level,
                &b.code,
                b.origin.as_ref().map(Origin::friendly_name),
                b.to_text(),
            ))
    });
    msgs.dedup_by(|a, b| a.to_text() == b.to_text());
}

/// istioctl's exit code when issues at or above the failure threshold were found.
pub const EXIT_ISSUES_FOUND: i32 = 79;

/// `--failure-threshold`: true when any message is at or above the threshold (istioctl's
/// default threshold is Error).
pub fn exceeds_threshold(msgs: &[Message], threshold: Level) -> bool {
    msgs.iter().any(|m| m.level.at_least(threshold))
}

/// `--output-threshold`: the messages at or above a level.
pub fn filter_output(msgs: &[Message], threshold: Level) -> Vec<Message> {
    msgs.iter()
        .filter(|m| m.level.at_least(threshold))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_threshold() {
        assert!(Level::Error.at_least(Level::Warning));
        assert!(!Level::Info.at_least(Level::Warning));
        assert_eq!(Level::parse("WARNING"), Some(Level::Warning));
        let m = Message {
            code: "IST0101".into(),
            level: Level::Warning,
            origin: Some(Origin {
                kind: "VirtualService".into(),
                namespace: Some("default".into()),
                name: "x".into(),
            }),
            file: "f.yaml".into(),
            line: 12,
            text: "t".into(),
            fix: None,
            field: None,
        };
        assert_eq!(
            m.to_text(),
            "Warning [IST0101] (VirtualService default/x f.yaml:12) t"
        );
        assert!(exceeds_threshold(std::slice::from_ref(&m), Level::Warning));
        assert!(!exceeds_threshold(std::slice::from_ref(&m), Level::Error));
    }
}
