//! Output as istioctl prints it: text lines, JSON (`json.MarshalIndent` with tabs, Go's HTML
//! escaping) and YAML, each entry with code, documentationUrl, level, message, origin and
//! reference (keys in Go's sorted map order).

use crate::Message;
use std::collections::BTreeMap;

/// `-o text|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
    Yaml,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<OutputFormat> {
        match s {
            "text" | "log" => Some(OutputFormat::Text),
            "json" => Some(OutputFormat::Json),
            "yaml" => Some(OutputFormat::Yaml),
            _ => None,
        }
    }

    pub fn render(self, msgs: &[Message]) -> String {
        match self {
            OutputFormat::Text => render_text(msgs),
            OutputFormat::Json => render_json(msgs),
            OutputFormat::Yaml => render_yaml(msgs),
        }
    }
}

/// One line per message; istioctl's "no issues" line when there are none.
pub fn render_text(msgs: &[Message]) -> String {
    if msgs.is_empty() {
        return "\u{2714} No validation issues found when analyzing the given files.\n".to_string();
    }
    let mut s = String::new();
    for m in msgs {
        s.push_str(&m.to_text());
        s.push('\n');
    }
    s
}

fn unstructured(m: &Message) -> BTreeMap<&'static str, String> {
    let mut e = BTreeMap::new();
    e.insert("code", m.code.clone());
    e.insert("documentationUrl", m.documentation_url());
    e.insert("level", m.level.as_str().to_string());
    let mut text = m.text.clone();
    if let Some(fix) = &m.fix {
        text.push_str(" Fix: ");
        text.push_str(fix);
    }
    e.insert("message", text);
    if let Some(o) = &m.origin {
        e.insert("origin", o.friendly_name());
        if !m.file.is_empty() {
            e.insert("reference", format!("{}:{}", m.file, m.line));
        }
    }
    e
}

/// A JSON array, tab-indented, with `<`, `>` and `&` escaped as Go's encoder does.
pub fn render_json(msgs: &[Message]) -> String {
    let list: Vec<BTreeMap<&'static str, String>> = msgs.iter().map(unstructured).collect();
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if serde::Serialize::serialize(&list, &mut ser).is_err() {
        return "[]\n".into();
    }
    let s = String::from_utf8_lossy(&buf)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    format!("{s}\n")
}

/// A YAML sequence of maps; strings are quoted when YAML would misread them.
pub fn render_yaml(msgs: &[Message]) -> String {
    if msgs.is_empty() {
        return "[]\n".into();
    }
    let mut s = String::new();
    for m in msgs {
        let mut first = true;
        for (k, v) in unstructured(m) {
            s.push_str(if first { "- " } else { "  " });
            first = false;
            s.push_str(k);
            s.push_str(": ");
            s.push_str(&yaml_scalar(&v));
            s.push('\n');
        }
    }
    s
}

fn yaml_scalar(v: &str) -> String {
    let needs_quotes = v.is_empty()
        || v.contains(": ")
        || v.contains(" #")
        || v.ends_with(':')
        || v.starts_with(|c: char| "!&*-?{}[],#|>@`\"'%= ".contains(c))
        || v.ends_with(' ')
        || v.contains('\n')
        || matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "null" | "~" | "on" | "off"
        )
        || v.parse::<f64>().is_ok();
    if needs_quotes {
        format!("'{}'", v.replace('\'', "''"))
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Level, Origin};

    fn m() -> Message {
        Message {
            code: "IST0101".into(),
            level: Level::Error,
            origin: Some(Origin {
                kind: "VirtualService".into(),
                namespace: Some("default".into()),
                name: "x".into(),
            }),
            file: "vs.yaml".into(),
            line: 12,
            text: "Referenced host not found: \"a<b\"".into(),
            fix: None,
            field: None,
        }
    }

    #[test]
    fn formats() {
        assert_eq!(render_text(&[m()]), "Error [IST0101] (VirtualService default/x vs.yaml:12) Referenced host not found: \"a<b\"\n");
        let j = render_json(&[m()]);
        assert!(j.starts_with("[\n\t{\n\t\t\"code\": \"IST0101\",\n\t\t\"documentationUrl\": \"https://istio.io/latest/docs/reference/config/analysis/ist0101/\","), "{j}");
        assert!(j.contains("a\\u003cb"), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v[0]["reference"], "vs.yaml:12");
        let y = render_yaml(&[m()]);
        assert!(
            y.starts_with("- code: IST0101\n  documentationUrl: https://"),
            "{y}"
        );
        assert!(
            y.contains("  message: 'Referenced host not found: \"a<b\"'\n"),
            "{y}"
        );
        assert!(
            y.contains("  reference: 'vs.yaml:12'\n") || y.contains("  reference: vs.yaml:12\n"),
            "{y}"
        );
    }
}
