//! Generator of `generated.rs` from Istio's `customresourcedefinitions.gen.yaml`.
//!
//! It lives in the library (not a build script) so that the `schema_generated_up_to_date` test
//! can regenerate the table in memory and compare it with the committed file, and so that the
//! product never needs the corpus at run time. It refuses (with an error naming the schema path)
//! any schema keyword, format or CEL construct the validator does not implement, so that a new
//! Istio release can never be validated partially without anyone noticing.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// API group whose kinds are generated.
pub const GROUP: &str = "networking.istio.io";
/// Kinds whose schemas are generated.
pub const KINDS: &[&str] = &[
    "DestinationRule",
    "Gateway",
    "ServiceEntry",
    "Sidecar",
    "VirtualService",
    "WorkloadEntry",
];

/// Why the CRD file cannot be turned into a table.
#[derive(Debug, thiserror::Error)]
#[error("schema codegen: {path}: {message}")]
pub struct CodegenError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> CodegenError {
    CodegenError {
        path: path.to_string(),
        message: message.into(),
    }
}

const KNOWN_KEYS: &[&str] = &[
    "type",
    "format",
    "description",
    "enum",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "maxItems",
    "minItems",
    "maxLength",
    "minLength",
    "maxProperties",
    "minProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

struct Gen {
    lines: Vec<String>,
    dedup: HashMap<String, u32>,
    rules: Vec<(String, String)>,
    rule_index: HashMap<(String, String), u32>,
}

impl Gen {
    fn rule(&mut self, path: &str, v: &Value) -> Result<u32, CodegenError> {
        let obj = v
            .as_object()
            .ok_or_else(|| err(path, "x-kubernetes-validations entry is not an object"))?;
        for k in obj.keys() {
            if k != "rule" && k != "message" {
                return Err(err(
                    path,
                    format!("x-kubernetes-validations key {k:?} is not implemented (only rule and message)"),
                ));
            }
        }
        let rule = obj
            .get("rule")
            .and_then(Value::as_str)
            .ok_or_else(|| err(path, "validation rule without a string `rule`"))?
            .to_string();
        let message = obj
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Err(e) = super::cel::compile(&rule) {
            return Err(err(
                path,
                format!("CEL rule {rule:?} is not supported: {e}"),
            ));
        }
        let key = (rule, message);
        if let Some(i) = self.rule_index.get(&key) {
            return Ok(*i);
        }
        let i = self.rules.len() as u32;
        self.rules.push(key.clone());
        self.rule_index.insert(key, i);
        Ok(i)
    }

    fn node(&mut self, path: &str, s: &Value) -> Result<u32, CodegenError> {
        let obj = s
            .as_object()
            .ok_or_else(|| err(path, "schema is not an object"))?;
        for k in obj.keys() {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(err(
                    path,
                    format!("schema keyword {k:?} is not implemented"),
                ));
            }
        }
        let mut fields: Vec<String> = Vec::new();
        let int_or_string = obj
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ty = match obj.get("type").and_then(Value::as_str) {
            _ if int_or_string => "IntOrString",
            None => "None",
            Some("object") => "Object",
            Some("array") => "Array",
            Some("string") => "String",
            Some("integer") => "Integer",
            Some("number") => "Number",
            Some("boolean") => "Boolean",
            Some(t) => return Err(err(path, format!("type {t:?} is not implemented"))),
        };
        if ty != "None" {
            fields.push(format!("ty: Ty::{ty}"));
        }
        match obj.get("format").and_then(Value::as_str) {
            None | Some("int32") | Some("int64") | Some("uint32") | Some("uint64")
            | Some("float") | Some("double") => {}
            Some("byte") => fields.push("format: Fmt::Byte".into()),
            Some("date-time") => fields.push("format: Fmt::DateTime".into()),
            Some(f) => return Err(err(path, format!("format {f:?} is not implemented"))),
        }
        if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
            fields.push("nullable: true".into());
        }
        if let Some(e) = obj.get("enum") {
            let arr = e
                .as_array()
                .ok_or_else(|| err(path, "enum is not a list"))?;
            let mut vals = Vec::new();
            for v in arr {
                let s = v.as_str().ok_or_else(|| {
                    err(
                        path,
                        format!("non-string enum value {v} is not implemented"),
                    )
                })?;
                vals.push(format!("{s:?}"));
            }
            fields.push(format!("enum_values: &[{}]", vals.join(", ")));
        }
        if let Some(r) = obj.get("required") {
            let arr = r
                .as_array()
                .ok_or_else(|| err(path, "required is not a list"))?;
            let mut vals = Vec::new();
            for v in arr {
                let s = v
                    .as_str()
                    .ok_or_else(|| err(path, "required entry is not a string"))?;
                vals.push(format!("{s:?}"));
            }
            fields.push(format!("required: &[{}]", vals.join(", ")));
        }
        if let Some(p) = obj.get("properties") {
            let map = p
                .as_object()
                .ok_or_else(|| err(path, "properties is not a map"))?;
            // Sorted by (length, name), the order `Node::property` searches in.
            let sorted: BTreeMap<(usize, &String), &Value> =
                map.iter().map(|(k, v)| ((k.len(), k), v)).collect();
            let mut vals = Vec::new();
            for ((_, k), v) in sorted {
                let child = self.node(&format!("{path}.{k}"), v)?;
                vals.push(format!("({k:?}, {child})"));
            }
            fields.push(format!("properties: &[{}]", vals.join(", ")));
        }
        if let Some(i) = obj.get("items") {
            let child = self.node(&format!("{path}[]"), i)?;
            fields.push(format!("items: {child}"));
        }
        if let Some(a) = obj.get("additionalProperties") {
            if !a.is_object() {
                return Err(err(
                    path,
                    "additionalProperties other than a schema is not implemented",
                ));
            }
            let child = self.node(&format!("{path}{{}}"), a)?;
            fields.push(format!("additional: {child}"));
        }
        for (key, field) in [
            ("allOf", "all_of"),
            ("oneOf", "one_of"),
            ("anyOf", "any_of"),
        ] {
            if let Some(l) = obj.get(key) {
                let arr = l
                    .as_array()
                    .ok_or_else(|| err(path, format!("{key} is not a list")))?;
                let mut vals = Vec::new();
                for (i, v) in arr.iter().enumerate() {
                    vals.push(self.node(&format!("{path}/{key}[{i}]"), v)?.to_string());
                }
                fields.push(format!("{field}: &[{}]", vals.join(", ")));
            }
        }
        if let Some(n) = obj.get("not") {
            let child = self.node(&format!("{path}/not"), n)?;
            fields.push(format!("not: {child}"));
        }
        for (key, field) in [
            ("maxItems", "max_items"),
            ("minItems", "min_items"),
            ("maxLength", "max_length"),
            ("minLength", "min_length"),
            ("maxProperties", "max_properties"),
            ("minProperties", "min_properties"),
        ] {
            if let Some(v) = obj.get(key) {
                let n = v
                    .as_u64()
                    .ok_or_else(|| err(path, format!("{key} is not a non-negative integer")))?;
                fields.push(format!("{field}: Some({n})"));
            }
        }
        for (key, field) in [("minimum", "minimum"), ("maximum", "maximum")] {
            if let Some(v) = obj.get(key) {
                let n = v
                    .as_f64()
                    .ok_or_else(|| err(path, format!("{key} is not a number")))?;
                fields.push(format!("{field}: Some({n:?}_f64)"));
            }
        }
        for (key, field) in [
            ("exclusiveMinimum", "exclusive_minimum"),
            ("exclusiveMaximum", "exclusive_maximum"),
        ] {
            if obj.get(key).and_then(Value::as_bool) == Some(true) {
                fields.push(format!("{field}: true"));
            }
        }
        if obj
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true)
        {
            fields.push("preserve_unknown: true".into());
        }
        match obj.get("x-kubernetes-list-type").and_then(Value::as_str) {
            None => {}
            Some("atomic") => fields.push("list_type: ListType::Atomic".into()),
            Some("set") => fields.push("list_type: ListType::Set".into()),
            Some("map") => {
                let keys = obj
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .ok_or_else(|| err(path, "list-type map without list-map-keys"))?;
                let mut vals = Vec::new();
                for k in keys {
                    let s = k
                        .as_str()
                        .ok_or_else(|| err(path, "list-map-key is not a string"))?;
                    vals.push(format!("{s:?}"));
                }
                fields.push(format!("list_type: ListType::Map(&[{}])", vals.join(", ")));
            }
            Some(t) => {
                return Err(err(
                    path,
                    format!("x-kubernetes-list-type {t:?} is not implemented"),
                ))
            }
        }
        if let Some(v) = obj.get("x-kubernetes-validations") {
            let arr = v
                .as_array()
                .ok_or_else(|| err(path, "x-kubernetes-validations is not a list"))?;
            let mut vals = Vec::new();
            for r in arr {
                vals.push(self.rule(path, r)?.to_string());
            }
            fields.push(format!("rules: &[{}]", vals.join(", ")));
        }
        let body = if fields.is_empty() {
            "E".to_string()
        } else {
            format!("Node {{ {}, ..E }}", fields.join(", "))
        };
        if let Some(i) = self.dedup.get(&body) {
            return Ok(*i);
        }
        let i = self.lines.len() as u32;
        self.lines.push(body.clone());
        self.dedup.insert(body, i);
        Ok(i)
    }
}

/// Generates the Rust source of `generated.rs` from the parsed documents of the CRD file
/// (each document converted to JSON).
pub fn generate(docs: &[Value]) -> Result<String, CodegenError> {
    let mut g = Gen {
        lines: Vec::new(),
        dedup: HashMap::new(),
        rules: Vec::new(),
        rule_index: HashMap::new(),
    };
    let mut roots: BTreeMap<(String, String), u32> = BTreeMap::new();
    for doc in docs {
        if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
            continue;
        }
        let spec = &doc["spec"];
        if spec["group"].as_str() != Some(GROUP) {
            continue;
        }
        let Some(kind) = spec["names"]["kind"].as_str() else {
            continue;
        };
        if !KINDS.contains(&kind) {
            continue;
        }
        let versions = spec["versions"]
            .as_array()
            .ok_or_else(|| err(kind, "spec.versions is not a list"))?;
        for v in versions {
            let name = v["name"]
                .as_str()
                .ok_or_else(|| err(kind, "version without a name"))?;
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let schema = &v["schema"]["openAPIV3Schema"];
            if schema.is_null() {
                return Err(err(kind, format!("version {name} has no openAPIV3Schema")));
            }
            let root = g.node(&format!("{kind}/{name}"), schema)?;
            roots.insert((kind.to_string(), name.to_string()), root);
        }
    }
    for k in KINDS {
        if !roots.keys().any(|(kind, _)| kind == k) {
            return Err(err(k, "kind not found in the CRD file"));
        }
    }
    let mut out = String::new();
    out.push_str(
        "// @generated by isthmus_api::schema::codegen from Istio's customresourcedefinitions.gen.yaml.\n\
         // Do not edit. Regenerate with:\n\
         //   ISTHMUS_SCHEMA_REGEN=1 cargo test -p isthmus-api --test schema_generated\n\
         #![allow(clippy::all)]\n\
         use super::table::{Fmt, ListType, Node, RuleDef, Ty, E};\n\n",
    );
    out.push_str("/// CEL rules (`x-kubernetes-validations`), deduplicated.\npub static RULES: &[RuleDef] = &[\n");
    for (rule, message) in &g.rules {
        let _ = writeln!(
            out,
            "    RuleDef {{ rule: {rule:?}, message: {message:?} }},"
        );
    }
    out.push_str("];\n\n/// Schema nodes, children before parents, identical subtrees shared.\npub static NODES: &[Node] = &[\n");
    for (i, l) in g.lines.iter().enumerate() {
        let _ = writeln!(out, "    /* {i} */ {l},");
    }
    out.push_str("];\n\n/// (kind, version, root node) for every served version.\npub static ROOTS: &[(&str, &str, u32)] = &[\n");
    for ((kind, version), root) in &roots {
        let _ = writeln!(out, "    ({kind:?}, {version:?}, {root}),");
    }
    out.push_str("];\n");
    // Keep the imports used even if a future CRD stops using one of them.
    out.push_str("\n#[allow(dead_code)]\nconst _USES: (Fmt, ListType, Ty) = (Fmt::None, ListType::None, Ty::None);\n");
    Ok(out)
}
