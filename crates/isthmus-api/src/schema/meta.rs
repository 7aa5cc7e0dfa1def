//! `ValidateObjectMetaAccessor` as the API server runs it on a custom resource before the schema:
//! name (or generateName) as a DNS-1123 subdomain, label keys and values, annotation keys.
//! Texts are apimachinery's (`k8s.io/apimachinery/pkg/util/validation`).

use super::{FieldError, FieldErrorType};
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn subdomain_fmt() -> String {
    format!("{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*")
}

struct Res {
    subdomain: Option<Regex>,
    qualified: Option<Regex>,
    label_value: Option<Regex>,
}

static RE: LazyLock<Res> = LazyLock::new(|| Res {
    subdomain: Regex::new(&format!("^{}$", subdomain_fmt())).ok(),
    qualified: Regex::new(&format!("^{QUALIFIED_NAME_FMT}$")).ok(),
    label_value: Regex::new(&format!("^({QUALIFIED_NAME_FMT})?$")).ok(),
});

fn matches(re: &Option<Regex>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// apimachinery `RegexError`: the message, examples (note Go's doubled space) and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `IsDNS1123Subdomain`.
fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !matches(&RE.subdomain, v) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            &subdomain_fmt(),
            &["example.com"],
        ));
    }
    errs
}

/// `IsQualifiedName`.
fn qualified_name(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = v.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !matches(&RE.qualified, name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`.
fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches(&RE.label_value, v) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn invalid(path: &str, value: &str, detail: String) -> FieldError {
    FieldError {
        path: path.to_string(),
        error_type: FieldErrorType::Invalid,
        bad_value: Some(Value::String(value.to_string())),
        detail,
    }
}

/// Metadata errors of a create, in apimachinery's order (name/generateName, labels,
/// annotations). Values of the wrong JSON type are left to the decoder.
pub fn validate_object_meta(obj: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let meta = obj.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = get("name");
    let generate_name = get("generateName");
    if !generate_name.is_empty() {
        // Validated as a prefix: a trailing '-' is allowed.
        let masked = match generate_name.strip_suffix('-') {
            Some(p) if !p.is_empty() => format!("{p}a"),
            _ => generate_name.to_string(),
        };
        for m in dns1123_subdomain(&masked) {
            out.push(invalid("metadata.generateName", generate_name, m));
        }
    }
    if out.is_empty() {
        if name.is_empty() {
            if generate_name.is_empty() {
                out.push(FieldError {
                    path: "metadata.name".into(),
                    error_type: FieldErrorType::Required,
                    bad_value: None,
                    detail: "name or generateName is required".into(),
                });
            }
        } else {
            for m in dns1123_subdomain(name) {
                out.push(invalid("metadata.name", name, m));
            }
        }
    }
    if let Some(Value::Object(labels)) = meta.and_then(|m| m.get("labels")) {
        for (k, v) in labels {
            for m in qualified_name(k) {
                out.push(invalid("metadata.labels", k, m));
            }
            if let Some(v) = v.as_str() {
                for m in label_value(v) {
                    out.push(invalid("metadata.labels", v, m));
                }
            }
        }
    }
    if let Some(Value::Object(annotations)) = meta.and_then(|m| m.get("annotations")) {
        for k in annotations.keys() {
            for m in qualified_name(&k.to_lowercase()) {
                out.push(invalid("metadata.annotations", k, m));
            }
        }
    }
    out
}
