//! Structural validation of Istio CRD objects exactly as the Kubernetes API server performs it
//! from the CRD schemas in Istio's `customresourcedefinitions.gen.yaml`, with kubectl's texts.
//!
//! What a `kubectl create` of a networking.istio.io object goes through, and the function here
//! that reproduces it:
//!
//! 1. Strict decoding (`--validate=strict`, kubectl's default): fields the structural schema
//!    does not declare are reported as `unknown field "spec.x"` and the request fails with 400
//!    before any validation → [`unknown_fields`], [`strict_decoding_message`],
//!    [`kubectl_strict_error`].
//! 2. Otherwise unknown fields are pruned, non-nullable `null` map values dropped, `status`
//!    wiped (the status subresource is enabled), then kube-openapi validates types, formats,
//!    enums, required fields, bounds, sizes and `oneOf`/`anyOf`/`not` structures; list-type
//!    `map` keys must be unique; and the CEL rules (`x-kubernetes-validations`) run unless a
//!    "blocking" error (type, required, enum, too long, too many) was found, in which case kube
//!    adds `<nil>: Invalid value: null: some validation rules were not checked ...`
//!    → [`validate_structure`], [`kubectl_message`].
//!
//! The schema table is generated ([`codegen`], committed as `generated.rs`), so the product
//! needs no corpus at run time. CEL rules are compiled once (LazyLock) by a small evaluator
//! ([`cel`]) that implements exactly what Istio's rules use.
//!
//! Texts follow Kubernetes 1.30 (the seeds' cluster): a failed CEL rule shows the schema type
//! as its bad value (see [`CelBadValue`] for the newer style), nil bad values print as `"null"`,
//! lists and maps as Go's `%#v`, and too-long strings as `Too long: may not be longer than N`.
//! Where kube iterates Go maps (properties, CEL over object fields) the order is random; here it
//! is the document's order.
//!
//! `metadata` is checked as `ValidateObjectMetaAccessor` does for the name (or generateName),
//! labels and annotations ([`validate_object_meta`], prepended to [`validate_structure`]'s
//! errors). Not covered here (the caller's job): namespace, owner references, finalizers,
//! managed fields, duplicate JSON keys, and Istio's webhook (semantic) validation.

pub mod cel;
pub mod codegen;
#[rustfmt::skip]
mod generated;
pub mod gofmt;
mod meta;
mod openapi;
pub mod table;

pub use meta::validate_object_meta;
use serde_json::Value;
use std::fmt;
use std::sync::LazyLock;
use table::{ListType, Node, Ty, NONE};

/// Kubernetes `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldErrorType {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    TooFew,
    Internal,
    TypeInvalid,
    TooShort,
}

impl FieldErrorType {
    /// The text kube prints for the type (`ErrorType.String()`).
    pub fn text(self) -> &'static str {
        match self {
            FieldErrorType::NotFound => "Not found",
            FieldErrorType::Required => "Required value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::Invalid | FieldErrorType::TypeInvalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::TooMany => "Too many",
            FieldErrorType::TooFew => "Too few",
            FieldErrorType::Internal => "Internal error",
            FieldErrorType::TooShort => "Too short",
        }
    }

    /// The API `StatusCause.reason` (`FieldValueInvalid`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            FieldErrorType::NotFound => "FieldValueNotFound",
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::TooMany => "FieldValueTooMany",
            FieldErrorType::TooFew => "FieldValueTooFew",
            FieldErrorType::Internal => "InternalError",
            FieldErrorType::TypeInvalid => "FieldValueTypeInvalid",
            FieldErrorType::TooShort => "FieldValueTooShort",
        }
    }

    /// The types after which kube skips the CEL rules (`hasBlockingErr`).
    pub fn is_blocking(self) -> bool {
        matches!(
            self,
            FieldErrorType::NotSupported
                | FieldErrorType::Required
                | FieldErrorType::TooLong
                | FieldErrorType::TooMany
                | FieldErrorType::TypeInvalid
        )
    }
}

/// One Kubernetes field error (`k8s.io/apimachinery/pkg/util/validation/field.Error`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field path as kube prints it (`spec.servers[0].tls.mode`); `<nil>` for errors kube
    /// reports without a path (oneOf/anyOf failures, skipped CEL rules).
    pub path: String,
    pub error_type: FieldErrorType,
    /// The bad value; `None` when kube omits it (required, too long, CEL on objects/arrays in
    /// the actual-value style).
    pub bad_value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    /// `field.Error.Error()`: `<path>: <body>`.
    pub fn error(&self) -> String {
        format!("{}: {}", self.path, self)
    }

    /// `field.Error.ErrorBody()`.
    pub fn body(&self) -> String {
        self.to_string()
    }
}

impl FieldError {
    /// The field this error is about, for locating it in the source: the path itself, or for
    /// kube's path-less (`<nil>`) `oneOf`/`anyOf`/`not` errors the path quoted at the start of
    /// the detail (`"spec.http[0].match[0].uri" must validate one and only one schema ...`).
    /// `None` for the "some validation rules were not checked" notice.
    pub fn subject_path(&self) -> Option<String> {
        if self.path != "<nil>" {
            return Some(self.path.clone());
        }
        let rest = self.detail.strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return if out.is_empty() { None } else { Some(out) },
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        None
    }
}

impl fmt::Display for FieldError {
    /// Kube's `ErrorBody`: the type text, then `: <bad value>` for the types that show one,
    /// then `: <detail>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_type.text())?;
        let shows_value = !matches!(
            self.error_type,
            FieldErrorType::Required
                | FieldErrorType::Forbidden
                | FieldErrorType::TooLong
                | FieldErrorType::TooShort
                | FieldErrorType::Internal
        );
        if shows_value {
            if let Some(v) = &self.bad_value {
                write!(f, ": {}", gofmt::bad_value(v))?;
            }
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// What a failed CEL rule shows as its bad value. Kubernetes changed this: older API servers
/// show the schema type (`Invalid value: "string": <message>`), newer ones the value itself
/// (`Invalid value: "0s": <message>`, nothing for objects and lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CelBadValue {
    /// The schema type (`"string"`, `"object"`, `"integer"`): what the seeds and
    /// `istio-semantics.md` §9 record.
    #[default]
    SchemaType,
    /// The actual value for scalars, omitted for objects and arrays.
    ActualValue,
}

/// Options of [`validate_structure_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateOptions {
    pub cel_bad_value: CelBadValue,
}

struct Compiled {
    programs: Vec<Result<cel::Program, String>>,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| Compiled {
    programs: generated::RULES
        .iter()
        .map(|r| cel::compile(r.rule))
        .collect(),
});

fn nodes() -> &'static [Node] {
    generated::NODES
}

/// The root schema node for `kind` in `api_version` (`networking.istio.io/v1`), if the kind
/// and version are served by Istio's CRDs.
fn root(kind: &str, api_version: &str) -> Option<u32> {
    let (group, version) = api_version.split_once('/')?;
    if group != codegen::GROUP {
        return None;
    }
    generated::ROOTS
        .iter()
        .find(|(k, v, _)| *k == kind && *v == version)
        .map(|(_, _, r)| *r)
}

/// Whether a schema exists for this kind and apiVersion.
pub fn has_schema(kind: &str, api_version: &str) -> bool {
    root(kind, api_version).is_some()
}

/// The kinds and versions with a generated schema, as `(kind, version)`.
pub fn served() -> impl Iterator<Item = (&'static str, &'static str)> {
    generated::ROOTS.iter().map(|(k, v, _)| (*k, *v))
}

const OBJECT_META_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

const OWNER_REFERENCE_FIELDS: &[&str] = &[
    "apiVersion",
    "blockOwnerDeletion",
    "controller",
    "kind",
    "name",
    "uid",
];

const MANAGED_FIELDS_ENTRY_FIELDS: &[&str] = &[
    "apiVersion",
    "fieldsType",
    "fieldsV1",
    "manager",
    "operation",
    "subresource",
    "time",
];

/// Paths of the fields a strict decode rejects (`kubectl create`'s default
/// `--validate=strict`), in kube's order: unknown `metadata` fields first, then the fields the
/// structural schema does not declare, sorted (Go `sort.Strings`). Empty for kinds without a
/// schema.
pub fn unknown_fields(kind: &str, api_version: &str, obj: &Value) -> Vec<String> {
    let Some(r) = root(kind, api_version) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(Value::Object(meta)) = obj.get("metadata") {
        // ObjectMeta is re-marshalled from a Go map (sorted keys) and strictly unmarshalled.
        let mut keys: Vec<&String> = meta.keys().collect();
        keys.sort();
        for k in keys {
            let nested: Option<&[&str]> = match k.as_str() {
                "ownerReferences" => Some(OWNER_REFERENCE_FIELDS),
                "managedFields" => Some(MANAGED_FIELDS_ENTRY_FIELDS),
                _ => None,
            };
            if !OBJECT_META_FIELDS.contains(&k.as_str()) {
                out.push(format!("metadata.{k}"));
            } else if let (Some(fields), Some(Value::Array(items))) = (nested, meta.get(k)) {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(m) = item {
                        let mut ks: Vec<&String> = m.keys().collect();
                        ks.sort();
                        for f in ks {
                            if !fields.contains(&f.as_str()) {
                                out.push(format!("metadata.{k}[{i}].{f}"));
                            }
                        }
                    }
                }
            }
        }
    }
    let mut pruned = Vec::new();
    if let Value::Object(map) = obj {
        let ns = nodes();
        let rn = &ns[r as usize];
        let mut path = String::with_capacity(128);
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            path.clear();
            path.push_str(k);
            match rn.field_schema(k) {
                Some(c) => collect_unknown(ns, Some(c), v, &mut path, &mut pruned, 0),
                None => pruned.push(path.clone()),
            }
        }
    }
    pruned.sort();
    out.extend(pruned);
    out
}

/// Depth beyond which the walks stop (kube's decoder limits nesting to 10000; a stack-safe
/// bound here; the schema itself is far shallower).
const MAX_DEPTH: usize = 512;

fn push_key(path: &mut String, k: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(k);
    len
}

fn push_index(path: &mut String, i: usize) -> usize {
    use std::fmt::Write as _;
    let len = path.len();
    let _ = write!(path, "[{i}]");
    len
}

fn push_map_key(path: &mut String, k: &str) -> usize {
    let len = path.len();
    path.push('[');
    path.push_str(k);
    path.push(']');
    len
}

/// `pruning.prune` with unknown-field tracking; `path` is the position of `v`.
fn collect_unknown(
    ns: &[Node],
    s: Option<u32>,
    v: &Value,
    path: &mut String,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(node) = s.and_then(|i| ns.get(i as usize)) else {
        collect_unknown_schemaless(v, path.clone(), out);
        return;
    };
    if node.preserve_unknown {
        collect_unknown_skip(ns, node, v, path, out, depth);
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let len = push_key(path, k);
                match node.field_schema(k) {
                    Some(c) => collect_unknown(ns, Some(c), x, path, out, depth + 1),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = push_index(path, i);
                if node.items == NONE {
                    collect_unknown_schemaless(x, path.clone(), out);
                } else {
                    collect_unknown(ns, Some(node.items), x, path, out, depth + 1);
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Pruning below a position without a schema: every key of every map is unknown, lists are
/// walked (iteratively, so arbitrarily deep lists cannot exhaust the stack).
fn collect_unknown_schemaless(v: &Value, path: String, out: &mut Vec<String>) {
    let mut stack = vec![(v, path)];
    while let Some((v, path)) = stack.pop() {
        match v {
            Value::Object(m) => {
                for k in m.keys() {
                    out.push(format!("{path}.{k}"));
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate().rev() {
                    stack.push((x, format!("{path}[{i}]")));
                }
            }
            _ => {}
        }
    }
}

/// `skipPrune` (x-kubernetes-preserve-unknown-fields): unknown keys are kept, declared fields
/// are still pruned inside, list items are walked with the same semantics.
fn collect_unknown_skip(
    ns: &[Node],
    node: &Node,
    v: &Value,
    path: &mut String,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if let Some(c) = node.field_schema(k) {
                    let len = push_key(path, k);
                    collect_unknown(ns, Some(c), x, path, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = ns.get(node.items as usize) {
                for (i, x) in a.iter().enumerate() {
                    let len = push_index(path, i);
                    collect_unknown_skip(ns, items, x, path, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

/// The version part of an apiVersion (`networking.istio.io/v1` → `v1`).
fn version_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or(api_version, |(_, v)| v)
}

/// The API server's strict-decoding failure text:
/// `DestinationRule in version "v1" cannot be handled as a DestinationRule: strict decoding error: unknown field "spec.x"`.
/// `api_version` may be the full apiVersion or just the version.
pub fn strict_decoding_message(kind: &str, api_version: &str, unknown: &[String]) -> String {
    let errs: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    format!(
        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
        version_of(api_version),
        errs.join(", ")
    )
}

/// What kubectl prints for a strict-decoding failure on create:
/// `Error from server (BadRequest): error when creating "FILE": <strict_decoding_message>`.
pub fn kubectl_strict_error(
    file: &str,
    kind: &str,
    api_version: &str,
    unknown: &[String],
) -> String {
    format!(
        "Error from server (BadRequest): error when creating {}: {}",
        gofmt::quote(file),
        strict_decoding_message(kind, api_version, unknown)
    )
}

/// What kubectl prints for a 422 Invalid: `The <Kind> "<name>" is invalid: <path>: <body>` for
/// one cause, or the header followed by one `* <path>: <body>` line per distinct cause (no
/// trailing newline).
pub fn kubectl_message(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let head = format!("The {kind} {} is invalid", gofmt::quote(name));
    let mut msgs: Vec<String> = Vec::new();
    for e in errors {
        let m = e.error();
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    match msgs.len() {
        0 => head,
        1 => format!("{head}: {}", msgs[0]),
        _ => {
            let mut s = format!("{head}: \n");
            let lines: Vec<String> = msgs.iter().map(|m| format!("* {m}")).collect();
            s.push_str(&lines.join("\n"));
            s
        }
    }
}

/// The API server's `Status.message` for a 422 (`errors.NewInvalid`):
/// `DestinationRule.networking.istio.io "x" is invalid: <err>` or `[<err1>, <err2>]` for several
/// (an aggregate, duplicates dropped).
pub fn api_status_message(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let mut msgs: Vec<String> = Vec::new();
    for e in errors {
        let m = e.error();
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    let head = format!(
        "{kind}.{} {} is invalid",
        codegen::GROUP,
        gofmt::quote(name)
    );
    match msgs.len() {
        0 => head,
        1 => format!("{head}: {}", msgs[0]),
        _ => format!("{head}: [{}]", msgs.join(", ")),
    }
}

/// Validates an object as the API server does on create (after strict decoding succeeded),
/// returning kube's field errors in kube's order. Empty when valid or when the kind/version has
/// no schema.
pub fn validate_structure(kind: &str, api_version: &str, obj: &Value) -> Vec<FieldError> {
    validate_structure_with(kind, api_version, obj, ValidateOptions::default())
}

/// [`validate_structure`] with options.
pub fn validate_structure_with(
    kind: &str,
    api_version: &str,
    obj: &Value,
    opts: ValidateOptions,
) -> Vec<FieldError> {
    let Some(r) = root(kind, api_version) else {
        return Vec::new();
    };
    let ns = nodes();
    // Most objects need none of the decoding-time changes; validate those in place.
    let prepared;
    let data: &Value = if root_needs_prepare(ns, r, obj) {
        prepared = prepare_root(ns, r, obj);
        &prepared
    } else {
        obj
    };

    // customResourceValidator.Validate: ObjectMeta first, then the schema.
    let mut errors: Vec<FieldError> = validate_object_meta(obj);
    errors.extend(
        openapi::validate(ns, r, data)
            .into_iter()
            .map(to_field_error),
    );
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert(e.error()));

    let mut path = String::with_capacity(128);
    list_types(ns, r, &mut path, data, &mut errors, 0);

    if subtree_has_rules(r) {
        if errors.iter().any(|e| e.error_type.is_blocking()) {
            errors.push(FieldError {
                path: "<nil>".into(),
                error_type: FieldErrorType::Invalid,
                bad_value: Some(Value::Null),
                detail: "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
            });
        } else {
            path.clear();
            run_cel(ns, r, &mut path, data, opts, &mut errors, 0);
        }
    }
    errors
}

fn subtree_has_rules(r: u32) -> bool {
    static HAS: LazyLock<Vec<bool>> = LazyLock::new(|| {
        let ns = nodes();
        // Children come before parents in the table, so one forward pass suffices.
        let mut has = vec![false; ns.len()];
        for (i, n) in ns.iter().enumerate() {
            let child = |c: u32| c != NONE && has.get(c as usize).copied().unwrap_or(false);
            has[i] = !n.rules.is_empty()
                || n.properties.iter().any(|(_, c)| child(*c))
                || child(n.items)
                || child(n.additional)
                || n.all_of.iter().any(|c| child(*c));
        }
        has
    });
    HAS.get(r as usize).copied().unwrap_or(false)
}

/// How many levels of a schema-less subtree (below a field whose schema has no `items`, or kept
/// by `x-kubernetes-preserve-unknown-fields`) are copied for validation. Nothing validates
/// there; the copy only feeds printed bad values, and the bound keeps absurdly deep input from
/// exhausting the stack.
const SCHEMALESS_DEPTH: usize = 32;

/// The object as kube validates it after decoding: kubectl's YAML→JSON turns integral floats
/// (`80.0`) into integers, unknown fields are pruned, `null` values of non-nullable fields are
/// dropped from maps (`PruneNonNullableNullsWithoutDefaults`), and `status` is wiped by
/// `PrepareForCreate`. `apiVersion`, `kind` and `metadata` are not part of the CRD schema and
/// are left out of the copy.
fn prepare_root(ns: &[Node], root: u32, obj: &Value) -> Value {
    let Value::Object(m) = obj else {
        return prepare(ns, Some(root), obj, SCHEMALESS_DEPTH);
    };
    let mut out = serde_json::Map::new();
    for (k, x) in m {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
            continue;
        }
        if let Some(v) = prepare_field(ns, ns.get(root as usize), k, x) {
            out.insert(k.clone(), v);
        }
    }
    Value::Object(out)
}

/// Whether [`prepare_root`] would change anything that validation looks at.
fn root_needs_prepare(ns: &[Node], root: u32, obj: &Value) -> bool {
    let (Value::Object(m), Some(rn)) = (obj, ns.get(root as usize)) else {
        return true;
    };
    m.iter().any(|(k, x)| match k.as_str() {
        "apiVersion" | "kind" | "metadata" => false,
        "status" => true,
        _ => field_needs_prepare(ns, rn, k, x, 0),
    })
}

fn field_needs_prepare(ns: &[Node], parent: &Node, k: &str, x: &Value, depth: usize) -> bool {
    match parent.field_schema(k) {
        None => true,
        Some(c) => match ns.get(c as usize) {
            None => true,
            Some(n) => (x.is_null() && !n.nullable) || needs_prepare(ns, n, x, depth + 1),
        },
    }
}

fn needs_prepare(ns: &[Node], node: &Node, v: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    match v {
        Value::Number(n) => !n.is_i64(),
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| field_needs_prepare(ns, node, k, x, depth)),
        Value::Array(a) => match ns.get(node.items as usize) {
            Some(items) => a.iter().any(|x| needs_prepare(ns, items, x, depth + 1)),
            None => a.iter().any(|x| {
                !matches!(x, Value::Null | Value::Bool(_) | Value::String(_)) && !x.is_i64()
            }),
        },
        _ => false,
    }
}

fn prepare_field(ns: &[Node], parent: Option<&Node>, k: &str, x: &Value) -> Option<Value> {
    let parent = parent?;
    match parent.field_schema(k) {
        None if parent.preserve_unknown => Some(copy_bounded(x, SCHEMALESS_DEPTH)),
        None => None,
        Some(c) => {
            if x.is_null() && !ns.get(c as usize).is_some_and(|n| n.nullable) {
                None
            } else {
                Some(prepare(ns, Some(c), x, SCHEMALESS_DEPTH))
            }
        }
    }
}

fn normalize_number(n: &serde_json::Number) -> Value {
    if !n.is_i64() {
        if let Some(f) = n.as_f64() {
            if f.fract() == 0.0 && f.abs() < 9.2e18 {
                return Value::from(f as i64);
            }
        }
    }
    Value::Number(n.clone())
}

fn prepare(ns: &[Node], s: Option<u32>, v: &Value, free: usize) -> Value {
    let node = s.and_then(|i| ns.get(i as usize));
    match v {
        Value::Number(n) => normalize_number(n),
        Value::Object(m) => match node {
            // Pruning removes every key of a map that has no schema.
            None => Value::Object(serde_json::Map::new()),
            Some(n) => {
                let mut out = serde_json::Map::new();
                for (k, x) in m {
                    if let Some(p) = prepare_field(ns, Some(n), k, x) {
                        out.insert(k.clone(), p);
                    }
                }
                Value::Object(out)
            }
        },
        Value::Array(a) => {
            let items = node.map(|n| n.items).filter(|i| *i != NONE);
            match items {
                Some(_) => Value::Array(a.iter().map(|x| prepare(ns, items, x, free)).collect()),
                None if free == 0 => Value::Null,
                None => Value::Array(a.iter().map(|x| prepare(ns, None, x, free - 1)).collect()),
            }
        }
        other => other.clone(),
    }
}

fn copy_bounded(v: &Value, free: usize) -> Value {
    match v {
        Value::Number(n) => normalize_number(n),
        Value::Object(_) | Value::Array(_) if free == 0 => Value::Null,
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), copy_bounded(x, free - 1)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| copy_bounded(x, free - 1)).collect()),
        other => other.clone(),
    }
}

fn to_field_error(e: openapi::OErr) -> FieldError {
    use openapi::Code;
    let path = {
        let n = e.name.strip_prefix('.').unwrap_or(&e.name);
        if e.name.is_empty() || e.name == "." || n.is_empty() {
            "<nil>".to_string()
        } else {
            n.to_string()
        }
    };
    let value_or_empty = e.value.clone().unwrap_or(Value::String(String::new()));
    match e.code {
        Code::Required => FieldError {
            path,
            error_type: FieldErrorType::Required,
            bad_value: None,
            detail: String::new(),
        },
        Code::Enum(values) => FieldError {
            path,
            error_type: FieldErrorType::NotSupported,
            bad_value: Some(e.value.unwrap_or(Value::Null)),
            detail: if values.is_empty() {
                String::new()
            } else {
                let q: Vec<String> = values.iter().map(|v| gofmt::quote(v)).collect();
                format!("supported values: {}", q.join(", "))
            },
        },
        Code::TooLong(max) => FieldError {
            path,
            error_type: FieldErrorType::TooLong,
            bad_value: None,
            // Kubernetes 1.30's `field.TooLongMaxLength` (1.32+ says "may not be more than N bytes").
            detail: format!("may not be longer than {max}"),
        },
        Code::MaxItems { actual, max } | Code::TooManyProperties { actual, max } => FieldError {
            path,
            error_type: FieldErrorType::TooMany,
            bad_value: Some(Value::from(actual)),
            detail: format!(
                "must have at most {max} {}",
                if max == 1 { "item" } else { "items" }
            ),
        },
        Code::InvalidType => FieldError {
            path,
            error_type: FieldErrorType::TypeInvalid,
            bad_value: Some(value_or_empty),
            detail: e.message,
        },
        Code::Other => FieldError {
            path,
            error_type: FieldErrorType::Invalid,
            bad_value: Some(value_or_empty),
            detail: e.message,
        },
        Code::Composite => FieldError {
            path: "<nil>".into(),
            error_type: FieldErrorType::Invalid,
            bad_value: Some(Value::String(String::new())),
            detail: e.message,
        },
    }
}

/// `structurallisttype.ValidateListSetsAndMaps`: list-type map keys and set items unique.
fn list_types(
    ns: &[Node],
    n: u32,
    path: &mut String,
    v: &Value,
    out: &mut Vec<FieldError>,
    depth: usize,
) {
    let Some(node) = ns.get(n as usize) else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(m) => {
            if node.additional != NONE {
                for (k, x) in m {
                    let len = push_map_key(path, k);
                    list_types(ns, node.additional, path, x, out, depth + 1);
                    path.truncate(len);
                }
            }
            for (k, x) in m {
                if let Some(c) = node.property(k) {
                    let len = push_key(path, k);
                    list_types(ns, c, path, x, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        Value::Array(a) => {
            match node.list_type {
                ListType::Map(keys) => list_map(path, keys, a, out),
                ListType::Set => {
                    let mut seen: Vec<&Value> = Vec::new();
                    let mut reported: Vec<&Value> = Vec::new();
                    for (i, x) in a.iter().enumerate() {
                        if seen.contains(&x) {
                            if !reported.contains(&x) {
                                reported.push(x);
                                out.push(FieldError {
                                    path: format!("{path}[{i}]"),
                                    error_type: FieldErrorType::Duplicate,
                                    bad_value: Some(x.clone()),
                                    detail: String::new(),
                                });
                            }
                        } else {
                            seen.push(x);
                        }
                    }
                }
                ListType::None | ListType::Atomic => {}
            }
            if node.items != NONE {
                for (i, x) in a.iter().enumerate() {
                    let len = push_index(path, i);
                    list_types(ns, node.items, path, x, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

fn list_map(path: &str, keys: &[&str], a: &[Value], out: &mut Vec<FieldError>) {
    for (i, x) in a.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            out.push(FieldError {
                path: format!("{path}[{i}]"),
                error_type: FieldErrorType::Invalid,
                bad_value: Some(x.clone()),
                detail: "must be an object for an array of list-type map".into(),
            });
            return;
        }
    }
    if a.len() <= 1 {
        return;
    }
    // The key of each item: the map of its key fields (absent fields left out).
    let item_keys: Vec<serde_json::Map<String, Value>> = a
        .iter()
        .map(|x| {
            let mut key = serde_json::Map::new();
            if let Value::Object(m) = x {
                for k in keys {
                    if let Some(v) = m.get(*k) {
                        key.insert((*k).to_string(), v.clone());
                    }
                }
            }
            key
        })
        .collect();
    let mut counts: Vec<(usize, usize)> = Vec::new(); // (first index, times seen)
    for (i, k) in item_keys.iter().enumerate() {
        match counts.iter_mut().find(|(j, _)| item_keys[*j] == *k) {
            Some((_, times)) => {
                *times += 1;
                if *times == 2 {
                    out.push(FieldError {
                        path: format!("{path}[{i}]"),
                        error_type: FieldErrorType::Duplicate,
                        bad_value: Some(Value::Object(k.clone())),
                        detail: String::new(),
                    });
                }
            }
            None => counts.push((i, 1)),
        }
    }
}

/// The CEL validator walk (`apiextensions-apiserver/pkg/apiserver/schema/cel.Validator`):
/// rules of a node on its (non-null) value, then `allOf` subschemas, then items / map values /
/// properties with kube's path forms (`[i]`, `[key]`, `.field`).
fn run_cel(
    ns: &[Node],
    n: u32,
    path: &mut String,
    v: &Value,
    opts: ValidateOptions,
    out: &mut Vec<FieldError>,
    depth: usize,
) {
    if v.is_null() || depth > MAX_DEPTH || !subtree_has_rules(n) {
        return;
    }
    let Some(node) = ns.get(n as usize) else {
        return;
    };
    let at = |p: &String| {
        if p.is_empty() {
            "<nil>".to_string()
        } else {
            p.clone()
        }
    };
    for ri in node.rules {
        let Some(def) = generated::RULES.get(*ri as usize) else {
            continue;
        };
        let ty = node.ty.structural();
        let schema_type = Value::String(ty.to_string());
        let program = match COMPILED.programs.get(*ri as usize) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                out.push(FieldError {
                    path: at(path),
                    error_type: FieldErrorType::Invalid,
                    bad_value: Some(schema_type),
                    detail: format!("rule compile error: {e}"),
                });
                continue;
            }
            None => continue,
        };
        let rule_text = if def.message.is_empty() {
            def.rule.trim()
        } else {
            def.message.trim()
        };
        match cel::evaluate(program, ns, v, n) {
            Ok(true) => {}
            Ok(false) => {
                let bad_value = match opts.cel_bad_value {
                    CelBadValue::SchemaType => Some(schema_type),
                    CelBadValue::ActualValue => {
                        if node.ty == Ty::Object || node.ty == Ty::Array {
                            None
                        } else {
                            Some(v.clone())
                        }
                    }
                };
                let detail = if def.message.is_empty() {
                    format!("failed rule: {}", def.rule.trim())
                } else {
                    def.message.to_string()
                };
                out.push(FieldError {
                    path: at(path),
                    error_type: FieldErrorType::Invalid,
                    bad_value,
                    detail,
                });
            }
            Err(e) => {
                let detail = if e.starts_with("no such overload") {
                    format!("'{e}': call arguments did not match a supported operator, function or macro signature for rule: {rule_text}")
                } else {
                    format!("{e} evaluating rule: {rule_text}")
                };
                out.push(FieldError {
                    path: at(path),
                    error_type: FieldErrorType::Invalid,
                    bad_value: Some(schema_type),
                    detail,
                });
            }
        }
    }
    for a in node.all_of {
        // Rules declared directly inside an `allOf` branch (none in Istio today): evaluated on
        // the same value; at MAX_DEPTH the walk stops before the branch's children.
        run_cel(ns, *a, path, v, opts, out, MAX_DEPTH);
    }
    match v {
        Value::Array(a) if node.items != NONE => {
            for (i, x) in a.iter().enumerate() {
                let len = push_index(path, i);
                run_cel(ns, node.items, path, x, opts, out, depth + 1);
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            if node.additional != NONE {
                for (k, x) in m {
                    let len = push_map_key(path, k);
                    run_cel(ns, node.additional, path, x, opts, out, depth + 1);
                    path.truncate(len);
                }
            }
            for (k, x) in m {
                if let Some(c) = node.property(k) {
                    let len = push_key(path, k);
                    run_cel(ns, c, path, x, opts, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}
