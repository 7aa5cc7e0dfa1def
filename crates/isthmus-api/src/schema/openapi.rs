//! A port of kube-openapi's `SchemaValidator` (k8s.io/kube-openapi/pkg/validation/validate) as
//! apiextensions-apiserver drives it for a create, over the generated schema table.
//!
//! Validator order per node is kube-openapi's: type, schema props (anyOf, oneOf, allOf, not),
//! string, format, number, slice, common (enum), object. Error texts come from
//! kube-openapi's `errors` package; results are de-duplicated on their text as `Result.AddErrors`
//! does. Where Go iterates a map (object properties) the order is random in kube; here it is the
//! document's key order, so output is deterministic.

use super::gofmt;
use super::table::{Fmt, Node, Ty, NONE};
use serde_json::Value;
use std::fmt::Write as _;

/// An error as kube-openapi reports it, before conversion to a field error.
#[derive(Debug, Clone)]
pub struct OErr {
    pub code: Code,
    /// kube-openapi's `Name` (the dotted path it validated), empty for composite errors.
    pub name: String,
    pub value: Option<Value>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub enum Code {
    InvalidType,
    Required,
    TooLong(u64),
    Enum(&'static [&'static str]),
    MaxItems {
        actual: u64,
        max: u64,
    },
    TooManyProperties {
        actual: u64,
        max: u64,
    },
    /// Every other `*errors.Validation` (minimum, maximum, minItems, ...): `field.Invalid`.
    Other,
    /// anyOf/oneOf/allOf/not failures: an `errors.apiError`, reported at path `<nil>`.
    Composite,
}

#[derive(Default)]
struct Res {
    errs: Vec<OErr>,
    /// Errors of quiet validation, counted but not materialised.
    quiet_errs: usize,
    matches: usize,
}

impl Res {
    fn add(&mut self, e: OErr) {
        if e.message.is_empty() {
            self.quiet_errs += 1;
        } else if !self.errs.iter().any(|x| x.message == e.message) {
            self.errs.push(e);
        }
    }
    fn merge(&mut self, o: Res) {
        for e in o.errs {
            self.add(e);
        }
        self.quiet_errs += o.quiet_errs;
        self.matches += o.matches;
    }
    fn ok(&self) -> bool {
        self.errs.is_empty() && self.quiet_errs == 0
    }
    fn err(e: OErr) -> Res {
        let mut r = Res::default();
        r.add(e);
        r
    }
}

/// The Go dynamic kind of a decoded JSON value (after kube's int64/float64 decoding).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    String,
    Int,
    Float,
    Array,
    Object,
}

fn kind_of(v: &Value) -> Option<Kind> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => Kind::Bool,
        Value::String(_) => Kind::String,
        Value::Number(n) => {
            if n.is_i64() {
                Kind::Int
            } else {
                Kind::Float
            }
        }
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    })
}

/// A placeholder error for quiet validation (only validity and match counts are needed while
/// trying `anyOf`/`oneOf`/`not` branches; messages are built only for reported errors).
fn quiet() -> OErr {
    OErr {
        code: Code::Other,
        name: String::new(),
        value: None,
        message: String::new(),
    }
}

fn type_failure(name: &str, type_name: &str, value: &str) -> OErr {
    OErr {
        code: Code::InvalidType,
        name: name.to_string(),
        value: Some(Value::String(value.to_string())),
        message: format!(
            "{name} in body must be of type {type_name}: {}",
            gofmt::quote(value)
        ),
    }
}

fn composite(message: String) -> OErr {
    OErr {
        code: Code::Composite,
        name: String::new(),
        value: None,
        message,
    }
}

/// Validates `data` at kube-openapi path `path` against node `n`.
pub fn validate(nodes: &[Node], n: u32, data: &Value) -> Vec<OErr> {
    let mut path = String::with_capacity(128);
    validate_node(nodes, n, &mut path, data, false).errs
}

/// `path` is a reusable buffer holding kube-openapi's path of `data`; callees push and
/// truncate, so no path string is built unless an error needs it.
fn validate_node(nodes: &[Node], n: u32, path: &mut String, data: &Value, q: bool) -> Res {
    let mut result = Res::default();
    let Some(node) = nodes.get(n as usize) else {
        return result;
    };
    let type_applies = node.ty != Ty::None || node.format != Fmt::None;
    let Some(kind) = kind_of(data) else {
        // null: only the type and common validators run.
        if type_applies {
            result.merge(type_null(node, path, q));
        }
        if let Some(r) = enum_check(node, path, data, q) {
            result.merge(r);
        }
        return result;
    };
    if type_applies {
        result.merge(type_check(node, path, data, kind, q));
        result.matches += 1;
    }
    result.merge(schema_props(nodes, node, path, data, q));
    result.matches += 1;
    if kind == Kind::String {
        if let Some(r) = string_check(node, path, data, q) {
            result.merge(r);
        }
        result.matches += 1;
        if node.format != Fmt::None {
            if let Some(r) = format_check(node, path, data, q) {
                result.merge(r);
            }
            result.matches += 1;
        }
    }
    if kind == Kind::Int || kind == Kind::Float {
        result.merge(number_check(node, path, data, q));
        result.matches += 1;
    }
    if let Value::Array(items) = data {
        result.merge(slice_check(nodes, node, path, items, q));
        result.matches += 1;
    }
    if let Some(r) = enum_check(node, path, data, q) {
        result.merge(r);
    }
    result.matches += 1;
    if let Value::Object(map) = data {
        result.merge(object_check(nodes, node, path, map, q));
        result.matches += 1;
    }
    result.matches += 1;
    result
}

fn type_null(node: &Node, path: &str, q: bool) -> Res {
    let names = node.ty.names();
    if !names.is_empty() && !node.nullable {
        return Res::err(if q {
            quiet()
        } else {
            type_failure(path, &names.join(","), "null")
        });
    }
    Res {
        matches: 1,
        ..Res::default()
    }
}

fn type_check(node: &Node, path: &str, data: &Value, kind: Kind, q: bool) -> Res {
    let names = node.ty.names();
    let (sch_type, format) = match kind {
        Kind::Bool => ("boolean", ""),
        Kind::String => ("string", ""),
        Kind::Int => ("integer", "int64"),
        Kind::Float => ("number", "float64"),
        Kind::Array => ("array", ""),
        Kind::Object => ("object", ""),
    };
    let t_format = node.format.name();
    let contains = |t: &str| names.contains(&t);
    let is_float_int = kind == Kind::Float
        && contains("integer")
        && data
            .as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0);
    let is_int_float = kind == Kind::Int && contains("number");
    if kind != Kind::String
        && kind != Kind::Array
        && !t_format.is_empty()
        && !(contains(sch_type) || format == t_format || is_float_int || is_int_float)
    {
        return Res::err(if q {
            quiet()
        } else {
            type_failure(path, t_format, format)
        });
    }
    if !(contains("number") || contains("integer") || t_format.is_empty())
        && (kind == Kind::String || kind == Kind::Array)
    {
        return Res {
            matches: 1,
            ..Res::default()
        };
    }
    if !(contains(sch_type) || is_float_int || is_int_float) {
        return Res::err(if q {
            quiet()
        } else {
            type_failure(path, &names.join(","), sch_type)
        });
    }
    Res {
        matches: 1,
        ..Res::default()
    }
}

fn schema_props(nodes: &[Node], node: &Node, path: &mut String, data: &Value, q: bool) -> Res {
    // Branches are first tried quietly (validity and match count only); a branch whose errors
    // are reported is re-run with messages.
    let mut main = Res::default();
    if !node.any_of.is_empty() {
        let mut best: Option<(u32, usize)> = None;
        let mut first_success: Option<(u32, usize)> = None;
        let mut succeeded = false;
        for b in node.any_of {
            let r = validate_node(nodes, *b, path, data, true);
            if r.ok() {
                best = None;
                succeeded = true;
                first_success = Some((*b, r.matches));
                break;
            }
            if best.is_none_or(|(_, m)| r.matches > m) {
                best = Some((*b, r.matches));
            }
        }
        if !succeeded {
            main.add(if q {
                quiet()
            } else {
                composite(format!(
                    "{} must validate at least one schema (anyOf)",
                    gofmt::quote(path)
                ))
            });
        }
        if let Some((b, _)) = best {
            main.merge(validate_node(nodes, b, path, data, q));
        } else if let Some((_, m)) = first_success {
            main.matches += m;
        }
    }
    if !node.one_of.is_empty() {
        let mut best: Option<(u32, usize)> = None;
        let mut first_success: Option<usize> = None;
        let mut validated = 0usize;
        for b in node.one_of {
            let r = validate_node(nodes, *b, path, data, true);
            if r.ok() {
                validated += 1;
                best = None;
                if first_success.is_none() {
                    first_success = Some(r.matches);
                }
                continue;
            }
            if validated == 0 && best.is_none_or(|(_, m)| r.matches > m) {
                best = Some((*b, r.matches));
            }
        }
        if validated != 1 {
            main.add(if q {
                quiet()
            } else {
                let additional = if validated == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {validated} valid alternatives")
                };
                composite(format!(
                    "{} must validate one and only one schema (oneOf). {additional}",
                    gofmt::quote(path)
                ))
            });
            if let Some((b, _)) = best {
                main.merge(validate_node(nodes, b, path, data, q));
            }
        } else if let Some(m) = first_success {
            main.matches += m;
        }
    }
    if !node.all_of.is_empty() {
        let mut validated = 0usize;
        for b in node.all_of {
            let mut r = validate_node(nodes, *b, path, data, true);
            if r.ok() {
                validated += 1;
            } else if !q {
                r = validate_node(nodes, *b, path, data, false);
            }
            main.merge(r);
        }
        if validated != node.all_of.len() {
            main.add(if q {
                quiet()
            } else {
                let additional = if validated == 0 {
                    ". None validated"
                } else {
                    ""
                };
                composite(format!(
                    "{} must validate all the schemas (allOf){additional}",
                    gofmt::quote(path)
                ))
            });
        }
    }
    if node.not != NONE {
        let r = validate_node(nodes, node.not, path, data, true);
        if r.ok() {
            main.add(if q {
                quiet()
            } else {
                composite(format!(
                    "{} must not validate the schema (not)",
                    gofmt::quote(path)
                ))
            });
        }
    }
    main.matches += 1;
    main
}

fn string_check(node: &Node, path: &str, data: &Value, q: bool) -> Option<Res> {
    let s = data.as_str()?;
    let len = s.chars().count() as u64;
    if let Some(max) = node.max_length {
        if len > max {
            return Some(Res::err(if q {
                quiet()
            } else {
                OErr {
                    code: Code::TooLong(max),
                    name: path.to_string(),
                    value: Some(data.clone()),
                    message: format!("{path} in body should be at most {max} chars long"),
                }
            }));
        }
    }
    if let Some(min) = node.min_length {
        if len < min {
            return Some(Res::err(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Other,
                    name: path.to_string(),
                    value: Some(data.clone()),
                    message: format!("{path} in body should be at least {min} chars long"),
                }
            }));
        }
    }
    None
}

/// Go's `base64.StdEncoding.DecodeString` acceptance (newlines ignored, padding required).
fn is_base64(s: &str) -> bool {
    let clean: Vec<u8> = s.bytes().filter(|b| *b != b'\n' && *b != b'\r').collect();
    if !clean.len().is_multiple_of(4) {
        return false;
    }
    let n = clean.len();
    let pad = clean.iter().rev().take_while(|b| **b == b'=').count();
    if pad > 2 {
        return false;
    }
    clean[..n - pad]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn is_rfc3339(s: &str) -> bool {
    // strfmt.DateTime accepts RFC 3339 date-times (with or without fractional seconds).
    static RE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
            .ok()
    });
    RE.as_ref().is_some_and(|r| r.is_match(s))
}

fn format_check(node: &Node, path: &str, data: &Value, q: bool) -> Option<Res> {
    let s = data.as_str()?;
    let ok = match node.format {
        Fmt::None => true,
        Fmt::Byte => is_base64(s),
        Fmt::DateTime => is_rfc3339(s),
    };
    if ok {
        None
    } else {
        Some(Res::err(if q {
            quiet()
        } else {
            type_failure(path, node.format.name(), s)
        }))
    }
}

fn number_check(node: &Node, path: &str, data: &Value, q: bool) -> Res {
    let mut res_min = Res::default();
    let mut res_max = Res::default();
    let int = data.as_i64();
    let float = data.as_f64().unwrap_or(f64::NAN);
    if let Some(min) = node.minimum {
        let fails = match int {
            Some(i) => {
                let m = min as i64;
                if node.exclusive_minimum {
                    i <= m
                } else {
                    i < m
                }
            }
            None => {
                if node.exclusive_minimum {
                    float <= min
                } else {
                    float < min
                }
            }
        };
        if fails {
            let bound = match int {
                Some(_) => (min as i64).to_string(),
                None => gofmt::float_v(min),
            };
            let word = if node.exclusive_minimum {
                "greater than"
            } else {
                "greater than or equal to"
            };
            res_min.add(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Other,
                    name: path.to_string(),
                    value: Some(data.clone()),
                    message: format!("{path} in body should be {word} {bound}"),
                }
            });
        }
    }
    if let Some(max) = node.maximum {
        let fails = match int {
            Some(i) => {
                let m = max as i64;
                if node.exclusive_maximum {
                    i >= m
                } else {
                    i > m
                }
            }
            None => {
                if node.exclusive_maximum {
                    float >= max
                } else {
                    float > max
                }
            }
        };
        if fails {
            let bound = match int {
                Some(_) => (max as i64).to_string(),
                None => gofmt::float_v(max),
            };
            let word = if node.exclusive_maximum {
                "less than"
            } else {
                "less than or equal to"
            };
            res_max.add(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Other,
                    name: path.to_string(),
                    value: Some(data.clone()),
                    message: format!("{path} in body should be {word} {bound}"),
                }
            });
        }
    }
    let mut res = Res::default();
    res.merge(res_min);
    res.merge(res_max);
    res.matches += 1;
    res
}

fn slice_check(nodes: &[Node], node: &Node, path: &mut String, items: &[Value], q: bool) -> Res {
    let mut result = Res::default();
    if node.items != NONE {
        for (i, v) in items.iter().enumerate() {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            result.merge(validate_node(nodes, node.items, path, v, q));
            path.truncate(len);
        }
    }
    let size = items.len() as u64;
    if let Some(min) = node.min_items {
        if size < min {
            result.add(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Other,
                    name: path.to_string(),
                    value: Some(Value::from(size)),
                    message: format!("{path} in body should have at least {min} items"),
                }
            });
        }
    }
    if let Some(max) = node.max_items {
        if size > max {
            result.add(if q {
                quiet()
            } else {
                OErr {
                    code: Code::MaxItems { actual: size, max },
                    name: path.to_string(),
                    value: Some(Value::from(size)),
                    message: format!("{path} in body should have at most {max} items"),
                }
            });
        }
    }
    result.matches += 1;
    result
}

fn enum_check(node: &Node, path: &str, data: &Value, q: bool) -> Option<Res> {
    if node.enum_values.is_empty() {
        return None;
    }
    if let Value::String(s) = data {
        if node.enum_values.iter().any(|e| e == s) {
            return None;
        }
    }
    let values: Vec<String> = node.enum_values.iter().map(|s| s.to_string()).collect();
    Some(Res::err(if q {
        quiet()
    } else {
        OErr {
            code: Code::Enum(node.enum_values),
            name: path.to_string(),
            value: Some(data.clone()),
            message: format!("{path} in body should be one of [{}]", values.join(" ")),
        }
    }))
}

fn object_check(
    nodes: &[Node],
    node: &Node,
    path: &mut String,
    map: &serde_json::Map<String, Value>,
    q: bool,
) -> Res {
    let num = map.len() as u64;
    if let Some(min) = node.min_properties {
        if num < min {
            return Res::err(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Other,
                    name: path.to_string(),
                    value: Some(Value::from(num)),
                    message: format!("{path} in body should have at least {min} properties"),
                }
            });
        }
    }
    if let Some(max) = node.max_properties {
        if num > max {
            return Res::err(if q {
                quiet()
            } else {
                OErr {
                    code: Code::TooManyProperties { actual: num, max },
                    name: path.to_string(),
                    value: Some(Value::from(num)),
                    message: format!("{path} in body should have at most {max} properties"),
                }
            });
        }
    }
    let mut res = Res::default();
    if node.additional != NONE {
        for (k, v) in map {
            if node.property(k).is_none() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                res.merge(validate_node(nodes, node.additional, path, v, q));
                path.truncate(len);
            }
        }
    }
    for (k, v) in map {
        if let Some(p) = node.property(k) {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            res.merge(validate_node(nodes, p, path, v, q));
            path.truncate(len);
        }
    }
    for k in node.required {
        if !map.contains_key(*k) {
            let name = format!("{path}.{k}");
            res.add(if q {
                quiet()
            } else {
                OErr {
                    code: Code::Required,
                    message: format!("{name} in body is required"),
                    name,
                    value: None,
                }
            });
        }
    }
    res
}
