//! YAML parsing that keeps a line/column for every node.
//!
//! Kubernetes decodes manifests with YAML 1.1 scalar rules (sigs.k8s.io/yaml on go-yaml), so
//! `yes`/`on` are booleans and `0x1F` is an integer; we resolve plain scalars the same way so a
//! manifest gets the verdict the API server would give. Every node keeps its position so that a
//! diagnostic for `spec.trafficPolicy.tls.mode` can point at `file:line:column`.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Hard limits so hostile input cannot exhaust memory or the stack.
const MAX_DEPTH: usize = 200;
const MAX_NODES: usize = 5_000_000;

/// A 1-based line and column in a source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// One YAML node with its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Position,
    pub value: NodeValue,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys are kept as strings (JSON object keys); the key position is kept for diagnostics.
    Map(Vec<(String, Position, Node)>),
}

/// A YAML syntax problem, located.
#[derive(Debug, Clone, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct YamlError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// One document of a multi-document stream.
#[derive(Debug, Clone)]
pub struct Document {
    /// Position of the document's first content (for "this object starts here").
    pub pos: Position,
    pub root: Node,
}

fn pos_of(span: &Span) -> Position {
    Position {
        line: span.start.line() as u32,
        column: span.start.col() as u32 + 1,
    }
}

enum Frame {
    Seq(Position, Vec<Node>, usize),
    /// (position, entries, pending key, anchor, char index just after the first key when it
    /// was a plain scalar)
    Map(
        Position,
        Vec<(String, Position, Node)>,
        Option<(String, Position)>,
        usize,
        Option<usize>,
    ),
}

/// Parses a whole YAML stream into documents. Empty documents are returned with a Null root.
pub fn parse_stream(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut doc_root: Option<Node> = None;
    let mut doc_pos = Position::default();
    let mut nodes = 0usize;
    // Only consulted for the rare go-yaml flow-scalar case (see `go_yaml_flow_scalar`).
    let chars: Vec<char> = if text.contains(":]") || text.contains(":,") || text.contains(":}") {
        text.chars().collect()
    } else {
        Vec::new()
    };
    let parser = Parser::new_from_str(text);
    for item in parser {
        let (event, span) = item.map_err(|e| YamlError {
            line: e.marker().line() as u32,
            column: e.marker().col() as u32 + 1,
            message: e.info().to_string(),
        })?;
        let pos = pos_of(&span);
        let complete: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                doc_root = None;
                doc_pos = pos;
                None
            }
            Event::DocumentEnd => {
                let root = doc_root.take().unwrap_or(Node {
                    pos: doc_pos,
                    value: NodeValue::Null,
                });
                let p = if matches!(root.value, NodeValue::Null) {
                    doc_pos
                } else {
                    root.pos
                };
                docs.push(Document { pos: p, root });
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    nodes += count_nodes(n);
                    Some((n.clone(), 0))
                }
                None => {
                    return Err(YamlError {
                        line: pos.line,
                        column: pos.column,
                        message: "unknown anchor".into(),
                    })
                }
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag
                    .as_ref()
                    .map(|t| t.suffix == "str" || t.suffix.ends_with(":str"))
                    .unwrap_or(false);
                let plain = style == ScalarStyle::Plain && !tagged_str;
                if plain {
                    if let Some(Frame::Map(_, entries, None, _, first_key_end)) = stack.last_mut() {
                        if entries.is_empty() {
                            *first_key_end = Some(span.end.index());
                        }
                    }
                }
                let value = if !plain {
                    NodeValue::Str(text.into_owned())
                } else {
                    resolve_plain(&text)
                };
                Some((Node { pos, value }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Seq(pos, Vec::new(), anchor));
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Map(pos, Vec::new(), None, anchor, None));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, items, anchor)) => Some((
                    Node {
                        pos: p,
                        value: NodeValue::Seq(items),
                    },
                    anchor,
                )),
                _ => return Err(internal(pos)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(p, entries, _, anchor, first_key_end)) => {
                    let value = go_yaml_flow_scalar(&chars, &entries, first_key_end)
                        .map(NodeValue::Str)
                        .unwrap_or(NodeValue::Map(entries));
                    Some((Node { pos: p, value }, anchor))
                }
                _ => return Err(internal(pos)),
            },
        };
        if let Some((node, anchor)) = complete {
            nodes += 1;
            if nodes > MAX_NODES {
                return Err(YamlError {
                    line: pos.line,
                    column: pos.column,
                    message: format!("document too large: more than {MAX_NODES} nodes (alias expansion included)"),
                });
            }
            if anchor > 0 {
                anchors.insert(anchor, node.clone());
            }
            attach(&mut stack, &mut doc_root, node)?;
        }
    }
    Ok(docs)
}

/// YAML 1.2 (saphyr) ends a plain scalar at a `:` that is followed by a flow indicator, so
/// `[2001:db8::]` parses as a one-pair mapping `{"2001:db8:": null}`. go-yaml — and so
/// kubectl — reads the scalar `2001:db8::`. Recognise that shape (a single pair with a null
/// value whose plain key is directly followed by `:` and `,`, `]` or `}`) and return the scalar.
fn go_yaml_flow_scalar(
    chars: &[char],
    entries: &[(String, Position, Node)],
    first_key_end: Option<usize>,
) -> Option<String> {
    let end = first_key_end?;
    if entries.len() != 1 || !matches!(entries[0].2.value, NodeValue::Null) {
        return None;
    }
    let after = chars.get(end..end + 2)?;
    (after[0] == ':' && matches!(after[1], ',' | ']' | '}')).then(|| format!("{}:", entries[0].0))
}

fn count_nodes(n: &Node) -> usize {
    match &n.value {
        NodeValue::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeValue::Map(entries) => {
            1 + entries
                .iter()
                .map(|(_, _, v)| count_nodes(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

fn too_deep(pos: Position) -> YamlError {
    YamlError {
        line: pos.line,
        column: pos.column,
        message: format!("document nested too deeply (more than {MAX_DEPTH} levels)"),
    }
}

fn internal(pos: Position) -> YamlError {
    YamlError {
        line: pos.line,
        column: pos.column,
        message: "unbalanced YAML structure".into(),
    }
}

fn attach(stack: &mut [Frame], root: &mut Option<Node>, node: Node) -> Result<(), YamlError> {
    match stack.last_mut() {
        None => {
            *root = Some(node);
            Ok(())
        }
        Some(Frame::Seq(_, items, _)) => {
            items.push(node);
            Ok(())
        }
        Some(Frame::Map(_, entries, pending, _, _)) => match pending.take() {
            None => {
                let key = match &node.value {
                    NodeValue::Str(s) => s.clone(),
                    NodeValue::Null => "null".to_string(),
                    NodeValue::Bool(b) => b.to_string(),
                    NodeValue::Int(i) => i.to_string(),
                    NodeValue::Float(f) => f.to_string(),
                    NodeValue::Seq(_) | NodeValue::Map(_) => {
                        return Err(YamlError {
                            line: node.pos.line,
                            column: node.pos.column,
                            message: "mapping keys must be scalars".into(),
                        })
                    }
                };
                if entries.iter().any(|(k, _, _)| *k == key) {
                    return Err(YamlError {
                        line: node.pos.line,
                        column: node.pos.column,
                        message: format!("mapping key {key:?} already defined"),
                    });
                }
                *pending = Some((key, node.pos));
                Ok(())
            }
            Some((key, kpos)) => {
                entries.push((key, kpos, node));
                Ok(())
            }
        },
    }
}

/// Resolves a plain scalar with YAML 1.1 rules as go-yaml v2 (and so kubectl) does.
pub fn resolve_plain(s: &str) -> NodeValue {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" | "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return NodeValue::Bool(true)
        }
        "false" | "False" | "FALSE" | "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return NodeValue::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeValue::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_yaml_int(s) {
        return NodeValue::Int(i);
    }
    if looks_like_float(s) {
        if let Ok(f) = s.replace('_', "").parse::<f64>() {
            return NodeValue::Float(f);
        }
    }
    NodeValue::Str(s.to_string())
}

fn parse_yaml_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() || body.starts_with('_') {
        return None;
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    let v = if let Some(h) = clean.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(b) = clean.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else if let Some(o) = clean.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else if clean.len() > 1 && clean.starts_with('0') {
        i64::from_str_radix(&clean[1..], 8).ok()?
    } else if clean.bytes().all(|b| b.is_ascii_digit()) {
        clean.parse::<i64>().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn looks_like_float(s: &str) -> bool {
    let t = s.trim_start_matches(['-', '+']);
    !t.is_empty()
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+' | b'_'))
        && t.bytes().any(|b| b.is_ascii_digit())
}

impl Node {
    /// Converts to JSON as sigs.k8s.io/yaml does (YAML → JSON before decoding).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::Number((*i).into()),
            NodeValue::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut m = Map::new();
                for (k, _, v) in entries {
                    m.insert(k.clone(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// Finds the position of a kube-style field path (`spec.servers[0].tls.mode`,
    /// `metadata.labels[app]`), returning the deepest existing node's position so that a
    /// missing required field points at its parent.
    pub fn locate(&self, path: &str) -> Position {
        let mut node = self;
        let mut best = self.pos;
        for seg in split_path(path) {
            let next = match (&node.value, &seg) {
                (NodeValue::Map(entries), PathSeg::Key(k)) => entries
                    .iter()
                    .find(|(ek, _, _)| ek == k)
                    .map(|(_, kp, v)| (*kp, v)),
                (NodeValue::Seq(items), PathSeg::Key(k)) => k
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v.pos, v)),
                _ => None,
            };
            match next {
                Some((kp, v)) => {
                    best = kp;
                    node = v;
                }
                None => break,
            }
        }
        best
    }

    /// The node at a path, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for seg in split_path(path) {
            let PathSeg::Key(k) = seg;
            node = match &node.value {
                NodeValue::Map(entries) => entries
                    .iter()
                    .find(|(ek, _, _)| *ek == k)
                    .map(|(_, _, v)| v)?,
                NodeValue::Seq(items) => items.get(k.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

enum PathSeg {
    Key(String),
}

/// Splits `a.b[0].c[key.with.dots]` into segments.
fn split_path(path: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !cur.is_empty() {
                    out.push(PathSeg::Key(std::mem::take(&mut cur)));
                }
            }
            '[' => {
                if !cur.is_empty() {
                    out.push(PathSeg::Key(std::mem::take(&mut cur)));
                }
                let mut inner = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    inner.push(d);
                }
                out.push(PathSeg::Key(inner));
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathSeg::Key(cur));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_scalars() {
        let text = "a: 1\nb:\n  c: yes\n  d: \"300\"\n  e: [1, x]\n---\nf: 0x10\n";
        let docs = parse_stream(text).unwrap();
        assert_eq!(docs.len(), 2);
        let j = docs[0].root.to_json();
        assert_eq!(j["a"], 1);
        assert_eq!(j["b"]["c"], true);
        assert_eq!(j["b"]["d"], "300");
        assert_eq!(j["b"]["e"][1], "x");
        assert_eq!(docs[1].root.to_json()["f"], 16);
        assert_eq!(docs[0].root.locate("b.d"), Position { line: 4, column: 3 });
        assert_eq!(
            docs[0].root.locate("b.e[1]"),
            Position {
                line: 5,
                column: 10
            }
        );
        // missing leaf points at the deepest existing parent key
        assert_eq!(
            docs[0].root.locate("b.zz.y"),
            Position { line: 2, column: 1 }
        );
    }

    #[test]
    fn errors_are_located_not_panics() {
        for bad in [
            "a: [1, 2",
            "a: b: c",
            "a: 1\na: 2\n",
            "\t- x",
            "*x",
            "{{{{",
            "a: &x [*x]",
        ] {
            let _ = parse_stream(bad); // must not panic
        }
        let e = parse_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("already defined"));
        let deep = "[".repeat(1000);
        let e = parse_stream(&deep).unwrap_err();
        assert!(
            e.message.contains("nested too deeply") || e.message.contains("recursion limit"),
            "{e}"
        );
    }

    #[test]
    fn billion_laughs_is_bounded() {
        let mut s = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        let mut prev = "a".to_string();
        for i in 0..9 {
            let name = format!("l{i}");
            s.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = name;
        }
        assert!(parse_stream(&s).is_err());
    }

    #[test]
    fn ipv6_in_flow_sequences_reads_as_go_yaml_does() {
        let docs =
            parse_stream("addresses: [1.2.3.4, 2001:db8::, 001:db8::]\nm: {a: b}\nl: [x: z]\n")
                .unwrap();
        let j = docs[0].root.to_json();
        assert_eq!(
            j["addresses"],
            serde_json::json!(["1.2.3.4", "2001:db8::", "001:db8::"])
        );
        assert_eq!(j["m"]["a"], "b");
        assert_eq!(j["l"][0]["x"], "z");
    }

    #[test]
    fn json_documents_parse() {
        let docs =
            parse_stream(r#"{"kind": "Service", "spec": {"ports": [{"port": 80}]}}"#).unwrap();
        assert_eq!(docs[0].root.to_json()["spec"]["ports"][0]["port"], 80);
    }
}
