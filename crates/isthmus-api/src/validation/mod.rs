//! Istio's validating-webhook checks (`pkg/config/validation/validation.go`,
//! `virtualservice.go` and `agent/validation.go` in istio/istio): the semantic rules the CRD
//! schema cannot express, with Istio's exact error texts. Errors are joined as istiod joins them
//! (hashicorp/go-multierror); warnings are kept apart (kubectl prints them as `Warning:` lines
//! and still accepts the object).
//!
//! The checks follow Istio's order so that a joined message reads like istiod's. Where Istio
//! iterates a Go map (header names, label maps) the order here is sorted, which Istio does not
//! guarantee either.

pub mod checks;
mod kinds;
mod policy;
mod vs;

use crate::object::{Body, Object};

/// One webhook finding, with the field it concerns when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub field: Option<String>,
    pub message: String,
}

/// Errors refuse the object; warnings are printed (`Warning: ...` in kubectl) but accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Report {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Finding {
            field: Some(field.into()),
            message: message.into(),
        });
    }

    pub(crate) fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding {
            field: Some(field.into()),
            message: message.into(),
        });
    }

    /// Records the error of a check, if any.
    pub(crate) fn check(&mut self, field: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.error(field, e);
        }
    }

    /// Records every error of a multi-error check.
    pub(crate) fn check_all(&mut self, field: &str, errs: Vec<String>) {
        for e in errs {
            self.error(field, e);
        }
    }

    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Joins several errors the way hashicorp/go-multierror prints them (istiod uses it); a single
/// error is printed bare.
pub fn join_errors(errors: &[Finding]) -> String {
    if errors.len() == 1 {
        return errors[0].message.clone();
    }
    let mut s = format!("{} errors occurred:\n", errors.len());
    for e in errors {
        s.push_str(&format!("\t* {}\n", e.message));
    }
    s.push('\n');
    s
}

/// Runs the webhook checks for one object. Kinds Istio's webhook does not see (Kubernetes
/// built-ins) give an empty report.
pub fn validate_object(obj: &Object) -> Report {
    let mut r = Report::default();
    // validateMetadata: the always-reject annotation and the dry-run annotation (only
    // AuthorizationPolicy may carry it).
    if obj.kind.is_istio() {
        if obj.meta.annotations.contains_key("istio.io/dry-run") {
            r.error(
                "metadata.annotations",
                format!(
                    "{}/{} has unsupported annotation istio.io/dry-run, please remove the annotation",
                    obj.namespace(),
                    obj.name()
                ),
            );
            return r;
        }
        if obj.meta.annotations.contains_key("istio.io/alwaysReject") {
            r.error(
                "metadata.annotations",
                "\"istio.io/alwaysReject\" annotation found, rejecting",
            );
            return r;
        }
    }
    let spec = obj.raw.get("spec").unwrap_or(&serde_json::Value::Null);
    let ns = obj.namespace();
    match &obj.body {
        Body::Gateway(g) => kinds::gateway(obj.name(), g, spec, &mut r),
        Body::VirtualService(v) => vs::virtual_service(ns, v, spec, &mut r),
        Body::DestinationRule(d) => policy::destination_rule(ns, d, spec, &mut r),
        Body::ServiceEntry(s) => kinds::service_entry(ns, &obj.meta.annotations, s, spec, &mut r),
        Body::Sidecar(s) => kinds::sidecar(ns, s, spec, &mut r),
        Body::WorkloadEntry(w) => kinds::workload_entry_standalone(w, &mut r),
        _ => {}
    }
    r
}

/// Looks a path up in raw JSON (`at(v, &["trafficPolicy", "tunnel"])`).
pub(crate) fn at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(*p)?,
            serde_json::Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A string field of raw JSON, empty when absent (proto3 semantics).
pub(crate) fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(|x| x.as_str()).unwrap_or("")
}

/// A numeric field of raw JSON, 0 when absent (proto3 semantics).
pub(crate) fn num_at(v: &serde_json::Value, path: &[&str]) -> f64 {
    at(v, path).and_then(|x| x.as_f64()).unwrap_or(0.0)
}

/// A string-to-string map in raw JSON (label selectors), sorted.
pub(crate) fn labels_at(
    v: &serde_json::Value,
    path: &[&str],
) -> Option<std::collections::BTreeMap<String, String>> {
    let m = at(v, path)?.as_object()?;
    Some(
        m.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
